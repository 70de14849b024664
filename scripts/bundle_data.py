"""Rebuild the compressed benchmark copies shipped inside the package.

Maintainer script (not used at run time). Reads the plain data folder documented by its README.md table
(file, examples, bytes, sha256, source, license, notes), verifies every file against that table, and writes

    src/polar_vbll/data/bundled/<folder>/<file>.xz      xz-compressed bytes, identical after decompression
    src/polar_vbll/data/bundled/MANIFEST.json           per file: examples, bytes, sha256, source, license
    src/polar_vbll/data/bundled/DATA_LICENSES.md        attribution and licenses

Usage: python scripts/bundle_data.py [--source ../shared/data]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = ROOT / "src" / "polar_vbll" / "data" / "bundled"
ROW = re.compile(
    r"^\| (?P<file>[\w/.-]+\.(?:jsonl|csv)) \| (?P<examples>\d+) \| (?P<bytes>\d+) \| (?P<sha256>[0-9a-f]{64}) \| "
    r"(?P<source>[^|]+) \| (?P<license>[^|]+) \| (?P<notes>[^|]*) \|$"
)


def parse_readme(readme: Path) -> list[dict]:
    rows = []
    for line in readme.read_text(encoding="utf-8").splitlines():
        match = ROW.match(line.strip())
        if match:
            row = {k: v.strip() for k, v in match.groupdict().items()}
            row["examples"] = int(row["examples"])
            row["bytes"] = int(row["bytes"])
            rows.append(row)
    if not rows:
        raise SystemExit(f"{readme}: no data table rows found")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=ROOT.parent / "shared" / "data")
    args = parser.parse_args()
    readme = args.source / "README.md"
    rows = parse_readme(readme)
    manifest = {"about": "Compressed copies of benchmark data; see DATA_LICENSES.md", "files": {}}
    for row in rows:
        raw = (args.source / row["file"]).read_bytes()
        digest = hashlib.sha256(raw).hexdigest()
        if digest != row["sha256"] or len(raw) != row["bytes"]:
            raise SystemExit(f"{row['file']}: sha256/bytes differ from {readme}")
        target = BUNDLE / (row["file"] + ".xz")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME))
        manifest["files"][row["file"]] = {
            k: row[k] for k in ("examples", "bytes", "sha256", "source", "license", "notes")
        }
        print(f"{row['file']}: {len(raw)} -> {target.stat().st_size} bytes")
    (BUNDLE / "MANIFEST.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    lines = [
        "# Data licenses and attribution",
        "",
        "The benchmark files bundled here are unmodified copies (xz-compressed) of public releases. Each keeps the",
        "license of its source; they are data, not code of this project, and are not covered by its license.",
        "",
        "| file | examples | source (repository@commit:path) | license | notes |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {r['file']} | {r['examples']} | {r['source']} | {r['license']} | {r['notes']} |" for r in rows]
    lines += [
        "",
        "Original datasets: SST-2 (Socher et al. 2013, GLUE), WinoGrande 1.1 (Sakaguchi et al. 2020),",
        "ARC (Clark et al. 2018, AI2), OpenBookQA (Mihaylov et al. 2018, AI2), BoolQ (Clark et al. 2019, Google),",
        "MMLU (Hendrycks et al. 2021).",
        "",
    ]
    (BUNDLE / "DATA_LICENSES.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
