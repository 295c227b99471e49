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
        # 33 BatchNormAct2d (BN + SiLU inside); 16 projection BNs; the 16 SE ReLUs are left.
        ("efficientnet_b0", (33, 16, 16)),
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
