"""Backbones: load any Hugging Face causal LM (or the embedded SmolLM2-135M), extract features, build answer heads.

The feature of a prompt, φ(x) ∈ R^d, is the final hidden state (after the last norm) of its last non-pad token;
the class logits of a multiple-choice task are the LM-head rows of the C label tokens applied to φ(x), which is
exactly ``lm_logits[:, last, label_ids]`` of the full model, without the full-vocabulary projection.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ..errors import PolarVBLLError, first_line
from .precision import DTYPES, Precision, resolve_precision
from .sources import DEFAULT_MODEL, EMBEDDED_MODELS, prepare_embedded, prepare_gguf, resolve_model


class Backbone(nn.Module):
    """A causal LM with its tokenizer, seen as a feature extractor φ(x) plus the LM head it came with.

    ``source`` names where the weights came from and ``note`` carries caveats (e.g. dequantized 4-bit weights)
    that reports print beside accuracy figures.
    """

    # Any: a Hugging Face PreTrainedModel, whose config and methods (get_decoder, ...) are the architecture's
    model: Any

    def __init__(self, model: nn.Module, tokenizer, name: str, source: str = "", note: str = ""):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name, self.source, self.note = name, source, note
        #: the compute precision of forward and backward passes (:mod:`polar_vbll.models.precision`)
        self.precision = Precision.FP32
        #: the attention implementation the model came with (bf16 on a CPU switches to eager, see set_precision)
        self.default_attention = getattr(model.config, "_attn_implementation", None)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # features use the attention mask, not pad ids

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def set_precision(self, precision: str) -> Precision:
        """Compute in ``precision`` from now on (``auto`` resolved for this backbone's device); returns it.

        bf16 on a CPU also switches attention to the eager implementation: PyTorch's CPU flash-attention backward
        ran 7x slower in bf16 than in fp32 (benchmarks/precision.py), while eager attention's bf16 matmuls are fast.
        """
        self.precision = resolve_precision(precision, self.device)
        eager = self.precision is Precision.BF16 and self.device.type == "cpu"
        attention = "eager" if eager else self.default_attention
        if attention is not None and getattr(self.model.config, "_attn_implementation", None) != attention:
            self.model.set_attn_implementation(attention)
        return self.precision

    @property
    def base_dtype(self) -> str:
        """The storage dtype of the frozen base Linear weights of the decoder (``fp32``, ``bf16``, ...)."""
        names = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
        for module in self.decoder.modules():
            if isinstance(module, nn.Linear) and not module.weight.requires_grad:
                return names.get(module.weight.dtype, str(module.weight.dtype).removeprefix("torch."))
        return names.get(next(self.model.parameters()).dtype, "fp32")

    @torch.no_grad()
    def set_base_dtype(self, dtype: str) -> None:
        """Store the frozen weights of the decoder's ``nn.Linear`` modules in ``dtype`` (``fp32`` or ``bf16``).

        Trained parameters (adapters, LISA's layers) keep their dtype; bf16 storage needs bf16 compute, since an
        fp32 matmul refuses bf16 weights.
        """
        target = DTYPES[Precision(dtype)]
        if target != torch.float32 and self.precision is not Precision(dtype):
            raise PolarVBLLError(
                f"base_dtype {dtype}: needs precision {dtype}, the backbone computes in {self.precision}"
            )
        for module in self.decoder.modules():
            if isinstance(module, nn.Linear) and not module.weight.requires_grad:
                module.weight.data = module.weight.data.to(target)
                if module.bias is not None and not module.bias.requires_grad:
                    module.bias.data = module.bias.data.to(target)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute each decoder layer's activations in the backward pass (transformers' non-reentrant
        checkpointing, active in training mode): the same gradients for less memory."""
        kwargs = {"use_reentrant": False}
        if hasattr(self.model, "activation_checkpointing_enable"):
            self.model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:  # transformers before the rename
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def decoder(self) -> nn.Module:
        """The transformer without its LM head (``model.model`` for Llama)."""
        return self.model.get_decoder()

    @property
    def lm_head(self) -> nn.Linear:
        return self.model.get_output_embeddings()

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Final hidden states (B, T, d). Positions count real tokens only, so left padding changes nothing."""
        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        bf16 = self.precision is Precision.BF16
        with torch.autocast(input_ids.device.type, dtype=torch.bfloat16, enabled=bf16):
            out = self.decoder(
                input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
            )
        return out.last_hidden_state

    def features(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """φ(x): hidden state of the last non-pad token of each row (B, d) in fp32 whatever the model's dtype, for
        left or right padding."""
        hidden = self.hidden_states(input_ids, attention_mask)
        positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.bool() * positions).argmax(-1)  # index of the last 1 in each row
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()

    def answer_head(self, label_ids: Sequence[int]) -> AnswerHead:
        """An untied copy of the LM-head rows of ``label_ids``: logits equal the full model's at those tokens."""
        weight = self.lm_head.weight.detach()[list(label_ids)].clone()
        bias = getattr(self.lm_head, "bias", None)
        return AnswerHead(weight, None if bias is None else bias.detach()[list(label_ids)].clone())

    def describe(self) -> dict:
        n_params = sum(p.numel() for p in self.model.parameters())
        return {
            "name": self.name,
            "source": self.source,
            "parameters": n_params,
            "dtype": str(next(self.model.parameters()).dtype).removeprefix("torch."),
            "precision": str(self.precision),
            "base_dtype": self.base_dtype,
            "note": self.note,
        }


class AnswerHead(nn.Linear):
    """The trimmed LM head: an ``nn.Linear`` from features (B, d) to class logits (B, C).

    Being a plain Linear, it can itself carry an adapter (``target_modules=["head"]`` on a module holding it).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__(
            weight.shape[1], weight.shape[0], bias=bias is not None, device=weight.device, dtype=weight.dtype
        )
        with torch.no_grad():
            self.weight.copy_(weight)
            if bias is not None:
                self.bias.copy_(bias)

    @property
    def num_classes(self) -> int:
        return self.out_features


def mask_choices(logits: torch.Tensor, choice_mask: torch.Tensor | None) -> torch.Tensor:
    """Set the logits of classes that are not choices of an example (``choice_mask`` False) to -inf."""
    return logits if choice_mask is None else logits.masked_fill(~choice_mask.bool(), float("-inf"))


def load_tokenizer(name_or_path: str = DEFAULT_MODEL, *, trust_remote_code: bool = False):
    """The tokenizer of a model (embedded name, GGUF file, Hugging Face id or folder) without loading its weights."""
    from transformers import AutoTokenizer

    kind, path = resolve_model(name_or_path)
    if kind == "embedded":
        return AutoTokenizer.from_pretrained(prepare_embedded(name_or_path), local_files_only=True)
    if kind == "gguf":
        assert path is not None  # resolve_model gives a gguf its path
        return AutoTokenizer.from_pretrained(prepare_gguf(path)[0], local_files_only=True)
    return _from_hub_or_folder(AutoTokenizer, name_or_path, trust_remote_code=trust_remote_code)


def _from_hub_or_folder(auto_class, name_or_path: str, **options):
    """``auto_class.from_pretrained`` with a one-line error when the id is neither local nor reachable."""
    try:
        return auto_class.from_pretrained(name_or_path, **options)
    except OSError as exc:
        raise PolarVBLLError(
            f"--model {name_or_path}: not an embedded model ({', '.join(EMBEDDED_MODELS.names())}), a local folder, "
            f"a .gguf file or a Hugging Face model reachable from here ({first_line(exc, 'not found')})"
        ) from None


def load_backbone(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    rebuild_cache: bool = False,
) -> Backbone:
    """Load a causal LM by embedded name (``polar-vbll models list``), GGUF file, Hugging Face id or local folder.

    A GGUF file is dequantized to fp32 once and cached by its content hash. ``trust_remote_code`` stays off unless
    asked for: it runs code that ships with the model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kind, path = resolve_model(name_or_path)
    if kind in ("embedded", "gguf"):
        if kind == "embedded":
            spec = EMBEDDED_MODELS.get(name_or_path)
            folder, note = prepare_embedded(name_or_path, rebuild_cache), spec.note
            name, source = spec.name, f"{spec.package}:{spec.filename}"
        else:
            assert path is not None  # resolve_model gives a gguf its path
            (folder, note), name, source = prepare_gguf(path, rebuild_cache), path.name, str(path)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        backbone = Backbone(model, tokenizer, name, source=source, note=note)
    else:
        options = {"trust_remote_code": trust_remote_code}
        model = _from_hub_or_folder(AutoModelForCausalLM, name_or_path, dtype=dtype, **options)
        tokenizer = _from_hub_or_folder(AutoTokenizer, name_or_path, **options)
        backbone = Backbone(model, tokenizer, str(name_or_path), source=str(name_or_path))
    backbone.eval()
    return backbone
