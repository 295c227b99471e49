import pytest
import torch
from torch import nn

from proxynorm.analysis import (
    TERM_NAMES,
    power_decomposition,
    record_layer_io,
    record_preactivations,
)
from proxynorm.analysis.random_nets import RandomNetConfig, power_proportions
from proxynorm.models import create_model


def test_terms_sum_to_power_on_arbitrary_data():
    y = torch.randn(7, 5, 3, 4, dtype=torch.float64) * torch.rand(7, 5, 1, 1) * 3 + torch.randn(
        7, 5, 1, 1
    )
    d = power_decomposition(y)
    torch.testing.assert_close(d.terms.sum(0), (y**2).mean(dim=(0, 2, 3)), rtol=0, atol=1e-10)
    assert d.proportions.sum().item() == pytest.approx(1.0, abs=1e-12)
    # Each term by its definition, computed independently.
    inst_mean = y.mean(dim=(2, 3))
    inst_std = y.std(dim=(2, 3), correction=0)
    torch.testing.assert_close(d.terms[0], y.mean(dim=(0, 2, 3)) ** 2)
    torch.testing.assert_close(d.terms[1], inst_mean.var(0, correction=0))
    torch.testing.assert_close(d.terms[2], inst_std.mean(0) ** 2)
    torch.testing.assert_close(d.terms[3], inst_std.var(0, correction=0))
    out = d.to_dict()
    assert list(out["proportions"]) == list(TERM_NAMES) and out["channels"] == 5


def test_float32_input_accumulates_in_float64():
    y = torch.randn(16, 4, 8, 8) + 100.0  # large mean: float32 accumulation would drift
    d = power_decomposition(y)
    assert d.terms.dtype == torch.float64
    torch.testing.assert_close(
        d.terms.sum(0), (y.double() ** 2).mean(dim=(0, 2, 3)), rtol=1e-12, atol=0
    )
    with pytest.raises(ValueError, match="expects y of shape"):
        power_decomposition(torch.randn(3, 4, 5))


def _props(norm, depth=30, width=64, realizations=2):
    x = torch.randn(16, 3, 16, 16)
    config = RandomNetConfig(depth=depth, width=width, first_stride=1)
    return power_proportions(norm, x, config, realizations).mean(0)  # (depth, 4)


def test_bn_has_no_dataset_scale_term():
    props = _props("bn", depth=12)
    assert props[:, 0].abs().max() < 1e-10


def test_in_has_only_the_mean_instance_std_term():
    props = _props("in", depth=12)
    assert props[:, [0, 1, 3]].abs().max() < 1e-3
    assert (props[:, 2] > 0.999).all()


def test_ln_collapses_with_depth():
    term1 = _props("ln")[:, 0]
    assert term1[9] > 0.5  # depth 10
    assert term1[29] > term1[9] > term1[2]


@pytest.mark.parametrize("norm", ["ln+pn", "gn+pn"])
def test_pn_prevents_collapse(norm):
    term1 = _props(norm)[:, 0]
    assert term1[4:30].max() < 0.1


def test_record_preactivations_order_hooks_and_no_grad():
    model = create_model("resnet20", norm="gn+pn", width_mult=0.5)
    x = torch.randn(4, 3, 16, 16, requires_grad=True)
    ys = record_preactivations(model, x)
    layers = model.norm_act_layers()
    assert len(ys) == len(layers)
    assert all(not y.requires_grad for y in ys)
    assert all(not layer.norm._forward_hooks and not layer._forward_hooks for layer in layers)
    # The first step normalizes the stem output: y is its group standardization.
    stem_out = model.stem(x).detach()
    ref = nn.functional.group_norm(stem_out, layers[0].groups, eps=1e-5)
    torch.testing.assert_close(ys[0], ref)
    assert [y.shape[1] for y in ys] == [layer.num_features for layer in layers]


def test_record_works_on_plain_torch_models_before_the_affine():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3),
        nn.GroupNorm(2, 8),
        nn.ReLU(),
    )
    with torch.no_grad():
        model[1].weight.fill_(3.0)
        model[4].bias.fill_(2.0)
    x = torch.randn(6, 3, 10, 10)
    ys = record_preactivations(model, x, reduce=power_decomposition)
    assert len(ys) == 2
    for d in ys:  # standardized before γ, β: layer power 1 (Proposition 1) up to eps
        assert d.layer_power == pytest.approx(1.0, abs=1e-3)
    model.eval()
    ys_eval = record_preactivations(model, x)
    mean, var = model[1].running_mean, model[1].running_var
    ref = (model[0](x) - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
    torch.testing.assert_close(ys_eval[0], ref.detach())


def test_hooks_removed_even_on_error():
    model = create_model("resnet20", norm="gn", width_mult=0.25)

    def boom(y, z):
        raise RuntimeError("reduce failed")

    with pytest.raises(RuntimeError, match="reduce failed"):
        record_layer_io(model, torch.randn(2, 3, 8, 8), boom)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("norm", ["evos0", "frn"])
def test_record_norm_and_activation_replacements(norm):
    model = create_model("random_net", norm=norm, depth=3, width=8)
    ys = record_preactivations(model, torch.randn(2, 3, 8, 8))
    assert len(ys) == 3 and all(torch.isfinite(y).all() for y in ys)
