"""Calibrated conversion (issue 17): the converted model reproduces the BN model's function."""

import copy

import pytest
import torch
from torch import nn

from proxynorm import convert
from proxynorm.conversion.calibrate import bn_affine
from proxynorm.layers import ProxyNormAct
from proxynorm.models import create_model
from tests.test_conversion import ResNetV1, _batch_independent


def _bn_model(model: nn.Module, seed: int = 0) -> nn.Module:
    """``model`` with BN running statistics from a few training-mode passes (as a trained BN
    model has), perturbed weights, in eval mode."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        model.train()
        x = 1.5 * torch.randn(256, 3, 16, 16) + 0.3
        for i in range(8):
            model(x[32 * i : 32 * (i + 1)])
    return model.eval()


def _preactivations(model: nn.Module, layers: list[str], x, converted: bool) -> dict:
    """The BN pre-activation ``a x + b`` (original) or ``γ y + β`` (converted) of each layer."""
    seen, handles = {}, []
    modules = dict(model.named_modules())
    for name in layers:
        m = modules[name]
        if converted:

            def hook(mod, args, out, name=name, layer=m):
                shape = (1, -1, 1, 1)
                seen[name] = layer.weight.view(shape) * out + layer.bias.view(shape)

            handles.append(m.norm.register_forward_hook(hook))
        else:
            a, b = bn_affine(m)

            def pre(mod, args, name=name, a=a, b=b):
                seen[name] = a.view(1, -1, 1, 1) * args[0].double() + b.view(1, -1, 1, 1)

            handles.append(m.register_forward_pre_hook(pre))
    with torch.no_grad():
        model.eval()(x)
    for h in handles:
        h.remove()
    return seen


def _mismatch(original, converted, layers, x) -> dict:
    ref = _preactivations(original, layers, x, converted=False)
    got = _preactivations(converted, layers, x, converted=True)
    return {n: float((got[n].double() - ref[n]).norm() / ref[n].norm()) for n in layers}


CASES = [
    ("gn+pn", {"groups": 4}, "resnet20"),
    ("ln+pn", {}, "torchvision-style resnet"),
    ("gn", {"groups": 4}, "torchvision-style resnet"),
]


@pytest.mark.parametrize("spec,kw,which", CASES)
def test_calibration_reduces_every_layers_mismatch_on_held_out_inputs(spec, kw, which):
    if which == "resnet20":
        model = create_model("resnet20", norm="bn", width_mult=0.5)
    else:
        model = ResNetV1()
    bn = _bn_model(model)
    calib = 1.5 * torch.randn(192, 3, 16, 16) + 0.3
    held_out = 1.5 * torch.randn(128, 3, 16, 16) + 0.3
    plain, report = convert(bn, spec, **kw)
    calibrated, report = convert(bn, spec, calibrate=list(calib.split(64)), **kw)
    layers = report.converted
    before = _mismatch(bn, plain, layers, held_out)
    after = _mismatch(bn, calibrated, layers, held_out)
    assert all(after[n] < before[n] for n in layers), (before, after)
    # The whole function, too: the logits move much closer to the BN model's.
    with torch.no_grad():
        ref = bn(held_out)
        err = {m: float((net.eval()(held_out) - ref).norm() / ref.norm())
               for m, net in (("plain", plain), ("calibrated", calibrated))}  # fmt: skip
    assert err["calibrated"] < 0.5 * err["plain"], err
    fits = report.calibration.layers
    assert [f.name for f in fits] and all(f.r2_after >= f.r2_before - 1e-9 for f in fits)


def test_a_layer_with_exactly_representable_statistics_is_matched_to_1e_5():
    """Every sample has the same per-group mean and variance (its pixels are a permutation of one
    image's), so BN's affine of x is exactly an affine of GN's y: calibration recovers it."""
    torch.manual_seed(0)
    bn = nn.BatchNorm2d(8)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(8))
        bn.running_var.copy_(torch.rand(8) + 0.5)
        bn.weight.copy_(torch.randn(8))
        bn.bias.copy_(torch.randn(8))
    model = nn.Sequential(bn, nn.ReLU(), nn.Conv2d(8, 4, 1)).eval()
    base = torch.randn(4, 2 * 25)  # 4 groups of 2 channels x 5 x 5 positions

    def batch(n):  # each sample: each group's 50 values, shuffled across channels and positions
        return torch.stack([
            torch.stack([g[torch.randperm(50)] for g in base]).view(8, 5, 5) for _ in range(n)
        ])  # fmt: skip

    calibrated, report = convert(model, "gn+pn", groups=4, calibrate=[batch(64), batch(64)])
    x = batch(32)
    err = _mismatch(model, calibrated, ["0"], x)["0"]
    assert err < 1e-5
    assert report.calibration.layers[0].r2_after > 1 - 1e-9
    with torch.no_grad():
        torch.testing.assert_close(calibrated(x), model(x), rtol=1e-4, atol=1e-4)


def test_calibration_is_deterministic_batch_independent_and_leaves_the_input_model_alone():
    bn = _bn_model(create_model("resnet20", norm="bn", width_mult=0.25))
    bn.train()  # a model in training mode stays so
    before = copy.deepcopy(bn.state_dict())
    calib = [torch.randn(64, 3, 16, 16), torch.randn(64, 3, 16, 16)]
    a, rep = convert(bn, "gn+pn", groups=2, calibrate=calib)
    b, _ = convert(bn, "gn+pn", groups=2, calibrate=calib)
    assert bn.training and all(torch.equal(before[k], v) for k, v in bn.state_dict().items())
    assert all(p.grad is None for p in bn.parameters())
    assert a.training  # the converted model takes the input model's mode
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(),
                                                  strict=True))  # fmt: skip
    assert rep.calibration.biased  # convs that absorb PN's shift got a bias
    assert any(isinstance(m, ProxyNormAct) for m in a.modules())
    _batch_independent(a, torch.randn(8, 3, 16, 16))


def test_calibrating_a_model_without_batchnorm_is_refused():
    model = create_model("resnet20", norm="gn", width_mult=0.25)
    with pytest.raises(ValueError, match="nothing was converted"):
        convert(model, "gn+pn", calibrate=torch.randn(8, 3, 16, 16))


@pytest.mark.parametrize("lib,name", [("torchvision", "resnet18"), ("timm", "resnet18")])
def test_real_models_calibrate(lib, name):
    if lib == "timm":
        model = pytest.importorskip("timm").create_model(name, num_classes=10)
    else:
        model = getattr(pytest.importorskip("torchvision").models, name)(num_classes=10)
    bn = _bn_model(model)
    calib = 1.5 * torch.randn(128, 3, 16, 16) + 0.3
    held_out = 1.5 * torch.randn(64, 3, 16, 16) + 0.3
    plain, report = convert(bn, "gn+pn", groups=8)
    calibrated, report = convert(bn, "gn+pn", groups=8, calibrate=list(calib.split(64)))
    before = _mismatch(bn, plain, report.converted, held_out)
    after = _mismatch(bn, calibrated, report.converted, held_out)
    assert all(after[n] < before[n] for n in report.converted)


def test_cli_convert_calibrates_saves_and_loads(tmp_path, capsys):
    from proxynorm.checkpoint import load_model, save_model
    from proxynorm.cli import main
    from tests.fake_data import write_cifar10

    data = write_cifar10(tmp_path / "cifar", n_train=10, n_test=4)
    bn = _bn_model(create_model("resnet20", norm="bn", width_mult=0.25))
    save_model(tmp_path / "bn.pt", bn)
    out = tmp_path / "gnpn.pt"
    argv = ["convert", "--checkpoint", str(tmp_path / "bn.pt"), "--data-dir", str(data),
            "--calibrate", "40", "--groups", "2", "--evaluate", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "calibrated on 40 images" in printed and "test accuracy: source" in printed
    converted = load_model(out).eval()
    assert any(isinstance(m, ProxyNormAct) for m in converted.modules())
    assert main(argv) == 2  # the output exists: refused without --force
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():  # the saved model is the calibrated one, not a fresh conversion
        plain, _ = convert(bn, "gn+pn", groups=2)
        assert not torch.allclose(converted(x), plain.eval()(x))


def test_a_max_pool_between_a_layer_and_its_conv_passes_pns_scale_and_shift_to_the_conv():
    """torchvision's stem: conv-bn-relu-maxpool-conv. Max pooling commutes with PN's positive
    per-channel scale and shift, so the conv after it absorbs them (and the fold too)."""
    from proxynorm.conversion import fold

    stem = [nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU()]
    model = _bn_model(nn.Sequential(*stem, nn.MaxPool2d(3, 2, 1), nn.Conv2d(8, 4, 3)))
    x = 1.5 * torch.randn(128, 3, 16, 16) + 0.3
    calibrated, report = convert(model, "gn+pn", groups=2, calibrate=x)
    assert [c.name for c in report.calibration.consumers] == ["4"]
    assert report.calibration.consumers[0].rel_error_after < 0.5
    folded, _ = fold(calibrated.eval())
    with torch.no_grad():
        torch.testing.assert_close(folded(x[:8]), calibrated(x[:8]), rtol=1e-4, atol=1e-4)


def test_the_im2col_chunk_size_does_not_change_the_fit_and_the_batches_are_left_alone(monkeypatch):
    import importlib

    cmod = importlib.import_module("proxynorm.conversion.calibrate")
    bn = _bn_model(create_model("resnet20", norm="bn", width_mult=0.25))
    batches = [
        torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(i)) for i in range(2)
    ]
    kept = [b.clone() for b in batches]
    a, _ = convert(bn, "gn+pn", groups=2, calibrate=batches)
    assert all(torch.equal(b, k) for b, k in zip(batches, kept, strict=True))
    monkeypatch.setattr(cmod, "UNFOLD_ELEMENTS", 1)  # one image per im2col chunk
    b, _ = convert(bn, "gn+pn", groups=2, calibrate=batches)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.allclose(sa[k], sb[k], rtol=1e-5, atol=1e-6) for k in sa)  # float64 sums
