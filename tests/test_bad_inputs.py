"""Bad inputs and faults, the way a new user meets them: each ends in a non-zero exit (or one raised error in the
Python API) with exactly one error line that names the field, file or line, no traceback, and every file that
existed before unchanged.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from polar_vbll.cli import main
from polar_vbll.engine import FitConfig, fit, load_run
from polar_vbll.errors import PolarVBLLError
from polar_vbll.models import tiny_backbone
from tests.conftest import write_jsonl

WORDS = ["red", "blue", "green", "dog", "cat", "sky", "sun", "tree"]


def toy_rows(n: int, offset: int) -> list[dict]:
    return [
        {"question": f"Is {WORDS[(i + offset) % 8]} a colour?", "choices": ["no", "yes"], "answer": int(i % 8 < 3)}
        for i in range(n)
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A tiny model folder, a toy task, a finished run and a run interrupted at step 3 of 6 (checkpoint at 2)."""
    root = tmp_path_factory.mktemp("built")
    backbone = tiny_backbone()
    backbone.model.save_pretrained(root / "model")
    backbone.tokenizer.save_pretrained(root / "model")
    write_jsonl(root / "toy" / "train.jsonl", toy_rows(16, 0))
    write_jsonl(root / "toy" / "validation.jsonl", toy_rows(6, 3))
    base = dict(model=str(root / "model"), task=str(root / "toy"), batch_size=4, max_length=48, eval_batch_size=8)
    fit(FitConfig(**base, steps=2, checkpoint_every=1), root / "run", progress=False)

    def stop_at_three(step, logs):
        if step == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(FitConfig(**base, steps=6, checkpoint_every=2), root / "stopped", progress=False, callbacks=[stop_at_three])
    return root


@dataclass
class Env:
    """One case's folder: copies of the built pieces, and ``mine``, a user's project folder with files of its own."""

    root: Path
    monkeypatch: pytest.MonkeyPatch

    @property
    def model(self) -> str:
        return str(self.root / "model")

    @property
    def task(self) -> str:
        return str(self.root / "toy")

    @property
    def run(self) -> Path:
        return self.root / "run"

    @property
    def stopped(self) -> Path:
        return self.root / "stopped"

    @property
    def mine(self) -> Path:
        return self.root / "mine"

    def write(self, relative: str, text: str) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return path

    def truncate(self, relative: str) -> Path:
        path = self.root / relative
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
        return path

    def fit_args(self, *more: str) -> list[str]:
        return [
            "fit",
            "--model",
            self.model,
            "--task",
            self.task,
            "--steps",
            "2",
            "--batch-size",
            "4",
            "--quiet",
            *more,
        ]


@pytest.fixture
def env(built, tmp_path, monkeypatch):
    for name in ("model", "toy", "run", "stopped"):
        shutil.copytree(built / name, tmp_path / name, symlinks=True)
    env = Env(tmp_path, monkeypatch)
    env.write("mine/config.json", '{"project": "mine"}\n')
    env.write("mine/notes.md", "my notes\n")
    env.write("mine/data/train.csv", "a,b\n1,2\n")
    monkeypatch.chdir(tmp_path)
    return env


def interrupt_at_step(env: Env, step: int) -> None:
    """Ctrl-C (KeyboardInterrupt) while the batch of ``step`` is being built."""
    import polar_vbll.engine.step as loop  # (where a step encodes its batches)

    calls = []

    def batches(*args, **kwargs):
        calls.append(1)
        if len(calls) == step:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = loop.encoded_batches
    env.monkeypatch.setattr(loop, "encoded_batches", batches)


def snapshot(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


@dataclass
class Case:
    """``make(env)`` returns CLI arguments (a list) or a Python call (a callable); ``match`` must be found in the one
    error line; ``code`` is the CLI's exit status."""

    id: str
    make: Callable[[Env], list[str] | Callable[[], object]]
    match: str
    code: int = 2


def _json(env: Env, relative: str, value) -> Path:
    return env.write(relative, json.dumps(value))


CASES = [
    # ---- data loss: nothing the tool did not write is removed, replaced, or written into
    Case(
        "fit-overwrite-project-with-config-json",
        lambda e: e.fit_args("--out", str(e.mine), "--overwrite"),
        r"mine: not empty and not a polar-vbll run folder",
    ),
    Case(
        "fit-into-nonempty-folder",
        lambda e: e.fit_args("--out", str(e.mine / "data")),
        r"mine/data: not empty and not a polar-vbll run folder",
    ),
    Case("fit-over-a-run-without-overwrite", lambda e: e.fit_args("--out", str(e.run)), r"run already holds a run"),
    Case(
        "fit-out-is-a-file",
        lambda e: e.fit_args("--out", str(e.mine / "notes.md")),
        r"notes.md: is a file, not a folder",
    ),
    Case(
        "evaluate-into-nonempty-folder",
        lambda e: ["evaluate", "--model", e.model, "--task", e.task, "--out", str(e.mine), "--quiet"],
        r"mine: not empty and not a polar-vbll evaluation folder",
    ),
    Case(
        "evaluate-into-the-run-itself",
        lambda e: ["evaluate", str(e.run), "--out", str(e.run), "--quiet"],
        r"run: holds a polar-vbll run output, not evaluation output",
    ),
    Case(
        "refine-into-nonempty-folder",
        lambda e: ["refine", str(e.run), "--out", str(e.mine), "--laplace", "--quiet"],
        r"mine: not empty and not a polar-vbll run folder",
    ),
    Case("refine-into-itself", lambda e: ["refine", str(e.run), "--out", str(e.run), "--laplace"], r"must differ"),
    Case(
        "export-lora-into-project",
        lambda e: ["export-lora", str(e.run), str(e.mine)],
        r"mine: holds config.json, data, notes.md ..., which this would replace|mine: holds config.json, data, notes",
    ),
    Case(
        "report-over-a-users-comparison",
        lambda e: (
            e.write("mine/comparison.md", "mine\n"),
            ["report", str(e.run), "--out", str(e.mine)],
        )[1],
        r"mine/comparison.md: exists and was not written by polar-vbll",
    ),
    # ---- options that must work as meant or be refused
    Case(
        "resume-with-a-training-flag",
        lambda e: ["fit", "--resume", str(e.run), "--lr-adapter", "0.1", "--quiet"],
        r"--lr-adapter: cannot change when resuming",
    ),
    Case("resume-with-fewer-steps", lambda e: ["fit", "--resume", str(e.run), "--steps", "1"], r"--steps: 1 is fewer"),
    Case(
        "resume-with-config",
        lambda e: ["fit", "--resume", str(e.run), "--config", "x.toml"],
        r"--config: cannot be used with --resume",
    ),
    Case(
        "resume-with-another-out",
        lambda e: ["fit", "--resume", str(e.run), "--out", str(e.mine)],
        r"--out .*mine: --resume continues the run",
    ),
    Case(
        "extend-an-unfinished-run",
        lambda e: ["fit", "--resume", str(e.stopped), "--steps", "10", "--quiet"],
        r"stopped: stopped at step 2 of 6; resume it without --steps first",
    ),
    Case(
        "toml-bool-as-string",
        lambda e: ["fit", "--config", str(e.write("c.toml", 'steps = 2\nalternate = "no"\n')), "--out", "x"],
        r"c.toml:2: FitConfig.alternate: expected true or false or none, got 'no'",
    ),
    Case(
        "toml-number-as-string",
        lambda e: ["fit", "--config", str(e.write("c.toml", 'lr_adapter = "1e-3"\n')), "--out", "x"],
        r"c.toml:1: FitConfig.lr_adapter: expected a number, got '1e-3'",
    ),
    Case(
        "json-int-as-word",
        lambda e: ["fit", "--config", str(e.write("c.json", '{\n  "steps": "ten"\n}\n')), "--out", "x"],
        r"c.json:2: FitConfig.steps: expected an integer, got 'ten'",
    ),
    Case(
        "json-config-is-a-list",
        lambda e: ["fit", "--config", str(_json(e, "c.json", [1, 2])), "--out", "x"],
        r"c.json: expected a JSON object of options, got list",
    ),
    Case(
        "toml-unknown-vbll-option",
        lambda e: ["fit", "--config", str(e.write("c.toml", "[vbll]\ncovarianse = 1\n")), "--out", "x"],
        r"c.toml:2: unknown option\(s\) covarianse for FitConfig.uq",
    ),
    Case("config-file-missing", lambda e: ["fit", "--config", "nope.toml"], r"nope.toml: config file not found"),
    Case("train-limit-zero", lambda e: e.fit_args("--train-limit", "0"), r"--train-limit: must be >= 1"),
    Case("negative-lr", lambda e: e.fit_args("--lr-adapter=-1e-3"), r"--lr-adapter: must be > 0, got -0.001"),
    Case("fit-max-length-zero", lambda e: e.fit_args("--max-length", "0"), r"--max-length: must be >= 1, got 0"),
    Case("vbll-samples-zero", lambda e: e.fit_args("--vbll-n-samples", "0"), r"--vbll-n-samples: must be >= 1"),
    Case(
        "steps-not-a-number",
        lambda e: e.fit_args("--steps", "ten"),
        r"argument --steps: invalid int value: 'ten'",
    ),
    Case(
        "evaluate-negative-limit",
        lambda e: ["evaluate", "--model", e.model, "--task", e.task, "--limit", "-5"],
        r"argument --limit: must be >= 1, got -5",
    ),
    Case(
        "evaluate-max-length-zero",
        lambda e: ["evaluate", "--model", e.model, "--task", e.task, "--max-length", "0"],
        r"argument --max-length: must be >= 1, got 0",
    ),
    Case("data-show-zero", lambda e: ["data", "show", "sst2", "-n", "0"], r"argument -n: must be >= 1"),
    Case(
        "only-a-train-split",
        lambda e: (
            write_jsonl(e.root / "trainonly" / "train.jsonl", toy_rows(8, 0)),
            ["fit", "--model", e.model, "--task", "trainonly", "--out", "x", "--quiet"],
        )[1],
        r"task 'trainonly': only a train split, so the report would score the training examples",
    ),
    Case(
        "local-folder-shadows-bundled-task",
        lambda e: (
            write_jsonl(e.root / "sst2" / "validation.jsonl", toy_rows(4, 0)),
            ["evaluate", "--model", e.model, "--task", "sst2"],
        )[1],
        r"task 'sst2' is ambiguous: a bundled task and the path sst2 here; write ./sst2",
    ),
    Case(
        "task-folder-without-jsonl",
        lambda e: ["evaluate", "--model", e.model, "--task", str(e.mine / "data")],
        r"mine/data: no \*.jsonl split files found",
    ),
    # ---- what used to end in a traceback
    Case(
        "model-missing-folder",
        lambda e: ["evaluate", "--model", "./no-such-model", "--task", e.task],
        r"--model ./no-such-model: no such file or folder",
    ),
    Case(
        "model-empty-folder",
        lambda e: (
            (e.root / "empty").mkdir(),
            ["evaluate", "--model", str(e.root / "empty"), "--task", e.task],
        )[1],
        r"empty: not a model folder \(no config.json\)",
    ),
    Case(
        "model-broken-gguf",
        lambda e: ["evaluate", "--model", str(e.write("broken.gguf", "not gguf")), "--task", e.task],
        r"broken.gguf: cannot be loaded as a GGUF causal LM",
    ),
    Case(
        "model-not-gguf-file",
        lambda e: ["evaluate", "--model", str(e.mine / "notes.md"), "--task", e.task],
        r"notes.md: a file but not a .gguf",
    ),
    Case(
        "resume-foreign-config",
        lambda e: ["fit", "--resume", str(e.mine), "--quiet"],
        r"mine: not a polar-vbll run folder \(no .polar-vbll.json\); nothing to resume",
    ),
    Case("resume-missing-folder", lambda e: ["fit", "--resume", "nowhere"], r"nowhere: no such run folder to resume"),
    Case(
        "resume-truncated-checkpoint-state",
        lambda e: (e.truncate("stopped/checkpoint/state.safetensors"), ["fit", "--resume", str(e.stopped), "--quiet"])[
            1
        ],
        r"checkpoint/state.safetensors: unreadable checkpoint state, truncated or corrupt",
    ),
    Case(
        "resume-truncated-checkpoint-head",
        lambda e: (e.truncate("stopped/checkpoint/head.safetensors"), ["fit", "--resume", str(e.stopped), "--quiet"])[
            1
        ],
        r"checkpoint/head.safetensors: unreadable head, truncated or corrupt",
    ),
    Case(
        "resume-damaged-log-line",
        lambda e: (
            e.write("stopped/train_log.jsonl", '{"step": 1}\n{oops\n{"step": 2}\n'),
            ["fit", "--resume", str(e.stopped), "--quiet"],
        )[1],
        r"train_log.jsonl:2: damaged log line \(not the last one\)",
    ),
    Case(
        "evaluate-truncated-head",
        lambda e: (e.truncate("run/head.safetensors"), ["evaluate", str(e.run), "--quiet"])[1],
        r"run/head.safetensors: unreadable head, truncated or corrupt",
    ),
    Case(
        "evaluate-truncated-adapter",
        lambda e: (e.truncate("run/adapter/adapter_model.safetensors"), ["evaluate", str(e.run), "--quiet"])[1],
        r"adapter_model.safetensors: unreadable adapter weights, truncated or corrupt",
    ),
    Case(
        "evaluate-missing-head",
        lambda e: ((e.run / "head.safetensors").unlink(), ["evaluate", str(e.run), "--quiet"])[1],
        r"run/head.safetensors: head missing",
    ),
    Case(
        "evaluate-malformed-run-config",
        lambda e: (e.write("run/config.json", '{\n "steps": 2,\n}'), ["evaluate", str(e.run), "--quiet"])[1],
        r"run/config.json:3: malformed JSON in run config",
    ),
    Case(
        "evaluate-run-config-bad-type",
        lambda e: (_json(e, "run/config.json", {"steps": "2"}), ["evaluate", str(e.run), "--quiet"])[1],
        r"run/config.json:1: FitConfig.steps: expected an integer, got '2'",
    ),
    Case(
        "report-of-a-list",
        lambda e: (_json(e, "mine/report.json", [1]), ["report", str(e.mine)])[1],
        r"mine/report.json: not a polar-vbll report",
    ),
    Case(
        "cache-variable-names-a-file",
        lambda e: (e.monkeypatch.setenv("POLAR_VBLL_CACHE", str(e.mine / "notes.md")), ["models", "prepare"])[1],
        r"POLAR_VBLL_CACHE=.*notes.md: is a file, not a folder",
    ),
    Case(
        "ctrl-c-during-fit",
        lambda e: (
            interrupt_at_step(e, 2),
            e.fit_args("--checkpoint-every", "1", "--out", str(e.root / "new")),
        )[1],
        r"^polar-vbll: interrupted at step 2; the last checkpoint \(step 1 of 2\) is in .*new/checkpoint: continue "
        r"with `polar-vbll fit --resume .*new`$",
        code=130,
    ),
    Case(
        "ctrl-c-before-the-first-checkpoint",
        lambda e: (interrupt_at_step(e, 1), e.fit_args("--out", str(e.root / "new")))[1],
        r"^polar-vbll: interrupted at step 1 of 2, before the first checkpoint \(step 50\)",
        code=130,
    ),
    # ---- the Python API: the same one-line errors, raised
    Case(
        "api-fit-overwrite-project",
        lambda e: lambda: fit(FitConfig(model=e.model, task=e.task, steps=1), e.mine, overwrite=True, progress=False),
        r"mine: not empty and not a polar-vbll run folder",
    ),
    Case("api-config-bad-type", lambda e: lambda: FitConfig(steps="ten"), r"FitConfig.steps: expected an integer"),
    Case(
        "api-load-run-truncated-head",
        lambda e: (e.truncate("run/head.safetensors"), lambda: load_run(e.run))[1],
        r"head.safetensors: unreadable head, truncated or corrupt",
    ),
    Case(
        "api-save-adapter-into-project",
        lambda e: (
            lambda: __import__("polar_vbll.adapters", fromlist=["x"]).save_adapter(
                load_run(e.run).backbone.model, e.mine
            )
        ),
        r"mine: holds config.json, data, notes.md, which this would replace",
    ),
    Case(
        "api-evaluate-negative-limit",
        lambda e: lambda: __import__("polar_vbll").evaluate(e.model, e.task, limit=-1, progress=False),
        r"limit: must be an integer >= 1, got -1",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_one_line_and_loses_nothing(case, env, capsys):
    action = case.make(env)
    before = snapshot(env.root)
    capsys.readouterr()  # drop what the set-up printed
    if callable(action):
        with pytest.raises(PolarVBLLError) as info:
            action()
        lines = [str(info.value)]
    else:
        code = run_cli(action)
        err = capsys.readouterr().err
        assert code == case.code, err
        assert "Traceback" not in err and "internal error" not in err, err
        lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert re.search(case.match, lines[0]), lines[0]
    after = snapshot(env.root)
    assert {k: v for k, v in after.items() if k in before} == before, "a file that existed before was changed"


def run_cli(argv: list[str]) -> int:
    """``main(argv)``'s exit status, also when argparse itself refuses the arguments (through SystemExit)."""
    try:
        return main(argv)
    except SystemExit as exc:
        return exc.code


def test_there_are_at_least_forty_cases():
    assert len(CASES) >= 40
