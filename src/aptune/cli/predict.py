"""``aptune predict VIDEO [VIDEO ...] --run RUN`` (or ``--adapter FILE --pretrained FILE``).

Exit status: 0 when at least one video was scored, 1 when none could be (each one's
reason is printed), 2 for bad arguments or files.  Class names from adapter headers are
printed escaped (a name cannot move the cursor or clear the screen); ``--json`` keeps
them exact.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from aptune.adapters import printable, read_adapter
from aptune.config import load_config
from aptune.engine.distributed import DistInfo
from aptune.engine.inference import clip_reading, load_tuned_model, predict_videos_for
from aptune.engine.runfolder import ADAPTER_NAME, CONFIG_NAME, RANDOM_BACKBONE_NAME
from aptune.engine.runtime import pick_device
from aptune.errors import ConfigError


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="top-5 class names with probabilities for video files",
        description="Each video is scored with the same views as evaluation (test_num_segment x "
        "test_num_crop, stored in the adapter) and the softmax scores are averaged. Exits 1 when "
        "no video could be scored.",
    )
    parser.add_argument("videos", nargs="+", help="video files")
    parser.add_argument("--run", help="a run folder written by aptune train")
    parser.add_argument(
        "--adapter",
        action="append",
        default=[],
        help="adapter file; repeat to answer for several tasks (adapters with the "
        "same preprocessing share one decode of every video)",
    )
    parser.add_argument(
        "--pretrained", help="backbone checkpoint the adapter was trained on (default: the run's model.pretrained)"
    )
    parser.add_argument(
        "--allow-backbone-mismatch",
        action="store_true",
        help="use the adapter even if --pretrained is not the backbone it was trained on "
        "(its recorded fingerprint differs): a warning instead of an error",
    )
    parser.add_argument("--top-k", type=int, default=5, help="class names per video (>= 1)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.top_k < 1:
        raise ConfigError(f"--top-k must be a positive integer, got {args.top_k}")
    adapters = [Path(a) for a in args.adapter]
    pretrained = args.pretrained
    if args.run:
        run_dir = Path(args.run)
        adapters = adapters or [run_dir / ADAPTER_NAME]
        if pretrained is None and (run_dir / CONFIG_NAME).is_file():
            pretrained = load_config(run_dir / CONFIG_NAME).model.pretrained
        if pretrained is None and (run_dir / RANDOM_BACKBONE_NAME).is_file():
            pretrained = run_dir / RANDOM_BACKBONE_NAME
    if not adapters:
        raise ConfigError("give --run RUN or --adapter FILE (with --pretrained for the backbone)")
    device = pick_device(args.device, DistInfo(), key="--device")
    adapters = list(dict.fromkeys(adapters))
    # adapters that read clips the same way share one decode of every video
    groups: dict[str, list[Path]] = {}
    for adapter in adapters:
        _, meta = read_adapter(adapter)
        groups.setdefault(json.dumps(clip_reading(meta.get("preprocess"), adapter)), []).append(adapter)
    found = {}
    for reading, members in groups.items():
        models = {
            str(a): load_tuned_model(a, pretrained, device, allow_backbone_mismatch=args.allow_backbone_mismatch)
            for a in members
        }
        found.update(predict_videos_for(models, args.videos, json.loads(reading), device, top_k=args.top_k))
    answers = {str(a): found[str(a)] for a in adapters}
    if args.json:
        print(json.dumps(answers if len(adapters) > 1 else next(iter(answers.values())), indent=2))
    else:
        _print_table(answers, printable)
    scored = {result["video"] for results in answers.values() for result in results if "error" not in result}
    if not scored:
        print(f"error: none of the {len(args.videos)} videos could be scored (see the reasons above)", file=sys.stderr)
        return 1
    return 0


def _print_table(answers: dict[str, list[dict]], printable) -> None:
    for adapter, results in answers.items():
        if len(answers) > 1:
            print(f"== {printable(adapter)}")
        for result in results:
            print(printable(result["video"]))
            if "error" in result:
                print(f"  not evaluated: {printable(result['error'])}")
                continue
            for rank, entry in enumerate(result["top"], 1):
                print(f"  {rank}. {printable(entry['class']):<32s} {100 * entry['probability']:6.2f} %")
