"""Deep ensembles of adapters on one shared base: identical seeds collapse to one member; save/load keeps M."""

import pytest
import torch

from polar_vbll.adapters import (
    adapter_layers,
    adapter_parameters,
    inject_adapters,
    load_adapter,
    make_config,
    merge_adapters,
    save_adapter,
)
from polar_vbll.data import collate, encode_items, get_task, label_token_ids
from polar_vbll.errors import PolarVBLLError
from polar_vbll.models import tiny_backbone, tiny_llama
from polar_vbll.uq import EnsembleHead


def trained(member_seeds, steps=3):
    backbone = tiny_backbone()
    inject_adapters(backbone.model, make_config("lora", r=4), members=len(member_seeds), member_seeds=member_seeds)
    task = get_task("sst2")
    ids = label_token_ids(backbone.tokenizer, task.label_words(), task.name)
    head = EnsembleHead(backbone.lm_head.weight.detach()[ids].float(), members=len(member_seeds))
    head.attach(backbone)
    batch = collate(encode_items(backbone.tokenizer, task, task.load("train")[:8], 64), 0, 2)
    optimizer = torch.optim.Adam(adapter_parameters(backbone.model) + list(head.parameters()), lr=1e-2)
    for _ in range(steps):
        loss = head.training_loss(backbone, batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    backbone.eval()
    return backbone, head, batch


def test_identical_seeds_collapse_to_one_member():
    backbone, head, batch = trained([5, 5, 5])
    probs, logits = head.predict_batch(backbone, batch, 3)
    assert logits.shape == (8, 3, 2)
    torch.testing.assert_close(logits, logits[:, :1].expand_as(logits), atol=0, rtol=0)
    single, single_head, _ = trained([5])
    single_probs, single_logits = single_head.predict_batch(single, batch, 1)
    torch.testing.assert_close(probs, single_probs, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(logits[:, 0], single_logits[:, 0], atol=1e-5, rtol=1e-5)


def test_members_differ_share_one_base_and_round_trip(tmp_path):
    backbone, head, batch = trained([0, 1, 2])
    _, logits = head.predict_batch(backbone, batch, 3)
    assert (logits.std(1) > 1e-4).all()
    layers = adapter_layers(backbone.model)
    bases = {id(layer.base_layer.weight) for name, layer in layers.items() if ".q_proj." in name + "."}
    assert len(layers) == 3 * 4 and len(bases) == 2  # 3 members × (q, v) × 2 blocks; one base per target
    save_adapter(backbone.model, tmp_path / "ens")
    fresh = tiny_backbone()
    load_adapter(fresh.model, tmp_path / "ens")
    head.attach(fresh)
    fresh.eval()
    torch.testing.assert_close(head.predict_batch(fresh, batch, 3)[1], logits, atol=0, rtol=0)
    with pytest.raises(PolarVBLLError, match="cannot be merged"):
        merge_adapters(fresh.model)


def test_ensembles_need_adapters_that_keep_the_base():
    with pytest.raises(PolarVBLLError, match="'pissa' does not"):
        inject_adapters(tiny_llama(500), make_config("pissa", r=2), members=2)
    with pytest.raises(PolarVBLLError, match="'lisa' does not"):
        inject_adapters(tiny_llama(500), make_config("lisa", layers=1), members=2)
