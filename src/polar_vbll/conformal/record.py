"""The decisions a run stores (``RUN/conformal.json``, written by ``polar-vbll conformal``), read back."""

from __future__ import annotations

from pathlib import Path

from ..errors import PolarVBLLError
from ..stored import read_json
from .abstention import Abstention
from .sets import ConformalSets

CONFORMAL_FILE = "conformal.json"


def stored_decisions(run_dir: str | Path) -> tuple[ConformalSets, Abstention] | None:
    """The set rule and abstention threshold stored in a run, or None where none is."""
    path = Path(run_dir) / CONFORMAL_FILE
    if not path.is_file():
        return None
    data = read_json(path, "conformal decisions")
    try:
        return ConformalSets.from_dict(data["sets"]), Abstention.from_dict(data["abstention"])
    except (KeyError, TypeError, ValueError) as exc:
        raise PolarVBLLError(f"{path}: not a conformal record written by `polar-vbll conformal` ({exc!r})") from None
