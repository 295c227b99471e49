from functools import partial

import pytest
import torch
from torch import nn

from proxynorm.layers import GroupNormAct, LayerNormAct, ProxyNormAct
from proxynorm.timm import GroupNormProxyAct, LayerNormProxyAct


def test_timm_signature_layers():
    layer = GroupNormProxyAct(32, 4, act_layer=nn.SiLU, inplace=True)
    assert isinstance(layer, GroupNormAct) and layer.proxy and layer.norm.groups == 4
    assert layer.act.act_name == "silu" and layer.act.uses_fused  # nn.SiLU -> the registry's
    assert GroupNormProxyAct(32).act.uses_fused  # timm's default act_layer=nn.ReLU
    assert GroupNormProxyAct(32, group_size=8).norm.groups == 4
    plain = GroupNormProxyAct(32, apply_act=False)
    x = torch.randn(2, 32, 4, 4)
    torch.testing.assert_close(plain(x), nn.functional.group_norm(x, 8))  # γ=1, β=0
    assert not GroupNormProxyAct(32, act_layer=None).apply_act
    assert isinstance(LayerNormProxyAct(16, act_layer="gelu"), LayerNormAct)
    with pytest.raises(ValueError, match="affine=False"):
        GroupNormProxyAct(8, affine=False)
    with pytest.raises(ValueError, match="drop_layer"):
        LayerNormProxyAct(8, drop_layer=nn.Dropout)


def test_timm_efficientnet_built_with_gn_pn():
    timm = pytest.importorskip("timm")
    model = timm.create_model(
        "efficientnet_b0", num_classes=10, norm_layer=partial(GroupNormProxyAct, act_layer="silu")
    )
    assert sum(isinstance(m, ProxyNormAct) for m in model.modules()) == 33
    assert sum(isinstance(m, GroupNormAct) for m in model.modules()) == 49
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    model = model.double().train()
    x = torch.randn(4, 3, 64, 64, dtype=torch.float64)
    torch.testing.assert_close(model(x), torch.cat([model(x[:2]), model(x[2:])]))
