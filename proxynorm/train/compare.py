"""Compare norms: train every norm x seed (resuming or skipping finished runs) and summarize.

Writes ``summary.json``, ``summary.md`` (mean ± std over seeds in the layout of the paper's
Tables 15-16: one row per norm, one column per model, "test / train" accuracy) and
``accuracy.png`` (test accuracy against epoch, mean and min-max band over seeds, per norm).
"""

from __future__ import annotations

import json
import statistics
import traceback
from pathlib import Path
from typing import Any

from proxynorm.layers import parse_spec
from proxynorm.train import distributed
from proxynorm.train.config import build_config
from proxynorm.train.loop import FINAL, METRICS, TrainingDiverged, resume_problem, train
from proxynorm.train.metrics import read_jsonl


def run_dir(out: Path, norm: str, seed: int) -> Path:
    return out / parse_spec(norm).name / f"seed{seed}"


def compare(
    out: str | Path,
    norms: list[str],
    seeds: list[int],
    recipe: str = "cifar",
    extra_reg: bool = False,
    **overrides: Any,
) -> dict[str, Any]:
    """Train each norm with each seed into ``out/<norm>/seed<k>`` and write the summaries.

    Finished runs (with ``final.json``) are skipped and interrupted ones resumed, so re-running
    the same command continues where it stopped. A run that fails is reported in the summary and
    the others still run.
    """
    out = Path(out)
    if not seeds:
        raise ValueError("seeds must name at least one seed (--seeds >= 1)")
    norms = [parse_spec(n).name for n in norms]
    # Under torchrun, join the process group now: rank 0 decides which runs remain.
    base = build_config(recipe, extra_reg, **overrides)
    d, _ = distributed.setup(base.device, base.dist_timeout)
    configs = {
        (norm, seed): build_config(recipe, extra_reg, **overrides, norm=norm, seed=seed)
        for norm in norms
        for seed in seeds
    }
    # Before anything trains: a finished run with other settings is refused, not reused.
    problems = distributed.broadcast(_problems(out, configs, d.world_size) if d.main else None)
    if problems:
        raise ValueError(
            f"{out} holds finished runs with other settings (use a new --out, or the same "
            "settings): " + "; ".join(problems)
        )
    failures: dict[str, str] = {}
    for norm in norms:
        for seed in seeds:
            path = run_dir(out, norm, seed)
            cfg = configs[norm, seed]
            if distributed.broadcast(_finished(path, cfg) if d.main else None):
                _log(d, f"[{norm} seed {seed}] finished earlier: {path}")
                continue
            _log(d, f"[{norm} seed {seed}] training into {path}")
            try:
                train(cfg, path, resume=True)
            except (KeyboardInterrupt, SystemExit):
                raise
            except Exception as err:  # keep going: one bad run must not lose the others
                if d.enabled and not isinstance(err, TrainingDiverged):
                    raise  # the processes may be out of step: stop them all
                failures[f"{norm}/seed{seed}"] = f"{type(err).__name__}: {err}"
                _log(d, f"[{norm} seed {seed}] FAILED: {err}\n{traceback.format_exc()}")
    summary = summarize(out, norms, seeds) if d.main else {}
    summary["failures"] = failures
    if d.main:
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
        (out / "summary.md").write_text(summary_markdown(summary))
        plot_accuracy(out, norms, seeds, out / "accuracy.png")
    return distributed.broadcast(summary)


def _problems(out: Path, configs: dict, world_size: int) -> list[str]:
    problems = []
    for (norm, seed), cfg in configs.items():
        final = run_dir(out, norm, seed) / FINAL
        if final.exists():
            saved = json.loads(final.read_text()).get("config", {})
            why = resume_problem(saved, cfg.for_world(world_size), world_size, finished=True)
            if why:
                problems.append(f"{norm}/seed{seed}: {why}")
    return problems


def _finished(path: Path, cfg) -> bool:
    final = path / FINAL
    return final.exists() and json.loads(final.read_text()).get("epochs", 0) >= cfg.epochs


def _log(d: distributed.Dist, message: str) -> None:
    if d.main:
        print(message, flush=True)


def _mean_std(values: list[float]) -> dict[str, float]:
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "std": std, "n": len(values)}


def summarize(out: Path, norms: list[str], seeds: list[int]) -> dict[str, Any]:
    """Per norm: mean ± std (sample std over seeds) of final test/train accuracy, wall time."""
    rows: dict[str, Any] = {}
    model = None
    for norm in norms:
        finals = []
        for seed in seeds:
            path = run_dir(out, norm, seed) / FINAL
            if path.exists():
                finals.append(json.loads(path.read_text()))
        if not finals:
            continue
        model = finals[0]["model"]
        rows[norm] = {
            "test_acc": _mean_std([f["test_acc"] for f in finals]),
            "train_acc": _mean_std([f["train_acc"] for f in finals]),
            "wall_seconds": _mean_std([f["wall_seconds"] for f in finals]),
            "seeds": [f["seed"] for f in finals],
            "per_seed": {
                f["seed"]: {"test_acc": f["test_acc"], "train_acc": f["train_acc"]} for f in finals
            },
            "epochs": finals[0]["epochs"],
        }
    config = {}
    if rows:
        first = json.loads(
            (run_dir(out, next(iter(rows)), rows[next(iter(rows))]["seeds"][0]) / FINAL).read_text()
        )
        config = {k: v for k, v in first["config"].items() if k not in ("norm", "seed")}
    return {"model": model, "norms": rows, "config": config}


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a Markdown table (rows: norms; cell: test / train accuracy, mean ± std)."""
    model = summary.get("model") or "model"
    lines = [
        f"# Norm comparison: {model}",
        "",
        "Final-epoch accuracy (%), mean ± std over seeds (n = number of seeds).",
        "",
        f"| norm | {model}: test / train | n | wall time per run |",
        "|---|---|---|---|",
    ]
    for norm, r in summary["norms"].items():
        t, tr = r["test_acc"], r["train_acc"]
        lines.append(
            f"| {norm.upper()} | {t['mean']:.2f} ± {t['std']:.2f} / "
            f"{tr['mean']:.2f} ± {tr['std']:.2f} | {t['n']} | "
            f"{r['wall_seconds']['mean']:.0f} s |"
        )
    if summary.get("failures"):
        lines += ["", "Failed runs:", ""]
        lines += [f"- {run}: {why}" for run, why in summary["failures"].items()]
    cfg = summary.get("config", {})
    if cfg:
        keys = (
            "data",
            "subset",
            "epochs",
            "batch_size",
            "effective_lr",
            "recipe",
            "extra_reg",
            "width_mult",
        )
        lines += ["", "Setting: " + ", ".join(f"{k}={cfg.get(k)}" for k in keys if k in cfg)]
    return "\n".join(lines) + "\n"


def plot_accuracy(out: Path, norms: list[str], seeds: list[int], path: Path) -> None:
    """Test accuracy against epoch per norm: mean over seeds with a min-max band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, ax = plt.subplots(figsize=(6, 4))
    for norm in norms:
        curves = [
            [r["test_acc"] for r in read_jsonl(run_dir(out, norm, s) / METRICS)] for s in seeds
        ]
        curves = [c for c in curves if c]
        if not curves:
            continue
        n = min(len(c) for c in curves)
        arr = np.array([c[:n] for c in curves])
        epochs = np.arange(1, n + 1)
        (line,) = ax.plot(epochs, arr.mean(0), label=f"{norm} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(epochs, arr.min(0), arr.max(0), color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
