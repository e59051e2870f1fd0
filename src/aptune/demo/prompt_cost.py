"""What prompts cost: multiply-adds and latency against the number of prompts, APT against VPT-deep.

The paper's efficiency claim is that videos need hundreds of prompts, and that APT's cost
barely grows with them (2·N·P·D extra multiply-adds per block) while VPT's does (its
prompts are tokens: every projection, the MLP and the attention see them).  On the demo
backbone both are counted and timed (one clip, batch 1, interleaved in this process; the
weights are random, which changes no arithmetic); ViT-B at 16×224, the paper's setting, is
counted only: timing it would take minutes on two cores.
"""

from __future__ import annotations

import torch

from aptune.bench import build_cases, inference_step, spread, time_interleaved
from aptune.factory import create_model
from aptune.flops import count_macs
from aptune.models.vit import VisionTransformer, ViTConfig

PROMPT_COUNTS = (1, 8, 32, 100, 400)
COST_METHODS = ("apt", "vpt-deep")
REFERENCE_ARCH = "vit_base_patch16_224"
REFERENCE_VIEW = (1, 3, 16, 224, 224)
# the frozen backbone with its head: the zero-prompt point every curve starts from
BASELINE = "linear"


def prompt_cost(arch: ViTConfig, counts=PROMPT_COUNTS, repeats: int = 10) -> list[dict]:
    """Rows ``{method, arch, prompts, tokens, gmacs, latency_ms}``; ``latency_ms`` is None where only counted."""
    return timed_rows(arch, counts, repeats) + counted_rows(REFERENCE_ARCH, REFERENCE_VIEW, counts)


def timed_rows(arch: ViTConfig, counts, repeats: int) -> list[dict]:
    model = VisionTransformer(arch).eval()
    clip = torch.randn(1, arch.in_chans, arch.num_frames, arch.img_size, arch.img_size)
    cases = build_cases(model, (BASELINE, *COST_METHODS), tuple(counts))

    step = inference_step(model, clip)
    tasks = {c.label: step for c in cases}
    setups = {c.label: (lambda case=c: case.activate(model)) for c in cases}
    times = time_interleaved(tasks, setups=setups, repeats=repeats, warmup=2, progress=False)
    rows = []
    for case in cases:
        case.activate(model)
        gmacs = round(count_macs(model, clip.shape) / 1e9, 6)
        latency = spread(times[case.label])["median"]
        rows.append(_row(case.method, "demo", case.num_prompts, arch.num_patches, gmacs, latency))
    return rows


def counted_rows(arch_name: str, view: tuple[int, ...], counts) -> list[dict]:
    with torch.device("meta"):  # shapes only: ViT-B is counted in about a second, never allocated
        model = create_model(arch_name, method="full", num_frames=view[2], img_size=view[3])
    rows = []
    for case in build_cases(model, (BASELINE, *COST_METHODS), tuple(counts)):
        case.activate(model)
        gmacs = round(count_macs(model, view) / 1e9, 6)
        rows.append(_row(case.method, arch_name, case.num_prompts, model.config.num_patches, gmacs, None))
    return rows


def _row(method: str, arch: str, prompts: int | None, tokens: int, gmacs: float, latency: float | None) -> dict:
    return {
        "method": method,
        "arch": arch,
        "prompts": prompts or 0,
        "tokens": tokens,
        "gmacs": gmacs,
        "latency_ms": None if latency is None else round(latency, 3),
    }


def overhead(rows: list[dict], method: str, arch: str, key: str) -> list[tuple[int, float]]:
    """(prompts, value / the frozen backbone's) for one curve, by prompt count."""
    base = next(r[key] for r in rows if r["arch"] == arch and r["method"] == BASELINE)
    points = [(r["prompts"], r[key] / base) for r in rows if r["arch"] == arch and r["method"] == method]
    return sorted(points)
