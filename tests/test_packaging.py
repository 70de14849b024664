"""Release readiness: ``python -m build`` makes a wheel and an sdist, and the wheel, installed into a fresh virtual
environment with no repository beside it, lists the bundled data and scores a model zero-shot: the package data
ship."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*command, cwd: Path) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True)
    assert done.returncode == 0, f"{command}: {done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def test_the_wheel_installs_alone_and_its_bundled_data_work(tmp_path, tiny_dir):
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, ROOT, cwd=tmp_path)
    wheel, sdist = next(dist.glob("*.whl")), next(dist.glob("*.tar.gz"))
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    assert any(n.startswith("polar_vbll/data/bundled/") and n.endswith(".xz") for n in names)
    assert "polar_vbll/data/bundled/DATA_LICENSES.md" in names
    with tarfile.open(sdist) as archive:
        assert any(n.endswith("src/polar_vbll/data/bundled/DATA_LICENSES.md") for n in archive.getnames())

    # a fresh environment: the wheel alone, its dependencies from this environment (read-only, through a .pth
    # line: this environment's editable install of the repository is not processed from there)
    fresh = tmp_path / "fresh"
    run(sys.executable, "-m", "venv", "--without-pip", fresh, cwd=tmp_path)
    python = fresh / "bin" / "python"
    run(
        sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path
    )
    purelib = Path(run(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    (purelib / "_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run(python, "-c", "import polar_vbll; print(polar_vbll.__file__)", cwd=elsewhere).strip()
    assert Path(where).is_relative_to(fresh) and not Path(where).is_relative_to(ROOT)

    listed = run(fresh / "bin" / "polar-vbll", "data", "list", cwd=elsewhere)
    assert "sst2" in listed and "boolq" in listed
    run(fresh / "bin" / "polar-vbll", "evaluate", "--model", tiny_dir, "--task", "sst2", "--limit", "8",
        "--out", "zero-shot", "--quiet", cwd=elsewhere)  # fmt: skip
    report = json.loads((elsewhere / "zero-shot" / "report.json").read_text())
    assert report["n"] == 8 and 0 <= report["metrics"]["cls/acc"] <= 1
