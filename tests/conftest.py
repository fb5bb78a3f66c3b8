"""Shared fixtures (a tiny demo world, a copy of the project to run DVC/Prefect in, a real S3
server) and the one place tests get their markers.

The folder is the tier: ``tests/unit`` (milliseconds to seconds, no subprocess pipeline),
``tests/integration`` (a stage or a server on tiny data), ``tests/e2e`` (the whole flow on a
tiny project), ``tests/system`` (the long runs: kill -9 at every stage, scale-out, deployments,
a clean clone, the bad-input matrix, the paper study on tiny worlds). Each test gets its tier's
marker here; by hand only the resources a test needs: ``gpu`` (skipped without CUDA), ``slow``
(seconds of setup), and ``s3`` is given to every test that starts the S3 server.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent

# Small enough for seconds per stage on 2 cores, big enough for every stage to have data.
TINY = {
    "corpus.num_entities": 12, "corpus.images_per_entity": 12, "corpus.samples_per_shard": 50,
    "corpus.benchmark.seen_classes": 6, "corpus.benchmark.unseen_classes": 2,
    "corpus.benchmark.images_per_class": 4, "corpus.benchmark.labelled_train": 2,
    "corpus.benchmark.labelled_val": 1, "corpus.benchmark.labelled_test": 2,
    "runtime.corpus.workers": 2, "corpus.planted_duplicates": 8,  # two of each kind
    "baseline.steps": 20, "baseline.batch_size": 32, "baseline.warmup_steps": 2,
    "runtime.baseline.log_every": 5, "baseline.num_workers": 0,
    "train.recipes": ["supervised", "multitask"],  # two candidates: the best is registered
    "train.steps": 20, "train.batch_size": 16, "train.warmup_steps": 2,
    "runtime.train.log_every": 5, "train.num_workers": 0,
    # a 20-step CLIP scores poorly: keep every candidate so that the later stages get data
    "build.threshold": -1.0, "build.min_images_per_entity": 2,
    "validate.min_fraction_of_corpus": 0.01,
}


@pytest.fixture(scope="session", autouse=True)
def _nothing_tracked_into_the_checkout():
    """No test may leave an MLflow store in the checkout (MLflow's defaults, ./mlruns or
    ./mlflow.db in the working folder, are where a forgotten store lands)."""
    before = {p for p in ("mlruns", "mlflow.db", "mlartifacts") if (ROOT / p).exists()}
    yield
    after = {p for p in ("mlruns", "mlflow.db", "mlartifacts") if (ROOT / p).exists()}
    assert after <= before, f"tests left {sorted(after - before)} in {ROOT}: give MLflow a " \
                            "store under tmp_path (MLFLOW_TRACKING_URI or tracking.configure)"


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch, tmp_path_factory):
    for k, v in {"MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1"
                 }.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("MOFI_TRACKING", "off")  # tests that track turn it on with their own store
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MOFI_PARENT_RUN_ID", raising=False)
    monkeypatch.setenv("PATH", f"{BIN}{os.pathsep}{os.environ['PATH']}")


@pytest.fixture(scope="session")
def tiny_world(tmp_path_factory):
    """A tiny demo world on disk (corpus, truth, benchmark) and the params that made it."""
    from mofi_core.config.load import apply_overrides, parse_params
    from mofi_core.demo.world import generate_world
    from mofi_core.io.layout import Layout

    root = tmp_path_factory.mktemp("world")
    params = parse_params(apply_overrides({}, TINY))
    layout = Layout(root)
    stats = generate_world(params.corpus, layout.corpus, layout.truth, layout.benchmark)
    from mofi_core.kb.importer import materialise  # what the kb stage does (source demo)

    materialise(params.kb, layout.corpus_kb, layout.kb, params.ner.spacy_model)
    return layout, params, stats


@pytest.fixture(scope="session")
def truth_i2e(tiny_world, tmp_path_factory):
    """An I2E dataset built from the tiny world's true labels (no NER, no CLIP: cheap), for
    tests of training and registry: (layout, params, i2e folder)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mofi_core.config.build import BuildConfig
    from mofi_core.curate.build import build
    from mofi_core.curate.ingest import ingest
    from mofi_core.io import tables
    from mofi_core.report import read_truth

    layout, params, _ = tiny_world
    tmp = tmp_path_factory.mktemp("truth_i2e")
    ingest(layout.corpus_shards, tmp / "ingest", params.ingest)
    truth = read_truth(layout.truth).to_pylist()
    manifest = pq.read_table(tmp / "ingest" / "manifest.parquet", columns=["key", "shard"])
    shard_of = dict(zip(*manifest.to_pydict().values(), strict=True))
    for shard in sorted(set(shard_of.values())):
        rows = [{"key": t["key"], "entity_id": e, "score": 0.9} for t in truth
                for e in t["entity_ids"] if shard_of.get(t["key"]) == shard]  # kept by ingest
        tables.write_table(tmp / "score" / "parts" / f"{shard[:-4]}.scores.parquet",
                           pa.Table.from_pylist(rows), tables.SCORES)
    build(tmp / "ingest", tmp / "score", tmp / "i2e", BuildConfig(threshold=0.5, link_weight=0.0))
    return layout, params, tmp / "i2e"


PRODUCTS = ("data/", "models/", "metrics/", "plots/", "reports/")  # a run writes these


def copy_project(dest: Path) -> Path:
    """The git-tracked project files (no data, no venv) in ``dest``, as a fresh git repo."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file() and not f.startswith(PRODUCTS):
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    (dest / "dvc.lock").unlink(missing_ok=True)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3 API (SeaweedFS ``weed mini``) on 127.0.0.1, with test keys; stopped at the
    end of the session."""
    from tests.servers import SeaweedS3

    with SeaweedS3(tmp_path_factory.mktemp("seaweed")) as server:
        yield server


@pytest.fixture()
def s3_env(s3_server, monkeypatch):
    """This test's environment points boto3 at the test server; returns a fresh bucket URL."""
    import uuid

    import boto3

    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    bucket = f"mofi-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1"
                 ).create_bucket(Bucket=bucket)
    return f"s3://{bucket}"


pytest_plugins = ["tests.project"]  # the e2e project and its first run, for e2e and system

TIERS = ("unit", "integration", "e2e", "system")


def pytest_collection_modifyitems(config, items):
    """Each test's tier from its folder; ``s3`` for each test that uses the S3 server;
    ``gpu`` tests are skipped without CUDA."""
    import torch

    no_gpu = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        parts = Path(str(item.fspath)).relative_to(ROOT / "tests").parts
        if len(parts) < 2 or parts[0] not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: every test lives in a tier folder "
                                    f"({', '.join(TIERS)})")
        item.add_marker(parts[0])
        if "s3_server" in item.fixturenames:
            item.add_marker("s3")
        if item.get_closest_marker("gpu") and not torch.cuda.is_available():
            item.add_marker(no_gpu)
