"""Save nested training state (optimizer and scheduler state dicts, RNG) without pickle.

Tensors go into one safetensors file, everything else into JSON that points at them. Dicts with non-string keys
(optimizer state is keyed by parameter index) and tuples are encoded so that they come back unchanged.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from ..errors import PolarVBLLError
from ..stored import load_tensors, read_json


def _encode(obj: Any, tensors: dict[str, torch.Tensor], path: str) -> Any:
    if isinstance(obj, torch.Tensor):
        tensors[path] = obj.detach().cpu().contiguous()
        return {"__tensor__": path}
    if isinstance(obj, dict):
        if all(isinstance(k, str) for k in obj):
            return {"__dict__": {k: _encode(v, tensors, f"{path}.{k}") for k, v in obj.items()}}
        return {"__items__": [[k, _encode(v, tensors, f"{path}.{k}")] for k, v in obj.items()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, tensors, f"{path}.{i}") for i, v in enumerate(obj)]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot save {type(obj).__name__} at {path}")


def _decode(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(obj, list):
        return [_decode(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            return tensors[obj["__tensor__"]]
        if "__dict__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__dict__"].items()}
        if "__items__" in obj:
            return {k: _decode(v, tensors) for k, v in obj["__items__"]}
        if "__tuple__" in obj:
            return tuple(_decode(v, tensors) for v in obj["__tuple__"])
    return obj


def save_state(state: dict[str, Any], folder: Path, name: str) -> None:
    """Write ``<name>.json`` and ``<name>.safetensors`` into ``folder``."""
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, tensors, name)
    save_file(tensors, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(skeleton), encoding="utf-8")


def load_state(folder: Path, name: str) -> dict[str, Any]:
    tensors = load_tensors(folder / f"{name}.safetensors", "checkpoint state")
    skeleton = read_json(folder / f"{name}.json", "checkpoint state")
    try:
        return _decode(skeleton, tensors)
    except KeyError as exc:
        raise PolarVBLLError(f"{folder / name}.json: names tensor {exc} that {name}.safetensors lacks") from None


def saved_step(folder: Path, name: str = "state") -> int:
    """The step a checkpoint was written at, read from its JSON alone."""
    path = folder / f"{name}.json"
    try:
        return int(read_json(path, "checkpoint state")["__dict__"]["step"])
    except (KeyError, TypeError, ValueError):
        raise PolarVBLLError(f"{path}: no step recorded (damaged checkpoint)") from None
