"""Temperature scaling: recovers a known temperature, works on logit samples and masked choices."""

import pytest
import torch

from polar_vbll.errors import PolarVBLLError
from polar_vbll.uq import fit_temperature


def synthetic(temperature: float, n: int = 20000, classes: int = 4, seed: int = 0):
    """Labels drawn from softmax(z); the returned logits are z × temperature (over-confident for T > 1)."""
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=gen) * 2
    labels = torch.multinomial(torch.softmax(z, -1), 1, generator=gen)[:, 0]
    return z * temperature, labels


@pytest.mark.parametrize("temperature", [0.5, 1.0, 2.5])
def test_recovers_a_known_temperature(temperature):
    logits, labels = synthetic(temperature)
    assert fit_temperature(logits, labels) == pytest.approx(temperature, rel=0.05)


def test_identical_samples_equal_point_logits_and_masks_stay_masked():
    logits, labels = synthetic(2.0, n=4000)
    point = fit_temperature(logits, labels)
    assert fit_temperature(logits[:, None].expand(-1, 5, -1), labels) == pytest.approx(point, rel=1e-6)
    masked = torch.cat([logits, torch.full((len(labels), 1), float("-inf"))], 1)
    assert fit_temperature(masked, labels) == pytest.approx(point, rel=1e-6)


def test_bad_inputs():
    with pytest.raises(PolarVBLLError, match="3 logit rows for 2 labels"):
        fit_temperature(torch.zeros(3, 2), torch.zeros(2))
