"""Local provider: a private postmaster from the PostgreSQL server binaries on this machine.

Start-up, in order: temp dir -> watchdog -> data dir (a copy of a cached pristine initdb, or a
fresh initdb that then fills the cache) -> pg_hba.conf -> pg_ctl start on 127.0.0.1 -> set the
superuser password and create the database over the private unix socket (trust).

The password never touches disk or a command line: the server gets a SCRAM verifier computed
client-side, so it cannot leak into logs or error messages.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import pwd
import re
import secrets
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from pytest_ledger_rollout.processes import free_port
from pytest_ledger_rollout.targets.postgres import (
    EphemeralServer,
    EphemeralSettings,
    EphemeralUnavailable,
    watchdog,
)
from pytest_ledger_rollout.targets.postgres.watchdog import Cluster

SUPERUSER = "rollout"
BINDIR_ENV = "LEDGER_ROLLOUT_PG_BINDIR"
CACHE_ENV = "LEDGER_ROLLOUT_PG_CACHE"  # template cache folder, or "off"
TOOLS = ("initdb", "pg_ctl", "postgres")
INSTALL_HINT = (
    "install the PostgreSQL server binaries (Debian/Ubuntu: apt-get install postgresql) "
    f"or set {BINDIR_ENV} to their folder;\n"
    "or start a Docker engine and use provider=testcontainers"
)
# Only the private unix socket trusts; TCP always needs the password.
PG_HBA = "local all all trust\nhost all all 127.0.0.1/32 scram-sha-256\n"
SHM, SHM_MIN_FREE = "/dev/shm", 1 << 30
# Durability is pointless for a throwaway server and costs start-up and test time.
SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}
START_ATTEMPTS = 5  # a new free port per attempt, in case another process grabs ours


@dataclass(eq=False)
class LocalServer(EphemeralServer):
    cluster: Cluster
    guard: subprocess.Popen[bytes] = field(repr=False)  # the watchdog; EOF on its stdin = clean up

    def _shut_down(self) -> None:
        try:
            watchdog.shutdown(self.cluster, spare={self.guard.pid})
        finally:
            watchdog.release(self.guard)  # it finds nothing left to do and exits


def find_bindir(settings: EphemeralSettings) -> str:
    """The folder holding initdb, pg_ctl and postgres, or EphemeralUnavailable."""
    explicit = [(settings.bindir, "settings.bindir"), (os.environ.get(BINDIR_ENV), BINDIR_ENV)]
    for folder, source in explicit:
        if folder:
            if _has_tools(folder):
                return folder
            raise EphemeralUnavailable(
                f"no {'/'.join(TOOLS)} in {folder} (from {source}): " + INSTALL_HINT
            )
    for folder in _discovered_bindirs():
        if _has_tools(folder):
            return folder
    raise EphemeralUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: " + INSTALL_HINT
    )


def find_client(tool: str, settings: EphemeralSettings) -> str:
    """A PostgreSQL client binary (pg_dump, psql), looked for where the server binaries are
    (settings.bindir, LEDGER_ROLLOUT_PG_BINDIR, pg_config, /usr/lib/postgresql/*/bin, newest
    first), then on PATH; else EphemeralUnavailable."""
    folders = [f for f in (settings.bindir, os.environ.get(BINDIR_ENV)) if f]
    for folder in [*folders, *_discovered_bindirs()]:
        path = os.path.join(folder, tool)
        if os.access(path, os.X_OK):
            return path
    found = shutil.which(tool)
    if found is None:
        raise EphemeralUnavailable(
            f"the PostgreSQL client {tool} was not found: install the PostgreSQL client "
            f"binaries (Debian/Ubuntu: apt-get install postgresql-client) or set {BINDIR_ENV}"
        )
    return found


def _has_tools(folder: str) -> bool:
    return all(os.access(os.path.join(folder, tool), os.X_OK) for tool in TOOLS)


def _discovered_bindirs() -> list[str]:
    found = []
    if pg_config := shutil.which("pg_config"):
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            found.append(
                subprocess.run(
                    [pg_config, "--bindir"], capture_output=True, text=True, check=True, timeout=10
                ).stdout.strip()
            )
    if initdb := shutil.which("initdb"):
        found.append(os.path.dirname(os.path.realpath(initdb)))  # often a symlink into bindir

    def version(folder: Path) -> list[int]:
        return [int(n) for n in re.findall(r"\d+", folder.parent.name)]

    found += [
        str(p) for p in sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=version, reverse=True)
    ]
    return found


def _run_as_ids(settings: EphemeralSettings) -> tuple[int | None, int | None]:
    """initdb and postgres refuse root: as root, run them as an unprivileged user."""
    if os.geteuid() != 0:
        return None, None
    for name in [settings.run_as] if settings.run_as else ["postgres", "nobody"]:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            continue
        if entry.pw_uid == 0:
            raise EphemeralUnavailable(
                f"run_as={name!r} is root; initdb and postgres refuse "
                "to run as root: name an unprivileged user"
            )
        return entry.pw_uid, entry.pw_gid
    wanted = settings.run_as or "postgres"
    raise EphemeralUnavailable(
        f"running as root needs an unprivileged user {wanted!r} to run "
        f"initdb/pg_ctl: create it (useradd --system {wanted}) or set run_as"
    )


def new_password() -> str:
    # The special characters make sure every consumer really URL-quotes the password.
    return secrets.token_urlsafe(18) + "@:/%#?&"


def start(settings: EphemeralSettings) -> LocalServer:
    bindir = find_bindir(settings)
    uid, gid = _run_as_ids(settings)
    tmpdir = tempfile.mkdtemp(prefix="ledger-rollout-pg-", dir=_scratch_parent())
    if uid is not None:
        os.chown(tmpdir, uid, gid if gid is not None else -1)
    cluster = Cluster(bindir, tmpdir, uid, gid)
    # Before anything that can leave a process behind; it outlives us on purpose.
    try:
        guard = watchdog.spawn(*cluster.argv(), env=watchdog.child_environment())
    except BaseException:
        shutil.rmtree(tmpdir, ignore_errors=True)
        raise
    server = LocalServer(
        provider="local",
        host="127.0.0.1",
        port=0,
        user=SUPERUSER,
        password=new_password(),
        database=settings.database,
        cluster=cluster,
        guard=guard,
    )
    atexit.register(server.stop)
    try:
        template = _populate_datadir(cluster)
        try:
            server.port = _start_postmaster(cluster)
        except RuntimeError as exc:
            if template is not None:
                exc.add_note(f"the data dir was copied from {template}; delete it if damaged")
            raise
        _configure(cluster, server.port, server.password, settings.database)
    except BaseException:
        server.stop()
        raise
    return server


def _scratch_parent() -> str | None:
    """/dev/shm (tmpfs) unless TMPDIR was chosen or /dev/shm is small (Docker's is 64 MB).

    A cluster is ~1000 files; creating them on a disk file system costs 3-5x more time.
    None means tempfile's default.
    """
    if {"TMPDIR", "TEMP", "TMP"} & os.environ.keys():  # what tempfile would honour
        return None
    try:
        shm = os.statvfs(SHM)
    except OSError:
        return None
    roomy = shm.f_bavail * shm.f_frsize >= SHM_MIN_FREE
    return SHM if roomy and os.access(SHM, os.W_OK | os.X_OK) else None


def _populate_datadir(cluster: Cluster) -> Path | None:
    """Copy the cached pristine cluster (~0.1 s) or run initdb (~0.8 s) and cache its result.

    Returns the template the data dir was copied from, if any.
    """
    template = _template_path(cluster.bindir)
    copied = template is not None and _copy_template(template, cluster.datadir)
    if not copied:
        # -A trust: initdb wants a password file for scram; the pg_hba.conf below rules anyway.
        result = cluster.run(
            "initdb", "-D", cluster.datadir, "-U", SUPERUSER,
            "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync",
        )  # fmt: skip
        if result.returncode != 0:
            raise EphemeralUnavailable(
                f"initdb failed (exit {result.returncode}):\n"
                + _tail(result.stdout + result.stderr)
            )
        if template is not None:
            _save_template(cluster.datadir, template)
    Path(cluster.datadir, "pg_hba.conf").write_text(PG_HBA)
    if cluster.uid is not None:
        _chown_tree(cluster.datadir, cluster.uid, cluster.gid)
    return template if copied else None


def _template_path(bindir: str) -> Path | None:
    """Cache entry for these exact binaries; None when caching is off."""
    configured = os.environ.get(CACHE_ENV)
    if configured == "off":
        return None
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    root = Path(configured or os.path.join(xdg, "pytest-ledger-rollout", "pg-templates"))
    # Identity of the binaries (path, size, mtime): an upgrade in place gets a new entry.
    identity = ["v1", os.path.realpath(bindir)]
    for tool in ("initdb", "postgres"):
        st = os.stat(os.path.join(bindir, tool))
        identity += [str(st.st_size), str(st.st_mtime_ns)]
    return root / hashlib.sha256("\0".join(identity).encode()).hexdigest()[:24]


def _copy_template(template: Path, datadir: str) -> bool:
    if not template.is_dir():
        return False
    # In a process of its own where there is one: a Python loop over the ~1000 files waits for
    # the GIL at every file while another thread imports (the phase run, the migrations'
    # application), and 0.05 s become 0.5 s.
    cp = shutil.which("cp")
    if cp is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                [cp, "-R", "-P", "--preserve=mode,timestamps", "--", str(template), datadir],
                capture_output=True, timeout=60, check=False,
            )  # fmt: skip
            if done.returncode == 0:
                return True
        shutil.rmtree(datadir, ignore_errors=True)
    try:
        shutil.copytree(template, datadir, symlinks=True)
    except OSError:
        shutil.rmtree(datadir, ignore_errors=True)  # unreadable cache: fall back to initdb
        return False
    return True


def _save_template(datadir: str, template: Path) -> None:
    """Best effort; the rename makes a half-written entry impossible, and the first writer wins."""
    staging = template.with_name(f".{template.name}.{os.getpid()}.partial")
    try:
        template.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        shutil.copytree(datadir, staging, symlinks=True)
        staging.rename(template)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)


def _chown_tree(top: str, uid: int, gid: int | None) -> None:
    group = -1 if gid is None else gid
    chown = shutil.which("chown")  # in a process of its own, as the copy (see _copy_template)
    if chown is not None:
        owner = f"{uid}" if gid is None else f"{uid}:{gid}"
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            done = subprocess.run(
                [chown, "-R", "-h", owner, "--", top], capture_output=True, timeout=60, check=False
            )
            if done.returncode == 0:
                return
    os.chown(top, uid, group)
    for parent, dirs, files in os.walk(top):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), uid, group, follow_symlinks=False)


def _start_postmaster(cluster: Cluster) -> int:
    for _ in range(START_ATTEMPTS):
        port = free_port()
        log_start = _log_size(cluster)
        params = {**SERVER_SETTINGS, "unix_socket_directories": cluster.tmpdir}
        options = ["-p", str(port)] + [f"-c{name}={value}" for name, value in params.items()]
        # pg_ctl hands -o to /bin/sh, hence the shell quoting.
        result = cluster.run(
            "pg_ctl", "start", "-D", cluster.datadir, "-l", cluster.logfile,
            "-w", "-t", "30", "-o", shlex.join(options),
        )  # fmt: skip
        if result.returncode == 0:
            return port
        log = _read_log(cluster, log_start)
        if "Address already in use" not in log:
            raise RuntimeError(
                f"pg_ctl start failed (exit {result.returncode}):\n"
                + _tail(result.stdout + result.stderr + log)
            )
    raise RuntimeError(
        f"pg_ctl start found no free port in {START_ATTEMPTS} attempts:\n"
        + _tail(_read_log(cluster, 0))
    )


def _configure(cluster: Cluster, port: int, password: str, database: str) -> None:
    try:
        with psycopg.connect(
            host=cluster.tmpdir,
            port=port,
            user=SUPERUSER,
            dbname="postgres",
            autocommit=True,
            connect_timeout=10,
        ) as conn:
            verifier = conn.pgconn.encrypt_password(
                password.encode(), SUPERUSER.encode(), b"scram-sha-256"
            ).decode()
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(SUPERUSER), sql.Literal(verifier)
                )
            )
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,))
            if exists.fetchone() is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
    except psycopg.Error as exc:
        raise RuntimeError(
            f"configuring the local server failed: {exc}\n" + _tail(_read_log(cluster, 0))
        ) from exc


def _log_size(cluster: Cluster) -> int:
    try:
        return os.path.getsize(cluster.logfile)
    except OSError:
        return 0


def _read_log(cluster: Cluster, offset: int) -> str:
    try:
        with open(cluster.logfile, "rb") as log:
            log.seek(offset)
            return log.read().decode(errors="replace")
    except OSError:
        return ""


def _tail(text: str, lines: int = 20) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
