import pytest
import torch

from proxynorm.analysis import collapse_bound, linearity_ratio
from proxynorm.analysis.random_nets import RandomNetConfig, linearity_ratios, power_proportions


def test_collapse_bound_formula():
    b = collapse_bound(0.1, 0.2, 0.2, 5)
    factor = 1.04 / 1.08
    torch.testing.assert_close(
        b, torch.tensor([0.9 * factor**k for k in range(5)], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="rho1"):
        collapse_bound(1.5, 0.2, 0.2, 5)
    with pytest.raises(ValueError, match="depth"):
        collapse_bound(0.1, 0.2, 0.2, 0)


def _theorem1(act, width):
    torch.manual_seed(0)
    x = torch.randn(32, 3, 8, 8) + torch.randn(32, 3, 1, 1)
    config = RandomNetConfig(depth=20, width=width, act=act, first_stride=1)
    props = power_proportions("ln", x, config, realizations=5)
    measured = (1 - props[:, :, 0]).mean(0)
    bound = collapse_bound(float(props[:, 0, 0].mean()), 0.2, 0.2, 20)
    return measured, bound


def test_theorem1_relu_below_bound():
    """ReLU collapses faster than the bound. Tolerance 1%: layer 1 is equal by construction, and
    the bound holds 'with high probability' at finite width (measured ratio < 0.45 from layer 4)."""
    measured, bound = _theorem1("relu", 128)
    assert (measured <= bound * 1.01).all()
    assert (measured[3:] < 0.6 * bound[3:]).all()


def test_theorem1_identity_near_equality():
    """Near-equality for φ = identity, at width 256 (METHOD.md §4: finite width raises 1 − ρ)."""
    measured, bound = _theorem1("identity", 256)
    assert ((measured / bound - 1).abs() < 0.10).all()


def test_linearity_ratio_reference_values():
    y = torch.randn(64, 3, 32, 32, dtype=torch.float64)
    z = torch.relu(y)
    assert linearity_ratio(y, z).item() == pytest.approx(0.2665, abs=0.01)
    assert linearity_ratio(y, 2 * y + 1).item() == pytest.approx(0.0, abs=1e-12)
    dead = torch.relu(y - 100)  # dead ReLU: constant output -> linear, not NaN
    ratios = linearity_ratio(y, dead, per_channel=True)
    assert torch.equal(ratios, torch.zeros(3, dtype=torch.float64))
    const_y = torch.ones_like(y)
    assert linearity_ratio(const_y, torch.relu(const_y)).item() == 0.0
    mixed = torch.cat([z[:, :1], dead[:, 1:]], dim=1)
    assert linearity_ratio(y, mixed).item() == pytest.approx(0.2665 / 3, abs=0.01)
    with pytest.raises(ValueError, match="same shape"):
        linearity_ratio(y, z[:, :2])


def _nl(norm):
    torch.manual_seed(0)
    x = torch.randn(16, 3, 16, 16)
    return linearity_ratios(norm, x, RandomNetConfig(depth=50, width=64, first_stride=1), 2).mean(0)


def test_linearity_falls_with_depth_for_ln():
    nl = _nl("ln")
    assert torch.isfinite(nl).all()
    assert nl[-5:].mean() < 0.2 and nl[-5:].mean() < 0.65 * nl[:10].max()


@pytest.mark.parametrize("norm", ["ln+pn", "bn"])
def test_linearity_stays_for_pn_and_bn(norm):
    assert (_nl(norm) > 0.15).all()
