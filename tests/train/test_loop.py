import json
from pathlib import Path

import pytest
import torch

import proxynorm.train.loop as loop
from proxynorm.checkpoint import load_checkpoint
from proxynorm.train import TrainingDiverged, build_config, train
from proxynorm.train.metrics import read_jsonl
from tests.fake_data import write_cifar10

CIFAR_ZIP = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cifar10-jpeg.zip"
RECORD_KEYS = {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "lr", "seconds"}


def tiny(data_dir, **kw):
    """A resnet20 at quarter width on the fake CIFAR-10, with every source of randomness on."""
    base = dict(
        model="resnet20",
        norm="gn+pn",
        data_dir=str(data_dir),
        download=False,
        width_mult=0.25,
        epochs=2,
        batch_size=20,
        lr=0.05,
        dropout=0.2,
        drop_path=0.1,
        mixup=0.2,
        probe=8,
    )
    return build_config("cifar", **{**base, **kw})


def kill_after_epoch_1(cfg, out, monkeypatch):
    """Run ``cfg`` and interrupt it right after its epoch-1 checkpoint is written."""
    real_save = loop.save_model

    def save_then_die(path, model, **extra):
        real_save(path, model, **extra)
        if extra["epoch"] == 1:
            raise KeyboardInterrupt("killed after epoch 1")

    monkeypatch.setattr(loop, "save_model", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, out)
    monkeypatch.setattr(loop, "save_model", real_save)
    assert not (out / "final.json").exists()


@pytest.fixture(scope="module")
def fake_cifar(tmp_path_factory):
    return write_cifar10(tmp_path_factory.mktemp("cifar"))


def test_run_writes_metrics_checkpoint_and_final(fake_cifar, tmp_path):
    final = train(tiny(fake_cifar), tmp_path / "run")
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [1, 2]
    assert set(records[0]) >= RECORD_KEYS
    assert len(records[0]["power"]) == 19  # one decomposition per norm-act step
    assert sum(records[0]["power"][5].values()) == pytest.approx(1.0)
    assert final["test_acc"] == records[-1]["test_acc"]
    assert final["environment"]["torch"] == torch.__version__
    assert json.loads((tmp_path / "run" / "config.json").read_text())["norm"] == "gn+pn"
    ckpt = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert ckpt["epoch"] == 2
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny(fake_cifar), tmp_path / "run")


def test_kill_and_resume_is_bit_exact(fake_cifar, tmp_path, monkeypatch):
    cfg = tiny(fake_cifar, epochs=3)
    train(cfg, tmp_path / "full")

    kill_after_epoch_1(cfg, tmp_path / "killed", monkeypatch)
    train(cfg, tmp_path / "killed", resume=True)

    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    ra = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    rb = read_jsonl(tmp_path / "killed" / "metrics.jsonl")
    assert [r["test_acc"] for r in ra] == [r["test_acc"] for r in rb]
    assert [r["epoch"] for r in rb] == [1, 2, 3]
    history = read_jsonl(tmp_path / "killed" / "history.jsonl")
    assert [(h["event"], h["after_epoch"]) for h in history] == [("start", 0), ("resume", 1)]
    recorded = {"commit", "threads", "cpu_capability", "pn_cpp_kernel", "compile"}
    assert all(set(h) >= recorded for h in history)
    final = json.loads((tmp_path / "killed" / "final.json").read_text())
    assert final["history"] == history
    assert [h["event"] for h in read_jsonl(tmp_path / "full" / "history.jsonl")] == ["start"]


def test_resume_refuses_a_different_configuration(fake_cifar, tmp_path, monkeypatch):
    kill_after_epoch_1(tiny(fake_cifar, epochs=2, probe=0), tmp_path / "run", monkeypatch)
    with pytest.raises(ValueError, match="lr: 0.05 -> 0.1"):
        train(tiny(fake_cifar, epochs=2, probe=0, lr=0.1), tmp_path / "run", resume=True)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(fake_cifar, tmp_path, monkeypatch):
    real = loop.soft_cross_entropy
    calls = {"n": 0}

    def nan_in_epoch_2(logits, target, smoothing):
        calls["n"] += 1
        loss = real(logits, target, smoothing)
        return loss * float("nan") if calls["n"] > 10 else loss  # 10 steps per epoch

    monkeypatch.setattr(loop, "soft_cross_entropy", nan_in_epoch_2)
    with pytest.raises(TrainingDiverged, match="non-finite loss .* epoch 2, step 1"):
        train(tiny(fake_cifar, probe=0), tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["epoch"] == 1
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1]


def test_evil_checkpoint_is_refused_on_resume(fake_cifar, tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (tmp_path / "run").mkdir()
    torch.save({"config": {}, "model": {}, "evil": Evil()}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        train(tiny(fake_cifar), tmp_path / "run", resume=True)


@pytest.mark.parametrize("workers", [0, 2])
def test_imagefolder_data_streams_through_workers(tmp_path, workers):
    from tests.fake_data import write_image_folder_zip

    data = write_image_folder_zip(tmp_path / "imgs.zip", n_train=8, n_test=4)
    cfg = build_config(
        "imagenet-resnet",
        model="resnet20",
        norm="gn+pn",
        data="imagefolder",
        data_dir=str(data),
        image_size=32,
        width_mult=0.25,
        epochs=1,
        batch_size=8,
        workers=workers,
        probe=4,
    )
    final = train(cfg, tmp_path / "run")
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert final["test_acc"] is not None and len(records[0]["power"]) == 19


def test_bf16_autocast_and_grad_clip_and_channels_last(fake_cifar, tmp_path):
    cfg = tiny(
        fake_cifar, epochs=1, amp="bf16", grad_clip=1.0, channels_last=True, ema_decay=0.9, probe=0
    )
    final = train(cfg, tmp_path / "run")
    assert final["train_loss"] == pytest.approx(final["train_loss"])  # finite, not NaN
    assert 0 <= final["test_acc"] <= 100


# --- issue 16: no silent reuse of a run trained with other settings, no lost run --------------


def test_resume_of_a_finished_run_with_other_settings_is_refused(fake_cifar, tmp_path):
    out = tmp_path / "run"
    train(tiny(fake_cifar, epochs=1, probe=0), out)
    match = r"finished run .*lr: 0\.05 -> 0\.7.*norm: 'gn\+pn' -> 'bn'"
    with pytest.raises(ValueError, match=match):
        train(tiny(fake_cifar, epochs=1, probe=0, lr=0.7, norm="bn"), out, resume=True)
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(ValueError, match="data_dir"):
        train(tiny(other, epochs=1, probe=0), out, resume=True)
    # The same settings: the finished result, untouched.
    assert train(tiny(fake_cifar, epochs=1, probe=0), out, resume=True)["epochs"] == 1


def test_a_finished_run_extends_only_when_its_schedule_stays_the_same(fake_cifar, tmp_path):
    out = tmp_path / "run"
    cfg = tiny(fake_cifar, epochs=1, probe=0, milestones=[5.0], warmup_epochs=0.5)
    train(cfg, out)
    # --epochs 2 alone would rescale the recipe's milestones: refused, with the flags to keep it.
    with pytest.raises(ValueError, match="pass --milestones"):
        train(tiny(fake_cifar, epochs=2, probe=0), out, resume=True)
    # With the same schedule written out, the run continues to epoch 2.
    final = train(tiny(fake_cifar, epochs=2, probe=0, milestones=[5.0], warmup_epochs=0.5), out,
                  resume=True)  # fmt: skip
    assert final["epochs"] == 2
    assert [r["epoch"] for r in read_jsonl(out / "metrics.jsonl")] == [1, 2]
    with pytest.raises(ValueError, match="it finished 2 epochs"):
        train(tiny(fake_cifar, epochs=1, probe=0, milestones=[5.0], warmup_epochs=0.5), out,
              resume=True)  # fmt: skip


def test_resume_into_an_empty_directory_says_it_starts_fresh(fake_cifar, tmp_path, capsys):
    train(tiny(fake_cifar, epochs=1, probe=0), tmp_path / "new", resume=True)
    assert f"--resume: no run in {tmp_path / 'new'}, starting fresh" in capsys.readouterr().out


def test_a_directory_with_results_is_never_trained_over_without_resume(fake_cifar, tmp_path):
    out = tmp_path / "run"
    train(tiny(fake_cifar, epochs=1, probe=0), out)
    (out / "checkpoint.pt").unlink()  # e.g. committed results: final.json and metrics only
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(tiny(fake_cifar, epochs=1, probe=0), out)
    assert (out / "final.json").exists()


def test_compare_refuses_to_reuse_runs_trained_with_other_settings(fake_cifar, tmp_path):
    from proxynorm.train.compare import compare

    base = dict(model="resnet20", data_dir=str(fake_cifar), download=False, width_mult=0.25,
                batch_size=20, probe=0)  # fmt: skip
    compare(tmp_path, ["gn"], [0], epochs=1, **base)
    with pytest.raises(ValueError, match=r"gn/seed0: .*epochs: 1 -> 2"):
        compare(tmp_path, ["gn"], [0], epochs=2, **base)
    with pytest.raises(ValueError, match=r"lr: .* -> 0\.3"):
        compare(tmp_path, ["gn"], [0], epochs=1, lr=0.3, **base)
    summary = compare(tmp_path, ["gn"], [0], epochs=1, **base)  # same settings: reused
    assert summary["failures"] == {}


def test_classes_keeps_only_those_labels_relabelled_in_order(fake_cifar):
    data = loop.build_data(tiny(fake_cifar, classes="7,2-3", probe=0))
    assert data.num_classes == 3
    labels = torch.cat([y for _, y in data.train])
    assert sorted(labels.unique().tolist()) == [0, 1, 2]
    assert len(labels) == 3 * 20  # 20 training images per class in the fake set
    full = loop.build_data(tiny(fake_cifar, probe=0))
    first = torch.cat([x for x, y in data.test])[torch.cat([y for _, y in data.test]) == 0]
    every7 = torch.cat([x for x, y in full.test])[torch.cat([y for _, y in full.test]) == 7]
    assert torch.equal(first, every7)  # label 0 of the task is class 7, images unchanged


def test_classes_is_checked_against_the_data(fake_cifar):
    with pytest.raises(ValueError, match="classes"):
        loop.build_data(tiny(fake_cifar, classes="8-11"))
