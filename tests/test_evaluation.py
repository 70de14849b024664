import json

import numpy as np
import torch

from polar_vbll import evaluate, get_task
from polar_vbll.data import label_token_ids
from polar_vbll.evaluation import predict_probs
from tests.conftest import write_jsonl

ROWS = [
    {"question": "Which is a colour?", "choices": ["red", "dog", "run"], "answer": 0},
    {"question": "Pick the animal.", "choices": ["dog", "sky"], "answer": 0},
    {
        "question": "Which one is a verb in this long question about grammar?",
        "choices": ["a", "b", "run", "c"],
        "answer": 2,
    },
]


def test_probs_equal_full_model_softmax_over_valid_choices(tiny, tmp_path):
    task = get_task(str(write_jsonl(tmp_path / "mine.jsonl", ROWS)))
    items = task.load("mine")
    probs, stats = predict_probs(tiny, task, items, batch_size=2, progress=False)
    ids = label_token_ids(tiny.tokenizer, task.label_words())
    for row, item in enumerate(items):
        encoded = tiny.tokenizer(task.template.render(item))["input_ids"]
        with torch.no_grad():
            logits = tiny.model(torch.tensor([encoded])).logits[0, -1, ids[: len(item.choices)]]
        expected = torch.softmax(logits.double(), -1).numpy()
        np.testing.assert_allclose(probs[row, : len(item.choices)], expected, atol=1e-5)
        assert (probs[row, len(item.choices) :] == 0).all()
    left, _ = predict_probs(tiny, task, items, batch_size=3, padding_side="left", progress=False)
    np.testing.assert_allclose(left, probs, atol=1e-5)
    assert stats["truncated"] == 0


def test_evaluate_writes_report_with_the_contract_keys(tiny, tmp_path):
    path = write_jsonl(tmp_path / "mine.jsonl", ROWS)
    result = evaluate(tiny, str(path), out=tmp_path / "out", progress=False)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {"task", "split", "n", "model", "metrics", "prompt_version", "command"} <= set(report)
    assert set(report["metrics"]) >= {"cls/acc", "cal/ece", "cls/nll", "cls/brier"}
    assert report["n"] == 3 == result.n and report["prompt_version"] == "qa_oneline@1"
    assert report["command"].startswith("polar-vbll evaluate --model tiny-llama --task mine")
    md = (tmp_path / "out" / "report.md").read_text()
    assert "`cal/ece`" in md and report["command"] in md
    assert evaluate(tiny, str(path), limit=2, progress=False).n == 2
