"""The conversion cost experiment (experiments/conversion_cost.py) runs end to end on tiny
settings, and its torchvision-style ResNet-50 converts, calibrates and reconstructs."""

import importlib.util
import json
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "conversion_cost.py"


def _script():
    spec = importlib.util.spec_from_file_location("conversion_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cost_runs_per_model_in_its_own_process_and_writes_json(tmp_path):
    s = _script()
    argv = ["--models", "resnet20", "--images", "16", "--steps", "1", "--threads", "1",
            "--data", str(tmp_path / "none.zip"), "--out", str(tmp_path)]  # fmt: skip
    assert s.main(argv) == 0
    r = json.loads((tmp_path / "resnet20.json").read_text())
    assert r["layers"] == 19 and r["blocks"] == 10 and r["closed_form_seconds"] > 0
    assert r["teacher_conv_calls_per_conv_per_chunk"] <= 12  # bounded: linear in depth


def test_the_resnet50_layout_converts_and_reconstructs():
    from proxynorm import convert
    from proxynorm.conversion import reconstruct

    s = _script()
    torch.manual_seed(0)
    bn = s.ResNet50(width=4)
    x = torch.randn(8, 3, 64, 64)
    with torch.no_grad():
        bn.train()(x)
    bn.eval()
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in bn.modules()) == 53
    model, report = convert(bn, "gn+pn", groups=2, calibrate=x)
    rec = reconstruct(model, bn, report.converted, x, steps=1)
    assert len(rec.blocks) == 16  # one per bottleneck
