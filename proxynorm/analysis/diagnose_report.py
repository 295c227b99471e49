"""``proxynorm diagnose``'s report: findings turned into a recommendation, ``report.md``,
``report.json`` and the plots, from the :class:`~proxynorm.analysis.diagnose.Diagnosis` of a model
(and, with ``compare``, of its calibrated GN+PN conversion beside it)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import Tensor, nn

from proxynorm.analysis.diagnose import BATCH_DEPENDENT, COLLAPSE, Diagnosis, diagnose
from proxynorm.analysis.power import TERM_NAMES


def write_report(
    out: str | Path,
    model: nn.Module,
    title: str,
    batches: list[Tensor],
    note: str = "",
    mode: str = "eval",
    compare: bool = False,
) -> tuple[Diagnosis, list[str]]:
    """Diagnose ``model`` on ``batches`` and write ``report.json``, ``report.md`` and the plots
    under ``out``.

    Args:
        out: output directory (created).
        model: any model with normalization layers (not modified).
        title: what the model is, for the report's headings.
        batches: the input batches.
        note: where the inputs came from; quoted in bold in the report when they are synthetic.
        mode: ``"eval"`` or ``"train"`` normalization statistics (:func:`diagnose`).
        compare: also diagnose ``model`` converted to GN+PN and calibrated on ``batches``.

    Returns:
        The model's diagnosis and the names of the files written.
    """
    diag = diagnose(model, batches, mode=mode)
    diag.note = note if note.startswith("SYNTHETIC") else ""
    diags = {title: diag}
    other = None
    if compare:
        from proxynorm.conversion import convert

        converted, _ = convert(model.eval(), "gn+pn", calibrate=batches, group_size=None)
        label = "converted to GN+PN, calibrated on these inputs"
        other = (label, diagnose(converted, batches, mode=mode))
        diags[label] = other[1]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": title, "inputs": note, **diag.to_dict(),
              "recommendation": recommendation(diag)}  # fmt: skip
    if other:
        report["compare"] = {"model": other[0], **other[1].to_dict()}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(diag, title, other))
    return diag, ["report.md", "report.json", *plot(diags, out)]


def recommendation(diag: Diagnosis) -> str:
    """What to do, from the findings' numbers."""
    kinds = {r["kind"] for r in diag.layers}
    collapse = any(r["proportions"][TERM_NAMES[0]] > COLLAPSE for r in diag.layers)
    dependent = any((r["batch_dependence"] or 0) > BATCH_DEPENDENT for r in diag.layers)
    if dependent and any(k.startswith("bn") for k in kinds):
        return (
            "BatchNorm makes this model batch dependent: at small per-device batches convert "
            "it with proxynorm.convert(model, 'gn+pn', calibrate=batches) and fine-tune."
        )
    if collapse and not any("+pn" in k for k in kinds):
        return (
            "Channel-wise collapse under a batch-independent norm: add proxy normalization "
            "(GN+PN / LN+PN), which keeps term (1) small without batch dependence."
        )
    return "No change needed on these numbers."


def _fmt(v, spec=".3f") -> str:
    return "–" if v is None else format(v, spec)


def markdown(diag: Diagnosis, title: str, other: tuple[str, Diagnosis] | None = None) -> str:
    """``report.md``: findings, recommendation, and one row per layer (two side by side with
    ``other``)."""
    lines = [f"# Diagnosis: {title}", ""]
    if diag.note:
        lines += [f"**{diag.note}**", ""]
    lines += [
        f"{diag.images} images, {diag.mode} mode. Whole-model batch dependence (relative change "
        "of one sample's output when its batch mates change): "
        f"{_fmt(diag.model_batch_dependence)}.",
        "",
        "## Findings",
        "",
        *[f"- {f}" for f in diag.findings],
        "",
        f"**Recommendation.** {recommendation(diag)}",
        "",
    ]
    diags = [(title, diag)] + ([other] if other else [])
    for label, d in diags:
        lines += [
            f"## Layers: {label}",
            "",
            "| # | layer | kind | (1) ch. mean | (2) inst. means | (3) inst. stds | (4) std var "
            "| nonlin. | dead | imbalance | eff. rank | batch dep. |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for i, r in enumerate(d.layers, 1):
            p = [r["proportions"][k] for k in TERM_NAMES]
            lines.append(
                f"| {i} | {r['name']} | {r['kind']} | {p[0]:.3f} | {p[1]:.3f} | {p[2]:.3f} | "
                f"{p[3]:.3f} | {_fmt(r['nonlinearity'])} | {_fmt(r['dead_fraction'], '.0%')} | "
                f"{r['imbalance']:.1f} | {r['effective_rank']:.1f}/{r['rank_channels']} | "
                f"{_fmt(r['batch_dependence'], '.2g')} |"
            )
        if other is not None and d is other[1]:
            lines += ["", "Findings:", "", *[f"- {f}" for f in d.findings]]
        lines.append("")
    return "\n".join(lines)


def plot(diags: dict[str, Diagnosis], out) -> list[str]:
    """``power.png`` (the four terms against depth, one panel per model), ``dead.png`` and
    ``nonlinearity.png`` (against depth, one line per model). Returns the file names."""
    from proxynorm.analysis.plots import plot_power_panels, plt

    out = Path(out)
    import textwrap

    panels = {
        textwrap.fill(label, 28, break_long_words=True): torch.tensor(
            [[[r["proportions"][k] for k in TERM_NAMES] for r in d.layers]]
        )
        for label, d in diags.items()
    }
    plot_power_panels(panels, out / "power.png", cols=2)
    for key, name, ylabel in (
        ("dead_fraction", "dead.png", "dead channels (fraction)"),
        ("nonlinearity", "nonlinearity.png", "nonlinearity ratio NL"),
    ):
        fig, ax = plt.subplots(figsize=(6, 3.2))
        for label, d in diags.items():
            pts = [(i, r[key]) for i, r in enumerate(d.layers, 1) if r[key] is not None]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker=".", label=label)
        ax.set_xlabel("normalization layer (forward order)")
        ax.set_ylabel(ylabel)
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    return ["power.png", "dead.png", "nonlinearity.png"]


__all__ = ["markdown", "plot", "recommendation", "write_report"]
