import json

import pytest

from polar_vbll.atomic import atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_text


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path):
    target = atomic_write_json(tmp_path / "sub" / "r.json", {"a": 1})
    atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 2}
    assert [p.name for p in target.parent.iterdir()] == ["r.json"]


def test_failed_write_keeps_the_old_file(tmp_path):
    target = atomic_write_text(tmp_path / "r.txt", "old")
    with pytest.raises(TypeError):
        atomic_write_bytes(target, "not bytes")  # fails inside the write, after the temp file exists
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_atomic_directory_swaps_in_whole_or_not_at_all(tmp_path):
    target = tmp_path / "cache"
    with atomic_directory(target) as tmp:
        (tmp / "a").write_text("1")
    assert (target / "a").read_text() == "1"
    with pytest.raises(RuntimeError), atomic_directory(target) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("killed mid-way")
    assert (target / "a").read_text() == "1" and [p.name for p in tmp_path.iterdir()] == ["cache"]
    with atomic_directory(target) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"] and [p.name for p in tmp_path.iterdir()] == ["cache"]
