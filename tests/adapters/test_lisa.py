"""LISA: seeded layer draws, frozen layers never change, optimizer state only for active parameters."""

import pytest
import torch

from polar_vbll.adapters import (
    adapter_parameters,
    adapter_state_dict,
    inject_adapters,
    load_adapter,
    make_config,
    model_tuner,
    save_adapter,
)
from polar_vbll.errors import PolarVBLLError
from polar_vbll.models import tiny_llama

IDS = torch.randint(3, 400, (2, 9), generator=torch.Generator().manual_seed(0))


def train(model, steps):
    tuner = model_tuner(model)
    optimizer = torch.optim.AdamW(adapter_parameters(model), lr=1e-2, weight_decay=0.1)
    history = []
    for step in range(steps):
        tuner.on_step(step, optimizer)
        before = [[p.detach().clone() for p in layer.parameters()] for layer in tuner.layers]
        optimizer.zero_grad(set_to_none=True)
        model(IDS).logits.pow(2).mean().backward()
        optimizer.step()
        changed = [
            i
            for i, layer in enumerate(tuner.layers)
            if any(not torch.equal(p, b) for p, b in zip(layer.parameters(), before[i], strict=True))
        ]
        stateful = {id(p) for p in optimizer.state}
        with_state = [i for i, layer in enumerate(tuner.layers) if any(id(p) in stateful for p in layer.parameters())]
        history.append((list(tuner.active), changed, with_state))
    return history


def test_active_layers_follow_the_seeded_draw_and_only_they_change():
    model = tiny_llama(500, num_hidden_layers=6)
    embeddings = model.get_input_embeddings().weight.detach().clone()
    inject_adapters(model, make_config("lisa", layers=2, interval=3, seed=4))
    history = train(model, 12)
    tuner = model_tuner(model)
    draws = [tuner.draw(step) for step in range(12)]
    assert len({tuple(d) for d in draws}) > 1  # the active set does change
    for step, (active, changed, with_state) in enumerate(history):
        assert active == draws[step] == draws[step - step % 3]
        assert changed == active  # frozen layers never change, active ones do
        assert with_state == active  # optimizer state only for active layers
    assert not torch.equal(model.get_input_embeddings().weight, embeddings)  # always trained
    assert tuner.touched == {i for d in draws for i in d}


def test_save_load_round_trip_and_resume_replays_the_draws(tmp_path):
    model = tiny_llama(500, num_hidden_layers=4)
    inject_adapters(model, make_config("lisa", layers=1, interval=2))
    train(model, 5)
    with torch.no_grad():
        expected = model(IDS).logits
    saved = adapter_state_dict(model)
    untouched = set(range(4)) - model_tuner(model).touched
    assert not any(k.startswith(f"model.layers.{i}.") for k in saved for i in untouched)
    save_adapter(model, tmp_path / "lisa")
    fresh = tiny_llama(500, num_hidden_layers=4)
    load_adapter(fresh, tmp_path / "lisa")
    with torch.no_grad():
        assert torch.equal(fresh(IDS).logits, expected)
    resumed = tiny_llama(500, num_hidden_layers=4)
    inject_adapters(resumed, make_config("lisa", layers=1, interval=2))
    model_tuner(resumed).on_step(5, torch.optim.AdamW(adapter_parameters(resumed)))
    assert model_tuner(resumed).touched == model_tuner(model).touched | set(model_tuner(model).draw(5))


def test_bad_lisa_config():
    with pytest.raises(PolarVBLLError, match="LisaConfig.layers=3 exceeds the 2 decoder layers of LlamaForCausalLM"):
        inject_adapters(tiny_llama(500), make_config("lisa", layers=3))
    with pytest.raises(PolarVBLLError, match="LisaConfig.interval must be a positive integer"):
        make_config("lisa", interval=0)
