"""MC dropout: p = 0 is the deterministic model; p > 0 gives seeded, varying passes through the adapter."""

import torch

from polar_vbll.adapters import inject_adapters, make_config
from polar_vbll.data import collate, encode_items, get_task, label_token_ids
from polar_vbll.models import tiny_backbone
from polar_vbll.uq import MCDropoutHead, PointHead


def setup(p: float):
    backbone = tiny_backbone()
    inject_adapters(backbone.model, make_config("lora", r=4, dropout=p))
    with torch.no_grad():
        for name, param in backbone.model.named_parameters():
            if "lora_B" in name:
                param.normal_(std=0.5)
    task = get_task("sst2")
    ids = label_token_ids(backbone.tokenizer, task.label_words(), task.name)
    init = backbone.lm_head.weight.detach()[ids].float()
    batch = collate(encode_items(backbone.tokenizer, task, task.load("validation")[:6], 64), 0, 2)
    backbone.eval()
    return backbone, init, batch


def test_zero_dropout_equals_the_deterministic_model():
    backbone, init, batch = setup(0.0)
    mc, point = MCDropoutHead(init, samples=4), PointHead(init)
    mc.attach(backbone)
    probs, logits = mc.predict_batch(backbone, batch, 8, torch.Generator().manual_seed(0))
    expected_probs, expected_logits = point.predict_batch(backbone, batch, 8)
    assert logits.shape == (6, 8, 2)  # 4 passes × 2 head samples
    torch.testing.assert_close(logits, expected_logits)
    torch.testing.assert_close(probs, expected_probs)


def test_dropout_passes_differ_are_seeded_and_leave_eval_mode():
    backbone, init, batch = setup(0.3)
    head = MCDropoutHead(init, samples=5)
    head.attach(backbone)
    _, first = head.predict_batch(backbone, batch, 5, torch.Generator().manual_seed(1))
    _, again = head.predict_batch(backbone, batch, 5, torch.Generator().manual_seed(1))
    torch.testing.assert_close(first, again)
    assert (first.std(1) > 1e-4).all()  # every example's passes differ
    assert not any(m.training for m in backbone.model.modules())
    _, deterministic = PointHead(init).predict_batch(backbone, batch, 1)
    torch.testing.assert_close(deterministic, PointHead(init).predict_batch(backbone, batch, 1)[1])
