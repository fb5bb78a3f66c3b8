"""Every step of benchmarks/gpu_check.sh on CPU, so that its first run on a GPU is not its first
run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.unit.test_gpu_check_scripts import BENCH


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
