"""The report schema: what every report.json holds, read back with one-line errors."""

import pytest

from polar_vbll.errors import PolarVBLLError
from polar_vbll.report import Report

BASE = dict(
    task="sst2",
    split="validation",
    n=2,
    model={"name": "tiny"},
    metrics={"cls/acc": 0.5, "cal/ece": 0.1},
    prompt_version="sentiment@1",
    label_words=[" negative", " positive"],
    command="polar-vbll evaluate --task sst2",
)


def test_round_trip_keeps_fields_order_and_sections():
    report = Report(**BASE, method={"adapter": "lora", "uq": "map"}, sections={"posterior": {"prior_precision": 2.0}})
    data = report.to_dict()
    assert list(data)[:6] == ["task", "split", "n", "model", "method", "metrics"]
    assert list(data)[-1] == "posterior" and "diagnostics" not in data  # absent optional fields are left out
    assert set(data["versions"]) == {"python", "torch", "transformers", "polar_vbll"}
    assert Report.from_dict(data) == report


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ([1, 2], r"r.json: not a polar-vbll report \(a JSON object is expected\)"),
        (
            {k: v for k, v in BASE.items() if k not in ("n", "command")},
            r"r.json: not a polar-vbll report \(needs n, command\)",
        ),
        ({**BASE, "metrics": {"cls/acc": "high"}}, r"r.json: field 'metrics': cls/acc is not a number"),
    ],
)
def test_a_bad_report_is_named_in_one_line(data, match):
    with pytest.raises(PolarVBLLError, match=match):
        Report.from_dict(data, "r.json")
