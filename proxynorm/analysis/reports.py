"""The jobs behind ``proxynorm power`` and ``proxynorm theory``: measure, plot, write JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import Tensor
from tqdm.auto import tqdm

from proxynorm.analysis.plots import plot_power_panels, plot_theory
from proxynorm.analysis.power import TERM_NAMES, power_decomposition
from proxynorm.analysis.probes import record_preactivations
from proxynorm.analysis.random_nets import (
    RandomNetConfig,
    linearity_ratios,
    power_proportions,
    summarize,
)
from proxynorm.analysis.theory import collapse_bound
from proxynorm.checkpoint import load_model
from proxynorm.files import atomic_target
from proxynorm.layers import parse_spec


def _write_json(path: Path, payload: dict) -> None:
    with atomic_target(path) as tmp:
        tmp.write_text(json.dumps(payload, indent=1))


def checkpoint_power(path: str | Path, inputs: Tensor) -> tuple[str, Tensor]:
    """Panel title and (1, depth, 4) proportions of a trained model (eval mode) on ``inputs``."""
    model = load_model(path).eval()
    props = record_preactivations(model, inputs, lambda y: power_decomposition(y).proportions)
    title = f"{model.config['name']} {model.config['norm']}"
    return title, torch.stack(props)[None]


def power_report(
    out_dir: str | Path,
    inputs: Tensor,
    note: str,
    norms: Sequence[str] = ("bn", "ln", "in", "gn", "ln+pn", "gn+pn"),
    config: RandomNetConfig | None = None,
    realizations: int = 10,
    checkpoints: Sequence[str | Path] = (),
) -> dict:
    """Power plots of random nets (one panel per norm) or of trained checkpoints (one panel each).

    Writes ``power.json`` and ``power.png`` in ``out_dir`` and returns the JSON payload.
    """
    out_dir = Path(out_dir)
    config = config or RandomNetConfig()
    panels: dict[str, Tensor] = {}
    if checkpoints:
        for path in tqdm(checkpoints, desc="checkpoints", disable=None):
            title, props = checkpoint_power(path, inputs)
            panels[title if title not in panels else f"{title} ({path})"] = props
        setting = {"checkpoints": [str(p) for p in checkpoints], "mode": "eval"}
    else:
        norms = [parse_spec(n).name for n in norms]
        with tqdm(total=len(norms) * realizations, desc="random nets", disable=None) as bar:
            for norm in norms:
                panels[norm] = power_proportions(norm, inputs, config, realizations, bar)
        setting = {**asdict(config), "realizations": realizations, "norms": norms}
    payload = {
        "kind": "power",
        "inputs": note,
        "batch": int(inputs.shape[0]),
        "setting": setting,
        "panels": {
            title: {name: summarize(props[:, :, k]) for k, name in enumerate(TERM_NAMES)}
            for title, props in panels.items()
        },
    }
    _write_json(out_dir / "power.json", payload)
    what = (
        "trained models (eval mode)"
        if checkpoints
        else (f"random nets: width {config.width}, φ = {config.act}, {realizations} realizations")
    )
    plot_power_panels(panels, out_dir / "power.png", note=f"{what}; inputs: {note}")
    return payload


def theory_report(
    out_dir: str | Path,
    inputs: Tensor,
    note: str,
    config: RandomNetConfig | None = None,
    realizations: int = 10,
    acts: Sequence[str] = ("relu", "identity"),
    linearity_norms: Sequence[str] = ("ln", "gn", "ln+pn"),
) -> dict:
    """Theorem 1 (1 − ρ(y^l) of LN random nets against the bound, per activation) and the
    linearity ratio against depth per norm. Writes ``theory.json`` and ``theory.png``."""
    out_dir = Path(out_dir)
    config = config or RandomNetConfig()
    collapse: dict[str, tuple[Tensor, Tensor]] = {}
    linearity: dict[str, Tensor] = {}
    total = (len(acts) + len(linearity_norms)) * realizations
    with tqdm(total=total, desc="random nets", disable=None) as bar:
        for act in acts:
            props = power_proportions("ln", inputs, replace(config, act=act), realizations, bar)
            rho1 = float(props[:, 0, 0].mean())
            bound = collapse_bound(rho1, config.gamma_std, config.beta_std, config.depth)
            collapse[act] = (1.0 - props[:, :, 0], bound)
        for norm in linearity_norms:
            norm = parse_spec(norm).name
            linearity[norm] = linearity_ratios(norm, inputs, config, realizations, bar)
    payload = {
        "kind": "theory",
        "inputs": note,
        "batch": int(inputs.shape[0]),
        "setting": {**asdict(config), "realizations": realizations},
        "theorem1": {
            act: {
                "one_minus_rho": summarize(measured),
                "bound": bound.tolist(),
                "rho1": 1.0 - float(bound[0]),
            }
            for act, (measured, bound) in collapse.items()
        },
        "linearity": {norm: summarize(r) for norm, r in linearity.items()},
    }
    _write_json(out_dir / "theory.json", payload)
    plot_theory(
        collapse,
        linearity,
        out_dir / "theory.png",
        note=f"random nets: width {config.width}, {realizations} realizations; inputs: {note}",
    )
    return payload
