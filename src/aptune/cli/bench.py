"""``aptune bench``: parameters, multiply-adds, latency and peak memory of every method."""

from __future__ import annotations

import argparse

from aptune.bench import BenchSettings, format_table, run_bench
from aptune.engine.distributed import DistInfo
from aptune.engine.runtime import pick_device
from aptune.errors import ConfigError
from aptune.fileio import write_json_atomically
from aptune.interop.classifier import BENCH_PRESETS
from aptune.models.vit import PRESETS


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        message = f"expected comma-separated integers, got '{text}'"
        raise argparse.ArgumentTypeError(message) from None
    if not values or min(values) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got '{text}'")
    return values


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got '{text}'") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got '{text}'")
        return value

    return parse


def _name_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def add_parser(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="trainable/total parameters, GMACs, latency and peak memory of each tuning method",
        description="Benchmark tuning methods on one backbone. Latencies are interleaved "
        "across methods (round-robin per repeat); see docs/bench.md for every JSON key.",
    )
    parser.add_argument(
        "--arch",
        default="vit_base_patch16_224",
        help=f"backbone preset: aptune's ({', '.join(PRESETS)}) or a transformers shape with random weights "
        f"({', '.join(BENCH_PRESETS)}: clip shape its own, methods apt, linear, full)",
    )
    parser.add_argument(
        "--methods",
        type=_name_list,
        default=("apt", "vpt-shallow", "vpt-deep", "linear", "full"),
        help="comma-separated, of apt, vpt-shallow, vpt-deep, "
        "linear, full, lora, adaptformer (default: the first five)",
    )
    parser.add_argument(
        "--prompts",
        type=_int_list,
        default=(1, 2, 100, 400),
        help="prompt counts for apt/vpt (comma-separated, default 1,2,100,400)",
    )
    parser.add_argument(
        "--lora-rank",
        type=_int_at_least(1),
        default=8,
        help="rank of the lora row (one row; unmerged, training-time cost)",
    )
    parser.add_argument(
        "--adapter-dim", type=_int_at_least(1), default=64, help="bottleneck width of the adaptformer row (one row)"
    )
    parser.add_argument(
        "--prompt-start",
        type=_int_at_least(0),
        default=0,
        help="first block that apt/vpt/lora/adaptformer touch (default 0: all); earlier blocks train without autograd",
    )
    parser.add_argument("--frames", type=int, default=16, help="clip length (>= 1)")
    parser.add_argument("--img-size", type=int, default=224, help="clip height and width (>= 1)")
    parser.add_argument("--batch", type=int, default=1, help="clips per step (>= 1)")
    parser.add_argument("--num-classes", type=int, default=400, help="classifier size (>= 1)")
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:N")
    parser.add_argument("--train", action="store_true", help="also time a training step (AdamW) and its peak memory")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per method (>= 1)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per method first (>= 0)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (>= 1; default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--json", dest="json_out", help="write {meta, rows} here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    for flag, value, minimum in (
        ("--frames", args.frames, 1),
        ("--img-size", args.img_size, 1),
        ("--batch", args.batch, 1),
        ("--num-classes", args.num_classes, 1),
        ("--repeats", args.repeats, 1),
        ("--warmup", args.warmup, 0),
        ("--threads", args.threads, 1),
    ):
        if value is not None and value < minimum:
            raise ConfigError(f"{flag} must be an integer >= {minimum}, got {value}")
    device = pick_device(args.device, DistInfo(), key="--device")
    settings = BenchSettings(
        arch=args.arch,
        methods=tuple(args.methods),
        prompts=tuple(args.prompts),
        lora_rank=args.lora_rank,
        adapter_dim=args.adapter_dim,
        prompt_start=args.prompt_start,
        frames=args.frames,
        img_size=args.img_size,
        batch=args.batch,
        num_classes=args.num_classes,
        device=str(device),
        train=args.train,
        repeats=args.repeats,
        warmup=args.warmup,
        threads=args.threads,
    )
    result = run_bench(settings, progress=not args.no_progress)
    meta = result["meta"]
    machine = meta["machine"]
    print(
        f"{meta['arch']}  {meta['frames']}x{meta['img_size']}  batch {meta['batch']}  "
        f"{meta['device']} ({machine['cpu']}, {machine['torch_threads']} threads)  "
        f"torch {machine['torch']}  {meta['date']}"
    )
    sizes = []
    if "lora" in args.methods:
        sizes.append(f"lora r={meta['lora_rank']} (unmerged; merged = linear's cost)")
    if "adaptformer" in args.methods:
        sizes.append(f"adaptformer d={meta['adapter_dim']}")
    if sizes:
        print("  ".join(sizes))
    print(format_table(result["rows"]))
    if args.json_out:
        print(f"wrote {write_json_atomically(args.json_out, result)}")
    return 0
