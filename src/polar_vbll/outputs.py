"""Output folders this tool owns: a marker lists what it wrote, so nothing else is ever overwritten or removed.

Every command that writes a folder (``fit``, ``refine``, ``evaluate --out``, ``report --out``, the benchmarks) first
calls :func:`prepare_output`; every file or folder it then writes there is first :func:`claim`-ed. The folder holds
the marker ``.polar-vbll.json``::

    {"format": 1, "kind": "run", "entries": ["config.json", "train_log.jsonl", "checkpoint", ...]}

An entry is listed *before* it is written, so a crash leaves at most a listed name that does not exist yet.
Guarantees:

- a folder that is not empty and holds no marker is refused (nothing is written into it), except by the kinds
  that only add one file beside others (``comparison``);
- ``overwrite`` removes exactly the listed entries (and the temporaries of their atomic writes), never a file
  the tool did not write: a user's notes beside a run survive it;
- a name that exists but is not listed is never overwritten.

Run folders written before the marker existed (only run files in them, a ``config.json``) are adopted as runs.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from enum import StrEnum
from pathlib import Path

from .atomic import atomic_write_json, remove_temporaries
from .errors import PolarVBLLError

MARKER = ".polar-vbll.json"
MIN_FREE_BYTES = 16 << 20  # a report with its plots is < 1 MiB; refuse a nearly full disk before the work starts


class OutputKind(StrEnum):
    """What a folder holds. ``comparison`` adds a file beside others; every other kind owns its folder."""

    RUN = "run"
    EVALUATION = "evaluation"
    COMPARISON = "comparison"
    POOL = "pool"  # an AMT LoRA pool
    ADAPTER = "adapter"  # an adapter written on its own (AMT's merge)
    EXPORT = "export"  # a run exported for serving (merged model, head, model card)


_REPORT_FILES = {"report.json", "report.md", "report.html"}
# the entries of folders written before the marker existed, by kind: such a folder holding nothing else is adopted
_LEGACY_ENTRIES = {
    OutputKind.RUN: _REPORT_FILES | {"config.json", "train_log.jsonl", "checkpoint", "adapter", "head.safetensors"},
    OutputKind.EVALUATION: _REPORT_FILES,
}
_SHARED = {OutputKind.COMPARISON}


def read_marker(folder: Path) -> dict | None:
    """The marker of ``folder``, or None when it has none; a damaged marker is an error naming the file."""
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        marker = json.loads(path.read_text(encoding="utf-8"))
        OutputKind(marker["kind"])
        if not all(isinstance(name, str) for name in marker["entries"]):
            raise TypeError("entries must be names")
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise PolarVBLLError(f"{path}: damaged polar-vbll marker ({exc}); remove the folder yourself") from None
    return marker


def _write_marker(folder: Path, kind: OutputKind, entries: list[str]) -> None:
    try:
        atomic_write_json(folder / MARKER, {"format": 1, "kind": kind.value, "entries": entries})
    except OSError as exc:
        raise PolarVBLLError(f"{folder}: cannot write here ({exc.strerror})") from None


def _legacy_entries(folder: Path, kind: OutputKind) -> list[str] | None:
    """The entries of a folder written before markers existed, or None if it holds anything else."""
    names = [p.name for p in folder.iterdir() if not (p.name.startswith(".") and p.name.endswith((".tmp", ".old")))]
    known = _LEGACY_ENTRIES.get(kind, set())
    if kind is OutputKind.RUN and "config.json" not in names:
        return None
    if not names or not all(name in known or name.endswith(".png") for name in names):
        return None
    return sorted(names)


def _check_free_space(folder: Path) -> None:
    free = shutil.disk_usage(folder).free
    if free < MIN_FREE_BYTES:
        raise PolarVBLLError(f"{folder}: only {free >> 20} MiB free on its disk (needs {MIN_FREE_BYTES >> 20} MiB)")


def _make_folder(folder: Path) -> None:
    if folder.exists() and not folder.is_dir():
        raise PolarVBLLError(f"{folder}: is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise PolarVBLLError(f"{folder}: cannot create the folder ({exc.strerror})") from None


def remove_entries(folder: Path, entries: list[str]) -> None:
    """Remove the listed entries of ``folder`` (moved aside first, so a crash leaves them whole or gone)."""
    present = [name for name in entries if (folder / name).exists() or (folder / name).is_symlink()]
    if present:
        trash = Path(tempfile.mkdtemp(prefix=".polar-vbll-removed.", suffix=".old", dir=folder))
        for name in present:
            (folder / name).rename(trash / name)
        shutil.rmtree(trash)
    for name in entries:
        remove_temporaries(folder / name)


def prepare_output(folder: str | Path, kind: OutputKind | str, *, overwrite: bool = False) -> Path:
    """Make ``folder`` ready for a new output of ``kind``, before any work starts; returns it.

    A new or empty folder is marked. A folder already holding an output of the same kind is emptied of that output's
    entries (a run only with ``overwrite``); any other non-empty folder is refused with one line. The marker write
    doubles as the check that the folder is writable, so a read-only or full disk fails now, not after the work.
    """
    folder, kind = Path(folder), OutputKind(kind)
    _make_folder(folder)
    marker = read_marker(folder)
    if kind in _SHARED:
        if marker is None:
            _write_marker(folder, kind, [])
        _check_free_space(folder)
        return folder
    if marker is None and any(folder.iterdir()):
        entries = _legacy_entries(folder, kind)
        if entries is None:
            raise PolarVBLLError(
                f"{folder}: not empty and not a polar-vbll {kind.value} folder; choose a new or empty folder "
                "(nothing was written or removed)"
            )
        marker = {"kind": kind.value, "entries": entries}
    if marker is not None and marker["kind"] != kind.value:
        raise PolarVBLLError(
            f"{folder}: holds a polar-vbll {marker['kind']} output, not {kind.value} output; choose another folder"
        )
    if marker is not None and marker["entries"]:
        if kind is OutputKind.RUN and not overwrite:
            raise PolarVBLLError(
                f"{folder} already holds a run; resume it (--resume), --overwrite it, or choose another --out"
            )
        if kind is OutputKind.POOL and not overwrite:  # the same config continues a pool without coming here
            raise PolarVBLLError(f"{folder} already holds a pool of another config; --overwrite it or choose another")
        remove_entries(folder, marker["entries"])
    _write_marker(folder, kind, [])
    _check_free_space(folder)
    return folder


def open_run(folder: str | Path) -> Path:
    """A run folder to resume: marked as a run, or a run written before markers existed (then marked now)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PolarVBLLError(f"{folder}: no such run folder to resume")
    marker = read_marker(folder)
    if marker is None:
        entries = _legacy_entries(folder, OutputKind.RUN)
        if entries is None:
            raise PolarVBLLError(f"{folder}: not a polar-vbll run folder (no {MARKER}); nothing to resume")
        _write_marker(folder, OutputKind.RUN, entries)
    elif marker["kind"] != OutputKind.RUN.value:
        raise PolarVBLLError(f"{folder}: holds a polar-vbll {marker['kind']}, not a run; nothing to resume")
    return folder


def claim(folder: str | Path, *names: str) -> None:
    """List ``names`` in the marker of ``folder`` before they are written; refuse one that exists but is not ours.

    A folder without a marker (a direct API call) is first prepared as a ``comparison``-like shared folder: the
    files are added beside whatever is there, and none that exists is replaced.
    """
    folder = Path(folder)
    _make_folder(folder)
    marker = read_marker(folder)
    if marker is None:
        _write_marker(folder, OutputKind.COMPARISON, [])
        marker = {"kind": OutputKind.COMPARISON.value, "entries": []}
    entries = list(marker["entries"])
    new = [name for name in names if name not in entries]
    for name in new:
        if (folder / name).exists() or (folder / name).is_symlink():
            raise PolarVBLLError(f"{folder / name}: exists and was not written by polar-vbll; left as it is")
    if new:
        _write_marker(folder, OutputKind(marker["kind"]), entries + new)


def check_replaceable(folder: str | Path, allowed: set[str]) -> None:
    """Refuse to replace ``folder`` as a whole unless it is missing, empty or holds only ``allowed`` names (an
    adapter folder: its config and weights); the replacement would take anything else with it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise PolarVBLLError(f"{folder}: is a file, not a folder")
    if folder.is_dir():
        foreign = sorted(p.name for p in folder.iterdir() if p.name not in allowed)
        if foreign:
            raise PolarVBLLError(
                f"{folder}: holds {', '.join(foreign[:3])}{' ...' if len(foreign) > 3 else ''}, which this would "
                "replace; choose a new or empty folder"
            )
