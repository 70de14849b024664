"""Reports of runs and evaluations."""

from .report import compare_runs, render_html, render_markdown, write_report

__all__ = ["compare_runs", "render_html", "render_markdown", "write_report"]
