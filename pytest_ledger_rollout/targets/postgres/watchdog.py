"""Crash safety: a child process that tears a throwaway server down when we die.

The parent keeps the write end of the child's stdin pipe. The kernel closes it whenever the
parent exits, however it exits (SIGKILL included), so EOF on stdin is the signal to clean up:
for a local cluster, stop the postmaster and remove the temp dir (pg_ctl puts the postmaster in
its own session, so nothing else would stop it); for a container, remove it by name, so that
cleanup never depends on testcontainers' Ryuk reaper.

Run by file path with ``python -I`` so that it starts fast and does not depend on how the parent
found this package; stdlib only, except docker-py for containers. ``shutdown`` is shared with
``LocalServer.stop``.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

# What initdb, pg_ctl and postgres need of our environment. Nothing else: not the operator's
# secrets (DATABASE_URL, the webhook secret), and no PG* variable (PGDATA, PGPORT, PGOPTIONS)
# that would silently retarget the binaries.
_CHILD_VARIABLES = frozenset({"PATH", "LANG", "TZ", "TMPDIR"})


def child_environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k in _CHILD_VARIABLES or k.startswith("LC_")}


@dataclass(frozen=True)
class Cluster:
    """Where a local server lives, and as whom its binaries run."""

    bindir: str
    tmpdir: str  # everything (data dir, log, unix socket) lives here
    uid: int | None = None  # None: run the binaries as ourselves
    gid: int | None = None

    @property
    def datadir(self) -> str:
        return os.path.join(self.tmpdir, "data")

    @property
    def logfile(self) -> str:
        return os.path.join(self.tmpdir, "server.log")

    def run(self, tool: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [os.path.join(self.bindir, tool), *args],
            capture_output=True,
            text=True,
            cwd=self.tmpdir,
            env=child_environment(),
            timeout=timeout,
            check=False,
            user=self.uid,
            group=self.gid,
            extra_groups=None if self.uid is None else [],
        )

    def argv(self) -> list[str]:
        ids = [] if self.uid is None else [str(self.uid), str(self.gid)]
        return [self.bindir, self.tmpdir, *ids]

    @classmethod
    def from_argv(cls, argv: list[str]) -> Cluster:
        bindir, tmpdir, *ids = argv
        uid, gid = (int(ids[0]), int(ids[1])) if ids else (None, None)
        return cls(bindir, tmpdir, uid, gid)


def processes_using(path: str, spare: Collection[int] = ()) -> list[int]:
    """Pids whose command line mentions ``path``: initdb, pg_ctl, its sh and the postmaster.

    Backends rename themselves ("postgres: checkpointer") and exit once the postmaster is gone.
    """
    mention = re.compile(re.escape(os.fsencode(path)) + rb"(?=[/\0\"' ]|$)")
    pids = []
    for entry in Path("/proc").glob("[0-9]*"):
        pid = int(entry.name)
        if pid == os.getpid() or pid in spare:
            continue
        # Processes come and go during the scan; a vanished one is simply not ours any more.
        with contextlib.suppress(OSError):
            if mention.search((entry / "cmdline").read_bytes()):
                pids.append(pid)
    return pids


def shutdown(cluster: Cluster, spare: Collection[int] = ()) -> None:
    """Stop the server if it runs, kill leftovers, remove the temp dir. Safe to repeat."""
    pid = postmaster_pid(cluster)
    if pid is not None:
        # Fast shutdown by signal, polled finely: pg_ctl stop -w polls every 100 ms, and a
        # throwaway cluster (fsync off) needs no more than a few milliseconds.
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        deadline = time.monotonic() + 5
        while pid in processes_using(cluster.datadir) and time.monotonic() < deadline:
            time.sleep(0.01)
    # Also catches an initdb or pg_ctl start still in flight (the parent died or was
    # interrupted mid-start), and what they spawn meanwhile. SIGINT first: a postmaster then
    # shuts down fast and frees its shared memory, initdb removes its files; SIGKILL if stuck.
    started = time.monotonic()
    while leftovers := processes_using(cluster.tmpdir, spare):
        waited = time.monotonic() - started
        if waited > 10:
            break
        for pid in leftovers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGINT if waited < 3 else signal.SIGKILL)
        time.sleep(0.05)
    shutil.rmtree(cluster.tmpdir, ignore_errors=True)


def postmaster_pid(cluster: Cluster) -> int | None:
    """The pid postmaster.pid names, if it is a live postmaster of this cluster.

    A killed postmaster leaves its pid file, and its pid lingers as a zombie (empty cmdline)
    where init does not reap: such a pid is not live here.
    """
    try:
        pid = int(Path(cluster.datadir, "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid > 0 and pid in processes_using(cluster.datadir) else None


CONTAINER = "container"  # first argument of a container watchdog: container NAME
RELEASED = b"released"  # written by a parent that removed its container itself
CONTAINER_CREATE_GRACE = 3  # seconds a create sent just before the parent died may take


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a watchdog; it outlives its parent on purpose."""
    return subprocess.Popen(
        [sys.executable, "-I", __file__, *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd="/",
        env=env,
        start_new_session=True,  # Ctrl-C goes to the foreground group; it must not hit this
    )


def release(guard: subprocess.Popen[bytes], message: bytes = b"") -> None:
    """Tell the watchdog we cleaned up ourselves, and let it exit."""
    assert guard.stdin is not None
    with contextlib.suppress(BrokenPipeError):
        guard.stdin.write(message)
    with contextlib.suppress(BrokenPipeError):
        guard.stdin.close()
    try:
        guard.wait(timeout=5)
    except subprocess.TimeoutExpired:
        guard.kill()
        guard.wait()


def remove_container(name: str) -> None:
    """Force-remove the container and its volumes; a create still in flight is waited for."""
    import docker  # the engine is the one in DOCKER_HOST, as the parent resolved it
    from docker.errors import DockerException, NotFound

    client = docker.from_env()
    deadline = time.monotonic() + CONTAINER_CREATE_GRACE
    try:
        while True:
            try:
                client.containers.get(name).remove(force=True, v=True)
                return
            except NotFound:
                if time.monotonic() > deadline:
                    return
            except DockerException:
                return  # the engine is gone, and its containers with it
            time.sleep(0.2)
    finally:
        client.close()


def main(argv: list[str]) -> int:
    message = sys.stdin.buffer.read()  # returns at EOF: the parent closed the pipe or died
    if argv[0] == CONTAINER:
        if message != RELEASED:
            remove_container(argv[1])
    else:
        shutdown(Cluster.from_argv(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
