"""Post-hoc steps as objects: the config lists them, ``run_post_hoc`` runs them in order, a new one is one class."""

import pytest
import torch

from polar_vbll.config import FitConfig
from polar_vbll.data import get_task
from polar_vbll.models import tiny_backbone
from polar_vbll.posthoc import POST_HOC, PostHocContext, PostHocStep, run_post_hoc
from polar_vbll.uq import PointHead
from tests.conftest import write_jsonl


@pytest.mark.parametrize(
    ("options", "steps"),
    [
        ({"uq": "map"}, []),
        ({"uq": "vbll", "laplace": True}, ["last_layer_laplace"]),
        ({"uq": "laplace"}, ["laplace_lora"]),
        ({"uq": "temperature"}, ["temperature"]),
        (
            {"uq": "vbll", "laplace": True, "temperature_scaling": True, "calibration_holdout": True},
            ["last_layer_laplace", "temperature"],
        ),
    ],
)
def test_the_config_lists_its_steps_in_order(options, steps):
    assert FitConfig.from_dict(options).post_hoc == steps
    assert all(name in POST_HOC for name in steps)


class DoubleTemperature(PostHocStep):
    """A step written in this test alone: doubles the head's temperature and reports it."""

    report_key = "doubled"

    def fit(self, context):
        context.head.temperature.mul_(2.0)
        return {"temperature": float(context.head.temperature)}


def test_a_new_step_is_one_class_and_one_line(tmp_path):
    POST_HOC.register("test_double_temperature", DoubleTemperature)  # the one line
    rows = [{"question": f"q{i}", "choices": ["a", "b"], "answer": i % 2} for i in range(6)]
    task = get_task(str(write_jsonl(tmp_path / "t" / "train.jsonl", rows).parent))
    backbone = tiny_backbone()
    head = PointHead(torch.zeros(2, backbone.hidden_size))
    context = PostHocContext(backbone, head, task, task.load("train"), task.load("train")[:3], FitConfig())
    reported = run_post_hoc(["test_double_temperature", "temperature", "test_double_temperature"], context)
    fitted = reported["calibration"]["temperature"]
    assert reported["calibration"]["held_out"] == 3
    assert reported["doubled"]["temperature"] == pytest.approx(2 * fitted)  # the last run of the step reports
    assert float(head.temperature) == pytest.approx(2 * fitted)
