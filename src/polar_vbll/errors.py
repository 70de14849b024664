"""Exceptions with one-line messages that name what is wrong and where."""

from __future__ import annotations


class PolarVBLLError(ValueError):
    """Base class of the toolkit's user-facing errors."""


class DataFormatError(PolarVBLLError):
    """A data file row that cannot be used; the message names file, line and field.

    Example: ``arc_easy/dev.jsonl:12: field 'answerKey': 'F' is not one of the choice labels ['A', 'B', 'C', 'D']``
    """

    def __init__(self, path: str, line: int | None, field: str | None, message: str):
        self.path, self.line, self.field = str(path), line, field
        where = self.path if line is None else f"{self.path}:{line}"
        what = f" field '{field}':" if field else ""
        super().__init__(f"{where}:{what} {message}")


class LabelTokenError(PolarVBLLError):
    """Answer labels that do not map to distinct single tokens of the tokenizer."""


class CacheError(PolarVBLLError):
    """A model cache folder that is missing, partial or corrupt."""


def first_line(exc: BaseException, default: str | None = None) -> str:
    """The first line of an exception's message (at most 200 characters), for a one-line error that quotes it;
    ``default`` (or the exception's type name) when the message is empty."""
    return (str(exc).strip().splitlines() or [default or type(exc).__name__])[0][:200]
