"""Every tuning method on ViT-S and ViT-B (16x224, batch 1): ``aptune bench`` with fixed settings.

Writes benchmarks/results/methods_<arch>.json, exactly what the command writes
(``{"meta": ..., "rows": [...]}``; keys documented in docs/bench.md).

    python benchmarks/bench_methods.py [--device cpu] [--only vit_small]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from aptune.cli import main as aptune_main

RESULTS = Path(__file__).parent / "results"

# ViT-B takes about 3x as long per forward as ViT-S: fewer prompt counts and repeats
RUNS = {
    "vit_small": ["--arch", "vit_small_patch16_224", "--prompts", "1,2,100,400", "--repeats", "5", "--warmup", "1"],
    "vit_base": ["--arch", "vit_base_patch16_224", "--prompts", "2,400", "--repeats", "3", "--warmup", "1"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--only", choices=sorted(RUNS))
    parser.add_argument("--train", action="store_true", help="also time training steps (slow)")
    args = parser.parse_args()
    for name, options in RUNS.items():
        if args.only and name != args.only:
            continue
        out = RESULTS / f"methods_{name}{'_train' if args.train else ''}.json"
        argv = [
            "bench",
            *options,
            "--methods",
            "apt,vpt-shallow,vpt-deep,linear,full",
            "--frames",
            "16",
            "--img-size",
            "224",
            "--batch",
            "1",
            "--device",
            args.device,
            "--threads",
            args.threads,
            "--json",
            str(out),
        ]
        if args.train:
            argv.append("--train")
        status = aptune_main(argv)
        if status:
            raise SystemExit(status)


if __name__ == "__main__":
    main()
