"""Running a benchmark: one case per (method, prompt count) on a shared backbone, switched on
demand, measured with :mod:`aptune.bench.measure` and reported as rows of
:data:`aptune.bench.report.ROW_KEYS`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from aptune.bench.measure import (
    MIB,
    inference_step,
    peak_allocated_bytes,
    resident_bytes,
    spread,
    time_interleaved,
    training_step,
)
from aptune.bench.report import bench_metadata, ordered_row
from aptune.engine.runtime import pick_device
from aptune.errors import ConfigError
from aptune.factory import create_model
from aptune.flops import ADAPTER_METHODS, PROMPTED_METHODS, UNPROMPTED_METHODS, count_macs
from aptune.interop.classifier import BENCH_PRESETS, METHODS_ON_TRANSFORMERS, random_transformers_classifier
from aptune.methods import apply_method, build_method, method_options
from aptune.models.vit import VisionTransformer, count_parameters

log = logging.getLogger(__name__)


# ------------------------------------------------------------- method cases
BENCH_METHODS = PROMPTED_METHODS + UNPROMPTED_METHODS + ADAPTER_METHODS
_VALID = ", ".join(BENCH_METHODS)


@dataclass
class MethodCase:
    """One row: a method (and prompt count) attached to the shared backbone on demand."""

    method: str
    num_prompts: int | None
    extensions: dict[str, nn.Module] = field(default_factory=dict)
    tuning_method: object = None
    trainable: frozenset[str] = frozenset()
    optimizer: torch.optim.Optimizer | None = field(default=None, repr=False)

    @property
    def label(self) -> str:
        return self.method if self.num_prompts is None else f"{self.method}/P={self.num_prompts}"

    def activate(self, model: VisionTransformer) -> VisionTransformer:
        """Put this method's prompt/adapter modules and trainable flags on the shared backbone."""
        model.set_extensions(self.extensions)
        model.tuning_method = self.tuning_method
        for name, param in model.named_parameters():
            param.requires_grad_(name in self.trainable)
        return model


def build_cases(
    model: VisionTransformer,
    methods: Sequence[str],
    prompts: Sequence[int],
    *,
    lora_rank: int = 8,
    adapter_dim: int = 64,
    prompt_start: int = 0,
) -> list[MethodCase]:
    """Attach each (method, prompt count) once, remember its modules and trainable set.

    Methods without prompts give one case each: linear and full, LoRA of rank
    ``lora_rank`` and AdaptFormer of bottleneck ``adapter_dim``.  ``prompt_start``
    is the first block the prompt and adapter methods touch (earlier blocks stay
    as they are and, in training, run without autograd).
    """
    sizes = {"lora_rank": lora_rank, "adapter_dim": adapter_dim, "prompt_start": prompt_start}
    cases = []
    for method in methods:
        if method not in BENCH_METHODS:
            raise ConfigError(f"cannot benchmark method '{method}' (valid: {_VALID})")
        # each method gets the sizes it takes: an adapter's rank or width, the first block
        options = {k: v for k, v in sizes.items() if k in method_options(method)}
        if method in PROMPTED_METHODS:
            settings = [(p, {**options, "num_prompts": p}) for p in prompts]
        else:
            settings = [(None, options)]
        for num_prompts, options in settings:
            model.set_extensions({})
            apply_method(model, build_method(method, **options))
            trainable = frozenset(n for n, p in model.named_parameters() if p.requires_grad)
            cases.append(
                MethodCase(method, num_prompts, dict(model.named_extensions()), model.tuning_method, trainable)
            )
    return cases


def _activator(case: MethodCase, model: VisionTransformer, train: bool) -> Callable[[], object]:
    """Untimed set-up of a task: the shared backbone switched to ``case``, in train or eval mode."""
    return lambda: case.activate(model).train(train)


# --------------------------------------------------------------------- main
DEFAULT_METHODS = ("apt", "vpt-shallow", "vpt-deep", "linear", "full")


@dataclass
class BenchSettings:
    arch: str = "vit_base_patch16_224"  # an aptune preset, or a transformers one (BENCH_PRESETS)
    methods: tuple[str, ...] = DEFAULT_METHODS  # on a transformers preset the default is apt, linear, full
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
    for name, minimum in (
        ("repeats", 1),
        ("batch", 1),
        ("warmup", 0),
        ("frames", 1),
        ("img_size", 1),
        ("num_classes", 1),
        ("lora_rank", 1),
        ("adapter_dim", 1),
        ("prompt_start", 0),
        ("threads", 1),
    ):
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

    model, settings = _bench_backbone(settings)
    model = model.to(device)
    if not 0 <= settings.prompt_start < len(model.blocks):
        raise ConfigError(
            f"prompt_start={settings.prompt_start} must be a block index of this backbone (0..{len(model.blocks) - 1})"
        )
    cases = build_cases(
        model,
        settings.methods,
        settings.prompts,
        lora_rank=settings.lora_rank,
        adapter_dim=settings.adapter_dim,
        prompt_start=settings.prompt_start,
    )
    shape = (settings.batch, model.config.in_chans, settings.frames, settings.img_size, settings.img_size)
    view_shape = (1, *shape[1:])
    clip = torch.randn(shape, device=device)
    labels = torch.randint(0, settings.num_classes, (settings.batch,), device=device)

    rows = {case.label: _static_row(settings.arch, case, model, view_shape, settings.train) for case in cases}
    _measure_inference(rows, cases, model, clip, settings, device, progress)
    if settings.train:
        _measure_training(rows, cases, model, clip, labels, settings, device, progress)
    return {"meta": bench_metadata(settings, device), "rows": [ordered_row(r) for r in rows.values()]}


def _bench_backbone(settings: BenchSettings) -> tuple[nn.Module, BenchSettings]:
    """The shared backbone (method ``full``: every case switches its own on), and the settings it fixes.

    A transformers preset brings its own clip shape (V-JEPA 2's rotary grid, position tables):
    the clip becomes the preset's, and its methods default to those it takes.
    """
    if settings.arch not in BENCH_PRESETS:
        model = create_model(
            settings.arch,
            num_classes=settings.num_classes,
            method="full",
            num_frames=settings.frames,
            img_size=settings.img_size,
            **settings.arch_overrides,
        )
        return model, settings
    model = random_transformers_classifier(settings.arch, settings.num_classes)
    methods = settings.methods
    if methods == DEFAULT_METHODS:
        methods = tuple(m for m in DEFAULT_METHODS if m in METHODS_ON_TRANSFORMERS)
    shape = {"frames": model.config.num_frames, "img_size": model.config.img_size, "methods": methods}
    return model, replace(settings, **shape)


def _measure_inference(
    rows: dict[str, dict],
    cases: Sequence[MethodCase],
    model: VisionTransformer,
    clip: Tensor,
    settings: BenchSettings,
    device: torch.device,
    progress: bool,
) -> None:
    """Latency (interleaved), throughput and peak memory of one forward pass, into ``rows``."""
    model.eval()
    tasks = {c.label: inference_step(model, clip) for c in cases}
    setups = {c.label: _activator(c, model, False) for c in cases}
    times = time_interleaved(
        tasks,
        setups=setups,
        repeats=settings.repeats,
        warmup=settings.warmup,
        device=device,
        progress=progress,
        description="inference",
    )
    for case in cases:
        row = rows[case.label]
        stats = spread(times[case.label])
        for key, value in stats.items():
            row[f"latency_ms_{key}"] = round(value, 3)
        macs = row["gmacs"] * settings.batch
        row["gflops_per_s"] = round(2 * macs / (stats["median"] / 1000.0), 2)
        setups[case.label]()
        extra = peak_allocated_bytes(tasks[case.label], device)
        row["peak_memory_mb"] = _peak_mb(extra, resident_bytes(model, clip))


def _measure_training(
    rows: dict[str, dict],
    cases: Sequence[MethodCase],
    model: VisionTransformer,
    clip: Tensor,
    labels: Tensor,
    settings: BenchSettings,
    device: torch.device,
    progress: bool,
) -> None:
    """Time (interleaved) and peak memory of one AdamW training step, into ``rows``."""
    train_tasks, setups = {}, {}
    for case in cases:
        case.activate(model)
        trainable = [p for p in model.parameters() if p.requires_grad]
        # a small learning rate: full fine-tuning steps change the shared weights
        case.optimizer = torch.optim.AdamW(trainable, lr=1e-6, weight_decay=0.0)
        step = training_step(model, clip, labels, case.optimizer)
        train_tasks[case.label] = step
        setups[case.label] = _activator(case, model, True)
    times = time_interleaved(
        train_tasks,
        setups=setups,
        repeats=settings.repeats,
        warmup=max(1, settings.warmup),
        device=device,
        progress=progress,
        description="training",
    )
    for case in cases:
        row = rows[case.label]
        for key, value in spread(times[case.label]).items():
            row[f"train_step_ms_{key}"] = round(value, 3)
        setups[case.label]()
        extra = peak_allocated_bytes(train_tasks[case.label], device)
        held = resident_bytes(model, case.optimizer, clip, labels)
        row["train_peak_memory_mb"] = _peak_mb(extra, held)
        case.optimizer = None
    model.eval()


def _static_row(arch: str, case: MethodCase, model: VisionTransformer, view_shape: tuple, train: bool) -> dict:
    case.activate(model)
    trainable, total = count_parameters(model)
    row = {
        "arch": arch,
        "method": case.method,
        "prompts": case.num_prompts,
        "trainable_params": trainable,
        "total_params": total,
        "gmacs": round(count_macs(model, view_shape) / 1e9, 6),
        "model_memory_mb": round(resident_bytes(model) / MIB, 1),
    }
    if train:
        row["train_gmacs"] = round(count_macs(model, view_shape, backward=True) / 1e9, 6)
    return row


def _peak_mb(extra: int | None, held: int) -> float | None:
    return None if extra is None else round((held + extra) / MIB, 1)
