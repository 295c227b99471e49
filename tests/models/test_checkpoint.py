import pytest
import torch

from proxynorm.checkpoint import load_checkpoint, load_model, save_model
from proxynorm.models import create_model


class Evil:
    def __reduce__(self):
        return (print, ("arbitrary code ran",))


def test_round_trip(tmp_path):
    model = create_model("efficientnet_b0", norm="gn+pn", width_mult=0.25).eval()
    save_model(tmp_path / "m.pt", model, epoch=7)
    loaded = load_model(tmp_path / "m.pt").eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
    assert load_checkpoint(tmp_path / "m.pt")["epoch"] == 7
    assert not list(tmp_path.glob("*.tmp"))


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"config": {"name": "resnet20"}, "model": {}, "x": Evil()}, path)
    with pytest.raises(ValueError, match="cannot load checkpoint"):
        load_checkpoint(path)


def test_unsaveable_config(tmp_path):
    model = create_model("resnet20", act=torch.nn.functional.relu, width_mult=0.25)
    with pytest.raises(ValueError, match="JSON-serializable"):
        save_model(tmp_path / "m.pt", model)
    with pytest.raises(ValueError, match="create_model"):
        save_model(tmp_path / "m.pt", torch.nn.Linear(2, 2))
