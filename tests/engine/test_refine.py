"""``refine``: a post-hoc method on a finished run equals training that method from scratch."""

import pytest
import torch

from polar_vbll.engine import FitConfig, evaluate_run, fit, refine
from polar_vbll.engine.runs import refined_config
from polar_vbll.errors import PolarVBLLError
from tests.engine.test_fit import config, task_dir  # noqa: F401  (fixture)


@pytest.mark.parametrize(
    ("uq", "post_hoc", "expected"),
    [
        ("map", {"laplace": True}, {"uq": "laplace", "post_hoc": ["laplace_lora"]}),
        ("map", {"temperature_scaling": True}, {"uq": "temperature", "post_hoc": ["temperature"]}),
        ("map", {"tfb": True}, {"uq": "tfb", "post_hoc": ["tfb"]}),
        ("vbll", {"laplace": True}, {"uq": "vbll", "post_hoc": ["last_layer_laplace"]}),
        (
            "vbll",
            {"laplace": True, "temperature_scaling": True},
            {"uq": "vbll", "post_hoc": ["last_layer_laplace", "temperature"]},
        ),
    ],
)
def test_refined_run_equals_the_method_trained_from_scratch(uq, post_hoc, expected, tiny_dir, task_dir, tmp_path):  # noqa: F811
    options = {"uq": uq, "steps": 3, "calibration_holdout": True, "calibration_size": 6, "laplace_samples": 8}
    source = fit(config(tiny_dir, task_dir, **options), tmp_path / "source", progress=False)
    refined = refine(tmp_path / "source", tmp_path / "refined", progress=False, **post_hoc)
    assert {"uq": refined.config.uq.method, "post_hoc": refined.config.post_hoc} == expected
    scratch = fit(config(tiny_dir, task_dir, **{**options, **expected}), tmp_path / "scratch", progress=False)
    assert refined.report["metrics"] == scratch.report["metrics"]
    assert refined.report["metrics"] != source.report["metrics"]
    assert refined.report["refined_from"] == str(tmp_path / "source")
    if "temperature_scaling" in post_hoc:
        assert refined.report["calibration"] == scratch.report["calibration"]
    if expected.get("uq") == "laplace":
        assert refined.report["posterior"] == scratch.report["posterior"]
    if expected.get("uq") == "tfb":
        assert refined.report["tfb"] == scratch.report["tfb"] and refined.report["tfb"]["sigma"] > 0
    assert evaluate_run(tmp_path / "refined", progress=False)["metrics"] == refined.report["metrics"]
    assert torch.equal(source.head.temperature, torch.ones(()))  # the source run is left as it was


def test_refine_refuses_what_it_cannot_do(tiny_dir, task_dir, tmp_path):  # noqa: F811
    fit(config(tiny_dir, task_dir, uq="map", steps=1), tmp_path / "run", progress=False)
    with pytest.raises(PolarVBLLError, match="none is left to fit a temperature"):
        refine(tmp_path / "run", tmp_path / "ts", temperature_scaling=True, progress=False)
    with pytest.raises(PolarVBLLError, match="ask for temperature_scaling, laplace and/or tfb"):
        refine(tmp_path / "run", tmp_path / "x", progress=False)
    with pytest.raises(PolarVBLLError, match="--out must differ"):
        refine(tmp_path / "run", tmp_path / "run", laplace=True, progress=False)
    with pytest.raises(PolarVBLLError, match="needs a map or vbll run"):
        refined_config(FitConfig(uq="mc_dropout"), laplace=True)
    with pytest.raises(PolarVBLLError, match="unknown option"):
        refined_config(FitConfig(uq="map"), laplace=True, steps=3)
    with pytest.raises(PolarVBLLError, match="a TFB refinement needs a map run, this one is 'vbll'"):
        refined_config(FitConfig(uq="vbll"), tfb=True)
    with pytest.raises(PolarVBLLError, match="ask for one"):
        refined_config(FitConfig(uq="map"), laplace=True, tfb=True)
    with pytest.raises(PolarVBLLError, match=r"tfb options \['samples'\] need --tfb"):
        refined_config(FitConfig(uq="map"), laplace=True, tfb_samples=3)
    with pytest.raises(PolarVBLLError, match="missing: no such run folder"):
        refine(tmp_path / "missing", tmp_path / "y", laplace=True, progress=False)
    with pytest.raises(PolarVBLLError, match="temperature needs calibration_holdout"):
        FitConfig(uq="temperature", calibration_holdout=False)


def test_holdout_comes_before_train_limit(tiny_dir, task_dir):  # noqa: F811
    from polar_vbll.data import get_task
    from polar_vbll.engine.build import training_items

    task = get_task(str(task_dir))
    cfg = config(tiny_dir, task_dir, calibration_holdout=True, calibration_size=6, train_limit=10)
    train, held = training_items(task, cfg)
    assert len(train) == 10 and len(held) == 6 and not {id(x) for x in train} & {id(x) for x in held}
    plain, _ = training_items(task, config(tiny_dir, task_dir, calibration_holdout=True, calibration_size=6))
    assert train == plain[:10]  # the same held-out set with or without the limit


def test_refine_from_the_command_line(capsys, tiny_dir, task_dir, tmp_path):  # noqa: F811
    import json

    from polar_vbll.cli import main

    fit(config(tiny_dir, task_dir, uq="map", steps=2, laplace_samples=8), tmp_path / "run", progress=False)
    argv = ["refine", str(tmp_path / "run"), "--out", str(tmp_path / "la"), "--laplace", "--la-subset", "last_layer"]
    assert main([*argv, "--quiet"]) == 0
    saved = json.loads((tmp_path / "la" / "config.json").read_text())
    assert saved["uq"] == {"method": "laplace", "subset": "last_layer"} and saved["post_hoc"] == ["laplace_lora"]
    assert "refined from" in capsys.readouterr().out
    assert main([*argv, "--quiet"]) == 2  # exists: one-line error, nothing lost
    assert "already holds a run" in capsys.readouterr().err
