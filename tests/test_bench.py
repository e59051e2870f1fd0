"""aptune bench: statistics, interleaving, method switching, memory, rows, CLI; no timing asserts."""

import json

import pytest
import torch
from helpers import TINY, tiny_model

import aptune
from aptune.bench import (
    ROW_KEYS,
    BenchSettings,
    build_cases,
    format_table,
    peak_allocated_bytes,
    resident_bytes,
    run_bench,
    spread,
    time_interleaved,
)
from aptune.cli import main
from aptune.errors import ConfigError
from aptune.flops import closed_form_macs

TINY_ARCH = {k: v for k, v in TINY.items() if k not in ("num_frames", "img_size")}


def test_spread():
    stats = spread([5.0, 1.0, 3.0, 2.0, 4.0])
    assert stats == {"median": 3.0, "q1": 2.0, "q3": 4.0, "iqr": 2.0, "min": 1.0, "max": 5.0}
    assert spread([7.0])["iqr"] == 0.0


def test_time_interleaved_is_round_robin_and_drops_warmup():
    order = []
    tasks = {name: (lambda name=name: order.append(name)) for name in "abc"}
    times = time_interleaved(tasks, repeats=3, warmup=1, progress=False)
    assert order == list("abcbcacababc")  # rotating start, warm-up round included
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3, "c": 3}


def test_cases_switch_methods_on_one_backbone():
    model = tiny_model("full")
    cases = build_cases(model, ["apt", "vpt-deep", "lora", "adaptformer", "linear", "full"], [1, 4])
    assert [c.label for c in cases] == [
        "apt/P=1",
        "apt/P=4",
        "vpt-deep/P=1",
        "vpt-deep/P=4",
        "lora",
        "adaptformer",
        "linear",
        "full",
    ]
    for case in cases:
        options = {"num_prompts": case.num_prompts} if case.num_prompts is not None else {}
        reference = tiny_model(case.method, **options)
        case.activate(model)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {n for n, p in reference.named_parameters() if p.requires_grad}
        assert aptune.count_parameters(model) == aptune.count_parameters(reference)
        # only this case's modules are attached
        assert (model.extension("qkv_adapters") is not None) == (case.method == "lora")
        assert (model.extension("mlp_adapters") is not None) == (case.method == "adaptformer")
    with pytest.raises(ConfigError, match="cannot benchmark"):
        build_cases(model, ["nope"], [1])


def test_peak_allocated_bytes_sees_a_cpu_allocation():
    size = 4 * 2**20

    def allocate():
        buffer = torch.ones(size // 4)  # float32: exactly ``size`` bytes
        return buffer.sum()

    peak = peak_allocated_bytes(allocate, "cpu")
    if peak is None:
        pytest.skip("this torch's profiler gives no allocation records")
    assert size <= peak < size + 2**20


def test_resident_bytes_counts_shared_storage_once():
    weight = torch.zeros(256)
    module = torch.nn.Linear(16, 16)
    assert resident_bytes(weight, weight, weight[:10]) == 256 * 4
    assert resident_bytes(module) == (16 * 16 + 16) * 4


def test_run_bench_rows():
    settings = BenchSettings(
        arch=None,
        methods=("apt", "vpt-shallow", "linear"),
        prompts=(1, 3),
        frames=4,
        img_size=32,
        num_classes=5,
        repeats=2,
        warmup=0,
        train=True,
        arch_overrides=TINY_ARCH,
    )
    result = run_bench(settings, progress=False)
    rows = result["rows"]
    assert [(r["method"], r["prompts"]) for r in rows] == [
        ("apt", 1),
        ("apt", 3),
        ("vpt-shallow", 1),
        ("vpt-shallow", 3),
        ("linear", None),
    ]
    config = tiny_model("linear").config
    for row in rows:
        assert list(row) == list(ROW_KEYS)
        expected = closed_form_macs(config, row["method"], row["prompts"] or 0)
        assert row["gmacs"] == pytest.approx(expected / 1e9, abs=1e-6)
        assert row["train_gmacs"] >= row["gmacs"]
        assert 0 < row["latency_ms_min"] <= row["latency_ms_median"] <= row["latency_ms_max"]
        assert row["train_step_ms_median"] > 0
        assert row["trainable_params"] < row["total_params"]
        if row["peak_memory_mb"] is not None:
            assert row["peak_memory_mb"] >= row["model_memory_mb"]
            assert row["train_peak_memory_mb"] >= row["model_memory_mb"]
    meta = result["meta"]
    assert meta["machine"]["torch"] == torch.__version__
    assert {"date", "device", "batch", "memory_method", "gmacs_convention"} <= set(meta)
    assert meta["timing_method"] == "time.perf_counter"  # CUDA events on a GPU: tests/test_cuda.py
    table = format_table(rows)
    assert "vpt-shallow" in table and "linear       -" in table


def test_run_bench_adapter_rows():
    settings = BenchSettings(
        arch=None,
        methods=("lora", "adaptformer", "linear"),
        prompts=(1, 3),
        frames=4,
        img_size=32,
        num_classes=5,
        repeats=1,
        warmup=0,
        lora_rank=4,
        adapter_dim=6,
        arch_overrides=TINY_ARCH,
    )
    result = run_bench(settings, progress=False)
    rows = result["rows"]
    # one row each, whatever the prompt list says
    assert [(r["method"], r["prompts"]) for r in rows] == [("lora", None), ("adaptformer", None), ("linear", None)]
    config = tiny_model("linear").config
    sizes = {"lora": {"lora_rank": 4}, "adaptformer": {"adapter_dim": 6}, "linear": {}}
    for row in rows:
        assert list(row) == list(ROW_KEYS)
        expected = closed_form_macs(config, row["method"], **sizes[row["method"]])
        assert row["gmacs"] == pytest.approx(expected / 1e9, abs=1e-6)
        reference = tiny_model(row["method"], method_options=sizes[row["method"]])
        assert (row["trainable_params"], row["total_params"]) == aptune.count_parameters(reference)
    linear = rows[2]["trainable_params"]
    depth, dim = TINY_ARCH["depth"], TINY_ARCH["embed_dim"]
    assert rows[0]["trainable_params"] - linear == depth * (4 * dim + 3 * dim * 4)
    assert rows[1]["trainable_params"] - linear == depth * (2 * dim * 6 + 6 + dim)
    meta = result["meta"]
    assert (meta["lora_rank"], meta["adapter_dim"], meta["lora_merged"]) == (4, 6, False)
    with pytest.raises(ConfigError, match="lora_rank"):
        run_bench(BenchSettings(arch=None, methods=("lora",), lora_rank=0, arch_overrides=TINY_ARCH), progress=False)


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = main(
        [
            "bench",
            "--arch",
            "vit_small_patch16_224",
            "--frames",
            "2",
            "--img-size",
            "32",
            "--methods",
            "apt,full",
            "--prompts",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--no-progress",
            "--json",
            str(out),
        ]
    )
    assert status == 0
    result = json.loads(out.read_text())
    assert [(r["method"], r["prompts"]) for r in result["rows"]] == [("apt", 2), ("full", None)]
    assert result["rows"][1]["train_step_ms_median"] is None  # no --train
    assert "GMACs" in capsys.readouterr().out
    assert (
        main(
            [
                "bench",
                "--methods",
                "nope",
                "--arch",
                "vit_small_patch16_224",
                "--frames",
                "2",
                "--img-size",
                "32",
                "--no-progress",
            ]
        )
        == 2
    )


def test_cli_adapter_methods(tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = main(
        [
            "bench",
            "--arch",
            "vit_small_patch16_224",
            "--frames",
            "2",
            "--img-size",
            "32",
            "--methods",
            "lora,adaptformer",
            "--prompts",
            "2,3",
            "--lora-rank",
            "4",
            "--adapter-dim",
            "16",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--no-progress",
            "--json",
            str(out),
        ]
    )
    assert status == 0
    result = json.loads(out.read_text())
    assert [(r["method"], r["prompts"]) for r in result["rows"]] == [("lora", None), ("adaptformer", None)]
    assert (result["meta"]["lora_rank"], result["meta"]["adapter_dim"]) == (4, 16)
    printed = capsys.readouterr().out
    assert "lora r=4" in printed and "adaptformer d=16" in printed
    with pytest.raises(SystemExit):
        main(["bench", "--lora-rank", "0"])


def test_prompt_start_limits_prompted_blocks_and_macs(tmp_path):
    settings = BenchSettings(
        arch=None,
        methods=("apt", "vpt-deep", "lora", "linear"),
        prompts=(3,),
        frames=4,
        img_size=32,
        num_classes=5,
        repeats=1,
        warmup=0,
        prompt_start=1,
        train=True,
        arch_overrides=TINY_ARCH,
    )
    result = run_bench(settings, progress=False)
    assert result["meta"]["prompt_start"] == 1
    rows = {r["method"]: r for r in result["rows"]}
    config = tiny_model("linear").config
    for method in ("apt", "vpt-deep"):
        expected = closed_form_macs(config, method, 3, prompt_start=1)
        assert rows[method]["gmacs"] == pytest.approx(expected / 1e9, abs=1e-6)
        reference = tiny_model(method, num_prompts=3, prompt_start=1)
        assert rows[method]["trainable_params"] == aptune.count_parameters(reference)[0]
    all_blocks = tiny_model("apt", num_prompts=3)
    assert rows["apt"]["trainable_params"] < aptune.count_parameters(all_blocks)[0]
    # fewer blocks need a backward: less training work than prompting from block 0
    full_settings = BenchSettings(**{**settings.__dict__, "prompt_start": 0, "methods": ("apt",)})
    all_rows = run_bench(full_settings, progress=False)["rows"]
    assert rows["apt"]["train_gmacs"] < all_rows[0]["train_gmacs"]
    assert rows["linear"]["trainable_params"] == aptune.count_parameters(tiny_model("linear"))[0]
    lora = tiny_model("lora", method_options={"prompt_start": 1})
    assert rows["lora"]["trainable_params"] == aptune.count_parameters(lora)[0]
    assert rows["lora"]["gmacs"] == pytest.approx(closed_form_macs(config, "lora", prompt_start=1) / 1e9, abs=1e-6)
    with pytest.raises(ConfigError, match="prompt_start=9 must be a block index"):
        run_bench(BenchSettings(**{**settings.__dict__, "prompt_start": 9}), progress=False)
    out = tmp_path / "b.json"
    assert (
        main(
            [
                "bench",
                "--arch",
                "vit_small_patch16_224",
                "--frames",
                "2",
                "--img-size",
                "32",
                "--methods",
                "apt",
                "--prompts",
                "2",
                "--prompt-start",
                "11",
                "--repeats",
                "1",
                "--warmup",
                "0",
                "--no-progress",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["meta"]["prompt_start"] == 11
    assert (
        main(
            [
                "bench",
                "--arch",
                "vit_small_patch16_224",
                "--frames",
                "2",
                "--img-size",
                "32",
                "--methods",
                "apt",
                "--prompts",
                "2",
                "--prompt-start",
                "12",
                "--repeats",
                "1",
                "--no-progress",
            ]
        )
        == 2
    )


def _bench(*flags):
    return main(
        [
            "bench",
            "--arch",
            "vit_small_patch16_224",
            "--frames",
            "2",
            "--img-size",
            "32",
            "--methods",
            "apt",
            "--prompts",
            "2",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--no-progress",
            *[str(f) for f in flags],
        ]
    )


@pytest.mark.parametrize(
    "flags, words",
    [
        (["--device", "gpu"], "'gpu'"),
        (["--device", "cuda:0"] if not torch.cuda.is_available() else ["--device", "cuda:999"], "cuda"),
        (["--device", "meta"], "'meta'"),
        (["--threads", "-1"], "--threads must be an integer >= 1, got -1"),
        (["--threads", "0"], "--threads must be an integer >= 1, got 0"),
        (["--frames", "0"], "--frames must be an integer >= 1, got 0"),
        (["--img-size", "0"], "--img-size must be an integer >= 1, got 0"),
        (["--num-classes", "0"], "--num-classes must be an integer >= 1, got 0"),
        (["--batch", "-2"], "--batch must be an integer >= 1, got -2"),
        (["--repeats", "0"], "--repeats must be an integer >= 1, got 0"),
        (["--warmup", "-1"], "--warmup must be an integer >= 0, got -1"),
        (["--frames", "3"], "tubelet_size"),  # not a multiple of the tubelet
        (["--methods", ","], "no method to benchmark"),
    ],
    ids=[
        "gpu",
        "cuda-missing",
        "meta",
        "threads-negative",
        "threads-zero",
        "frames",
        "img-size",
        "num-classes",
        "batch",
        "repeats",
        "warmup",
        "frames-odd",
        "no-methods",
    ],
)
def test_cli_bad_values_are_one_line_errors(tmp_path, capsys, flags, words):
    threads = torch.get_num_threads()
    assert _bench(*flags) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and words in errors[0], errors
    assert torch.get_num_threads() == threads  # refused before anything was changed


def test_library_settings_are_checked_too():
    base = dict(
        arch=None,
        methods=("apt",),
        prompts=(2,),
        frames=4,
        img_size=32,
        num_classes=5,
        repeats=1,
        warmup=0,
        arch_overrides=TINY_ARCH,
    )
    for change, words in (
        ({"device": "gpu"}, "'gpu'"),
        ({"threads": -1}, "threads"),
        ({"frames": 0}, "frames"),
        ({"img_size": 0}, "img_size"),
        ({"num_classes": 0}, "num_classes"),
        ({"prompts": (-1,)}, "prompts"),
        ({"methods": ()}, "no method"),
    ):
        with pytest.raises(ConfigError, match=words):
            run_bench(BenchSettings(**{**base, **change}), progress=False)


def test_cli_json_onto_a_full_disk_is_a_one_line_error(tmp_path, capsys, monkeypatch):
    import errno
    import os

    import aptune.fileio

    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(aptune.fileio.os, "fsync", no_space)
    target = tmp_path / "bench.json"
    assert _bench("--json", target) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{target}: cannot write (no space left on the device)" in errors[0]
    assert not target.exists() and not list(tmp_path.iterdir())  # no temporary left behind either


def test_cli_json_is_strict_and_creates_its_folder(tmp_path):
    target = tmp_path / "a" / "b" / "bench.json"
    assert _bench("--json", target) == 0

    def refuse(constant):
        raise ValueError(constant)

    result = json.loads(target.read_text(), parse_constant=refuse)
    assert result["rows"][0]["method"] == "apt"
