"""Reports of runs and evaluations."""

from .report import render_markdown, write_report

__all__ = ["render_markdown", "write_report"]
