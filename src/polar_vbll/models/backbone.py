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
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # features use the attention mask, not pad ids

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
