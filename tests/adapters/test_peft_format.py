"""PEFT export: PEFT's own loader puts the exported adapter on the original model with the same outputs."""

import json

import pytest
import torch
from peft import PeftModel

from polar_vbll.adapters import ADAPTERS, export_peft, inject_adapters, make_config, merge_adapters
from polar_vbll.adapters.capabilities import Capability
from polar_vbll.errors import PolarVBLLError
from polar_vbll.models import tiny_llama
from tests.adapters.test_base import IDS, perturbed
from tests.engine.test_fit import config, task_dir  # noqa: F401  (task_dir is a fixture)


@pytest.mark.parametrize(("method", "options"), [("lora", {}), ("polar", {}), ("polar", {"theta": "diagonal"}),
                                                 ("pissa", {})])  # fmt: skip
def test_peft_loads_the_export_onto_the_original_model_with_equal_outputs(method, options, tmp_path):
    model = perturbed(method, **options)
    with torch.no_grad():
        expected = model(IDS).logits
    folder = export_peft(model, tmp_path / "peft", base_model="tiny")
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == config["lora_alpha"] == (8 if method == "pissa" else 4)
    loaded = PeftModel.from_pretrained(tiny_llama(500), str(folder))  # the original weights, PEFT's code
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, expected, atol=1e-5, rtol=1e-5)
    assert (loaded(IDS).logits - tiny_llama(500)(IDS).logits).abs().max() > 1e-3  # the adapter does act


def test_adapters_that_are_not_a_plain_low_rank_update_are_refused_in_one_line(tmp_path):
    declared = {name for name in ADAPTERS.names() if Capability.LOW_RANK_DELTA in ADAPTERS.get(name).capabilities}
    assert declared == {"lora", "polar", "pissa", "corda"}
    model = tiny_llama(500)
    inject_adapters(model, make_config("dora", r=4))
    with pytest.raises(PolarVBLLError, match="^PEFT export of 'dora' needs an adapter with low_rank_delta"):
        export_peft(model, tmp_path / "dora")
    merged = perturbed("lora")
    merge_adapters(merged)
    with pytest.raises(PolarVBLLError, match="is merged into its base weight; unmerge it first"):
        export_peft(merged, tmp_path / "merged")
    assert not (tmp_path / "dora").exists() and not (tmp_path / "merged").exists()


def test_export_lora_peft_from_the_command_line_matches_the_run(tiny_dir, task_dir, tmp_path):  # noqa: F811
    from transformers import AutoModelForCausalLM

    from polar_vbll.cli import main
    from polar_vbll.engine import fit

    run = fit(config(tiny_dir, task_dir, adapter="polar", steps=2), tmp_path / "run", progress=False)
    assert main(["export-lora", str(run.out), str(tmp_path / "peft"), "--peft"]) == 0
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["base_model_name_or_path"] == str(
        tiny_dir
    )
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_dir), str(tmp_path / "peft"))
    ids = torch.randint(3, 60, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, run.backbone.model(ids).logits, atol=1e-5, rtol=1e-5)


def test_a_lora_saved_by_peft_starts_a_lora_fit_with_its_outputs(tiny_dir, task_dir, tmp_path):  # noqa: F811
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from polar_vbll.engine.build import build_components

    peft_config = PeftLoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_dir), peft_config)  # random A and B
    peft_model.save_pretrained(tmp_path / "peft")  # PEFT's own writer
    adapter = {"method": "lora", "r": 4, "alpha": 16.0, "target_modules": ["q_proj", "v_proj"]}
    run_config = config(tiny_dir, task_dir, adapter=adapter, adapter_init=str(tmp_path / "peft"))
    backbone, _, _ = build_components(run_config)
    ids = torch.randint(3, 60, (2, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(backbone.model(ids).logits, peft_model(ids).logits, atol=1e-5, rtol=1e-5)
    other = config(tiny_dir, task_dir, adapter={**adapter, "r": 2}, adapter_init=str(tmp_path / "peft"))
    with pytest.raises(PolarVBLLError, match="a PEFT LoRA of rank 4; start it with --adapter lora --r 4"):
        build_components(other)
