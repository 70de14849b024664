"""Shared fixtures: tiny random backbones built in code, and the real embedded model for tests marked slow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from polar_vbll.models import load_backbone, tiny_backbone


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(params=[True, False], ids=["bos", "no-bos"])
def tiny(request):
    """A tiny random Llama backbone, with and without a BOS token."""
    return tiny_backbone(add_bos=request.param)


@pytest.fixture
def tiny_dir(tmp_path) -> Path:
    """A tiny model saved as a local Hugging Face folder (model + tokenizer), loadable by path."""
    backbone = tiny_backbone()
    backbone.model.save_pretrained(tmp_path / "tiny-model")
    backbone.tokenizer.save_pretrained(tmp_path / "tiny-model")
    return tmp_path / "tiny-model"


def write_jsonl(path: Path, rows: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def real_backbone():
    """SmolLM2-135M from the user cache (built on first use, ~30 s)."""
    return load_backbone("smollm2-135m")
