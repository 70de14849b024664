"""``predict_run`` / ``FitResult.predict``: new questions and task splits, with uncertainty, from a run folder."""

import numpy as np
import pytest

from polar_vbll import load_run, predict_run
from polar_vbll.engine import evaluate_run, fit
from polar_vbll.errors import DataFormatError, PolarVBLLError
from tests.engine.test_fit import config, task_dir  # noqa: F401  (fixture)

QUESTIONS = [
    {"question": "Is red a colour?", "choices": ["no", "yes"]},
    {"question": "Is a dog a colour?", "choices": ["no", "yes"], "answer": 0},
]


@pytest.fixture
def run(tiny_dir, task_dir, tmp_path):  # noqa: F811
    fit(config(tiny_dir, task_dir, steps=2), tmp_path / "run", progress=False)
    return tmp_path / "run"


def test_split_predictions_match_the_run_report(run):
    predictions = predict_run(run)
    report = evaluate_run(run, progress=False)
    assert predictions.metrics() == pytest.approx({k: report["metrics"][k] for k in predictions.metrics()})
    assert predictions.probs.shape == (8, 2) and np.allclose(predictions.probs.sum(1), 1)
    total = predictions.uncertainty["aleatoric"] + predictions.uncertainty["epistemic"]
    assert np.allclose(total, predictions.uncertainty["total"], atol=1e-9)
    assert {"msp", "entropy"} <= set(predictions.scores)


def test_new_questions_without_answers(run):
    loaded = load_run(run)
    predictions = loaded.predict(QUESTIONS)
    assert predictions.labels is None and predictions.predicted.shape == (2,)
    with pytest.raises(PolarVBLLError, match="need the right answer"):
        predictions.metrics()
    again = predict_run(loaded, QUESTIONS)  # seeded sampling: the same numbers twice
    assert np.array_equal(again.probs, predictions.probs)
    rows = predictions.rows(order_by="epistemic")
    assert (
        rows[0]["epistemic"] >= rows[1]["epistemic"]
        and "answer" in rows[[r["question"] for r in rows].index("Is a dog a colour?")]
    )
    table = predictions.table(order_by="confidence")
    assert table.startswith("| question | predicted | confidence |") and table.count("\n") == 3


def test_bad_questions_name_the_question_and_field(run):
    with pytest.raises(DataFormatError, match=r"questions:1: field 'choices': needs at least 2 choices"):
        predict_run(run, [QUESTIONS[0], {"question": "q", "choices": ["only"]}])
    with pytest.raises(PolarVBLLError, match=r"questions:0: field 'choices': 3 choices, the run answers 2"):
        predict_run(run, [{"question": "q", "choices": ["a", "b", "c"]}])
    with pytest.raises(PolarVBLLError, match="order_by"):
        predict_run(run, QUESTIONS).rows(order_by="nope")
    with pytest.raises(PolarVBLLError, match="not both"):
        predict_run(run, QUESTIONS, split="validation")


@pytest.mark.parametrize(
    "label_words, shown",
    [([" A", " B"], ["B: yes", "A: no"]), ([" no", " yes"], ["yes", "no"])],
    ids=["letters", "label-is-the-choice"],
)
def test_rows_name_a_choice_by_its_label_only_where_the_label_differs(label_words, shown):
    from polar_vbll.data import MCItem
    from polar_vbll.engine import Predictions

    item = MCItem("0", "Is red a colour?", ("no", "yes"), 0)
    zeros = np.zeros(1)
    predictions = Predictions([item], np.array([[0.3, 0.7]]), {"total": zeros}, {"msp": zeros}, label_words)
    row = predictions.rows()[0]
    assert [row["predicted"], row["answer"]] == shown
