"""Output folders: the marker, what --overwrite may remove, and refusals on read-only or full disks."""

from __future__ import annotations

import subprocess
import uuid

import pytest

from polar_vbll.errors import PolarVBLLError
from polar_vbll.outputs import MARKER, OutputKind, check_replaceable, claim, prepare_output, read_marker
from polar_vbll.report import write_report


def test_a_run_folder_is_marked_and_overwrite_removes_only_its_entries(tmp_path):
    run = prepare_output(tmp_path / "run", OutputKind.RUN)
    claim(run, "config.json", "checkpoint")
    (run / "config.json").write_text("{}")
    (run / "checkpoint").mkdir()
    (run / ".checkpoint.x1.tmp").mkdir()  # an interrupted atomic write of a listed entry
    (run / "notes.md").write_text("mine")
    assert read_marker(run)["entries"] == ["config.json", "checkpoint"]
    with pytest.raises(PolarVBLLError, match="already holds a run"):
        prepare_output(run, OutputKind.RUN)
    prepare_output(run, OutputKind.RUN, overwrite=True)
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "notes.md"]
    assert read_marker(run)["entries"] == []


def test_claim_never_replaces_a_file_it_did_not_write(tmp_path):
    (tmp_path / "report.json").write_text("mine")
    with pytest.raises(PolarVBLLError, match="report.json: exists and was not written by polar-vbll"):
        write_report({}, tmp_path)
    assert (tmp_path / "report.json").read_text() == "mine"


def test_an_evaluation_folder_is_rewritten_whole(tmp_path):
    """A second evaluation into the same folder replaces the first one's files, stale plots included."""
    out = prepare_output(tmp_path / "eval", OutputKind.EVALUATION)
    claim(out, "ood_roc.png")
    (out / "ood_roc.png").write_bytes(b"png")
    (out / "mine.txt").write_text("mine")
    prepare_output(out, OutputKind.EVALUATION)
    assert sorted(p.name for p in out.iterdir()) == [MARKER, "mine.txt"]
    with pytest.raises(PolarVBLLError, match="holds a polar-vbll evaluation output, not run output"):
        prepare_output(out, OutputKind.RUN, overwrite=True)


def test_a_comparison_goes_beside_other_files(tmp_path):
    (tmp_path / "a_run").mkdir()
    prepare_output(tmp_path, OutputKind.COMPARISON)
    claim(tmp_path, "comparison.md")
    claim(tmp_path, "comparison.md")  # ours now: may be rewritten
    assert (tmp_path / "a_run").is_dir() and read_marker(tmp_path)["entries"] == ["comparison.md"]


def test_legacy_folders_are_adopted_only_when_they_hold_nothing_else(tmp_path):
    old = tmp_path / "old"
    old.mkdir()
    for name in ("config.json", "train_log.jsonl", "report.json", "reliability.png"):
        (old / name).write_text("x")
    (old / "checkpoint").mkdir()
    prepare_output(old, OutputKind.RUN, overwrite=True)
    assert [p.name for p in old.iterdir()] == [MARKER]
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    (mixed / "config.json").write_text("{}")
    (mixed / "main.py").write_text("print()")
    with pytest.raises(PolarVBLLError, match="not empty and not a polar-vbll run folder"):
        prepare_output(mixed, OutputKind.RUN, overwrite=True)
    assert sorted(p.name for p in mixed.iterdir()) == ["config.json", "main.py"]


def test_a_damaged_marker_is_reported_not_trusted(tmp_path):
    (tmp_path / MARKER).write_text('{"kind": "run", "entries": [1]}')
    with pytest.raises(PolarVBLLError, match=r"\.polar-vbll\.json: damaged polar-vbll marker"):
        prepare_output(tmp_path, OutputKind.RUN, overwrite=True)


def test_check_replaceable(tmp_path):
    check_replaceable(tmp_path / "new", {"a"})
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "a").write_text("x")
    check_replaceable(tmp_path / "adapter", {"a"})
    (tmp_path / "adapter" / "b").write_text("x")
    with pytest.raises(PolarVBLLError, match="adapter: holds b, which this would replace"):
        check_replaceable(tmp_path / "adapter", {"a"})


@pytest.fixture
def mounted(tmp_path):
    """``mount(options)``: a small tmpfs below tmp_path (root only; skipped where mounting is not allowed)."""
    points = []

    def mount(options: str):
        point = tmp_path / uuid.uuid4().hex[:8]
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(point)], capture_output=True)
        if done.returncode:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        points.append(point)
        return point

    yield mount
    for point in points:
        subprocess.run(["umount", str(point)], capture_output=True)


def test_a_read_only_disk_is_refused_before_any_work(mounted):
    point = mounted("ro,size=1m")
    with pytest.raises(PolarVBLLError, match=r"cannot create the folder \(Read-only file system\)"):
        prepare_output(point / "run", OutputKind.EVALUATION)


def test_a_full_disk_is_refused_before_any_work(mounted):
    point = mounted("size=64k")
    with pytest.raises(PolarVBLLError, match=r"only 0 MiB free on its disk \(needs 16 MiB\)"):
        prepare_output(point / "run", OutputKind.RUN)


def test_evaluate_on_a_read_only_disk_fails_before_loading_the_model(mounted, capsys, tiny_dir, monkeypatch):
    import polar_vbll.evaluation
    from polar_vbll.cli import main

    point = mounted("ro,size=1m")
    monkeypatch.setattr(polar_vbll.evaluation, "load_backbone", lambda *a, **k: pytest.fail("loaded the model"))
    capsys.readouterr()  # drop what the fixture printed
    code = main(["evaluate", "--model", str(tiny_dir), "--task", "sst2", "--out", str(point / "x"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0 and "Read-only file system" in err, err
