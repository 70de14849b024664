import json

import pytest

from polar_vbll.errors import CacheError
from polar_vbll.models import cache


@pytest.fixture
def folder(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "model.safetensors").write_bytes(b"\x01" * 1000)
    (target / "config.json").write_text("{}")
    cache.write_manifest(target, {"model": "x"})
    return target


def test_complete_cache_verifies(folder):
    manifest = cache.verify(folder)
    assert set(manifest["files"]) == {"model.safetensors", "config.json"} and manifest["model"] == "x"


def test_flipped_byte_is_detected(folder):
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[500] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(CacheError, match="sha256 differs"):
        cache.verify(folder)


def test_truncated_missing_and_partial_caches_are_detected(folder):
    (folder / "model.safetensors").write_bytes(b"\x01" * 10)
    with pytest.raises(CacheError, match="10 bytes, manifest says 1000"):
        cache.verify(folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(CacheError, match="missing"):
        cache.verify(folder)
    (folder / cache.MANIFEST).write_text("{broken")
    with pytest.raises(CacheError, match="unreadable manifest"):
        cache.verify(folder)
    (folder / cache.MANIFEST).unlink()
    with pytest.raises(CacheError, match="partial or foreign"):
        cache.verify(folder)


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("POLAR_VBLL_CACHE", str(tmp_path))
    assert cache.model_cache_dir("m") == tmp_path / "models" / "m"
    monkeypatch.delenv("POLAR_VBLL_CACHE")
    assert cache.cache_root().name == "polar_vbll"
    assert json.loads(json.dumps({"ok": 1}))
