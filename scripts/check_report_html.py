"""Open a report.html (or any page) in headless Chromium, screenshot it, and check that every image decoded.

Needs Debian's ``chromium`` (``apt-get install chromium``); not part of the test suite, which checks the HTML and
PNG bytes without a browser. ``scripts/check_docs_site.py`` uses :func:`check_page` on every page of the docs site.

    python scripts/check_report_html.py runs/ood/polar-vbll/ood/report.html --screenshot /tmp/report.png
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# headless, and quiet on a closed network: no background connections, no first-run or component updates
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
PROBE = (
    "<script>window.addEventListener('load',()=>{document.title='decoded:'+[...document.images]"
    ".filter(i=>i.complete&&i.naturalWidth>0).length+'/'+document.images.length})</script></body>"
)


def find_browser() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def check_page(browser: str, page: Path, screenshot: Path | None = None, size: str = "1100,2600") -> tuple[int, int]:
    """(images decoded with a real width, images on the page) for ``page`` rendered by ``browser``, and its
    screenshot. The probe is written beside the page, so that its relative links (styles, images) resolve."""
    probe = page.with_name(f".probe-{page.name}")
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", PROBE, 1), encoding="utf-8")
    try:
        with tempfile.TemporaryDirectory() as profile:
            flags = [*FLAGS, f"--user-data-dir={profile}"]
            dom = subprocess.run(
                [browser, *flags, "--virtual-time-budget=5000", "--dump-dom", probe.resolve().as_uri()],
                capture_output=True, text=True, timeout=120,
            ).stdout  # fmt: skip
            if screenshot is not None:
                subprocess.run(
                    [browser, *flags, f"--window-size={size}", f"--screenshot={screenshot.resolve()}",
                     page.resolve().as_uri()],
                    capture_output=True, timeout=120, check=True,
                )  # fmt: skip
    finally:
        probe.unlink()
    match = re.search(r"<title>decoded:(\d+)/(\d+)</title>", dom)
    return (int(match.group(1)), int(match.group(2))) if match else (-1, -1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("--screenshot", type=Path, default=Path("report_screenshot.png"))
    args = parser.parse_args()
    browser = find_browser()
    if browser is None:
        print("no chromium found: apt-get install chromium", file=sys.stderr)
        return 2
    decoded, expected = check_page(browser, args.html, args.screenshot)
    print(f"{args.html}: {decoded} of {expected} images decoded; screenshot {args.screenshot}")
    return 0 if decoded == expected and expected > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
