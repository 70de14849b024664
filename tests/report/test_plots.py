"""Plots return PNG images; the side-by-side variants hold one panel per run."""

import struct

import numpy as np
import pytest

from polar_vbll.report import plots


def _size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", png[16:24])


@pytest.fixture
def run():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=200)
    return probs, rng.integers(0, 3, size=200)


def test_side_by_side_reliability_diagrams_are_one_panel_per_run(run):
    single = _size(plots.reliability_diagram(*run, title="one"))
    pair = _size(plots.reliability_diagrams({"a": run, "b": run}))
    assert pair[1] == pytest.approx(single[1], rel=0.05) and pair[0] == pytest.approx(2 * single[0], rel=0.1)


def test_risk_coverage_curves_and_ood_plots(run):
    assert _size(plots.risk_coverage_curves({"a": run, "b": run}))[0] > 100
    scores = np.linspace(0, 1, 50)
    assert _size(plots.score_histograms(scores, {"ood": scores - 0.5}, "msp"))[0] > 100
    assert _size(plots.roc_curves(scores, {"ood": scores - 0.5}, "msp"))[0] > 100


def test_bad_probabilities_are_refused():
    with pytest.raises(Exception, match="sum"):
        plots.reliability_diagrams({"a": (np.full((4, 2), 0.9), np.zeros(4, dtype=int))})
