"""The fused PN Function against the reference composition of PyTorch ops."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck

from proxynorm.bench import saved_bytes, set_fused
from proxynorm.layers import ProxyNormAct, kernels, norm_act
from proxynorm.layers.activation import ACTIVATIONS, get_act
from proxynorm.layers.pn import fused as fpn
from proxynorm.layers.pn.fused import fused_proxy_norm_act
from proxynorm.layers.pn.reference import proxy_norm_act, proxy_quantiles
from proxynorm.models import create_model
from tests.layers.reference import assert_same_values_and_gradients

# Every activation of the registry, and non-default parameters of the parametrized ones.
ACTS = [*ACTIVATIONS, "gelu_tanh", nn.LeakyReLU(0.2), nn.LeakyReLU(-0.1), nn.ELU(0.5)]


def _inputs(c=6, affine=True, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(scale, shift=0.0):
        return (shift + scale * torch.randn(c, generator=g, dtype=dtype)).requires_grad_()

    x = torch.randn(3, c, 4, 5, generator=g, dtype=dtype).requires_grad_()
    proxy = (r(0.2), r(0.2)) if affine else (None, None)
    return x, r(0.3, 1.0), r(0.3), *proxy


def _reference(x, w, b, pw, pb, act, scale, groups, q):
    y = x if groups is None else F.group_norm(x, groups, eps=1e-5)
    return proxy_norm_act(y, w, b, pw, pb, act=act, eps=0.03, scale=scale, quantiles=q)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("groups", [None, 1, 2, 6])
def test_fused_matches_reference_float64(act, affine, scale, groups):
    q = proxy_quantiles(32)
    args = _inputs(affine=affine)
    ref = _reference(*args, act, scale, groups, q)
    out = fused_proxy_norm_act(*args, q, get_act(act), 0.03, scale, groups, 1e-5)
    assert_same_values_and_gradients(out, ref, args)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("groups", [None, 2])
@pytest.mark.parametrize("scale", [True, False])
def test_gradcheck_fused_function(act, groups, scale):
    q = proxy_quantiles(16)
    x, w, b, pw, pb = _inputs(c=4, seed=1)
    x = x.detach()[:2, :, :3, :3].requires_grad_()

    def fn(x, w, b, pw, pb):
        return fused_proxy_norm_act(x, w, b, pw, pb, q, get_act(act), 0.03, scale, groups, 1e-5)

    assert gradcheck(fn, (x, w, b, pw, pb))


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("spec", ["gn+pn", "ln+pn", "bn+pn"])
def test_fused_layer_in_low_precision_matches_float32_reference(dtype, tol, spec):
    """On the same (rounded) input, the fused layer in ``dtype`` is within ``dtype``'s precision of
    the float32 reference (its statistics and ReLU mask are computed in float32)."""
    torch.manual_seed(0)
    act = "silu" if spec == "ln+pn" else "relu"
    fused = norm_act(spec, 16, act=act)
    with torch.no_grad():
        for p in fused.parameters():
            p.add_(0.2 * torch.randn_like(p))
    ref = set_fused(norm_act(spec, 16, act=act), False)
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(4, 16, 6, 6).to(dtype)
    xs = [x.clone().requires_grad_(), x.float().requires_grad_()]
    outs = [fused(xs[0]), ref(xs[1])]
    assert outs[0].dtype == dtype
    torch.testing.assert_close(outs[0].float(), outs[1], rtol=tol, atol=tol)
    grad = torch.randn_like(outs[1])
    outs[0].backward(grad.to(dtype))
    outs[1].backward(grad)
    torch.testing.assert_close(xs[0].grad.float(), xs[1].grad, rtol=tol, atol=tol)
    for p, r in zip(fused.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(p.grad, r.grad, rtol=tol, atol=tol * r.grad.abs().max())


def test_channels_last_and_2d_inputs():
    layer = norm_act("gn+pn", 8, groups=4)
    ref = set_fused(norm_act("gn+pn", 8, groups=4), False)
    x = torch.randn(2, 8, 5, 5)
    out = layer(x.contiguous(memory_format=torch.channels_last))
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, ref(x))
    x2 = torch.randn(7, 8)
    torch.testing.assert_close(layer(x2), ref(x2))


def test_fused_is_the_default_for_every_registered_activation_given_any_way():
    assert ProxyNormAct(4).uses_fused and "fused=True" in repr(ProxyNormAct(4))
    for act in ("leaky_relu", "relu6", "hardswish", nn.ReLU, nn.ReLU6(), F.hardswish, nn.Mish):
        assert ProxyNormAct(4, act=act).uses_fused, act
    assert not ProxyNormAct(4, fused=False).uses_fused
    clamp = lambda u: u.clamp(-1, 1)  # noqa: E731 (a callable the registry does not know)
    assert not ProxyNormAct(4, act=clamp).uses_fused
    with pytest.raises(ValueError, match="no fused path"):
        q = proxy_quantiles(8)
        fused_proxy_norm_act(torch.randn(2, 4), *torch.ones(2, 4), None, None, q, clamp)


def test_hook_on_the_norm_step_still_sees_y():
    layer = norm_act("gn+pn", 8, groups=2)
    seen = []
    layer.norm.register_forward_hook(lambda m, i, o: seen.append(o))
    x = torch.randn(2, 8, 3, 3)
    out = layer(x)
    torch.testing.assert_close(seen[0], F.group_norm(x, 2))
    torch.testing.assert_close(out, set_fused(layer, False)(x))


def test_saved_memory_pn_step_and_layer():
    """In a network (followed by a convolution, which saves its input), the fused PN step saves
    its input y beyond what the convolution saves: one input-sized tensor, like affine + ReLU."""
    x = torch.randn(16, 32, 8, 8).requires_grad_()
    size = x.numel() * x.element_size()
    small = 64 * 1024  # (C,)-sized parameters and statistics, quantiles, conv weight
    conv = torch.nn.Conv2d(32, 32, 1)

    def with_conv(layer):
        return saved_bytes(lambda: conv(layer(x)))

    base = saved_bytes(lambda: conv(x.detach().clone()))  # the conv's own saved input
    affine_relu = with_conv(norm_act("gn", 32).act)
    assert with_conv(ProxyNormAct(32)) <= base + size + small
    assert with_conv(ProxyNormAct(32)) <= affine_relu + small
    assert with_conv(ProxyNormAct(32, fused=False)) >= base + 2 * size
    # GN+PN saves the norm's input, like GN+ReLU (whose in-place ReLU output the conv shares).
    gn_relu = with_conv(norm_act("gn", 32, groups=8))
    gn_pn = with_conv(norm_act("gn+pn", 32, groups=8))
    gn_pn_ref = with_conv(set_fused(norm_act("gn+pn", 32, groups=8), False))
    assert gn_relu <= base + size + small and gn_pn <= gn_relu + small
    assert gn_pn_ref >= gn_pn + size


def test_saved_memory_of_a_resnet20_with_fused_gn_pn_is_that_of_bn():
    """The same input-sized tensors as BN; beyond them only per-group statistics (N x G, two
    float32 per group) and (C,)-sized vectors and the quantiles per layer."""
    batch = 8
    x = torch.randn(batch, 3, 32, 32)
    totals, layers = {}, 0
    for spec in ("bn", "gn+pn", "gn+pn (reference)"):
        model = create_model("resnet20", norm=spec.split()[0], width_mult=0.5)
        set_fused(model, "reference" not in spec)
        totals[spec] = saved_bytes(lambda m=model: m(x))
        layers = len(model.norm_act_layers())
    allowance = layers * (2 * 4 * batch * 8 + 16 * 1024)
    assert totals["gn+pn"] <= totals["bn"] + allowance
    assert totals["gn+pn (reference)"] >= 1.5 * totals["bn"]


def test_eval_caches_the_proxy_statistics(monkeypatch):
    import proxynorm.layers.pn.module as pn_module

    calls = []
    real = pn_module.proxy_statistics

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(pn_module, "proxy_statistics", counting)
    layer = norm_act("gn+pn", 8, groups=2).eval()
    x = torch.randn(2, 8, 3, 3)
    with torch.no_grad():
        first = layer(x)
        assert torch.equal(layer(x), first) and len(calls) == 1
        layer.act.weight.mul_(1.5)  # an in-place update (as an optimizer makes)
        changed = layer(x)
        assert len(calls) == 2 and not torch.equal(changed, first)
        layer.load_state_dict(layer.state_dict())  # the same values: the cache still holds
        layer(x)
        assert len(calls) == 2
        state = {k: v + 0.1 for k, v in layer.state_dict().items()}
        layer.load_state_dict(state)
        changed = layer(x)
        assert len(calls) == 3
    ref = set_fused(norm_act("gn+pn", 8, groups=2), False).eval()
    ref.load_state_dict(layer.state_dict())
    torch.testing.assert_close(changed, ref(x).detach())
    # Input gradients through a frozen model in eval mode (saliency maps) still work.
    frozen = layer.requires_grad_(False)
    xg = x.clone().requires_grad_()
    frozen(xg).sum().backward()
    assert xg.grad is not None and xg.grad.abs().sum() > 0
    layer.requires_grad_(True)
    layer.train()
    assert layer.act._stats_cache is None
    layer.eval()
    out = layer(x)  # gradients enabled and parameters require grad: no cache, a graph instead
    assert out.requires_grad and len(calls) == 3


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("scale", [True, False])
def test_one_pass_statistics_under_compile_match_the_reference_float64(monkeypatch, act, scale):
    """Under torch.compile the proxy moments are one shifted pass (sum and sum of squares of
    z~ − φ(B)); here that branch is taken eagerly, in float64, values and gradients."""
    monkeypatch.setattr(kernels, "compiling", lambda: True)
    q = proxy_quantiles(32)
    args = _inputs()
    ref = _reference(*args, act, scale, 2, q)
    out = fused_proxy_norm_act(*args, q, get_act(act), 0.03, scale, 2, 1e-5)
    assert_same_values_and_gradients(out, ref, args)


# (γ, β, γ~, β~) per channel: A = γ (1 + γ~) > 0, < 0 and = 0 (γ = 0, and γ~ = −1), with B
# = β + γ β~ inside the quantiles, outside them on both sides (every / no quantile active) and 0.
_RELU_CASES = [(1.0, 0.0, 0.0, 0.0), (1.3, 0.4, 0.2, -0.1), (-0.7, 0.5, 0.1, 0.3),
               (0.8, 9.0, 0.0, 0.0), (0.8, -9.0, 0.0, 0.0), (-2.0, 0.0, 0.0, 0.0),
               (0.0, 0.6, 0.5, 0.5), (0.0, -0.6, 0.5, 0.5), (0.5, 0.3, -1.0, 0.2)]  # fmt: skip


@pytest.mark.parametrize("scale", [True, False])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("shuffled", [False, True])
def test_relu_closed_form_under_compile_matches_the_reference_float64(
    monkeypatch, scale, affine, shuffled
):
    """Under torch.compile, ReLU's proxy statistics and their gradients come from the count and
    the sums of q and q² over the active quantiles (:func:`fpn._relu_sums`), with no C × n value
    kept. Every sign of A, B outside the quantiles on either side, and quantiles in any order."""
    monkeypatch.setattr(kernels, "compiling", lambda: True)
    q = proxy_quantiles(33)  # odd: one quantile is exactly 0, on the boundary where A = 1, B = 0
    if shuffled:
        q = q[torch.randperm(33, generator=torch.Generator().manual_seed(0))]
    w, b, pw, pb = (torch.tensor(col, dtype=torch.float64).requires_grad_()
                    for col in zip(*_RELU_CASES, strict=True))  # fmt: skip
    if not affine:
        pw = pb = None
    x = torch.randn(2, len(_RELU_CASES), 3, 3, dtype=torch.float64).requires_grad_()
    args = (x, w, b, pw, pb)
    ref = _reference(*args, "relu", scale, 3, q)
    out = fused_proxy_norm_act(*args, q, get_act("relu"), 0.03, scale, 3, 1e-5)
    assert_same_values_and_gradients(out, ref, [t for t in args if t is not None])


@pytest.mark.parametrize("forward_compiled", [True, False])
def test_backward_takes_the_forward_proxy_path_under_any_compile_state(
    monkeypatch, forward_compiled
):
    """Compiled autograd can trace the backward of an eager forward (and the reverse is possible
    in principle): the backward reads what the forward saved (ReLU's sums or the quantiles), not
    whether it is compiling now."""
    compiling = {"now": forward_compiled}
    monkeypatch.setattr(kernels, "compiling", lambda: compiling["now"])
    q = proxy_quantiles(32)
    args = _inputs()
    ref = _reference(*args, "relu", True, 2, q)
    out = fused_proxy_norm_act(*args, q, get_act("relu"), 0.03, True, 2, 1e-5)
    compiling["now"] = not forward_compiled
    assert_same_values_and_gradients(out, ref, args)


def test_relu_closed_form_passes_gradcheck(monkeypatch):
    monkeypatch.setattr(kernels, "compiling", lambda: True)
    q = proxy_quantiles(16)
    x, w, b, pw, pb = _inputs(c=4, seed=2)
    x = x.detach()[:2, :, :3, :3].requires_grad_()

    def fn(x, w, b, pw, pb):
        return fused_proxy_norm_act(x, w, b, pw, pb, q, get_act("relu"), 0.03, True, 2, 1e-5)

    assert gradcheck(fn, (x, w, b, pw, pb))


@pytest.mark.parametrize("act", ["relu", "silu", "gelu", "tanh", "hardswish"])
@pytest.mark.parametrize("beta", [0.0, -3.0, 50.0, 1e3])
@pytest.mark.parametrize("gamma", [1e-3, 1.0, -10.0])
def test_one_pass_statistics_are_as_accurate_as_two_passes_in_float32(
    monkeypatch, act, beta, gamma
):
    """The shift keeps the one-pass variance from cancelling: where the proxy is narrow and far
    from 0 (β = 1000, γ = 0.001) its error stays that of the eager two-pass formula."""
    q, a = proxy_quantiles(256), get_act(act)
    params = [torch.tensor([v]) for v in (gamma, beta, 0.3, -0.2)]
    exact = fpn.proxy_statistics(*(t.double() for t in params), q, a, 0.03, True, torch.float64)
    two = fpn.proxy_statistics(*params, q, a, 0.03, True)
    monkeypatch.setattr(kernels, "compiling", lambda: True)
    one = fpn.proxy_statistics(*params, q, a, 0.03, True)
    for o, t, e in zip(one, two, exact, strict=True):
        err_two = float((t.double() - e).abs() / e.abs().clamp_min(1e-3))
        err_one = float((o.double() - e).abs() / e.abs().clamp_min(1e-3))
        assert err_one <= max(2 * err_two, 2e-6), (err_one, err_two)


def test_torch_compile_has_no_graph_break_and_matches_eager():
    torch._dynamo.reset()
    model = create_model("resnet20", norm="gn+pn", width_mult=0.25)
    x = torch.randn(4, 3, 16, 16)
    explanation = torch._dynamo.explain(model)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    out = compiled(x)
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).square().sum().backward()
    for g, p in zip(grads, model.parameters(), strict=True):
        torch.testing.assert_close(g, p.grad, rtol=1e-5, atol=1e-5)


def test_autocast_keeps_statistics_in_float32():
    layer = norm_act("gn+pn", 8, groups=2)
    ref = set_fused(norm_act("gn+pn", 8, groups=2), False)
    x = torch.randn(2, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x.bfloat16())
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref(x.bfloat16().float()), rtol=2e-2, atol=2e-2)


def _edits():
    """Every way a user edits parameters, each applied to a layer after an eval forward."""

    def data(layer):
        layer.act.weight.data.mul_(3)

    def copy_no_grad(layer):
        with torch.no_grad():
            layer.act.bias.copy_(torch.linspace(-1, 1, layer.act.bias.numel()))

    def load(layer):
        layer.load_state_dict({k: v * 0.5 for k, v in layer.state_dict().items()})

    def optimizer_step(layer):
        opt = torch.optim.SGD(layer.parameters(), lr=0.5)
        layer.train()
        layer(torch.randn(4, 8, 5, 5)).square().sum().backward()
        opt.step()
        layer.eval()

    def to_double(layer):
        layer.double()

    def proxy_data(layer):
        layer.act.proxy_weight.data.add_(0.7)

    return [data, copy_no_grad, load, optimizer_step, to_double, proxy_data]


@pytest.mark.parametrize("spec", ["gn+pn", "bn+pn"])
@pytest.mark.parametrize("edit", _edits(), ids=lambda f: f.__name__)
def test_eval_cache_is_never_stale_whatever_edits_the_parameters(spec, edit):
    torch.manual_seed(0)
    kw = {"groups": 2} if spec == "gn+pn" else {}
    layer = norm_act(spec, 8, **kw).eval()
    x = torch.randn(3, 8, 5, 5)
    with torch.no_grad():
        layer(x)  # fills the cache
    edit(layer)
    fresh = norm_act(spec, 8, **kw).eval().to(layer.act.weight.dtype)
    fresh.load_state_dict(layer.state_dict())
    with torch.no_grad():
        xi = x.to(layer.act.weight.dtype)
        torch.testing.assert_close(layer(xi), fresh(xi), rtol=1e-6, atol=1e-6)


def test_jit_trace_of_an_eval_model_passes_its_check_and_backpropagates():
    # Parameters require grad (as after training): trace's own check run must see the same graph
    # (it used to: the Function with grad, traced ops without, and the check failed), and
    # backward through the trace must match eager.
    torch.manual_seed(0)
    model = create_model("resnet20", norm="gn+pn", groups=4, num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(model, x)  # check_trace=True
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=1e-6)
    traced(x).sum().backward()
    from_trace = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for a, b in zip(from_trace, (p.grad for p in model.parameters()), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
