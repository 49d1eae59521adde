"""A real Prometheus on loopback, with data we control: for rehearsals and tests.

Two ways to give it data:

- history: ``Series`` written as OpenMetrics with explicit timestamps and turned into TSDB
  blocks by ``promtool tsdb create-blocks-from openmetrics`` before the server starts. Keep
  such history well before now (days, not minutes): blocks must not overlap the head block
  (the last ~2-3 h the live server writes to), and queries are pinned inside the history.
- live: scrape targets (``host:port`` serving /metrics), every ``scrape_interval``.

Every server is stopped by ``stop()`` (context manager), and the kernel sends it SIGTERM if
this process dies first (PR_SET_PDEATHSIG).
"""

from __future__ import annotations

import contextlib
import math
import shutil
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Self

import requests

from pytest_ledger_rollout.processes import die_with_parent, free_port, stop_process

INSTALL_HINT = "install the Debian package: apt-get install prometheus"
READY_TIMEOUT = 15.0


class PrometheusUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Binaries:
    prometheus: str
    promtool: str


def find_binaries() -> Binaries:
    found = {name: shutil.which(name) for name in ("prometheus", "promtool")}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        raise PrometheusUnavailable(f"{' and '.join(missing)} not on PATH: {INSTALL_HINT}")
    return Binaries(str(found["prometheus"]), str(found["promtool"]))


# --- data ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Series:
    """One series of a counter or gauge family, with its samples in time order."""

    family: str  # OpenMetrics family name: a counter "x" is exported as "x_total"
    kind: str  # "counter" | "gauge"
    labels: Mapping[str, str]
    samples: Sequence[tuple[datetime, float]]

    @property
    def name(self) -> str:
        return f"{self.family}_total" if self.kind == "counter" else self.family


def openmetrics(series: Iterable[Series]) -> str:
    """OpenMetrics text with explicit timestamps; a family's series are written together."""
    families: dict[str, list[Series]] = {}
    for one in series:
        families.setdefault(one.family, []).append(one)
    lines = []
    for family, members in families.items():
        lines.append(f"# TYPE {family} {members[0].kind}")
        for one in members:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(one.labels.items()))
            lines += [
                f"{one.name}{{{labels}}} {_number(value)} {at.timestamp():.3f}"
                for at, value in one.samples
            ]
    return "\n".join([*lines, "# EOF", ""])


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    return ("+Inf" if value > 0 else "-Inf") if math.isinf(value) else repr(value)


@dataclass
class PrometheusServer:
    url: str
    process: subprocess.Popen[bytes] = field(repr=False)
    workdir: Path
    backfill_seconds: float  # promtool, before start (0 without history)
    startup_seconds: float  # spawn -> /-/ready
    started_at: float  # time.time() when it was ready

    def stop(self) -> None:
        stop_process(self.process)

    def log(self) -> str:
        return (self.workdir / "prometheus.log").read_text(errors="replace")

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def start_prometheus(
    workdir: Path,
    *,
    history: Iterable[Series] = (),
    scrape: Sequence[str] = (),
    scrape_interval: str = "1s",
) -> PrometheusServer:
    """Start Prometheus in ``workdir`` (config, storage, log), ready to answer queries.

    ``history`` is backfilled into storage first; ``scrape`` lists ``host:port`` targets whose
    ``/metrics`` it scrapes every ``scrape_interval``. Nothing remote, nothing persistent.
    """
    binaries = find_binaries()
    storage = workdir / "data"
    storage.mkdir(parents=True)
    backfill_seconds = 0.0
    text = openmetrics(history)
    if text != "# EOF\n":
        source = workdir / "history.om"
        source.write_text(text)
        began = time.perf_counter()
        subprocess.run(
            [
                binaries.promtool,
                "tsdb",
                "create-blocks-from",
                "openmetrics",
                str(source),
                str(storage),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        backfill_seconds = time.perf_counter() - began
    config = workdir / "prometheus.yml"
    config.write_text(_config(scrape, scrape_interval))
    # The port comes from the kernel and is handed over; if another process takes it in the
    # meantime Prometheus exits at once, and we try again with a new one.
    for _ in range(3):
        port = free_port()
        began = time.perf_counter()
        process = _spawn(binaries.prometheus, config, storage, port, workdir / "prometheus.log")
        url = f"http://127.0.0.1:{port}"
        if _wait_ready(url, process):
            return PrometheusServer(
                url,
                process,
                workdir,
                backfill_seconds,
                time.perf_counter() - began,
                time.time(),
            )
    log = (workdir / "prometheus.log").read_text(errors="replace")[-2000:]
    raise RuntimeError(f"Prometheus did not become ready; its log ends with:\n{log}")


def _config(scrape: Sequence[str], interval: str) -> str:
    lines = ["global:", f"  scrape_interval: {interval}", f"  evaluation_interval: {interval}"]
    if scrape:
        lines += [
            "scrape_configs:",
            "  - job_name: target",
            "    static_configs:",
            f"      - targets: [{', '.join(repr(t) for t in scrape)}]",
        ]
    return "\n".join(lines) + "\n"


def _spawn(
    binary: str, config: Path, storage: Path, port: int, log: Path
) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={storage}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )


def _wait_ready(url: str, process: subprocess.Popen[bytes]) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False  # exited, e.g. the port was taken
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"{url}/-/ready", timeout=1).status_code == 200:
                return True
        time.sleep(0.02)
    process.kill()
    process.wait()
    return False
