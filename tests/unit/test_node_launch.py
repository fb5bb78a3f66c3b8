"""`train.nproc_per_node`: how many processes a stage command runs on its node, the torchrun
command it relaunches itself with, and what an input missing under torchrun asks for."""

import sys

import pytest
import yaml

from mofi_core.config.train import TrainConfig
from mofi_core.launch import launch_command, node_processes
from mofi_core.runner import check_inputs
from mofi_core.stages import BY_NAME


def _params(tmp_path, **train):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"train": train}), encoding="utf-8")
    return path


def test_processes_per_node(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    spec = BY_NAME["train"].instance("supervised")
    assert node_processes(spec, _params(tmp_path), {}) == 1  # the default
    assert node_processes(spec, _params(tmp_path, nproc_per_node=3), {}) == 3
    assert node_processes(spec, _params(tmp_path), {"train.nproc_per_node": 2}) == 2
    import torch

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    assert node_processes(spec, _params(tmp_path, nproc_per_node="auto"), {}) == 1
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert node_processes(spec, _params(tmp_path, nproc_per_node="auto"), {}) == 8
    monkeypatch.setenv("WORLD_SIZE", "2")  # already one of torchrun's processes
    assert node_processes(spec, _params(tmp_path, nproc_per_node=3), {}) == 1
    monkeypatch.delenv("WORLD_SIZE")
    assert node_processes(BY_NAME["evaluate"], _params(tmp_path), {}) == 1  # no such knob


def test_the_relaunch_command(tmp_path):
    spec = BY_NAME["train"].instance("multitask")
    cmd = launch_command(spec, 4, tmp_path / "p.yaml", tmp_path, ["train.steps=9"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[3:9] == ["--standalone", "--nproc-per-node", "4", "-m", "mofi_core.cli",
                        "train"]
    assert cmd[9:] == ["multitask", "--params", str(tmp_path / "p.yaml"), "--root",
                       str(tmp_path), "-S", "train.steps=9"]
    base = launch_command(BY_NAME["baseline"], 2, tmp_path / "p.yaml", tmp_path, [])
    assert base[8:10] == ["baseline", "--params"]


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="nproc_per_node 0: at least 1"):
        TrainConfig(recipe="supervised", nproc_per_node=0)
    with pytest.raises(ValueError):
        TrainConfig(recipe="supervised", nproc_per_node="all")


def test_missing_input_under_torchrun_says_to_pull_on_each_node(tmp_path, monkeypatch):
    """Under a multi-process torchrun launch the stage does not pull its inputs: the error
    names the pull to run on each node, not the stage that makes the input."""
    spec = BY_NAME["train"]
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(FileNotFoundError) as err:
        check_inputs(spec, tmp_path, "s3://bucket/run")
    msg = str(err.value)
    assert msg.startswith("train needs data/i2e") and "under torchrun" in msg
    assert "mofi storage pull train" in msg and "each node" in msg
    assert "infra/torchrun-train.sh" in msg and "run stage" not in msg
    monkeypatch.setenv("WORLD_SIZE", "1")  # a single process pulls itself: the producer
    with pytest.raises(FileNotFoundError, match="run stage 'build' first"):
        check_inputs(spec, tmp_path, "s3://bucket/run")
    monkeypatch.setenv("WORLD_SIZE", "2")  # no storage root: the producer too
    with pytest.raises(FileNotFoundError, match="run stage 'build' first"):
        check_inputs(spec, tmp_path)
