"""Compute precision: resolving ``auto``, bf16 autocast over the backbone only, bf16 base weights."""

import pytest
import torch
from torch import nn

from polar_vbll.adapters import LoraConfig, inject_adapters
from polar_vbll.data import collate, encode_items, get_task
from polar_vbll.data.loaders import MCItem
from polar_vbll.errors import PolarVBLLError
from polar_vbll.models import precision, tiny_backbone
from polar_vbll.models.precision import Precision, cpu_supports_bf16, resolve_precision

ITEMS = [MCItem(str(i), q, ("a", "b"), 0) for i, q in enumerate(["Why is the sky blue?", "What?", "Which one?"])]


def _batch(backbone):
    encoded = encode_items(backbone.tokenizer, get_task("obqa"), ITEMS)
    return collate(encoded, backbone.tokenizer.pad_token_id, 4)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [("fpu sse2 avx512f avx512_bf16 amx_tile", True), ("fpu amx_bf16", True), ("fpu sse2 avx2 avx512f", False)],
)
def test_cpu_bf16_support_is_read_from_the_cpu_flags(tmp_path, flags, expected):
    cpuinfo = tmp_path / f"cpuinfo-{expected}-{len(flags)}"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert cpu_supports_bf16(str(cpuinfo)) is expected
    assert cpu_supports_bf16(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("native", [True, False])
def test_auto_resolves_by_the_device_and_explicit_choices_stay(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_supports_bf16", lambda: native)
    assert resolve_precision("auto") is (Precision.BF16 if native else Precision.FP32)
    assert resolve_precision("fp32") is Precision.FP32
    assert resolve_precision("bf16") is Precision.BF16  # asked for: emulated where not native
    with pytest.raises(ValueError):
        resolve_precision("fp16")


@torch.no_grad()
def test_bf16_computes_the_decoder_in_bf16_and_hands_fp32_features_to_the_head():
    backbone = tiny_backbone()
    batch = _batch(backbone)
    reference = backbone.features(batch["input_ids"], batch["attention_mask"])
    seen = []
    hook = backbone.decoder.layers[0].self_attn.q_proj.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    assert backbone.set_precision("bf16") is Precision.BF16
    features = backbone.features(batch["input_ids"], batch["attention_mask"])
    hook.remove()
    assert seen == [torch.bfloat16]  # autocast reached the matmuls
    assert features.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in backbone.parameters())  # weights are not converted
    # bf16 keeps 8 bits of mantissa: features agree to a few per cent of their scale
    assert (features - reference).abs().max() <= 0.05 * reference.abs().max()
    assert not torch.equal(features, reference)
    assert backbone.describe()["precision"] == "bf16"
    backbone.set_precision("fp32")
    torch.testing.assert_close(backbone.features(batch["input_ids"], batch["attention_mask"]), reference)


def test_bf16_on_a_cpu_uses_eager_attention_and_fp32_restores_the_models_own():
    backbone = tiny_backbone()
    own = backbone.model.config._attn_implementation
    backbone.set_precision("bf16")
    assert backbone.model.config._attn_implementation == "eager"
    backbone.set_precision("fp32")
    assert backbone.model.config._attn_implementation == own


def test_bf16_base_stores_frozen_linear_weights_in_bf16_and_keeps_adapters_fp32():
    backbone = tiny_backbone()
    batch = _batch(backbone)
    inject_adapters(backbone.model, LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with pytest.raises(PolarVBLLError, match="base_dtype bf16: needs precision bf16"):
        backbone.set_base_dtype("bf16")
    backbone.set_precision("bf16")
    with torch.no_grad():
        expected = backbone.features(batch["input_ids"], batch["attention_mask"])
    backbone.set_base_dtype("bf16")
    linear = [m for m in backbone.decoder.modules() if isinstance(m, nn.Linear)]
    assert linear and all(m.weight.dtype == torch.bfloat16 for m in linear)
    trained = [p for p in backbone.parameters() if p.requires_grad]
    assert trained and all(p.dtype == torch.float32 for p in trained)
    assert backbone.decoder.embed_tokens.weight.dtype == torch.float32  # the residual stream stays fp32
    features = backbone.features(batch["input_ids"], batch["attention_mask"])
    # autocast casts fp32 weights to bf16 before each matmul: storing them in bf16 changes nothing
    torch.testing.assert_close(features, expected, atol=0, rtol=0)
    features.sum().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in trained)
