"""APT against an independent explicit-softmax implementation of the paper's formula."""

import pytest
import torch
from helpers import CountAttentionKernels, randomize_, reference_apt_logits, tiny_clip, tiny_model, tiny_run_config

from aptune.models.vit import _ATTENTION_KERNELS


@pytest.mark.parametrize("reparam", [True, False])
def test_apt_matches_explicit_formula(reparam):
    model = tiny_model("apt", num_prompts=3, reparam=reparam).eval()
    randomize_(model)
    if reparam:
        with torch.no_grad():  # scales both below and above 1: max(s, 1) must clip the former
            model.kv_prompts.scales.copy_(
                torch.linspace(0.2, 2.5, model.kv_prompts.scales.numel()).view_as(model.kv_prompts.scales)
            )
    x = tiny_clip()
    torch.testing.assert_close(model(x), reference_apt_logits(model, x), rtol=1e-4, atol=1e-5)


def test_apt_partial_layer_range():
    model = tiny_model("apt", num_prompts=4, prompt_start=1, prompt_end=1, depth=3).eval()
    randomize_(model)
    assert model.kv_prompts.keys.shape == (1, 4, 8)
    x = tiny_clip()
    torch.testing.assert_close(model(x), reference_apt_logits(model, x), rtol=1e-4, atol=1e-5)


def test_prompt_dropout_is_off_in_eval_and_on_in_train():
    model = tiny_model("apt", num_prompts=16, prompt_dropout=0.5)
    randomize_(model)
    x = tiny_clip()
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    torch.testing.assert_close(model(x), reference_apt_logits(model, x), rtol=1e-4, atol=1e-5)
    model.train()
    torch.manual_seed(0)
    first = model(x)
    torch.manual_seed(1)
    assert not torch.allclose(first, model(x))


def test_zero_prompts_is_the_frozen_backbone():
    backbone = tiny_model("full").eval()
    randomize_(backbone)
    apt = tiny_model("apt", num_prompts=0).eval()
    apt.load_state_dict(backbone.state_dict())
    assert apt.extension("kv_prompts") is None
    x = tiny_clip()
    torch.testing.assert_close(apt(x), backbone(x), rtol=0, atol=0)


def test_linear_probe_sees_the_frozen_backbone_features():
    backbone = tiny_model("full").eval()
    randomize_(backbone)
    probe = tiny_model("linear").eval()
    probe.load_state_dict(backbone.state_dict())
    x = tiny_clip()
    torch.testing.assert_close(probe.forward_features(x), backbone.forward_features(x), rtol=0, atol=0)


def test_prompts_change_outputs_and_leave_token_count():
    model = tiny_model("apt", num_prompts=2).eval()
    randomize_(model)
    x = tiny_clip()
    with torch.no_grad():
        tokens, _ = model.patch_embed(x)
        plain = model.blocks[0](tokens)
        prompted = model.blocks[0](tokens, model.kv_prompts(0))
        logits_plain = tiny_model("apt", num_prompts=0).eval()
        logits_plain.load_state_dict(model.state_dict(), strict=False)
        with_prompts, without = model(x), logits_plain(x)
    assert prompted.shape == plain.shape == tokens.shape  # queries unchanged: the block still outputs N tokens
    # every token's output moves: each query attends to the prompts as well
    assert (prompted - plain).abs().amax(dim=-1).min() > 1e-4
    assert not torch.allclose(with_prompts, without, atol=1e-4)  # and so do the logits


def test_trainable_count_matches_the_paper_setting():
    import aptune

    model = aptune.create_model("vit_base_patch16_224", num_classes=101, method="apt", num_prompts=400, reparam=True)
    trainable, total = aptune.count_parameters(model)
    assert trainable == 703_205
    assert total == trainable + sum(
        p.numel() for n, p in model.named_parameters() if not n.startswith(("kv_prompts.", "fc_norm.", "head."))
    )


def test_prompt_init_bound():
    model = tiny_model("apt", num_prompts=200)
    bound = (6 / (3 * 16 * 16 + 8)) ** 0.5
    keys = model.kv_prompts.keys
    assert keys.abs().max() <= bound
    assert keys.abs().max() > 0.9 * bound  # uniform over the whole range, not a tiny init
    torch.testing.assert_close(model.kv_prompts.scales, torch.ones_like(model.kv_prompts.scales))


def test_bad_prompt_range_is_a_clear_error():
    from aptune.errors import ConfigError

    with pytest.raises(ConfigError, match="prompt_start"):
        tiny_model("apt", num_prompts=2, prompt_start=2, prompt_end=1)
    with pytest.raises(ConfigError, match="depth=3"):
        tiny_model("apt", num_prompts=2, prompt_end=3)


@pytest.mark.parametrize(
    "batch, grad",
    [(2, True), (2, False), (1, False), (1, True)],
    ids=["train-batch", "no-grad-batch", "no-grad-one-clip", "train-one-clip"],
)
def test_every_attention_path_computes_the_formula(batch, grad):
    """The native attention appends prompts three ways (two products with grad, one fused product,
    or one clip's projection written into a buffer that already holds the prompts): all are APT."""
    model = tiny_model("apt", num_prompts=3).eval()
    randomize_(model)
    x = tiny_clip(batch=batch)
    with torch.set_grad_enabled(grad):
        logits = model(x)
    with torch.no_grad():
        expected = reference_apt_logits(model, x)
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-5)


def test_a_key_bias_is_used_on_the_one_clip_path():
    model = tiny_model("apt", num_prompts=3).eval()
    randomize_(model)
    for block in model.blocks:
        block.attn.add_key_bias(torch.randn(block.attn.qkv.in_features))
    x = tiny_clip(batch=1)
    with torch.no_grad():
        one_clip = model(x)
        batched = model(torch.cat([x, x]))[:1]  # the fused-product path
    torch.testing.assert_close(one_clip, batched, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        for block in model.blocks:
            block.attn.k_bias.mul_(3.0)  # a key bias is not cancelled when prompts are appended
    with torch.no_grad():
        assert not torch.allclose(model(x), one_clip, atol=1e-4)


def test_prompt_gradients_equal_those_of_the_explicit_formula():
    model = tiny_model("apt", num_prompts=3)
    randomize_(model)
    model.eval()
    x = tiny_clip()
    model(x).square().sum().backward()
    ours = model.kv_prompts.keys.grad.clone(), model.kv_prompts.scales.grad.clone()
    model.zero_grad()
    reference_apt_logits(model, x).square().sum().backward()
    torch.testing.assert_close(ours[0], model.kv_prompts.keys.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ours[1], model.kv_prompts.scales.grad, rtol=1e-4, atol=1e-6)


def test_no_forward_state_outlives_the_forward():
    import copy

    model = tiny_model("apt", num_prompts=3)
    model(tiny_clip()).sum()  # a training forward: its prompts belong to an autograd graph
    assert model.kv_prompts._layer_kv == {}  # no thread's prompts left
    copied = copy.deepcopy(model)  # would fail on a kept non-leaf tensor
    with torch.no_grad():
        torch.testing.assert_close(copied.eval()(tiny_clip()), model.eval()(tiny_clip()))


def test_one_clip_under_autocast_runs_like_a_batch():
    """The one-clip path writes products with out=, which autocast would not see: it must step aside."""
    model = tiny_model("apt", num_prompts=3).eval()
    randomize_(model)
    x = tiny_clip(batch=1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        one_clip = model(x)
        batched = model(torch.cat([x, x]))[:1]
    assert one_clip.dtype == batched.dtype
    torch.testing.assert_close(one_clip, batched, rtol=0, atol=1e-6)


@pytest.mark.parametrize("method", ["apt", "lora", "full"])
def test_recomputing_the_mlp_hidden_gives_the_same_gradients_and_keeps_less(method):
    """model.recompute_mlp: fc1 and GELU are redone in the backward instead of keeping GELU's input."""
    options = {"num_prompts": 3} if method == "apt" else {}
    model = tiny_model(method, **options)
    randomize_(model)
    x = tiny_clip()

    def gradients_and_saved_bytes():
        model.zero_grad()
        saved = []

        def pack(tensor):
            saved.append(tensor.numel() * tensor.element_size())
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = model(x).square().sum()
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return grads, sum(saved)

    plain, plain_bytes = gradients_and_saved_bytes()
    model.recompute_mlp = True
    assert model.recompute_mlp
    recomputed, recomputed_bytes = gradients_and_saved_bytes()
    assert plain.keys() == recomputed.keys() and plain
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-5, atol=1e-7)
    if method == "apt":  # frozen fc2 keeps nothing: only the D-wide MLP input remains per block
        assert recomputed_bytes < plain_bytes


@pytest.mark.parametrize("method", ["apt", "lora", "vpt-deep", "bitfit", "full"])
def test_recomputing_q_k_v_gives_the_same_gradients_keeps_less_and_never_reruns_the_attention(method):
    """model.recompute_qkv: norm1 and the q/k/v projection are redone in the backward, the kernel is not."""
    options = {"num_prompts": 3} if method in ("apt", "vpt-deep") else {}
    model = tiny_model(method, **options)
    randomize_(model)
    x = tiny_clip()
    assert _ATTENTION_KERNELS  # this torch build has fused attention kernels to keep

    def gradients_saved_bytes_and_kernel_calls(recompute_mlp=False):
        model.zero_grad()
        model.recompute_mlp = recompute_mlp
        saved = []

        def pack(tensor):
            saved.append(tensor.numel() * tensor.element_size())
            return tensor

        with CountAttentionKernels() as kernels:
            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                loss = model(x).square().sum()
            loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return grads, sum(saved), kernels.calls

    plain, plain_bytes, plain_calls = gradients_saved_bytes_and_kernel_calls()
    model.recompute_qkv = True
    assert model.recompute_qkv
    recomputed, recomputed_bytes, recomputed_calls = gradients_saved_bytes_and_kernel_calls()
    both, both_bytes, _ = gradients_saved_bytes_and_kernel_calls(recompute_mlp=True)
    assert plain.keys() == recomputed.keys() == both.keys() and plain
    for name in plain:
        torch.testing.assert_close(recomputed[name], plain[name], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(both[name], plain[name], rtol=1e-5, atol=1e-7)
    assert plain_calls == len(model.blocks)  # one kernel call per block: the fused path was taken
    assert recomputed_calls == plain_calls  # the backward took the kept outputs, not a second forward
    assert recomputed_bytes < plain_bytes
    assert both_bytes < recomputed_bytes


def test_recomputing_q_k_v_under_autocast_and_with_whole_block_checkpointing():
    model = tiny_model("apt", num_prompts=3)
    randomize_(model)
    x = tiny_clip()

    def gradients(**settings):
        model.zero_grad()
        for key, value in settings.items():
            setattr(model, key, value)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(x).float().square().sum()
        loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = gradients(recompute_qkv=False, grad_checkpointing=False)
    for settings in ({"recompute_qkv": True}, {"recompute_qkv": True, "grad_checkpointing": True}):
        for ours, reference in zip(gradients(**settings), plain, strict=True):
            torch.testing.assert_close(ours, reference, rtol=1e-2, atol=1e-3)


def test_the_trainer_sets_both_recomputations_from_the_config(tmp_path):
    import yaml

    from aptune.config import load_config
    from aptune.engine.trainer import build_model

    recipe = tmp_path / "tiny.yaml"
    recipe.write_text(yaml.safe_dump(tiny_run_config()))
    for qkv, mlp in ((True, False), (False, True), (True, True)):
        config = load_config(str(recipe), [f"model.recompute_qkv={qkv}", f"model.recompute_mlp={mlp}"])
        model = build_model(config, ["a", "b", "c"])
        assert (model.recompute_qkv, model.recompute_mlp) == (qkv, mlp)


@pytest.mark.parametrize("prompt_start", [0, 1])
def test_training_gradients_match_the_explicit_formula_through_the_prompts_only_backward(prompt_start, monkeypatch):
    """The first prompted block's input is frozen: its backward computes the prompts' gradients
    alone (PromptsOnlyAttention); every gradient still equals autograd through the formula."""
    from aptune.models import attention

    model = tiny_model("apt", num_prompts=3, prompt_dropout=0.0, prompt_start=prompt_start, depth=3).train()
    randomize_(model)
    with torch.no_grad():  # scales away from 1, where max(s, 1) has no gradient ambiguity
        model.kv_prompts.scales.copy_(
            torch.linspace(0.2, 2.5, model.kv_prompts.scales.numel()).view_as(model.kv_prompts.scales)
        )
    calls = []
    original = attention.PromptsOnlyAttention.apply
    monkeypatch.setattr(attention.PromptsOnlyAttention, "apply", lambda *a: calls.append(1) or original(*a))
    x = tiny_clip()
    trained = [p for p in model.parameters() if p.requires_grad]
    ours = torch.autograd.grad(model(x).square().sum(), trained)
    assert calls == [1]  # used once per forward: in the first prompted block only
    reference = torch.autograd.grad(reference_apt_logits(model, x).square().sum(), trained)
    for got, expected in zip(ours, reference, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kernel", ["cpu_flash", "generic"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_prompts_only_attention_equals_autograd_through_sdpa(kernel, precision, monkeypatch):
    from aptune.models import attention

    if kernel == "generic":  # the path other devices take: log-sum-exp computed by blocks of queries
        monkeypatch.setattr(attention, "_CPU_FLASH", None)
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(2, 3, 40, 16, generator=generator)
    kv = torch.randn(2, 2, 3, 40, 16, generator=generator)
    prompts = torch.randn(2, 1, 1, 5, 16, generator=generator, requires_grad=True)
    grad_out = torch.randn(2, 3, 40, 16, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        q, kv = q.to(dtype), kv.to(dtype)
        out = attention.PromptsOnlyAttention.apply(q, kv, prompts)
        k, v = torch.cat((kv, prompts.to(dtype).expand(2, 2, 3, 5, 16)), dim=3).unbind(0)
        expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    (ours,) = torch.autograd.grad(out, prompts, grad_out.to(out.dtype))
    (reference,) = torch.autograd.grad(expected, prompts, grad_out.to(expected.dtype))
    tolerance = {"fp32": (1e-4, 1e-5), "bf16": (3e-2, 3e-2)}[precision]
    torch.testing.assert_close(out, expected, rtol=tolerance[0], atol=tolerance[1])
    torch.testing.assert_close(ours, reference, rtol=tolerance[0], atol=tolerance[1] * reference.abs().max().item())


@pytest.mark.parametrize(("method", "kept"), [("apt", False), ("lora", True), ("bitfit", True), ("full", True)])
def test_the_first_block_recomputes_q_k_v_only_where_autograd_would_keep_them(method, kept):
    """A frozen input, frozen projection and no LoRA delta: q, k and v need no gradient and APT's
    prompts-only backward keeps only q and the output, so there is nothing to recompute."""
    model = tiny_model(method, **({"num_prompts": 3} if method == "apt" else {}))
    frozen_input = torch.randn(2, 8, model.config.embed_dim)
    inputs = {}
    for _, extension in model.named_extensions():
        extension.prepare()
        inputs.update(extension.block_inputs(0))
    assert ("qkv_delta" in inputs) is (method == "lora")
    assert model.blocks[0]._qkv_kept_for_backward(frozen_input, inputs.get("qkv_delta")) is kept


def test_one_clip_inference_follows_every_change_of_the_prompts():
    """No-grad forwards keep the prepared prompts (and a one-clip buffer holding them) until a
    prompt tensor changes: in place, through load_state_dict, or by assigning new data."""
    model = tiny_model("apt", num_prompts=3).eval()
    randomize_(model)
    x = tiny_clip(batch=1)
    prompts = model.kv_prompts

    def check() -> torch.Tensor:
        with torch.no_grad():
            first, again = model(x), model(x)
        with torch.inference_mode():  # what eval, predict and bench run under; kept apart
            inferred, inferred_again = model(x), model(x)
        with torch.no_grad():
            torch.testing.assert_close(first, reference_apt_logits(model, x), rtol=1e-4, atol=1e-5)
        assert torch.equal(first, again) and torch.equal(first, inferred) and torch.equal(first, inferred_again)
        return first

    before = check()
    with torch.no_grad():
        prompts.keys.add_(0.5)  # an optimiser step: in place
    after_step = check()
    assert not torch.allclose(before, after_step)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    state["kv_prompts.values"] = state["kv_prompts.values"] * 2
    model.load_state_dict(state)
    after_load = check()
    assert not torch.allclose(after_step, after_load)
    prompts.scales.data = torch.full_like(prompts.scales, 1.7)  # new storage, same parameter
    assert not torch.allclose(after_load, check())


def test_one_clip_inference_from_two_threads_matches_one_at_a_time():
    """Per-forward state (the prepared prompts, the kept one-clip buffer) is per thread:
    concurrent forwards on one model neither clear nor overwrite each other's."""
    import threading

    model = tiny_model("apt", num_prompts=3, embed_dim=64, num_frames=8, img_size=64).eval()
    randomize_(model)
    clips = [tiny_clip(batch=1, seed=seed, frames=8, size=64) for seed in range(4)]
    with torch.no_grad():
        expected = [model(clip) for clip in clips]
    failures = []

    def run(offset: int) -> None:
        try:
            with torch.no_grad():
                for step in range(150):
                    index = (offset + step) % len(clips)
                    if not torch.equal(model(clips[index]), expected[index]):
                        failures.append(index)
        except Exception as exc:  # noqa: BLE001 - a thread's error must fail the test, not vanish
            failures.append(repr(exc))

    threads = [threading.Thread(target=run, args=(offset,)) for offset in (0, 1)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
