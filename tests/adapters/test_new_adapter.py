"""A new adapter method is one file and one registry line: this file defines one, and every uncertainty method whose
requirements its declared capabilities meet trains it, reloads it and reports; the others refuse it in one line."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from polar_vbll.adapters.base import ADAPTERS, AdapterLinear, AdapterMethod, LowRankConfig
from polar_vbll.adapters.capabilities import Capability, LinearMap
from polar_vbll.engine import FitConfig, evaluate_run, fit
from polar_vbll.errors import PolarVBLLError
from polar_vbll.uq import UQ_METHODS
from tests.engine.test_fit import config, task_dir  # noqa: F401  (task_dir is a fixture)


@dataclass
class OuterConfig(LowRankConfig):
    method = "test_outer"


class OuterLinear(AdapterLinear):
    """ΔW = s · up · down, with names no uncertainty method has heard of; declares linear maps, no Gaussian factor."""

    capabilities = frozenset({Capability.LINEAR_MAPS})

    def __init__(self, base_layer: nn.Linear, config: OuterConfig, **init):
        super().__init__(base_layer, config, **init)
        self.down = nn.Parameter(torch.empty(config.r, self.in_features).uniform_(-1, 1) / math.sqrt(self.in_features))
        self.up = nn.Parameter(torch.zeros(self.out_features, config.r))

    def delta(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(self.down.dtype) @ self.down.T @ self.up.T * self.scaling

    def delta_weight(self) -> torch.Tensor:
        return self.up @ self.down * self.scaling

    def linear_maps(self) -> list[LinearMap]:
        s, down, up = self.scaling, self.down, self.up
        return [
            LinearMap("down", down, lambda x, go: (x, s * go @ up)),
            LinearMap("up", up, lambda x, go: (x @ down.T, s * go)),
        ]


ADAPTERS.register("test_outer", AdapterMethod(OuterConfig, OuterLinear))  # the one line

TRAINS = ["vbll", "map", "mle", "temperature", "mc_dropout", "ensemble", "laplace"]
REFUSED = {"blob": "gaussian_factor", "scalabl": "gaussian_factor", "tfb": "gaussian_factor"}


def test_every_uncertainty_method_is_covered():
    assert sorted(TRAINS + list(REFUSED)) == sorted(UQ_METHODS.names())


@pytest.mark.parametrize("uq", TRAINS)
def test_a_method_defined_here_trains_with_every_method_it_meets(uq, tiny_dir, task_dir, tmp_path):  # noqa: F811
    cheap = {"ensemble": {"size": 2}, "mc_dropout": {"samples": 2}}.get(uq, {})
    options = dict(adapter="test_outer", uq={"method": uq, **cheap}, steps=3, calibration_size=6)
    result = fit(config(tiny_dir, task_dir, **options), tmp_path / "run", progress=False)
    assert result.report["method"]["adapter"] == "test_outer"
    assert evaluate_run(tmp_path / "run", progress=False)["metrics"] == result.report["metrics"]
    if uq == "laplace":  # the K-FAC factors of both declared maps of every adapted layer were fitted
        keys = [k for k in result.head.state_dict() if k.endswith("__eig_a")]
        assert sum(k.endswith("__down__eig_a") for k in keys) == sum(k.endswith("__up__eig_a") for k in keys) == 4
        assert result.report["posterior"]["prior_precision"] > 0


@pytest.mark.parametrize(("uq", "capability"), REFUSED.items())
def test_methods_it_does_not_meet_refuse_it_in_one_line(uq, capability):
    with pytest.raises(PolarVBLLError, match=rf"uq '{uq}' needs an adapter with {capability} .*'test_outer' does"):
        FitConfig(adapter="test_outer", uq=uq)


def test_a_method_that_alters_the_base_is_refused_by_ensembles():
    class AlteringLinear(OuterLinear):
        alters_base = True

    @dataclass
    class AlteringConfig(OuterConfig):
        method = "test_altering"

    ADAPTERS.register("test_altering", AdapterMethod(AlteringConfig, AlteringLinear))
    assert Capability.SHARED_BASE not in ADAPTERS.get("test_altering").capabilities
    with pytest.raises(PolarVBLLError, match=r"needs an adapter with shared_base .*'test_altering' does not"):
        FitConfig(adapter="test_altering", uq="ensemble")
    FitConfig(adapter="test_altering", uq="laplace")  # what it does declare still works
