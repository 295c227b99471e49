"""Pretrained weights shipped inside the package, under ``proxynorm/pretrained/``.

``proxynorm/pretrained/index.json`` maps ``"<model>/<norm>"`` to one entry: the weights file
(a float32 ``state_dict``), the :func:`~proxynorm.models.create_model` config that rebuilds the
architecture, and where the weights come from (the training run's directory, its recipe, the
commits it ran on, its test and train accuracy). ``create_model(name, norm=..., pretrained=True)``
reads it; ``experiments/ship_pretrained.py`` writes it from a finished run.

Weights are the only tracked binary files of the project and live only here; nothing is
downloaded.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: Where the weights and their index are (tests point it elsewhere).
WEIGHTS_DIR = Path(str(resources.files("proxynorm") / "pretrained"))
INDEX = "index.json"


def available() -> dict[str, dict[str, Any]]:
    """``{"<model>/<norm>": entry}`` of every shipped model (empty when none is)."""
    path = WEIGHTS_DIR / INDEX
    return json.loads(path.read_text()) if path.exists() else {}


def entry(name: str, norm: str) -> dict[str, Any]:
    """The index entry of ``name`` with ``norm`` (a canonical spec name).

    Raises:
        ValueError: no weights for that model and norm; the message lists what exists.
    """
    shipped = available()
    key = f"{name}/{norm}"
    if key not in shipped:
        have = ", ".join(sorted(shipped)) or "none yet"
        raise ValueError(f"no pretrained weights for {name} with norm {norm!r}; available: {have}")
    return shipped[key]


def load_weights(model: nn.Module, found: dict[str, Any]) -> nn.Module:
    """Load the weights of index entry ``found`` into ``model`` (checked against their hash)."""
    path = WEIGHTS_DIR / found["file"]
    if not path.exists():
        raise FileNotFoundError(f"pretrained weights {path} are missing from the installation")
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != found["sha256"]:
        raise ValueError(f"pretrained weights {path} do not match their recorded sha256")
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    model.pretrained = {k: v for k, v in found.items() if k != "config"}
    return model


def ship(
    state_dict: dict[str, torch.Tensor], config: dict[str, Any], about: dict[str, Any],
    dest: str | Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    """Write ``state_dict`` (as float32) beside the index under ``dest`` (default
    :data:`WEIGHTS_DIR`) and record it with the model's ``config`` and ``about`` (its provenance
    and accuracy). Returns the new entry."""
    from proxynorm.layers import parse_spec

    dest = Path(dest) if dest is not None else WEIGHTS_DIR
    dest.mkdir(parents=True, exist_ok=True)
    norm = parse_spec(config["norm"]).name
    file = f"{config['name']}-{norm}.pt".replace("+", "_")
    state = {k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()}
    torch.save(state, dest / file)
    found = {"file": file, "sha256": hashlib.sha256((dest / file).read_bytes()).hexdigest(),
             "config": config, **about}  # fmt: skip
    index_path = dest / INDEX
    index = json.loads(index_path.read_text()) if index_path.exists() else {}
    index[f"{config['name']}/{norm}"] = found
    index_path.write_text(json.dumps(dict(sorted(index.items())), indent=1) + "\n")
    return found
