"""Layers: the proxy-normalized activation step, the norm zoo, and the norm-act factory.

Labatie et al., "Proxy-Normalizing Activations to Match Batch Normalization while Removing Batch
Dependence", NeurIPS 2021. Imports only torch, so it can be used inside anyone's model.
"""

from proxynorm.layers.activation import ACTIVATIONS, Act, get_act, resolve_act
from proxynorm.layers.batch_norm import (
    BatchNormAct2d,
    BatchNormStep,
    SyncBatchNormStep,
    convert_sync_batchnorm,
)
from proxynorm.layers.drop_path import DropPath
from proxynorm.layers.evo_norm import EvoNormS0
from proxynorm.layers.factory import NORM_ACT_LAYERS, conv2d, is_norm_act, norm_act
from proxynorm.layers.frn import FilterResponseNormTLU
from proxynorm.layers.group_norm import GroupNormAct, GroupNormStep, InstanceNormAct, LayerNormAct
from proxynorm.layers.norm_act import AffineAct, NormAct, NormStep
from proxynorm.layers.pn import FoldedProxyAct, ProxyNormAct, proxy_moments, proxy_quantiles
from proxynorm.layers.spec import KNOWN_SPECS, NormSpec, parse_spec
from proxynorm.layers.ws_conv import WSConv2d

__all__ = [
    "ACTIVATIONS",
    "Act",
    "KNOWN_SPECS",
    "NORM_ACT_LAYERS",
    "AffineAct",
    "BatchNormAct2d",
    "BatchNormStep",
    "DropPath",
    "EvoNormS0",
    "FilterResponseNormTLU",
    "FoldedProxyAct",
    "GroupNormAct",
    "GroupNormStep",
    "InstanceNormAct",
    "LayerNormAct",
    "NormAct",
    "NormSpec",
    "NormStep",
    "ProxyNormAct",
    "SyncBatchNormStep",
    "WSConv2d",
    "conv2d",
    "convert_sync_batchnorm",
    "get_act",
    "is_norm_act",
    "norm_act",
    "parse_spec",
    "proxy_moments",
    "proxy_quantiles",
    "resolve_act",
]
