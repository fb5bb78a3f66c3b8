"""Tracking cannot change a result: the same stages, run once with MLflow tracking on and once
with the null backend, write the same bytes. This is why ``mofi_core/tracking.py`` is left out
of every stage's DVC code deps (``tools/dvc_yaml.py``, ``ORCHESTRATION``)."""

from __future__ import annotations

from pathlib import Path

import yaml

from mofi_core.config.load import apply_overrides, read_params_file
from mofi_core.io.hashing import file_sha256
from mofi_core.runner import execute
from mofi_core.stages import BY_NAME
from tests.conftest import ROOT, TINY

STAGES = ("corpus", "kb", "ingest", "decontam", "ner", "baseline", "score", "build")
PRODUCTS = ("data", "models", "metrics", "plots")


def _project(folder: Path) -> Path:
    folder.mkdir(parents=True)
    raw = apply_overrides(read_params_file(ROOT / "params.yaml"),
                          {**TINY, "runtime.corpus.workers": 1, "runtime.ingest.workers": 1,
                           "runtime.ner.workers": 1})
    (folder / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    for stage in STAGES:
        execute(BY_NAME[stage], folder / "params.yaml", folder)
    return folder


def _outputs(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): file_sha256(p)
            for d in PRODUCTS for p in sorted((folder / d).rglob("*")) if p.is_file()}


def test_the_same_bytes_with_tracking_on_and_off(tmp_path, monkeypatch):
    off = _outputs(_project(tmp_path / "off"))
    monkeypatch.setenv("MOFI_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    on = _outputs(_project(tmp_path / "on"))
    assert (tmp_path / "mlflow.db").stat().st_size > 0  # tracking really ran
    assert {"models/baseline/model.safetensors", "data/i2e/labels.parquet",
            "metrics/build.json"} <= set(off)
    assert on == off
