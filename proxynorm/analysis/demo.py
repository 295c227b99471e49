"""A one-minute demonstration of the paper's point on a small random conv net (Definition 1).

For each norm spec it measures, at the last layer of a deep random net, the share of the power of
the normalized pre-activations ``y`` carried by channel means (the "dataset scale" term (1) of the
power decomposition, docs/METHOD.md §3: ~0 for BN, growing toward 1 with depth for LN —
Theorem 1 —, kept small by PN), and whether the output of one sample changes when the rest of
the batch does.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor

from proxynorm.layers import parse_spec
from proxynorm.models import create_model

DEMO_SPECS = ("bn", "ln", "ln+pn", "gn", "gn+pn", "in", "evos0", "frn")


@dataclass
class DemoRow:
    spec: str
    dataset_share: float | None  # term (1) / total power of y at the last layer
    batch_independent: bool
    seconds: float


def _dataset_share(y: Tensor) -> float:
    y = y.double()
    means = y.mean(dim=(0, 2, 3))
    return float(means.square().mean() / y.square().mean(dim=(0, 2, 3)).mean())


@torch.no_grad()
def run_demo(
    specs: tuple[str, ...] = DEMO_SPECS,
    depth: int = 30,
    width: int = 64,
    batch: int = 16,
    size: int = 16,
    seed: int = 0,
) -> list[DemoRow]:
    """Measure each spec on a random net (see module docstring); returns one row per spec.

    Raises:
        ValueError: ``batch`` < 2 (batch dependence is measured by changing the other inputs).
    """
    if batch < 2:
        raise ValueError(f"batch must be >= 2 to measure batch dependence, got {batch}")
    rows = []
    for spec in specs:
        start = time.perf_counter()
        net = create_model("random_net", norm=spec, depth=depth, width=width, seed=seed)
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(batch, 3, size, size, generator=gen)
        captured: list[Tensor] = []
        last = net.norm_act_layers()[-1]
        hook = None
        if hasattr(last, "norm"):
            hook = last.norm.register_forward_hook(lambda m, i, o, store=captured: store.append(o))
        out = net(x)
        if hook is not None:
            hook.remove()
        other = x.clone()
        other[1:] = torch.randn(batch - 1, 3, size, size, generator=gen)
        independent = torch.allclose(net(other)[0], out[0], atol=1e-5, rtol=1e-4)
        share = _dataset_share(captured[0]) if captured else None
        rows.append(DemoRow(parse_spec(spec).name, share, independent, time.perf_counter() - start))
    return rows


def format_rows(rows: list[DemoRow], depth: int) -> str:
    """A Markdown table of :func:`run_demo` rows."""
    lines = [
        f"| spec | channel-mean share of y at layer {depth} | batch independent | seconds |",
        "|---|---|---|---|",
    ]
    for r in rows:
        share = (
            "n/a (no separate norm step)" if r.dataset_share is None else f"{r.dataset_share:.3f}"
        )
        lines.append(
            f"| {r.spec} | {share} | {'yes' if r.batch_independent else 'no'} | {r.seconds:.2f} |"
        )
    return "\n".join(lines)


def demo_report(specs, depth: int, width: int, batch: int, size: int, seed: int) -> str:
    """``proxynorm demo``'s text: the setting, :func:`format_rows` of :func:`run_demo`, and what
    the channel-mean column shows."""
    rows = run_demo(tuple(specs), depth, width, batch, size, seed)
    return (
        f"Random conv net: depth {depth}, width {width}, ReLU, gamma ~ N(1, 0.2^2), "
        f"beta ~ N(0, 0.2^2), {batch} random inputs of {size}x{size}, seed {seed}.\n\n"
        f"{format_rows(rows, depth)}\n\n"
        "The channel-mean share is term (1) of the power decomposition: BN keeps it at 0, LN "
        "collapses toward 1 with depth (Theorem 1), PN keeps LN/GN close to BN."
    )
