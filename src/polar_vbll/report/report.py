"""Run reports: ``report.json`` (machine-readable), ``report.md`` and a self-contained ``report.html`` with plots."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from ..atomic import atomic_write_bytes, atomic_write_json, atomic_write_text
from ..outputs import claim

METRIC_NAMES = {
    "cls/acc": "accuracy",
    "cal/ece": "ECE (equal-width bins)",
    "cls/nll": "NLL",
    "cls/brier": "Brier",
    "cal/mce": "maximum calibration error",
    "cal/aece": "adaptive ECE (equal-mass bins)",
    "cal/cw_ece": "class-wise ECE",
    "sel/aurc": "area under risk-coverage",
    "sel/acc@80": "accuracy at 80 % coverage",
    "sel/acc@90": "accuracy at 90 % coverage",
    "unc/total_mean": "mean predictive entropy",
    "unc/aleatoric_mean": "mean expected entropy",
    "unc/epistemic_mean": "mean mutual information",
}
PLOT_TITLES = {
    "reliability": "Reliability diagram: bars below the diagonal mean overconfidence",
    "risk_coverage": "Risk-coverage: error rate when only the most confident answers are kept",
    "ood_hist": "Scores of the best OOD criterion, in-distribution vs each OOD set",
    "ood_roc": "ROC curves of the best OOD criterion",
    "decisions": "Decisions: the certified abstention threshold on the risk-coverage curve, and the set sizes",
}


def _ood_lines(report: dict) -> list[str]:
    if not report.get("ood"):
        return []
    lines = [
        "",
        "## Out-of-distribution",
        "",
        f"In-distribution: {report['task']} / {report['split']} ({report['n']} examples); ID = positive class.",
        "",
        "| OOD set | kept / total | cls/acc | cal/ece | cls/nll | best criterion | ood/auroc | ood/fpr95 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, entry in report["ood"].items():
        m, best = entry["metrics"], entry["best_criterion"]
        d = entry["detection"][best]
        lines.append(
            f"| {name} | {entry['n']} / {entry['n_total']} | {m['cls/acc']:.4f} | {m['cal/ece']:.4f} | "
            f"{m['cls/nll']:.4f} | {best} | {d['ood/auroc']:.4f} | {d['ood/fpr95']:.4f} |"
        )
    criteria = list(next(iter(report["ood"].values()))["detection"])
    lines += [
        "",
        "AUROC by criterion:",
        "",
        "| OOD set | " + " | ".join(criteria) + " |",
        "|---|" + "---|" * len(criteria),
    ]
    for name, entry in report["ood"].items():
        lines.append(f"| {name} | " + " | ".join(f"{entry['detection'][c]['ood/auroc']:.4f}" for c in criteria) + " |")
    if report.get("ood_note"):
        lines += ["", report["ood_note"]]
    return lines


def _tasks_lines(report: dict) -> list[str]:
    """A multi-task run's per-task table (its metrics above are their unweighted means)."""
    if not report.get("tasks"):
        return []
    keys = ("cls/acc", "cal/ece", "cls/nll")
    lines = [
        "",
        "## Tasks",
        "",
        "| task | split | n | steps | " + " | ".join(f"`{k}`" for k in keys) + " | zero-shot `cls/acc` | run folder |",
        "|---|---|---|---|" + "---|" * len(keys) + "---|---|",
    ]
    for name, entry in report["tasks"].items():
        zero = entry.get("zero_shot", {}).get("cls/acc")
        lines.append(
            f"| {name} | {entry['split']} | {entry['n']} | {entry['steps']} | "
            + " | ".join(f"{entry['metrics'][k]:.4f}" for k in keys)
            + f" | {'' if zero is None else f'{zero:.4f}'} | `{entry['folder']}` |"
        )
    warnings = [f"- **{name}: {entry['warning']}**" for name, entry in report["tasks"].items() if entry.get("warning")]
    return lines + ([""] + warnings if warnings else [])


def _attack_lines(report: dict) -> list[str]:
    """The metrics of the same examples clean and under the attack of the ``attack`` section."""
    attack = report.get("attack")
    if not attack:
        return []
    keys = ("cls/acc", "cal/ece", "cls/nll", "unc/total_mean", "unc/epistemic_mean")
    return [
        "",
        "## Under attack",
        "",
        f"{attack['method'].upper()} on the input embeddings: {attack['steps']} step(s), each token within "
        f"ε = {attack['epsilon']} of its embedding's norm.",
        "",
        "| metric | clean | attacked |",
        "|---|---|---|",
        *(
            f"| `{key}` | {report['metrics'][key]:.4f} | {attack['metrics'][key]:.4f} |"
            for key in keys
            if key in attack["metrics"] and key in report["metrics"]
        ),
    ]


def _decisions_lines(report: dict) -> list[str]:
    """The conformal record stored by ``polar-vbll conformal``: each rule's setting and what it measured."""
    decisions = report.get("decisions")
    if not decisions:
        return []
    sets, abstention, measured = decisions["sets"], decisions["abstention"], decisions["evaluation"]
    threshold = "every class" if sets["threshold"] is None else f"q̂ = {sets['threshold']:.4f}"
    if sets["method"] == "raps":
        threshold += f", λ = {sets['penalty']:g} per class beyond {sets['k_reg']}"
    answer = (
        "abstains on every question (no threshold certified)"
        if abstention["threshold"] is None
        else f"answers when max p ≥ {abstention['threshold']:.3f}"
    )
    return [
        "",
        f"## Decisions (α = {decisions['alpha']:g}, δ = {decisions['delta']:g})",
        "",
        f"Calibrated on {decisions['calibration']['source']}; measured on {measured['split']} ({measured['n']} "
        "examples).",
        "",
        "| rule | setting | measured |",
        "|---|---|---|",
        f"| {sets['method'].upper()} prediction sets, coverage ≥ {1 - decisions['alpha']:g} | {threshold} | "
        f"coverage {measured['set/coverage']:.4f}, mean size {measured['set/size']:.3f}, empty "
        f"{measured['set/empty']:.4f} |",
        f"| abstention, error among answered ≤ {decisions['alpha']:g} with probability ≥ {1 - decisions['delta']:g} "
        f"(Learn then Test, {abstention['fwer']}) | {answer} | answered {measured['abstain/coverage']:.4f}, error "
        f"{measured['abstain/risk']:.4f} |",
    ]


def render_markdown(report: dict, images: dict[str, bytes] | None = None) -> str:
    model = report["model"]
    labels = f", labels {', '.join(repr(w) for w in report['label_words'])}" if report["label_words"] else ""
    lines = [
        f"# {report['task']} / {report['split']} — {model['name']}",
        "",
        f"- examples: {report['n']}",
        f"- prompt: `{report['prompt_version']}`{labels}",
        f"- model: {model['name']} ({model['parameters']:,} parameters, {model['dtype']}, from {model['source']})",
    ]
    if report.get("tasks"):
        lines.append(f"- metrics: the unweighted mean over the {len(report['tasks'])} tasks of the table below")
    if report.get("method"):
        lines.append("- method: " + ", ".join(f"{k} {v}" for k, v in report["method"].items()))
    if report.get("trained_on"):
        lines.append(f"- trained on: {report['trained_on']}")
    if model.get("note"):
        lines.append(f"- note: {model['note']}")
    if report.get("warning"):
        lines.append(f"- **warning: {report['warning']}**")
    zero = report.get("zero_shot") or {}
    if zero:
        lines += ["", "| metric | value | zero-shot |", "|---|---|---|"]
        lines += [
            f"| `{key}` {METRIC_NAMES.get(key, '')} | {value:.4f} | "
            + (f"{zero[key]:.4f}" if key in zero else "")
            + " |"
            for key, value in report["metrics"].items()
        ]
    else:
        lines += ["", "| metric | value |", "|---|---|"]
        lines += [f"| `{key}` {METRIC_NAMES.get(key, '')} | {value:.4f} |" for key, value in report["metrics"].items()]
    lines += _tasks_lines(report)
    lines += _attack_lines(report)
    lines += _ood_lines(report)
    lines += _decisions_lines(report)
    if images:
        lines += ["", "## Plots", ""] + [f"![{PLOT_TITLES.get(n, n)}]({n}.png)" for n in images]
    if report.get("timings"):
        lines += ["", "Timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in report["timings"].items())]
    lines += ["", "Reproduce:", "", "```", report["command"], "```", ""]
    return "\n".join(lines)


def render_html(report: dict, images: dict[str, bytes] | None = None) -> str:
    """A self-contained page: the Markdown tables as HTML and every plot embedded as a base64 PNG."""
    body = []
    in_table = False
    for line in render_markdown(report).splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()).replace("**", "").replace("`", "") for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-: "):
                continue
            tag = "th" if not in_table else "td"
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<{tag}>{c}</{tag}>" for c in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("- "):
            body.append(f"<p>• {html.escape(line[2:])}</p>")
        elif line and not line.startswith("```"):
            body.append(
                f"<p><code>{html.escape(line)}</code></p>"
                if line.startswith("polar-vbll")
                else f"<p>{html.escape(line)}</p>"
            )
    if in_table:
        body.append("</table>")
    for name, png in (images or {}).items():
        title = html.escape(PLOT_TITLES.get(name, name))
        body.append(
            f'<figure><img alt="{title}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
            f"<figcaption>{title}</figcaption></figure>"
        )
    style = (
        "body{font-family:sans-serif;max-width:980px;margin:2em auto;color:#222}"
        "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px}"
        "figure{display:inline-block;margin:1em}"
    )
    title = html.escape(f"{report['task']} / {report['split']} — {report['model']['name']}")
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{title}</title><style>{style}</style>"
        f"</head><body>{''.join(body)}</body></html>\n"
    )


def write_report(report: dict, out_dir: str | Path, images: dict[str, bytes] | None = None) -> Path:
    """Write ``report.json``, ``report.md``, ``report.html`` and one PNG per plot into ``out_dir``, atomically.

    The files are claimed in the folder's marker first (:mod:`polar_vbll.outputs`): a file of the same name that
    polar-vbll did not write is never replaced.
    """
    out = Path(out_dir)
    claim(out, *(f"{name}.png" for name in images or {}), "report.json", "report.md", "report.html")
    for name, png in (images or {}).items():
        atomic_write_bytes(out / f"{name}.png", png)
    atomic_write_json(out / "report.json", report)
    atomic_write_text(out / "report.md", render_markdown(report, images))
    atomic_write_text(out / "report.html", render_html(report, images))
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
