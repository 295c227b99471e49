"""Figures: power plots (the paper's Fig. 2 layout), Theorem 1 and linearity (Fig. 5)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import Tensor  # noqa: E402

from proxynorm.analysis.power import TERM_NAMES  # noqa: E402

TERM_LABELS = (
    "(1) dataset scale: channel mean",
    "(2) instance scale: var of instance means",
    "(3) pixel scale: mean instance std",
    "(4) pixel scale: var of instance stds",
)
TERM_COLORS = ("#d62728", "#ff7f0e", "#1f77b4", "#9ecae1")
assert len(TERM_LABELS) == len(TERM_NAMES)


def plot_power_panels(
    panels: dict[str, Tensor],
    path: str | Path,
    note: str = "",
    low: float = 0.1,
    high: float = 0.9,
    cols: int = 4,
) -> None:
    """One panel per title; each value is a (realizations, depth, 4) tensor of proportions.

    The four proportions are stacked against depth (means over realizations); shaded bands show the
    [low, high] quantiles over realizations of each cumulative boundary.
    """
    n = len(panels)
    cols = min(n, cols)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(3.4 * cols, 2.9 * rows + 0.9), sharey=True, squeeze=False
    )
    for ax in axes.flat[n:]:
        ax.axis("off")
    for ax, (title, props) in zip(axes.flat[:n], panels.items(), strict=True):
        depth = torch.arange(1, props.shape[1] + 1).numpy()
        mean = props.mean(0).numpy()
        ax.stackplot(depth, mean.T, colors=TERM_COLORS, labels=TERM_LABELS, alpha=0.85)
        cumulative = props.cumsum(dim=2)
        if props.shape[0] > 1:
            for k in range(3):
                lo = cumulative[:, :, k].quantile(low, dim=0).numpy()
                hi = cumulative[:, :, k].quantile(high, dim=0).numpy()
                ax.fill_between(depth, lo, hi, color="black", alpha=0.18, linewidth=0)
        ax.set_title(title)
        ax.set_xlabel("layer l")
        ax.set_xlim(1, max(int(depth[-1]), 2))
        ax.set_ylim(0, 1)
    for row in axes:
        row[0].set_ylabel("proportion of power of y^l")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=2, fontsize=8, frameon=False)
    if note:
        fig.suptitle(textwrap.fill(note, 120), fontsize=8)
    legend_space = 0.5 / fig.get_figheight()
    fig.tight_layout(rect=(0, legend_space, 1, 1 - 0.3 / fig.get_figheight() if note else 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _band(ax, depth, values: Tensor, label: str, color: str, low: float, high: float) -> None:
    ax.plot(depth, values.mean(0).numpy(), color=color, label=label)
    if values.shape[0] > 1:
        ax.fill_between(
            depth,
            values.quantile(low, dim=0).numpy(),
            values.quantile(high, dim=0).numpy(),
            color=color,
            alpha=0.25,
            linewidth=0,
        )


def plot_theory(
    collapse: dict[str, tuple[Tensor, Tensor]],
    linearity: dict[str, Tensor],
    path: str | Path,
    note: str = "",
    low: float = 0.1,
    high: float = 0.9,
) -> None:
    """Left: Theorem 1, measured 1 − ρ(y^l) (mean and [low, high] band over realizations) and the
    bound (dashed), per activation; right: the linearity ratio against depth per norm."""
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
    for i, (act, (measured, bound)) in enumerate(collapse.items()):
        depth = torch.arange(1, measured.shape[1] + 1).numpy()
        _band(left, depth, measured, f"LN, φ = {act}: measured", colors[i], low, high)
        left.plot(depth, bound.numpy(), "--", color=colors[i], label=f"LN, φ = {act}: bound")
    left.set_yscale("log")
    left.set_xlabel("layer l")
    left.set_ylabel("1 − ρ(y^l)")
    left.set_title("Theorem 1: channel-wise collapse with LN")
    left.legend(fontsize=8)
    for i, (norm, ratios) in enumerate(linearity.items()):
        depth = torch.arange(1, ratios.shape[1] + 1).numpy()
        _band(right, depth, ratios, norm, colors[(i + 2) % len(colors)], low, high)
    right.set_xlabel("layer l")
    right.set_ylabel("nonlinearity ratio NL")
    right.set_ylim(bottom=0)
    right.set_title("Channel-wise linearity")
    right.legend(fontsize=8)
    if note:
        fig.suptitle(textwrap.fill(note, 150), fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
