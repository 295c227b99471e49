import pytest
import torch
from torch import nn

from proxynorm.layers import (
    KNOWN_SPECS,
    NORM_ACT_LAYERS,
    AffineAct,
    BatchNormAct2d,
    EvoNormS0,
    FilterResponseNormTLU,
    GroupNormAct,
    InstanceNormAct,
    LayerNormAct,
    ProxyNormAct,
    WSConv2d,
    conv2d,
    norm_act,
    parse_spec,
)

EXPECTED_CLASS = {
    "bn": BatchNormAct2d,
    "ln": LayerNormAct,
    "in": InstanceNormAct,
    "gn": GroupNormAct,
    "bn+pn": BatchNormAct2d,
    "ln+pn": LayerNormAct,
    "gn+pn": GroupNormAct,
    "in+pn": InstanceNormAct,
    "evos0": EvoNormS0,
    "frn": FilterResponseNormTLU,
}


@pytest.mark.parametrize("spec", KNOWN_SPECS)
def test_every_spec_builds_the_right_module(spec):
    layer = norm_act(spec.upper(), 64)
    assert type(layer) is EXPECTED_CLASS[spec]
    s = parse_spec(spec)
    if s.base not in ("evos0", "frn"):
        assert isinstance(layer.act, ProxyNormAct) == s.pn
        # The norm step has no affine: γ, β live in the activation step.
        assert list(layer.norm.parameters()) == []
        assert layer.weight is layer.act.weight
    out = layer(torch.randn(2, 64, 4, 4))
    assert out.shape == (2, 64, 4, 4)


@pytest.mark.parametrize("cls", list(NORM_ACT_LAYERS.values()) + [ProxyNormAct])
def test_channel_count_is_the_only_required_argument(cls):
    layer = cls(16)
    assert layer(torch.randn(2, 16, 3, 3)).shape == (2, 16, 3, 3)
    assert layer.num_features == 16
    assert repr(layer).count("16") >= 1


def test_default_groups():
    assert norm_act("gn+pn", 64).groups == 8
    assert norm_act("gn", 64).groups == 32
    assert norm_act("gn", 16).groups == 16  # capped at C
    assert norm_act("gn", 112).groups == 16  # gcd(32, 112): 32 does not divide 112
    assert norm_act("gn", 64, groups=4).groups == 4
    assert norm_act("gn", 64, group_size=16).groups == 4
    assert norm_act("evos0", 64).groups == 32
    assert norm_act("evos0", 64, group_size=8).groups == 8
    assert norm_act("ln+pn", 64).groups == 1
    assert norm_act("in", 64).groups == 64


def test_spec_parsing_and_ws():
    s = parse_spec(" GN+PN+WS ")
    assert (s.base, s.pn, s.ws, s.uses_ws, s.name) == ("gn", True, True, True, "gn+pn+ws")
    assert parse_spec("ws+gn") == parse_spec("gn+ws")
    assert parse_spec("ln+ws").uses_ws and not parse_spec("ln").uses_ws
    assert parse_spec("bn").batch_dependent and not parse_spec("gn+pn").batch_dependent
    assert parse_spec("FRN+TLU").base == "frn"
    assert parse_spec(s) is s
    layer = norm_act("gn+pn+ws", 32)
    assert isinstance(layer.act, ProxyNormAct)
    assert isinstance(conv2d("gn+pn+ws", 3, 8, 3), WSConv2d)
    conv = conv2d("gn+pn", 3, 8, 3, stride=2)
    assert type(conv) is nn.Conv2d and conv.padding == (1, 1) and conv.bias is None


def test_apply_act_false_and_pn_options_through_factory():
    plain = norm_act("gn+pn", 32, apply_act=False)
    assert isinstance(plain.act, AffineAct) and plain.act.act_name == "identity"
    pn = norm_act("ln+pn", 32, act="silu", proxy_affine=False, proxy_scale=False, n_samples=64)
    assert pn.act.proxy_weight is None and not pn.act.scale and pn.act.n_samples == 64
    bn = norm_act("bn", 32, norm_batch=8, momentum=0.01, eps=1e-3)
    assert (bn.norm.norm_batch, bn.norm.momentum, bn.norm.eps) == (8, 0.01, 1e-3)
    frn = norm_act("frn", 32, apply_act=False)
    assert frn.tau is None
    layer = norm_act("gn+pn", 32, dtype=torch.float64)
    assert all(p.dtype == torch.float64 for p in layer.parameters())


@pytest.mark.parametrize("spec", ["gn+pn", "bn", "ln"])
def test_scale_only_norm(spec):
    """bias=False with apply_act=False: the paper's per-channel scale after an MBConv projection."""
    layer = norm_act(spec, 8, apply_act=False, bias=False)
    assert layer.bias is None and not layer.apply_act
    with torch.no_grad():
        layer.weight.copy_(torch.arange(1.0, 9.0))
    x = torch.randn(4, 8, 3, 3)
    seen = []
    layer.norm.register_forward_hook(lambda m, i, o: seen.append(o))
    torch.testing.assert_close(layer(x), seen[0] * torch.arange(1.0, 9.0).view(1, -1, 1, 1))


def test_bias_false_with_pn_is_refused():
    with pytest.raises(ValueError, match="bias=False"):
        norm_act("gn+pn", 8, bias=False)
