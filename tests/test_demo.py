"""`aptune demo --quick` end to end on the shipped backbone (tiny data, one epoch per method)."""

import json

import torch

from aptune.cli import main as cli_main
from aptune.demo import DEMO_METHODS, shipped_backbone


def test_shipped_backbone_is_a_pretrained_videomae_checkpoint():
    from safetensors import safe_open

    import aptune

    path = shipped_backbone()
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    arch = json.loads(meta["arch"])
    recipe = json.loads(meta["recipe"])
    assert recipe["pretrain"]["mask_ratio"] > 0 and recipe["train"]["epochs"] > 0
    model = aptune.create_model(
        None,
        num_classes=3,
        method="apt",
        num_prompts=2,
        pretrained=path,
        **{
            k: arch[k]
            for k in ("embed_dim", "depth", "num_heads", "patch_size", "tubelet_size", "num_frames", "img_size")
        },
    )
    with safe_open(str(path), framework="pt") as f:  # the whole pre-training state: decoder too
        assert "mask_token" in f.keys() and any(k.startswith("decoder.") for k in f.keys())
    assert torch.isfinite(model(torch.randn(1, 3, arch["num_frames"], arch["img_size"], arch["img_size"]))).all()


def test_quick_demo_prints_and_writes_the_table(tmp_path, capsys):
    assert cli_main(["demo", "--quick", "--output-dir", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    for method in DEMO_METHODS:
        assert f"| {method} |" in out
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    rows = {row["method"]: row for row in summary["rows"]}
    assert set(rows) == set(DEMO_METHODS)
    assert abs(summary["chance_top1"] - 100 / 6) < 1e-9  # six "which object moves" classes
    for row in rows.values():
        for key in ("top1", "top5", "trainable_params", "gflops_per_view", "latency_ms", "train_seconds"):
            assert row[key] is not None, key
    # the efficiency side of the paper's claim holds by construction and is measured here
    assert rows["apt"]["trainable_params"] < rows["full"]["trainable_params"] / 100
    assert rows["apt"]["gflops_per_view"] < rows["vpt-deep"]["gflops_per_view"]
    assert rows["apt"]["prompts"] == rows["vpt-deep"]["prompts"]
    assert (tmp_path / "demo" / "demo.png").stat().st_size > 0
    assert "| apt |" in (tmp_path / "demo" / "demo.md").read_text()
    # above the table: what each row is, and chance
    assert "- apt: the backbone frozen; P prompt keys and values" in out and "- chance: 16.7 %" in out
    # the cost of prompts: counted and timed on the demo backbone, counted on ViT-B 16x224
    costs = summary["prompt_cost"]
    assert all(set(row) >= {"method", "arch", "prompts", "gmacs", "latency_ms"} for row in costs)
    demo_rows = [r for r in costs if r["arch"] == "demo"]
    assert demo_rows and all(r["latency_ms"] > 0 for r in demo_rows)
    vit_b = {(r["method"], r["prompts"]): r for r in costs if r["arch"] == "vit_base_patch16_224"}
    assert all(r["latency_ms"] is None for r in vit_b.values())
    assert vit_b[("linear", 0)]["gmacs"] < vit_b[("apt", 8)]["gmacs"] < vit_b[("vpt-deep", 8)]["gmacs"]
    assert (tmp_path / "demo" / "demo_prompts.png").stat().st_size > 0


def test_prompt_cost_counts_what_the_formulas_say():
    from aptune.demo.prompt_cost import counted_rows
    from aptune.flops import closed_form_macs
    from aptune.models.vit import arch_config

    rows = {
        (r["method"], r["prompts"]): r for r in counted_rows("vit_small_patch16_224", (1, 3, 16, 224, 224), (4, 40))
    }
    config = arch_config("vit_small_patch16_224", num_classes=400)
    for method in ("apt", "vpt-deep"):
        for prompts in (4, 40):
            expected = closed_form_macs(config, method, prompts) / 1e9
            assert abs(rows[(method, prompts)]["gmacs"] - expected) < 1e-3 * expected, (method, prompts)
    assert rows[("linear", 0)]["latency_ms"] is None


def test_reparam_study_trains_both_settings_and_plots_them(tmp_path, capsys):
    demo = tmp_path / "study"
    assert cli_main(["demo", "--study", "reparam", "--quick", "--output-dir", str(demo)]) == 0
    summary = json.loads((demo / "reparam.json").read_text())
    settings = {(row["reparam"], row["lr"]) for row in summary["rows"]}
    assert settings == {(True, 0.01), (True, 0.03), (False, 0.01), (False, 0.03)}
    assert all(0 <= row["top1"] <= 100 for row in summary["rows"]) and summary["seconds"] > 0
    assert (demo / "reparam.png").stat().st_size > 0
    assert "| peak lr of the prompts |" in capsys.readouterr().out
    runs = sorted(p.name for p in demo.iterdir() if p.name.startswith("apt-"))
    assert runs[0] == "apt-reparam-off-lr0.01-seed0" and len(runs) == 4


def test_a_folder_of_another_run_is_refused_untouched_before_any_work(tmp_path, capsys):
    demo = tmp_path / "demo"
    users_run = demo / "apt"
    users_run.mkdir(parents=True)
    (users_run / "config.yaml").write_text("model: {arch: vit_base_patch16_224}\n")
    (users_run / "notes.txt").write_text("my own experiment")
    before = {p.name: p.read_bytes() for p in users_run.iterdir()}
    assert cli_main(["demo", "--quick", "--output-dir", str(demo)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and str(users_run) in err and "--output-dir" in err
    assert {p.name: p.read_bytes() for p in users_run.iterdir()} == before
    assert sorted(p.name for p in demo.iterdir()) == ["apt"]  # no other method ran, no dataset written


def test_an_empty_method_list_is_a_one_line_error(tmp_path, capsys):
    assert cli_main(["demo", "--quick", "--methods", ",", "--output-dir", str(tmp_path / "d")]) == 2
    assert "at least one method" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_the_demo_leaves_busy_cores_to_other_processes(monkeypatch):
    import os

    from aptune.demo import run as demo_run

    threads = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (4.0, 4.0, 4.0))  # lagging: must not be what decides
    try:
        for busy, expected in ((2.2, 2), (0.3, 4), (0.6, 3), (9.0, 1), (None, 4)):
            monkeypatch.setattr(demo_run, "cores_busy_elsewhere", lambda busy=busy: busy)
            torch.set_num_threads(4)
            demo_run.share_the_cores_with_other_processes()
            assert torch.get_num_threads() == expected, busy  # never zero; unknown: unchanged
        torch.set_num_threads(3)  # the user's own choice stays
        monkeypatch.setattr(demo_run, "cores_busy_elsewhere", lambda: 2.0)
        demo_run.share_the_cores_with_other_processes()
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(threads)


def test_busy_cores_are_measured_now():
    import os
    import threading
    import time

    from aptune.demo.run import cores_busy_elsewhere

    stop = time.time() + 1.5

    def spin():
        while time.time() < stop:
            pass

    spinner = threading.Thread(target=spin)
    spinner.start()  # one core kept busy while we measure
    busy = cores_busy_elsewhere(seconds=0.5)
    spinner.join()
    assert busy is not None and 0.5 <= busy <= (os.cpu_count() or 1) + 0.1
