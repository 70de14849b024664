"""Open a report.html in headless Chromium, screenshot it, and check that every embedded image decoded.

Needs Debian's ``chromium`` (``apt-get install chromium``); not part of the test suite, which checks the HTML and
PNG bytes without a browser.

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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", type=Path)
    parser.add_argument("--screenshot", type=Path, default=Path("report_screenshot.png"))
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        print("no chromium found: apt-get install chromium", file=sys.stderr)
        return 2
    expected = len(re.findall(r"<img ", args.html.read_text(encoding="utf-8")))
    # a copy with a script that writes, into the DOM title, how many images decoded with a real width
    probe = args.html.read_text(encoding="utf-8").replace(
        "</body>",
        "<script>window.onload=()=>{document.title='decoded:'+[...document.images]"
        ".filter(i=>i.complete&&i.naturalWidth>0).length}</script></body>",
    )
    with tempfile.TemporaryDirectory() as tmp:
        page = Path(tmp) / "page.html"
        page.write_text(probe, encoding="utf-8")
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
        dom = subprocess.run(
            [browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120
        ).stdout
        subprocess.run(
            [browser, *flags, "--window-size=1100,2600", f"--screenshot={args.screenshot.resolve()}", page.as_uri()],
            capture_output=True,
            timeout=120,
            check=True,
        )
    match = re.search(r"<title>decoded:(\d+)</title>", dom)
    decoded = int(match.group(1)) if match else -1
    print(f"{args.html}: {decoded} of {expected} images decoded; screenshot {args.screenshot}")
    return 0 if decoded == expected and expected > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
