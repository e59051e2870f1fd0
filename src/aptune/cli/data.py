"""``aptune data check`` (validate annotations and decode every video) and
``aptune data synth`` (write a synthetic dataset in any supported layout)."""

from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

from aptune.config import load_config
from aptune.data.check import check_dataset, format_summary
from aptune.data.synth import FPS_RANGE, MAX_GOP, MAX_PIXELS_PER_VIDEO, MOTIONS, make_synthetic_dataset
from aptune.errors import ConfigError, OutputError
from aptune.fileio import make_folder, write_json_atomically

# Upper bounds for ``aptune data synth``: generous for any test or demo, small enough that
# a typo (an extra zero or three) is an error rather than hours of encoding or a full disk.
MAX_PER_CLASS = 100_000
MAX_FRAMES = 10_000
MAX_SIDE = 4096
MAX_WORKERS = 256


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser("data", help="check a video dataset or write a synthetic one")
    commands = parser.add_subparsers(dest="data_command", metavar="ACTION")
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])

    check = commands.add_parser("check", help="validate annotations and decode a clip of every video")
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
    synth.add_argument("--format", default="list", choices=("list", "ucf101", "hmdb51", "ssv2", "kinetics"))
    synth.add_argument("--classes", type=int, default=10, help="number of classes: the first N motions (default 10)")
    synth.add_argument(
        "--motions",
        help="comma-separated motion names to use as classes "
        "(instead of the first --classes), e.g. right,left or red_moves,blue_moves; "
        "see aptune.data.synth.MOTIONS",
    )
    synth.add_argument("--per-class", type=int, default=20, help="videos per class")
    synth.add_argument("--frames", type=int, default=32, help="frames per video")
    synth.add_argument("--size", default="64x64", help="HxW, e.g. 112x112")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--fps", type=float, default=25.0)
    synth.add_argument(
        "--workers", type=int, default=1, help="processes that render and encode (the files do not depend on it)"
    )
    synth.add_argument("--gop", type=int, default=None, help="keyframe interval (default: the encoder's)")
    synth.set_defaults(func=run_synth)


def run_check(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    if not config.data.root and not config.data.annotations:
        raise ConfigError("data.root is empty: give --config or --set data.root=PATH")
    if args.json:
        _check_writable(Path(args.json))  # before decoding every video, not after
    summary = check_dataset(config.data, progress=not args.no_progress)
    print(format_summary(summary))
    if args.json:
        write_json_atomically(args.json, summary)
    return 0 if summary["usable"] else 1


def _check_writable(path: Path) -> None:
    """Fail in one line now if ``path`` cannot be written later (its folder is created)."""
    if path.is_dir():
        raise OutputError(f"{path}: cannot write (a folder of that name is in the way)")
    folder = make_folder(path.parent if str(path.parent) else Path("."))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write (permission denied)")


def _parse_size(text: str) -> tuple[int, int]:
    parts = [part.strip() for part in text.strip().lower().split("x")]
    if len(parts) != 2 or not all(part.isascii() and part.isdigit() for part in parts):
        raise ConfigError(f"--size {text!r}: expected HxW, e.g. 64x64")
    height, width = (int(part) for part in parts)
    if not (2 <= height <= MAX_SIDE and 2 <= width <= MAX_SIDE):
        raise ConfigError(f"--size {text!r}: height and width must be between 2 and {MAX_SIDE}")
    return height, width


def _check_range(flag: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{flag} must be between {low} and {high}, got {value}")


def run_synth(args: argparse.Namespace) -> int:
    motions = [m.strip() for m in args.motions.split(",")] if args.motions is not None else None
    known = dict(MOTIONS)
    if motions is not None and (not motions or any(m not in known for m in motions)):
        raise ConfigError(f"--motions {args.motions!r}: use names from {', '.join(known)}")
    if motions is not None and len(set(motions)) != len(motions):
        raise ConfigError(f"--motions {args.motions!r}: a motion is named twice")
    if motions is None:
        _check_range("--classes", args.classes, 1, len(MOTIONS))
    _check_range("--per-class", args.per_class, 1, MAX_PER_CLASS)
    _check_range("--frames", args.frames, 1, MAX_FRAMES)
    _check_range("--workers", args.workers, 1, MAX_WORKERS)
    _check_range("--seed", args.seed, 0, 2**63 - 1)
    low, high = FPS_RANGE
    if not (math.isfinite(args.fps) and low <= args.fps <= high):
        raise ConfigError(f"--fps must be between {low:g} and {high:g}, got {args.fps}")
    if args.gop is not None:
        _check_range("--gop", args.gop, 1, MAX_GOP)
    size = _parse_size(args.size)
    pixels = args.frames * size[0] * size[1]
    if pixels > MAX_PIXELS_PER_VIDEO:
        raise ConfigError(
            f"--frames {args.frames} x --size {args.size} is {pixels:,} pixels per video; "
            f"at most {MAX_PIXELS_PER_VIDEO:,} (each video is rendered in memory)"
        )
    dataset = make_synthetic_dataset(
        args.out,
        format=args.format,
        num_classes=args.classes,
        per_class=args.per_class,
        frames=args.frames,
        size=size,
        seed=args.seed,
        fps=args.fps,
        gop=args.gop,
        motions=motions,
        workers=args.workers,
    )
    print(
        f"wrote {dataset.num_videos} {args.format} videos of {len(dataset.class_names)} classes to {dataset.root}",
        file=sys.stdout,
    )
    print(f"use: --set data.format={args.format} --set data.root={dataset.root}")
    return 0
