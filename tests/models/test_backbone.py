import pytest
import torch

from polar_vbll.data import collate, encode_items, get_task, label_token_ids
from polar_vbll.data.loaders import MCItem
from polar_vbll.models import AnswerHead, load_backbone, mask_choices

ITEMS = [
    MCItem(str(i), q, ("a", "b", "c", "d"), 0)
    for i, q in enumerate(["Why is the sky blue?", "What?", "Which technology was developed most recently of all?"])
]


def _batch(backbone, side):
    encoded = encode_items(backbone.tokenizer, get_task("obqa"), ITEMS)
    return encoded, collate(encoded, backbone.tokenizer.pad_token_id, 4, padding_side=side)


@torch.no_grad()
@pytest.mark.parametrize("side", ["left", "right"])
def test_features_equal_unpadded_features_for_either_padding_side(tiny, side):
    encoded, batch = _batch(tiny, side)
    assert batch["attention_mask"].sum(1).unique().numel() >= 2  # the rows really are padded differently
    feats = tiny.features(batch["input_ids"], batch["attention_mask"])
    for row, ex in enumerate(encoded):
        ids = torch.tensor([ex.input_ids])
        alone = tiny.features(ids, torch.ones_like(ids))
        torch.testing.assert_close(feats[row], alone[0], atol=1e-5, rtol=1e-5)
        # and φ(x) is the full model's final hidden state at the last prompt token
        hidden = tiny.model(ids, output_hidden_states=True).hidden_states[-1]
        torch.testing.assert_close(alone[0], hidden[0, -1], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_answer_head_equals_full_lm_logits_at_label_tokens(tiny):
    task = get_task("obqa")
    ids = label_token_ids(tiny.tokenizer, task.label_words(), task.name)
    head = tiny.answer_head(ids)
    encoded, batch = _batch(tiny, "right")
    logits = head(tiny.features(batch["input_ids"], batch["attention_mask"]))
    for row, ex in enumerate(encoded):
        full = tiny.model(torch.tensor([ex.input_ids])).logits[0, -1, ids]
        torch.testing.assert_close(logits[row], full, atol=1e-5, rtol=1e-5)


def test_answer_head_is_an_untied_copy_and_masks_missing_choices(tiny):
    head = tiny.answer_head([5, 7])
    before = tiny.lm_head.weight[5].clone()
    with torch.no_grad():
        head.weight.add_(1.0)
    torch.testing.assert_close(tiny.lm_head.weight[5], before)
    logits = mask_choices(head(torch.randn(2, tiny.hidden_size)), torch.tensor([[True, False], [True, True]]))
    assert logits[0, 1] == float("-inf") and torch.isfinite(logits[1]).all()
    assert isinstance(head, AnswerHead) and head.num_classes == 2


def test_local_folder_loads_like_a_hub_model(tiny_dir):
    backbone = load_backbone(str(tiny_dir))
    assert backbone.name == str(tiny_dir) and backbone.describe()["parameters"] > 0
    assert not backbone.training


@torch.no_grad()
def test_left_padding_is_exact_for_absolute_position_models_too():
    """GPT-2 adds learned absolute position embeddings: left padding is only harmless with true position ids."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from polar_vbll.models import Backbone, tiny_tokenizer

    tokenizer = tiny_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=4, n_positions=128, bos_token_id=1, eos_token_id=2
    )
    backbone = Backbone(GPT2LMHeadModel(config).eval(), tokenizer, "tiny-gpt2")
    ids = torch.tensor([[0, 0, 5, 6, 7], [3, 4, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    torch.testing.assert_close(
        backbone.features(ids, mask)[0], backbone.features(ids[:1, 2:], mask[:1, 2:])[0], atol=1e-5, rtol=1e-5
    )
