"""Tiny random Llama models and a tiny byte-level BPE tokenizer, built in code (no download), for tests and docs."""

from __future__ import annotations

import torch

from ..errors import PolarVBLLError
from .backbone import Backbone

_CORPUS = [
    "Question: Which technology was developed most recently?\nA. cellular telephone\nB. television\nAnswer: A",
    "Select one of the choices that answers the following question: What is water? Choices: A. ice. B. gas. Answer: B",
    "Review: a charming and often affecting journey.\nSentiment: positive",
    "Review: unflinchingly bleak and desperate.\nSentiment: negative",
    "Passage: The sun is a star.\nQuestion: is the sun a star?\nAnswer: yes",
    "Passage: Cats are mammals.\nQuestion: is a cat a fish?\nAnswer: no",
    "Sarah was a much better surgeon than Maria so _ always got the easier cases. True False",
    " A B C D E A. B. C. D. E. yes no True False positive negative 0 1 2 3 4 5 6 7 8 9",
]


def tiny_tokenizer(add_bos: bool = True, vocab_size: int = 512):
    """A byte-level BPE tokenizer (any text encodes) in which `` A``..`` E``, `` yes``, `` no``, `` positive``,
    `` negative``, `` True``, `` False`` are single tokens. ``add_bos`` toggles a BOS token before every text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_CORPUS * 20, trainer)
    if add_bos:
        bos = tok.token_to_id("<s>")
        tok.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
        )
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def tiny_llama(
    vocab_size: int,
    hidden_size: int = 32,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 64,
    tie_word_embeddings: bool = True,
    seed: int = 0,
    architecture: str = "llama",
):
    """A randomly initialized decoder small enough for unit tests (fp32, eager CPU): ``LlamaForCausalLM``, or
    ``Qwen2ForCausalLM`` with ``architecture="qwen2"`` (biased q/k/v projections: a second architecture)."""
    import transformers

    classes = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}
    if architecture not in classes:
        raise PolarVBLLError(f"tiny_llama: architecture must be one of {sorted(classes)}, got {architecture!r}")
    config_class, model_class = (getattr(transformers, name) for name in classes[architecture])
    config = config_class(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=512,
        tie_word_embeddings=tie_word_embeddings,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = model_class(config)
    return model.eval()


def tiny_backbone(add_bos: bool = True, seed: int = 0, **config) -> Backbone:
    """A tiny random Llama (or ``architecture="qwen2"``) with the tiny tokenizer, wrapped as a :class:`Backbone`."""
    tokenizer = tiny_tokenizer(add_bos=add_bos)
    model = tiny_llama(len(tokenizer), seed=seed, **config)
    name = f"tiny-{config.get('architecture', 'llama')}"
    return Backbone(model, tokenizer, name, source="random init (tests)").eval()
