"""``fibervl data ...`` commands (the top-level CLI routes ``fibervl data`` here).

    fibervl data shapes --out DIR [--size N|tiny|small|default|large] [--seed S] [--workers W]
    fibervl data check SPEC [--kind KIND] [--split S] [--no-images] [--json]
    python -m fibervl.data.cli shapes --out DIR

``check`` reads a data source (``FORMAT:ANNOTATIONS[:IMAGES]``, :mod:`fibervl.data.sources`) the
way training would and reports counts per split and category and every problem found, named
by file and record; it exits 1 when it found any, 2 when the source cannot be read at all.
"""

from __future__ import annotations

import argparse
import os
import sys


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fibervl data", description="Data sets of fibervl.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("shapes", help="write the embedded shapes data set (all formats) into DIR")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--size", default="default",
                   help="training images: an integer or tiny (60), small (1000), default (10000), large (50000); "
                        "val and test get a tenth each (at least 20)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=128, help="image side in pixels")
    p.add_argument("--format", choices=("jpg", "png"), default="jpg", help="image files: JPEG q95 4:4:4, or PNG")
    p.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="rendering processes")
    p.add_argument("--vocab-size", type=int, default=1000, help="upper bound of the trained tokenizer's vocabulary")
    p.add_argument("--no-webdataset", action="store_true", help="skip the webdataset tar shards")
    p.add_argument("--force", action="store_true", help="write into a non-empty directory")
    p.add_argument("--nlvr2-per-image", type=float, default=2.0,
                   help="NLVR2 statements per image of each split (default 2.0: about 540 test statements for 300 test images)")
    p.add_argument("--objects", default="2-8", help="objects per image, MIN-MAX (default 2-8; e.g. 1-3 for an easy set)")
    p.add_argument("--backgrounds", default="plain,striped,checkered,speckled,cloudy",
                   help="comma-separated background kinds to draw from (default: all five)")
    b = sub.add_parser("baselines", help="recompute DIR/baselines.json of a generated shapes directory")
    b.add_argument("dir")
    from .sources import FORMATS, KINDS

    c = sub.add_parser("check", help="read a data source as training would; report counts and every problem",
                       epilog="formats: " + "; ".join(f"{f.name}: {f.about}" for f in FORMATS.values()))
    c.add_argument("spec", metavar="SPEC", help="FORMAT[,KEY=VALUE...]:ANNOTATIONS[:IMAGES], e.g. "
                                                "coco:coco/annotations/instances_val2017.json:coco/val2017")
    c.add_argument("--kind", action="append", choices=KINDS, help="what to read it as (default: all its format holds)")
    c.add_argument("--split", action="append", help="splits to read (default: all the files show)")
    c.add_argument("--no-images", action="store_true", help="do not open the images")
    c.add_argument("--image-limit", type=int, default=0, help="open at most N images per split and kind (0: all)")
    c.add_argument("--listed", type=int, default=10, help="problems named per kind of problem (default 10)")
    c.add_argument("--json", action="store_true", help="print the report as one JSON object")
    return parser


def _check(args) -> int:
    import json

    from ..errors import ConfigError
    from .errors import DataError
    from .sources import parse_spec
    from .sources.check import check_source, format_report

    try:
        report = check_source(parse_spec(args.spec), args.kind, args.split, images=not args.no_images,
                              image_limit=args.image_limit)
    except (ConfigError, DataError) as exc:
        print(f"fibervl data check: error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report) if args.json else format_report(report, args.listed))
    return 1 if report["errors"] else 0


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "check":
        return _check(args)
    if args.command == "shapes":
        from pathlib import Path

        from .shapes import ShapesConfig, generate, parse_size

        out = Path(args.out)
        if out.exists() and any(out.iterdir()) and not args.force:
            print(f"error: {out} is not empty (use --force to write into it)", file=sys.stderr)
            return 2
        try:
            size = parse_size(args.size)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        if args.image_size < 64:
            print("error: --image-size must be at least 64 (the smallest objects would vanish)", file=sys.stderr)
            return 2
        try:
            low, _, high = args.objects.partition("-")
            cfg = ShapesConfig(size=size, seed=args.seed, image_size=args.image_size, image_format=args.format,
                               workers=max(1, args.workers), vocab_size=args.vocab_size,
                               webdataset=not args.no_webdataset, min_objects=int(low), max_objects=int(high or low),
                               nlvr2_per_image=args.nlvr2_per_image,
                               backgrounds=tuple(b.strip() for b in args.backgrounds.split(",") if b.strip()))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        meta = generate(out, cfg, progress=True)
        print(f"wrote {out} in {meta['generation_seconds']} s: "
              + ", ".join(f"{s} {c['images']} images" for s, c in meta["splits"].items()))
        return 0
    if args.command == "baselines":
        import json
        from pathlib import Path

        from ..metrics.baselines import compute_baselines
        from .errors import DataError
        from .shapes.readme import write_readme

        try:
            result = compute_baselines(args.dir)
        except DataError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        root = Path(args.dir)
        (root / "baselines.json").write_text(json.dumps(result, indent=1), encoding="utf-8")
        write_readme(root, json.loads((root / "dataset.json").read_text(encoding="utf-8")), result)
        print(json.dumps(result, indent=1))
        return 0
    return 2  # argparse rejects unknown commands before this


if __name__ == "__main__":
    sys.exit(main())
