import pytest
import torch

from polar_vbll.data import collate, encode_items, get_task, label_token_ids
from polar_vbll.data.encoding import EncodedExample, iter_batches, special_token_affixes
from polar_vbll.data.loaders import MCItem
from polar_vbll.errors import LabelTokenError
from polar_vbll.models import tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer(add_bos=True)


def test_label_ids_are_single_unique_tokens(tokenizer):
    ids = label_token_ids(tokenizer, [" A", " B", " C"], "t")
    assert len(set(ids)) == 3 and all(tokenizer.decode([i]) == w for i, w in zip(ids, [" A", " B", " C"]))


def test_label_errors_name_task_and_labels(tokenizer):
    with pytest.raises(LabelTokenError, match=r"task 'arc_e': labels ' A' and ' A' map to the same token"):
        label_token_ids(tokenizer, [" A", " A"], "arc_e")
    with pytest.raises(LabelTokenError, match=r"task 'x': label ' zebrafish' is \d+ tokens"):
        label_token_ids(tokenizer, [" zebrafish", " A"], "x")


def test_truncation_drops_the_start_and_keeps_bos(tokenizer):
    task = get_task("boolq")
    item = MCItem("1", "is it long", ("no", "yes"), 1, context="word " * 200)
    (full,) = encode_items(tokenizer, task, [item], max_length=10_000)
    (cut,) = encode_items(tokenizer, task, [item], max_length=32)
    prefix, _ = special_token_affixes(tokenizer)
    assert prefix == [tokenizer.bos_token_id]
    assert len(cut.input_ids) == 32 and cut.truncated and not full.truncated
    assert cut.input_ids[0] == tokenizer.bos_token_id and cut.input_ids[1:] == full.input_ids[-31:]
    assert tokenizer.decode(cut.input_ids).endswith("Answer:")


@pytest.mark.parametrize("side", ["left", "right"])
def test_collate_pads_to_the_batch_and_masks_missing_choices(side):
    examples = [EncodedExample([5, 6, 7], 0, 3, False), EncodedExample([8], 1, 2, False)]
    batch = collate(examples, pad_token_id=0, num_classes=4, padding_side=side)
    assert batch["input_ids"].shape == (2, 3)
    expected_mask = [[1, 1, 1], [0, 0, 1]] if side == "left" else [[1, 1, 1], [1, 0, 0]]
    assert batch["attention_mask"].tolist() == expected_mask
    assert batch["choice_mask"].tolist() == [[True, True, True, False], [True, True, False, False]]
    assert batch["labels"].tolist() == [0, 1]
    assert (batch["input_ids"][batch["attention_mask"] == 0] == 0).all()


def test_iter_batches_covers_every_example_once():
    examples = [EncodedExample([1] * n, 0, 2, False) for n in (5, 1, 3, 2, 4)]
    seen = []
    for idx, batch in iter_batches(examples, 2, 0, 2):
        seen += idx
        assert batch["input_ids"].shape[1] == max(len(examples[i].input_ids) for i in idx)
    assert sorted(seen) == list(range(5))
    with pytest.raises(ValueError, match="padding_side"):
        collate(examples, 0, 2, padding_side="middle")
    assert torch.is_tensor(batch["labels"])
