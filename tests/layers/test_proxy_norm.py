import pytest
import torch
from torch.autograd import gradcheck

from proxynorm.functional import proxy_moments, proxy_norm_act, proxy_quantiles
from proxynorm.layers import ProxyNormAct
from tests.layers.reference import reference_pn, reference_quantiles

ACTS = ["relu", "silu", "gelu", "leaky_relu", "identity"]


def test_quantiles_are_normal_quantiles_in_float64():
    q = proxy_quantiles(256)
    assert q.dtype == torch.float64 and q.shape == (256,)
    probs = torch.special.ndtr(q)
    expected = (torch.arange(256, dtype=torch.float64) + 0.5) / 256
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-13)
    torch.testing.assert_close(q, reference_quantiles(256), rtol=0, atol=1e-12)
    torch.testing.assert_close(q, -q.flip(0), rtol=0, atol=1e-12)  # symmetric


def _random_params(c, dtype=torch.float64):
    g = torch.Generator().manual_seed(1)
    return (
        1 + 0.5 * torch.randn(c, generator=g, dtype=dtype),
        0.5 * torch.randn(c, generator=g, dtype=dtype),
        0.3 * torch.randn(c, generator=g, dtype=dtype),
        0.3 * torch.randn(c, generator=g, dtype=dtype),
    )


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("proxy_affine", [True, False])
@pytest.mark.parametrize("scale", [True, False])
def test_module_matches_spec_formula_float64(act, proxy_affine, scale):
    c = 6
    pn = ProxyNormAct(c, act=act, proxy_affine=proxy_affine, scale=scale, dtype=torch.float64)
    gamma, beta, gamma_t, beta_t = _random_params(c)
    with torch.no_grad():
        pn.weight.copy_(gamma)
        pn.bias.copy_(beta)
        if proxy_affine:
            pn.proxy_weight.copy_(gamma_t)
            pn.proxy_bias.copy_(beta_t)
    y = torch.randn(3, c, 5, 4, dtype=torch.float64)
    out = pn(y)
    ref = reference_pn(
        y,
        gamma,
        beta,
        gamma_t if proxy_affine else None,
        beta_t if proxy_affine else None,
        act,
        scale=scale,
    )
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ["relu", "silu", "gelu"])
def test_functional_matches_module_on_2d_input(act):
    c = 5
    gamma, beta, gamma_t, beta_t = _random_params(c)
    y = torch.randn(7, c, dtype=torch.float64)
    out = proxy_norm_act(y, gamma, beta, gamma_t, beta_t, act=act, n_samples=100)
    ref = reference_pn(y, gamma, beta, gamma_t, beta_t, act, n=100)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("act", ["relu", "silu", "gelu"])
@pytest.mark.parametrize("scale", [True, False])
def test_gradcheck_all_inputs(act, scale):
    c = 3
    params = [p.clone().requires_grad_() for p in _random_params(c)]
    y = torch.randn(2, c, 3, 3, dtype=torch.float64, requires_grad=True)

    def f(y, w, b, pw, pb):
        return proxy_norm_act(y, w, b, pw, pb, act=act, n_samples=32, scale=scale)

    assert gradcheck(f, (y, *params), eps=1e-6, atol=1e-7)


def test_gradients_flow_through_proxy_moments():
    """dL/dγ must include the proxy path: compare against the main path alone."""
    c = 4
    pn = ProxyNormAct(c, dtype=torch.float64)
    y = torch.randn(8, c, 4, 4, dtype=torch.float64)
    pn(y).sum().backward()
    grad_full = pn.weight.grad.clone()
    for p in (pn.proxy_weight, pn.proxy_bias):
        assert p.grad is not None and p.grad.abs().sum() > 0
    mean, var = (m.detach() for m in pn.proxy_moments())
    pn.weight.grad = None
    z = torch.relu(pn.weight.view(1, -1, 1, 1) * y + pn.bias.view(1, -1, 1, 1))
    ((z - mean.view(1, -1, 1, 1)) / torch.sqrt(var + 0.03).view(1, -1, 1, 1)).sum().backward()
    assert not torch.allclose(grad_full, pn.weight.grad)


@pytest.mark.parametrize("act", ["relu", "silu", "gelu"])
def test_theorem3_outputs_channelwise_normalized(act):
    """METHOD.md §4, Theorem 3: y ~ N(0, 1), β~ = γ~ = 0 => mean 0, var Var/(Var + eps)."""
    c = 8
    pn = ProxyNormAct(c, act=act, dtype=torch.float64)
    with torch.no_grad():  # the paper's random-net setting: γ ~ N(1, 0.2²), β ~ N(0, 0.2²)
        pn.weight.copy_(1 + 0.2 * torch.randn(c, dtype=torch.float64))
        pn.bias.copy_(0.2 * torch.randn(c, dtype=torch.float64))
    y = torch.randn(64, c, 64, 64, dtype=torch.float64)  # 262k samples per channel
    with torch.no_grad():
        out = pn(y)
        _, proxy_var = pn.proxy_moments()
    mean = out.mean(dim=(0, 2, 3))
    var = out.var(dim=(0, 2, 3), correction=0)
    expected = proxy_var / (proxy_var + pn.eps)
    assert mean.abs().max() < 0.01, mean
    torch.testing.assert_close(var, expected, rtol=0.02, atol=0)
    assert (expected < 1).all() and (expected > 0.5).all()


def test_scale_false_subtracts_proxy_mean_only():
    pn = ProxyNormAct(4, scale=False)
    y = torch.randn(2, 4, 3, 3)
    mean, _ = pn.proxy_moments()
    torch.testing.assert_close(pn(y), torch.relu(y) - mean.view(1, -1, 1, 1))


def test_layers_share_one_quantile_tensor_that_nobody_edits_for_them():
    """One quantile tensor per (n, device) for all layers (one graph input under torch.compile,
    not one per layer); a layer given its own keeps it; an in-place edit of the shared tensor
    is never handed to a layer built later. (An n no other test uses: the edit below is
    process-wide for the layers holding that tensor.)"""
    a, b = ProxyNormAct(4, n_samples=37), ProxyNormAct(8, act="silu", n_samples=37)
    c = ProxyNormAct(4)
    assert a.quantiles is b.quantiles and a.quantiles is not c.quantiles
    torch.testing.assert_close(a.quantiles, proxy_quantiles(37), rtol=0, atol=0)
    assert a.half().quantiles is b.quantiles  # .to() keeps sharing, and float64
    own = proxy_quantiles(37).flip(0).neg()
    b.quantiles = own
    assert b.quantiles is own and ProxyNormAct(3, n_samples=37).quantiles is a.quantiles
    a.quantiles.mul_(2.0)  # edits a's (and every layer's holding it): documented, not advised
    fresh = ProxyNormAct(3, n_samples=37)
    assert fresh.quantiles is not a.quantiles
    torch.testing.assert_close(fresh.quantiles, proxy_quantiles(37), rtol=0, atol=0)
    assert ProxyNormAct(5, n_samples=37).quantiles is fresh.quantiles


def test_quantiles_on_meta_or_in_inference_mode_are_never_shared():
    """A layer built on the meta device (then ``to_empty``) or in inference mode works, and
    never hands its quantile tensor to layers built normally (an inference tensor cannot be
    saved for backward)."""
    meta = ProxyNormAct(4, n_samples=38, device="meta")
    assert meta.quantiles.is_meta and ProxyNormAct(4, n_samples=38, device="meta").quantiles.is_meta
    meta.to_empty(device="cpu").reset_parameters()
    torch.testing.assert_close(meta.quantiles, proxy_quantiles(38), rtol=0, atol=0)
    with torch.inference_mode():
        frozen = ProxyNormAct(4, n_samples=39)
    assert frozen.quantiles.is_inference()
    layer = ProxyNormAct(4, n_samples=39)
    assert not layer.quantiles.is_inference() and layer.quantiles is not frozen.quantiles
    x = torch.randn(2, 4, 3, 3, requires_grad=True)
    layer(x).sum().backward()  # saves the quantiles for backward
    assert x.grad is not None


def test_parameters_and_buffers():
    pn = ProxyNormAct(5)
    names = dict(pn.named_parameters())
    assert set(names) == {"weight", "bias", "proxy_weight", "proxy_bias"}
    assert (pn.weight == 1).all() and (pn.bias == 0).all()
    assert (pn.proxy_weight == 0).all() and (pn.proxy_bias == 0).all()
    assert "quantiles" not in pn.state_dict()  # non-persistent
    assert set(dict(ProxyNormAct(5, proxy_affine=False).named_parameters())) == {"weight", "bias"}
    pn.half()
    assert pn.quantiles.dtype == torch.float64  # not rounded by .half()
    assert pn.weight.dtype == torch.float16
    pn.weight.data.fill_(3.0)
    pn.reset_parameters()
    assert (pn.weight == 1).all()
    assert "act=relu" in repr(pn) and "eps=0.03" in repr(pn)


def test_any_callable_activation():
    y = torch.randn(2, 3, 4, 4)
    by_name = ProxyNormAct(3, act="silu")(y)
    torch.testing.assert_close(ProxyNormAct(3, act=torch.nn.SiLU)(y), by_name)
    torch.testing.assert_close(ProxyNormAct(3, act=torch.nn.SiLU())(y), by_name)
    torch.testing.assert_close(ProxyNormAct(3, act=lambda t: t * torch.sigmoid(t))(y), by_name)
    torch.testing.assert_close(ProxyNormAct(3, act="swish")(y), by_name)


def test_statistics_float32_and_output_dtype_for_bfloat16_input():
    pn = ProxyNormAct(4)
    y = torch.randn(2, 4, 3, 3).bfloat16()
    out = pn(y)
    assert out.dtype == torch.bfloat16
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mean, var = pn.proxy_moments()
        out_autocast = pn(y)
    assert mean.dtype == torch.float32 and var.dtype == torch.float32
    assert out_autocast.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), pn(y.float()), atol=0.05, rtol=0.02)


def test_proxy_moments_converge_to_gaussian_moments():
    """Quantile moments of ReLU(N(0, 1)) approach the exact ones (1/sqrt(2π), 1/2 − 1/(2π)),
    within 1% at n = 256 (the paper's n) and closer as n grows."""
    w, b = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    exact_mean = 1 / (2 * torch.pi) ** 0.5
    exact_var = 0.5 - exact_mean**2
    errors = []
    for n in (64, 256, 4096):
        mean, var = proxy_moments(w, b, None, None, "relu", proxy_quantiles(n))
        errors.append((abs(mean.item() - exact_mean), abs(var.item() - exact_var) / exact_var))
    assert errors[1][0] < 1e-3 and errors[1][1] < 1e-2
    assert errors[0] > errors[1] > errors[2]


@pytest.mark.parametrize("act", ["relu", "silu", "leaky_relu"])
@pytest.mark.parametrize("scale", [True, False])
def test_inference_stats_are_the_eval_mode_constants(act, scale):
    """``(m, r)`` from :meth:`inference_stats` (fused statistics for relu/silu, proxy moments
    for other φ) reproduce eval-mode forward as ``(φ(γ y + β) − m) · r``."""
    c = 5
    pn = ProxyNormAct(c, act=act, scale=scale, dtype=torch.float64).eval()
    with torch.no_grad():
        params = (pn.weight, pn.bias, pn.proxy_weight, pn.proxy_bias)
        for p, v in zip(params, _random_params(c), strict=True):
            p.copy_(v)
    m, r = pn.inference_stats()
    mean, var = pn.proxy_moments()
    torch.testing.assert_close(m, mean, rtol=1e-12, atol=1e-12)
    expected_r = torch.rsqrt(var + pn.eps) if scale else torch.ones(c, dtype=torch.float64)
    torch.testing.assert_close(r, expected_r, rtol=1e-12, atol=1e-12)
    y = torch.randn(2, c, 3, 3, dtype=torch.float64)
    view = (1, c, 1, 1)
    manual = (pn.act_fn(pn.weight.view(view) * y + pn.bias.view(view)) - m.view(view)) * r.view(
        view
    )
    torch.testing.assert_close(pn(y), manual, rtol=1e-12, atol=1e-12)
