"""Few-shot episodes of a task: a support set and a query set, disjoint, K examples of each class in the support.

AMT meta-tunes on episodes of source tasks (the support defines the classes, the query is scored) and adapts to a
target task from its K support examples alone, so which examples an episode sees is part of the method: drawn
without replacement from a seeded generator, the query never holds a support example.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import PolarVBLLError
from .loaders import MCItem


@dataclass(frozen=True)
class Episode:
    """``support``: ``shots`` examples of every class, class by class; ``query``: ``queries`` examples of every class
    (where the class has that many left), none of them in the support."""

    support: list[MCItem]
    query: list[MCItem]


def by_class(items: list[MCItem]) -> dict[int, list[int]]:
    """The indices of ``items`` by their answer, classes in increasing order."""
    classes: dict[int, list[int]] = {}
    for index, item in enumerate(items):
        classes.setdefault(item.answer, []).append(index)
    return dict(sorted(classes.items()))


def sample_episode(items: list[MCItem], shots: int, queries: int, generator: torch.Generator, name: str) -> Episode:
    """An episode of ``items`` (the task ``name``, for errors): per class, a random ``shots`` for the support and the
    next ``queries`` of the same permutation for the query. A class with fewer examples than that (ARC-E's rare
    fifth answer) is left out of the episode; fewer than two classes left is an error."""
    if shots < 1 or queries < 0:
        raise PolarVBLLError(f"episode of {name}: shots must be >= 1 and queries >= 0, got {shots} and {queries}")
    need = shots + min(queries, 1)
    classes = {answer: indices for answer, indices in by_class(items).items() if len(indices) >= need}
    if len(classes) < 2:
        raise PolarVBLLError(
            f"episode of {name}: fewer than two answers have {shots} examples" + (" plus a query" if queries else "")
        )
    support, query = [], []
    for indices in classes.values():
        order = torch.randperm(len(indices), generator=generator).tolist()
        support += [items[indices[i]] for i in order[:shots]]
        query += [items[indices[i]] for i in order[shots : shots + queries]]
    return Episode(support, query)
