"""Readers for the native formats of each benchmark, validating every row.

Every reader turns a file into a list of :class:`MCItem` (a multiple-choice question with its answer index) and
raises :class:`~polar_vbll.errors.DataFormatError` naming file, line and field for any row it cannot use.
"""

from __future__ import annotations

import csv
import io
import json
import lzma
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import DataFormatError
from ..registry import Registry

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


@dataclass(frozen=True)
class MCItem:
    """One multiple-choice example.

    ``question`` is the text asked (a sentence with ``_`` for WinoGrande, a review for SST-2), ``context`` an
    optional passage (BoolQ), ``choices`` the answer texts in order and ``answer`` the index of the right one.
    ``source`` is ``file:line`` for error messages and reports.
    """

    uid: str
    question: str
    choices: tuple[str, ...]
    answer: int
    context: str = ""
    source: str = ""


@dataclass(frozen=True)
class DataFile:
    """A file to read: bundled inside the package (``relpath`` under ``data/bundled``) or a user's path."""

    path: str
    bundled: bool = False

    @property
    def display(self) -> str:
        return f"{self.path} (bundled)" if self.bundled else self.path

    def read_text(self) -> str:
        try:
            if self.bundled:
                raw = resources.files("polar_vbll.data").joinpath("bundled", self.path + ".xz").read_bytes()
                return lzma.decompress(raw).decode("utf-8")
            return Path(self.path).read_text(encoding="utf-8-sig")  # a BOM (Windows editors) is dropped
        except FileNotFoundError:
            raise DataFormatError(self.display, None, None, "file not found") from None
        except IsADirectoryError:
            raise DataFormatError(self.display, None, None, "is a folder, not a data file") from None
        except (UnicodeDecodeError, lzma.LZMAError) as exc:
            raise DataFormatError(self.display, None, None, f"cannot be read as UTF-8 text: {exc}") from None


Reader = Callable[[DataFile], list[MCItem]]
READERS: Registry[Reader] = Registry("data format")


def _jsonl_rows(file: DataFile) -> Iterator[tuple[int, dict[str, Any]]]:
    for number, line in enumerate(file.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(
                file.display, number, None, f"malformed JSON ({exc.msg} at column {exc.colno})"
            ) from None
        if not isinstance(row, dict):
            raise DataFormatError(file.display, number, None, f"expected a JSON object, got {type(row).__name__}")
        yield number, row


def _field(file: DataFile, line: int, row: dict, name: str, kind: type | tuple[type, ...] = str, nonempty: bool = True):
    """Return ``row[name]`` after checking presence, type and (for strings and lists) non-emptiness."""
    if name not in row:
        raise DataFormatError(file.display, line, name, "missing")
    value = row[name]
    # bool is an int subclass: reject it where an int is asked for, and vice versa
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise DataFormatError(file.display, line, name, f"expected {want}, got {type(value).__name__} {value!r:.60}")
    if nonempty and isinstance(value, (str, list)) and not (value.strip() if isinstance(value, str) else value):
        raise DataFormatError(file.display, line, name, "is empty")
    return value


def _nonempty(file: DataFile, items: list[MCItem]) -> list[MCItem]:
    if not items:
        raise DataFormatError(file.display, None, None, "contains no examples")
    return items


@READERS.decorator("sst2")
def read_sst2(file: DataFile) -> list[MCItem]:
    """GLUE SST-2 rows ``{"idx", "sentence", "label"}`` with label 0 = negative, 1 = positive."""
    items = []
    for line, row in _jsonl_rows(file):
        sentence = _field(file, line, row, "sentence")
        label = _field(file, line, row, "label", int)
        if label not in (0, 1):
            raise DataFormatError(file.display, line, "label", f"must be 0 or 1, got {label}")
        items.append(
            MCItem(
                str(row.get("idx", line)),
                sentence.strip(),
                ("negative", "positive"),
                label,
                source=f"{file.path}:{line}",
            )
        )
    return _nonempty(file, items)


@READERS.decorator("winogrande")
def read_winogrande(file: DataFile) -> list[MCItem]:
    """WinoGrande rows ``{"qID", "sentence", "option1", "option2", "answer": "1"|"2"}``; the sentence has one ``_``."""
    items = []
    for line, row in _jsonl_rows(file):
        sentence = _field(file, line, row, "sentence")
        if "_" not in sentence:
            raise DataFormatError(file.display, line, "sentence", "has no '_' blank to fill")
        options = (_field(file, line, row, "option1"), _field(file, line, row, "option2"))
        answer = str(_field(file, line, row, "answer", (str, int)))
        if answer not in ("1", "2"):
            raise DataFormatError(file.display, line, "answer", f"must be '1' or '2', got {answer!r}")
        items.append(
            MCItem(str(row.get("qID", line)), sentence, options, int(answer) - 1, source=f"{file.path}:{line}")
        )
    return _nonempty(file, items)


@READERS.decorator("ai2")
def read_ai2(file: DataFile) -> list[MCItem]:
    """AI2 format (ARC, OpenBookQA): ``{"id", "question": {"stem", "choices": [{"text", "label"}]}, "answerKey"}``.

    The answer key names a choice label; a digit key that is not a label (``"1"`` with labels A-D, as in a few
    ARC rows) is mapped by its position in ``choices``.
    """
    items = []
    for line, row in _jsonl_rows(file):
        question = _field(file, line, row, "question", dict)
        stem = _field(file, line, question, "stem")
        choices = _field(file, line, question, "choices", list)
        texts, labels = [], []
        for i, choice in enumerate(choices):
            if not isinstance(choice, dict):
                raise DataFormatError(file.display, line, f"question.choices[{i}]", "expected an object {text, label}")
            texts.append(_field(file, line, choice, "text"))
            labels.append(str(_field(file, line, choice, "label", (str, int))))
        if len(texts) < 2:
            raise DataFormatError(file.display, line, "question.choices", f"needs at least 2 choices, got {len(texts)}")
        if len(set(labels)) != len(labels):
            raise DataFormatError(file.display, line, "question.choices", f"duplicate labels {labels}")
        key = str(_field(file, line, row, "answerKey", (str, int))).strip()
        if key in labels:
            answer = labels.index(key)
        elif key.isdigit() and 1 <= int(key) <= len(texts):
            answer = int(key) - 1
        else:
            raise DataFormatError(file.display, line, "answerKey", f"{key!r} is not one of the choice labels {labels}")
        items.append(MCItem(str(row.get("id", line)), stem, tuple(texts), answer, source=f"{file.path}:{line}"))
    return _nonempty(file, items)


@READERS.decorator("boolq")
def read_boolq(file: DataFile) -> list[MCItem]:
    """BoolQ rows ``{"question", "passage", "answer": true|false}`` (a ``title`` field is ignored); no = 0, yes = 1.

    BoolQ questions are lower-case without a question mark; one is added.
    """
    items = []
    for line, row in _jsonl_rows(file):
        question = _field(file, line, row, "question")
        passage = _field(file, line, row, "passage")
        answer = _field(file, line, row, "answer", bool)
        question = question.strip() if question.strip().endswith("?") else question.strip() + "?"
        items.append(
            MCItem(
                str(line), question, ("no", "yes"), int(answer), context=passage.strip(), source=f"{file.path}:{line}"
            )
        )
    return _nonempty(file, items)


@READERS.decorator("mmlu_csv")
def read_mmlu_csv(file: DataFile) -> list[MCItem]:
    """MMLU csv without header: question, A, B, C, D, answer letter."""
    items = []
    reader = csv.reader(io.StringIO(file.read_text(), newline=""))
    start = 1
    for row in reader:
        line, start = start, reader.line_num + 1  # line where this (possibly multi-line) record starts
        if not row:
            continue
        if len(row) != 6:
            raise DataFormatError(
                file.display, line, None, f"expected 6 columns (question, A, B, C, D, answer), got {len(row)}"
            )
        if not row[0].strip():
            raise DataFormatError(file.display, line, "question", "is empty")
        key = row[5].strip()
        if key not in LETTERS[:4]:
            raise DataFormatError(file.display, line, "answer", f"must be one of A, B, C, D, got {key!r}")
        items.append(MCItem(str(line), row[0], tuple(row[1:5]), LETTERS.index(key), source=f"{file.path}:{line}"))
    return _nonempty(file, items)


def generic_item(where: str, line: int, row: dict, need_answer: bool = True) -> MCItem:
    """One ``{"question", "choices", "answer"}`` row (optional ``"context"``, ``"id"``), checked field by field;
    ``where`` names the file (or the list) in errors. Without ``need_answer`` a missing answer is stored as -1."""
    if not isinstance(row, dict):
        raise DataFormatError(where, line, None, f"expected a JSON object, got {type(row).__name__}")
    file = DataFile(where)
    question = _field(file, line, row, "question")
    choices = _field(file, line, row, "choices", list)
    if len(choices) < 2:
        raise DataFormatError(where, line, "choices", f"needs at least 2 choices, got {len(choices)}")
    for i, choice in enumerate(choices):
        if not isinstance(choice, str) or not choice.strip():
            raise DataFormatError(where, line, f"choices[{i}]", "must be a non-empty string")
    answer = -1
    if need_answer or row.get("answer") is not None:
        answer = _field(file, line, row, "answer", int)
        if not 0 <= answer < len(choices):
            raise DataFormatError(where, line, "answer", f"index {answer} out of range for {len(choices)} choices")
    context = row.get("context", "")
    if not isinstance(context, str):
        raise DataFormatError(where, line, "context", f"expected str, got {type(context).__name__}")
    return MCItem(str(row.get("id", line)), question, tuple(choices), answer, context=context, source=f"{where}:{line}")


@READERS.decorator("jsonl")
def read_generic_jsonl(file: DataFile) -> list[MCItem]:
    """Generic multiple choice: ``{"question", "choices": [str, ...], "answer": index}``.

    Optional fields: ``"context"`` (a passage shown before the question) and ``"id"``.
    """
    return _nonempty(file, [generic_item(file.path, line, row) for line, row in _jsonl_rows(file)])
