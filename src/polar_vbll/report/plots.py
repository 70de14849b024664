"""Plots a person would rather see than read; each returns PNG bytes (matplotlib, Agg backend)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from ..metrics import check_probs, risk_coverage  # noqa: E402


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def _reliability_axes(top, bottom, probs, labels, n_bins: int, title: str) -> None:
    p, y = check_probs(probs, labels)
    confidence, correct = p.max(1), (p.argmax(1) == y)
    edges = np.linspace(0, 1, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    acc = np.bincount(bins, weights=correct, minlength=n_bins) / np.maximum(counts, 1)
    conf = np.bincount(bins, weights=confidence, minlength=n_bins) / np.maximum(counts, 1)
    centers, width = (edges[:-1] + edges[1:]) / 2, 1 / n_bins
    filled = counts > 0
    top.bar(centers[filled], acc[filled], width=width, edgecolor="black", color="#4c72b0", label="accuracy")
    top.bar(
        centers[filled],
        conf[filled] - acc[filled],
        bottom=acc[filled],
        width=width,
        fill=False,
        hatch="//",
        edgecolor="#c44e52",
        label="gap to mean confidence",
    )
    top.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    top.set_ylabel("accuracy")
    top.set_ylim(0, 1)
    top.legend(loc="lower right", fontsize=8)
    top.set_title(title or "Reliability diagram")
    bottom.bar(centers, counts / counts.sum(), width=width, color="#55a868", edgecolor="black")
    bottom.set_xlabel("confidence (top-class probability)")
    bottom.set_ylabel("share")
    bottom.set_xlim(0, 1)


def reliability_diagram(probs, labels, n_bins: int = 15, title: str = "") -> bytes:
    """Accuracy vs confidence per equal-width bin (gap to the diagonal shaded), with the confidence histogram."""
    return reliability_diagrams({title: (probs, labels)}, n_bins)


def reliability_diagrams(runs: dict[str, tuple], n_bins: int = 15) -> bytes:
    """Reliability diagrams side by side, one column per ``{title: (probs (N, C), labels (N,))}``."""
    fig, axes = plt.subplots(
        2,
        len(runs),
        figsize=(4.8 * len(runs), 5.4),
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [3, 1]},
    )
    for column, (title, (probs, labels)) in enumerate(runs.items()):
        _reliability_axes(axes[0, column], axes[1, column], probs, labels, n_bins, title)
    return _png(fig)


def risk_coverage_plot(probs, labels, title: str = "") -> bytes:
    coverage, risk = risk_coverage(probs, labels)
    fig, ax = plt.subplots(figsize=(4.8, 3.4))
    ax.plot(coverage, risk, color="#4c72b0")
    ax.axhline(risk[-1], color="gray", linestyle=":", linewidth=1, label=f"risk at full coverage {risk[-1]:.3f}")
    ax.set_xlabel("coverage (share of examples answered, most confident first)")
    ax.set_ylabel("risk (error rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, max(0.05, float(risk.max()) * 1.1))
    ax.legend(fontsize=8)
    ax.set_title(title or f"Risk-coverage (AURC {risk.mean():.3f})")
    return _png(fig)


def risk_coverage_curves(runs: dict[str, tuple], title: str = "Risk-coverage") -> bytes:
    """Risk-coverage curves of several ``{name: (probs, labels)}`` in one plot (lower is better), AURC in the
    legend."""
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    top = 0.05
    for name, (probs, labels) in runs.items():
        coverage, risk = risk_coverage(probs, labels)
        ax.plot(coverage, risk, label=f"{name} (AURC {risk.mean():.3f})")
        top = max(top, float(risk.max()) * 1.1)
    ax.set_xlabel("coverage (share of examples answered, most confident first)")
    ax.set_ylabel("risk (error rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, top)
    ax.legend(fontsize=8)
    ax.set_title(title)
    return _png(fig)


def decisions_plot(probs, labels, decisions: dict) -> bytes:
    """The conformal record's two rules on the examples it was measured on: the risk-coverage curve with the
    certified abstention threshold's point and the bound α (left), and the share of each prediction-set size
    (right)."""
    coverage, risk = risk_coverage(probs, labels)
    measured, alpha = decisions["evaluation"], decisions["alpha"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9.0, 3.4))
    left.plot(coverage, risk, color="#4c72b0", label="answer the most confident first")
    left.axhline(alpha, color="#c44e52", linestyle="--", linewidth=1, label=f"certified bound α = {alpha:g}")
    if measured["abstain/coverage"] > 0:
        left.plot(
            [measured["abstain/coverage"]], [measured["abstain/risk"]], "o", color="#c44e52",
            label=f"threshold: answers {measured['abstain/coverage']:.2f}, error {measured['abstain/risk']:.3f}",
        )  # fmt: skip
    else:
        left.plot([], [], " ", label="no threshold certified: abstains on every question")
    left.set_xlabel("coverage (share answered)")
    left.set_ylabel("risk (error among answered)")
    left.set_xlim(0, 1)
    left.set_ylim(0, max(0.05, float(risk.max()) * 1.1, alpha * 1.2))
    left.legend(fontsize=7)
    left.set_title("Abstention at a certified risk")
    shares = measured["set/sizes"]
    right.bar(range(len(shares)), shares, color="#55a868")
    right.set_xticks(range(len(shares)))
    right.set_xlabel("prediction-set size (classes)")
    right.set_ylabel("share of questions")
    right.set_title(f"{decisions['sets']['method'].upper()} sets: coverage {measured['set/coverage']:.3f}")
    fig.tight_layout()
    return _png(fig)


def score_histograms(id_scores, ood_scores: dict[str, np.ndarray], criterion: str, title: str = "") -> bytes:
    """Distribution of one criterion's ID score on the ID set (N,) and on each OOD set ``{name: (M,)}``."""
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    everything = np.concatenate([id_scores, *ood_scores.values()])
    bins = np.linspace(everything.min(), everything.max() + 1e-9, 30).tolist()
    ax.hist(id_scores, bins=bins, density=True, alpha=0.6, label="in-distribution", color="#4c72b0")
    for name, scores in ood_scores.items():
        ax.hist(scores, bins=bins, density=True, histtype="step", linewidth=1.5, label=name)
    ax.set_xlabel(f"{criterion} score (higher = more in-distribution)")
    ax.set_ylabel("density")
    ax.legend(fontsize=8)
    ax.set_title(title or f"ID vs OOD: {criterion}")
    return _png(fig)


def roc_curves(id_scores, ood_scores: dict[str, np.ndarray], criterion: str, title: str = "") -> bytes:
    """ROC curve of one criterion per OOD set ``{name: (M,)}`` against the ID set (N,), ID the positive class."""
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    for name, scores in ood_scores.items():
        is_id = np.concatenate([np.ones(len(id_scores)), np.zeros(len(scores))])
        fpr, tpr, _ = roc_curve(is_id, np.concatenate([id_scores, scores]))
        ax.plot(fpr, tpr, label=name)
    ax.plot([0, 1], [0, 1], "k--", linewidth=1)
    ax.set_xlabel("false positive rate (OOD taken as ID)")
    ax.set_ylabel("true positive rate (ID kept)")
    ax.legend(fontsize=8)
    ax.set_title(title or f"ROC, ID = positive: {criterion}")
    return _png(fig)


def calibration_plots(probs, labels, title: str = "", n_bins: int = 15) -> dict[str, bytes]:
    """The two plots of every report: reliability diagram and risk-coverage curve."""
    return {
        "reliability": reliability_diagram(probs, labels, n_bins, title=title),
        "risk_coverage": risk_coverage_plot(probs, labels),
    }
