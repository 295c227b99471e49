"""The ``proxynorm`` command line: argument parsing and wiring only."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from proxynorm.version import DISTRIBUTION, __version__


def _cmd_specs(args: argparse.Namespace) -> int:
    from proxynorm.layers import KNOWN_SPECS, NORM_ACT_LAYERS, parse_spec

    print("| spec | class | batch dependent |\n|---|---|---|")
    for name in KNOWN_SPECS:
        s = parse_spec(name)
        print(f"| {name} | {NORM_ACT_LAYERS[s.base].__name__} | {s.batch_dependent} |")
    print("\nAdd +ws to any spec for weight-standardized convs (e.g. gn+pn+ws).")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from proxynorm.analysis.demo import format_rows, run_demo

    specs = tuple(s.strip() for s in args.specs.split(",") if s.strip())
    print(
        f"Random conv net: depth {args.depth}, width {args.width}, ReLU, gamma ~ N(1, 0.2^2), "
        f"beta ~ N(0, 0.2^2), {args.batch} random inputs of {args.size}x{args.size}, "
        f"seed {args.seed}.\n"
    )
    rows = run_demo(specs, args.depth, args.width, args.batch, args.size, args.seed)
    print(format_rows(rows, args.depth))
    print(
        "\nThe channel-mean share is term (1) of the power decomposition: BN keeps it at 0, LN "
        "collapses toward 1 with depth (Theorem 1), PN keeps LN/GN close to BN."
    )
    return 0


DEFAULT_DATA = "../shared/data/cifar10-jpeg.zip"


def _at_least(k: int):
    """An argparse type: an int >= ``k`` (argparse then exits 2 with the flag's name)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {k}, got {text!r}") from None
        if value < k:
            raise argparse.ArgumentTypeError(f"must be >= {k}, got {value}")
        return value

    return parse


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _random_net_config(args: argparse.Namespace):
    from dataclasses import fields

    from proxynorm.analysis.random_nets import RandomNetConfig

    return RandomNetConfig(**{f.name: getattr(args, f.name) for f in fields(RandomNetConfig)})


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _cmd_power(args: argparse.Namespace) -> int:
    from proxynorm.analysis.reports import power_report
    from proxynorm.data import probe_batch

    inputs, note = probe_batch(args.data, args.batch, args.seed)
    print(f"inputs: {note}")
    power_report(
        args.out,
        inputs,
        note,
        _split(args.norms),
        _random_net_config(args),
        args.realizations,
        args.checkpoint or (),
    )
    print(f"wrote {args.out}/power.png and {args.out}/power.json")
    return 0


def _cmd_theory(args: argparse.Namespace) -> int:
    from proxynorm.analysis.reports import theory_report
    from proxynorm.data import probe_batch

    inputs, note = probe_batch(args.data, args.batch, args.seed)
    print(f"inputs: {note}")
    theory_report(
        args.out,
        inputs,
        note,
        _random_net_config(args),
        args.realizations,
        _split(args.acts),
        _split(args.linearity_norms),
    )
    print(f"wrote {args.out}/theory.png and {args.out}/theory.json")
    return 0


def _add_random_net_args(p: argparse.ArgumentParser, out: str) -> None:
    g = p.add_argument_group("random nets (Definition 1)")
    g.add_argument("--depth", type=_at_least(1), default=50)
    g.add_argument("--width", type=_at_least(1), default=128)
    g.add_argument("--act", default="relu", help="activation φ (relu, silu, gelu, identity...)")
    g.add_argument("--kernel-size", type=_at_least(1), default=3)
    g.add_argument("--gamma-std", type=_non_negative, default=0.2, help="γ ~ N(1, gamma_std²)")
    g.add_argument("--beta-std", type=_non_negative, default=0.2, help="β ~ N(0, beta_std²)")
    g.add_argument("--first-stride", type=_at_least(1), default=2)
    g.add_argument("--realizations", type=_at_least(1), default=10, help="independent random nets")
    g.add_argument(
        "--seed", type=_at_least(0), default=0, help="seed of realization 0 and of the inputs"
    )
    p.add_argument("--batch", type=_at_least(2), default=128, help="number of input images (>= 2)")
    p.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="image-folder tree or zip for the input batch; synthetic images (with a "
        f"note in the outputs) when missing (default: {DEFAULT_DATA})",
    )
    p.add_argument("--out", default=out, help="output directory (PNG + JSON)")


_TYPES = {
    "int": int,
    "float": float,
    "str": str,
    "int | None": int,
    "str | None": str,
    "list[float]": lambda s: [float(v) for v in s.split(",") if v.strip()],
}


def _add_train_args(p: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per TrainConfig field; unset flags keep the recipe's (or default) value."""
    from dataclasses import MISSING, fields

    from proxynorm.train.config import TrainConfig

    g = p.add_argument_group("training options (defaults: the recipe, then TrainConfig)")
    for f in fields(TrainConfig):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else f.default_factory()
        check = f.metadata.get("check")
        allowed = f"; {check.text}" if getattr(check, "text", None) else ""
        help_text = f"{f.metadata.get('help', '')} (default {default}{allowed})".strip()
        if f.type == "bool":
            g.add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text
            )
        else:
            g.add_argument(flag, type=_TYPES[f.type], default=None, help=help_text)


def _overrides(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict:
    from dataclasses import fields

    from proxynorm.train.config import TrainConfig

    names = {f.name for f in fields(TrainConfig)} - {"recipe", "extra_reg", *skip}
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def _cmd_train(args: argparse.Namespace) -> int:
    from proxynorm.train import build_config, train
    from proxynorm.train.distributed import from_env

    cfg = build_config(args.recipe or "cifar", bool(args.extra_reg), **_overrides(args))
    d = from_env()
    shown = cfg.for_world(d.world_size)
    processes = f" = {d.world_size} processes x {shown.batch_size}" if d.enabled else ""
    if d.main:
        print(
            f"{cfg.model} {cfg.norm} on {cfg.data} ({cfg.data_dir}), recipe {cfg.recipe}: "
            f"{cfg.epochs} epochs, batch {shown.global_batch}{processes}, "
            f"lr {shown.effective_lr:.4g} -> {args.out}"
        )
    final = train(cfg, args.out, resume=args.resume)
    if d.main:
        print(
            f"final test accuracy {final['test_acc']:.2f}%, train accuracy "
            f"{final['train_acc']:.2f}% ({final['wall_seconds']:.0f} s)"
        )
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from proxynorm.train.compare import compare

    base_seed = args.seed or 0
    seeds = list(range(base_seed, base_seed + args.seeds))
    summary = compare(
        args.out,
        _split(args.norms),
        seeds,
        args.recipe or "cifar",
        bool(args.extra_reg),
        **_overrides(args, skip=("seed",)),
    )
    from proxynorm.train.compare import summary_markdown
    from proxynorm.train.distributed import from_env

    if from_env().main:
        print(summary_markdown(summary))
        print(f"wrote {args.out}/summary.md, summary.json and accuracy.png")
    return 1 if summary["failures"] else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from proxynorm.bench import run_benchmarks

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results = run_benchmarks(
        args.out, _split(args.models), args.repeats, _split(args.compile or ""), cpp=args.cpp
    )
    from proxynorm.bench import markdown

    print(markdown(results))
    print(f"wrote {args.out}/bench.json and {args.out}/bench.md")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import torch

    from proxynorm.checkpoint import load_model
    from proxynorm.conversion.export import export_model

    suffix = ".onnx" if args.format == "onnx" else ".torchscript.pt"
    out = Path(args.out or Path(args.checkpoint).with_suffix(suffix))
    if out.resolve() == Path(args.checkpoint).resolve():
        raise ValueError(f"--out {out} is the input checkpoint; refusing to write over it")
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    model = load_model(args.checkpoint)
    size = args.image_size
    example = torch.randn(1, 3, size, size)
    path = export_model(model, out, example, args.format, fold_pn=not args.no_fold)
    print(f"wrote {path} ({args.format}, input 1x3x{size}x{size}, batch dimension dynamic)")
    return 0


def _convert_source(args: argparse.Namespace):
    """The model to convert and its rebuildable description."""
    from proxynorm.checkpoint import load_checkpoint, load_model
    from proxynorm.conversion import build_source

    given = [a for a in ("checkpoint", "torchvision", "timm") if getattr(args, a)]
    if len(given) != 1:
        raise ValueError("give exactly one of --checkpoint, --torchvision NAME, --timm NAME")
    if args.checkpoint:
        if args.weights:
            raise ValueError("--weights is for --torchvision / --timm models")
        return load_model(args.checkpoint)
    lib = given[0]
    kwargs = {"num_classes": args.num_classes} if args.num_classes else {}
    source = {lib: getattr(args, lib), "kwargs": kwargs}
    try:
        model = build_source(source)
    except ImportError as err:
        raise ImportError(f"--{lib} needs {err.name} installed") from None
    if args.weights:
        state = load_checkpoint(args.weights)
        model.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    model.config = source
    return model


def _calibration_batches(args: argparse.Namespace, train: bool = True):
    """``args.calibrate`` class-balanced images of the data's training split (or the test split,
    for evaluation), normalized, in batches of 256."""
    from proxynorm.data import class_balanced_indices, load_small_images, normalize
    from proxynorm.data.transforms import IMAGENET_MEAN, IMAGENET_STD

    if args.data in ("cifar10", "cifar100"):
        tr, te, _ = load_small_images(args.data, args.data_dir, download=False)
        split = tr if train else te
        idx = class_balanced_indices(split.labels.tolist(), args.calibrate, 1) if train else None
        x = split.images if idx is None else split.images[idx]
        y = split.labels if idx is None else split.labels[idx]
        return list(zip(normalize(x).split(256), y.split(256), strict=True))
    from proxynorm.data.image_folder import ImageFolder

    folder = ImageFolder(args.data_dir, "train" if train else "val")
    idx = class_balanced_indices(folder.labels, args.calibrate, 1) if train else range(len(folder))
    x, y = folder.load(list(idx), size=args.image_size)
    return list(
        zip(normalize(x, IMAGENET_MEAN, IMAGENET_STD).split(256), y.split(256), strict=True)
    )


def _accuracy(model, batches) -> float:
    import torch

    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in batches)
    return 100.0 * hits / sum(len(y) for _, y in batches)


def _cmd_convert(args: argparse.Namespace) -> int:
    from proxynorm import convert
    from proxynorm.checkpoint import save_model

    out = Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out} exists; pass --force to overwrite it")
    model = _convert_source(args).eval()
    batches = None
    if args.calibrate:
        batches = _calibration_batches(args)
        print(f"calibrating on {args.calibrate} images of {args.data_dir}", flush=True)
    kw = {k: getattr(args, k) for k in ("groups", "group_size") if getattr(args, k) is not None}
    converted, report = convert(model, args.norm, calibrate=batches, **kw)
    print(report)
    if args.evaluate:
        test = _calibration_batches(args, train=False)
        print(
            f"test accuracy: source {_accuracy(model, test):.2f}%, converted "
            f"{_accuracy(converted, test):.2f}%"
        )
    save_model(out, converted, report=str(report))
    print(f"wrote {out} (load it with proxynorm.models.load_model)")
    return 0


def _diagnose_source(args: argparse.Namespace):
    """The model to diagnose and a title for it."""
    from proxynorm.models import create_model

    if args.model:
        if args.checkpoint or args.torchvision or args.timm:
            raise ValueError("give one of --model, --checkpoint, --torchvision, --timm")
        kw = {"depth": args.depth, "width": args.width} if args.model == "random_net" else {}
        model = create_model(args.model, norm=args.norm, **kw)
        shape = f", depth {args.depth}, width {args.width}" if kw else ""
        return model, f"{args.model} ({args.norm}{shape}, random init)"
    model = _convert_source(args)
    what = (
        "/".join(Path(args.checkpoint).parts[-2:])
        if args.checkpoint
        else args.torchvision or args.timm
    )
    weights = "" if args.checkpoint or args.weights else ", random init"
    return model, f"{what}{weights}"


def _cmd_diagnose(args: argparse.Namespace) -> int:
    import json

    from proxynorm.analysis.diagnose import diagnose, markdown, plot, recommendation
    from proxynorm.data import probe_batch

    model, title = _diagnose_source(args)
    x, note = probe_batch(args.data, args.batches * args.batch_size, seed=args.seed)
    synthetic = note.startswith("SYNTHETIC")
    print(f"inputs: {note}")
    batches = list(x.split(args.batch_size))
    diag = diagnose(model, batches, mode=args.mode)
    diag.note = note if synthetic else ""
    diags = {title: diag}
    other = None
    if args.compare:
        from proxynorm import convert

        converted, _ = convert(model.eval(), "gn+pn", calibrate=batches, group_size=None)
        label = "converted to GN+PN, calibrated on these inputs"
        other = (label, diagnose(converted, batches, mode=args.mode))
        diags[label] = other[1]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"model": title, "inputs": note, **diag.to_dict(),
              "recommendation": recommendation(diag)}  # fmt: skip
    if other:
        report["compare"] = {"model": other[0], **other[1].to_dict()}
    (out / "report.json").write_text(json.dumps(report, indent=1))
    (out / "report.md").write_text(markdown(diag, title, other))
    pngs = plot(diags, out)
    print("\n".join(f"- {f}" for f in diag.findings))
    print(recommendation(diag))
    print(f"wrote {out}/report.md, report.json, {', '.join(pngs)}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxynorm",
        description="Proxy Normalization (Labatie et al., NeurIPS 2021): batch-independent "
        "normalization that matches BatchNorm.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"{DISTRIBUTION} {__version__} (import name proxynorm; Proxy Normalization, "
        "Labatie et al., NeurIPS 2021)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("specs", help="list the norm specs the factory accepts")
    p.set_defaults(func=_cmd_specs)

    p = sub.add_parser("demo", help="channel-wise collapse and batch independence on a random net")
    p.add_argument(
        "--specs", default="bn,ln,ln+pn,gn,gn+pn,in,evos0,frn", help="comma-separated norm specs"
    )
    p.add_argument("--depth", type=_at_least(1), default=30)
    p.add_argument("--width", type=_at_least(1), default=64)
    p.add_argument(
        "--batch",
        type=_at_least(2),
        default=16,
        help="inputs (>= 2: batch dependence is measured by changing the other inputs)",
    )
    p.add_argument("--size", type=_at_least(1), default=16, help="input height and width")
    p.add_argument("--seed", type=_at_least(0), default=0)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("power", help="power plots of random nets or trained checkpoints (Fig. 2)")
    p.add_argument("--norms", default="bn,ln,in,gn,ln+pn,gn+pn", help="comma-separated norm specs")
    p.add_argument(
        "--checkpoint",
        nargs="+",
        metavar="PATH",
        help="trained checkpoints to analyse instead of random nets (eval mode)",
    )
    _add_random_net_args(p, "runs/power")
    p.set_defaults(func=_cmd_power)

    p = sub.add_parser("theory", help="Theorem 1 bound and channel-wise linearity (Fig. 5)")
    p.add_argument("--acts", default="relu,identity", help="activations for Theorem 1 (LN nets)")
    p.add_argument("--linearity-norms", default="ln,gn,ln+pn", help="norms for the linearity plot")
    _add_random_net_args(p, "runs/theory")
    p.set_defaults(func=_cmd_theory)

    p = sub.add_parser(
        "bench", help="time and saved memory of norm-act layers and training steps vs BN+ReLU"
    )
    p.add_argument(
        "--models",
        default="resnet20,resnet50",
        help="resnet20 (batch 128), resnet50 (batch 16, 128x128), resnet50r (quarter width, "
        "64x64, batch 8); -bN sets the batch, e.g. resnet20-b1,resnet50r-b2",
    )
    p.add_argument("--repeats", type=_at_least(1), default=10, help="timed rounds per model")
    p.add_argument(
        "--compile", default="", help="models to also time under torch.compile (e.g. resnet20)"
    )
    p.add_argument(
        "--threads", type=_at_least(0), default=0, help="torch threads (0: PyTorch default)"
    )
    p.add_argument(
        "--cpp",
        action="store_true",
        help="also time eager GN+PN with the opt-in C++ kernel (built on first use, ~1 min)",
    )
    p.add_argument("--out", default="runs/bench", help="output directory (JSON + Markdown)")
    p.set_defaults(func=_cmd_bench)

    p = sub.add_parser("export", help="fold PN and export a checkpoint to ONNX or TorchScript")
    p.add_argument("--checkpoint", required=True, help="a proxynorm checkpoint (.pt)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", help="output file (default: the checkpoint with .onnx / .pt)")
    p.add_argument("--image-size", type=_at_least(1), default=32, help="input height and width")
    p.add_argument("--no-fold", action="store_true", help="export without folding PN")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "convert", help="convert a BN model to a batch-independent norm, calibrated on data"
    )
    p.add_argument("--checkpoint", help="a proxynorm checkpoint (.pt) of a BN model")
    p.add_argument("--torchvision", metavar="NAME", help="a torchvision model instead")
    p.add_argument("--timm", metavar="NAME", help="a timm model instead")
    p.add_argument("--weights", help="a local state dict for --torchvision / --timm")
    p.add_argument("--num-classes", type=_at_least(1), help="classes of --torchvision / --timm")
    p.add_argument("--norm", default="gn+pn", help="target spec (batch independent)")
    p.add_argument("--groups", type=_at_least(1), help="GroupNorm groups (per-layer fallback)")
    p.add_argument("--group-size", type=_at_least(1), help="channels per group instead")
    p.add_argument("--data", default="cifar10", choices=("cifar10", "cifar100", "imagefolder"))
    p.add_argument("--data-dir", default=DEFAULT_DATA, help=f"data (default {DEFAULT_DATA})")
    p.add_argument(
        "--calibrate", type=_at_least(0), default=2048, help="calibration images (0: none)"
    )
    p.add_argument("--image-size", type=_at_least(1), default=224, help="image folders only")
    p.add_argument("--evaluate", action="store_true", help="test accuracy before and after")
    p.add_argument("--out", required=True, help="the converted checkpoint (.pt)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")
    p.set_defaults(func=_cmd_convert)

    p = sub.add_parser(
        "diagnose", help="what normalization does inside a model: collapse, dead channels, ..."
    )
    p.add_argument("--checkpoint", help="a proxynorm checkpoint (.pt)")
    p.add_argument("--model", help="a model of list_models(), random init, with --norm")
    p.add_argument("--norm", default="bn", help="norm spec for --model (default bn)")
    p.add_argument("--depth", type=_at_least(1), default=30, help="--model random_net only")
    p.add_argument("--width", type=_at_least(1), default=64, help="--model random_net only")
    p.add_argument("--torchvision", metavar="NAME", help="a torchvision model")
    p.add_argument("--timm", metavar="NAME", help="a timm model")
    p.add_argument("--weights", help="a local state dict for --torchvision / --timm")
    p.add_argument("--num-classes", type=_at_least(1), help="classes of --torchvision / --timm")
    p.add_argument(
        "--data",
        default=DEFAULT_DATA,
        help="image-folder tree or zip for the inputs (test split, 32x32); synthetic inputs, "
        f"said loudly in the report, when missing (default {DEFAULT_DATA})",
    )
    p.add_argument("--batches", type=_at_least(1), default=4, help="input batches")
    p.add_argument("--batch-size", type=_at_least(3), default=64, help="images per batch")
    p.add_argument("--mode", choices=("eval", "train"), default="eval", help="norm statistics")
    p.add_argument("--compare", action="store_true", help="also diagnose its GN+PN conversion")
    p.add_argument("--seed", type=_at_least(0), default=0, help="seed of the input selection")
    p.add_argument("--out", default="runs/diagnose", help="output directory")
    p.set_defaults(func=_cmd_diagnose)

    p = sub.add_parser("train", help="train one model with one norm")
    p.add_argument("--out", required=True, help="run directory (config, metrics, checkpoint)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    _add_train_args(p)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("compare", help="train several norms x seeds and summarize")
    p.add_argument("--out", required=True, help="directory of the comparison")
    p.add_argument("--norms", default="bn,gn,gn+pn,ln,ln+pn", help="comma-separated norm specs")
    p.add_argument("--seeds", type=_at_least(1), default=3, help="number of seeds, from --seed on")
    _add_train_args(p, skip=("norm",))
    p.set_defaults(func=_cmd_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, TypeError, ImportError, FileNotFoundError, FileExistsError) as err:
        print(f"proxynorm: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:  # e.g. TrainingDiverged: the message says what is kept
        print(f"proxynorm: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    finally:
        if "torch.distributed" in sys.modules:
            from proxynorm.train.distributed import shutdown

            shutdown()


if __name__ == "__main__":
    sys.exit(main())
