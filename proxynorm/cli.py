"""The ``proxynorm`` command line: argument parsing and wiring only."""

from __future__ import annotations

import argparse
import sys

from proxynorm import __version__


def _cmd_specs(args: argparse.Namespace) -> int:
    from proxynorm.layers import KNOWN_SPECS, NORM_ACT_LAYERS, parse_spec

    print("| spec | class | batch dependent |\n|---|---|---|")
    for name in KNOWN_SPECS:
        s = parse_spec(name)
        print(f"| {name} | {NORM_ACT_LAYERS[s.base].__name__} | {s.batch_dependent} |")
    print("\nAdd +ws to any spec for weight-standardized convs (e.g. gn+pn+ws).")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from proxynorm.demo import format_rows, run_demo

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="proxynorm",
        description="Proxy Normalization (Labatie et al., NeurIPS 2021): batch-independent "
        "normalization that matches BatchNorm.",
    )
    parser.add_argument("--version", action="version", version=f"proxynorm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("specs", help="list the norm specs the factory accepts")
    p.set_defaults(func=_cmd_specs)

    p = sub.add_parser("demo", help="channel-wise collapse and batch independence on a random net")
    p.add_argument(
        "--specs", default="bn,ln,ln+pn,gn,gn+pn,in,evos0,frn", help="comma-separated norm specs"
    )
    p.add_argument("--depth", type=int, default=30)
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--size", type=int, default=16, help="input height and width")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, TypeError) as err:
        print(f"proxynorm: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
