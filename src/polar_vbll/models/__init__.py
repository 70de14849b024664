"""Backbones (any HF causal LM, the embedded SmolLM2-135M), their cache, answer heads and tiny test models."""

from .backbone import AnswerHead, Backbone, load_backbone, load_tokenizer, mask_choices
from .sources import DEFAULT_MODEL, EMBEDDED_MODELS, prepare_embedded, prepare_gguf, resolve_model
from .tiny import tiny_backbone, tiny_llama, tiny_tokenizer

__all__ = [
    "AnswerHead",
    "Backbone",
    "DEFAULT_MODEL",
    "EMBEDDED_MODELS",
    "load_backbone",
    "load_tokenizer",
    "mask_choices",
    "prepare_embedded",
    "prepare_gguf",
    "resolve_model",
    "tiny_backbone",
    "tiny_llama",
    "tiny_tokenizer",
]
