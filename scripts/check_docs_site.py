"""Open every page of the built docs site (``make docs`` → ``site/``) in headless Chromium: each must render (its
title set by the probe) and every image on it must decode; screenshots of the pages named by ``--screenshot``.

    python scripts/check_docs_site.py --screenshot index guides/reports --out /tmp/docs-shots
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from check_report_html import check_page, find_browser  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--site", type=Path, default=ROOT / "site")
    parser.add_argument("--screenshot", nargs="*", default=["index", "guides/reports"], help="pages to screenshot")
    parser.add_argument("--out", type=Path, default=Path("docs-screenshots"))
    args = parser.parse_args()
    browser = find_browser()
    if browser is None:
        print("no chromium found: apt-get install chromium", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    pages = sorted(p for p in args.site.rglob("index.html") if "assets" not in p.parts)
    failed = []
    for page in pages:
        name = page.parent.relative_to(args.site).as_posix() if page.parent != args.site else "index"
        shot = args.out / (name.replace("/", "_") + ".png") if name in args.screenshot else None
        decoded, total = check_page(browser, page, shot, size="1280,2400")
        ok = decoded == total >= 0
        print(f"{'ok  ' if ok else 'FAIL'} {name}: {decoded} of {total} images decoded" + (f"; {shot}" if shot else ""))
        if not ok:
            failed.append(name)
    print(f"{len(pages) - len(failed)} of {len(pages)} pages rendered with every image decoded")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
