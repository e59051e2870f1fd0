"""benchmarks/gpu_check.sh: its CPU dry run runs every step and writes the keys a GPU run writes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def test_dry_run_runs_every_step_and_writes_the_json(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run(
        ["bash", str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(out.read_text())
    assert set(result) == {"meta", "steps", "status", "duration_s"} and result["status"] == "ok"
    meta = result["meta"]
    assert meta["dry_run"] is True and meta["torch"] and meta["av"]
    assert {"gpu", "cuda", "transformers", "transformers_meets_floor", "installed_from_wheels"} <= set(meta)
    assert list(result["steps"]) == ["cuda_tests", "throughput", "pipeline"]
    for step in result["steps"].values():
        assert step["status"] == "ok" and step["duration_s"] > 0
    tests = result["steps"]["cuda_tests"]
    # on the CPU through APTUNE_CUDA_TIER_DEVICE=cpu: the tier's tests really ran, none skipped
    assert tests["passed"] >= 2 and tests["failed"] == tests["errors"] == tests["skipped"] == 0
    rows = result["steps"]["throughput"]["result"]["rows"]
    assert [(r["method"], r["prompts"], r["memory_setting"]) for r in rows] == [
        ("apt", 2, "plain"),
        ("apt", 400, "plain"),
        ("vpt-deep", 50, "plain"),
        ("linear", None, "plain"),
        ("full", None, "plain"),
        ("apt", 2, "recompute_qkv+mlp"),
    ]
    for row in rows:
        assert row["train_clips_per_second"] > 0 and row["infer_clips_per_second"] > 0
        assert row["train_batch"] == row["infer_batch"] == 2
    assert rows[0]["trainable_params"] < rows[1]["trainable_params"] < rows[4]["trainable_params"]
    assert rows[5]["trainable_params"] == rows[0]["trainable_params"]
    pipeline = result["steps"]["pipeline"]["result"]
    assert set(pipeline["cpu_ms_per_clip"]) == {"cpu_augment", "device_augment"}
    assert all(value > 0 for value in pipeline["cpu_ms_per_clip"].values())
    assert set(pipeline["loader_clips_per_second"]) == {"cpu", "device"}
    assert pipeline["loader_clips_per_second"]["device"]["1"] > 0
    assert "GPU check (dry run): ok" in done.stdout


def test_bad_options_are_one_line_errors():
    done = subprocess.run(["bash", str(SCRIPT), "--gpu"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2
    assert done.stderr.strip() == "gpu_check.sh: unknown option '--gpu' (valid: --dry-run, --out FILE, --wheels DIR)"
    done = subprocess.run(["bash", str(SCRIPT), "--out"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 2 and "--out needs a file name" in done.stderr
