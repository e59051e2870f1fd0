"""``aptune data check`` (validate annotations and decode every video) and
``aptune data synth`` (write a synthetic dataset in any supported layout)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aptune.errors import ConfigError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="check a video dataset or write a synthetic one")
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    check = commands.add_parser(
        "check", help="validate annotations and decode a clip of every video"
    )
    check.add_argument("--config", help="YAML recipe (its data section is used)")
    check.add_argument("--json", metavar="OUT", help="also write the summary as JSON")
    check.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. data.root=/data/ucf101 (repeatable)",
    )
    check.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    check.set_defaults(func=run_check)

    synth = commands.add_parser("synth", help="write a synthetic dataset of real video files")
    synth.add_argument("out", help="output folder (the dataset root)")
    synth.add_argument(
        "--format", default="list", choices=("list", "ucf101", "hmdb51", "ssv2", "kinetics")
    )
    synth.add_argument("--classes", type=int, default=10, help="number of classes: the first N motions (default 10)")
    synth.add_argument("--motions", help="comma-separated motion names to use as classes "
                       "(instead of the first --classes), e.g. right,left or red_moves,blue_moves; "
                       "see aptune.data.synth.MOTIONS")
    synth.add_argument("--per-class", type=int, default=20, help="videos per class")
    synth.add_argument("--frames", type=int, default=32, help="frames per video")
    synth.add_argument("--size", default="64x64", help="HxW, e.g. 112x112")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--fps", type=float, default=25.0)
    synth.add_argument("--workers", type=int, default=1,
                       help="processes that render and encode (the files do not depend on it)")
    synth.add_argument(
        "--gop", type=int, default=None, help="keyframe interval (default: the encoder's)"
    )
    synth.set_defaults(func=run_synth)


def run_check(args: argparse.Namespace) -> int:
    from aptune.config import load_config
    from aptune.data.check import check_dataset, format_summary

    config = load_config(args.config, args.overrides)
    if not config.data.root and not config.data.annotations:
        raise ConfigError("data.root is empty: give --config or --set data.root=PATH")
    summary = check_dataset(config.data, progress=not args.no_progress)
    print(format_summary(summary))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2))
    return 0 if summary["usable"] else 1


def _parse_size(text: str) -> tuple[int, int]:
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--size {text!r}: expected HxW, e.g. 64x64") from None
    if height < 2 or width < 2:
        raise ConfigError(f"--size {text!r}: height and width must be >= 2")
    return height, width


def run_synth(args: argparse.Namespace) -> int:
    from aptune.data.synth import MOTIONS, make_synthetic_dataset

    motions = [m.strip() for m in args.motions.split(",")] if args.motions else None
    known = dict(MOTIONS)
    if motions is not None and (not motions or any(m not in known for m in motions)):
        raise ConfigError(f"--motions {args.motions!r}: use names from {', '.join(known)}")
    if motions is None and not 1 <= args.classes <= len(MOTIONS):
        raise ConfigError(f"--classes must be between 1 and {len(MOTIONS)}, got {args.classes}")
    if args.per_class < 1 or args.frames < 1 or args.workers < 1:
        raise ConfigError("--per-class, --frames and --workers must be >= 1")
    dataset = make_synthetic_dataset(
        args.out,
        format=args.format,
        num_classes=args.classes,
        per_class=args.per_class,
        frames=args.frames,
        size=_parse_size(args.size),
        seed=args.seed,
        fps=args.fps,
        gop=args.gop,
        motions=motions,
        workers=args.workers,
    )
    print(
        f"wrote {dataset.num_videos} {args.format} videos of {len(dataset.class_names)} classes "
        f"to {dataset.root}",
        file=sys.stdout,
    )
    print(f"use: --set data.format={args.format} --set data.root={dataset.root}")
    return 0
