"""The opt-in C++ GN+PN kernel against the reference composition and the Python fused path.

It is built once per test session (about a minute, cached under ~/.cache/torch_extensions). If it
cannot be built here (no C++ compiler), the tests that need it skip and say why; the fallback
tests below run regardless.
"""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.autograd import gradcheck

from proxynorm.layers.activation import get_act
from proxynorm.layers.pn import cpp as cpp_kernel
from proxynorm.layers.pn.fused import fused_proxy_norm_act
from proxynorm.layers.pn.reference import proxy_norm_act, proxy_quantiles
from proxynorm.models import create_model
from tests.layers.reference import assert_same_values_and_gradients


@pytest.fixture(scope="module")
def built():
    saved = dict(cpp_kernel._state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok = cpp_kernel.use_cpp_kernel(True)
    if not ok:
        cpp_kernel._state.update(saved)
        pytest.skip(f"the C++ kernel could not be built here: {cpp_kernel.cpp_kernel_error()}")
    cpp_kernel.use_cpp_kernel(False)
    yield
    cpp_kernel._state.update(saved)


@pytest.fixture
def kernel(built):
    cpp_kernel.use_cpp_kernel(True)
    yield
    cpp_kernel.use_cpp_kernel(False)


def _inputs(shape=(3, 6, 4, 5), affine=True, dtype=torch.float64, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    c = shape[1]

    def r(scale, shift=0.0):
        return (shift + scale * torch.randn(c, generator=g, dtype=dtype)).requires_grad_()

    x = 2 * torch.randn(*shape, generator=g, dtype=dtype)
    if channels_last:
        fmt = torch.channels_last if x.dim() == 4 else torch.channels_last_3d
        x = x.contiguous(memory_format=fmt)
    proxy = (r(0.2), r(0.2)) if affine else (None, None)
    return x.requires_grad_(), r(0.3, 1.0), r(0.3), *proxy


def _node(out):
    return out.grad_fn.name()  # "GroupNormProxyAct" for the kernel's C++ node


@pytest.mark.parametrize("act", ["relu", "identity"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize(
    "shape,groups,cl",
    [
        ((3, 6, 4, 5), 2, False),
        ((3, 6, 4, 5), 3, True),
        ((4, 6, 40, 40), 3, True),  # channels_last: blocks of whole rows, folds, last rows
        ((3, 6, 4, 5), 1, False),
        ((5, 6), 6, False),
        ((2, 6, 7), 3, False),
        ((2, 6, 3, 4, 2), 2, True),  # channels_last_3d
    ],
)
def test_kernel_matches_reference_float64(kernel, act, affine, scale, shape, groups, cl):
    q = proxy_quantiles(32)
    args = _inputs(shape, affine, channels_last=cl)
    x_is_4d = len(shape) == 4
    y = F.group_norm(args[0], groups, eps=1e-5)
    ref = proxy_norm_act(y, *args[1:], act=act, eps=0.03, scale=scale, quantiles=q)
    out = fused_proxy_norm_act(*args, q, get_act(act), 0.03, scale, groups, 1e-5)
    assert "GroupNormProxyAct" in _node(out)  # the kernel ran, not the Python Function
    assert_same_values_and_gradients(out, ref, args)
    if cl and x_is_4d:
        assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("act", ["relu", "identity"])
def test_kernel_closed_form_at_edge_parameters(kernel, act):
    # gamma = 0, negative and tiny gammas, |beta| >> |gamma| (all quantiles on one side of the
    # kink, where a one-pass variance would cancel), and unsorted quantiles.
    q = proxy_quantiles(64)[torch.randperm(64, generator=torch.Generator().manual_seed(0))]
    x = torch.randn(2, 8, 3, 3, dtype=torch.float64, requires_grad=True)
    w = torch.tensor([0.0, -1.5, 1e-9, -1e-9, 2.0, 0.7, -0.3, 1.0], dtype=torch.float64)
    b = torch.tensor([0.5, 0.2, -0.1, 0.1, 60.0, -60.0, 1e-3, 0.0], dtype=torch.float64)
    pw, pb = 0.1 * torch.randn(8, dtype=torch.float64), 0.1 * torch.randn(8, dtype=torch.float64)
    args = [x] + [t.requires_grad_() for t in (w, b, pw, pb)]
    y = F.group_norm(x, 4, eps=1e-5)
    ref = proxy_norm_act(y, *args[1:], act=act, eps=0.03, scale=True, quantiles=q)
    out = fused_proxy_norm_act(*args, q, get_act(act), 0.03, True, 4, 1e-5)
    assert "GroupNormProxyAct" in _node(out)
    assert_same_values_and_gradients(out, ref, args, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("act", ["relu", "identity"])
@pytest.mark.parametrize("scale", [True, False])
def test_gradcheck_kernel(kernel, act, scale):
    q = proxy_quantiles(16)
    x, w, b, pw, pb = _inputs((2, 4, 3, 3), seed=1)

    def f(*a):
        return fused_proxy_norm_act(*a, q, get_act(act), 0.03, scale, 2, 1e-5)

    assert "GroupNormProxyAct" in _node(f(x, w, b, pw, pb))
    assert gradcheck(f, (x, w, b, pw, pb))


def test_kernel_training_step_matches_python_path(built):
    # A whole gn+pn resnet20 step in float64: same loss and gradients as the Python fused path.
    # (In float32 the two differ at ReLU kinks: m, r rounded differently flip single mask entries,
    # as any two float32 implementations do; the kernel's proxy statistics are in double.)
    torch.manual_seed(0)
    model = create_model("resnet20", norm="gn+pn", groups=4, num_classes=10).double().train()
    x, y = torch.randn(4, 3, 32, 32, dtype=torch.float64), torch.randint(0, 10, (4,))
    results = []
    for on in (False, True):
        cpp_kernel.use_cpp_kernel(on)
        model.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    cpp_kernel.use_cpp_kernel(False)
    (l0, g0), (l1, g1) = results
    torch.testing.assert_close(l1, l0, rtol=0, atol=1e-12)
    for a, b in zip(g0, g1, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-10)


def test_kernel_masks_exactly_where_the_output_is_clamped(kernel):
    # Float32: the ReLU mask in backward compares with the same -m r the forward clamped at.
    q = proxy_quantiles(256).float()
    x, w, b, pw, pb = _inputs((8, 16, 6, 6), dtype=torch.float32, seed=3)
    out = fused_proxy_norm_act(x, w, b, pw, pb, q, get_act("relu"), 0.03, True, 4, 1e-5)
    gx, gw = torch.autograd.grad(out, (x, w), torch.ones_like(out))
    cpp_kernel.use_cpp_kernel(False)
    out2 = fused_proxy_norm_act(x, w, b, pw, pb, q, get_act("relu"), 0.03, True, 4, 1e-5)
    gx2, gw2 = torch.autograd.grad(out2, (x, w), torch.ones_like(out2))
    torch.testing.assert_close(out, out2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gw, gw2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(gx, gx2, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize(
    "case",
    ["silu", "float16", "bfloat16", "no groups", "float64 params on float32 x", "compile"],
)
def test_kernel_is_used_only_where_it_computes_the_same(kernel, case):
    q = proxy_quantiles(32)
    act, groups = "relu", 2
    x, w, b, pw, pb = _inputs(dtype=torch.float32)
    if case == "silu":
        act = "silu"
    elif case in ("float16", "bfloat16"):
        x = x.detach().to(getattr(torch, case)).requires_grad_()
    elif case == "no groups":
        groups = None
    elif case == "float64 params on float32 x":
        w = w.detach().double().requires_grad_()
    if case == "compile":
        fn = torch.compile(
            lambda *a: fused_proxy_norm_act(*a, q, get_act(act), 0.03, True, groups, 1e-5),
            backend="eager",
            fullgraph=True,
        )
        out = fn(x, w, b, pw, pb)  # traced through the Python Function: no graph break
        assert "GroupNormProxyAct" not in _node(out)
        return
    out = fused_proxy_norm_act(x, w, b, pw, pb, q, get_act(act), 0.03, True, groups, 1e-5)
    assert "GroupNormProxyAct" not in _node(out) and out.grad_fn is not None


def test_build_failure_warns_and_keeps_the_python_path(monkeypatch):
    import torch.utils.cpp_extension as ext

    def fail(**kwargs):
        raise RuntimeError("Error building extension 'proxynorm_gn_pn'\nno compiler")

    monkeypatch.setattr(ext, "load", fail)
    monkeypatch.setattr(cpp_kernel, "_state", {"wanted": False, "module": None, "error": None})
    with pytest.warns(RuntimeWarning, match="could not be built .*no compiler"):
        assert cpp_kernel.use_cpp_kernel(True) is False
    assert "no compiler" in cpp_kernel.cpp_kernel_error()
    x, w, b, pw, pb = _inputs(dtype=torch.float32)
    out = fused_proxy_norm_act(x, w, b, pw, pb, proxy_quantiles(32), get_act("relu"), 0.03,
                               True, 2, 1e-5)  # fmt: skip
    assert "GroupNormProxyAct" not in _node(out)


def test_bench_times_the_kernel_beside_the_python_path(built):
    from proxynorm.bench import bench_models

    rows = bench_models(
        "resnet20", batch=1, groups=2, repeats=1, warmup=0, width_mult=0.25, cpp=True
    )
    assert {"gn+pn (fused)", "gn+pn (C++)"} <= set(rows)
    saved = rows["gn+pn (C++)"]["saved_mib"]
    assert saved == pytest.approx(rows["gn+pn (fused)"]["saved_mib"], rel=0.05)
    assert not cpp_kernel._state["wanted"]  # switched on for that variant's calls only


def test_kernel_refuses_double_backward_instead_of_a_silently_wrong_one(kernel):
    x, w, b, pw, pb = _inputs()
    out = fused_proxy_norm_act(x, w, b, pw, pb, proxy_quantiles(32), get_act("relu"), 0.03,
                               True, 2, 1e-5)  # fmt: skip
    with pytest.raises(RuntimeError, match="no double backward"):
        torch.autograd.grad(out.sum(), x, create_graph=True)  # even with a constant grad_output
    out.sum().backward()  # first-order backward is unaffected


def test_environment_records_whether_the_kernel_is_in_use(built):
    from proxynorm.environment import environment

    cpp_kernel.use_cpp_kernel(False)
    assert environment()["pn_cpp_kernel"] is False
    cpp_kernel.use_cpp_kernel(True)
    try:
        assert environment()["pn_cpp_kernel"] is True
    finally:
        cpp_kernel.use_cpp_kernel(False)
