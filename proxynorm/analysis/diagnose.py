"""``proxynorm.analysis.diagnose``: what normalization is doing inside any CNN.

The analysis of Labatie et al., NeurIPS 2021 (§3-§4; docs/METHOD.md §3-§4), applied to the model a
user has: for every normalization layer, in the order the forward pass runs them,

* the four-term **power decomposition** of its normalized pre-activations ``y`` (before the
  layer's affine): term (1) near 1 is channel-wise collapse (LN, GN in deep nets), terms (1), (2),
  (4) near 0 is lost instance variability (IN);
* the **channel-wise nonlinearity** of the activation that follows (``1 − corr(y_c, z_c)²``, 0
  when the layer is channel-wise linear and adds no capacity);
* **dead channels**: channels whose activation derivative is (near) zero, ``|φ'(u)| ≤ 1e-3``, on
  ≥ 99% of positions (ReLU and SiLU alike);
* **channel imbalance** (max / mean channel power of the output) and the **effective rank** of the
  output's channel covariance (``exp`` of the entropy of its normalized eigenvalues; over at most
  512 evenly spaced channels);
* for BatchNorm in eval mode, how far each batch's own statistics are from the running ones (the
  train/test discrepancy small batches cause), and for every layer its **batch dependence**
  measured directly: the change of one sample's output when its batch mates change (norm layers in
  training mode, everything else in eval mode).

Statistics are reduced inside forward hooks into per-channel (and C × C) accumulators, so memory
does not grow with the number of batches; no gradients are computed; hooks are always removed; the
model is never modified (a copy is used where running statistics would change).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from proxynorm.analysis.norm_layers import kind, norm_layers, standardized
from proxynorm.analysis.power import TERM_NAMES, PowerDecomposition
from proxynorm.analysis.theory import nonlinearity
from proxynorm.layers import NormAct
from proxynorm.layers.activation import Act, get_act

# Thresholds of the findings (each finding quotes the number it rests on).
COLLAPSE = 0.5  # term (1) share above this: channel-wise collapse
INSTANCE_LOSS = 1e-3  # terms (1) + (2) + (4) below this: instance variability removed (IN: 0)
LINEAR = 0.05  # nonlinearity ratio below this: channel-wise linear
DEAD = 0.05  # dead-channel fraction above this
IMBALANCE = 10.0  # max / mean channel power above this
LOW_RANK = 0.1  # effective rank / channels below this
BN_MISMATCH = 0.25  # mean |batch - running| statistic shift above this
BATCH_DEPENDENT = 1e-4  # relative output change above this
MAX_RANK_CHANNELS = 512
DEAD_GRAD = 1e-3


@dataclass
class _Acc:
    """Per-layer accumulators over all batches (C-sized, plus one C' x C' matrix)."""

    kind: str
    act: Act | None
    n: int = 0  # instances
    positions: int = 0  # instances x positions
    sums: dict[str, Tensor] = field(default_factory=dict)
    bn: list[tuple[float, float]] = field(default_factory=list)

    def add(self, key: str, value: Tensor) -> None:
        value = value.detach().double()
        self.sums[key] = self.sums[key] + value if key in self.sums else value.clone()


def _following_acts(model: nn.Module, layers: list[tuple[str, nn.Module]]) -> dict[str, Any]:
    """The activation applied right after each plain norm layer (from the traced graph; empty
    when the model cannot be traced)."""
    from torch import fx

    from proxynorm.conversion.fx import HolderTracer, activation_of, bn_holders

    try:
        graph = HolderTracer(bn_holders(model)).trace(model)
    except Exception:
        return {}
    modules = dict(model.named_modules())
    names = {n for n, _ in layers}
    found = {}
    for node in graph.nodes:
        if node.op == "call_module" and node.target in names:
            users = list(node.users)
            if len(users) == 1 and isinstance(users[0], fx.Node):
                act = activation_of(users[0], modules)
                if act is not None:
                    found[node.target] = act
    return found


def _affine(m: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    w, b = getattr(m, "weight", None), getattr(m, "bias", None)
    return (w.detach().double() if isinstance(w, Tensor) else None,
            b.detach().double() if isinstance(b, Tensor) else None)  # fmt: skip


def _accumulate(acc: _Acc, m: nn.Module, y: Tensor, z: Tensor | None, x: Tensor) -> None:
    if y.dim() == 2:
        y = y[:, :, None, None]
        z = z[:, :, None, None] if z is not None else None
    n, c = y.shape[:2]
    flat = y.flatten(2)
    var_a, mean_a = torch.var_mean(flat, dim=2, correction=0)
    std_a = var_a.sqrt()
    acc.add("mean_a", mean_a.sum(0))
    acc.add("mean_a2", mean_a.square().sum(0))
    acc.add("std_a", std_a.sum(0))
    acc.add("std_a2", std_a.square().sum(0))
    acc.add("y2", flat.square().mean(2).sum(0))
    acc.n += n
    positions = flat.shape[2]
    acc.positions += n * positions
    out = z if z is not None else y
    o = out.double().transpose(0, 1).reshape(c, -1)
    acc.add("z2", o.square().sum(1))
    acc.add("z", o.sum(1))
    step = max(1, math.ceil(c / MAX_RANK_CHANNELS))
    sub = o[::step]
    acc.add("zz", sub @ sub.t())
    if z is not None:  # linearity of z in y, per channel
        yy = y.transpose(0, 1).reshape(c, -1)
        acc.add("ly", yy.sum(1))
        acc.add("ly2", yy.square().sum(1))
        acc.add("lz2", o.square().sum(1))
        acc.add("lyz", (yy * o).sum(1))
    if acc.act is not None:  # dead channels: φ'(u) ~ 0, u = γ y + β
        w, b = _gamma_beta(m)
        shape = (1, -1, 1, 1)
        u = y * (w.view(shape) if w is not None else 1) + (b.view(shape) if b is not None else 0)
        g = acc.act.grad(torch.ones_like(u), u).abs() <= DEAD_GRAD
        acc.add("dead", g.transpose(0, 1).reshape(c, -1).double().sum(1))
    bn = m.norm if isinstance(m, NormAct) else m
    running = getattr(bn, "running_mean", None)
    if acc.kind.startswith(("bn", "frozen")) and not bn.training and running is not None:
        xd = x.double()
        dims = [0, *range(2, xd.dim())]
        var_b, mean_b = torch.var_mean(xd, dim=dims, correction=0)
        eps = getattr(bn, "eps", 1e-5)
        rv = bn.running_var.double() + eps
        shift = ((mean_b - running.double()).abs() / rv.sqrt()).mean()
        scale = ((var_b + eps) / rv).sqrt().sub(1).abs().mean()
        acc.bn.append((float(shift), float(scale)))


def _gamma_beta(m: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    if isinstance(m, NormAct):
        return m.act.weight.detach().double(), (
            m.act.bias.detach().double() if m.act.bias is not None else None
        )
    return _affine(m)


def _hooks(model, layers, accs, batch_stats: bool, follow: dict) -> list:
    handles = []
    for name, m in layers:
        acc = accs[name]
        if isinstance(m, NormAct):
            seen: dict[str, Tensor] = {}

            def on_y(mod, args, out, seen=seen):
                seen["y"] = out.detach()
                seen["x"] = args[0].detach()

            def on_z(mod, args, out, acc=acc, m=m, seen=seen):
                z = out.detach() if m.apply_act else None
                _accumulate(acc, m, seen.pop("y").double(), z, seen.pop("x"))

            handles.append(m.norm.register_forward_hook(on_y))
            handles.append(m.register_forward_hook(on_z))
        else:

            def on_out(mod, args, out, acc=acc, name=name):
                x = args[0].detach()
                y = standardized(mod, x.double(), batch_stats or mod.training)
                act = follow.get(name)
                inner = getattr(mod, "act", None)  # timm's norm-act layers: act inside
                if isinstance(inner, nn.Module) and not isinstance(inner, nn.Identity):
                    z = out.detach()
                elif isinstance(act, Act):
                    z = act(out.detach())
                else:
                    z = None
                _accumulate(acc, mod, y, z, x)

            handles.append(m.register_forward_hook(on_out))
    return handles


def _act_of(m: nn.Module, follow: dict, name: str) -> Act | None:
    if isinstance(m, NormAct):
        fn = m.act.act_fn if m.apply_act else None
        return fn if isinstance(fn, Act) and fn.name != "identity" else None
    inner = getattr(m, "act", None)
    if isinstance(inner, nn.Module) and not isinstance(inner, nn.Identity):
        a = get_act(inner)
        return a if a is not None and a.name != "identity" else None
    a = follow.get(name)
    return a if isinstance(a, Act) else None


def _batches(inputs) -> list[Tensor] | Iterable:
    if isinstance(inputs, Tensor):
        return [inputs]
    return inputs


def _summarize(name: str, m: nn.Module, acc: _Acc) -> dict[str, Any]:
    s, n, c = acc.sums, acc.n, int(acc.sums["y2"].numel())
    m1, s1 = s["mean_a"] / n, s["std_a"] / n
    decomposition = PowerDecomposition.from_moments(
        m1, s["mean_a2"] / n - m1.square(), s1, s["std_a2"] / n - s1.square(), s["y2"] / n
    )
    pos = acc.positions
    chan_power = s["z2"] / pos
    mean_z = s["z"] / pos
    k = s["zz"].shape[0]
    step = max(1, math.ceil(c / MAX_RANK_CHANNELS))
    sub_mean = mean_z[::step]
    cov = s["zz"] / pos - torch.outer(sub_mean, sub_mean)
    eig = torch.linalg.eigvalsh(cov).clamp_min(0)
    p = eig / eig.sum().clamp_min(1e-300)
    entropy = -(p * torch.log(p.clamp_min(1e-300))).sum()
    row = {
        "name": name,
        "kind": acc.kind,
        "channels": c,
        "proportions": dict(zip(TERM_NAMES, decomposition.proportions.tolist(), strict=True)),
        "layer_power": decomposition.layer_power,
        "nonlinearity": None,
        "dead_fraction": None,
        "imbalance": float(chan_power.max() / chan_power.mean().clamp_min(1e-300)),
        "effective_rank": float(entropy.exp()) if float(eig.sum()) > 0 else 0.0,
        "rank_channels": k,
        "activation": str(acc.act) if acc.act is not None else None,
        "bn_stat_shift": None,
        "bn_stat_scale": None,
        "batch_dependence": None,
    }
    if "ly" in s:
        my, mz = s["ly"] / pos, s["z"] / pos
        var_y = (s["ly2"] / pos - my.square()).clamp_min(0)
        var_z = (s["lz2"] / pos - mz.square()).clamp_min(0)
        cov_yz = s["lyz"] / pos - my * mz
        ratio = nonlinearity(var_y, var_z, cov_yz, s["ly2"] / pos, s["lz2"] / pos)
        row["nonlinearity"] = float(ratio.mean())
    if "dead" in s:
        row["dead_fraction"] = float((s["dead"] / pos >= 0.99).double().mean())
        row["dead_channels"] = torch.nonzero(s["dead"] / pos >= 0.99).flatten().tolist()
    if acc.bn:
        row["bn_stat_shift"] = sum(a for a, _ in acc.bn) / len(acc.bn)
        row["bn_stat_scale"] = sum(b for _, b in acc.bn) / len(acc.bn)
    return row


@torch.no_grad()
def _batch_dependence(model: nn.Module, layers, x: Tensor) -> tuple[dict[str, float], float]:
    """Per layer: relative change of sample 0's output when its batch mates change (norm layers
    in training mode with batch statistics, everything else in eval mode)."""
    if len(x) < 3:
        return {}, float("nan")
    m = copy.deepcopy(model).eval()
    mods = dict(m.named_modules())
    for name, _ in layers:
        mods[name].train()
        for sub in mods[name].modules():
            sub.train()
    half = (len(x) + 1) // 2
    a = torch.cat([x[:1], x[1:half]])
    b = torch.cat([x[:1], x[half:]])
    outs: dict[str, list[Tensor]] = {n: [] for n, _ in layers}
    handles = [mods[n].register_forward_hook(lambda mod, i, o, n=n: outs[n].append(o[:1].double()))
               for n, _ in layers]  # fmt: skip
    try:
        final = [m(a)[:1].double(), m(b)[:1].double()]
    finally:
        for h in handles:
            h.remove()

    def rel(pair):
        return float((pair[0] - pair[1]).norm() / pair[0].norm().clamp_min(1e-300))

    per_layer = {n: rel(v) for n, v in outs.items() if len(v) == 2}
    return per_layer, rel(final) if not isinstance(final[0], dict) else float("nan")


@dataclass
class Diagnosis:
    """The result of :func:`diagnose`: one dict per normalization layer, findings in words."""

    layers: list[dict[str, Any]]
    findings: list[str]
    model_batch_dependence: float
    mode: str
    images: int
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "mode": self.mode,
            "images": self.images,
            "note": self.note,
            "model_batch_dependence": self.model_batch_dependence,
            "layers": self.layers,
            "findings": self.findings,
            "thresholds": {
                "collapse_term1": COLLAPSE,
                "instance_terms": INSTANCE_LOSS,
                "linear": LINEAR,
                "dead_fraction": DEAD,
                "dead_grad": DEAD_GRAD,
                "imbalance": IMBALANCE,
                "low_rank": LOW_RANK,
                "bn_mismatch": BN_MISMATCH,
                "batch_dependent": BATCH_DEPENDENT,
            },  # fmt: skip
        }


def diagnose(
    model: nn.Module,
    inputs: Tensor | Iterable[Tensor],
    mode: str = "eval",
    progress: bool = True,
) -> Diagnosis:
    """Measure what normalization does inside ``model`` on ``inputs`` (see the module docstring).

    Args:
        model: any ``nn.Module`` with normalization layers (BN, frozen BN, GN, LN, IN, this
            package's norm-act layers, timm's norm-act layers). Not modified.
        inputs: one batch, or an iterable of batches (tensors, or ``(x, y)`` pairs).
        mode: ``"eval"`` (running statistics, as deployed) or ``"train"`` (batch statistics).
        progress: show a progress bar over the batches.

    Returns:
        A :class:`Diagnosis` (``to_dict()`` for ``report.json``).

    Raises:
        ValueError: no normalization layer, no batch, inputs the model rejects, or a bad mode.
    """
    if mode not in ("eval", "train"):
        raise ValueError(f"mode must be 'eval' or 'train', got {mode!r}")
    layers = norm_layers(model)
    if not layers:
        raise ValueError(
            "the model has no normalization layer (BatchNorm, GroupNorm, LayerNorm, InstanceNorm "
            "or a norm-act layer): nothing to diagnose"
        )
    work = copy.deepcopy(model)  # running statistics must not move, hooks must not leak
    work.eval() if mode == "eval" else work.train()
    if mode == "train":  # normalization uses batch statistics; dropout etc. stay off
        work.eval()
        for name, _ in norm_layers(work):
            work.get_submodule(name).train()
    layers = norm_layers(work)
    follow = _following_acts(work, layers)
    accs = {n: _Acc(kind(m) or "?", _act_of(m, follow, n)) for n, m in layers}
    handles = _hooks(work, layers, accs, mode == "train", follow)
    first, images = None, 0
    try:
        for batch in tqdm(_batches(inputs), desc="diagnose", disable=not progress or None,
                          leave=False):  # fmt: skip
            x = batch[0] if isinstance(batch, list | tuple) else batch
            if not isinstance(x, Tensor):
                raise ValueError(f"inputs must be tensors (N, C, H, W), got {type(x).__name__}")
            first = x if first is None else first
            images += len(x)
            try:
                work(x)
            except (RuntimeError, ValueError) as err:
                raise ValueError(
                    f"the model rejected inputs of shape {tuple(x.shape)}: {err}".split("\n")[0]
                ) from None
    finally:
        for h in handles:
            h.remove()
    if first is None:
        raise ValueError("inputs is empty: give at least one batch")
    rows = [_summarize(n, m, accs[n]) for n, m in layers if accs[n].n > 0]
    per_layer, overall = _batch_dependence(model, norm_layers(model), first)
    for r in rows:
        r["batch_dependence"] = per_layer.get(r["name"])
    diag = Diagnosis(rows, [], overall, mode, images)
    diag.findings = findings(diag)
    return diag


def _ranges(indices: list[int]) -> str:
    """1-based layer indices as "3, 7–12"."""
    parts, start = [], None
    for i, k in enumerate(indices):
        if start is None:
            start = k
        if i + 1 == len(indices) or indices[i + 1] != k + 1:
            parts.append(f"{start + 1}" if start == k else f"{start + 1}–{k + 1}")
            start = None
    return ", ".join(parts)


def findings(diag: Diagnosis) -> list[str]:
    """Findings in words, each from the measured numbers and a stated threshold."""
    rows, out = diag.layers, []
    total = len(rows)

    def rule(test, words):
        hit = [i for i, r in enumerate(rows) if test(r)]
        if hit:
            out.append(f"layers {_ranges(hit)} of {total}: {words(hit)}")

    t1 = TERM_NAMES[0]
    rule(lambda r: r["proportions"][t1] > COLLAPSE,
         lambda h: f"channel-wise collapse, term (1) (channel means) > {COLLAPSE} of the power "
                   f"(up to {max(rows[i]['proportions'][t1] for i in h):.2f})")  # fmt: skip
    rule(lambda r: sum(r["proportions"][TERM_NAMES[k]] for k in (0, 1, 3)) < INSTANCE_LOSS,
         lambda h: f"instance variability removed: terms (1)+(2)+(4) < {INSTANCE_LOSS} "
                   "(instance-norm-like)")  # fmt: skip
    rule(
        lambda r: r["nonlinearity"] is not None and r["nonlinearity"] < LINEAR,
        lambda h: (
            f"channel-wise linear, nonlinearity ratio < {LINEAR} (down to "
            f"{min(rows[i]['nonlinearity'] for i in h):.3f}): the activation adds little"
        ),
    )
    rule(lambda r: (r["dead_fraction"] or 0) > DEAD,
         lambda h: f"dead channels > {DEAD:.0%} (up to "
                   f"{max(rows[i]['dead_fraction'] for i in h):.0%} of channels with "
                   f"|φ'| ≤ {DEAD_GRAD} on ≥ 99% of positions)")  # fmt: skip
    rule(lambda r: r["imbalance"] > IMBALANCE,
         lambda h: f"channel imbalance: max/mean channel power > {IMBALANCE:g} (up to "
                   f"{max(rows[i]['imbalance'] for i in h):.1f})")  # fmt: skip
    rule(
        lambda r: r["effective_rank"] < LOW_RANK * r["rank_channels"],
        lambda h: f"low effective rank of the output covariance, < {LOW_RANK:g} × channels",
    )
    rule(
        lambda r: max(r["bn_stat_shift"] or 0, r["bn_stat_scale"] or 0) > BN_MISMATCH,
        lambda h: (
            f"BatchNorm running statistics differ from the batch's own by > {BN_MISMATCH} "
            "(mean shift in running stds or relative std change): train/test discrepancy"
        ),
    )
    rule(lambda r: (r["batch_dependence"] or 0) > BATCH_DEPENDENT,
         lambda h: f"batch dependent: one sample's output changes by > {BATCH_DEPENDENT:g} "
                   f"(up to {max(rows[i]['batch_dependence'] for i in h):.3f}) when its batch "
                   "mates change")  # fmt: skip
    if not out:
        out.append("no finding above the thresholds")
    return out


__all__ = ["Diagnosis", "diagnose", "findings", "norm_layers"]
