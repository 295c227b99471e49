"""Parameter counts against the paper (Table 5) and the reference architectures."""

import pytest

from proxynorm.models import create_model

CIFAR = ("resnet20", "resnet110")
# name -> (expected millions, absolute tolerance in millions)
EXPECTED = {
    "resnet20": (0.27, 0.01),
    "resnet110": (1.7, 0.05),
    "resnet50": (25.5, 25.5 * 0.02),
    "resnet101": (44.5, 44.5 * 0.02),
    "resnext50_32x4d": (25.0, 0.15),
    "efficientnet_b0": (5.3, 0.15),
    "efficientnet_b2": (9.1, 0.15),
    "efficientnet_b0_g16": (5.9, 0.15),
    "efficientnet_b2_g16": (9.5, 0.15),
}


def _count(name):
    model = create_model(name, norm="bn", num_classes=10 if name in CIFAR else 1000)
    return sum(p.numel() for p in model.parameters()) / 1e6


def test_parameter_count_table():
    rows = {name: _count(name) for name in EXPECTED}
    print("\n| model | params (M, norm=bn) | expected (M) |\n|---|---|---|")
    for name, count in rows.items():
        print(f"| {name} | {count:.3f} | {EXPECTED[name][0]} |")
    for name, count in rows.items():
        expected, tol = EXPECTED[name]
        assert count == pytest.approx(expected, abs=tol), name
