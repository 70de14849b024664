"""The documentation: the site builds with no warning (dead links and anchors included), the API reference holds
every public name, the code blocks marked runnable run, and the README stays short with its two set-up commands."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import polar_vbll

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
RUNNABLE = re.compile(r"<!-- runnable(?P<slow>: slow)? -->\n```python\n(?P<code>.*?)\n```", re.S)


def runnable_blocks() -> list:
    blocks = []
    for page in sorted(DOCS.rglob("*.md")):
        for number, match in enumerate(RUNNABLE.finditer(page.read_text(encoding="utf-8"))):
            marks = [pytest.mark.slow] if match["slow"] else []
            name = f"{page.relative_to(DOCS).as_posix()}#{number}"
            blocks.append(pytest.param(match["code"], bool(match["slow"]), id=name, marks=marks))
    return blocks


def test_the_site_builds_with_no_warning(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT, capture_output=True, text=True, env={"NO_MKDOCS_2_WARNING": "1", "PATH": ""},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "site" / "reference" / "api" / "index.html").is_file()
    assert (tmp_path / "site" / "results" / "tables" / "head_phase" / "index.html").is_file()


def test_the_api_reference_documents_every_public_name():
    documented = re.findall(r"^::: polar_vbll\.(\w+)$", (DOCS / "reference" / "api.md").read_text(), re.M)
    assert sorted(documented) == sorted(polar_vbll.__all__)


def test_the_readme_is_short_and_keeps_the_two_set_up_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 150
    assert "make demo" in readme and "make test" in readme and "docs/index.md" in readme


def test_the_guides_hold_runnable_blocks():
    assert len(runnable_blocks()) >= 3


@pytest.mark.parametrize(("code", "slow"), runnable_blocks())
def test_a_runnable_block_runs(code, slow, tmp_path, monkeypatch, tiny_dir):
    """Each block runs as written, in a fresh folder; on the tiny test model unless marked slow."""
    monkeypatch.chdir(tmp_path)
    if not slow:
        code = code.replace('"smollm2-135m"', repr(str(tiny_dir)))
    exec(compile(code, "<docs block>", "exec"), {"__name__": "__docs__"})
