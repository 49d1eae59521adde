"""Start the reference service as a separate process on a free loopback port and wait until
`/healthz` answers; used by the tests and the STG-ROLL rehearsal.

Import it with examples/reference_backend on sys.path (`from backend.process import ...`):

    with start_service(database_url, webhook_secret="s3cret") as service:
        requests.get(service.url("/wallets/1"))
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from .settings import Fault

BACKEND_DIR = Path(__file__).resolve().parent.parent  # examples/reference_backend


class ServiceStartError(RuntimeError):
    """The service exited or did not answer /healthz in time; the message carries its log."""


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


@dataclass
class ServiceProcess:
    base_url: str
    process: subprocess.Popen[bytes] = field(repr=False)
    log_path: Path

    def url(self, path: str) -> str:
        return self.base_url + path

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, timeout: float = 10.0) -> None:
        """Terminate (then kill) the process; safe to call more than once."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ServiceProcess:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def start_service(
    database_url: str,
    *,
    webhook_secret: str,
    faults: Collection[Fault] = (),
    log_path: Path | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    python: str = sys.executable,
    backend_dir: Path = BACKEND_DIR,
    extra_env: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> ServiceProcess:
    """Run `python -m backend.serve` from `backend_dir` and wait for /healthz to answer 200.

    The log (stdout and stderr) goes to `log_path`, a temporary file by default. On failure
    the process is stopped and ServiceStartError raised with the log's tail.
    """
    port = port or free_port(host)
    env = {**os.environ, **(extra_env or {})}
    env.update(DATABASE_URL=database_url, WEBHOOK_SECRET=webhook_secret, PYTHONUNBUFFERED="1")
    for fault in Fault:
        env.pop(fault.value, None)  # only the faults asked for, never inherited ones
    env.update({fault.value: "1" for fault in faults})
    if log_path is None:
        handle, name = tempfile.mkstemp(prefix=f"ledger-service-{port}-", suffix=".log")
        os.close(handle)
        log_path = Path(name)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                python,
                "-m",
                "backend.serve",
                "--exit-with-parent",
                "--host",
                host,
                "--port",
                str(port),
            ],
            cwd=backend_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    service = ServiceProcess(f"http://{host}:{port}", process, log_path)
    try:
        _wait_healthy(service, timeout)
    except BaseException:
        service.stop()
        raise
    return service


def _wait_healthy(service: ServiceProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise ServiceStartError(
                f"the service exited with {service.process.returncode}:\n{service.log()[-2000:]}"
            )
        try:
            with urllib.request.urlopen(service.url("/healthz"), timeout=2) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.05)
    raise ServiceStartError(f"/healthz did not answer in {timeout:.0f}s:\n{service.log()[-2000:]}")
