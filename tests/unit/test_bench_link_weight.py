"""benchmarks/calibrate_link_weight.py: the weight comes from the calibration world's truth,
and the sweep's numbers are the rules' own (checked by hand on a tiny world)."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from mofi_core.io import tables

REPO = Path(__file__).resolve().parents[2]


def _module():
    spec = importlib.util.spec_from_file_location(
        "calibrate_link_weight", REPO / "benchmarks" / "calibrate_link_weight.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _world(root: Path, seed: int) -> Path:
    """Two images, each naming a pair of namesakes CLIP scores alike; the truth is the one the
    text evidence favours on image a and the other on image b."""
    import yaml

    from mofi_core.config.load import apply_overrides, read_params_file

    raw = apply_overrides(read_params_file(REPO / "params.yaml"), {
        "corpus.seed": seed, "build.rules": ["threshold", "top_k"], "build.threshold": 0.5,
        "build.top_k": 1, "build.min_images_per_entity": 1})
    root.mkdir(parents=True)
    (root / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    tables.write_table(root / "ingest" / "manifest.parquet", tables.from_rows(
        [{"key": k, "shard": "s", "width": 1, "height": 1, "sha256": "x", "text": "t",
          "duplicate_of": None} for k in ("a", "b")], tables.MANIFEST), tables.MANIFEST)
    tables.write_table(root / "truth" / "00000.parquet", pa.Table.from_pylist(
        [{"key": "a", "entity_ids": ["Q1"]}, {"key": "b", "entity_ids": ["Q4"]}],
        tables.TRUTH), tables.TRUTH)
    run = root / "kb2000000"
    rows = [("a", "Q1", 0.70, 0.9), ("a", "Q2", 0.71, 0.1),   # the link evidence is right on a
            ("b", "Q3", 0.60, 0.6), ("b", "Q4", 0.80, 0.4)]   # and wrong on b, CLIP sure there
    tables.write_table(run / "score" / "scores.parquet", pa.Table.from_pylist(
        [{"key": k, "entity_id": e, "score": s} for k, e, s, _ in rows]), tables.SCORES)
    tables.write_table(run / "ner" / "mentions.parquet", tables.from_rows(
        [{"key": k, "mention": "m", "start": 0, "end": 1, "label": "KB", "source": "kb",
          "entity_id": e, "link_score": ls} for k, e, _, ls in rows], tables.MENTIONS),
        tables.MENTIONS)
    return run


def test_sweep_measures_each_weight_and_chooses_by_f1(tmp_path, capsys):
    mod = _module()
    out = mod.sweep(_world(tmp_path / "w", seed=1), grid=(0.0, 0.05, 1.0))
    by_w = {r["link_weight"]: r for r in out["grid"]}
    # 0: CLIP alone picks Q2 (wrong) and Q4 (right); 0.05: Q1 and Q4, both right;
    # 1.0: the text alone, Q1 (right) and Q3 (wrong)
    assert (by_w[0.0]["precision"], by_w[0.05]["precision"], by_w[1.0]["precision"]) == \
        (0.5, 1.0, 0.5)
    assert by_w[0.05]["filter_recall"] == 1.0 and by_w[0.05]["f1"] == 1.0
    assert out["chosen"] == 0.05 and out["world_seed"] == 1


def test_main_warns_when_calibrating_on_the_reported_seed(tmp_path, capsys, monkeypatch):
    mod = _module()
    run = _world(tmp_path / "w", seed=0)
    monkeypatch.setattr("sys.argv", ["calibrate_link_weight.py", str(run)])
    mod.main()
    assert "calibrate on another seed" in capsys.readouterr().err
    assert (run / "link_weight.json").is_file()
    shutil.rmtree(run / "ner")
    with pytest.raises(Exception, match=r"mentions\.parquet is missing"):
        mod.main()
