"""The ``fibervl`` command line. Each subcommand lives in the module that owns its work."""

from __future__ import annotations

import argparse
import sys


def _info(args: argparse.Namespace) -> int:
    from .report import parameter_report

    print(parameter_report(args.model))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .convert.cli import run_convert

    return run_convert(args)


def _data(argv: list[str]) -> int:
    try:
        from .data.cli import main as data_main
    except ImportError as err:
        print(f"fibervl data: the data package is not available in this build ({err})", file=sys.stderr)
        return 2
    return data_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fibervl", description="FIBER vision-language models in plain PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="parameter report of a preset or a saved model directory")
    info.add_argument("model", help="preset name (e.g. fiber-base, fiber-tiny) or a from_pretrained directory")
    info.set_defaults(func=_info)

    from .convert.cli import add_convert_parser

    add_convert_parser(sub).set_defaults(func=_convert)

    sub.add_parser("data", help="write data sets (fibervl data shapes --out DIR)", add_help=False)

    for name, what in [("run", "the main job"), ("pretrain", "pre-training"), ("finetune", "fine-tuning"),
                       ("evaluate", "evaluation"), ("predict", "prediction")]:
        p = sub.add_parser(name, help=f"{what} (not available in this version yet)", add_help=False)
        p.set_defaults(func=_not_yet, what=what)
    return parser


def _not_yet(args: argparse.Namespace) -> int:
    print(f"fibervl {args.command}: {args.what} is not available in this version of fibervl yet; "
          "see README.md (Status) for what is.", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "data":
        return _data(argv[1:])
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and args.func is not _not_yet:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"fibervl {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
