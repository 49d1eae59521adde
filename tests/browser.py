"""What a person sees of a sign-off report: headless Chromium (Debian's `chromium`) prints the
page to PDF and `pdftotext` (poppler-utils) reads it back, with scripts on or off.

A viewer that blocks scripts is stood in for by a copy of the page with every <script>
removed (Chromium's own switch to disable scripts writes nothing headless). The same module
takes a screenshot for a developer: `python -m tests.browser report.html out.png`."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from .support import missing_component

_SCRIPT = re.compile(r"<script\b.*?</script>", re.DOTALL | re.IGNORECASE)
# As root, without a sandbox, and quiet: no background connections on a closed network.
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=5000",
)
RENDER_TIMEOUT = 120  # seconds


def chromium() -> str:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    missing_component("Chromium", "install it, e.g. 'sudo apt-get install chromium'")
    raise AssertionError("unreachable")


def _pdftotext() -> str:
    found = shutil.which("pdftotext")
    if found is None:
        missing_component("pdftotext", "install it, e.g. 'sudo apt-get install poppler-utils'")
        raise AssertionError("unreachable")
    return found


def _page(html: Path, folder: Path, scripts: bool) -> Path:
    html = html.resolve()
    if scripts:
        return html
    copy = folder / f"noscript-{html.name}"
    copy.write_text(_SCRIPT.sub("", html.read_text(encoding="utf-8")), encoding="utf-8")
    return copy


def _chromium(folder: Path, *args: str) -> None:
    subprocess.run(
        [chromium(), *_FLAGS, f"--user-data-dir={folder / 'profile'}", *args],
        check=True,
        capture_output=True,
        timeout=RENDER_TIMEOUT,
    )


def visible_text(html: Path, *, scripts: bool) -> str:
    """The page's text as printed, in reading order (layout kept)."""
    with tempfile.TemporaryDirectory(prefix="report-view-") as name:
        folder = Path(name)
        pdf = folder / "page.pdf"
        page = _page(html, folder, scripts)
        _chromium(folder, "--no-pdf-header-footer", f"--print-to-pdf={pdf}", page.as_uri())
        printed = subprocess.run(
            [_pdftotext(), "-layout", str(pdf), "-"],
            check=True,
            capture_output=True,
            text=True,
            timeout=RENDER_TIMEOUT,
        )
        return printed.stdout


def screenshot(html: Path, png: Path, *, scripts: bool = True) -> Path:
    with tempfile.TemporaryDirectory(prefix="report-shot-") as name:
        folder = Path(name)
        page = _page(html, folder, scripts)
        _chromium(folder, f"--screenshot={png.resolve()}", "--window-size=1400,2400", page.as_uri())
    return png


if __name__ == "__main__":
    if len(sys.argv) not in (2, 3):
        sys.exit("usage: python -m tests.browser REPORT.html [OUT.png]")
    report = Path(sys.argv[1]).resolve()
    out = Path(sys.argv[2]) if len(sys.argv) == 3 else report.with_suffix(".png")
    print(screenshot(report, out))
