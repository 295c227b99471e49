"""Model checkpoints: the architecture config beside the weights, loaded with ``weights_only``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from proxynorm.files import atomic_target, refuse_overwrite
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


def resolve_model(
    *,
    checkpoint: str | Path | None = None,
    torchvision: str | None = None,
    timm: str | None = None,
    weights: str | Path | None = None,
    num_classes: int | None = None,
    model: str | None = None,
    norm: str = "bn",
    model_kwargs: dict[str, Any] | None = None,
    pretrained: str | None = None,
) -> tuple[nn.Module, str]:
    """The model a user names on the command line, and a title for reports.

    Exactly one of: ``checkpoint`` (a :func:`save_model` file), ``torchvision`` / ``timm`` (a model
    name, random init or the local state dict ``weights``, with ``num_classes``), or ``model``
    (a :func:`create_model` name with ``norm`` and ``model_kwargs``, random init), or
    ``pretrained`` (``"<model>/<norm>"``: weights shipped in ``proxynorm/pretrained/``). A model
    from a library carries ``config = {lib: name, "kwargs": ...}`` so that its conversion can be
    saved and rebuilt.

    Raises:
        ValueError: not exactly one source, or ``weights`` without a library model.
        ImportError: the library named is not installed.
    """
    from proxynorm.conversion.source import build_source

    sources = (("checkpoint", checkpoint), ("torchvision", torchvision), ("timm", timm),
               ("model", model), ("pretrained", pretrained))  # fmt: skip
    given = [k for k, v in sources if v]
    if len(given) != 1:
        raise ValueError(
            f"give exactly one model source, got {', '.join('--' + g for g in given) or 'none'}: "
            "--checkpoint PATH, --pretrained MODEL/NORM, --torchvision NAME, --timm NAME "
            "(diagnose: or --model NAME)"
        )
    if pretrained:
        name, _, spec = pretrained.partition("/")
        found = create_model(name, norm=spec or "bn", pretrained=True)
        return found, f"{pretrained} (pretrained, test {found.pretrained['test_acc']:.2f}%)"
    if weights and not (torchvision or timm):
        raise ValueError("--weights is for --torchvision / --timm models")
    if model:
        kwargs = model_kwargs or {}
        shape = "".join(f", {k} {v}" for k, v in kwargs.items())
        return create_model(model, norm=norm, **kwargs), f"{model} ({norm}{shape}, random init)"
    if checkpoint:
        return load_model(checkpoint), "/".join(Path(checkpoint).parts[-2:])
    lib, name = ("torchvision", torchvision) if torchvision else ("timm", timm)
    source = {lib: name, "kwargs": {"num_classes": num_classes} if num_classes else {}}
    try:
        built = build_source(source)
    except ImportError as err:
        raise ImportError(f"--{lib} needs {err.name} installed") from None
    if weights:
        state = load_checkpoint(weights)
        built.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    built.config = source
    return built, name + ("" if weights else ", random init")


def export_checkpoint(
    checkpoint: str | Path,
    out: str | Path | None = None,
    fmt: str = "onnx",
    image_size: int = 32,
    fold_pn: bool = True,
    force: bool = False,
) -> Path:
    """Export the model of ``checkpoint`` to ONNX or TorchScript (PN folded unless ``fold_pn`` is
    false), for inputs ``(N, 3, image_size, image_size)`` with a dynamic batch dimension.

    Args:
        out: the output file (default: the checkpoint with ``.onnx`` / ``.torchscript.pt``).
        fmt: ``"onnx"`` or ``"torchscript"``.
        force: overwrite an existing ``out``.

    Raises:
        ValueError: ``out`` is the checkpoint itself.
        FileExistsError: ``out`` exists and ``force`` is false.
    """
    from proxynorm.conversion.export import export_model

    suffix = ".onnx" if fmt == "onnx" else ".torchscript.pt"
    out = Path(out or Path(checkpoint).with_suffix(suffix))
    if out.resolve() == Path(checkpoint).resolve():
        raise ValueError(f"--out {out} is the input checkpoint; refusing to write over it")
    refuse_overwrite(out, force)
    example = torch.randn(1, 3, image_size, image_size)
    return export_model(load_model(checkpoint), out, example, fmt, fold_pn=fold_pn)
