"""Shared fixtures: a tiny demo world and a copy of the project to run DVC/Prefect in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
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

    layout.kb.parent.mkdir(parents=True)
    materialise(params.kb, layout.corpus_kb, layout.kb)
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
    build(tmp / "ingest", tmp / "score", tmp / "i2e", BuildConfig(threshold=0.5))
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


def pytest_configure(config):
    """Under make mutation: one torch thread per process (two mutants run at once on two cores,
    and no thread pool is left running in a process mutmut forks), and shard jobs in this
    process instead of a spawn pool -- mutmut sees which test calls which function only in its
    own process, and a stage's outputs are the same for any number of workers."""
    config.stash[_STARTED] = time.monotonic()
    if os.environ.get("MUTANT_UNDER_TEST"):
        import torch

        from mofi_core import parallel

        torch.set_num_threads(1)
        parallel.resolve_workers = lambda requested, jobs: 1


# the heavy packages mofi_core imports inside functions (seconds each: Great Expectations alone
# 2.6 s); under make mutation the fork server imports them once instead of every mutant's process
_FORK_SERVER_PRELOAD = ("great_expectations", "matplotlib.pyplot", "sklearn.linear_model",
                        "open_clip")


def pytest_collection_finish(session):
    """Under make mutation: mutmut's fork server imports and collects the tests once
    (collect-only; mutmut sets MUTANT_UNDER_TEST to "" for it, so the test is whether it is set
    at all), then forks one process per mutant. Here that server also imports the packages
    mofi_core imports lazily, then freezes its heap, so that the children's garbage collections
    (pytest runs two at exit) do not walk every object of torch, Great Expectations and the test
    modules: 0.52 -> 0.12 s of overhead per mutant, and ~2.6 s less for each validate mutant."""
    if "MUTANT_UNDER_TEST" not in os.environ or not session.config.option.collectonly:
        return
    import gc
    import importlib
    import threading

    import matplotlib

    matplotlib.use("Agg")  # as mofi_core's figures choose it
    for name in _FORK_SERVER_PRELOAD:
        importlib.import_module(name)
    if threading.active_count() != 1:  # a forked child gets no copy of another thread
        raise pytest.UsageError(
            f"preloading {_FORK_SERVER_PRELOAD} started threads "
            f"{[t.name for t in threading.enumerate()]}: mutmut forks every mutant from this "
            "process; drop the package that starts them from _FORK_SERVER_PRELOAD")
    gc.collect()
    gc.freeze()


_STARTED = pytest.StashKey[float]()
# mutmut's own phases (not one mutant's tests)
_MUTMUT_PHASES = ("", "stats", "list_all_tests", "mutant_generation", "fail")


def pytest_sessionfinish(session, exitstatus):
    """Under make mutation: each mutant's test time (pytest start to finish in its process) and
    exit status, one JSON line each in ``mutmut-timings.jsonl`` (the mutants/ folder), which
    the report sums per module. Lines of under 4 KiB appended with O_APPEND do not interleave
    between the processes that run at once."""
    name = os.environ.get("MUTANT_UNDER_TEST", "")
    if name in _MUTMUT_PHASES:
        return
    import json

    seconds = time.monotonic() - session.config.stash[_STARTED]
    line = json.dumps({"mutant": name, "seconds": round(seconds, 3), "exit": int(exitstatus)})
    with open("mutmut-timings.jsonl", "a", encoding="utf-8") as out:
        out.write(line + "\n")


def pytest_collection_modifyitems(config, items):
    """Under ``make mutation`` (mutmut names the mutant in MUTANT_UNDER_TEST) run the fastest
    tests first: mutmut stops at the first failure, so a mutant a quick test kills costs that
    test only. The times are those of mutmut's own first run (mutmut-stats.json)."""
    if os.environ.get("MUTANT_UNDER_TEST", "") in ("", "stats", "list_all_tests",
                                                    "mutant_generation"):
        return
    stats = Path("mutmut-stats.json")
    if not stats.is_file():
        return
    import json

    took = json.loads(stats.read_text(encoding="utf-8")).get("duration_by_test", {})
    items.sort(key=lambda item: took.get(item.nodeid, 0.0))
