"""``aptune bench``: parameters, multiply-adds, latency and peak memory of every method."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


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
    parser.add_argument("--arch", default="vit_base_patch16_224", help="backbone preset")
    parser.add_argument("--methods", type=_name_list, default=("apt", "vpt-shallow", "vpt-deep",
                        "linear", "full"), help="comma-separated, of apt, vpt-shallow, vpt-deep, "
                        "linear, full, lora, adaptformer (default: the first five)")
    parser.add_argument("--prompts", type=_int_list, default=(1, 2, 100, 400),
                        help="prompt counts for apt/vpt (comma-separated, default 1,2,100,400)")
    parser.add_argument("--lora-rank", type=_int_at_least(1), default=8,
                        help="rank of the lora row (one row; unmerged, training-time cost)")
    parser.add_argument("--adapter-dim", type=_int_at_least(1), default=64,
                        help="bottleneck width of the adaptformer row (one row)")
    parser.add_argument("--prompt-start", type=_int_at_least(0), default=0,
                        help="first block that apt/vpt/lora/adaptformer touch (default 0: all); "
                        "earlier blocks train without autograd")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--num-classes", type=int, default=400)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    parser.add_argument("--train", action="store_true",
                        help="also time a training step (AdamW) and its peak memory")
    parser.add_argument("--repeats", type=int, default=10, help="timed runs per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed runs per method first")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("--json", dest="json_out", help="write {meta, rows} here")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from aptune.bench import BenchSettings, format_table, run_bench

    settings = BenchSettings(
        arch=args.arch, methods=tuple(args.methods), prompts=tuple(args.prompts),
        lora_rank=args.lora_rank, adapter_dim=args.adapter_dim, prompt_start=args.prompt_start,
        frames=args.frames, img_size=args.img_size, batch=args.batch,
        num_classes=args.num_classes, device=args.device, train=args.train,
        repeats=args.repeats, warmup=args.warmup, threads=args.threads,
    )
    result = run_bench(settings, progress=not args.no_progress)
    meta = result["meta"]
    machine = meta["machine"]
    print(f"{meta['arch']}  {meta['frames']}x{meta['img_size']}  batch {meta['batch']}  "
          f"{meta['device']} ({machine['cpu']}, {machine['torch_threads']} threads)  "
          f"torch {machine['torch']}  {meta['date']}")
    sizes = []
    if "lora" in args.methods:
        sizes.append(f"lora r={meta['lora_rank']} (unmerged; merged = linear's cost)")
    if "adaptformer" in args.methods:
        sizes.append(f"adaptformer d={meta['adapter_dim']}")
    if sizes:
        print("  ".join(sizes))
    print(format_table(result["rows"]))
    if args.json_out:
        path = Path(args.json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {path}")
    return 0
