"""Model checkpoints: the architecture config beside the weights, loaded with ``weights_only``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from proxynorm.files import atomic_target
from proxynorm.models.registry import create_model


def save_model(path: str | Path, model: nn.Module, **extra: Any) -> None:
    """Write ``{"config": model.config, "model": state_dict, **extra}`` atomically.

    ``model`` must come from :func:`create_model` or from :func:`proxynorm.convert` of such a
    model or of one whose ``config`` names its source (its ``config`` rebuilds it). The file is
    written to a unique temporary name in the same directory and renamed, so a crash never leaves
    half a file and two concurrent writers never collide.
    """
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError("save_model needs a model built by create_model (it has no .config)")
    try:
        json.dumps(config)
    except TypeError as err:
        raise ValueError(
            f"model config must be JSON-serializable to be saved "
            f"(was act given as a callable?): {err}"
        ) from err
    with atomic_target(path) as tmp:
        torch.save({"config": config, "model": model.state_dict(), **extra}, tmp)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint dict with ``weights_only=True`` (arbitrary pickled objects are refused)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:
        raise ValueError(f"cannot load checkpoint {path}: {err}") from err


def load_model(path: str | Path) -> nn.Module:
    """Rebuild the model saved by :func:`save_model` and load its weights."""
    ckpt = load_checkpoint(path)
    if "config" not in ckpt or "model" not in ckpt:
        raise ValueError(f"{path} is not a proxynorm checkpoint (needs 'config' and 'model')")
    config = ckpt["config"]
    if "convert" in config:  # a converted (and maybe calibrated) model
        from proxynorm.conversion.source import rebuild

        model = rebuild(config)
    else:
        model = create_model(**config)
    model.load_state_dict(ckpt["model"])
    return model
