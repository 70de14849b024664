"""MkDocs hook: pages generated from files that live elsewhere in the repository, so that nothing is written twice.

- ``results/tables/<name>.md``: every benchmark's Markdown table, ``benchmarks/results/<name>.md``, as committed,
  with ``results/tables/index.md`` listing them;
- ``changelog.md``: ``CHANGELOG.md``;
- ``reference/data-licenses.md``: the bundled data's sources and licenses.
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COPIED = {
    "changelog.md": ROOT / "CHANGELOG.md",
    "reference/data-licenses.md": ROOT / "src" / "polar_vbll" / "data" / "bundled" / "DATA_LICENSES.md",
}


def on_config(config):
    """List every results table in the navigation, under "Every results table"."""
    tables = [f"results/tables/{table.name}" for table in sorted(RESULTS.glob("*.md"))]
    for section in config["nav"]:
        if isinstance(section, dict) and "Results" in section:
            pages = section["Results"]
            for i, entry in enumerate(pages):
                if isinstance(entry, dict) and "Every results table" in entry:
                    pages[i] = {"Every results table": [entry["Every results table"], *tables]}
    return config


def on_files(files, config):
    tables = sorted(RESULTS.glob("*.md"))
    for table in tables:
        files.append(File.generated(config, f"results/tables/{table.name}", content=table.read_text(encoding="utf-8")))
    listing = [
        "# Every results table",
        "",
        "Each benchmark's table as committed in `benchmarks/results/` (beside its JSON,",
        "which also holds the machine and package versions). The command that made it is at its end.",
        "",
    ]
    for table in tables:
        title = table.read_text(encoding="utf-8").splitlines()[0].lstrip("# ").strip()
        listing.append(f"- [{table.stem}]({table.name}): {title}")
    files.append(File.generated(config, "results/tables/index.md", content="\n".join(listing) + "\n"))
    for uri, source in COPIED.items():
        files.append(File.generated(config, uri, content=source.read_text(encoding="utf-8")))
    return files
