"""``dvc repro`` on an S3 storage root: the published copy of an output is the version dvc.lock
records, also when DVC restores that output from its run cache without running its stage.

train.steps A -> B -> A: on the way back DVC takes train's outputs for A from its run cache, so
train does not run and publishes nothing; the S3 copy still holds B's model. evaluate must
score A's model (the one dvc.lock records), and the store must end up holding it."""

from __future__ import annotations

import json
import os
import re
import time
import uuid

import yaml

from flows.pipeline import write_overrides
from mofi_core.io.storage import Storage
from tests.conftest import BIN, TINY, copy_project
from tests.project import Project

STEPS_A, STEPS_B = 3, 6
FAST = {**TINY, "baseline.steps": 3, "runtime.corpus.workers": 1, "runtime.ingest.workers": 1,
        "runtime.ner.workers": 1, "runtime.validate.data_docs": False,
        "train.warmup_steps": 1}


def test_a_model_dvc_restores_from_its_run_cache_is_the_one_evaluated_and_published(
        s3_server, tmp_path_factory, monkeypatch):
    bucket = f"mofi-e2e-{uuid.uuid4().hex[:8]}"
    storage_root = f"s3://{bucket}/runs"
    root = copy_project(tmp_path_factory.mktemp("storage-dvc"))
    write_overrides(root / "params.yaml", {**FAST, "train.steps": STEPS_A,
                                           "train.recipes": ["supervised"]})
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "MOFI_PARENT_RUN_ID",
                        "DVC_STAGE", "AWS_PROFILE")}
    env.update({"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "MOFI_TRACKING": "off",
                "MOFI_STORAGE_ROOT": storage_root, "DO_NOT_TRACK": "1",
                "HF_HUB_OFFLINE": "1", **s3_server.env()})
    project = Project(root, env)
    project.run("mofi", "storage", "create-bucket", storage_root)

    def repro(steps: int) -> tuple[dict, str]:
        write_overrides(root / "params.yaml", {"train.steps": steps})
        out = project.run("dvc", "repro", "evaluate", timeout=900).stdout
        return json.loads((root / "metrics" / "evaluate.json").read_text())["evaluate"], out

    started = time.monotonic()
    first, _ = repro(STEPS_A)
    other, _ = repro(STEPS_B)
    assert other != first  # else the test could not tell the two models apart
    back, out = repro(STEPS_A)
    print(f"three dvc repro runs: {time.monotonic() - started:.0f} s")

    assert re.search(r"Stage 'train@supervised' is cached - skipping run", out), out[-3000:]
    assert re.search(r"^Running stage 'evaluate'", out, flags=re.M), out[-3000:]
    assert back == first  # A's model was evaluated, not the B model the store held
    assert "re-publishing the working copy" in out

    lock = yaml.safe_load((root / "dvc.lock").read_text())["stages"]
    recorded = {o["path"]: o["md5"] for o in lock["train@supervised"]["outs"]}
    for key, value in s3_server.env().items():  # this process reads the manifest too
        monkeypatch.setenv(key, value)
    manifest = Storage(storage_root, root).read_manifest("models/supervised")
    assert manifest.dvc_md5 == recorded["models/supervised"]
