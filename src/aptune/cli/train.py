"""``aptune train --config CONFIG [--set key=value ...] --output-dir RUN``."""

from __future__ import annotations

import argparse

from aptune.config import load_config
from aptune.engine.trainer import train


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "train",
        help="tune a model on a dataset (any method), then evaluate with all test views",
        description="Train with the config's method; validate every train.eval_every epochs; "
        "evaluate with test_num_segment x test_num_crop views at the end. Resumes automatically "
        "when RUN already holds a checkpoint. Under torchrun, runs DistributedDataParallel.",
    )
    parser.add_argument("--config", required=True, help="YAML recipe (see configs/)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set method.num_prompts=8 (repeatable)",
    )
    parser.add_argument("--output-dir", required=True, help="run folder (checkpoints, metrics, plots)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--resume",
        dest="resume",
        action="store_const",
        const=True,
        default=None,
        help="require a checkpoint in --output-dir and continue from it",
    )
    group.add_argument(
        "--no-resume",
        dest="resume",
        action="store_const",
        const=False,
        help="refuse to reuse a run folder that holds a checkpoint",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    train(config, args.output_dir, resume=args.resume)
    return 0
