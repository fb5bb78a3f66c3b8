"""The prepared GPU check cannot be run here; its pieces are run on the CPU at toy size so that
they do not rot between the sessions that get a GPU."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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


