"""The ``proxynorm`` command line: argument parsing and wiring only."""

from __future__ import annotations

import argparse
import sys

from proxynorm.version import DISTRIBUTION, __version__


def _cmd_specs(args: argparse.Namespace) -> int:
    from proxynorm.layers.factory import spec_table

    print(spec_table())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from proxynorm.analysis.demo import demo_report

    print(demo_report(_split(args.specs), args.depth, args.width, args.batch, args.size, args.seed))
    return 0


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


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _cmd_random_nets(args: argparse.Namespace) -> int:
    """``power`` and ``theory``: random nets (or checkpoints) on one batch of inputs."""
    from proxynorm.analysis.random_nets import RandomNetConfig
    from proxynorm.analysis.reports import power_report, theory_report
    from proxynorm.data import probe_batch

    inputs, note = probe_batch(args.data, args.batch, args.seed)
    print(f"inputs: {note}")
    config, n = RandomNetConfig.from_namespace(args), args.realizations
    if args.command == "power":
        power_report(args.out, inputs, note, _split(args.norms), config, n, args.checkpoint or ())
    else:
        theory_report(args.out, inputs, note, config, n, _split(args.acts),
                      _split(args.linearity_norms))  # fmt: skip
    print(f"wrote {args.out}/{args.command}.png and {args.out}/{args.command}.json")
    return 0


def _add_random_net_args(p: argparse.ArgumentParser, out: str) -> None:
    from dataclasses import fields

    from proxynorm.analysis.random_nets import RandomNetConfig

    g = p.add_argument_group("random nets (Definition 1)")
    for f in fields(RandomNetConfig):  # each setting's range and help are beside its field
        low = f.metadata["min"]
        kind = str if low is None else _at_least(low) if f.type == "int" else _non_negative
        g.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default,
                       help=f.metadata["help"] or None)  # fmt: skip
    g.add_argument("--realizations", type=_at_least(1), default=10, help="independent random nets")
    p.add_argument("--batch", type=_at_least(2), default=128, help="number of input images (>= 2)")
    p.add_argument("--data", help="image-folder tree or zip for the input batch (e.g. "
                   "../shared/data/cifar10-jpeg.zip); synthetic images when not given")
    p.add_argument("--out", default=out, help="output directory (PNG + JSON)")


def _cmd_train(args: argparse.Namespace) -> int:
    from proxynorm.train import build_config, train
    from proxynorm.train.config import overrides
    from proxynorm.train.distributed import from_env

    cfg = build_config(args.recipe or "cifar", bool(args.extra_reg), **overrides(args))
    d = from_env()
    if d.main:
        print(f"{cfg.describe(d.world_size if d.enabled else 1)} -> {args.out}")
    final = train(cfg, args.out, resume=args.resume)
    if d.main:
        print(f"final test accuracy {final['test_acc']:.2f}%, train accuracy "
              f"{final['train_acc']:.2f}% ({final['wall_seconds']:.0f} s)")  # fmt: skip
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from proxynorm.train.compare import compare, summary_markdown
    from proxynorm.train.config import overrides
    from proxynorm.train.distributed import from_env

    seeds = list(range(args.seed or 0, (args.seed or 0) + args.seeds))
    summary = compare(args.out, _split(args.norms), seeds, args.recipe or "cifar",
                      bool(args.extra_reg), **overrides(args, skip=("seed",)))  # fmt: skip
    if from_env().main:
        print(summary_markdown(summary))
        print(f"wrote {args.out}/summary.md, summary.json and accuracy.png")
    return 1 if summary["failures"] else 0


def _cmd_bench(args: argparse.Namespace) -> int:
    import torch

    from proxynorm.bench import markdown, run_benchmarks

    torch.set_num_threads(args.threads or torch.get_num_threads())
    models, compiled = _split(args.models), _split(args.compile or "")
    print(markdown(run_benchmarks(args.out, models, args.repeats, compiled, cpp=args.cpp)))
    print(f"wrote {args.out}/bench.json and {args.out}/bench.md")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from proxynorm.checkpoint import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, args.format, args.image_size,
                             fold_pn=not args.no_fold, force=args.force)  # fmt: skip
    print(f"wrote {path} ({args.format}, input 1x3x{args.image_size}x{args.image_size}, dynamic N)")
    return 0


def _source(args: argparse.Namespace, **model: object):
    from proxynorm.checkpoint import resolve_model

    keys = ("checkpoint", "pretrained", "torchvision", "timm", "weights", "num_classes")
    return resolve_model(**{k: getattr(args, k) for k in keys}, **model)


def _cmd_convert(args: argparse.Namespace) -> int:
    from proxynorm import convert
    from proxynorm.checkpoint import save_model
    from proxynorm.data import labelled_batches
    from proxynorm.files import refuse_overwrite
    from proxynorm.train.metrics import accuracy

    refuse_overwrite(args.out, args.force)
    if (args.calibrate or args.evaluate) and not args.data_dir:
        raise ValueError("--calibrate and --evaluate read images: give --data-dir")
    model = _source(args)[0].eval()
    data = dict(data=args.data, data_dir=args.data_dir, image_size=args.image_size)
    batches = labelled_batches(images=args.calibrate, **data) if args.calibrate else None
    if batches:
        print(f"calibrating on {args.calibrate} images of {args.data_dir}", flush=True)
    names = ("groups", "group_size", "reconstruct_steps", "distill_steps")
    kw = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
    converted, report = convert(model, args.norm, calibrate=batches, **kw)
    print(report)
    if args.evaluate:
        test = labelled_batches(train=False, **data)
        print(f"test accuracy: source {accuracy(model, test):.2f}%, converted "
              f"{accuracy(converted, test):.2f}%")  # fmt: skip
    save_model(args.out, converted, report=str(report))
    print(f"wrote {args.out} (load it with proxynorm.checkpoint.load_model)")
    return 0


def _cmd_diagnose(args: argparse.Namespace) -> int:
    from proxynorm.analysis.diagnose_report import recommendation, write_report
    from proxynorm.data import probe_batch

    shape = {"depth": args.depth, "width": args.width} if args.model == "random_net" else {}
    model, title = _source(args, model=args.model, norm=args.norm, model_kwargs=shape)
    x, note = probe_batch(args.data, args.batches * args.batch_size, seed=args.seed)
    print(f"inputs: {note}")
    batches = list(x.split(args.batch_size))
    diag, files = write_report(args.out, model, title, batches, note, args.mode, args.compare)
    print("\n".join([*(f"- {f}" for f in diag.findings), recommendation(diag),
                     f"wrote {args.out}/{', '.join(files)}"]))  # fmt: skip
    return 0


def _parse_demo(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--specs", default="bn,ln,ln+pn,gn,gn+pn,in,evos0,frn", help="comma-separated norm specs"
    )
    p.add_argument("--depth", type=_at_least(1), default=30)
    p.add_argument("--width", type=_at_least(1), default=64)
    p.add_argument("--batch", type=_at_least(2), default=16,
                   help="inputs (>= 2: batch dependence changes the other inputs)")
    p.add_argument("--size", type=_at_least(1), default=16, help="input height and width")
    p.add_argument("--seed", type=_at_least(0), default=0)


def _parse_power(p: argparse.ArgumentParser) -> None:
    p.add_argument("--norms", default="bn,ln,in,gn,ln+pn,gn+pn", help="comma-separated norm specs")
    p.add_argument("--checkpoint", nargs="+", metavar="PATH",
                   help="trained checkpoints to analyse instead of random nets (eval mode)")
    _add_random_net_args(p, "runs/power")


def _parse_theory(p: argparse.ArgumentParser) -> None:
    p.add_argument("--acts", default="relu,identity", help="activations for Theorem 1 (LN nets)")
    p.add_argument("--linearity-norms", default="ln,gn,ln+pn", help="norms for the linearity plot")
    _add_random_net_args(p, "runs/theory")


def _parse_bench(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="resnet20,resnet50",
                   help="resnet20 (batch 128), resnet50 (batch 16, 128x128), resnet50r (quarter "
                   "width, 64x64, batch 8); -bN sets the batch, e.g. resnet20-b1,resnet50r-b2")
    p.add_argument("--repeats", type=_at_least(1), default=10, help="timed rounds per model")
    p.add_argument("--compile", default="", help="models to also time under torch.compile")
    p.add_argument("--threads", type=_at_least(0), default=0, help="torch threads (0: default)")
    p.add_argument("--cpp", action="store_true",
                   help="also time eager GN+PN with the opt-in C++ kernel (built on first use)")
    p.add_argument("--out", default="runs/bench", help="output directory (JSON + Markdown)")


def _parse_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="a proxynorm checkpoint (.pt)")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", help="output file (default: the checkpoint with .onnx / .pt)")
    p.add_argument("--image-size", type=_at_least(1), default=32, help="input height and width")
    p.add_argument("--no-fold", action="store_true", help="export without folding PN")
    p.add_argument("--force", action="store_true", help="overwrite an existing output file")


def _add_source_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", help="a proxynorm checkpoint (.pt)")
    p.add_argument("--pretrained", metavar="MODEL/NORM", help="shipped weights: resnet20/bn")
    p.add_argument("--torchvision", metavar="NAME", help="a torchvision model instead")
    p.add_argument("--timm", metavar="NAME", help="a timm model instead")
    p.add_argument("--weights", help="a local state dict for --torchvision / --timm")
    p.add_argument("--num-classes", type=_at_least(1), help="classes of --torchvision / --timm")


def _parse_convert(p: argparse.ArgumentParser) -> None:
    _add_source_args(p)
    p.add_argument("--norm", default="gn+pn", help="target spec (batch independent)")
    p.add_argument("--groups", type=_at_least(1), help="GroupNorm groups (per-layer fallback)")
    p.add_argument("--group-size", type=_at_least(1), help="channels per group instead")
    p.add_argument("--data", default="cifar10", choices=("cifar10", "cifar100", "imagefolder"))
    p.add_argument("--data-dir", help="the data of --calibrate and --evaluate (dir or zip)")
    p.add_argument("--calibrate", type=_at_least(0), default=2048,
                   help="calibration images of the training split (0: none)")  # fmt: skip
    p.add_argument("--reconstruct-steps", type=_at_least(0), help="then Adam steps per block")
    p.add_argument("--distill-steps", type=_at_least(0), help="then whole-model distillation")
    p.add_argument("--image-size", type=_at_least(1), default=224, help="image folders only")
    p.add_argument("--evaluate", action="store_true", help="test accuracy before and after")
    p.add_argument("--out", required=True, help="the converted checkpoint (.pt)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out")


def _parse_diagnose(p: argparse.ArgumentParser) -> None:
    _add_source_args(p)
    p.add_argument("--model", help="a model of list_models(), random init, with --norm")
    p.add_argument("--norm", default="bn", help="norm spec for --model (default bn)")
    p.add_argument("--depth", type=_at_least(1), default=30, help="--model random_net only")
    p.add_argument("--width", type=_at_least(1), default=64, help="--model random_net only")
    p.add_argument("--data", help="image-folder tree or zip for the inputs (test split, 32x32), "
                   "e.g. ../shared/data/cifar10-jpeg.zip; synthetic inputs, said loudly in the "
                   "report, when not given")  # fmt: skip
    p.add_argument("--batches", type=_at_least(1), default=4, help="input batches")
    p.add_argument("--batch-size", type=_at_least(3), default=64, help="images per batch")
    p.add_argument("--mode", choices=("eval", "train"), default="eval", help="norm statistics")
    p.add_argument("--compare", action="store_true", help="also diagnose its GN+PN conversion")
    p.add_argument("--seed", type=_at_least(0), default=0, help="seed of the input selection")
    p.add_argument("--out", default="runs/diagnose", help="output directory")


def _parse_train(p: argparse.ArgumentParser) -> None:
    from proxynorm.train.config import add_arguments

    p.add_argument("--out", required=True, help="run directory (config, metrics, checkpoint)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    add_arguments(p)


def _parse_compare(p: argparse.ArgumentParser) -> None:
    from proxynorm.train.config import add_arguments

    p.add_argument("--out", required=True, help="directory of the comparison")
    p.add_argument("--norms", default="bn,gn,gn+pn,ln,ln+pn", help="comma-separated norm specs")
    p.add_argument("--seeds", type=_at_least(1), default=3, help="number of seeds, from --seed on")
    add_arguments(p, skip=("norm",))


COMMANDS = {  # name: (help, the function that adds its options, the function that runs it)
    "specs": ("list the norm specs the factory accepts", None, _cmd_specs),
    "demo": ("collapse and batch independence on a random net", _parse_demo, _cmd_demo),
    "power": ("power plots of random nets or checkpoints (Fig. 2)", _parse_power, _cmd_random_nets),
    "theory": ("Theorem 1 bound and linearity (Fig. 5)", _parse_theory, _cmd_random_nets),
    "bench": ("time and memory of norm-act layers and steps vs BN", _parse_bench, _cmd_bench),
    "export": ("fold PN, export a checkpoint to ONNX or TorchScript", _parse_export, _cmd_export),
    "convert": ("BN model -> batch-independent norm, calibrated", _parse_convert, _cmd_convert),
    "diagnose": ("what normalization does inside a model", _parse_diagnose, _cmd_diagnose),
    "train": ("train one model with one norm", _parse_train, _cmd_train),
    "compare": ("train several norms x seeds and summarize", _parse_compare, _cmd_compare),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxynorm",
        description="Proxy Normalization (Labatie et al., NeurIPS 2021): batch-independent "
        "normalization that matches BatchNorm.",
    )
    parser.add_argument("--version", action="version",
                        version=f"{DISTRIBUTION} {__version__} (import name proxynorm; Proxy "
                        "Normalization, Labatie et al., NeurIPS 2021)")  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (help_text, add_options, run) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        p.set_defaults(func=run)
        if add_options is not None:
            add_options(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.set_defaults(func=lambda args: parser.print_help() or 0)
    args = parser.parse_args(argv)
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
