"""Cost of every tuning method on one backbone: parameters, MACs, latency and peak memory.

What ``aptune bench`` runs, as library functions.  All methods share one
backbone (one set of weights in memory); switching method swaps the prompt or
adapter modules and the ``requires_grad`` flags, which is cheap, so a measurement loop
can visit every method in each repeat.  Timings are therefore interleaved
(round-robin, the starting method rotating each repeat): a slow spell of a
noisy machine hits all rows alike instead of one.

LoRA and AdaptFormer give one row each, sized by ``lora_rank`` and
``adapter_dim`` (prompt counts do not apply).  The LoRA row is the unmerged,
training-time model: its low-rank branch runs beside the frozen qkv weight.
Merged (``aptune merge``), LoRA costs exactly what the ``linear`` row does.

Peak memory, in MiB, is what a process holding only this method would need:
the bytes resident before the step (weights, buffers, optimizer state, the
input clip) plus the highest number of bytes allocated on top of them during
one step (activations, gradients, workspace).  On CUDA the second part comes
from ``torch.cuda.max_memory_allocated``; on CPU from the PyTorch profiler's
record of every allocation through PyTorch's CPU allocator (``profile_memory``).
Memory that bypasses that allocator -- oneDNN/MKL scratch buffers, the Python
heap, allocator caching and fragmentation -- is not seen, so CPU numbers are a
lower bound on the process's resident set.  Memory passes run after the timed
passes, never inside them (the profiler slows a step down).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from aptune.engine.runtime import pick_device
from aptune.errors import ConfigError
from aptune.factory import create_model
from aptune.flops import ADAPTER_METHODS, PROMPTED_METHODS, UNPROMPTED_METHODS, count_macs
from aptune.methods import apply_method, build_method
from aptune.models.vit import VisionTransformer, count_parameters

log = logging.getLogger(__name__)

MIB = 2**20

#: keys of one result row, in table order (documented in docs/bench.md)
ROW_KEYS = (
    "arch", "method", "prompts", "trainable_params", "total_params", "gmacs",
    "latency_ms_median", "latency_ms_q1", "latency_ms_q3", "latency_ms_iqr",
    "latency_ms_min", "latency_ms_max", "gflops_per_s", "model_memory_mb", "peak_memory_mb",
    "train_gmacs", "train_step_ms_median", "train_step_ms_q1", "train_step_ms_q3",
    "train_step_ms_iqr", "train_step_ms_min", "train_step_ms_max", "train_peak_memory_mb",
)


# ------------------------------------------------------------------ timing
def spread(samples: Sequence[float]) -> dict[str, float]:
    """median, quartiles (q1, q3), iqr, min and max of a list of timings."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {"median": statistics.median(ordered), "q1": q1, "q3": q3, "iqr": q3 - q1,
            "min": ordered[0], "max": ordered[-1]}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(tasks: dict[str, Callable[[], object]], *, repeats: int, warmup: int = 1,
                     device: torch.device | str = "cpu", progress: bool = True,
                     description: str = "timing") -> dict[str, list[float]]:
    """Run every task once per repeat, round-robin, and return its wall times in milliseconds.

    The first ``warmup`` rounds are run but not recorded.  The order rotates by
    one task each round so no task always follows the same neighbour.
    """
    from tqdm import tqdm

    device = torch.device(device)
    names = list(tasks)
    times: dict[str, list[float]] = {name: [] for name in names}
    rounds = warmup + repeats
    with tqdm(total=rounds * len(names), desc=description, disable=not progress,
              leave=False, unit="run") as bar:
        for round_index in range(rounds):
            shift = round_index % len(names)
            for name in names[shift:] + names[:shift]:
                synchronize(device)
                start = time.perf_counter()
                tasks[name]()
                synchronize(device)
                elapsed = (time.perf_counter() - start) * 1000.0
                if round_index >= warmup:
                    times[name].append(elapsed)
                bar.update(1)
    return times


# ------------------------------------------------------------------ memory
def peak_allocated_bytes(fn: Callable[[], object],
                         device: torch.device | str = "cpu") -> int | None:
    """Highest number of bytes allocated by PyTorch during ``fn()`` above what was allocated before.

    CUDA: from the caching allocator's statistics.  CPU: from the profiler's
    allocation records (see the module docstring for what that misses).  None
    when the profiler gives no allocation records.
    """
    device = torch.device(device)
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
        fn()
        synchronize(device)
        return torch.cuda.max_memory_allocated(device) - before
    if device.type != "cpu":
        return None
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    try:  # the event tree is the profiler's own (experimental) API: fail soft
        roots = prof.profiler.kineto_results.experimental_event_tree()
    except (AttributeError, RuntimeError):
        return None
    peak, found, stack = 0, False, list(roots)
    while stack:
        node = stack.pop()
        stack.extend(node.children)
        extra = node.typed[1]
        if type(extra).__name__.endswith("Allocation") and str(extra.device).startswith("cpu"):
            found = True
            # total_allocated counts from the profiler's start: exactly "above before"
            peak = max(peak, int(extra.total_allocated))
    return peak if found else None


def resident_bytes(*objects: object) -> int:
    """Bytes of the distinct tensor storages reachable from modules, optimizers and tensors."""
    seen: set[int] = set()
    total = 0

    def add(tensor: Tensor | None) -> None:
        nonlocal total
        if tensor is None or tensor.device.type == "meta":
            return
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            total += storage.nbytes()

    for obj in objects:
        if isinstance(obj, Tensor):
            add(obj)
        elif isinstance(obj, nn.Module):
            for tensor in [*obj.parameters(), *obj.buffers()]:
                add(tensor)
                add(tensor.grad)
        elif isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for value in state.values():
                    if isinstance(value, Tensor):
                        add(value)
    return total


# ------------------------------------------------------------- method cases
BENCH_METHODS = PROMPTED_METHODS + UNPROMPTED_METHODS + ADAPTER_METHODS
_VALID = ", ".join(BENCH_METHODS)


@dataclass
class MethodCase:
    """One row: a method (and prompt count) attached to the shared backbone on demand."""

    method: str
    num_prompts: int | None
    kv_prompts: nn.Module | None = None
    token_prompts: nn.Module | None = None
    qkv_adapters: nn.Module | None = None
    mlp_adapters: nn.Module | None = None
    tuning_method: object = None
    trainable: frozenset[str] = frozenset()
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return self.method if self.num_prompts is None else f"{self.method}/P={self.num_prompts}"

    def activate(self, model: VisionTransformer) -> VisionTransformer:
        """Put this method's prompt/adapter modules and trainable flags on the shared backbone."""
        model.kv_prompts = self.kv_prompts
        model.token_prompts = self.token_prompts
        model.qkv_adapters = self.qkv_adapters
        model.mlp_adapters = self.mlp_adapters
        model.tuning_method = self.tuning_method
        for name, param in model.named_parameters():
            param.requires_grad_(name in self.trainable)
        return model


def build_cases(model: VisionTransformer, methods: Sequence[str], prompts: Sequence[int], *,
                lora_rank: int = 8, adapter_dim: int = 64, prompt_start: int = 0) -> list[MethodCase]:
    """Attach each (method, prompt count) once, remember its modules and trainable set.

    Methods without prompts give one case each: linear and full, LoRA of rank
    ``lora_rank`` and AdaptFormer of bottleneck ``adapter_dim``.  ``prompt_start``
    is the first block the prompt and adapter methods touch (earlier blocks stay
    as they are and, in training, run without autograd).
    """
    cases = []
    for method in methods:
        if method in PROMPTED_METHODS:
            settings = [(p, {"num_prompts": p}) for p in prompts]
        elif method in UNPROMPTED_METHODS:
            settings = [(None, {})]
        elif method == "lora":
            settings = [(None, {"lora_rank": lora_rank})]
        elif method == "adaptformer":
            settings = [(None, {"adapter_dim": adapter_dim})]
        else:
            raise ConfigError(f"cannot benchmark method '{method}' (valid: {_VALID})")
        if method not in UNPROMPTED_METHODS:
            settings = [(p, {**options, "prompt_start": prompt_start}) for p, options in settings]
        for num_prompts, options in settings:
            model.kv_prompts = model.token_prompts = None
            model.qkv_adapters = model.mlp_adapters = None
            apply_method(model, build_method(method, **options))
            trainable = frozenset(n for n, p in model.named_parameters() if p.requires_grad)
            cases.append(MethodCase(method, num_prompts, model.kv_prompts, model.token_prompts,
                                    model.qkv_adapters, model.mlp_adapters, model.tuning_method,
                                    trainable))
    return cases


# ------------------------------------------------------------------- steps
def inference_step(model: nn.Module, clip: Tensor) -> Callable[[], Tensor]:
    def step() -> Tensor:
        with torch.inference_mode():
            return model(clip)
    return step


def training_step(model: nn.Module, clip: Tensor, labels: Tensor,
                  optimizer: torch.optim.Optimizer) -> Callable[[], float]:
    """Forward, cross-entropy, backward, optimizer step, gradients freed: one training step."""
    def step() -> float:
        loss = F.cross_entropy(model(clip), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()
    return step


def _activated(case: MethodCase, model: VisionTransformer, make_step: Callable,
               train: bool) -> Callable[[], object]:
    def run() -> object:
        case.activate(model).train(train)
        return make_step()
    return run


# --------------------------------------------------------------------- main
@dataclass
class BenchSettings:
    arch: str = "vit_base_patch16_224"
    methods: tuple[str, ...] = ("apt", "vpt-shallow", "vpt-deep", "linear", "full")
    prompts: tuple[int, ...] = (1, 2, 100, 400)  # for apt and vpt only
    lora_rank: int = 8
    adapter_dim: int = 64
    prompt_start: int = 0  # first block of apt/vpt/lora/adaptformer
    frames: int = 16
    img_size: int = 224
    batch: int = 1
    num_classes: int = 400
    device: str = "cpu"
    train: bool = False
    repeats: int = 10
    warmup: int = 2
    threads: int | None = None
    seed: int = 0
    arch_overrides: dict = field(default_factory=dict)  # e.g. embed_dim/depth for tiny tests


def check_settings(settings: BenchSettings) -> None:
    """One-line ConfigErrors for settings no benchmark can run with."""
    for name, minimum in (("repeats", 1), ("batch", 1), ("warmup", 0), ("frames", 1), ("img_size", 1),
                          ("num_classes", 1), ("lora_rank", 1), ("adapter_dim", 1), ("prompt_start", 0),
                          ("threads", 1)):
        value = getattr(settings, name)
        if value is None and name == "threads":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ConfigError(f"bench {name} must be an integer >= {minimum}, got {value!r}")
    if not settings.methods:
        raise ConfigError(f"no method to benchmark (valid: {_VALID})")
    unknown = [m for m in settings.methods if m not in BENCH_METHODS]
    if unknown:
        raise ConfigError(f"cannot benchmark method {unknown[0]!r} (valid: {_VALID})")
    if not settings.prompts or any(isinstance(p, bool) or not isinstance(p, int) or p < 0 for p in settings.prompts):
        raise ConfigError(f"bench prompts must be non-negative integers, got {settings.prompts!r}")


def bench_device(name: str) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` (``auto``: CUDA when there is one), checked to exist."""
    return pick_device(name, key="bench device")


def run_bench(settings: BenchSettings, *, progress: bool = True) -> dict:
    """Measure every case of ``settings``; returns {"meta": ..., "rows": [...]}."""
    check_settings(settings)
    device = bench_device(settings.device)
    if settings.threads is not None:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)

    model = create_model(settings.arch, num_classes=settings.num_classes, method="full",
                         num_frames=settings.frames, img_size=settings.img_size,
                         **settings.arch_overrides).to(device)
    if not 0 <= settings.prompt_start < len(model.blocks):
        raise ConfigError(f"prompt_start={settings.prompt_start} must be a block index of this "
                          f"backbone (0..{len(model.blocks) - 1})")
    cases = build_cases(model, settings.methods, settings.prompts,
                        lora_rank=settings.lora_rank, adapter_dim=settings.adapter_dim,
                        prompt_start=settings.prompt_start)
    shape = (settings.batch, model.config.in_chans, settings.frames, settings.img_size,
             settings.img_size)
    view_shape = (1, *shape[1:])
    clip = torch.randn(shape, device=device)
    labels = torch.randint(0, settings.num_classes, (settings.batch,), device=device)

    rows = {case.label: _static_row(settings.arch, case, model, view_shape, settings.train)
            for case in cases}

    model.eval()
    tasks = {c.label: _activated(c, model, inference_step(model, clip), False) for c in cases}
    times = time_interleaved(tasks, repeats=settings.repeats, warmup=settings.warmup,
                             device=device, progress=progress, description="inference")
    for case in cases:
        row = rows[case.label]
        stats = spread(times[case.label])
        for key, value in stats.items():
            row[f"latency_ms_{key}"] = round(value, 3)
        macs = row["gmacs"] * settings.batch
        row["gflops_per_s"] = round(2 * macs / (stats["median"] / 1000.0), 2)
        extra = peak_allocated_bytes(tasks[case.label], device)
        row["peak_memory_mb"] = _peak_mb(extra, resident_bytes(case.activate(model), clip))

    if settings.train:
        train_tasks = {}
        for case in cases:
            case.activate(model)
            trainable = [p for p in model.parameters() if p.requires_grad]
            # a small learning rate: full fine-tuning steps change the shared weights
            case.optimizer = torch.optim.AdamW(trainable, lr=1e-6, weight_decay=0.0)
            step = training_step(model, clip, labels, case.optimizer)
            train_tasks[case.label] = _activated(case, model, step, True)
        times = time_interleaved(train_tasks, repeats=settings.repeats,
                                 warmup=max(1, settings.warmup), device=device,
                                 progress=progress, description="training")
        for case in cases:
            row = rows[case.label]
            for key, value in spread(times[case.label]).items():
                row[f"train_step_ms_{key}"] = round(value, 3)
            extra = peak_allocated_bytes(train_tasks[case.label], device)
            held = resident_bytes(case.activate(model), case.optimizer, clip, labels)
            row["train_peak_memory_mb"] = _peak_mb(extra, held)
            case.optimizer = None
        model.eval()

    return {"meta": bench_metadata(settings, device), "rows": [_ordered(r) for r in rows.values()]}


def _static_row(arch: str, case: MethodCase, model: VisionTransformer, view_shape: tuple,
                train: bool) -> dict:
    case.activate(model)
    trainable, total = count_parameters(model)
    row = {"arch": arch, "method": case.method, "prompts": case.num_prompts,
           "trainable_params": trainable, "total_params": total,
           "gmacs": round(count_macs(model, view_shape) / 1e9, 6),
           "model_memory_mb": round(resident_bytes(model) / MIB, 1)}
    if train:
        row["train_gmacs"] = round(count_macs(model, view_shape, backward=True) / 1e9, 6)
    return row


def _peak_mb(extra: int | None, held: int) -> float | None:
    return None if extra is None else round((held + extra) / MIB, 1)


def _ordered(row: dict) -> dict:
    return {key: row.get(key) for key in ROW_KEYS}


def machine_description() -> dict:
    """CPU model, core count, torch version and (if any) GPU name."""
    import platform

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import os

    info = {"cpu": cpu, "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def bench_metadata(settings: BenchSettings, device: torch.device) -> dict:
    from datetime import datetime, timezone

    from aptune import __version__

    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "aptune": __version__,
        "machine": machine_description(),
        "device": str(device),
        "dtype": "float32",
        "arch": settings.arch,
        "frames": settings.frames,
        "img_size": settings.img_size,
        "batch": settings.batch,
        "num_classes": settings.num_classes,
        "repeats": settings.repeats,
        "warmup": settings.warmup,
        "train": settings.train,
        "lora_rank": settings.lora_rank,
        "adapter_dim": settings.adapter_dim,
        "prompt_start": settings.prompt_start,
        # the lora row runs the low-rank branch beside the frozen qkv (training-time form);
        # merged with ``aptune merge`` it costs what the linear row does
        "lora_merged": False,
        "gmacs_convention": "multiply-adds per view (batch 1): linears, patch-embedding conv, "
                            "attention matmuls; norms, softmax, GELU not counted",
        "memory_method": ("torch.cuda.max_memory_allocated" if device.type == "cuda"
                          else "torch.profiler CPU allocator records (lower bound on RSS)"),
    }


# ------------------------------------------------------------------- table
def format_table(rows: Sequence[dict]) -> str:
    """A fixed-width text table of result rows (columns without data are left out)."""
    columns = [
        ("method", "method", "{}"), ("prompts", "P", "{}"),
        ("trainable_params", "trainable", "{:,}"), ("total_params", "total", "{:,}"),
        ("gmacs", "GMACs", "{:.1f}"), ("latency_ms_median", "ms", "{:.1f}"),
        ("latency_ms_iqr", "±iqr", "{:.1f}"), ("gflops_per_s", "GFLOP/s", "{:.1f}"),
        ("peak_memory_mb", "MiB", "{:.0f}"), ("train_step_ms_median", "train ms", "{:.1f}"),
        ("train_step_ms_iqr", "±iqr", "{:.1f}"), ("train_peak_memory_mb", "train MiB", "{:.0f}"),
    ]
    columns = [c for c in columns if any(row.get(c[0]) is not None for row in rows)]
    cells = [[header for _, header, _ in columns]]
    for row in rows:
        cells.append(["-" if row.get(key) is None else fmt.format(row[key])
                      for key, _, fmt in columns])
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = []
    for index, line in enumerate(cells):
        lines.append("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(line, widths))))
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
