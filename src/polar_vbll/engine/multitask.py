"""Several tasks in one fit: one shared adapter, a head per task, and which task each step trains.

A multi-task fit (``FitConfig.task`` a list) trains one adapter on several tasks, each with its own head of the
chosen uncertainty method over its own label tokens (its own number of classes). Each step's batch comes from one
task, chosen by a pure function of the step, so a resumed run recomputes it:

    shares  p_t ∝ 1 (balanced), n_t (proportional) or n_t^(1/T) (temperature), n_t the task's training examples;
    step s trains argmax_t ((s + 1) p_t − c_t(s)),  c_t(s) = the steps task t had before s (ties: the earlier task),

a deterministic interleaving whose counts stay within one step of s·p_t (balanced: round robin). Task t's batch at
step s is the single-task batch of its local step c_t(s), so a fit of one task is exactly the single-task run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
from torch import nn

from ..config import FitConfig
from ..data import TaskSpec, get_task
from ..errors import PolarVBLLError
from ..models import Backbone
from ..uq import UQHead
from .build import build_head, training_items
from .head_phase import StepFeatures, head_phase
from .quality import QualityRetaining
from .zero_shot import zero_shot_metrics


def task_shares(sizes: list[int], sampling: str, temperature: float) -> list[float]:
    """The share p_t of the steps each task gets, from its number of training examples ``sizes``."""
    weights = {
        "balanced": [1.0] * len(sizes),
        "proportional": [float(n) for n in sizes],
        "temperature": [float(n) ** (1.0 / temperature) for n in sizes],
    }[sampling]
    return [w / sum(weights) for w in weights]


@functools.lru_cache(maxsize=8)
def task_schedule(shares: tuple[float, ...], steps: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(the task of each step, that task's local step) for ``steps`` steps: see the module docstring. A longer
    schedule extends a shorter one unchanged (an extended run keeps the steps it had)."""
    counts = [0] * len(shares)
    tasks, local = [], []
    for step in range(steps):
        chosen = max(range(len(shares)), key=lambda t: ((step + 1) * shares[t] - counts[t], -t))
        tasks.append(chosen)
        local.append(counts[chosen])
        counts[chosen] += 1
    return tuple(tasks), tuple(local)


@dataclass
class TaskLane:
    """One task of a fit: its config alone (``FitConfig.for_task``), spec, head, training and held-out examples, the
    exact head phase's step features, and its running accuracy."""

    name: str
    config: FitConfig
    task: TaskSpec
    head: UQHead
    items: list
    held_out: list
    recent: StepFeatures | None
    #: quality retaining's teachers (``FitConfig.quality_retaining`` > 0)
    retain: QualityRetaining | None = None
    correct: int = 0
    seen: int = 0

    def state_dict(self) -> dict:
        features = self.recent.state_dict() if self.recent is not None else {}
        state = {"correct": self.correct, "seen": self.seen, "step_features": features}
        return {**state, "quality": self.retain.state_dict()} if self.retain is not None else state

    def load_state_dict(self, state: dict) -> None:
        self.correct, self.seen = int(state["correct"]), int(state["seen"])
        if self.recent is not None:
            self.recent.load_state_dict(state.get("step_features", {}))
        if self.retain is not None:
            self.retain.load_state_dict(state["quality"])


class TaskHeads(nn.Module):
    """The heads of a multi-task fit as one module (``heads.<i>.…`` in a checkpoint), so that one optimizer and one
    checkpoint file hold them all."""

    def __init__(self, heads: list[UQHead]):
        super().__init__()
        self.heads = nn.ModuleList(heads)
        self.members = list(heads)  # (typed; the ModuleList registers them)

    def state_defaults(self) -> dict[str, torch.Tensor]:
        return {f"heads.{i}.{k}": v for i, head in enumerate(self.members) for k, v in head.state_defaults().items()}


class TaskLanes:
    """The lanes of a fit, in the order of ``FitConfig.task``, and the step schedule over them."""

    def __init__(self, config: FitConfig, backbone: Backbone, first_task: TaskSpec, first_head: UQHead):
        self.lanes: list[TaskLane] = []
        for i, name in enumerate(config.task_names):
            own = config.for_task(name)
            task = first_task if i == 0 else get_task(name, None, registered_first=True)
            head = first_head
            if i > 0:  # built after the adapter: the first task's head and the adapter draw as a single-task run
                head = build_head(own, backbone, task)
                head.attach(backbone)
            items, held_out = training_items(task, own)
            exact = head.solve_every and head.solve_on_step_features
            recent = StepFeatures(head.solve_buffer) if exact else None
            retain = None
            if config.quality_retaining:
                retain = QualityRetaining(len(items), task.num_classes, config.quality_retaining)
            self.lanes.append(TaskLane(task.name, own, task, head, items, held_out, recent, retain))
        names = [lane.name for lane in self.lanes]
        if len(set(names)) != len(names):
            raise PolarVBLLError(f"FitConfig.task: two tasks share a name ({', '.join(names)}); rename a folder")
        sizes = [len(lane.items) for lane in self.lanes]
        self.shares = tuple(task_shares(sizes, config.task_sampling, config.task_temperature))
        self.multi = len(self.lanes) > 1

    def __iter__(self):
        return iter(self.lanes)

    @property
    def first(self) -> TaskLane:
        return self.lanes[0]

    def heads(self) -> nn.Module:
        """What the head optimizer and the checkpoint hold: the head itself for one task, else :class:`TaskHeads`."""
        return TaskHeads([lane.head for lane in self.lanes]) if self.multi else self.first.head

    def at(self, step: int, steps: int) -> tuple[TaskLane, int]:
        """(the lane of ``step``, its local step) in a run of ``steps`` steps."""
        tasks, local = task_schedule(self.shares, max(steps, step + 1))
        return self.lanes[tasks[step]], local[step]

    def steps_per_task(self, steps: int) -> dict[str, int]:
        tasks, _ = task_schedule(self.shares, steps)
        return {lane.name: tasks.count(i) for i, lane in enumerate(self.lanes)}

    def state_dict(self) -> dict:
        """Running accuracies and step features: a single task's in the single-task checkpoint's layout."""
        if not self.multi:
            return self.first.state_dict()
        states = {lane.name: lane.state_dict() for lane in self.lanes}
        return {"correct": 0, "seen": 0, "step_features": {}, "tasks": states}

    def load_state_dict(self, state: dict) -> None:
        if not self.multi:
            self.first.load_state_dict(state)
            return
        for lane in self.lanes:
            lane.load_state_dict(state["tasks"][lane.name])

    def zero_shot(self, backbone: Backbone) -> dict:
        """The untrained model's metrics: a task's, or ``{task: metrics}`` for several."""
        scored = {lane.name: zero_shot_metrics(backbone, lane.task, lane.config) for lane in self.lanes}
        return scored if self.multi else scored[self.first.name]

    def zero_shot_of(self, lane: TaskLane, recorded: dict | None) -> dict | None:
        return recorded.get(lane.name) if recorded is not None and self.multi else recorded

    def solve(self, backbone: Backbone, step: int) -> dict[str, float]:
        """The exact head phase of every task's head at ``step``; what to log (``<task>/head_*`` for several)."""
        logs = {}
        for lane in self.lanes:
            solved = head_phase(backbone, lane.head, lane.task, lane.items, lane.config, step, lane.recent)
            logs.update({f"{lane.name}/{k}" if self.multi else k: v for k, v in solved.items()})
        return logs
