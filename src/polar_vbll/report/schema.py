"""``Report``: the schema of ``report.json``, written by ``evaluate``, ``fit``, ``refine`` and ``evaluate_run`` alike.

Every report says what was scored (``task``, ``split``, ``n``), with what (``model``, ``prompt_version``,
``label_words``, and for trained runs ``method``, ``config``, ``diagnostics``), the ``metrics``
(TorchUncertainty-style namespaced keys: ``cls/acc``, ``cal/ece``, ...), ``settings``, ``timings``, package
``versions`` and the ``command`` that reproduces it. Optional parts (``calibration``, ``posterior``, ``ood``,
``trained_on``, ``refined_from``, ...) live in ``sections`` and are written as top-level keys after the rest.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import PolarVBLLError


def package_versions() -> dict[str, str]:
    """The versions a report records: Python, torch, transformers and this package."""
    from importlib.metadata import PackageNotFoundError, version

    import torch
    import transformers

    try:
        own = version("polar-vbll")
    except PackageNotFoundError:
        own = "unknown"
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "polar_vbll": own,
    }


@dataclass
class Report:
    task: str
    split: str
    n: int
    model: dict[str, Any]
    metrics: dict[str, float]
    prompt_version: str
    label_words: list[str]
    command: str
    method: dict[str, Any] | None = None
    settings: dict[str, Any] = field(default_factory=dict)
    diagnostics: dict[str, float] | None = None
    timings: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] | None = None
    versions: dict[str, str] = field(default_factory=package_versions)
    sections: dict[str, Any] = field(default_factory=dict)

    REQUIRED: ClassVar[tuple[str, ...]] = (
        "task", "split", "n", "model", "metrics", "prompt_version", "label_words", "command",
    )  # fmt: skip
    ORDER: ClassVar[tuple[str, ...]] = (
        "task", "split", "n", "model", "method", "metrics", "prompt_version", "label_words", "settings",
        "diagnostics", "timings", "config", "command", "versions",
    )  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (``report.json``): the fields in a fixed order, absent optional ones left out, then the
        sections."""
        data = {name: getattr(self, name) for name in self.ORDER if getattr(self, name) is not None}
        return {**data, **self.sections}

    @classmethod
    def from_dict(cls, data: Any, source: str | Path = "report") -> Report:
        """A report read back (``report.json``), checked: one line names the file and what is wrong."""
        if not isinstance(data, dict):
            raise PolarVBLLError(f"{source}: not a polar-vbll report (a JSON object is expected)")
        missing = [name for name in cls.REQUIRED if name not in data]
        if missing:
            raise PolarVBLLError(f"{source}: not a polar-vbll report (needs {', '.join(missing)})")
        metrics = data["metrics"]
        if not isinstance(metrics, dict):
            raise PolarVBLLError(f"{source}: field 'metrics': expected an object of numbers")
        bad = [key for key, value in metrics.items() if not isinstance(value, (int, float))]
        if bad:
            raise PolarVBLLError(f"{source}: field 'metrics': {bad[0]} is not a number")
        known = {name: data[name] for name in cls.ORDER if name in data}
        return cls(**known, sections={k: v for k, v in data.items() if k not in cls.ORDER})

    def write(self, out: str | Path, images: dict[str, bytes] | None = None) -> Path:
        """``report.json``, ``report.md``, ``report.html`` and the plots into ``out`` (see :func:`write_report`)."""
        from .report import write_report

        return write_report(self.to_dict(), out, images)
