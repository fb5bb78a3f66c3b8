"""Multi-process training under torchrun on CPU (gloo): DDP, the rank-sharded head, resumes and the
stage command's own relaunch, with the real launcher."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from mofi_core.models.artifact import load_model
from mofi_core.train import checkpoint
from tests.integration.test_train import (
    CHILD,
    RESUME,
    _project_for_train,
    _weights,
    final_loss_lines,
)
from tests.ports import free_port


def test_torchrun_two_processes_sharded_head_checkpoint_and_export(truth_i2e, tmp_path):
    layout, _, i2e = truth_i2e
    over = {**RESUME, "steps": 6, "checkpoint_every": 3, "num_workers": 0,
            "shard_head": True, "head": "cosine"}
    script = tmp_path / "child.py"
    script.write_text(CHILD, encoding="utf-8")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), str(script),
           str(i2e), str(tmp_path / "out"), str(tmp_path / "ck"), str(layout.kb),
           json.dumps(over)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    logged = [json.loads(x)["step"] for x in done.stdout.splitlines() if x.startswith("{")]
    assert logged == [1, 2, 3, 4, 5, 6]  # rank 0 only
    ckpt = checkpoint.latest_any(tmp_path / "ck")
    assert ckpt.step == 6
    assert sorted(p.name for p in ckpt.path.glob("rank-*.safetensors")) == [
        "rank-00000.safetensors", "rank-00001.safetensors"]
    shard0 = load_file(str(ckpt.path / "rank-00000.safetensors"))
    shard1 = load_file(str(ckpt.path / "rank-00001.safetensors"))
    model, meta = load_model(tmp_path / "out")
    full = model.head.weight.detach()
    n0 = shard0["param/head.weight"].shape[0]
    assert n0 + shard1["param/head.weight"].shape[0] == len(meta.classes) == full.shape[0]
    torch.testing.assert_close(full[:n0], shard0["param/head.weight"])
    torch.testing.assert_close(full[n0:], shard1["param/head.weight"])


def test_mofi_train_command_under_torchrun(truth_i2e, tmp_path):
    """``torchrun --no-python mofi train``: two ranks train, rank 0 alone writes the model,
    the metrics file and the loss plot."""
    root = _project_for_train(truth_i2e, tmp_path, checkpoint_every=2)
    mofi = Path(sys.executable).with_name("mofi")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "--no-python", str(mofi), "train",
           "--root", str(root), "--params", str(root / "params.yaml")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert load_model(root / "models" / "multitask")[1].recipe == "multitask"
    metrics = json.loads((root / "metrics" / "train_multitask.json").read_text())
    assert metrics["train"]["multitask"]["steps"] == 4
    lines = (root / "plots" / "train_multitask_loss.csv").read_text().splitlines()
    assert lines[0].startswith("step,") and "loss" in lines[0].split(",") and len(lines) == 3
    ckpt = checkpoint.latest_any(root / ".mofi" / "state" / "train@multitask" / "checkpoints")
    assert ckpt.step == 4
    assert len(final_loss_lines(done.stdout)) == 1, done.stdout[-3000:]  # rank 0's only


def test_train_nproc_per_node_launches_torchrun_itself(truth_i2e, tmp_path):
    """`train.nproc_per_node: 2` and a plain `mofi train` (as dvc repro and the Prefect flow run
    it): the command relaunches itself as 2 gloo processes and ends with the very weights of
    an explicit `torchrun --nproc-per-node 2 mofi train`."""
    mofi = Path(sys.executable).with_name("mofi")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    explicit = _project_for_train(truth_i2e, tmp_path / "explicit", checkpoint_every=2)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
           "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), "--no-python", str(mofi), "train",
           "--root", str(explicit), "--params", str(explicit / "params.yaml")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    itself = _project_for_train(truth_i2e, tmp_path / "itself", checkpoint_every=2)
    done = subprocess.run([str(mofi), "train", "--root", str(itself), "--params",
                           str(itself / "params.yaml"), "-S", "train.nproc_per_node=2"],
                          capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "train@multitask: 2 processes on this node" in done.stdout
    assert len(final_loss_lines(done.stdout)) == 1, done.stdout[-3000:]  # rank 0's only
    a = load_file(str(explicit / "models" / "multitask" / "model.safetensors"))
    b = load_file(str(itself / "models" / "multitask" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    metrics = json.loads((itself / "metrics" / "train_multitask.json").read_text())
    assert metrics["train"]["multitask"]["steps"] == 4


def test_two_nodes_rendezvous_through_the_launch_script(truth_i2e, tmp_path):
    """infra/torchrun-train.sh on two "nodes" (two launches on loopback, node ranks 0 and 1):
    one world of 2 ranks; the sharded head leaves one checkpoint file per rank."""
    root = _project_for_train(truth_i2e, tmp_path, checkpoint_every=4)
    script = Path(__file__).resolve().parents[2] / "infra" / "torchrun-train.sh"
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NNODES": "2", "NPROC_PER_NODE": "1",
           "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port,
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    nodes = [subprocess.Popen(["bash", str(script), "train", "--root", str(root), "--params",
                               str(root / "params.yaml")], env={**env, "NODE_RANK": str(r)},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for r in (0, 1)]
    outs = [n.communicate(timeout=600)[0] for n in nodes]
    assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-3000:] for o in outs)
    assert "node 1/2, 1 processes" in outs[1]
    ckpt = checkpoint.latest_any(root / ".mofi" / "state" / "train@multitask" / "checkpoints")
    assert ckpt.step == 4
    assert sorted(p.name for p in ckpt.path.glob("rank-*.safetensors")) == [
        "rank-00000.safetensors", "rank-00001.safetensors"]
    assert load_model(root / "models" / "multitask")[1].recipe == "multitask"
    # global rank 0 runs on node 0: its final loss is the only one printed
    assert [len(final_loss_lines(o)) for o in outs] == [1, 0], outs[1][-2000:]


def test_launch_script_records_the_torchrun_model_in_dvc_lock(truth_i2e, tmp_path):
    """`infra/torchrun-train.sh train` in a DVC project, as docs/scale.md runs it: 2 gloo processes
    train each train.recipes entry (one here), only rank 0 prints the final loss, then node 0
    runs `dvc commit --force train@<recipe>`, so dvc.lock names the model on disk and
    `dvc repro` has nothing to redo (it would otherwise restore the model of the lock)."""
    import hashlib

    import yaml

    root = _project_for_train(truth_i2e, tmp_path, checkpoint_every=4, dvc=True)
    script = Path(__file__).resolve().parents[2] / "infra" / "torchrun-train.sh"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "NPROC_PER_NODE": "2",
           "MASTER_PORT": str(free_port()),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def dvc_status() -> dict:
        status = subprocess.run(["dvc", "status", "train", "--json"], cwd=root, env=env,
                                capture_output=True, text=True, timeout=300)
        assert status.returncode == 0, status.stderr[-2000:]
        return json.loads(status.stdout)

    assert dvc_status() != {}  # dvc.lock does not name this stage's result yet
    done = subprocess.run(["bash", str(script), "train"], cwd=root, env=env, timeout=600,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert done.returncode == 0, done.stdout[-4000:]
    assert "dvc commit --force train@multitask: dvc.lock now names what" in done.stdout
    assert dvc_status() == {}  # nothing for `dvc repro` to redo or restore
    outs = {o["path"]: o for o in yaml.safe_load((root / "dvc.lock").read_text())["stages"]
            ["train@multitask"]["outs"]}

    def md5(path: Path) -> str:
        return hashlib.md5(path.read_bytes()).hexdigest()

    digest = outs["models/multitask"]["md5"]
    listing = root / ".dvc" / "cache" / "files" / "md5" / digest[:2] / digest[2:]
    locked = {e["relpath"]: e["md5"] for e in json.loads(listing.read_text())}
    model = root / "models" / "multitask"
    assert locked == {p.relative_to(model).as_posix(): md5(p)
                      for p in model.rglob("*") if p.is_file()}
    assert outs["metrics/train_multitask.json"]["md5"] == md5(
        root / "metrics" / "train_multitask.json")
    assert len(final_loss_lines(done.stdout)) == 1, done.stdout[-3000:]  # rank 0's only


def test_two_nodes_without_a_shared_folder_checkpoint_to_s3_and_resume(truth_i2e, tmp_path,
                                                                       s3_env):
    """Two "nodes" with separate project folders and runtime.train.checkpoint_dir in S3: each rank
    uploads its own checkpoint file; two fresh nodes download the newest checkpoint, resume it
    (nothing left to train) and export the same weights."""
    import shutil

    import yaml

    from mofi_core.io import s3

    base = _project_for_train(truth_i2e, tmp_path, checkpoint_every=2)
    raw = yaml.safe_load((base / "params.yaml").read_text())
    raw["runtime"]["train"]["checkpoint_dir"] = f"{s3_env}/ckpt"
    (base / "params.yaml").write_text(yaml.safe_dump(raw))
    script = Path(__file__).resolve().parents[2] / "infra" / "torchrun-train.sh"

    def launch(tag: str) -> list[str]:
        roots = [tmp_path / f"{tag}-node{r}" for r in (0, 1)]
        for root in roots:
            shutil.copytree(base, root)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "NNODES": "2", "NPROC_PER_NODE": "1",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
               "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        nodes = [subprocess.Popen(["bash", str(script), "train", "--root", str(root),
                                   "--params", str(root / "params.yaml")],
                                  env={**env, "NODE_RANK": str(r)}, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True)
                 for r, root in enumerate(roots)]
        outs = [n.communicate(timeout=600)[0] for n in nodes]
        assert [n.returncode for n in nodes] == [0, 0], "\n".join(o[-3000:] for o in outs)
        return outs

    launch("first")
    step4 = sorted(u.rsplit("/", 1)[1] for u, _ in s3.list_objects(f"{s3_env}/ckpt/")
                   if "/step-000000004/" in u)
    assert step4 == ["rank-00000.json", "rank-00000.safetensors", "rank-00001.json",
                     "rank-00001.safetensors", "replicated.safetensors", "state.json"]
    # node 1 never held a complete checkpoint and keeps no partial one
    assert checkpoint.latest_any(tmp_path / "first-node1" / ".mofi" / "state"
                                 / "train@multitask" / "checkpoints") is None
    assert not list((tmp_path / "first-node1").rglob("step-*.tmp"))

    outs = launch("again")
    assert all("resuming from step 4 downloaded" in o for o in outs), outs[1][-2000:]
    got = _weights(tmp_path / "again-node0" / "models" / "multitask")
    want = _weights(tmp_path / "first-node0" / "models" / "multitask")
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=0, msg=k)
