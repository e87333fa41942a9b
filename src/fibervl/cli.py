"""The ``fibervl`` command line.

Subcommands that run a recipe (``pretrain``, ``finetune``, ``evaluate``, ``predict``) list the
recipes of :func:`fibervl.recipes.registry.recipes` that have them and run
:func:`fibervl.recipes.commands.run_command` (``--config FILE [--resume] key=value ...``).
Each runs inside a :func:`~fibervl.data.skip_report`: with ``--skip-bad-records`` the bad
records it left out are summed up per file and reason at the end.
"""

from __future__ import annotations

import argparse
import sys

# the recipe commands, each with what it does
VERBS = {
    "pretrain": "pre-training stages",
    "finetune": "fine-tune a task",
    "evaluate": "evaluate a task",
    "predict": "predict with a trained model",
}


def verb_names(verb: str) -> list[str]:
    """The recipes that have the command ``verb``, in the registry's order."""
    from .recipes.registry import recipes

    return [name for name, recipe in recipes().items() if verb in recipe.verbs]


def _info(args: argparse.Namespace) -> int:
    from .report import parameter_report

    print(parameter_report(args.model))
    return 0


def _convert(args: argparse.Namespace) -> int:
    from .convert.cli import run_convert

    return run_convert(args)


def _export(args: argparse.Namespace) -> int:
    from .export.cli import run_export

    return run_export(args)


def _demo(args: argparse.Namespace) -> int:
    from .demo.cli import run_demo

    return run_demo(args)


def _recipe(args: argparse.Namespace) -> int:
    if args.recipe is None:
        if args.help:
            args.verb_parser.print_help()
            return 0
        args.verb_parser.error("give a NAME")
    if args.help:
        args.rest = ["--help", *args.rest]
    from .data.errors import skip_report
    from .recipes.commands import run_command
    from .recipes.registry import get_recipe

    with skip_report():  # a run that skipped bad records ends by summing them up
        return run_command(get_recipe(args.recipe), args.command, args.rest)


def _run(args: argparse.Namespace) -> int:
    from .mainjob.cli import main as run_main

    return run_main(args.rest)


def _data(argv: list[str]) -> int:
    from .data.cli import main as data_main

    return data_main(argv)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fibervl", description="FIBER vision-language models in plain PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    info = sub.add_parser("info", help="parameter report of a preset or a saved model directory")
    info.add_argument("model", help="preset name (e.g. fiber-base, fiber-tiny) or a from_pretrained directory")
    info.set_defaults(func=_info)

    from .convert.cli import add_convert_parser

    add_convert_parser(sub).set_defaults(func=_convert)
    from .export.cli import add_export_parser

    add_export_parser(sub).set_defaults(func=_export)
    from .demo.cli import add_demo_parser

    add_demo_parser(sub).set_defaults(func=_demo)
    sub.add_parser("data", help="write data sets: fibervl data shapes --out DIR (see fibervl data -h)", add_help=False)

    for verb, what in VERBS.items():
        names = verb_names(verb)
        # No automatic -h here: "fibervl predict vqa -h" must reach the recipe's own options.
        p = sub.add_parser(verb, help=f"{what}: {', '.join(names)}", add_help=False,
                           description=f"fibervl {verb} NAME --config FILE [--resume [PATH]] key=value ... "
                                       f"(fibervl {verb} NAME -h: the options of NAME)")
        p.add_argument("recipe", nargs="?", choices=names, metavar="NAME", help=", ".join(names))
        p.add_argument("-h", "--help", action="store_true", help="this help, or NAME's options after NAME")
        p.set_defaults(func=_recipe, verb_parser=p)
    sub.add_parser("run", help="the main job: data, pre-training, all seven tasks, report (fibervl run -h)",
                   add_help=False).set_defaults(func=_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .engine.allocator import keep_freed_memory

    keep_freed_memory()  # large tensors re-use freed memory instead of faulting in fresh pages
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "data":
        return _data(argv[1:])
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    args.rest = rest
    if rest and args.func not in (_recipe,) and args.command != "run":
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        return args.func(args)
    except (FileNotFoundError, ValueError, RuntimeError, KeyError) as err:
        print(f"fibervl {args.command}: error: {err}", file=sys.stderr)
        if args.func is _recipe and _bad_record(err) and not _skipping(rest):
            if args.command == "evaluate" and _names_an_image(err):  # skipping cannot go past it: see docstring
                print("  an evaluation image that does not load: every image of the split is scored, so restore "
                      "it or leave its record out of the annotations (docs/datasets.md, Bad input)", file=sys.stderr)
            else:
                print("  a bad record: --skip-bad-records leaves such records out, warns about each and sums them up "
                      "(docs/datasets.md, Bad input)", file=sys.stderr)
        return 1


def _names_an_image(err: Exception) -> bool:
    """Whether a record's error is about its image file (missing, unreadable), not its annotation:
    evaluation does not skip those, since a left-out image would change what is scored."""
    from pathlib import Path

    from .predict.cli import IMAGE_SUFFIXES

    return Path(str(getattr(err, "file", "") or "")).suffix.lower() in IMAGE_SUFFIXES


def _bad_record(err: Exception) -> bool:
    """A reader's error about one record (not about a whole file): skipping can go past it."""
    from .data.errors import DataError

    return isinstance(err, DataError) and err.record is not None


def _skipping(rest: list[str]) -> bool:
    return "--skip-bad-records" in rest or any(a.replace(" ", "") == "data.skip_bad_records=true" for a in rest)


if __name__ == "__main__":
    raise SystemExit(main())
