"""BN -> GN+PN conversion (torch.fx): the project's ResNet v2, a torchvision-style ResNet v1."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from proxynorm import convert
from proxynorm.layers import BatchNormAct2d, GroupNormAct, LayerNormAct, ProxyNormAct
from proxynorm.models import create_model


class BasicBlockV1(nn.Module):
    """torchvision's ResNet v1 block: conv-bn-relu, conv-bn, add, relu."""

    def __init__(self, c_in: int, c: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.downsample = None
        if stride != 1 or c_in != c:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c, 1, stride, bias=False), nn.BatchNorm2d(c)
            )

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class ResNetV1(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = nn.Sequential(BasicBlockV1(16, 16), BasicBlockV1(16, 32, 2))
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer1(x)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _batch_independent(model: nn.Module, x: torch.Tensor) -> None:
    """In training mode, in float64 (float32 convolutions round differently per batch size)."""
    model = copy.deepcopy(model).double().train()
    x = x.double()
    full = model(x)
    halves = torch.cat([model(x[:4]), model(x[4:])])
    torch.testing.assert_close(full, halves, rtol=1e-9, atol=1e-9)


def _trains_a_step(model: nn.Module, x: torch.Tensor) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in model.parameters()]
    loss = F.cross_entropy(model(x), torch.arange(len(x)) % 10)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


def test_resnet_v1_counts_carried_affine_and_batch_independence():
    torch.manual_seed(0)
    model = ResNetV1()
    with torch.no_grad():
        model.bn1.weight.fill_(1.5)
        model.layer1[0].bn2.bias.fill_(0.25)
    converted, report = convert(model, "gn+pn", groups=8)
    # bn1 (F.relu), layer1.{0,1}.bn1 (ReLU module) -> GN+PN; bn2 x2 and the downsample BN (before
    # the add) -> GN with affine; the two ReLUs after the adds are left alone.
    assert len(report.with_act) == 3 and len(report.without_act) == 3
    assert len(report.left) == 2 and all("after an add" in why for why in report.left)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in converted.modules())
    assert sum(isinstance(m, ProxyNormAct) for m in converted.modules()) == 3
    assert converted.bn1.weight.eq(1.5).all() and converted.bn1.proxy
    bn2 = converted.get_submodule("layer1.0.bn2")
    assert bn2.bias.eq(0.25).all() and not bn2.apply_act
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # original untouched
    x = torch.randn(8, 3, 16, 16)
    _batch_independent(converted, x)
    _trains_a_step(converted, x)


@pytest.mark.parametrize("spec,cls", [("gn+pn", GroupNormAct), ("ln+pn", LayerNormAct)])
def test_project_resnet_v2_built_with_bn(spec, cls):
    model = create_model("resnet20", norm="bn", width_mult=0.5)
    n = sum(isinstance(m, BatchNormAct2d) for m in model.modules())
    converted, report = convert(model, spec, **({"groups": 4} if spec == "gn+pn" else {}))
    assert len(report.with_act) == n and not report.without_act and not report.left
    assert sum(isinstance(m, cls) and m.proxy for m in converted.modules()) == n
    x = torch.randn(8, 3, 16, 16)
    _batch_independent(converted, x)
    _trains_a_step(converted, x)


def test_batch_dependent_target_is_refused():
    with pytest.raises(ValueError, match="batch independent"):
        convert(ResNetV1(), "bn+pn")


@pytest.mark.parametrize(
    "name,counts",
    [
        # stem bn1 + 8 block bn1 (-> drop_block Identity -> act1) with act; 8 bn2 + 3 downsample
        # before adds; the 8 ReLUs after the adds are left.
        ("resnet18", (9, 11, 8)),
        # 33 BatchNormAct2d (BN + SiLU inside); 16 projection BNs; the SE modules hold no BN,
        # so they are kept whole and their ReLUs are not even looked at.
        ("efficientnet_b0", (33, 16, 0)),
    ],
)
def test_timm_models_when_timm_is_installed(name, counts):
    timm = pytest.importorskip("timm")
    # (timm's ResNets zero-initialize each block's last BN gamma, which would hold the branch's
    # weights still in a first step; the test wants every parameter to move.)
    kw = {"zero_init_last": False} if name.startswith("resnet") else {}
    model = timm.create_model(name, num_classes=10, **kw)
    converted, report = convert(model, "gn+pn", groups=8)
    assert (len(report.with_act), len(report.without_act), len(report.left)) == counts
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in converted.modules())
    x = torch.randn(8, 3, 64, 64)
    _batch_independent(converted, x)
    _trains_a_step(converted, x)


# --- issue 15: what real torchvision / timm / detection code needs -----------------------------


class DropPathLike(nn.Module):
    """Stochastic depth in the style of timm's DropPath / torchvision's StochasticDepth: its
    forward branches on ``self.training`` (which torch.fx would freeze if it traced into it)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(x.shape[0], 1, 1, 1, dtype=x.dtype) >= self.p
        return x * keep / (1 - self.p)


class StochasticNet(nn.Module):
    """BN blocks with stochastic depth, and functional dropout in the model's own forward."""

    def __init__(self, c: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))
        self.conv = nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c)
        self.drop_path = DropPathLike(0.5)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = F.relu(self.stem(x))
        x = x + self.drop_path(F.relu(self.bn(self.conv(x))))
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(F.dropout(x, p=0.5, training=self.training))


def _deterministic(model, x) -> bool:
    with torch.no_grad():
        return torch.equal(model(x), model(x))


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_train_and_eval_behave_as_in_the_original_whatever_the_mode_at_conversion(mode):
    torch.manual_seed(0)
    model = getattr(StochasticNet(), mode)()
    converted, report = convert(model, "gn+pn", groups=4)
    assert converted.training == model.training
    assert len(report.with_act) == 2 and report.mode_dependent  # the functional dropout
    x = torch.randn(4, 3, 8, 8)
    for m in (model, converted):
        assert _deterministic(m.eval(), x)  # eval: no dropout, no dropped paths
        assert not _deterministic(m.train(), x)  # train: both are random again
    # The stochastic-depth module is kept whole (a leaf), so it follows the mode itself.
    assert isinstance(converted.drop_path, DropPathLike)
    # Folding the eval-mode model matches it exactly.
    from proxynorm import fold

    folded, _ = fold(converted)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), converted.eval()(x), rtol=1e-5, atol=1e-5)


class ModeBranchingBlock(nn.Module):
    """A BN block whose own forward computes differently in training (like Inception's
    auxiliary head): convert cannot keep that, and says where."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, bias=False)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        return x * 2 if self.training else x


def test_mode_dependent_code_that_cannot_be_kept_is_refused_with_the_module_name():
    model = nn.Sequential(nn.Conv2d(3, 3, 1), ModeBranchingBlock())
    with pytest.raises(ValueError, match=r"cannot convert: 1 computes differently in train"):
        convert(model, "gn+pn", groups=4)


class FrozenBatchNorm2d(nn.Module):
    """torchvision's FrozenBatchNorm2d: BN with fixed statistics and affine, all buffers."""

    def __init__(self, n: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("weight", torch.ones(n))
        self.register_buffer("bias", torch.zeros(n))
        self.register_buffer("running_mean", torch.zeros(n))
        self.register_buffer("running_var", torch.ones(n))

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.reshape(1, -1, 1, 1) + bias.reshape(1, -1, 1, 1)


def _frozen_backbone() -> nn.Module:
    """A torchvision-detection-style ResNet backbone: v1 blocks, every BN frozen."""
    model = ResNetV1()
    for m in list(model.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, nn.BatchNorm2d):
                frozen = FrozenBatchNorm2d(child.num_features)
                frozen.weight.fill_(1.25)
                frozen.bias.fill_(0.1)
                setattr(m, child_name, frozen)
    return model


def test_frozen_batchnorm_is_converted_and_no_buffer_is_frozen_into_the_graph():
    model = _frozen_backbone()
    converted, report = convert(model, "gn+pn", groups=8)
    assert (len(report.with_act), len(report.without_act)) == (3, 3)  # as with plain BN
    assert len(report.left) == 2 and all("after an add" in why for why in report.left)
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in converted.modules())
    names = [n for n, _ in converted.named_buffers()] + [n for n, _ in converted.named_parameters()]
    assert not any("_tensor_constant" in n for n in names)
    assert converted.bn1.weight.eq(1.25).all() and converted.bn1.bias.eq(0.1).all()
    x = torch.randn(8, 3, 16, 16)
    _batch_independent(converted, x)
    _trains_a_step(converted, x)


class OddChannels(nn.Module):
    """A 58-channel layer (shufflenet_v2's) among layers that 8 groups divide."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 16, 1), nn.BatchNorm2d(16), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 58, 1), nn.BatchNorm2d(58), nn.ReLU())

    def forward(self, x):
        return self.b(self.a(x))


def test_groups_that_do_not_divide_a_layer_fall_back_per_layer_and_are_reported():
    converted, report = convert(OddChannels(), "gn+pn", groups=8)
    a, b = converted.get_submodule("a.1"), converted.get_submodule("b.1")
    assert a.groups == 8 and b.groups == 2  # the nearest divisor of 58
    assert report.regrouped == ["b.1: 58 channels, 2 groups (8 does not divide 58)"]
    assert "1 with other groups than asked" in str(report)
    converted, report = convert(OddChannels(), "gn+pn", group_size=16)
    a, b = converted.get_submodule("a.1"), converted.get_submodule("b.1")
    assert a.groups == 1 and b.groups == 2  # group size 29 for 58
    assert report.regrouped == ["b.1: 58 channels, group size 29 (16 does not divide 58)"]
    # Any other layer error names the layer.
    with pytest.raises(ValueError, match=r"cannot convert a\.1 \(BatchNorm2d\(16\)\): eps must"):
        convert(OddChannels(), "gn+pn", groups=8, proxy_eps=-1.0)
    with pytest.raises(ValueError, match="groups must be an int >= 1, got 0"):
        convert(OddChannels(), "gn+pn", groups=0)


def _block(act: nn.Module) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), act,
        nn.Conv2d(16, 16, 3, padding=1, groups=16, bias=False), nn.BatchNorm2d(16), act,
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10),
    )  # fmt: skip


@pytest.mark.parametrize(
    "act,name",
    [
        (nn.ReLU6(inplace=True), "relu6"),
        (nn.Hardswish(), "hardswish"),
        (nn.LeakyReLU(0.1), "leaky_relu(negative_slope=0.1)"),
        (nn.Mish(), "mish"),
        (nn.GELU(approximate="tanh"), "gelu(approximate='tanh')"),
    ],
)
def test_mobilenet_style_activations_take_the_fused_path(act, name):
    from proxynorm.bench import saved_bytes

    converted, report = convert(_block(act), "gn+pn", groups=4)
    pns = [m for m in converted.modules() if isinstance(m, ProxyNormAct)]
    assert len(report.with_act) == 2 and len(pns) == 2
    assert all(p.uses_fused and p.act_name == name for p in pns)
    # Each PN step saves no more than the ReLU path's (one input-sized tensor and small ones).
    relu, _ = convert(_block(nn.ReLU()), "gn+pn", groups=4)
    x = torch.randn(8, 3, 16, 16).requires_grad_()
    assert saved_bytes(lambda: converted(x)) <= saved_bytes(lambda: relu(x)) + 4096
    _batch_independent(converted, x.detach())
    _trains_a_step(converted, x.detach())


class TimmStyleSwish(nn.Module):
    """An activation class from another library (timm's ``Swish``): no state, recognized by its
    values."""

    def __init__(self, inplace: bool = False) -> None:
        super().__init__()
        self.inplace = inplace

    def forward(self, x):
        return x * torch.sigmoid(x)


def test_activation_modules_of_other_libraries_are_recognized():
    converted, _ = convert(_block(TimmStyleSwish()), "gn+pn", groups=4)
    pns = [m for m in converted.modules() if isinstance(m, ProxyNormAct)]
    assert len(pns) == 2 and all(p.uses_fused and p.act_name == "silu" for p in pns)


def test_fold_of_a_float64_converted_model_keeps_float64():
    from proxynorm import fold

    torch.manual_seed(0)
    converted, _ = convert(_block(nn.Hardswish()).double(), "gn+pn", groups=4)
    with torch.no_grad():
        for p in converted.parameters():
            p.add_(0.1 * torch.randn_like(p))
    converted.eval()
    folded, _ = fold(converted)
    assert all(b.dtype == torch.float64 for b in folded.buffers() if b.is_floating_point())
    x = torch.randn(4, 3, 16, 16, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), converted(x), rtol=0, atol=1e-12)


# Real libraries: skipped cleanly when torchvision / timm are not installed.


def _eval_deterministic_train_random(model, x) -> tuple[bool, bool]:
    def same(a, b):
        if isinstance(a, dict):
            return all(torch.equal(a[k], b[k]) for k in a)
        return torch.equal(a, b)

    with torch.no_grad():
        model.eval()
        det = same(model(x), model(x))
        model.train()
        rnd = not same(model(x), model(x))
    return det, rnd


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize(
    "lib,name,kw",
    [
        ("torchvision", "efficientnet_b0", {}),
        ("timm", "efficientnet_b0", {"drop_rate": 0.2, "drop_path_rate": 0.2}),
        ("timm", "resnet50", {"drop_rate": 0.2, "drop_path_rate": 0.1}),
    ],
)
def test_real_models_keep_train_and_eval_behaviour(lib, name, kw, mode):
    if lib == "timm":
        model = pytest.importorskip("timm").create_model(name, num_classes=10, **kw)
    else:
        model = getattr(pytest.importorskip("torchvision").models, name)(num_classes=10)
    getattr(model, mode)()
    converted, report = convert(model, "gn+pn", groups=8)
    assert converted.training == model.training
    x = torch.randn(2, 3, 64, 64)
    assert _eval_deterministic_train_random(converted, x) == (True, True)
    from proxynorm import fold

    folded, _ = fold(converted)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), converted.eval()(x), rtol=1e-4, atol=1e-4)


def test_real_frozen_bn_detection_backbone():
    pytest.importorskip("torchvision")
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d as TorchvisionFrozenBN

    # What a pretrained Faster R-CNN holds (without downloading its weights): every BN frozen.
    backbone = resnet_fpn_backbone(
        backbone_name="resnet50", weights=None, norm_layer=TorchvisionFrozenBN, trainable_layers=3
    )
    frozen = sum(type(m).__name__ == "FrozenBatchNorm2d" for m in backbone.modules())
    converted, report = convert(backbone, "gn+pn", groups=8)
    assert len(report.with_act) + len(report.without_act) == frozen == 53
    assert len(report.with_act) == 33
    assert not any(type(m).__name__ == "FrozenBatchNorm2d" for m in converted.modules())
    assert not any("_tensor_constant" in n for n, _ in converted.named_buffers())


@pytest.mark.parametrize("name,act", [("mobilenet_v2", "relu6"), ("mobilenet_v3_small", None)])
def test_real_mobilenets_convert_onto_the_fused_path(name, act):
    tv = pytest.importorskip("torchvision")
    converted, _ = convert(getattr(tv.models, name)(num_classes=10), "gn+pn", groups=8)
    pns = [m for m in converted.modules() if isinstance(m, ProxyNormAct)]
    assert pns and all(p.uses_fused for p in pns)
    assert act is None or all(p.act_name == act for p in pns)


def test_real_shufflenet_with_groups_8():
    tv = pytest.importorskip("torchvision")
    converted, report = convert(tv.models.shufflenet_v2_x1_0(num_classes=10), "gn+pn", groups=8)
    assert report.regrouped and all("does not divide" in r for r in report.regrouped)
    x = torch.randn(8, 3, 64, 64)
    _batch_independent(converted, x)
