"""Pretrained weights: the mechanism on a small model written here (index, hash, errors), and
every shipped entry loaded and, when CIFAR-10 is in ../shared/data, its recorded test accuracy
checked to ±0.05 pp on the 10k test images."""

import json
from pathlib import Path

import pytest
import torch

from proxynorm.models import create_model, pretrained

CIFAR_ZIP = Path(__file__).resolve().parents[3] / "shared" / "data" / "cifar10-jpeg.zip"
SMALL = {"name": "resnet20", "norm": "gn+pn", "groups": 2, "width_mult": 0.25}


@pytest.fixture
def weights_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    return tmp_path


def ship_small(dest, seed=0, **config):
    torch.manual_seed(seed)
    config = {**SMALL, **config}
    model = create_model(**config)
    about = {"run": "tests", "test_acc": 10.0, "train_acc": 10.0, "commits": ["abc"]}
    return model, pretrained.ship(model.state_dict(), config, about, dest)


def test_pretrained_loads_the_shipped_state_and_records_its_origin(weights_dir):
    model, found = ship_small(weights_dir)
    loaded = create_model("resnet20", norm="gn+pn", pretrained=True)
    want, got = model.state_dict(), loaded.state_dict()
    assert want.keys() == got.keys()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert loaded.pretrained["commits"] == ["abc"] and "config" not in loaded.pretrained
    x = torch.randn(2, 3, 8, 8)
    model.eval(), loaded.eval()
    assert torch.equal(model(x), loaded(x))
    assert set(pretrained.available()) == {"resnet20/gn+pn"}
    # the spec is canonicalised: another spelling finds the same entry
    assert torch.equal(create_model("resnet20", norm="PN+GN", pretrained=True)(x), loaded(x))
    assert found["file"] == "resnet20-gn_pn.pt"


def test_missing_weights_name_what_exists(weights_dir):
    with pytest.raises(ValueError, match="none yet"):
        create_model("resnet20", norm="bn", pretrained=True)
    ship_small(weights_dir)
    for name, norm in (("resnet20", "bn"), ("resnet56", "gn+pn")):
        with pytest.raises(ValueError, match=r"no pretrained weights .*available: resnet20/gn\+pn"):
            create_model(name, norm=norm, pretrained=True)
    with pytest.raises(ValueError, match="unknown model"):
        create_model("resnet21", norm="gn+pn", pretrained=True)


def test_arguments_that_contradict_the_trained_architecture_are_refused(weights_dir):
    ship_small(weights_dir)
    with pytest.raises(ValueError, match=r"groups=8 \(trained with 2\)"):
        create_model("resnet20", norm="gn+pn", groups=8, pretrained=True)
    # the trained value itself is accepted
    create_model("resnet20", norm="gn+pn", groups=2, pretrained=True)


def test_weights_that_do_not_match_their_hash_are_refused(weights_dir):
    _, found = ship_small(weights_dir)
    path = weights_dir / found["file"]
    torch.save({k: v + 1 for k, v in torch.load(path).items()}, path)
    with pytest.raises(ValueError, match="sha256"):
        create_model("resnet20", norm="gn+pn", pretrained=True)
    path.unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        create_model("resnet20", norm="gn+pn", pretrained=True)


def test_shipped_weights_are_float32_and_reshipping_replaces_the_entry(weights_dir):
    torch.manual_seed(0)
    model = create_model(**SMALL).double()
    pretrained.ship(model.state_dict(), SMALL, {"test_acc": 1.0}, weights_dir)
    _, again = ship_small(weights_dir, seed=1)
    index = json.loads((weights_dir / "index.json").read_text())
    assert list(index) == ["resnet20/gn+pn"]
    assert index["resnet20/gn+pn"]["sha256"] == again["sha256"]
    state = torch.load(weights_dir / again["file"])
    assert all(v.dtype != torch.float64 for v in state.values())


SHIPPED = sorted(pretrained.available())


def test_the_package_ships_an_index():
    assert (pretrained.WEIGHTS_DIR / pretrained.INDEX).exists()


@pytest.mark.parametrize("key", SHIPPED)
def test_shipped_model_loads_and_keeps_its_recorded_test_accuracy(key):
    name, norm = key.split("/")
    model = create_model(name, norm=norm, pretrained=True)
    about = model.pretrained
    assert about["epochs"] and about["commits"] and 0 < about["test_acc"] <= 100
    if not CIFAR_ZIP.exists():
        pytest.skip(f"CIFAR-10 (JPEG) expected at {CIFAR_ZIP} to check the test accuracy")
    from proxynorm.data import labelled_batches
    from proxynorm.train.metrics import accuracy

    batches = labelled_batches("cifar10", CIFAR_ZIP, train=False, batch_size=500)
    assert accuracy(model, batches) == pytest.approx(about["test_acc"], abs=0.05)


def test_command_line_source_pretrained_names_model_and_norm(weights_dir):
    from proxynorm.checkpoint import resolve_model

    model, _ = ship_small(weights_dir)
    found, title = resolve_model(pretrained="resnet20/gn+pn")
    want, got = model.state_dict(), found.state_dict()
    assert all(torch.equal(want[k], got[k]) for k in want)
    assert title == "resnet20/gn+pn (pretrained, test 10.00%)"
    with pytest.raises(ValueError, match="available: resnet20/gn"):
        resolve_model(pretrained="resnet20/bn")
    with pytest.raises(ValueError, match="exactly one model source"):
        resolve_model(pretrained="resnet20/gn+pn", checkpoint="x.pt")
