"""Predictions with uncertainty of a trained run on new questions or a task split: ``predict_run``."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np

from ..conformal import stored_decisions
from ..data import MCItem, get_task
from ..data.loaders import generic_item
from ..errors import PolarVBLLError
from ..metrics import classification_metrics, selective_metrics
from .inference import predict

if TYPE_CHECKING:
    from .result import FitResult


@dataclass
class Predictions:
    """What a run predicts for each question, in input order (N questions, C classes)."""

    items: list[MCItem]
    probs: np.ndarray  # (N, C) predictive p(y | x)
    uncertainty: dict[str, np.ndarray]  # "total" = "aleatoric" + "epistemic" entropy in nats, each (N,)
    scores: dict[str, np.ndarray]  # in-distribution score (higher = more ID) of each OOD criterion, each (N,)
    label_words: list[str]
    #: with the run's stored decisions (``polar-vbll conformal``): each question's conformal set (N, C) bool and
    #: whether it is answered (N,) bool, the others abstained on
    sets: np.ndarray | None = None
    answered: np.ndarray | None = None

    @property
    def predicted(self) -> np.ndarray:
        """(N,) index of the most probable choice."""
        return self.probs.argmax(1)

    @property
    def confidence(self) -> np.ndarray:
        """(N,) probability of the predicted choice."""
        return self.probs.max(1)

    @property
    def labels(self) -> np.ndarray | None:
        """(N,) the right answers, or None when some question has none."""
        answers = np.array([item.answer for item in self.items])
        return None if (answers < 0).any() else answers

    def metrics(self) -> dict[str, float]:
        """``cls/``, ``cal/`` and ``sel/`` metrics (needs the answers)."""
        if self.labels is None:
            raise PolarVBLLError("metrics need the right answer of every question")
        return {**classification_metrics(self.probs, self.labels), **selective_metrics(self.probs, self.labels)}

    def rows(self, order_by: str | None = None, top: int | None = None) -> list[dict]:
        """One dict per question (question, predicted answer, confidence, uncertainties); ``order_by`` an
        uncertainty name ("total", "aleatoric", "epistemic") or "confidence", largest first."""
        order = np.arange(len(self.items))
        if order_by is not None:
            values = self.confidence if order_by == "confidence" else self.uncertainty.get(order_by)
            if values is None:
                raise PolarVBLLError(f"order_by: one of confidence, {', '.join(self.uncertainty)}; got {order_by!r}")
            order = np.argsort(-values, kind="stable")

        def choice(item: MCItem, index: int) -> str:  # "B: positive", or "positive" where the label is the text
            word, text = self.label_words[index].strip(), item.choices[index]
            return text if word == text.strip() else f"{word}: {text}"

        rows = []
        for i in order[:top]:
            item = self.items[i]
            row = {
                "question": item.question,
                "predicted": choice(item, int(self.predicted[i])),
                "confidence": float(self.confidence[i]),
                **{k: float(v[i]) for k, v in self.uncertainty.items()},
            }
            if self.sets is not None and self.answered is not None:
                row["set"] = ", ".join(choice(item, int(k)) for k in np.flatnonzero(self.sets[i][: len(item.choices)]))
                row["abstain"] = not bool(self.answered[i])
            if item.answer >= 0:
                row["answer"] = choice(item, item.answer)
            rows.append(row)
        return rows

    def table(self, order_by: str | None = None, top: int | None = 10, width: int = 70) -> str:
        """:meth:`rows` as a Markdown table (long texts cut to ``width`` characters)."""
        rows = self.rows(order_by, top)
        if not rows:
            return ""
        keys = list(rows[0]) if all(len(r) == len(rows[0]) for r in rows) else list(rows[-1])

        def text(value):
            value = f"{value:.3f}" if isinstance(value, float) else str(value).replace("|", "\\|").replace("\n", " ")
            return value if len(value) <= width else value[: width - 1] + "…"

        lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
        lines += ["| " + " | ".join(text(r.get(k, "")) for k in keys) + " |" for r in rows]
        return "\n".join(lines)


def predict_with(
    run: FitResult,
    questions: list[dict] | None = None,
    *,
    task: str | None = None,
    split: str | None = None,
    limit: int | None = None,
    n_samples: int = 100,
    progress: bool = False,
) -> Predictions:
    """Predictions of a trained run (a ``FitResult``: ``fit``'s result or ``load_run``'s) with their uncertainty.

    ``questions``: dicts ``{"question", "choices", "answer" (optional), "context" (optional)}`` with at most as
    many choices as the run has classes, checked like a JSONL file's rows; otherwise the first ``limit`` examples
    of ``split`` of ``task`` (default: the run's own task and evaluation split).
    """
    spec = run.task
    if questions is not None:
        if task or split:
            raise PolarVBLLError("predict_run: pass questions or task/split, not both")
        items = [generic_item("questions", i, row, need_answer=False) for i, row in enumerate(questions)]
        for i, item in enumerate(items):
            if len(item.choices) > spec.num_classes:
                raise PolarVBLLError(
                    f"questions:{i}: field 'choices': {len(item.choices)} choices, the run answers {spec.num_classes}"
                )
        items = items[: limit or None]
    else:
        if task:
            spec = get_task(task, run.config.template)
            spec.check_answers_like(run.task)
        spec, items, _ = spec.seen_by_head(run.task.num_classes, split or run.config.eval_split, limit)
    spec = replace(spec, num_classes=run.task.num_classes)
    config = run.config
    out = predict(
        run.backbone,
        run.head,
        spec,
        items,
        config.eval_batch_size,
        config.max_length,
        config.seed,
        n_samples=n_samples,
        progress=progress,
    )
    uncertainty = {k: out[k] for k in ("total", "aleatoric", "epistemic")}
    predictions = Predictions(list(items), out["probs"], uncertainty, out["scores"], spec.label_words())
    decisions = stored_decisions(run.out) if run.out is not None else None
    if decisions is not None:
        predictions.sets, predictions.answered = decisions[0].sets(out["probs"]), decisions[1].answers(out["probs"])
    return predictions
