"""Models of Labatie et al., NeurIPS 2021 (pre-activation ResNets, ResNeXts, EfficientNets and
random nets), each built from one norm spec: ``create_model("resnet50", norm="gn+pn")``."""

from proxynorm.models.base import ProxyNormModel
from proxynorm.models.builder import LayerFactory
from proxynorm.models.efficientnet import EfficientNet
from proxynorm.models.random_net import RandomNet
from proxynorm.models.registry import create_model, list_models
from proxynorm.models.resnet import PreActResNet

__all__ = [
    "EfficientNet",
    "LayerFactory",
    "PreActResNet",
    "ProxyNormModel",
    "RandomNet",
    "create_model",
    "list_models",
]
