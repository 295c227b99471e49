import pytest
import torch

from proxynorm import fold
from proxynorm.checkpoint import save_model
from proxynorm.cli import main
from proxynorm.conversion.export import export_model
from proxynorm.layers import ProxyNormAct
from proxynorm.layers.pn.folded import FoldedProxyAct
from proxynorm.models import create_model


def _perturbed(name, spec, **kw):
    torch.manual_seed(0)
    model = create_model(name, norm=spec, **kw)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".act." in n or n.startswith("norm."):
                p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.mark.parametrize(
    "name,spec,kw,size",
    [
        ("resnet20", "gn+pn", {"groups": 8}, 32),
        ("resnet20", "ln+pn", {"act": "silu"}, 32),
        ("resnet20", "bn+pn", {}, 32),
        ("efficientnet_b0", "gn+pn", {"num_classes": 10}, 64),
    ],
)
def test_folded_matches_unfolded_and_removes_every_pn(name, spec, kw, size):
    model = _perturbed(name, spec, **kw)
    folded, report = fold(model)
    assert not any(isinstance(m, ProxyNormAct) for m in folded.modules())
    n = sum(isinstance(m, ProxyNormAct) for m in model.modules())
    assert len(report.folded) == n == sum(isinstance(m, FoldedProxyAct) for m in folded.modules())
    assert report.shifts_into  # the last norm's shift goes through pooling into the classifier
    x = torch.randn(4, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-5, atol=1e-5)
    assert any(isinstance(m, ProxyNormAct) for m in model.modules())  # original untouched


def test_torchscript_export_of_a_folded_model(tmp_path):
    model = _perturbed("resnet20", "gn+pn", groups=8)
    x = torch.randn(2, 3, 32, 32)
    path = export_model(model, tmp_path / "m.pt", x, "torchscript")
    loaded = torch.jit.load(str(path))
    other = torch.randn(3, 3, 32, 32)  # another batch size than the traced example
    with torch.no_grad():
        torch.testing.assert_close(loaded(other), model(other), rtol=1e-5, atol=1e-5)


def test_onnx_export_of_a_folded_resnet20_runs_in_onnxruntime(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    model = _perturbed("resnet20", "gn+pn", groups=8)
    ckpt = tmp_path / "checkpoint.pt"
    save_model(ckpt, model)
    assert main(["export", "--checkpoint", str(ckpt), "--format", "onnx"]) == 0
    session = ort.InferenceSession(str(tmp_path / "checkpoint.onnx"))
    x = torch.randn(5, 3, 32, 32)  # another batch size than the export's example
    (logits,) = session.run(None, {"images": x.numpy()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(logits), model(x), rtol=1e-4, atol=1e-4)


def test_torch_compile_of_gn_pn_resnet20_matches_eager():
    model = _perturbed("resnet20", "gn+pn", groups=8)
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, backend="aot_eager")
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x), rtol=1e-5, atol=1e-5)
