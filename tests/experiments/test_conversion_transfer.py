"""The transfer study (experiments/conversion_transfer.py) runs end to end on tiny settings: the
lr is chosen on held-out target images only, every condition writes its curve, and each condition
builds the model it names."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from proxynorm import create_model
from proxynorm.layers import BatchNormStep

SCRIPT = Path(__file__).resolve().parents[2] / "experiments" / "conversion_transfer.py"


def _script():
    spec = importlib.util.spec_from_file_location("conversion_transfer", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def tiny(tmp_path):
    from proxynorm.checkpoint import save_model
    from tests.fake_data import write_cifar10

    s = _script()
    s.SETTINGS.update(held_out=10, calibrate=16, reconstruct_steps=2, groups=2)
    s.LR_GRID = (0.01, 0.001)
    torch.manual_seed(0)
    bn = create_model("resnet20", norm="bn", num_classes=5, width_mult=0.25)
    with torch.no_grad():
        bn.train()(torch.randn(16, 3, 32, 32))  # running statistics gathered on data
    (tmp_path / "teacher").mkdir()
    save_model(tmp_path / "teacher" / "checkpoint.pt", bn.eval())
    return s, write_cifar10(tmp_path / "cifar", n_train=12, n_test=4), tmp_path


def test_study_runs_and_writes_every_condition(tiny):
    s, data, tmp = tiny
    argv = ["--data-dir", str(data), "--out", str(tmp / "out"), "--teacher", str(tmp / "teacher"),
            "--seeds", "0", "--epochs", "1"]  # fmt: skip
    assert s.main(argv) == 0
    probes = sorted((tmp / "out" / "lr").glob("*.json"))
    assert [json.loads(p.read_text())["lr"] for p in probes] == [0.001, 0.01]
    for c in s.CONDITIONS:
        r = json.loads((tmp / "out" / "runs" / f"{c}-seed0.json").read_text())
        assert r["condition"] == c and len(r["test_acc"]) == 1 and 0 <= r["test_acc"][0] <= 100
        assert r["environment"]["commit"]
    assert "blocks" in json.loads((tmp / "out" / "runs" / "d-seed0.json").read_text())
    with pytest.raises(SystemExit, match="unknown"):
        s.main([*argv, "--conditions", "a,z"])


def test_target_splits_hold_out_images_of_the_target_classes_only():
    from proxynorm.data import ArrayDataset

    s = _script()
    labels = torch.arange(10).repeat(20)
    data = ArrayDataset(torch.arange(200).view(200, 1, 1, 1).to(torch.uint8), labels)
    train, val, test = s.target_splits(data, data, 25)
    assert len(val) == 25 and len(train) == 75 and len(test) == 100
    assert set(val.labels.tolist()) == set(range(5))  # relabelled 5..9 -> 0..4, balanced
    assert not set(val.images.flatten().tolist()) & set(train.images.flatten().tolist())


def test_conditions_build_the_model_they_name(tiny):
    s, _, tmp = tiny
    ckpt = tmp / "teacher" / "checkpoint.pt"
    cal = torch.randn(16, 3, 32, 32)
    models = {c: s.build(c, ckpt, cal, 0)[0] for c in ("a", "b", "e", "f")}
    bn_a = [m for m in models["a"].modules() if isinstance(m, BatchNormStep)]
    assert bn_a and all(m.norm_batch == 2 for m in bn_a)
    assert all(m.norm_batch is None for m in models["b"].modules() if isinstance(m, BatchNormStep))
    for c in ("e", "f"):
        assert not any(isinstance(m, BatchNormStep) for m in models[c].modules())
    heads = [models[c].fc for c in models]  # the same fresh head for every condition of a seed
    assert all(torch.equal(h.weight, heads[0].weight) and h.out_features == 5 for h in heads)
    s.set_train_mode(models["b"], "b")
    assert not any(m.training for m in models["b"].modules() if isinstance(m, BatchNormStep))


def test_a_diverging_lr_is_recorded_as_null_and_not_chosen(tiny, monkeypatch):
    s, _, tmp = tiny
    real = s.finetune

    def finetune(model, condition, lr, *args):
        if lr == 0.01:
            raise FloatingPointError("diverged")
        return real(model, condition, lr, *args)

    monkeypatch.setattr(s, "finetune", finetune)
    s.SETTINGS["epochs"] = 1
    train = val = s.ArrayDataset(torch.randint(0, 255, (40, 3, 32, 32), dtype=torch.uint8),
                                 torch.arange(40) % 5)  # fmt: skip
    lr = s.choose_lr(tmp / "out", tmp / "teacher" / "checkpoint.pt", train, val,
                     torch.randn(16, 3, 32, 32))  # fmt: skip
    assert lr == 0.001
    bad = json.loads((tmp / "out" / "lr" / "b-lr0.01.json").read_text())
    assert bad["diverged"] is True and bad["eval_acc"] is None


def _report():
    import sys

    pytest.importorskip("matplotlib")
    sys.path.insert(0, str(SCRIPT.parent))  # the report imports its sibling scripts
    try:
        spec = importlib.util.spec_from_file_location("conversion_report", SCRIPT.parent /
                                                      "conversion_report.py")  # fmt: skip
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


def _runs(finals: dict, n: int = 2) -> dict:
    return {c: [{"test_acc": [v - 5, v], "train_acc": [v], "seconds": 1.0}] * n
            for c, v in finals.items()}  # fmt: skip


@pytest.mark.parametrize(
    ("d", "words", "marks"),
    [(92.0, "**Convert**", ["met", "met"]), (90.5, "**Keep FrozenBN**", ["**unmet**", "met"]),
     (89.0, "**Do not convert**", ["**unmet**", "**unmet**"])],
)  # fmt: skip
def test_when_to_convert_follows_the_numbers(d, words, marks):
    r = _report()
    runs = _runs({"a": 90.0, "b": 91.0, "c": 93.0, "d": d, "e": 85.0, "f": 70.0})
    paragraph = r.when_to_convert(runs)[0]
    assert words in paragraph and f"(d) {d:.2f}" in paragraph and "mean of 2 seeds" in paragraph
    rows = r.transfer_targets(runs)
    assert [row.split(" | ")[1] for row in rows] == marks
    one = _runs({"a": 90.0, "b": 91.0, "c": 93.0, "d": d, "e": 85.0, "f": 70.0}, n=1)
    assert all("one seed so far" in row for row in r.transfer_targets(one))
    del runs["f"]
    assert "not answered" in r.when_to_convert({**runs, "f": []})[0]
    assert r.transfer_targets({**runs, "d": []})[0].endswith("| open | runs missing |")
