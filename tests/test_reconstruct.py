"""Block streaming and block reconstruction of converted models (issue 33): blocks run in order
are the model; reconstruction lowers every block's error, reads images only, is deterministic;
the cost is linear in depth, counted as forward passes; torchvision/timm block shapes run."""

import pytest
import torch
from torch import fx, nn

from proxynorm import convert
from proxynorm.conversion import calibrate, reconstruct
from proxynorm.conversion.blocks import BlockRunner, plan, split
from proxynorm.conversion.fx import trace_holders
from proxynorm.models import create_model
from tests.test_calibration import _bn_model
from tests.test_conversion import ResNetV1, _frozen_backbone


def _images(n: int, size: int = 16, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 1.5 * torch.randn(n, 3, size, size, generator=g) + 0.3


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).sum() / b.pow(2).sum())


def _small_resnet20() -> nn.Module:
    return _bn_model(create_model("resnet20", norm="bn", width_mult=0.25))


@pytest.mark.parametrize("make", [_small_resnet20, lambda: _bn_model(ResNetV1())])
def test_the_blocks_run_one_after_another_are_the_model_and_cut_at_the_residual_adds(make):
    bn = make()
    gm, report = convert(bn, "gn+pn", groups=2)
    gm.eval()
    teacher = fx.GraphModule(bn, trace_holders(bn, training=False))
    ends = plan(gm, teacher, set(report.converted))
    adds = [n.name for n in gm.graph.nodes if "add" in n.name]
    assert ends and all(e in adds or e.startswith("relu") for e in ends)
    x = _images(4)
    for model, ref in ((gm, gm(x)), (teacher, bn(x))):
        runner, h = BlockRunner(model), x
        for block in split(model, ends):
            h = runner.block(block, h)
        assert torch.equal(h, ref)


def test_reconstruction_lowers_every_blocks_error_and_distillation_the_outputs():
    bn = _small_resnet20()
    x, held_out = _images(256, size=8), _images(64, size=8, seed=2)
    gm, report = convert(bn, "gn+pn", groups=2, calibrate=x)
    with torch.no_grad():
        closed_form = _rel(gm.eval()(held_out), bn(held_out))
    rec = reconstruct(gm, bn, report.converted, x, steps=30, distill_steps=30)
    assert len(rec.blocks) == 10  # 9 residual blocks, the last one with the head
    for b in rec.blocks:
        assert b.parameters > 0 and b.kept and b.rel_error_after < b.rel_error_before, b
    assert rec.distill[1] < rec.distill[0]
    with torch.no_grad():
        assert _rel(gm(held_out), bn(held_out)) < closed_form  # also on images it did not see
    assert "->" in str(rec) and "distilled output" in str(rec)


def test_only_images_are_read_and_the_result_is_deterministic_for_a_seed():
    bn = _small_resnet20()
    x = _images(64)

    def images_only():  # a one-pass loader that yields image batches and nothing else
        yield from x.split(32)

    a, rep = convert(bn, "gn+pn", groups=2, calibrate=images_only(), reconstruct_steps=5, seed=3)
    b, _ = convert(bn, "gn+pn", groups=2, calibrate=list(x.split(32)), reconstruct_steps=5,
                   seed=3)  # fmt: skip
    c, _ = convert(bn, "gn+pn", groups=2, calibrate=x, reconstruct_steps=5, seed=4)
    assert rep.reconstruction.images == 64
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def _forward_calls(depth: str) -> int:
    """The most times any convolution of either model runs per calibration batch, closed form
    and reconstruction (0 steps: its streaming only) together."""
    bn = _bn_model(create_model(depth, norm="bn", width_mult=0.25))
    gm, report = convert(bn, "gn+pn", groups=2)
    calls: dict[int, int] = {}
    for m in (*gm.modules(), *bn.modules()):
        if isinstance(m, nn.Conv2d):
            m.register_forward_pre_hook(
                lambda mod, _: calls.__setitem__(id(mod), calls.get(id(mod), 0) + 1)
            )
    x = _images(8, size=8)
    calibrate(gm, bn, report.converted, [x])
    reconstruct(gm, bn, report.converted, x, steps=0)
    return max(calls.values())


def test_the_cost_is_linear_in_depth_counted_as_forward_passes():
    """A convolution runs a bounded number of times whatever the depth (the layer-by-layer fit
    from the input ran the stem once per converted layer: 19 times in resnet20, 55 in resnet56)."""
    shallow, deep = _forward_calls("resnet20"), _forward_calls("resnet56")
    assert shallow == deep and shallow <= 12, (shallow, deep)


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 block: 1x1-3x3-1x1, BN+ReLU, projection shortcut."""

    def __init__(self, c_in: int, c: int, stride: int = 1) -> None:
        super().__init__()
        w = c // 4
        self.conv1, self.bn1 = nn.Conv2d(c_in, w, 1, bias=False), nn.BatchNorm2d(w)
        self.conv2, self.bn2 = nn.Conv2d(w, w, 3, stride, 1, bias=False), nn.BatchNorm2d(w)
        self.conv3, self.bn3 = nn.Conv2d(w, c, 1, bias=False), nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = nn.Sequential(nn.Conv2d(c_in, c, 1, stride, bias=False),
                                        nn.BatchNorm2d(c))  # fmt: skip

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + self.downsample(x))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, act: type[nn.Module]) -> None:
        super().__init__()
        self.reduce, self.act, self.expand = nn.Conv2d(c, c // 4, 1), act(), nn.Conv2d(c // 4, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.expand(self.act(self.reduce(s))))


class InvertedResidual(nn.Module):
    """timm/torchvision MBConv: 1x1 expand, depthwise 3x3, squeeze-excitation, 1x1 project."""

    def __init__(self, c: int, act: type[nn.Module]) -> None:
        super().__init__()
        e = 4 * c
        self.expand = nn.Sequential(nn.Conv2d(c, e, 1, bias=False), nn.BatchNorm2d(e), act())
        self.dw = nn.Sequential(nn.Conv2d(e, e, 3, 1, 1, groups=e, bias=False), nn.BatchNorm2d(e),
                                act())  # fmt: skip
        self.se = SqueezeExcite(e, act)
        self.project = nn.Sequential(nn.Conv2d(e, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return x + self.project(self.se(self.dw(self.expand(x))))


class BlockZoo(nn.Module):
    def __init__(self, act: type[nn.Module]) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), act())
        self.blocks = nn.Sequential(Bottleneck(16, 32), InvertedResidual(32, act),
                                    Bottleneck(32, 32, 2))  # fmt: skip
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.blocks(self.stem(x)).mean((2, 3)))


@pytest.mark.parametrize(
    "make",
    [lambda: BlockZoo(nn.SiLU), lambda: BlockZoo(nn.Hardswish), _frozen_backbone],
    ids=["silu-se", "hardswish-se", "frozen-bn"],
)
def test_torchvision_and_timm_block_shapes_calibrate_and_reconstruct(make):
    bn = _bn_model(make())
    x, held_out = _images(64), _images(32, seed=2)
    gm, report = convert(bn, "gn+pn", groups=2, calibrate=x)
    with torch.no_grad():
        closed_form = _rel(gm.eval()(held_out), bn(held_out))
    rec = reconstruct(gm, bn, report.converted, x, steps=20)
    assert len(rec.blocks) >= 2 and all(b.rel_error_after <= b.rel_error_before for b in rec.blocks)
    with torch.no_grad():
        assert _rel(gm(held_out), bn(held_out)) < closed_form


@pytest.mark.parametrize(
    "lib,name",
    [
        ("torchvision", "resnet18"),
        ("torchvision", "mobilenet_v3_small"),
        ("timm", "efficientnet_b0"),
    ],
)
def test_real_models_calibrate_and_reconstruct(lib, name):
    if lib == "timm":
        model = pytest.importorskip("timm").create_model(name, num_classes=10)
    else:
        model = getattr(pytest.importorskip("torchvision").models, name)(num_classes=10)
    bn = _bn_model(model)
    x = _images(32, size=32)
    gm, report = convert(bn, "gn+pn", groups=8, calibrate=x, reconstruct_steps=3)
    assert report.reconstruction.blocks


def test_bad_reconstruction_settings_are_refused():
    bn = _small_resnet20()
    with pytest.raises(ValueError, match="need calibrate"):
        convert(bn, "gn+pn", groups=2, reconstruct_steps=5)
    gm, report = convert(bn, "gn+pn", groups=2)
    for kw, word in (({"steps": -1}, "steps"), ({"batch_size": 0}, "batch_size"),
                     ({"lr": 0.0}, "lr"), ({"distill_steps": 1.5}, "distill_steps")):  # fmt: skip
        with pytest.raises(ValueError, match=word):
            reconstruct(gm, bn, report.converted, _images(4), **kw)


def test_cli_convert_reconstructs(tmp_path, capsys):
    from proxynorm.checkpoint import save_model
    from proxynorm.cli import main
    from tests.fake_data import write_cifar10

    data = write_cifar10(tmp_path / "cifar", n_train=10, n_test=4)
    save_model(tmp_path / "bn.pt", _bn_model(create_model("resnet20", norm="bn", width_mult=0.25)))
    argv = ["convert", "--checkpoint", str(tmp_path / "bn.pt"), "--data-dir", str(data),
            "--calibrate", "20", "--groups", "2", "--reconstruct-steps", "2", "--distill-steps",
            "2", "--out", str(tmp_path / "gnpn.pt")]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "reconstructed on 20 images, 2 steps per block" in printed
    assert "distilled output" in printed


def test_streaming_over_the_inputs_gives_what_copies_give_and_reuses_their_memory(monkeypatch):
    import importlib

    rmod = importlib.import_module("proxynorm.conversion.reconstruct")
    x = _images(70, size=4)
    same = rmod._stream(lambda t: 2 * t, x.clone(), into=(y := x.clone()))
    assert same[0].data_ptr() == y.data_ptr() and torch.equal(same[0], 2 * x)
    other = rmod._stream(lambda t: t[:, :1], x, into=x)  # another shape: a new tensor
    assert other[0].data_ptr() != x.data_ptr() and torch.equal(other[0], x[:, :1])
    target = [x.flip(0)]
    exact = float((x.double() - x.flip(0).double()).pow(2).sum() / x.double().pow(2).sum())
    assert rmod._stream_error(lambda t: t, x, target) == pytest.approx(exact, rel=1e-12)
    monkeypatch.setattr(rmod, "ERROR_ELEMENTS", 1)  # one image per float64 piece
    assert rmod._stream_error(lambda t: t, x, target) == pytest.approx(exact, rel=1e-12)
    monkeypatch.undo()

    def run(in_place: bool):
        torch.manual_seed(0)  # the same initial weights in both runs
        bn = _small_resnet20()
        gm, report = convert(bn, "gn+pn", groups=2, calibrate=_images(96, size=8))
        if not in_place:
            stream = rmod._stream
            monkeypatch.setattr(rmod, "_stream", lambda fn, t, into=None: stream(fn, t))
        rec = reconstruct(gm, bn, report.converted, _images(96, size=8), steps=3)
        monkeypatch.undo()
        return rec, gm.state_dict()

    (rec_a, sd_a), (rec_b, sd_b) = run(True), run(False)
    assert [vars(b) for b in rec_a.blocks] == [vars(b) for b in rec_b.blocks]
    assert all(torch.equal(sd_a[k], sd_b[k]) for k in sd_a)


def test_a_block_run_keeps_only_live_values_and_nothing_after_it():
    bn = _small_resnet20()
    gm, report = convert(bn, "gn+pn", groups=2)
    gm.eval()
    teacher = fx.GraphModule(bn, trace_holders(bn, training=False))
    blocks = split(gm, plan(gm, teacher, set(report.converted)))
    runner, h, live = BlockRunner(gm), _images(4), []
    for m in gm.modules():
        m.register_forward_pre_hook(lambda *_: live.append(len(runner.env)))
    for block in blocks:
        h = runner.block(block, h)
        assert runner.env == {}  # nothing of the block kept once it returned
    assert max(len(b.nodes) for b in blocks) >= 7 and max(live) <= 3  # a residual block: x, h
    assert torch.equal(h, gm(_images(4)))
