"""``aptune pretrain --config CONFIG [--set key=value ...] --output-dir RUN``."""

from __future__ import annotations

import argparse

from aptune.config import load_config
from aptune.engine.pretrainer import pretrain, refuse_classifier_options


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "pretrain",
        help="VideoMAE masked auto-encoding pre-training of a backbone",
        description="Tube masking (pretrain.mask_ratio, default 0.9), encoder on visible tokens, light "
        "decoder, loss on per-patch normalised pixels. Writes RUN/pretrained.safetensors in the "
        "original VideoMAE pre-training layout (usable as model.pretrained). Resumes like train.",
    )
    parser.add_argument("--config", required=True)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--output-dir", required=True)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", dest="resume", action="store_const", const=True, default=None)
    group.add_argument("--no-resume", dest="resume", action="store_const", const=False)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, args.overrides)
    refuse_classifier_options(config, source=args.config)  # the error names the file
    pretrain(config, args.output_dir, resume=args.resume)
    return 0
