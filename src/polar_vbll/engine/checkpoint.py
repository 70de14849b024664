"""Checkpoints and resuming: the head and checkpoint files, the torn-log repair, extending a finished run, and the
one-line message of an interrupted ``fit``.

A checkpoint is a folder written atomically (:func:`~polar_vbll.atomic.atomic_directory`): ``adapter.safetensors``,
``head.safetensors`` and ``state.{json,safetensors}`` (step, running accuracy, optimizer states, RNG). A kill leaves
either the previous checkpoint or the new one, never a mix; a kill between the swap's two renames is undone on
resume (:func:`~polar_vbll.atomic.recover_directory`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save, save_file

from ..adapters import adapter_state_dict, load_adapter_state
from ..atomic import atomic_directory, atomic_write_bytes, atomic_write_json, atomic_write_text, recover_directory
from ..config import FitConfig
from ..errors import PolarVBLLError
from ..outputs import open_run
from ..stored import load_tensors, read_json
from ..uq import UQHead
from .state import load_state, save_state, saved_step


class FitInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``fit``: the message says where the last checkpoint is and how to continue."""


def save_head(head: UQHead, path: Path) -> None:
    """Write the head's tensors to ``path`` atomically."""
    atomic_write_bytes(path, save({k: v.detach().contiguous() for k, v in head.state_dict().items()}))


def load_head(head: UQHead, path: Path, refit: bool = False) -> None:
    """Load a saved head; ``refit=True`` allows buffers the saved head lacks (a posterior about to be fitted)."""
    state = load_tensors(path, "head")
    for key, value in head.state_defaults().items():  # tensors an earlier version did not save
        state.setdefault(key, value)
    expected = head.state_dict()
    problems = [f"unexpected {k}" for k in sorted(set(state) - set(expected))]
    problems += [f"missing {k}" for k in sorted(set(expected) - set(state)) if not refit]
    problems += [
        f"{k} of shape {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if problems:
        raise PolarVBLLError(f"{path}: does not fit a {type(head).__name__} of this run ({'; '.join(problems[:3])})")
    head.load_state_dict(state, strict=False)


def interrupted_message(out: Path, step: int, checkpoint_step: int | None, config: FitConfig) -> str:
    if checkpoint_step is None:
        return (
            f"interrupted at step {step + 1} of {config.steps}, before the first checkpoint (step "
            f"{config.checkpoint_every or config.steps}); {out} holds no resumable state"
        )
    where = "training had finished" if checkpoint_step == config.steps else f"interrupted at step {step + 1}"
    return (
        f"{where}; the last checkpoint (step {checkpoint_step} of {config.steps}) is in {out / 'checkpoint'}: "
        f"continue with `polar-vbll fit --resume {out}`"
    )


def resumed_config(out: Path, changes: dict, write: bool = True) -> FitConfig:
    """The config of the run in ``out`` with the changes a resume may make (more steps extend a finished run);
    ``write``: repair a torn checkpoint swap and save the changed config (the main process of several only)."""
    open_run(out)
    path = out / "config.json"
    saved = FitConfig.from_dict(read_json(path, "run config"), path)
    if write:
        recover_directory(out / "checkpoint")  # a kill during a checkpoint swap leaves the previous one aside
    if not (out / "checkpoint").is_dir():
        raise PolarVBLLError(f"{out}: no checkpoint/ to resume from")
    done = saved_step(out / "checkpoint")
    if changes.get("steps") not in (None, saved.steps) and done < saved.steps:
        raise PolarVBLLError(
            f"{out}: stopped at step {done} of {saved.steps}; resume it without --steps first, then extend it"
        )
    config = saved.resumed(**changes)
    if config != saved and write:
        atomic_write_json(path, config.to_dict())
    return config


def save_checkpoint(folder: Path, step: int, backbone, head, optimizers, progress: dict) -> None:
    """Write the resumable state; ``progress``: the running accuracies and the exact head phase's step features
    (:meth:`~polar_vbll.engine.multitask.TaskLanes.state_dict`)."""
    with atomic_directory(folder) as tmp:
        save_file(adapter_state_dict(backbone.model), str(tmp / "adapter.safetensors"))
        save_head(head, tmp / "head.safetensors")
        state = {"step": step, **progress, "optimizers": [o.state_dict() for o in optimizers]}
        save_state({**state, "rng": torch.get_rng_state()}, tmp, "state")


def load_checkpoint(folder: Path, backbone, head, optimizers) -> tuple[int, dict]:
    """Restore the weights, optimizers and RNG :func:`save_checkpoint` wrote; returns (step, the whole state)."""
    load_adapter_state(backbone.model, load_tensors(folder / "adapter.safetensors", "checkpoint adapter"), str(folder))
    load_head(head, folder / "head.safetensors")
    state = load_state(folder, "state")
    for optimizer, saved in zip(optimizers, state["optimizers"], strict=True):
        optimizer.load_state_dict(saved)
    torch.set_rng_state(state["rng"])
    return int(state["step"]), state


def truncate_log(path: Path, step: int) -> None:
    """Keep the log lines of steps up to the checkpoint (a killed run may have logged a few more, and its last line
    may be torn: half-written by a kill or a power loss, it is dropped); a damaged line elsewhere is an error."""
    lines = [line for line in (path.read_text(encoding="utf-8").split("\n") if path.exists() else [])]
    kept = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            logged = int(entry["step"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            if not any(rest.strip() for rest in lines[number:]):
                break  # the torn last line
            raise PolarVBLLError(f"{path}:{number}: damaged log line (not the last one); cannot resume") from None
        if logged <= step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))
