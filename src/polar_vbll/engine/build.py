"""Components of a run from its config, through the registries: backbone with the adapter, task, head, data."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch

from ..adapters import ADAPTERS, inject_adapters, load_adapter_state
from ..adapters.base import ADAPTER_WEIGHTS_FILE, AdapterConfig, TunerConfig
from ..adapters.files import load_adapter_config
from ..adapters.peft_format import is_peft_folder, load_peft_lora
from ..config import FitConfig
from ..data import TaskSpec, get_task, label_token_ids
from ..data.episodes import sample_episode
from ..errors import PolarVBLLError
from ..models import Backbone, load_backbone
from ..stored import load_tensors
from ..uq import UQ_METHODS, UQHead
from .prepare import TrainingInputs


def build_components(
    config: FitConfig, backbone: Backbone | None = None, n_train: int | None = None, restore: bool = False
):
    """Backbone with the adapter injected, the task, its label ids and the head, as ``config`` says; the backbone
    computes in ``config.precision`` (``backbone.precision`` holds it resolved).

    ``restore=True``: the adapter will be loaded from a run, so data-dependent initialization (CorDA's covariances,
    PiSSA's SVD, S2FT's permutation) is skipped.
    """
    torch.manual_seed(config.seed)
    backbone = backbone or load_backbone(config.model)
    backbone.set_precision(config.precision)
    # a new fit has refused an ambiguous task name already (_check_inputs); a saved one meant the bundled task
    task = get_task(config.single_task, config.template, registered_first=True)
    head = build_head(config, backbone, task, n_train)
    method = UQ_METHODS.get(config.uq.method)
    adapter = config.adapter
    layer = ADAPTERS.get(adapter.method).layer
    start_from = None if restore else config.adapter_init
    data = {}
    if layer is not None and layer.needs_data and not restore and start_from is None:
        assert isinstance(adapter, AdapterConfig)  # a layer method's config
        data = layer.prepare(backbone.model, adapter, TrainingInputs(backbone, config))
    assert isinstance(adapter, TunerConfig)  # FitConfig resolved it through ADAPTERS
    members = method.members(config.uq)
    inject_adapters(backbone.model, adapter, restore=restore or start_from is not None, members=members, **data)
    if start_from is not None:
        initial_adapter(backbone, adapter, Path(start_from))
    stored_as = base_dtype(config, backbone)
    if stored_as is not None and not restore:  # a restored adapter may rewrite the base: load_run converts after it
        backbone.set_base_dtype(stored_as)
    head.attach(backbone)
    return backbone, task, head


def initial_adapter(backbone: Backbone, adapter: TunerConfig, folder: Path) -> None:
    """Load the adapter folder ``folder`` (``FitConfig.adapter_init``) into the injected ``adapter``, after checking
    that it was saved with the same options (its dropout aside: a training-time choice); a PEFT LoRA folder starts
    a LoRA of its rank (:func:`~polar_vbll.adapters.peft_format.load_peft_lora`)."""
    if is_peft_folder(folder):
        load_peft_lora(backbone.model, folder)
        return
    saved = load_adapter_config(folder)
    options = {k: v for k, v in saved.to_dict().items() if k != "dropout"}
    if options != {k: v for k, v in adapter.to_dict().items() if k != "dropout"}:
        raise PolarVBLLError(
            f"FitConfig.adapter_init: {folder} holds the adapter {options}, not the run's; give the same --adapter "
            "and options"
        )
    path = folder / ADAPTER_WEIGHTS_FILE
    load_adapter_state(backbone.model, load_tensors(path, "adapter weights"), str(path))


def build_head(config: FitConfig, backbone: Backbone, task: TaskSpec, n_train: int | None = None) -> UQHead:
    """The head of ``config``'s uncertainty method for ``task``, its rows started at the LM head's rows of the task's
    label tokens, its prior scaled to ``n_train`` training examples (default: the task's, as ``config`` splits
    them); not yet attached to the backbone."""
    label_ids = label_token_ids(backbone.tokenizer, task.label_words(), task.name)
    init_weight = backbone.lm_head.weight.detach()[label_ids].clone().float()
    if n_train is None:
        n_train = len(training_items(task, config)[0])
    return UQ_METHODS.get(config.uq.method).build(init_weight, n_train, config.uq, config)


def base_dtype(config: FitConfig, backbone: Backbone) -> Literal["fp32", "bf16"] | None:
    """The storage dtype of the frozen base weights, or None to keep them as loaded: the config's, else bf16 under
    bf16 compute for adapters that leave the base frozen (autocast casts the weights to bf16 on every pass anyway:
    storing them so changes no number and saves the casts); model tuners (LISA) train base layers, so not them."""
    if config.base_dtype is not None:
        return config.base_dtype
    frozen_base = ADAPTERS.get(config.adapter.method).layer is not None
    return "bf16" if frozen_base and backbone.precision == "bf16" else None


def training_items(task: TaskSpec, config: FitConfig) -> tuple[list, list]:
    """(examples to train on, examples held out for the temperature).

    With ``calibration_holdout`` a seeded random ``calibration_size`` of the training split is held out first and
    never trained on; ``train_shots`` then keeps K seeded examples of each class of the rest, and ``train_limit``
    the first N.
    """
    items = task.load("train")
    held_out: list = []
    if config.calibration_holdout:
        if config.calibration_size >= len(items):
            raise PolarVBLLError(
                f"FitConfig.calibration_size={config.calibration_size} leaves no training examples of {len(items)}"
            )
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(config.seed + 7919)).tolist()
        held = set(order[: config.calibration_size])
        held_out = [items[i] for i in sorted(held)]
        items = [x for i, x in enumerate(items) if i not in held]
    if config.train_shots is not None:  # few-shot: an episode's support, seeded as the run
        items = sample_episode(
            items, config.train_shots, 0, torch.Generator().manual_seed(config.seed), task.name
        ).support
    return items[: config.train_limit or None], held_out
