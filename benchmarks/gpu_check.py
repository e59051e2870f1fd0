"""The GPU check's steps, run by ``bash benchmarks/gpu_check.sh`` (which installs what is missing
first): the ``cuda`` test tier, the methods' throughput (``benchmarks/gpu_throughput.py``)
and the input pipeline (``benchmarks/bench_pipeline.py``), each in its own process under its
own time limit, so that one that fails or hangs still leaves a JSON with the others.

The limits add up to under 8 minutes on one H200 with 16 cores, so the check can be run
again inside a 15-minute lease.  ``--dry-run`` runs the same steps on the CPU with tiny
shapes (the tier through ``APTUNE_CUDA_TIER_DEVICE=cpu``, a few of its tests) and writes
the same keys: what the test suite runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
# seconds per step on the GPU (dry run: on the CPU), well inside 8 minutes together
LIMITS = {"cuda_tests": 240, "throughput": 120, "pipeline": 80}
DRY_RUN_LIMITS = {"cuda_tests": 60, "throughput": 60, "pipeline": 60}
# the dry run's share of the tier (a training step and a parity test: the plumbing, quick on a CPU)
DRY_RUN_TESTS = "(methods_tensors and apt and fp32 and not adaptformer) or (logits_match_cpu and linear and tiny)"
TRANSFORMERS_FLOOR = (5, 18)


def version_of(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def environment(dry_run: bool, installed: list[str]) -> dict:
    import torch

    transformers = version_of("transformers")
    numbers = tuple(int(part) for part in (transformers or "0.0").split(".")[:2] if part.isdigit())
    return {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "dry_run": dry_run,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "gpu_count": torch.cuda.device_count(),
        "cpu_count": os.cpu_count(),
        "av": version_of("av"),
        "transformers": transformers,
        # the tier's tests of transformers models skip without it (or below the floor)
        "transformers_meets_floor": transformers is not None and numbers >= TRANSFORMERS_FLOOR,
        "installed_from_wheels": installed,
    }


def run_step(command: list[str], limit: float, env: dict | None = None) -> dict:
    """Run one step's process; its status is ok, failed (exit code) or timeout."""
    started = time.perf_counter()
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit, stdin=subprocess.DEVNULL
        )
        status = "ok" if done.returncode == 0 else f"failed (exit {done.returncode})"
        output = done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        status = f"timeout ({limit:g} s)"
        output = (exc.stdout or b"").decode(errors="replace") + (exc.stderr or b"").decode(errors="replace")
    return {
        "status": status,
        "duration_s": round(time.perf_counter() - started, 1),
        "command": " ".join(command),
        "output_tail": output[-3000:],
    }


def cuda_tests(dry_run: bool, work: Path, limit: float) -> dict:
    report = work / "cuda_tests.xml"
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"]
    # one test that hangs fails alone (pytest-timeout), the others still report
    command += [f"--junitxml={report}", "-o", "addopts=", "-o", "timeout=120"]
    env = dict(os.environ)
    if dry_run:
        command += ["-k", DRY_RUN_TESTS]
        env["APTUNE_CUDA_TIER_DEVICE"] = "cpu"
    step = run_step(command, limit, env)
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failed_tests": []}
    if report.exists():
        for case in ElementTree.parse(report).getroot().iter("testcase"):
            counts["tests"] += 1
            outcome = next((child.tag for child in case if child.tag in ("failure", "error", "skipped")), "passed")
            key = {"failure": "failed", "error": "errors"}.get(outcome, outcome)
            counts[key] += 1
            if key in ("failed", "errors"):
                counts["failed_tests"].append(case.get("name"))
    if step["status"] == "ok" and counts["tests"] == 0:
        step["status"] = "failed (no test ran)"
    return {**step, **counts, "selection": DRY_RUN_TESTS if dry_run else "all tests marked cuda"}


def json_step(command: list[str], out: Path, limit: float) -> dict:
    step = run_step(command + ["--json", str(out)], limit)
    result = json.loads(out.read_text()) if out.exists() else None
    if step["status"] == "ok" and result is None:
        step["status"] = "failed (no JSON written)"
    return {**step, "result": result}


def throughput(dry_run: bool, work: Path, limit: float) -> dict:
    command = [sys.executable, "benchmarks/gpu_throughput.py"] + (["--dry-run"] if dry_run else [])
    return json_step(command, work / "throughput.json", limit)


def pipeline(dry_run: bool, work: Path, limit: float) -> dict:
    command = [sys.executable, "benchmarks/bench_pipeline.py", "--cache", str(work / "videos")]
    if dry_run:
        command += ["--tiny", "--videos", "2", "--repeats", "1", "--workers", "1", "--loader-steps", "2"]
    else:
        cores = os.cpu_count() or 1
        workers = sorted({max(1, cores // 4), max(1, cores // 2), cores})
        command += ["--device", "cuda", "--videos", "12", "--repeats", "3", "--batch", "8"]
        command += ["--workers", ",".join(map(str, workers)), "--loader-steps", "10"]
    return json_step(command, work / "pipeline.json", limit)


def summary(result: dict) -> str:
    lines = [f"GPU check ({'dry run' if result['meta']['dry_run'] else result['meta']['gpu']}): {result['status']}"]
    for name, step in result["steps"].items():
        lines.append(f"  {name:11s} {step['status']} in {step['duration_s']} s")
    tests = result["steps"]["cuda_tests"]
    lines.append(f"  cuda tests: {tests['passed']} passed, {tests['failed']} failed, {tests['skipped']} skipped")
    rows = (result["steps"]["throughput"].get("result") or {}).get("rows", [])
    for row in rows:
        prompts = "" if row["prompts"] is None else f" P={row['prompts']}"
        setting = "" if row.get("memory_setting", "plain") == "plain" else f" {row['memory_setting']}"
        lines.append(
            f"  {row['method'] + prompts + setting:13s} train {row['train_clips_per_second']} clips/s (batch "
            f"{row['train_batch']})  inference {row['infer_clips_per_second']} clips/s (batch {row['infer_batch']})"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="the same steps on the CPU with tiny shapes")
    parser.add_argument("--out", help="the JSON (default: benchmarks/results/gpu_check[_dry_run].json)")
    parser.add_argument("--installed", default="", help="wheels installed by gpu_check.sh (comma-separated)")
    args = parser.parse_args(argv)
    out = Path(args.out or RESULTS / ("gpu_check_dry_run.json" if args.dry_run else "gpu_check.json"))
    limits = DRY_RUN_LIMITS if args.dry_run else LIMITS
    started = time.perf_counter()
    result = {"meta": environment(args.dry_run, [w for w in args.installed.split(",") if w]), "steps": {}}
    with tempfile.TemporaryDirectory(prefix="aptune_gpu_check_") as folder:
        work = Path(folder)
        for name, step in (("cuda_tests", cuda_tests), ("throughput", throughput), ("pipeline", pipeline)):
            result["steps"][name] = step(args.dry_run, work, limits[name])
    result["status"] = "ok" if all(s["status"] == "ok" for s in result["steps"].values()) else "failed"
    result["duration_s"] = round(time.perf_counter() - started, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(summary(result))
    print(f"wrote {out}")
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
