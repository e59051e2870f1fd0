"""The CUDA tier: every CUDA path of aptune run on a GPU (``python -m pytest -m cuda``).

Skipped, with the reason, where ``torch.cuda.is_available()`` is false (tests/conftest.py);
``APTUNE_CUDA_TIER_DEVICE=cpu`` runs them on the CPU to check the tests themselves (the fp16
and nccl cases still skip there).  Kept small: tiny models, a few frames, one step each.

Tolerances, stated once: a CUDA fp32 forward agrees with the CPU's within 1e-4 of the
logits' scale (TF32 off: cuBLAS and cuDNN then do plain fp32 arithmetic, in another order);
under bf16/fp16 autocast within 5e-2 of it (8 and 11 mantissa bits through a few blocks).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from conftest import CUDA_TIER_DEVICE
from helpers import (
    TINY,
    CountAttentionKernels,
    randomize_,
    randomize_trainables_,
    smooth_frames,
    tiny_model,
    tiny_vjepa2,
)

import aptune
from aptune.engine.optim import build_optimizer
from aptune.engine.runtime import autocast, grad_scaler
from aptune.methods import METHODS, build_method, methods_that

pytestmark = pytest.mark.cuda

build_method("apt")  # fills the registry
ALL_METHODS = sorted(METHODS)
PRECISIONS = ("fp32", "bf16", "fp16")
FP32_TOLERANCE = 1e-4
AUTOCAST_TOLERANCE = 5e-2
# head_dim 64 at a realistic token count: SDPA then picks the fused (flash / memory-efficient)
# kernels, which the tiny model's head_dim of 8 may not reach
SHAPES = {
    "tiny": dict(TINY),
    "head_dim_64": dict(embed_dim=128, depth=2, num_heads=2, num_frames=4, img_size=64, patch_size=16),
}


@pytest.fixture
def device():
    if CUDA_TIER_DEVICE == "cpu":
        return torch.device("cpu")
    return torch.device("cuda")


@pytest.fixture
def exact_fp32():
    """TF32 off for the duration of a test (cuDNN's convolutions default to it)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def needs_cuda_for(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type != "cuda":
        pytest.skip("fp16 training needs CUDA (the engine refuses it on CPU)")


def make(method: str, shape: str = "tiny", num_classes: int = 5):
    options = {"num_prompts": 3} if method in methods_that("prompted") else {}
    model = tiny_model(method, num_classes=num_classes, **{**SHAPES[shape], **options})
    randomize_(model)
    return model


def clips_for(model, batch: int = 2, seed: int = 0) -> torch.Tensor:
    config = model.config
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, config.num_frames, config.img_size, config.img_size, generator=generator)


def scale_of(logits: torch.Tensor) -> float:
    return max(1.0, float(logits.abs().max()))


# ------------------------------------------------------------------ training steps
def train_step(model, clips, labels, optimizer, scaler, precision: str, device) -> torch.Tensor:
    """One step as the engine takes it: autocast forward, scaled backward, scaler step."""
    with autocast(precision, device):
        logits = model(clips)
    loss = F.cross_entropy(logits.float(), labels)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("method", ALL_METHODS)
def test_one_training_step_changes_only_the_methods_tensors(method, precision, device):
    needs_cuda_for(precision, device)
    model = make(method).to(device).train()
    trainable = {name for name, param in model.named_parameters() if param.requires_grad}
    before = {name: value.detach().clone() for name, value in model.state_dict().items()}
    optimizer = build_optimizer(model, "adamw", 1e-2, 0.05)
    scaler = grad_scaler(precision)
    clips, labels = clips_for(model).to(device), torch.tensor([0, 3], device=device)
    # fp16: the scaler skips steps whose gradients overflow while it finds its scale
    for _ in range(8):
        loss = train_step(model, clips, labels, optimizer, scaler, precision, device)
        assert torch.isfinite(loss), f"{method} {precision}: loss {loss.item()}"
        changed = {name for name, value in model.state_dict().items() if not torch.equal(value, before[name])}
        if changed:
            break
    assert changed, f"{method} {precision}: no tensor changed in 8 steps"
    assert changed <= trainable, f"{method} {precision}: frozen tensors changed: {sorted(changed - trainable)[:5]}"
    assert any(name.startswith("head.") for name in changed)


# --------------------------------------------------------------------- parity
@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("method", ALL_METHODS)
def test_cuda_logits_match_cpu(method, shape, device, exact_fp32):
    model = make(method, shape).eval()
    clips = clips_for(model)
    with torch.no_grad():
        expected = model(clips)
        model.to(device)
        got = model(clips.to(device)).cpu()
        with autocast("bf16", device):
            got_bf16 = model(clips.to(device)).float().cpu()
    scale = scale_of(expected)
    assert (got - expected).abs().max() <= FP32_TOLERANCE * scale
    assert (got_bf16 - expected).abs().max() <= AUTOCAST_TOLERANCE * scale


def test_fp16_autocast_logits_match_cpu(device, exact_fp32):
    needs_cuda_for("fp16", device)
    model = make("apt", "head_dim_64").eval()
    clips = clips_for(model)
    with torch.no_grad():
        expected = model(clips)
        model.to(device)
        with autocast("fp16", device):
            got = model(clips.to(device)).float().cpu()
    assert (got - expected).abs().max() <= AUTOCAST_TOLERANCE * scale_of(expected)


@pytest.mark.parametrize("method", ["apt", "full"])
def test_compiled_training_step_matches_eager(method, device, exact_fp32):
    from aptune.engine.distributed import DistInfo
    from aptune.engine.runtime import wrap_for_training

    eager = make(method).to(device).train()
    compiled_model = make(method).to(device).train()
    runner = wrap_for_training(compiled_model, device, DistInfo(), compile_model=True)
    clips, labels = clips_for(eager).to(device), torch.tensor([1, 2], device=device)
    for model in (eager, runner):
        F.cross_entropy(model(clips), labels).backward()
    for (name, param), (_, other) in zip(eager.named_parameters(), compiled_model.named_parameters()):
        if param.requires_grad:
            assert other.grad is not None, name
            assert torch.allclose(other.grad, param.grad, rtol=1e-3, atol=1e-5), name


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_recomputed_q_k_v_give_eager_gradients_without_rerunning_the_kernel(precision, device, exact_fp32):
    """model.recompute_qkv on the device's fused kernels (flash, memory-efficient or cuDNN)."""
    model = make("apt", "head_dim_64").to(device).train()
    clips, labels = clips_for(model).to(device), torch.tensor([1, 2], device=device)

    def gradients_and_kernel_calls(recompute: bool):
        model.zero_grad()
        model.recompute_qkv = recompute
        with CountAttentionKernels() as kernels:
            with autocast(precision, device):
                logits = model(clips)
            F.cross_entropy(logits.float(), labels).backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None], kernels.calls

    plain, plain_calls = gradients_and_kernel_calls(False)
    recomputed, recomputed_calls = gradients_and_kernel_calls(True)
    assert plain_calls == len(model.blocks)  # a fused kernel ran in every block
    assert recomputed_calls == plain_calls
    tolerance = FP32_TOLERANCE if precision == "fp32" else AUTOCAST_TOLERANCE
    for ours, reference in zip(recomputed, plain, strict=True):
        assert (ours - reference).abs().max() <= tolerance * max(1e-3, float(reference.abs().max()))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_prompts_only_backward_matches_autograd_through_sdpa(precision, device, exact_fp32):
    """The first prompted block's backward (PromptsOnlyAttention) on the device's kernels."""
    from aptune.models.attention import PromptsOnlyAttention

    generator = torch.Generator().manual_seed(0)
    q, kv = torch.randn(2, 2, 300, 64, generator=generator), torch.randn(2, 2, 2, 300, 64, generator=generator)
    prompts = torch.randn(2, 1, 1, 7, 64, generator=generator).to(device).requires_grad_()
    grad_out = torch.randn(2, 2, 300, 64, generator=generator).to(device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    q, kv = q.to(device, dtype), kv.to(device, dtype)
    out = PromptsOnlyAttention.apply(q, kv, prompts)
    k, v = torch.cat((kv, prompts.to(dtype).expand(2, 2, 2, 7, 64)), dim=3).unbind(0)
    expected = F.scaled_dot_product_attention(q, k, v)
    (ours,) = torch.autograd.grad(out, prompts, grad_out.to(dtype))
    (reference,) = torch.autograd.grad(expected, prompts, grad_out.to(dtype))
    tolerance = FP32_TOLERANCE if precision == "fp32" else AUTOCAST_TOLERANCE
    assert (out.float() - expected.float()).abs().max() <= tolerance * scale_of(expected.float())
    assert (ours - reference).abs().max() <= tolerance * scale_of(reference)


def needs_nccl(device: torch.device) -> None:
    import torch.distributed as dist

    if device.type != "cuda" or not dist.is_nccl_available():
        pytest.skip("nccl needs CUDA")


def check_ddp_accumulation_gives_the_plain_gradients(plain, wrapped, batches, device, store) -> None:
    """DDP over nccl, world size 1, built as the engine builds it (no buffer sync in forward):
    ``wrapped`` takes one micro-batch of ``batches`` under ``no_sync`` and one synchronised;
    its summed gradients must equal those of ``plain``, an equal model without DDP."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from aptune.engine.runtime import _no_buffer_sync_in_forward, find_ddp, rebuild_ddp_buckets

    dist.init_process_group("nccl", init_method=f"file://{store}", rank=0, world_size=1)
    try:
        ddp = DistributedDataParallel(wrapped, device_ids=[device.index or 0], **_no_buffer_sync_in_forward())
        assert find_ddp(ddp) is ddp
        with ddp.no_sync():
            F.cross_entropy(ddp(batches[0][0]), batches[0][1]).backward()
        F.cross_entropy(ddp(batches[1][0]), batches[1][1]).backward()
        rebuild_ddp_buckets(ddp)
        for clips, labels in batches:
            F.cross_entropy(plain(clips), labels).backward()
        for (name, param), (_, other) in zip(plain.named_parameters(), wrapped.named_parameters()):
            if param.requires_grad:
                assert other.grad is not None, name
                assert torch.allclose(other.grad, param.grad, rtol=1e-4, atol=1e-6), name
    finally:
        dist.destroy_process_group()


def test_ddp_over_nccl_world_size_one_gives_the_plain_gradients(device, tmp_path, exact_fp32):
    """DDP built as the engine builds it (no buffer sync in forward), one accumulation step
    under ``no_sync`` and one synchronised: the summed gradients equal a plain model's."""
    needs_nccl(device)
    plain = make("apt").to(device).train()
    wrapped = make("apt").to(device).train()
    batches = [(clips_for(plain, seed=s).to(device), torch.tensor([s, 4 - s], device=device)) for s in (0, 1)]
    check_ddp_accumulation_gives_the_plain_gradients(plain, wrapped, batches, device, tmp_path / "store")


# ------------------------------------------- aptune's classifier over a transformers encoder (V-JEPA 2)
@pytest.fixture(scope="module")
def vjepa2_folder(tmp_path_factory):
    """A tiny random V-JEPA 2 folder; the tests that read it skip without transformers >= 5.18."""
    pytest.importorskip("transformers", minversion="5.18")
    folder = tmp_path_factory.mktemp("vjepa2")
    tiny_vjepa2().save_pretrained(folder)
    return folder


def transformers_classifier(folder, device: torch.device):
    """APT with 3 prompts on the folder's encoder (a TransformersVideoClassifier), trained tensors random."""
    torch.manual_seed(0)
    model = aptune.create_model(None, pretrained=folder, method="apt", num_prompts=3, num_classes=5)
    randomize_trainables_(model)
    return model.to(device).train()


def test_compiled_transformers_classifier_trains_like_eager(vjepa2_folder, device, exact_fp32):
    """``train.compile`` (inductor) on the classifier over a transformers encoder: one step's loss
    and gradients are eager's, and after an SGD step the compiled forward sees the new tensors."""
    from aptune.engine.distributed import DistInfo
    from aptune.engine.runtime import wrap_for_training

    eager = transformers_classifier(vjepa2_folder, device)
    compiled_model = transformers_classifier(vjepa2_folder, device)
    runner = wrap_for_training(compiled_model, device, DistInfo(), compile_model=True)
    clips, labels = clips_for(eager).to(device), torch.tensor([1, 2], device=device)
    with torch.no_grad():
        before = eager(clips)
    losses = [F.cross_entropy(model(clips), labels) for model in (eager, runner)]
    for loss in losses:
        loss.backward()
    assert torch.allclose(losses[1], losses[0], rtol=1e-4, atol=1e-6)
    for (name, param), (_, other) in zip(eager.named_parameters(), compiled_model.named_parameters()):
        if param.requires_grad:
            assert other.grad is not None, name
            assert torch.allclose(other.grad, param.grad, rtol=1e-3, atol=1e-5), name
    for model in (eager, compiled_model):
        build_optimizer(model, "sgd", 0.5, 0.0, momentum=0.0).step()
    after, compiled_after = eager(clips).detach(), runner(clips).detach()  # with grad: no second compilation
    scale = scale_of(after)
    assert (after - before).abs().max() > 100 * FP32_TOLERANCE * scale  # the step moved the logits
    assert (compiled_after - after).abs().max() <= FP32_TOLERANCE * scale


def test_ddp_over_nccl_world_size_one_on_a_transformers_classifier(vjepa2_folder, device, tmp_path, exact_fp32):
    """The same DDP check on the classifier over a transformers encoder, whose prompts reach the
    encoder's attention through the attention interface rather than as a block's submodule."""
    needs_nccl(device)
    plain = transformers_classifier(vjepa2_folder, device)
    wrapped = transformers_classifier(vjepa2_folder, device)
    batches = [(clips_for(plain, seed=s).to(device), torch.tensor([s, 4 - s], device=device)) for s in (0, 1)]
    check_ddp_accumulation_gives_the_plain_gradients(plain, wrapped, batches, device, tmp_path / "store")


# ----------------------------------------------------------------- evaluation
def test_evaluation_on_cuda_matches_cpu(device, tmp_path, exact_fp32):
    from aptune.data.datasets import VideoEvalDataset, build_loader
    from aptune.data.synth import make_synthetic_dataset
    from aptune.data.transforms import TestTransform
    from aptune.engine.evaluate import evaluate
    from aptune.engine.loaders import EvalData

    data = make_synthetic_dataset(tmp_path / "ds", num_classes=3, per_class=2, frames=12, size=(32, 32))
    dataset = VideoEvalDataset(
        [(str(p), label) for p, label in data.videos],
        num_frames=4,
        sampling_rate=2,
        transform=TestTransform(32, 32, num_crops=3),
        num_segments=2,
    )
    eval_data = EvalData(build_loader(dataset, batch_size=6, num_workers=0), dataset, len(dataset.samples))
    model = make("apt", num_classes=3)
    on_cpu = evaluate(model, eval_data, torch.device("cpu"), "fp32", 3)
    on_device = evaluate(model.to(device), eval_data, device, "fp32", 3)
    on_device_bf16 = evaluate(model, eval_data, device, "bf16", 3)
    assert on_device["video_ids"] == on_cpu["video_ids"] == list(range(6))
    assert torch.allclose(on_device["probs"], on_cpu["probs"], atol=FP32_TOLERANCE)
    assert torch.allclose(on_device_bf16["probs"], on_cpu["probs"], atol=AUTOCAST_TOLERANCE)
    # the same predictions wherever the top two classes are told apart beyond the tolerance
    top2 = on_cpu["probs"].topk(2, dim=1).values
    clear = (top2[:, 0] - top2[:, 1]) > 10 * FP32_TOLERANCE
    assert torch.equal(on_device["probs"].argmax(1)[clear], on_cpu["probs"].argmax(1)[clear])


# ---------------------------------------------------------------------- bench
def test_bench_on_cuda_times_with_events_and_reads_peak_memory(device, tmp_path):
    from aptune.cli import main

    out = tmp_path / "bench.json"
    code = main(
        [
            "bench",
            "--arch",
            "vit_small_patch16_224",
            "--frames",
            "2",
            "--img-size",
            "32",
            "--methods",
            "apt,linear",
            "--prompts",
            "2",
            "--repeats",
            "2",
            "--warmup",
            "1",
            "--train",
            "--no-progress",
            "--device",
            device.type,
            "--json",
            str(out),
        ]
    )
    assert code == 0
    result = json.loads(out.read_text())
    meta = result["meta"]
    if device.type == "cuda":
        assert meta["timing_method"] == "cuda events"
        assert meta["memory_method"] == "torch.cuda.max_memory_allocated"
        assert meta["machine"]["gpu"] == torch.cuda.get_device_name()
    for row in result["rows"]:
        assert 0 < row["latency_ms_min"] <= row["latency_ms_median"] <= row["latency_ms_max"]
        assert row["train_step_ms_median"] > 0
        if device.type == "cuda":  # the CPU profiler may give no records: None is allowed there
            assert row["peak_memory_mb"] > row["model_memory_mb"]
            assert row["train_peak_memory_mb"] > row["model_memory_mb"]


# ------------------------------------------------------------ the input pipeline
LEVEL = 1 / (255 * 0.229)  # one of 256 levels after normalisation (the smallest std: red)


@pytest.mark.parametrize("spec", [None, "rand-m4-n2-mstd0.2-inc1", "rand-m9-n3-mstd0.5"])
def test_batch_augment_on_cuda_matches_cpu(spec, device):
    """CUDA resizes in float and rounds (CPU: uint8 arithmetic), so levels may differ by one;
    threshold ops (solarize, posterize, equalize) can turn such a level into a larger change
    of a few pixels, hence the mean for RandAugment and the maximum without it."""
    from aptune.data.batch_augment import BatchAugment, collate_raw_train
    from aptune.data.datasets import RawTrainItem
    from aptune.data.transforms import TrainTransform

    torch.manual_seed(0)
    transform = TrainTransform(32, spec, horizontal_flip=True)
    videos = [smooth_frames(4, 48, 64, seed) for seed in range(4)]
    items = [RawTrainItem(v, tuple(transform.draw(48, 64) for _ in range(3)), 0, ()) for v in videos]
    raw = collate_raw_train(items)
    on_cpu = BatchAugment(32)(raw, "cpu")
    on_device = BatchAugment(32)(raw, device)
    assert on_device.device.type == device.type and on_device.shape == on_cpu.shape
    difference = (on_device.cpu() - on_cpu).abs()
    if spec is None:
        assert difference.max() <= 1.01 * LEVEL
    else:
        assert difference.mean() <= 0.5 * LEVEL


def test_a_tiny_run_on_the_device_end_to_end(device, tmp_path, synthetic):
    """bf16 autocast, loader workers, pinned memory and augmentation on the device, one epoch."""
    import yaml
    from helpers import tiny_run_config

    from aptune.cli import main

    config = tiny_run_config(
        data={
            "root": str(synthetic("list").root),
            "num_workers": 1,
            "num_sample": 2,
            "augment_on": "device",
            "rand_augment": "rand-m4-n2-mstd0.2-inc1",
        },
        train={"epochs": 1, "precision": "bf16", "device": device.type},
    )
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "--config", str(path), "--output-dir", str(tmp_path / "run")]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if r["kind"] == "train"]
    assert losses and all(math.isfinite(loss) for loss in losses)
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["num_videos"] > 0
