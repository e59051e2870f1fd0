"""``aptune demo [--output-dir RUN] [--quick]``."""

from __future__ import annotations

import argparse

from aptune.demo import DEMO_METHODS, run_demo
from aptune.demo.reparam import run_reparam_study
from aptune.errors import ConfigError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="see APT adapt a frozen pretrained video transformer on this CPU, against the alternatives",
        description="Generates a synthetic target task (cached), tunes the shipped pretrained backbone "
        "with linear, vpt-deep, apt and full, evaluates each with all test views, and prints a table "
        "(also written as Markdown, JSON and a PNG chart).",
    )
    parser.add_argument("--output-dir", default="runs/demo")
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (seconds, not minutes)")
    parser.add_argument(
        "--methods", default="linear,vpt-deep,apt,full", help="comma-separated subset of linear,vpt-deep,apt,full"
    )
    parser.add_argument(
        "--backbone",
        help="another pretrained backbone with the demo architecture (default: the one shipped in the package)",
    )
    parser.add_argument("--cache-dir", help="where the synthetic dataset is kept (default: OUTPUT/cache)")
    parser.add_argument(
        "--study",
        choices=("reparam",),
        help="instead of the demo, an optional study: 'reparam' trains APT with and without its prompt "
        "reparameterisation over four learning rates and two seeds (about 16 minutes on 2 cores)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    methods = tuple(m.strip() for m in args.methods.split(",") if m.strip())
    unknown = [m for m in methods if m not in DEMO_METHODS]
    if unknown:
        raise ConfigError(f"--methods: unknown '{unknown[0]}' (valid: {', '.join(DEMO_METHODS)})")
    if args.study == "reparam":
        output = args.output_dir if args.output_dir != "runs/demo" else "runs/demo-reparam"
        run_reparam_study(output, cache_dir=args.cache_dir, backbone=args.backbone, quick=args.quick)
        return 0
    run_demo(args.output_dir, quick=args.quick, methods=methods, cache_dir=args.cache_dir, backbone=args.backbone)
    return 0
