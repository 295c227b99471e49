"""``proxynorm.analysis.diagnose`` and ``proxynorm diagnose`` (issue 18)."""

import json
import subprocess
import sys
import textwrap

import pytest
import torch
from torch import nn

from proxynorm.analysis.diagnose import diagnose
from proxynorm.analysis.power import TERM_NAMES
from proxynorm.models import create_model
from tests.test_calibration import _bn_model
from tests.test_conversion import FrozenBatchNorm2d, ResNetV1, _frozen_backbone


def _images(n=32, seed=0):
    """Smooth random images (random nets on white noise have no instance-level structure)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 3, 4, 4, generator=g)
    return nn.functional.interpolate(low, size=16, mode="bilinear") + 0.3 * torch.randn(
        n, 3, 16, 16, generator=g
    )


def test_ln_collapses_in_deep_layers_and_its_pn_twin_does_not():
    x = _images()
    ln = diagnose(create_model("random_net", norm="ln", depth=24, width=32, seed=0), x)
    pn = diagnose(create_model("random_net", norm="ln+pn", depth=24, width=32, seed=0), x)
    t1 = TERM_NAMES[0]
    assert all(r["proportions"][t1] > 0.5 for r in ln.layers[-8:])
    assert any("channel-wise collapse" in f and "24 of 24" in f for f in ln.findings)
    assert all(r["proportions"][t1] < 0.1 for r in pn.layers[-8:])
    assert not any("collapse" in f for f in pn.findings)
    for d in (ln, pn):
        for r in d.layers:
            assert sum(r["proportions"].values()) == pytest.approx(1.0, abs=1e-9)


def test_a_planted_dead_channel_is_found_and_no_other():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
    )  # fmt: skip
    with torch.no_grad():
        model[4].bias[5] = -100.0
    d = diagnose(model, [_images(16, s) for s in range(3)], mode="train")
    assert d.layers[0]["dead_channels"] == [] and d.layers[0]["dead_fraction"] == 0
    assert d.layers[1]["dead_channels"] == [5] and d.layers[1]["dead_fraction"] == 1 / 8
    assert any("dead channels" in f and "layers 2 of 2" in f for f in d.findings)


def test_batch_dependence_of_bn_is_nonzero_and_of_gn_pn_zero():
    x = _images()
    bn = diagnose(_bn_model(create_model("resnet20", norm="bn", width_mult=0.25)), x)
    gnpn = diagnose(create_model("resnet20", norm="gn+pn", width_mult=0.25, groups=2), x)
    assert bn.model_batch_dependence > 1e-3
    assert all(r["batch_dependence"] > 1e-4 for r in bn.layers)
    assert gnpn.model_batch_dependence < 1e-6
    assert all(r["batch_dependence"] < 1e-6 for r in gnpn.layers)
    assert any("batch dependent" in f for f in bn.findings)
    # eval mode: the BN model's running statistics are compared with each batch's own
    assert all(r["bn_stat_shift"] is not None for r in bn.layers)


def test_frozen_bn_and_torchvision_style_models():
    for model, kinds in ((_frozen_backbone().eval(), {"frozen bn"}), (ResNetV1().eval(), {"bn"})):
        d = diagnose(model, [_images(8, 1), _images(8, 2)])
        assert {r["kind"] for r in d.layers} == kinds and len(d.layers) == 6
        with_act = [r for r in d.layers if r["nonlinearity"] is not None]
        assert len(with_act) == 3  # the BNs followed by a ReLU (the others feed adds)
        assert all(r["dead_fraction"] is not None for r in with_act)
        assert all(0 < r["effective_rank"] <= r["rank_channels"] for r in d.layers)
        assert all(r["imbalance"] >= 1 for r in d.layers)


def test_the_model_is_left_unchanged():
    model = _bn_model(create_model("resnet20", norm="bn", width_mult=0.25))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    diagnose(model, _images(), mode="train")
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_bad_inputs():
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    with pytest.raises(ValueError, match="no normalization layer"):
        diagnose(plain, _images(4))
    model = create_model("resnet20", norm="bn", width_mult=0.25)
    with pytest.raises(ValueError, match=r"rejected inputs of shape \(4, 5, 16, 16\)"):
        diagnose(model, torch.randn(4, 5, 16, 16))
    with pytest.raises(ValueError, match="inputs is empty"):
        diagnose(model, [])
    with pytest.raises(ValueError, match="mode must be"):
        diagnose(model, _images(4), mode="test")


_MEMORY = textwrap.dedent(
    """
    import resource, sys, torch
    from proxynorm.analysis.diagnose import diagnose
    from proxynorm.models import create_model
    torch.manual_seed(0)
    model = create_model("resnet20", norm="bn", width_mult=0.5).eval()
    batches = (torch.randn(64, 3, 32, 32) for _ in range(int(sys.argv[1])))
    diagnose(model, batches, progress=False)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """
)


def test_memory_stays_bounded_with_the_number_of_batches():
    """Peak RSS with 10 batches (made on the fly) is about the peak with 1: nothing input-sized
    is kept per layer."""
    peak = {}
    for n in (1, 10):
        out = subprocess.run([sys.executable, "-c", _MEMORY, str(n)], capture_output=True,
                             text=True, check=True, env={"OMP_NUM_THREADS": "1"})  # fmt: skip
        peak[n] = int(out.stdout.split()[-1])  # KiB
    assert peak[10] < peak[1] * 1.15 + 20_000, peak


def test_cli_writes_report_json_md_and_pngs(tmp_path):
    from proxynorm.cli import main

    out = tmp_path / "diag"
    argv = ["diagnose", "--model", "resnet20", "--norm", "bn", "--batches", "2", "--batch-size",
            "8", "--data", str(tmp_path / "none"), "--compare", "--out", str(out)]  # fmt: skip
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["layers"] and isinstance(report["findings"], list)
    for row in report["layers"]:
        assert {
            "name",
            "kind",
            "proportions",
            "dead_fraction",
            "effective_rank",
            "imbalance",
        } <= set(row)
        assert set(row["proportions"]) == set(TERM_NAMES)
    assert "SYNTHETIC" in report["inputs"] and "SYNTHETIC" in (out / "report.md").read_text()
    assert report["compare"]["layers"] and all("+pn" in r["kind"] or r["kind"] == "gn"
                                               for r in report["compare"]["layers"])  # fmt: skip
    for png in ("power.png", "dead.png", "nonlinearity.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_frozen_bn_module_is_a_norm_layer():
    from proxynorm.analysis.diagnose import norm_layers

    assert len(norm_layers(nn.Sequential(FrozenBatchNorm2d(4)))) == 1
