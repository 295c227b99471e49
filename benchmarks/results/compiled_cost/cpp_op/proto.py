"""The C++ GN+PN kernel as two ops registered in C++ (``TORCH_LIBRARY``), so that
``torch.compile`` calls it without Python in between: ``proxynorm::gn_pn_forward`` (CPU kernel,
and an autograd kernel in C++ whose backward calls) ``proxynorm::gn_pn_backward``. Only their
shape functions are Python, and they run only while tracing. AOTAutograd traces the C++ autograd
kernel like a built-in op's: the forward graph calls ``gn_pn_forward``, the backward graph
``gn_pn_backward``.

Not part of the package: the prototype behind docs/PERFORMANCE.md's "Tried and dropped: the C++
kernel as C++-registered ops". ``build()`` applies ``gn_pn_op.diff`` to a copy of
``proxynorm/layers/csrc/gn_pn.cpp`` (needs ``git`` and a C++ compiler) and loads it.
"""

import subprocess
import tempfile
from pathlib import Path

import torch
from torch import nn
from torch._prims_common import suggest_memory_format

from proxynorm.layers import ProxyNormAct, norm_act
from proxynorm.layers.group_norm import GroupNormAct

HERE = Path(__file__).resolve().parent
SOURCE = HERE.parents[3] / "proxynorm" / "layers" / "csrc" / "gn_pn.cpp"


def build() -> None:
    """Patch, compile and load the ops, and register their shape functions."""
    from torch.utils.cpp_extension import load

    work = Path(tempfile.mkdtemp())
    dst = work / "proxynorm" / "layers" / "csrc" / "gn_pn.cpp"
    dst.parent.mkdir(parents=True)
    dst.write_bytes(SOURCE.read_bytes())
    subprocess.run(["git", "apply", str(HERE / "gn_pn_op.diff")], cwd=work, check=True)
    omp = ["-fopenmp"] if torch.backends.openmp.is_available() else []
    load(name="proxynorm_gn_pn_op", sources=[str(dst)], extra_cflags=["-O3", *omp],
         extra_ldflags=omp)  # fmt: skip
    torch.library.register_fake("proxynorm::gn_pn_forward")(_forward_fake)
    torch.library.register_fake("proxynorm::gn_pn_backward")(_backward_fake)


def _layout(x):  # the C++ layout(): 4-D channels_last as given, everything else contiguous
    cl = x.dim() == 4 and suggest_memory_format(x) == torch.channels_last
    return torch.channels_last if cl else torch.contiguous_format


def _forward_fake(x, weight, bias, pw, pb, q, relu, proxy_eps, scale, groups, eps):
    stats = x.new_empty(x.shape[0], groups)  # GroupNorm's mean and rstd
    c = x.shape[1]
    out = torch.empty_like(x, memory_format=_layout(x))
    return out, x.new_empty(c), x.new_empty(c), stats, torch.empty_like(stats)


def _backward_fake(g, x, weight, bias, pw, pb, q, wr, lo, out, mean, rstd, relu, proxy_eps, scale,
                   groups, need):  # fmt: skip
    like = (x, weight, weight, weight, weight)  # dx, dγ, dβ, dγ~, dβ~ (empty where not needed)
    return tuple(
        (torch.empty_like(t, memory_format=_layout(t)) if i == 0 else t.new_empty(t.shape))
        if need[i] else t.new_empty(0)
        for i, t in enumerate(like)
    )  # fmt: skip


class OpLayer(nn.Module):
    """A GN+PN(ReLU) norm-act layer computed by ``proxynorm::gn_pn_forward`` (same parameters)."""

    def __init__(self, layer: GroupNormAct):
        super().__init__()
        assert isinstance(layer.act, ProxyNormAct) and layer.act.act_name == "relu"
        self.layer = layer

    def forward(self, x):
        a, n = self.layer.act, self.layer.norm
        return torch.ops.proxynorm.gn_pn_forward(
            x, a.weight, a.bias, a.proxy_weight, a.proxy_bias, a.quantiles, True, a.eps, a.scale,
            n.groups, n.eps,
        )[0]  # fmt: skip


def wrap(model: nn.Module) -> nn.Module:
    """Every GN+PN(ReLU) layer of ``model`` replaced by an :class:`OpLayer` around it."""
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, GroupNormAct) and isinstance(child.act, ProxyNormAct):
                setattr(parent, name, OpLayer(child))
    return model


def check() -> dict[str, float]:
    """Largest float64 differences to the Python path (values, input and parameter gradients) of
    a 3-layer stack, eager and compiled with ``fullgraph=True``, contiguous and channels_last."""
    torch.manual_seed(0)
    ref = nn.Sequential(*[norm_act("gn+pn", 16, groups=8) for _ in range(3)]).double()
    with torch.no_grad():
        for p in ref.parameters():
            p.add_(0.3 * torch.randn_like(p))
    op = nn.Sequential(*[OpLayer(layer) for layer in ref])
    worst = {}
    for fmt in (torch.contiguous_format, torch.channels_last):
        x = torch.randn(2, 16, 5, 5, dtype=torch.float64).contiguous(memory_format=fmt)
        x.requires_grad_()
        results = []
        for model in (ref, op, torch.compile(op, fullgraph=True)):
            y = model(x)
            (y * torch.arange(y.numel(), dtype=y.dtype).view_as(y).sin()).sum().backward()
            results.append([y.detach(), x.grad, *[p.grad for p in ref.parameters()]])
            assert y.stride() == results[0][0].stride()
            x.grad = None
            for p in ref.parameters():
                p.grad = None
        for name, got in zip(("eager", "compiled"), results[1:], strict=True):
            key = f"{name} {'channels_last' if fmt == torch.channels_last else 'contiguous'}"
            pairs = zip(got, results[0], strict=True)
            worst[key] = max((a - b).abs().max().item() for a, b in pairs)
    return worst
