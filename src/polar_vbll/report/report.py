"""Run reports: ``report.json`` (everything, machine-readable) and ``report.md`` (for people), written atomically."""

from __future__ import annotations

from pathlib import Path

from ..atomic import atomic_write_json, atomic_write_text

METRIC_NAMES = {
    "cls/acc": "accuracy",
    "cal/ece": "ECE (15 bins)",
    "cls/nll": "NLL",
    "cls/brier": "Brier",
}


def render_markdown(report: dict) -> str:
    model = report["model"]
    lines = [
        f"# {report['task']} / {report['split']} — {model['name']}",
        "",
        f"- examples: {report['n']}",
        f"- prompt: `{report['prompt_version']}`, labels {', '.join(repr(w) for w in report['label_words'])}",
        f"- model: {model['name']} ({model['parameters']:,} parameters, {model['dtype']}, from {model['source']})",
    ]
    if model.get("note"):
        lines.append(f"- note: {model['note']}")
    lines += ["", "| metric | value |", "|---|---|"]
    lines += [f"| `{key}` {METRIC_NAMES.get(key, '')} | {value:.4f} |" for key, value in report["metrics"].items()]
    if report.get("timings"):
        lines += ["", "Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in report["timings"].items())]
    lines += ["", "Reproduce:", "", "```", report["command"], "```", ""]
    return "\n".join(lines)


def write_report(report: dict, out_dir: str | Path) -> Path:
    """Write ``report.json`` and ``report.md`` into ``out_dir`` (created if needed); return the folder."""
    out = Path(out_dir)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report))
    return out


COMPARE_METRICS = ("cls/acc", "cal/ece", "cls/nll", "cls/brier")
HIGHER_IS_BETTER = {"cls/acc"}


def compare_runs(reports: list[dict], names: list[str]) -> str:
    """Markdown table: one row per run, the main metrics as columns, the best value of each column in bold."""
    best = {}
    for key in COMPARE_METRICS:
        values = [r["metrics"][key] for r in reports if key in r["metrics"]]
        if values:
            best[key] = max(values) if key in HIGHER_IS_BETTER else min(values)
    lines = [
        "| run | method | task / split | n | " + " | ".join(f"`{k}`" for k in COMPARE_METRICS) + " |",
        "|---|---|---|---|" + "---|" * len(COMPARE_METRICS),
    ]
    for name, r in zip(names, reports):
        method = r.get("method", {})
        label = f"{method.get('adapter', 'none')}-{method.get('uq', 'zero-shot')}" if method else "zero-shot"
        cells = []
        for key in COMPARE_METRICS:
            value = r["metrics"].get(key)
            text = "n/a" if value is None else f"{value:.4f}"
            cells.append(f"**{text}**" if value is not None and value == best.get(key) and len(reports) > 1 else text)
        lines.append(f"| {name} | {label} | {r['task']} / {r['split']} | {r['n']} | " + " | ".join(cells) + " |")
    notes = {r["model"].get("note") for r in reports if r.get("model", {}).get("note")}
    lines += [""] + [f"Note: {note}." for note in sorted(notes)]
    return "\n".join(lines) + "\n"
