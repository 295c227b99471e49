"""The layers' bad inputs: every documented one raises a clear error that names the argument
(the command line's are in tests/test_cli_errors.py)."""

import pytest
import torch

from proxynorm.functional import proxy_norm_act
from proxynorm.layers import (
    BatchNormAct2d,
    EvoNormS0,
    GroupNormAct,
    InstanceNormAct,
    ProxyNormAct,
    WSConv2d,
    norm_act,
    parse_spec,
)


@pytest.mark.parametrize("spec", ["xn", "gn+xx", "gn+ln", "pn", "gn+pn+pn", ""])
def test_unknown_spec_lists_valid_ones(spec):
    with pytest.raises(ValueError, match="valid specs: bn, ln, in, gn"):
        norm_act(spec, 8)


@pytest.mark.parametrize("spec", ["evos0+pn", "frn+pn"])
def test_pn_after_norm_and_activation_replacement(spec):
    with pytest.raises(ValueError, match="cannot be combined with \\+pn"):
        parse_spec(spec)


def test_spec_type():
    with pytest.raises(TypeError, match="spec must be"):
        parse_spec(3)


def test_unknown_activation():
    with pytest.raises(ValueError, match="unknown act 'relu7'; valid activations: identity, relu"):
        ProxyNormAct(8, act="relu7")
    with pytest.raises(ValueError, match="unknown act"):
        norm_act("gn", 8, act="tanhh")
    with pytest.raises(TypeError, match="act must be"):
        GroupNormAct(8, act=3)


@pytest.mark.parametrize(
    "build,name",
    [
        (lambda: GroupNormAct(10, groups=4), "groups=4"),
        (lambda: norm_act("gn+pn", 12, groups=5), "groups=5"),
        (lambda: norm_act("gn", 12, group_size=5), "group_size=5"),
        (lambda: EvoNormS0(12, groups=8), "groups=8"),
        (lambda: GroupNormAct(12, groups=0), "groups=0"),
        (lambda: norm_act("gn", 12, groups=3, group_size=4), "groups or group_size"),
        (lambda: norm_act("bn", 12, groups=4), "groups/group_size apply to gn"),
    ],
)
def test_groups_must_divide_channels(build, name):
    with pytest.raises(ValueError, match=name):
        build()


@pytest.mark.parametrize(
    "build,arg",
    [
        (lambda: GroupNormAct(8, eps=0), "eps"),
        (lambda: BatchNormAct2d(8, eps=-1e-5), "eps"),
        (lambda: norm_act("ln+pn", 8, proxy_eps=0.0), "eps"),
        (lambda: ProxyNormAct(8, eps=-0.03), "eps"),
        (lambda: EvoNormS0(8, eps=0), "eps"),
        (lambda: norm_act("frn", 8, eps=0), "eps"),
        (lambda: ProxyNormAct(8, n_samples=1), "n_samples"),
        (lambda: norm_act("gn+pn", 8, n_samples=0), "n_samples"),
        (lambda: BatchNormAct2d(8, momentum=1.5), "momentum"),
        (lambda: BatchNormAct2d(8, norm_batch=0), "norm_batch"),
        (lambda: GroupNormAct(0), "num_features"),
        (lambda: WSConv2d(3, 4, 3, eps=-1.0), "eps"),
    ],
)
def test_bad_arguments(build, arg):
    with pytest.raises(ValueError, match=arg):
        build()


def test_bad_argument_types():
    with pytest.raises(TypeError, match="num_features"):
        GroupNormAct(8.0)
    with pytest.raises(TypeError, match="eps"):
        ProxyNormAct(8, eps="0.03")
    with pytest.raises(ValueError, match="eps"):
        proxy_norm_act(torch.randn(2, 3), torch.ones(3), torch.zeros(3), eps=0)


@pytest.mark.parametrize("spec", ["bn", "gn+pn", "ln", "evos0", "frn"])
def test_wrong_channels_and_rank(spec):
    layer = norm_act(spec, 8)
    with pytest.raises(ValueError, match="expects 8 channels"):
        layer(torch.randn(2, 4, 3, 3))
    with pytest.raises(ValueError, match="expects input of shape"):
        layer(torch.randn(2, 8, 3))
    with pytest.raises(ValueError, match="expects input of shape"):
        layer(torch.randn(8))


def test_proxy_norm_act_checks_input():
    with pytest.raises(ValueError, match="ProxyNormAct expects 8 channels"):
        ProxyNormAct(8)(torch.randn(2, 3, 4, 4))


def test_instance_norm_needs_spatial_dims():
    with pytest.raises(ValueError, match="InstanceNormAct expects input of shape \\(N, C, H, W\\)"):
        InstanceNormAct(8)(torch.randn(2, 8))


def test_groups_of_the_wrong_type():
    with pytest.raises(TypeError, match="groups must be an int, got 2.0"):
        norm_act("gn", 8, groups=2.0)


def test_a_last_ghost_batch_of_one_input_is_refused():
    with pytest.raises(ValueError, match="leaves a last ghost batch of 1 input"):
        BatchNormAct2d(4, norm_batch=3)(torch.randn(4, 4))


def test_empty_batches_and_huge_inputs():
    for spec in ("evos0", "frn", "gn+pn", "ln+pn"):
        assert norm_act(spec, 8)(torch.randn(0, 8, 3, 3)).shape == (0, 8, 3, 3)
    x = torch.randn(2, 8, 3, 3)
    for spec in ("ln+pn", "ln", "gn+pn", "in+pn"):
        layer = norm_act(spec, 8)
        huge = layer(x * 1e20)  # float32 sums of squares overflow; the layer stays scale invariant
        assert torch.isfinite(huge).all()
        torch.testing.assert_close(huge, layer(x), rtol=1e-3, atol=1e-3)
