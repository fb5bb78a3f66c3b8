"""What a billion images would cost: hours from the measured rates, published figures only
where nothing was measured and labelled so, a GPU check's figures preferred, gaps shown."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))  # billion.py imports report.py beside it, as it runs there
spec = importlib.util.spec_from_file_location("bench_billion", BENCH / "billion.py")
billion = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = billion  # its dataclasses look their module up
spec.loader.exec_module(billion)

RESULTS = {
    "date": "2026-01-01 00:00 UTC", "machine": {"cpu": "Test CPU", "cores": 2},
    "ratios": {"score_vit_b32": {"stage_per_s": 20.0}},
    "scaling": {"rows": [
        {"stage": "ingest", "images": 1000, "per_s": 1.0},
        {"stage": "ingest", "images": 1_000_000, "per_s": 10_000.0},
        {"stage": "ner", "images": 100_000, "per_s": 2_000.0},
        {"stage": "build", "images": 100_000, "per_s": 20_000.0}]},
}
PUBLISHED = json.loads((BENCH / "published.json").read_text())


def _by_stage(gpu=None):
    return {r.stage: r for r in billion.rows(RESULTS, PUBLISHED, gpu, 1e9, 2e6)}


def test_hours_come_from_the_largest_measured_size_and_the_machines_cores():
    rows = _by_stage()
    # 1e9 images / 10,000 per s on a 2-core machine = 1e5 s x 2 cores = 55.6 core-hours
    assert rows["ingest"].hours() == pytest.approx(1e9 / 10_000 * 2 / 3600)
    assert rows["ner"].hours() == pytest.approx(1e9 / 2_000 * 2 / 3600)
    assert rows["score (CPU)"].rate.hardware == "cpu"
    assert rows["decontam"].rate is None and "not measured" in rows["decontam"].why_missing


def test_gpu_rows_use_published_figures_labelled_until_a_gpu_check_ran():
    rows = _by_stage()
    assert rows["score (GPU)"].rate.source.startswith("published, not measured here")
    assert rows["score (GPU)"].hours() == pytest.approx(
        1e9 / PUBLISHED["vit_b16_infer"]["images_per_s"] / 3600)
    check = {"gpu": "NVIDIA H100", "date": "d", "score": {"stage_per_s": 5000.0},
             "gpu_train": [{"arch": "ViT-B-16", "recipe": "multitask", "compile": False,
                            "images_per_s": 900.0},
                           {"arch": "ViT-B-16", "recipe": "multitask", "compile": True,
                            "images_per_s": 1200.0}]}
    rows = _by_stage(check)
    assert rows["score (GPU)"].rate.source.startswith("measured") and \
        "NVIDIA H100" in rows["score (GPU)"].rate.source
    assert rows["train, one epoch (GPU)"].hours() == pytest.approx(1e9 / 1200 / 3600)
    smoke = {**check, "gpu": "none (smoke)"}  # a CPU smoke run of the check is no GPU figure
    assert _by_stage(smoke)["score (GPU)"].rate.source.startswith("published")


def test_the_table_shows_gaps_walls_and_assumptions(tmp_path):
    text = billion.markdown(list(_by_stage().values()), 1e9, 2e6, [64, 4096], RESULTS)
    line = next(ln for ln in text.splitlines() if ln.startswith("| ingest "))
    assert "55.6" in line and "52 min" in line and "< 1 min" in line  # 55.6 h / 64 workers
    assert next(ln for ln in text.splitlines() if ln.startswith("| decontam ")).count("—") >= 5
    assert "Assumptions:" in text and "published" in text
    page = tmp_path / "scale.md"
    page.write_text(f"intro\n{billion.BEGIN}\nold\n{billion.END}\nrest\n")
    billion.report.update_page(page, text, billion.BEGIN, billion.END)
    assert page.read_text().startswith(f"intro\n{billion.BEGIN}\n1,000,000,000 images")
    assert page.read_text().endswith(f"{billion.END}\nrest\n") and "old" not in page.read_text()


def test_the_page_holds_what_the_committed_results_give():
    assert billion.page_block() == billion.block(), \
        "docs/scale.md's billion block is stale: python benchmarks/billion.py"


def test_a_kb_scale_run_scales_the_stages_it_measured_at_the_larger_kb():
    kb = {"images": 1000,
          "kb200": {"entities": 200, "ner": {"seconds": 100.0}, "build": {"seconds": 10.0}},
          "kb2000000": {"entities": 2_000_000, "ner": {"seconds": 200.0},
                        "build": {"seconds": 40.0}, "validate": {"seconds": 0.5}}}
    rows = {r.stage: r for r in billion.rows({**RESULTS, "kb_scale": kb}, PUBLISHED, None,
                                             1e9, 2e6)}
    assert rows["ner"].rate.per_s == pytest.approx(1_000.0)  # 2,000/s at 200 x 100/200
    assert rows["build"].rate.per_s == pytest.approx(5_000.0)
    assert "x 0.50, its throughput at 2,000,000 against 200 entities" in rows["ner"].rate.source
    assert rows["validate"].rate.per_s == pytest.approx(2_000.0)  # 1,000 images in 0.5 s
    assert rows["ingest"].rate.per_s == pytest.approx(10_000.0)  # not a KB-bound stage
