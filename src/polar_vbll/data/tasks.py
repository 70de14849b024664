"""Task registry: which files make each split, how a question becomes a prompt, and which tokens answer it.

A multiple-choice task is scored as classification (the Bayesian-LoRA protocol): the prompt ends with
``Answer:`` (or ``Sentiment:``), each class has a single-token label (``" A"``, ``" B"``, ... or ``" no"``,
``" yes"``), and the class logits are the LM-head rows of those tokens at the last prompt token.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from ..errors import PolarVBLLError
from ..registry import Registry
from .loaders import LETTERS, READERS, DataFile, MCItem


@dataclass(frozen=True)
class PromptTemplate:
    """How an :class:`MCItem` is shown to the model.

    ``text`` is a ``str.format`` pattern over ``{question}``, ``{context}`` and ``{choices}`` (the lettered choice
    list, joined by ``choice_separator``). ``labels="letters"`` answers with `` A``, `` B``, ...; a tuple gives
    fixed label words, one per class. ``name@version`` is written into every report.
    """

    name: str
    version: int
    text: str
    labels: Literal["letters"] | tuple[str, ...] = "letters"
    choice_format: str = "{letter}. {text}"
    choice_separator: str = "\n"

    @property
    def id(self) -> str:
        return f"{self.name}@{self.version}"

    def label_words(self, num_classes: int) -> list[str]:
        if self.labels == "letters":
            return [f" {letter}" for letter in LETTERS[:num_classes]]
        if len(self.labels) != num_classes:
            raise PolarVBLLError(f"template {self.id} has {len(self.labels)} labels for {num_classes} classes")
        return list(self.labels)

    def render(self, item: MCItem) -> str:
        choices = self.choice_separator.join(
            self.choice_format.format(letter=LETTERS[i], text=text.strip()) for i, text in enumerate(item.choices)
        )
        return self.text.format(question=item.question.strip(), context=item.context, choices=choices)


TEMPLATES: Registry[PromptTemplate] = Registry("prompt template")
for _template in (
    PromptTemplate("qa_newline", 1, "Question: {question}\n{choices}\nAnswer:"),
    # The one-line prompt of Laplace-LoRA / BLoB; the default of the lettered tasks, chosen on the *training*
    # splits of ARC-E and OBQA by zero-shot NLL (benchmarks/results/template_selection.md).
    PromptTemplate(
        "qa_oneline",
        1,
        "Select one of the choices that answers the following question: {question} Choices: {choices}. Answer:",
        choice_separator=". ",
    ),
    PromptTemplate("sentiment", 1, "Review: {question}\nSentiment:", labels=(" negative", " positive")),
    PromptTemplate("passage_yes_no", 1, "Passage: {context}\nQuestion: {question}\nAnswer:", labels=(" no", " yes")),
):
    TEMPLATES.register(_template.name, _template)


@dataclass(frozen=True)
class TaskSpec:
    """A task: its data files per split, the reader of their format, its class count and its prompt template."""

    name: str
    title: str
    reader: str
    files: Mapping[str, DataFile]
    num_classes: int
    template: PromptTemplate
    eval_split: str = "validation"
    notes: str = ""

    @property
    def splits(self) -> list[str]:
        return list(self.files)

    def load(self, split: str) -> list[MCItem]:
        """All examples of ``split``, validated; cached per (file, reader)."""
        if split not in self.files:
            raise PolarVBLLError(f"task '{self.name}' has no split '{split}'; splits: {', '.join(self.files)}")
        items = _load_file(self.files[split], self.reader)
        too_many = next((it for it in items if len(it.choices) > self.num_classes), None)
        if too_many is not None:
            raise PolarVBLLError(
                f"{too_many.source}: {len(too_many.choices)} choices, but task '{self.name}' "
                f"has {self.num_classes} classes"
            )
        return items

    def label_words(self) -> list[str]:
        return self.template.label_words(self.num_classes)

    def seen_by_head(self, num_classes: int, split: str | None = None, limit: int | None = None):
        """(this task as a ``num_classes`` head sees it, the first ``limit`` of ``split``'s items that fit it, how
        many items the split has): items with more choices than the head has classes are dropped (counted)."""
        split = split or self.eval_split
        if split not in self.files:
            raise PolarVBLLError(f"task '{self.name}' has no split '{split}'; splits: {', '.join(self.files)}")
        items = _load_file(self.files[split], self.reader)
        kept = [item for item in items if len(item.choices) <= num_classes][: limit or None]
        return replace(self, num_classes=num_classes), kept, len(items)

    def check_answers_like(self, trained: TaskSpec) -> None:
        """Refuse a task whose answers are other words than those a head trained on ``trained`` scores."""
        same_words = self.label_words() == trained.label_words()
        both_letters = self.template.labels == "letters" and trained.template.labels == "letters"
        if not (same_words or both_letters):
            raise PolarVBLLError(
                f"task '{self.name}' answers with {self.label_words()}, but the run was trained on "
                f"'{trained.name}' with {trained.label_words()}"
            )

    def with_template(self, template: str | PromptTemplate) -> TaskSpec:
        template = TEMPLATES.get(template) if isinstance(template, str) else template
        template.label_words(self.num_classes)  # validates the label count
        return TaskSpec(
            self.name, self.title, self.reader, self.files, self.num_classes, template, self.eval_split, self.notes
        )


@functools.lru_cache(maxsize=32)
def _load_file(file: DataFile, reader: str) -> list[MCItem]:
    return READERS.get(reader)(file)


TASKS: Registry[TaskSpec] = Registry("task")


def _bundled(**splits: str) -> dict[str, DataFile]:
    return {split: DataFile(path, bundled=True) for split, path in splits.items()}


_QA = TEMPLATES.get("qa_oneline")
for _task in (
    TaskSpec(
        "sst2",
        "SST-2 sentiment (quick demo task)",
        "sst2",
        _bundled(train="sst2/train.jsonl", validation="sst2/dev.jsonl"),
        2,
        TEMPLATES.get("sentiment"),
    ),
    TaskSpec(
        "wg_s",
        "WinoGrande S",
        "winogrande",
        _bundled(train="winogrande/train_s.jsonl", validation="winogrande/dev.jsonl"),
        2,
        _QA,
    ),
    TaskSpec(
        "wg_m",
        "WinoGrande M",
        "winogrande",
        _bundled(train="winogrande/train_m.jsonl", validation="winogrande/dev.jsonl"),
        2,
        _QA,
    ),
    TaskSpec(
        "arc_c",
        "ARC-Challenge",
        "ai2",
        _bundled(
            train="arc_challenge/train.jsonl", validation="arc_challenge/dev.jsonl", test="arc_challenge/test.jsonl"
        ),
        5,
        _QA,
        notes="3-5 choices per question",
    ),
    TaskSpec(
        "arc_e",
        "ARC-Easy",
        "ai2",
        _bundled(train="arc_easy/train.jsonl", validation="arc_easy/dev.jsonl", test="arc_easy/test.jsonl"),
        5,
        _QA,
        notes="3-5 choices per question",
    ),
    TaskSpec(
        "obqa",
        "OpenBookQA",
        "ai2",
        _bundled(train="openbookqa/train.jsonl", validation="openbookqa/dev.jsonl", test="openbookqa/test.jsonl"),
        4,
        _QA,
    ),
    TaskSpec(
        "boolq",
        "BoolQ",
        "boolq",
        _bundled(train="boolq/train.jsonl", validation="boolq/dev.jsonl"),
        2,
        TEMPLATES.get("passage_yes_no"),
    ),
    TaskSpec(
        "mmlu_chem",
        "MMLU college chemistry",
        "mmlu_csv",
        _bundled(
            train="mmlu/dev/college_chemistry_dev.csv",
            validation="mmlu/val/college_chemistry_val.csv",
            test="mmlu/test/college_chemistry_test.csv",
        ),
        4,
        _QA,
        eval_split="test",
        notes="train = MMLU 'dev' (5 few-shot items), validation = 'val'",
    ),
    TaskSpec(
        "mmlu_phys",
        "MMLU college physics",
        "mmlu_csv",
        _bundled(
            train="mmlu/dev/college_physics_dev.csv",
            validation="mmlu/val/college_physics_val.csv",
            test="mmlu/test/college_physics_test.csv",
        ),
        4,
        _QA,
        eval_split="test",
        notes="train = MMLU 'dev' (5 few-shot items), validation = 'val'",
    ),
):
    TASKS.register(_task.name, _task)


def _user_task(path: Path) -> TaskSpec:
    """A task from the generic JSONL format: a file (one split named by its stem) or a folder of ``<split>.jsonl``."""
    files = (
        {p.stem: DataFile(str(p)) for p in sorted(path.glob("*.jsonl"))}
        if path.is_dir()
        else {path.stem: DataFile(str(path))}
    )
    if not files:
        raise PolarVBLLError(f"{path}: no *.jsonl split files found")
    num_classes = max(len(item.choices) for file in files.values() for item in _load_file(file, "jsonl"))
    if num_classes > len(LETTERS):
        raise PolarVBLLError(f"{path}: at most {len(LETTERS)} choices are supported, found {num_classes}")
    preferred = [s for s in ("validation", "test") if s in files]
    return TaskSpec(
        path.name if path.is_dir() else path.stem,
        f"user task {path}",
        "jsonl",
        files,
        num_classes,
        _QA,
        eval_split=preferred[0] if preferred else next(iter(files)),
    )


def get_task(name_or_path: str | Path, template: str | None = None, *, registered_first: bool = False) -> TaskSpec:
    """A registered task by name (``polar-vbll data list``), or a user's JSONL file or folder by path.

    A bare name that is both a registered task and an existing path here (``boolq`` beside a ``./boolq/`` folder)
    is ambiguous and refused: write ``./boolq`` for the folder, or ``bundled:boolq`` for the registered task.
    ``registered_first`` resolves such a name to the registered task (a saved run: a path was saved as given).
    """
    text = str(name_or_path)
    if text.startswith("bundled:"):
        task = TASKS.get(text.removeprefix("bundled:"))
    elif isinstance(name_or_path, str) and text in TASKS:
        if Path(text).exists() and not registered_first:
            raise PolarVBLLError(
                f"task '{text}' is ambiguous: a bundled task and the path {text} here; write ./{text} for your "
                f"data or bundled:{text} for the bundled task"
            )
        task = TASKS.get(text)
    elif Path(name_or_path).exists():
        task = _user_task(Path(name_or_path))
    else:
        raise PolarVBLLError(
            f"unknown task '{name_or_path}' (not a registered task nor an existing path); "
            f"known: {', '.join(TASKS.names())}"
        )
    return task.with_template(template) if template else task


def list_tasks() -> list[str]:
    return TASKS.names()
