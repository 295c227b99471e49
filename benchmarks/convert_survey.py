"""Convert real torchvision / timm models and check each property (issue 15's survey).

For each model: `convert(model, "gn+pn", groups=8)` in train mode and in eval mode, then
- no BatchNorm (or frozen BN) left, every PN step on the fused path;
- batch independence (float64, training mode, outputs of a batch = outputs of its halves);
- eval output deterministic; train mode still random where the original is (dropout, drop path);
- `fold` of the eval model matches it;
- one SGD step: finite loss, finite gradients.
Random initialization (nothing is downloaded). Needs torchvision and timm (skips what is absent).

    OMP_NUM_THREADS=2 python benchmarks/convert_survey.py --out benchmarks/results/convert_survey
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from proxynorm import convert, fold
from proxynorm.conversion import TrainingFlag, is_bn_like
from proxynorm.layers import ProxyNormAct


def candidates():
    import torchvision.models as tv
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
    from torchvision.ops import FrozenBatchNorm2d

    for name in (
        "resnet18",
        "resnet50",
        "resnext50_32x4d",
        "wide_resnet50_2",
        "mobilenet_v2",
        "mobilenet_v3_small",
        "mobilenet_v3_large",
        "efficientnet_b0",
        "regnet_y_400mf",
        "regnet_x_400mf",
        "shufflenet_v2_x1_0",
        "mnasnet1_0",
        "densenet121",
    ):
        yield f"torchvision {name}", lambda n=name: getattr(tv, n)(num_classes=10), "logits"
    yield (
        "torchvision Faster R-CNN ResNet-50-FPN backbone (FrozenBN)",
        lambda: resnet_fpn_backbone(
            backbone_name="resnet50", weights=None, norm_layer=FrozenBatchNorm2d, trainable_layers=3
        ),
        "dict",
    )
    yield (
        "torchvision DeepLabV3 ResNet-50",
        lambda: tv.segmentation.deeplabv3_resnet50(
            weights=None, weights_backbone=None, num_classes=5, aux_loss=False
        ),
        "dict",
    )
    import timm

    for name, kw in (
        ("resnet50", {"drop_rate": 0.2, "drop_path_rate": 0.1}),
        ("efficientnet_b0", {"drop_rate": 0.2, "drop_path_rate": 0.2}),
        ("mobilenetv3_large_100", {}),
        ("regnety_008", {}),
        ("resnext50_32x4d", {}),
        ("cspresnet50", {}),
        ("densenet121", {}),
    ):
        yield f"timm {name}", lambda n=name, k=kw: timm.create_model(n, num_classes=10, **k), \
            "logits"  # fmt: skip


def _tensor(out):
    if isinstance(out, dict):
        return torch.cat([v.flatten(1) for v in out.values()], 1)
    return out


def check(make, kind: str) -> dict:
    torch.manual_seed(0)
    row: dict = {}
    model = make()
    x = torch.randn(4, 3, 96, 96)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        conv, report = convert(model, "gn+pn", groups=8)
        pns = [m for m in conv.modules() if isinstance(m, ProxyNormAct)]
        row[f"{mode}: converted"] = f"{len(report.with_act)}+{len(report.without_act)}"
        row["regrouped"] = len(report.regrouped)
        # Both conversions must hold these (the train-mode result is not overwritten).
        row["no BN left"] = row.get("no BN left", True) and not any(
            is_bn_like(m) for m in conv.modules()
        )
        row["fused"] = row.get("fused", True) and all(p.uses_fused for p in pns) and bool(pns)
        with torch.no_grad():
            conv.eval()
            row[f"{mode}: eval deterministic"] = torch.equal(_tensor(conv(x)), _tensor(conv(x)))
            orig = copy.deepcopy(model).train()
            orig_random = not torch.equal(_tensor(orig(x)), _tensor(orig(x)))
            conv.train()
            row[f"{mode}: train random as original"] = (
                not torch.equal(_tensor(conv(x)), _tensor(conv(x)))
            ) == orig_random
    conv.eval()
    folded, _ = fold(conv)
    with torch.no_grad():
        a, b = _tensor(folded(x)), _tensor(conv(x))
    row["fold max abs err"] = float((a - b).abs().max())
    row["fold err / max |output|"] = float((a - b).abs().max() / b.abs().max())
    d = copy.deepcopy(conv).double().train()
    for m in d.modules():  # batch independence of the norms only (no dropout noise)
        if (
            isinstance(m, nn.Dropout | TrainingFlag)  # the flag: traced functional dropout
            or "Drop" in type(m).__name__
            or "Stochastic" in type(m).__name__
        ):
            m.eval()
    xd = x.double()
    with torch.no_grad():
        full, halves = _tensor(d(xd)), torch.cat([_tensor(d(xd[:2])), _tensor(d(xd[2:]))])
    row["batch independent (float64)"] = bool(torch.allclose(full, halves, rtol=1e-8, atol=1e-8))
    conv.train()
    opt = torch.optim.SGD(conv.parameters(), lr=1e-3)
    loss = _tensor(conv(x)).float().square().mean() if kind == "dict" else F.cross_entropy(
        conv(x), torch.arange(4) % 10)  # fmt: skip
    loss.backward()
    opt.step()
    row["train step finite"] = bool(torch.isfinite(loss)) and all(
        torch.isfinite(p.grad).all() for p in conv.parameters() if p.grad is not None
    )
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default="benchmarks/results/convert_survey")
    p.add_argument("--only", default="", help="check only models whose name contains this")
    args = p.parse_args(argv)
    rows = {}
    for name, make, kind in candidates():
        if args.only not in name:
            continue
        try:
            rows[name] = check(make, kind)
        except Exception as err:  # noqa: BLE001 (reported per model)
            rows[name] = {"error": f"{type(err).__name__}: {err}".split("\n")[0][:300],
                          "trace": traceback.format_exc()[-800:]}  # fmt: skip
        print(name, json.dumps(rows[name])[:400], flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "convert_survey.json").write_text(json.dumps(rows, indent=1))
    keys = sorted({k for r in rows.values() for k in r if k != "trace"})
    lines = ["| model | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    for name, r in rows.items():
        lines.append(f"| {name} | " + " | ".join(str(r.get(k, "")) for k in keys) + " |")
    (out / "convert_survey.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
