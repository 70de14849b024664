"""The processes of a data-parallel run: which one this is, which share of the work is its own, and the collectives
that make every process hold the same result.

``accelerate launch [--num_processes N] -m polar_vbll fit ...`` and ``torchrun --nproc_per_node N -m polar_vbll
fit ...`` start N processes with ``RANK`` / ``WORLD_SIZE`` set; :func:`current_ranks` lets accelerate's
``PartialState`` open the process group (NCCL on GPUs, gloo on CPU) and answers ``Ranks(rank, size)``. A single
process gets ``Ranks(0, 1)``, whose collectives do nothing.

Exactness. Work is shared out in whole evaluation batches (``owns(batch_number)``) and gathered by summing
zero-filled rows (:meth:`Ranks.gather_rows`): every row has one non-zero contributor, and x + 0 = x in floating
point, so a gathered result is bit for bit what one process computes. Gradients are averaged by one all-reduce of
the trainable parameters' gradients (the frozen base needs none): a sum in another order, equal to a single process
up to rounding.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from .errors import PolarVBLLError


@dataclass(frozen=True)
class Ranks:
    """This process's ``rank`` among ``size`` processes."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """The process that writes run folders, logs and checkpoints, and shows progress."""
        return self.rank == 0

    def owns(self, number: int) -> bool:
        """Whether work item ``number`` (an evaluation batch) is this process's: round robin over the ranks."""
        return number % self.size == self.rank

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the processes, in place (and returned)."""
        if self.size > 1:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather_rows(self, array):
        """Rows filled on their owning process and zero elsewhere, made whole on every process (exact, see the
        module docstring); a numpy array or a tensor, returned as the same kind."""
        if self.size == 1:
            return array
        if isinstance(array, np.ndarray):
            return self.sum_(torch.from_numpy(np.ascontiguousarray(array))).numpy()
        return self.sum_(array.contiguous())

    def all_objects(self, value) -> list:
        """Every process's ``value`` (JSON-like), in rank order."""
        if self.size == 1:
            return [value]
        values: list = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def mean_gradients_(self, params: Iterable[torch.nn.Parameter]) -> None:
        """Replace each gradient by its mean over the processes (one all-reduce of all of them); a parameter that
        has no gradient here must have none on any process (the same step trains the same parameters)."""
        if self.size == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = self.sum_(torch.cat([g.reshape(-1).float() for g in grads]))
        flat /= self.size
        offset = 0
        for grad in grads:
            grad.copy_(flat[offset : offset + grad.numel()].view_as(grad))
            offset += grad.numel()

    def barrier(self) -> None:
        """Wait until every process arrives (e.g. the main one has written what the others read)."""
        if self.size > 1:
            dist.barrier()


def launched_processes() -> int:
    """The number of processes a launcher (accelerate launch, torchrun) started, 1 when none did."""
    return int(os.environ.get("WORLD_SIZE", "1"))


# accelerate's environment for launch configs that shard the model, which fit does not do (yet): refused, not ignored
SHARDING_LAUNCHES = {"ACCELERATE_USE_FSDP": "FSDP", "ACCELERATE_USE_DEEPSPEED": "DeepSpeed"}


def current_ranks() -> Ranks:
    """This process's place in the run: the launcher's process group (opened by accelerate on first use), or a
    single process. A launch config that shards the model (FSDP, DeepSpeed) is refused in one line: every process
    here holds the whole frozen base model."""
    for variable, name in SHARDING_LAUNCHES.items():
        if os.environ.get(variable, "").lower() in ("1", "true", "yes"):
            raise PolarVBLLError(
                f"{variable}: the accelerate config asks for {name}, but polar-vbll trains data-parallel only (each "
                "process holds the whole base model; the adapter and head are what train); launch without it"
            )
    if launched_processes() > 1 and not dist.is_initialized():
        from accelerate import PartialState

        PartialState()  # reads the launcher's environment, picks the backend and opens the process group
        atexit.register(close_process_group)
    if dist.is_available() and dist.is_initialized():
        return Ranks(dist.get_rank(), dist.get_world_size())
    return Ranks()


def close_process_group() -> None:
    """Close the process group :func:`current_ranks` opened, while the interpreter is still whole (run at exit).
    A process that leaves it open can abort at exit: gloo's worker threads outlive the interpreter's teardown and
    end in ``terminate called without an active exception`` (SIGABRT; pytorch/pytorch#190489), which a launcher
    reports as a failed run although every step finished."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
