"""The "Running at scale" walkthrough of docs/scale.md, run as written in a fresh copy of the
project on the tiny world: SeaweedFS, buckets, DVC remote, Dask on loopback, every stage against
the S3 storage root, torchrun, a Prefect worker. Its outputs must equal, byte for byte, those of
a plain `dvc repro` plus the same torchrun step in another copy; the S3 copy must be what
dvc.lock records; DVC's remote must hold every output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import yaml

from flows.pipeline import write_overrides
from tests.conftest import BIN, ROOT, TINY, copy_project
from tests.ports import free_port

PAGE = ROOT / "docs" / "scale.md"  # the walkthrough's page
MARK = "<!-- scale-walkthrough"
PARAMS = {**TINY, "train.steps": 12}


def walkthrough() -> str:
    """The bash block that follows the walkthrough marker in docs/scale.md."""
    text = PAGE.read_text(encoding="utf-8")
    at = text.index(MARK)
    start = text.index("```bash\n", at) + len("```bash\n")
    return text[start:text.index("```", start)]


def test_the_walkthrough_block_is_where_the_test_looks():
    block = walkthrough()
    for command in ("weed mini", "mofi storage create-bucket", "mofi remote-s3",
                    "dask scheduler --host 127.0.0.1", "dask worker", "MOFI_STORAGE_ROOT=",
                    "dvc repro", "dvc push", "infra/torchrun-train.sh",
                    "prefect worker start", "prefect deployment run mofi/full"):
        assert command in block, command
    assert "0.0.0.0" not in block
    assert "mofi warm" not in block  # the warm start is gone: stages start cold


def _project(dest: Path) -> Path:
    """A fresh copy on the tiny world whose `make setup` finds this venv already set up."""
    root = copy_project(dest)
    write_overrides(root / "params.yaml", PARAMS)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam",
                    "tiny params"], cwd=root, check=True)
    venv = root / ".venv"
    venv.mkdir()
    (venv / "bin").symlink_to(BIN)
    (venv / ".installed").touch()  # newer than pyproject.toml / requirements.lock: no reinstall
    return root


def _env(root: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("AWS_", "MOFI_", "PREFECT_", "MLFLOW_TRACKING", "DASK_"))}
    env.update({"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "PREFECT_HOME": str(root / ".prefect"),
                "MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                "GX_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
                "OMP_NUM_THREADS": "1", "COLUMNS": "100000"})
    return env


def _run(cmd: list[str], root: Path, env: dict[str, str], timeout: int = 1800) -> str:
    """``cmd``'s standard output; a failure shows both streams."""
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, f"{cmd} exited {proc.returncode}:\n{proc.stdout[-4000:]}\n" \
                                 f"{proc.stderr[-4000:]}"
    return proc.stdout


def _outs(root: Path) -> dict[tuple[str, str], str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text(encoding="utf-8"))
    return {(stage, out["path"]): out["md5"] for stage, body in lock["stages"].items()
            for out in body.get("outs", [])}


def _walk(root: Path, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    """The block in its own process group; everything it started in the background is
    stopped afterwards."""
    script = root / ".scale-walkthrough.sh"
    script.write_text(walkthrough(), encoding="utf-8")
    proc = subprocess.Popen(["bash", "-euo", "pipefail", str(script)], cwd=root,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")
    finally:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            time.sleep(5)


def test_the_walkthrough_from_nothing_reproduces_a_clean_run_byte_for_byte(tmp_path):
    clean = _project(tmp_path / "clean")
    env = _env(clean)
    # the reference: plain dvc repro, the same torchrun step, dvc repro again
    _run(["dvc", "repro"], clean, env)
    _run(["infra/torchrun-train.sh", "train"], clean, {**env, "NPROC_PER_NODE": "2"})
    _run(["dvc", "repro"], clean, env)

    walk = _project(tmp_path / "walk")
    ports = {"S3_PORT": free_port(), "DASK_PORT": free_port(), "PREFECT_PORT": free_port()}
    started = time.monotonic()
    result = _walk(walk, {**_env(walk), **{k: str(v) for k, v in ports.items()}}, 2400)
    seconds = time.monotonic() - started
    logs = "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                     for p in sorted((walk / ".scale").glob("*.log")))
    assert result.returncode == 0, f"{result.stdout[-6000:]}\n{logs}"
    print(f"walkthrough: {seconds:.0f} s")

    # every output of all 11 stages equals the plain run's, the torchrun model included
    want, got = _outs(clean), _outs(walk)
    assert len(want) >= 11 and got == want
    assert "Completed" in result.stdout  # the Prefect deployment run
    assert "dvc commit" in result.stdout

    # the S3 copy is what dvc.lock records; DVC's remote holds every output
    env = {**_env(walk), "AWS_ACCESS_KEY_ID": "mofi-local", "AWS_SECRET_ACCESS_KEY": "change-me",
           "AWS_REGION": "us-east-1", "AWS_ENDPOINT_URL": f"http://127.0.0.1:{ports['S3_PORT']}"}
    weed = subprocess.Popen(
        ["weed", "mini", "-dir=.scale/s3", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
         f"-s3.port={ports['S3_PORT']}", "-master.telemetry=false", "-admin.ui=false",
         "-webdav=false"], cwd=walk, env=env, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _run(["mofi", "storage", "create-bucket", "--wait", "120", "s3://mofi-runs"], walk, env)
        status = json.loads(_run(["dvc", "status", "--cloud", "--json"], walk, env) or "{}")
        assert status == {}, status
        check = _run([str(BIN / "python"), "-c", _CHECK_MANIFESTS], walk,
                     {**env, "MOFI_STORAGE_ROOT": "s3://mofi-runs/exp1"})
        assert "manifests match dvc.lock" in check
    finally:
        os.killpg(weed.pid, signal.SIGTERM)
        weed.wait(60)


_CHECK_MANIFESTS = """
import yaml
from pathlib import Path
from mofi_core.io.storage import Storage, dvc_hash_of_manifest
lock = yaml.safe_load(Path("dvc.lock").read_text())
store = Storage("s3://mofi-runs/exp1", Path.cwd())
for stage, body in lock["stages"].items():
    for out in body.get("outs", []):
        got = dvc_hash_of_manifest(store.read_manifest(out["path"]))
        assert got == out["md5"], (stage, out["path"], got, out["md5"])
print("manifests match dvc.lock")
"""
