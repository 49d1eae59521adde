"""Small helpers for the processes the plugin starts (servers for rehearsals and tests)."""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys


def free_port() -> int:
    """A loopback port the kernel just handed out (callers retry if another process wins it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def die_with_parent() -> None:
    """preexec_fn: PR_SET_PDEATHSIG (1), so a killed run leaves no server behind."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """Terminate, then kill if it does not exit in time; safe to call more than once."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def interpreter_path(path: str | None) -> str:
    """PATH with this interpreter's folder first: commands run on this machine for a local app
    (`python -m …`, `alembic`) use the environment the plugin is installed in."""
    folder = os.path.dirname(sys.executable)
    return f"{folder}{os.pathsep}{path}" if path else folder
