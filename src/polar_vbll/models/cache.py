"""The user cache of prepared models: written atomically, verified on every load.

A cached model is a folder ``$POLAR_VBLL_CACHE/models/<name>/`` holding a ``save_pretrained`` copy (safetensors)
and ``polar_vbll_manifest.json`` with the size and sha256 of every file. The manifest is written last, inside a
temporary folder that is renamed into place, so a folder with a valid manifest is complete; a load that finds a
missing manifest, a missing file, or a size or hash mismatch reports it as :class:`CacheError`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ..atomic import atomic_write_json
from ..errors import CacheError, PolarVBLLError

MANIFEST = "polar_vbll_manifest.json"


def cache_root() -> Path:
    """``$POLAR_VBLL_CACHE`` or ``~/.cache/polar_vbll``; refused at once if it names something that is no folder."""
    value = os.environ.get("POLAR_VBLL_CACHE")
    root = Path(value).expanduser() if value else Path.home() / ".cache" / "polar_vbll"
    if root.exists() and not root.is_dir():
        where = f"POLAR_VBLL_CACHE={value}" if value else str(root)
        raise PolarVBLLError(f"{where}: is a file, not a folder (the model and covariance cache goes there)")
    return root


def model_cache_dir(name: str) -> Path:
    return cache_root() / "models" / name


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path, info: dict) -> None:
    """Record size and sha256 of every file in ``folder`` (call it last, before the folder is renamed in)."""
    files = {
        p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(folder.iterdir())
        if p.is_file() and p.name != MANIFEST
    }
    atomic_write_json(folder / MANIFEST, {"files": files, **info})


def verify(folder: Path) -> dict:
    """Return the manifest of a complete cache folder; raise :class:`CacheError` naming the first problem."""
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise CacheError(f"{folder}: no {MANIFEST} (partial or foreign cache)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise CacheError(f"{manifest_path}: unreadable manifest ({exc})") from None
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            raise CacheError(f"{path}: missing")
        if path.stat().st_size != expected["bytes"]:
            raise CacheError(f"{path}: {path.stat().st_size} bytes, manifest says {expected['bytes']}")
        if sha256_file(path) != expected["sha256"]:
            raise CacheError(f"{path}: sha256 differs from the manifest (corrupt)")
    return manifest
