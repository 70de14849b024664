"""Split conformal prediction sets: calibrated by MAPIE on held-out examples, stored as a threshold, applied anywhere.

For a class y of a question x with predictive probabilities p (C classes), the conformity score s(x, y) is

    LAC  s = 1 − p_y                                  set {y : 1 − p_y ≤ q̂}
    APS  s = Σ_{j ranked before y} p_j + U·p_y         set: the classes in decreasing p until their mass reaches q̂,
                                                      the class that reaches it included
    RAPS s = APS's s + λ·max(0, o(y) − k_reg)          the same with the penalty: the class at rank o is kept while
                                                      the penalized mass of the o − 1 above it is below q̂

(APS's calibration scores are randomized by U ~ Uniform(0, 1), as MAPIE does; its sets keep the last class, so they
never undercover). RAPS (Angelopoulos et al. 2021) penalizes sets longer than k_reg classes; MAPIE picks k_reg (the
1 − α quantile of the true class's rank) and λ (of 0.001, 0.01, 0.1, 0.2, 0.5, the smallest mean set) on a
stratified 10 % of the calibration examples and computes the scores on the rest. With the n calibration scores s_i,
q̂ is their ⌈(n + 1)(1 − α)⌉-th smallest (every class when that exceeds n), and for a new exchangeable question
P(y ∈ set) ≥ 1 − α (Vovk et al. 2005; Romano et al. 2020).

MAPIE (``SplitConformalClassifier``) computes the calibration scores; the threshold q̂ is stored in the run
(``conformal.json``) so that ``predict`` builds sets without MAPIE or the calibration data, with the rule above, which
the tests check equals MAPIE's own ``predict_set``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from enum import StrEnum

import numpy as np

from ..errors import PolarVBLLError

EPSILON = 1e-8  # the tolerance MAPIE compares scores with (``mapie._machine_precision``)


class SetMethod(StrEnum):
    """How a class is scored: ``lac`` (least ambiguous set-valued classifier), ``aps`` (adaptive prediction sets),
    ``raps`` (regularized adaptive prediction sets)."""

    LAC = "lac"
    APS = "aps"
    RAPS = "raps"


@dataclass(frozen=True)
class ConformalSets:
    """Prediction sets at miscoverage ``alpha``, from ``n_calibration`` held-out examples (threshold q̂); RAPS's
    ``penalty`` λ per class beyond the first ``k_reg`` (0 for LAC and APS)."""

    method: SetMethod
    alpha: float
    threshold: float
    n_calibration: int
    penalty: float = 0.0
    k_reg: int = 0

    def sets(self, probs: np.ndarray) -> np.ndarray:
        """(N, C) bool: which classes each question's set holds (LAC's may be empty: no class is plausible enough;
        APS's always hold the most probable class)."""
        probs = np.asarray(probs, dtype=np.float64)
        if self.method is SetMethod.LAC:
            chosen = (1.0 - probs) - self.threshold <= EPSILON
        else:
            order = np.argsort(-probs, axis=1, kind="stable")
            ranked = np.take_along_axis(probs, order, axis=1)
            before = np.cumsum(ranked, axis=1) - ranked  # mass of the classes ranked above each
            ranks_above = np.arange(probs.shape[1])  # o − 1 for the class at rank o
            before = before + self.penalty * np.maximum(0, ranks_above - self.k_reg)
            keep = before - self.threshold < -EPSILON  # the class that reaches q̂ included
            chosen = np.zeros_like(keep)
            np.put_along_axis(chosen, order, keep, axis=1)
        return chosen

    def to_dict(self) -> dict:
        """As JSON: an infinite threshold (every class in every set) is null."""
        threshold = self.threshold if math.isfinite(self.threshold) else None
        return {**asdict(self), "method": self.method.value, "threshold": threshold}

    @classmethod
    def from_dict(cls, data: dict) -> ConformalSets:
        threshold = math.inf if data["threshold"] is None else float(data["threshold"])
        return cls(
            SetMethod(data["method"]), float(data["alpha"]), threshold, int(data["n_calibration"]),
            float(data.get("penalty", 0.0)), int(data.get("k_reg", 0)),
        )  # fmt: skip


def calibrate_sets(
    probs: np.ndarray, labels: np.ndarray, alpha: float, method: SetMethod | str = SetMethod.LAC, seed: int = 0
) -> ConformalSets:
    """The prediction sets of miscoverage ``alpha`` calibrated on held-out ``probs`` (n, C) and ``labels`` (n,)
    with MAPIE's split conformal classifier (APS's and RAPS's randomization and RAPS's split seeded by ``seed``)."""
    from mapie.classification import SplitConformalClassifier
    from mapie.conformity_scores import RAPSConformityScore

    method = SetMethod(method)
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    if not 0 < alpha < 1:
        raise PolarVBLLError(f"alpha: the miscoverage must be in (0, 1), got {alpha}")
    if len(labels) == 0:
        raise PolarVBLLError("conformal: no calibration examples")
    raps = RAPSConformityScore() if method is SetMethod.RAPS else None
    classifier = SplitConformalClassifier(
        _given_probabilities(probs.shape[1]), confidence_level=1 - alpha, conformity_score=raps or method.value,
        prefit=True, random_state=seed,
    )  # fmt: skip
    if method is not SetMethod.LAC and len(np.unique(labels)) <= 2:
        raise PolarVBLLError(
            f"--method {method.value}: MAPIE scores two-class calibration labels with lac only (for two classes APS "
            "and RAPS add nothing over it); use --method lac"
        )
    classifier.conformalize(probs, labels)
    scores = np.asarray(classifier.conformity_scores, dtype=np.float64).ravel()
    penalty, k_reg = 0.0, 0
    if raps is not None:
        classifier.predict_set(probs[:1])  # MAPIE chooses k_reg and λ on its tuning split when it first predicts
        penalty, k_reg = float(np.ravel(raps.lambda_star)[0]), int(np.ravel(raps.k_star)[0])
        scores = scores + penalty * np.maximum(0, np.ravel(raps.cutoff) - k_reg)  # cutoff: the true class's rank
    scores = np.sort(scores)
    rank = math.ceil((1 - alpha) * (len(scores) + 1))
    threshold = float(scores[rank - 1]) if rank <= len(scores) else math.inf
    return ConformalSets(method, alpha, threshold, len(scores), penalty, k_reg)


def _given_probabilities(n_classes: int):
    """A fitted scikit-learn classifier whose input is already its output: MAPIE scores a run's probabilities."""
    from sklearn.base import BaseEstimator, ClassifierMixin

    class GivenProbabilities(ClassifierMixin, BaseEstimator):
        def fit(self, X, y=None):  # noqa: N803 (scikit-learn's names)
            self.classes_ = np.arange(n_classes)
            return self

        def predict_proba(self, X):  # noqa: N803
            return np.asarray(X, dtype=np.float64)

        def predict(self, X):  # noqa: N803
            return np.asarray(X).argmax(1)

    return GivenProbabilities().fit(None)
