"""Read back what the tool stored (safetensors, JSON), with one-line errors that name the file.

A truncated or damaged file (a kill during a copy, a full disk) must say which file it is and what to do, not end
in a library traceback. Nothing here unpickles: tensors come from safetensors, everything else from JSON.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from .errors import PolarVBLLError, first_line


def load_tensors(path: str | Path, what: str = "file") -> dict[str, torch.Tensor]:
    """All tensors of the safetensors file ``path``; ``what`` says what the file is, for the error line."""
    path = Path(path)
    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise PolarVBLLError(f"{path}: {what} missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise PolarVBLLError(f"{path}: unreadable {what}, truncated or corrupt ({first_line(exc)})") from None


def tensor_metadata(path: str | Path, what: str = "file") -> dict[str, str]:
    """The string metadata of a safetensors file's header."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as handle:
            return dict(handle.metadata() or {})
    except FileNotFoundError:
        raise PolarVBLLError(f"{path}: {what} missing") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise PolarVBLLError(f"{path}: unreadable {what}, truncated or corrupt ({first_line(exc)})") from None


def read_json(path: str | Path, what: str = "file") -> Any:
    """The JSON value in ``path``; a malformed file is an error naming its line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolarVBLLError(f"{path}: {what} missing") from None
    except UnicodeDecodeError:
        raise PolarVBLLError(f"{path}: {what} is not UTF-8 text") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise PolarVBLLError(f"{path}:{exc.lineno}: malformed JSON in {what} ({exc.msg})") from None
