"""Start the reference service: `python -m backend.serve --host 127.0.0.1 --port 8000`.

Environment: DATABASE_URL (required), WEBHOOK_SECRET (required), and the fault switches of
`backend.settings.Fault` (LEDGER_FAULT_*=1), read once at start."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import threading
import time

import uvicorn
from sqlalchemy.exc import DBAPIError

from .app import create_app
from .db import masked
from .settings import Settings

log = logging.getLogger("backend")


def _exit_with_parent() -> None:
    """Shut down (SIGTERM, as uvicorn expects) once the starting process is gone, so a killed
    test run or rehearsal leaves no server behind."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        log.warning("parent process %s is gone: shutting down", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m backend.serve", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="stop when the starting process exits"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s [%(name)s] %(message)s"
    )
    settings = Settings.from_env()
    try:
        app = create_app(settings)
    except DBAPIError as exc:
        # libpq's message names host and user at most; the URL itself is never printed.
        reason = str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else ""
        raise SystemExit(
            f"cannot reach the ledger database {masked(settings.database_url)}: {reason}"
        ) from None
    if args.exit_with_parent:
        _exit_with_parent()
    faults = ", ".join(sorted(f.value for f in settings.faults)) or "none"
    log.info(
        "ledger service on http://%s:%s, database %s, faults: %s",
        args.host,
        args.port,
        masked(settings.database_url),
        faults,
    )
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, access_log=False)


if __name__ == "__main__":
    main()
