import pytest
import torch
from torch import nn

from proxynorm.layers import KNOWN_SPECS, AffineAct, ProxyNormAct, WSConv2d, is_norm_act
from proxynorm.models import create_model, list_models
from proxynorm.models.efficientnet import SqueezeExcite
from proxynorm.models.resnet import PreActBasicBlock, PreActBottleneck

CLASSIFIERS = [m for m in list_models() if m != "random_net"]
CIFAR = ("resnet20", "resnet32", "resnet44", "resnet56", "resnet110")


def small(name, norm, **kw):
    """A reduced-width model and a matching input size, for speed."""
    if name == "random_net":
        return create_model(name, norm=norm, depth=4, width=16, **kw), 8
    cifar = name in CIFAR
    model = create_model(name, norm=norm, width_mult=0.5 if cifar else 0.25, **kw)
    return model, (8 if cifar else 32)


@pytest.mark.parametrize("norm", KNOWN_SPECS + ("gn+ws", "gn+pn+ws"))
@pytest.mark.parametrize("name", list_models())
def test_forward_backward_every_model_and_spec(name, norm):
    model, size = small(name, norm)
    x = torch.randn(2, 3, size, size)
    out = model(x)
    out.square().mean().backward()
    assert torch.isfinite(out).all()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if name != "random_net":
        assert out.shape == (2, 10 if size == 8 else 1000)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_full_size_models_forward_one_image(name):
    model = create_model(name, norm="gn+pn").eval()
    size = model.input_size
    with torch.no_grad():
        out = model(torch.randn(1, 3, size, size))
    assert out.shape == (1, model.fc.out_features if hasattr(model, "fc") else 1000)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet20", "resnext50_32x4d", "efficientnet_b0_g16"])
@pytest.mark.parametrize("norm", ["gn+pn", "ln+pn", "gn", "evos0"])
@pytest.mark.parametrize("train", [True, False])
def test_batch_independence(name, norm, train):
    model, size = small(name, norm)
    model.train(train)
    x = torch.randn(4, 3, size, size)
    other = x.clone()
    other[1:] = torch.randn(3, 3, size, size) * 2
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], model(other)[0], rtol=1e-5, atol=1e-5)


def test_bn_model_is_batch_dependent():
    model, size = small("resnet20", "bn")
    x = torch.randn(4, 3, size, size)
    other = x.clone()
    other[1:] = torch.randn(3, 3, size, size) * 2
    with torch.no_grad():
        assert (model(x)[0] - model(other)[0]).abs().max() > 1e-3


def _final_norm(model):
    return model.norm if hasattr(model, "norm") else model.norm_head


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_final_step_has_pn_scaling_off_and_se_has_no_pn(name):
    model, _ = small(name, "gn+pn")
    final = _final_norm(model)
    assert isinstance(final.act, ProxyNormAct) and not final.act.scale
    layers = model.norm_act_layers()
    assert layers[-1] is final
    assert all(m.act.scale for m in layers[:-1])
    for se in (m for m in model.modules() if isinstance(m, SqueezeExcite)):
        assert not any(isinstance(m, ProxyNormAct) for m in se.modules())
        assert not any(is_norm_act(m) for m in se.modules())
    if name.startswith("efficientnet"):
        assert any(isinstance(m, SqueezeExcite) for m in model.modules())


@pytest.mark.parametrize("name", ["resnet20", "resnet50", "efficientnet_b0"])
def test_ws_rules(name):
    model, _ = small(name, "gn+pn+ws")
    se_convs = {
        id(c) for se in model.modules() if isinstance(se, SqueezeExcite) for c in se.modules()
    }
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert isinstance(m, WSConv2d) == (id(m) not in se_convs), m
    assert not any(isinstance(m, WSConv2d) for m in model.modules() if isinstance(m, nn.Linear))
    if name.startswith("resnet"):
        blocks = [m for m in model.modules() if isinstance(m, (PreActBasicBlock, PreActBottleneck))]
        assert blocks and all(
            isinstance(b.scale, AffineAct) and b.scale.bias is None for b in blocks
        )
    plain, _ = small(name, "gn+pn")
    assert not any(isinstance(m, WSConv2d) for m in plain.modules())


def test_efficientnet_block_output_norms():
    def project_norms(**kw):
        model, _ = small("efficientnet_b0", **kw)
        return [b.norm_project for b in model.blocks]

    assert all(n.bias is None and not n.apply_act for n in project_norms(norm="gn+pn"))
    assert all(n.bias is not None for n in project_norms(norm="gn+pn", proxy_affine=False))
    assert all(n.bias is not None for n in project_norms(norm="gn"))
    evo = project_norms(norm="evos0")
    assert all(type(n) is AffineAct and n.bias is not None for n in evo)


def test_norm_act_layers_are_in_depth_order():
    model, size = small("efficientnet_b0_g16", "gn+pn")
    layers = model.norm_act_layers()
    called = []
    handles = [m.register_forward_pre_hook(lambda m, i: called.append(m)) for m in layers]
    model(torch.randn(1, 3, size, size))
    for h in handles:
        h.remove()
    assert [id(m) for m in called] == [id(m) for m in layers]
    resnet20 = create_model("resnet20")
    assert len(resnet20.norm_act_layers()) == 3 * 3 * 2 + 1


def test_drop_path_rates_are_linear_and_dropout_is_set():
    model = create_model("resnet20", drop_path_rate=0.2, drop_rate=0.3)
    rates = [b.drop_path.p for stage in model.stages for b in stage]
    assert rates[0] == 0 and rates[-1] == pytest.approx(0.2)
    diffs = [b - a for a, b in zip(rates, rates[1:], strict=False)]
    assert all(d == pytest.approx(diffs[0]) for d in diffs)
    assert model.dropout.p == 0.3
    model.train()
    x = torch.randn(2, 3, 32, 32)
    assert not torch.equal(model(x), model(x))  # stochastic in training
    model.eval()
    assert torch.equal(model(x), model(x))


def test_bad_names_and_inputs():
    with pytest.raises(ValueError, match="unknown model 'resnet21'; valid models: resnet20"):
        create_model("resnet21")
    with pytest.raises(ValueError, match="valid specs"):
        create_model("resnet20", norm="xn")
    model = create_model("resnet20", width_mult=0.25)
    with pytest.raises(ValueError, match=r"expects input of shape \(N, 3, H, W\).*got \(2, 1, 32"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match="expects input of shape"):
        model(torch.randn(3, 32, 32))
    with pytest.raises(ValueError, match="H, W >= 32"):
        create_model("resnet50", width_mult=0.25)(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="no classifier"):
        create_model("random_net", num_classes=10, depth=2, width=4)
    with pytest.raises(ValueError, match="num_classes must be an int >= 1, got 0"):
        create_model("resnet20", num_classes=0)
    with pytest.raises(ValueError, match="in_chans must be an int >= 1, got 0"):
        create_model("resnet20", in_chans=0)


def test_random_net_definition_1():
    kw = {"norm": "ln+pn", "depth": 6, "width": 256, "first_stride": 2}
    a, b = create_model("random_net", seed=3, **kw), create_model("random_net", seed=3, **kw)
    c = create_model("random_net", seed=4, **kw)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = a(x)
        torch.testing.assert_close(out, b(x), rtol=0, atol=0)
        assert (out - c(x)).abs().max() > 1e-3
    assert out.shape == (2, 256, 8, 8)
    # Output = last layer's PN(ReLU) post-activation, whose floor is -mean/std of the proxy.
    mean, var = a.norm_act_layers()[-1].act.proxy_moments()
    floor = (-mean / torch.sqrt(var + 0.03)).view(1, -1, 1, 1)
    torch.testing.assert_close(out.amin(dim=(0, 2, 3), keepdim=True), floor.detach())
    gammas = torch.cat([m.weight for m in a.norm_act_layers()])
    betas = torch.cat([m.bias for m in a.norm_act_layers()])
    assert gammas.mean().item() == pytest.approx(1.0, abs=0.02)
    assert gammas.std().item() == pytest.approx(0.2, abs=0.02)
    assert betas.mean().item() == pytest.approx(0.0, abs=0.02)
    assert all(
        (m.act.proxy_weight == 0).all() and (m.act.proxy_bias == 0).all()
        for m in a.norm_act_layers()
    )
    conv = a.layers[0]
    assert conv.padding_mode == "circular" and conv.stride == (2, 2)
    std = conv.weight.std().item() * (conv.weight[0].numel() ** 0.5)
    assert 0.8 < std < 0.9  # N(0, 1/fan_in) truncated at ±2σ has std ≈ 0.88/sqrt(fan_in)
    assert conv.weight.abs().max() * conv.weight[0].numel() ** 0.5 <= 2.0 + 1e-6
