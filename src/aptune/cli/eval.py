"""``aptune eval --run RUN`` or ``aptune eval --config CONFIG --adapter FILE [--pretrained FILE]``.

Exit status: 0 after an evaluation, 1 when no video of the split could be decoded (the
outputs are still written, with top-1/top-5 null), 2 for bad arguments or files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aptune.config import load_config
from aptune.engine.inference import evaluate_adapter
from aptune.engine.runfolder import ADAPTER_NAME, CONFIG_NAME, EVAL_DIR, RANDOM_BACKBONE_NAME
from aptune.errors import ConfigError
from aptune.fileio import write_json_atomically


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="multi-view test of a trained run or adapter: top-1/5, per-class accuracy, confusion",
        description="Multi-view test of a trained run or adapter. Exits 1 when no video of the split could be decoded.",
    )
    parser.add_argument("--run", help="a run folder written by aptune train")
    parser.add_argument("--config", help="YAML recipe (default: RUN/config.yaml)")
    parser.add_argument("--adapter", help="adapter file (default: RUN/adapter.safetensors)")
    parser.add_argument("--pretrained", help="backbone checkpoint (default: the config's model.pretrained)")
    parser.add_argument(
        "--allow-backbone-mismatch",
        action="store_true",
        help="evaluate even if the backbone is not the one the adapter was trained on "
        "(its recorded fingerprint differs): a warning instead of an error",
    )
    parser.add_argument("--split", choices=("test", "val"), default="test")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--output-dir",
        help="where to write metrics.json, plots and report.md (default: RUN/eval, or no files without --run)",
    )
    parser.add_argument(
        "--json", dest="json_out", help="also write the summary as JSON here (missing folders are created)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not args.run and not (args.config and args.adapter):
        raise ConfigError("give --run RUN, or --config CONFIG with --adapter FILE")
    run_dir = Path(args.run) if args.run else None
    config_path = args.config or (run_dir / CONFIG_NAME)
    adapter = args.adapter or (run_dir / ADAPTER_NAME)
    config = load_config(config_path, args.overrides)
    output_dir = Path(args.output_dir) if args.output_dir else (run_dir / EVAL_DIR if run_dir else None)
    pretrained = args.pretrained
    if pretrained is None and config.model.pretrained is None and run_dir is not None:
        random_backbone = run_dir / RANDOM_BACKBONE_NAME
        pretrained = random_backbone if random_backbone.is_file() else None
    summary = evaluate_adapter(
        config,
        adapter,
        pretrained=pretrained,
        split=args.split,
        output_dir=output_dir,
        allow_backbone_mismatch=args.allow_backbone_mismatch,
    )
    if args.json_out:
        write_json_atomically(args.json_out, summary)  # strict JSON: no video decoded -> null, not NaN
    if summary["num_videos"] == 0:
        print(f"0 videos evaluated ({summary['skipped_videos']} could not be decoded): no accuracy to report")
        return 1
    print(
        f"top-1 {summary['top1']:.2f}  top-5 {summary['top5']:.2f}  "
        f"videos {summary['num_videos']}  skipped {summary['skipped_videos']}"
    )
    return 0
