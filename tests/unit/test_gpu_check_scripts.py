"""The prepared GPU check cannot be run here; its pieces are run on the CPU at toy size so that
they do not rot between the sessions that get a GPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def test_gpu_check_script_parses_and_names_its_steps():
    assert subprocess.run(["bash", "-n", str(BENCH / "gpu_check.sh")]).returncode == 0
    text = (BENCH / "gpu_check.sh").read_text()
    for step in ("gpu_train.py", "bench_score.py", "bench_retrieval_size.py"):
        assert step in text and (BENCH / step).is_file()


def test_gpu_train_measures_flops_and_throughput_on_cpu(tmp_path):
    done = subprocess.run(
        [sys.executable, "gpu_train.py", "--arch", "mofi-tiny", "--device", "cpu", "--steps", "2",
         "--warmup", "1", "--batch-size", "4", "--classes", "10", "--compile", "off",
         "--out", str(tmp_path)], cwd=BENCH, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (row,) = json.loads((tmp_path / "gpu_train.json").read_text())
    assert row["images_per_s"] > 0 and row["gflops_per_image"] > 0 and 0 < row["mfu"] < 1


def test_retrieval_size_benchmark_runs_small(tmp_path):
    out = tmp_path / "r.json"
    done = subprocess.run([sys.executable, "bench_retrieval_size.py", "--images", "200",
                           "--dim", "16", "--out", str(out)], cwd=BENCH, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    row = json.loads(out.read_text())
    assert row["images"] == 200 and 0 < row["gpr_map"] <= 1


@pytest.mark.scale  # every step of the GPU check, on CPU: make test-scale
def test_the_whole_gpu_check_runs_as_a_cpu_smoke_run(tmp_path):
    """Every step's command line, the failure log and the merged results file, at toy size."""
    out = tmp_path / "gpu"
    done = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), str(out)],
                          env={**os.environ, "GPU_CHECK_SMOKE": "1", "PYTHON": sys.executable},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    merged = json.loads((out / "results.json").read_text())
    assert merged["failures"] == [], merged["failures"]
    assert merged["gpu_train"][0]["images_per_s"] > 0
    assert merged["score"]["stage_per_s"] > 0 and merged["score"]["arch"] == "mofi-tiny"
    assert merged["retrieval"]["images"] == 200
    assert "gpu check done:" in done.stdout


@pytest.mark.scale  # every step of the GPU check, on CPU: make test-scale
def test_a_failing_gpu_check_step_is_logged_and_the_others_still_run(tmp_path):
    fake = tmp_path / "python"  # fails the training step only, runs everything else
    fake.write_text(f'#!/usr/bin/env bash\nif [[ "$1" == gpu_train.py ]]; then echo boom >&2; '
                    f'exit 3; fi\nexec {sys.executable} "$@"\n')
    fake.chmod(0o755)
    out = tmp_path / "gpu"
    done = subprocess.run(["bash", str(BENCH / "gpu_check.sh"), str(out)],
                          env={**os.environ, "GPU_CHECK_SMOKE": "1", "PYTHON": str(fake)},
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    merged = json.loads((out / "results.json").read_text())
    assert merged["failures"] == ["gpu_train: exit 3"]
    assert merged["gpu_train"] == {"error": "no gpu_train.json"}
    assert merged["retrieval"]["images"] == 200 and "boom" in (out / "gpu_train.log").read_text()
    assert "with failures" in done.stdout
