"""Reports of runs and evaluations, and the plots they embed (each plot function returns PNG bytes)."""

from .plots import reliability_diagrams, risk_coverage_curves, roc_curves, score_histograms
from .report import compare_runs, render_html, render_markdown, write_report
from .schema import Report, package_versions

__all__ = [
    "Report",
    "package_versions",
    "compare_runs",
    "reliability_diagrams",
    "render_html",
    "render_markdown",
    "risk_coverage_curves",
    "roc_curves",
    "score_histograms",
    "write_report",
]
