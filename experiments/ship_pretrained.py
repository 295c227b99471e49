"""Ship a finished training run's weights inside the package (issue 31).

    python experiments/ship_pretrained.py experiments/results/cifar10_cpu/paper160/bn/seed0 \
        experiments/results/cifar10_cpu/paper160/gn+pn/seed0

For each run directory (``final.json`` and ``checkpoint.pt`` present): its model's float32
state_dict goes to ``proxynorm/pretrained/<model>-<norm>.pt`` and
``proxynorm/pretrained/index.json`` records the config that rebuilds it, the run, its recipe and
epochs, the commits it ran on (``history.jsonl``) and its test and train accuracy.
``tests/models/test_pretrained.py`` checks the recorded test accuracy on the 10k test images when
the data is present.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from proxynorm.checkpoint import load_checkpoint
from proxynorm.models.pretrained import ship

ROOT = Path(__file__).resolve().parents[1]


def ship_run(run: Path) -> dict:
    final = json.loads((run / "final.json").read_text())
    ckpt = load_checkpoint(run / "checkpoint.pt")
    if ckpt.get("epoch") != final["epochs"]:
        raise ValueError(f"{run}: the checkpoint is at epoch {ckpt.get('epoch')}, not the last")
    cfg = final["config"]
    about = {
        "run": str(run.resolve().relative_to(ROOT) if run.resolve().is_relative_to(ROOT) else run),
        "recipe": cfg["recipe"], "epochs": final["epochs"], "seed": final["seed"],
        "test_acc": final["test_acc"], "train_acc": final["train_acc"],
        "commits": [h["commit"] for h in final.get("history", [])],
        "data": "CIFAR-10 (all 50k training images), test accuracy on the 10k test images",
    }  # fmt: skip
    return ship(ckpt["model"], ckpt["config"], about)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="finished run directories")
    for run in p.parse_args().runs:
        found = ship_run(run)
        print(f"shipped {run} -> proxynorm/pretrained/{found['file']} ({found['test_acc']:.2f}%)")


if __name__ == "__main__":
    main()
