"""The Kubernetes training Job's own command, run here in S3 mode.

The `train` container's command and env are taken from infra/k8s/train-job.yaml as written and
expanded the way Kubernetes does; only what a cluster provides is replaced: the field values
(pod index, Job uid), the Secret's keys and the ConfigMap (those of the test S3 server), the
node size (1 node x 2 gloo processes on CPU) and pod 0's address (loopback). The working folder
is an empty project (params.yaml and dvc.yaml), like a pod without a shared volume: the inputs
of `train` come from the storage root, where the stages before it published them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from mofi_core.config.load import apply_overrides, read_params_file
from mofi_core.io.hashing import file_sha256
from mofi_core.io.storage import Storage
from mofi_core.runner import execute
from mofi_core.stages import BY_NAME
from tests.conftest import ROOT, TINY
from tests.ports import free_port

JOB_FILE = ROOT / "infra" / "k8s" / "train-job.yaml"
IMAGE_REPO = "/opt/mofi"  # where infra/Dockerfile copies the repository
BEFORE_TRAIN = ("corpus", "kb", "ingest", "decontam", "ner", "baseline", "score", "build",
                "validate")
TRAIN = {"train.recipes": ["multitask"], "train.text_source": "mix", "train.steps": 4,
         "train.batch_size": 8, "train.shard_head": True, "runtime.train.log_every": 2,
         "runtime.train.checkpoint_every": 4, "runtime.train.threads": 1,
         "train.num_workers": 0}
K8S_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)")


def _project(folder: Path, overrides: dict, storage_root: str = "") -> Path:
    """An empty project folder: params.yaml (tiny world + ``overrides``) and dvc.yaml."""
    folder.mkdir(parents=True)
    raw = apply_overrides(read_params_file(ROOT / "params.yaml"),
                          {**TINY, "runtime.corpus.workers": 1, "runtime.ingest.workers": 1,
                           "runtime.ner.workers": 1, "runtime.validate.data_docs": False,
                           **overrides})
    raw["storage"] = {"root": storage_root}
    (folder / "params.yaml").write_text(yaml.safe_dump(raw), encoding="utf-8")
    shutil.copy(ROOT / "dvc.yaml", folder / "dvc.yaml")
    return folder


@pytest.fixture(scope="module")
def published_inputs(s3_server, tmp_path_factory) -> str:
    """A storage root holding what `train` reads: the stages before it, run in another empty
    folder against that root (a 4-step baseline: the scores only need to exist)."""
    import boto3

    bucket = f"mofi-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_server.endpoint, region_name="us-east-1",
                 aws_access_key_id=s3_server.env()["AWS_ACCESS_KEY_ID"],
                 aws_secret_access_key=s3_server.env()["AWS_SECRET_ACCESS_KEY"]
                 ).create_bucket(Bucket=bucket)
    root = f"s3://{bucket}/run"
    folder = _project(tmp_path_factory.mktemp("before-train") / "p",
                      {"baseline.steps": 4, "baseline.batch_size": 16}, root)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in {**s3_server.env(), "MOFI_TRACKING": "off"}.items():
            mp.setenv(key, value)
        mp.delenv("MOFI_STORAGE_ROOT", raising=False)
        for stage in BEFORE_TRAIN:
            execute(BY_NAME[stage], folder / "params.yaml", folder)
    return root


def _expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)``: replaced when VAR is defined, else left as is; ``$$`` is ``$``."""
    return K8S_REF.sub(lambda m: "$" if m[0] == "$$" else env.get(m[1], m[0]), text)


def _job_container() -> tuple[dict, list[dict]]:
    docs = [d for p in sorted(JOB_FILE.parent.glob("*.yaml"))
            for d in yaml.safe_load_all(p.read_text(encoding="utf-8")) if d]
    (job,) = [d for d in docs if d["kind"] == "Job" and d["metadata"]["name"] == "mofi-train"]
    (train,) = [c for c in job["spec"]["template"]["spec"]["containers"] if c["name"] == "train"]
    return train, docs


def job_environment(container: dict, docs: list[dict], cluster: dict[str, str],
                    config: dict[str, str]) -> dict[str, str]:
    """The container's environment as a pod gets it: envFrom ConfigMaps (``config`` replacing
    or adding keys), then each env entry in order, ``$(VAR)`` expanded from what precedes it.
    ``cluster`` gives the values a cluster provides (fields, Secrets, node size, addresses)."""
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        assert set(src) == {"configMapRef"}, f"unexpected envFrom {src}"
        (data,) = [d.get("data") or {} for d in docs if d["kind"] == "ConfigMap"
                   and d["metadata"]["name"] == src["configMapRef"]["name"]]
        env.update({**data, **config})
    for entry in container.get("env") or []:
        name = entry["name"]
        if name in cluster:
            env[name] = cluster[name]
        else:
            assert "value" in entry, f"{name} comes from {entry.get('valueFrom')}: give its value"
            env[name] = _expand(str(entry["value"]), env)
    return env


def test_the_training_job_runs_in_s3_mode(published_inputs, s3_server, tmp_path, monkeypatch):
    container, docs = _job_container()
    work = Path(container["workingDir"])
    folder = _project(tmp_path / "pod0", TRAIN)  # the pod's project folder: nothing pulled yet
    port = free_port()
    server = s3_server.env()
    cluster = {"NNODES": "1", "NPROC_PER_NODE": "2", "JOB_COMPLETION_INDEX": "0",
               "JOB_UID": str(uuid.uuid4()), "RDZV_ENDPOINT": f"127.0.0.1:{port}",
               "OMP_NUM_THREADS": "1", "AWS_ACCESS_KEY_ID": server["AWS_ACCESS_KEY_ID"],
               "AWS_SECRET_ACCESS_KEY": server["AWS_SECRET_ACCESS_KEY"]}
    config = {"MOFI_STORAGE_ROOT": published_inputs,
              "AWS_ENDPOINT_URL": server["AWS_ENDPOINT_URL"], "AWS_REGION": server["AWS_REGION"]}
    job_env = job_environment(container, docs, cluster, config)
    assert job_env["NODE_RANK"] == "0" and job_env["RDZV_ID"] == cluster["JOB_UID"]
    # the image's environment: this venv first on PATH, no GPU, tracking off, no other S3 keys
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("AWS_", "MOFI_STORAGE", "MLFLOW_TRACKING"))}
    env = {**base, "CUDA_VISIBLE_DEVICES": "", "MOFI_TRACKING": "off",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{base['PATH']}",
           **{k: v.replace(str(work), str(folder)) for k, v in job_env.items()}}
    argv = [_expand(str(w), job_env)
            for w in (*(container.get("command") or []), *(container.get("args") or []))]
    assert argv[0].startswith(f"{IMAGE_REPO}/"), argv
    argv[0] = str(ROOT / argv[0].removeprefix(f"{IMAGE_REPO}/"))  # the image's copy of the repo

    done = subprocess.run(argv, cwd=folder, env=env, timeout=600, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    out = done.stdout
    assert done.returncode == 0, out[-5000:]
    assert f"c10d rendezvous 127.0.0.1:{port}" in out, out[-3000:]
    for key, value in server.items():  # this process reads the publication
        monkeypatch.setenv(key, value)
    storage = Storage(published_inputs, folder)
    for dep in BY_NAME["train"].inputs:  # pulled by the script before the launch
        assert f"train: pull {dep} " in out, out[-3000:]
        assert (folder / dep).exists(), dep
    for published in ("models/multitask", "metrics/train_multitask.json"):
        manifest = storage.read_manifest(published)
        assert manifest is not None, f"{published} was not published"
        local = folder / published  # a manifest names a file output's only member ""
        files = {p.relative_to(local).as_posix(): p for p in local.rglob("*") if p.is_file()} \
            if local.is_dir() else {"": local}
        assert {m: meta["sha256"] for m, meta in manifest.files.items()} == {
            m: file_sha256(p) for m, p in files.items()}, published
    # rank 0 alone writes the metrics, publishes and reports
    assert out.count("train@multitask: output metrics/train_multitask.json to ") == 1, \
        out[-3000:]
    assert "dvc.lock not updated" in out and "not a DVC project" in out
    assert len([ln for ln in out.splitlines()
                if ln.startswith("train@multitask: final_loss=")]) == 1, \
        out[-3000:]
