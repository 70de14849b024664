"""Prompts -> token ids -> padded batches, with the answer-label token ids of a task."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ..errors import LabelTokenError, PolarVBLLError
from .loaders import MCItem
from .tasks import TaskSpec

# one token budget for fit, evaluate and `data show`: longer prompts lose their start (the question and `Answer:`
# stay). With SmolLM2's tokenizer, 256 keeps every bundled SST-2, WinoGrande, ARC, OBQA and MMLU prompt whole
# (the longest has 245 tokens); BoolQ passages beyond it (8 % of its validation prompts) lose their start.
DEFAULT_MAX_LENGTH = 256


def label_token_ids(tokenizer, label_words: Sequence[str], task: str = "") -> list[int]:
    """Token id of each answer label, tokenized with ``add_special_tokens=False``.

    Raises :class:`LabelTokenError` if a label is not exactly one token or two labels share a token.
    """
    ids = []
    for word in label_words:
        tokens = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            raise LabelTokenError(
                f"task '{task}': label {word!r} is {len(tokens)} tokens {tokens} for this tokenizer; "
                "each label must be a single token (choose other label words in the template)"
            )
        ids.append(tokens[0])
    seen: dict[int, str] = {}
    for word, token in zip(label_words, ids):
        if token in seen:
            raise LabelTokenError(f"task '{task}': labels {seen[token]!r} and {word!r} map to the same token {token}")
        seen[token] = word
    return ids


def special_token_affixes(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer adds before and after a text (e.g. ``[bos], []``)."""
    body = tokenizer("x", add_special_tokens=False)["input_ids"]
    full = tokenizer("x", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(body) + 1):
        if full[start : start + len(body)] == body:
            return full[:start], full[start + len(body) :]
    return [], []


@dataclass(frozen=True)
class EncodedExample:
    """Token ids of one prompt (special tokens included), its label and its number of valid choices."""

    input_ids: list[int]
    label: int
    num_choices: int
    truncated: bool


def encode_items(
    tokenizer, task: TaskSpec, items: Sequence[MCItem], max_length: int = DEFAULT_MAX_LENGTH
) -> list[EncodedExample]:
    """Render and tokenize ``items``; prompts longer than ``max_length`` lose tokens from the *start*.

    The end of the prompt (question, choices, ``Answer:``) is what the label is read from, so it is kept; special
    tokens such as BOS are kept too.
    """
    prefix, suffix = special_token_affixes(tokenizer)
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise PolarVBLLError(f"max_length: {max_length} leaves no room for text after the special tokens")
    prompts = [task.template.render(item) for item in items]
    bodies = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    return [
        EncodedExample(prefix + body[-budget:] + suffix, item.answer, len(item.choices), len(body) > budget)
        for item, body in zip(items, bodies)
    ]


def collate(
    examples: Sequence[EncodedExample], pad_token_id: int, num_classes: int, padding_side: str = "right"
) -> dict[str, torch.Tensor]:
    """Pad to the batch's own longest prompt.

    Returns ``input_ids`` and ``attention_mask`` (B, T), ``labels`` (B,) and ``choice_mask`` (B, C), True where
    class c is a real choice of that example (ARC has 3-5 choices under a 5-class head).
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    length = max(len(ex.input_ids) for ex in examples)
    input_ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
    for row, ex in enumerate(examples):
        n = len(ex.input_ids)
        span = slice(0, n) if padding_side == "right" else slice(length - n, length)
        input_ids[row, span] = torch.tensor(ex.input_ids)
        attention_mask[row, span] = 1
    choice_mask = torch.arange(num_classes)[None, :] < torch.tensor([ex.num_choices for ex in examples])[:, None]
    labels = torch.tensor([ex.label for ex in examples], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": labels, "choice_mask": choice_mask}


def iter_batches(
    examples: Sequence[EncodedExample],
    batch_size: int,
    pad_token_id: int,
    num_classes: int,
    padding_side: str = "right",
    sort_by_length: bool = True,
) -> Iterator[tuple[list[int], dict]]:
    """Yield ``(indices, batch)``; sorting by length keeps padding small, ``indices`` restore the input order."""
    order = (
        sorted(range(len(examples)), key=lambda i: len(examples[i].input_ids))
        if sort_by_length
        else list(range(len(examples)))
    )
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, collate([examples[i] for i in idx], pad_token_id, num_classes, padding_side)


def encoded_batches(
    tokenizer,
    task: TaskSpec,
    items: Sequence[MCItem],
    max_length: int = DEFAULT_MAX_LENGTH,
    batch_size: int = 16,
    *,
    padding_side: str = "right",
    sort_by_length: bool = True,
    stats: dict | None = None,
) -> Iterator[tuple[list[int], dict]]:
    """The one owner of encode-then-batch: ``(indices, batch)`` of ``items`` (see :func:`encode_items`,
    :func:`iter_batches`). ``stats``, if given, receives ``truncated`` (prompts that lost their start) and
    ``mean_tokens``."""
    encoded = encode_items(tokenizer, task, items, max_length)
    if stats is not None:
        stats["truncated"] = sum(ex.truncated for ex in encoded)
        stats["mean_tokens"] = sum(len(ex.input_ids) for ex in encoded) / max(1, len(encoded))
    return iter_batches(encoded, batch_size, tokenizer.pad_token_id, task.num_classes, padding_side, sort_by_length)
