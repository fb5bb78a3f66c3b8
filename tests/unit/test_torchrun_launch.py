"""infra/torchrun-train.sh with stand-ins for the tools it calls: the launch lines of both
rendezvous modes, the dvc commit that follows a launch (and every reason to skip it), and
failures as one line."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import ROOT

LAUNCH_SCRIPT = ROOT / "infra" / "torchrun-train.sh"


FAKE_TOOL = """#!/usr/bin/env bash
echo "$(basename "$0") $* @ $PWD" >> "$FAKE_LOG"
[[ "$(basename "$0")" != "${FAKE_FAIL:-}" ]] || exit 1
if [[ "$(basename "$0") $1 $2" == "mofi train --list" ]]; then
  [[ -z "${3:-}" || "$3" == -* ]] || { echo "train@$3"; exit; }
  for r in ${FAKE_RECIPES-supervised multitask}; do echo "train@$r"; done
fi
"""


def run_launch_script(tmp_path: Path, args: list[str], env: dict[str, str], cwd: Path,
                      tools: tuple[str, ...] = ("mofi", "torchrun", "dvc")
                      ) -> tuple[subprocess.CompletedProcess, list[str]]:
    """infra/torchrun-train.sh with stand-ins for ``tools`` that log their argv
    (FAKE_FAIL=<tool> makes that one fail)."""
    bin_dir = tmp_path / "bin"
    shutil.rmtree(bin_dir, ignore_errors=True)
    bin_dir.mkdir()
    for tool in tools:
        (bin_dir / tool).write_text(FAKE_TOOL, encoding="utf-8")
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    done = subprocess.run(["bash", str(LAUNCH_SCRIPT), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60,
                          env={"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin",
                               "FAKE_LOG": str(log), "NPROC_PER_NODE": "3", **env})
    return done, log.read_text().splitlines() if log.is_file() else []


def test_launch_script_rendezvous_and_dvc_commit(tmp_path):
    """The launch lines for both rendezvous modes (one torchrun per train.recipes entry, each
    its own c10d id), and what follows a successful launch: node 0 of a DVC project runs
    `dvc commit --force` on the stages it trained, every other case says why not."""
    proj = tmp_path / "proj"
    (proj / ".dvc").mkdir(parents=True)
    (proj / "dvc.yaml").write_text("stages: {}\n", encoding="utf-8")

    done, calls = run_launch_script(tmp_path, ["train"], {"RDZV_ENDPOINT": "pod-0.svc:29500",
                                                          "RDZV_ID": "job-1"}, proj)
    assert done.returncode == 0, done.stderr
    launch = ("torchrun --nnodes=1 --node-rank=0 --nproc-per-node=3 --rdzv-backend=c10d "
              "--rdzv-endpoint=pod-0.svc:29500 --rdzv-id=job-1-{r} --max-restarts=0 "
              "--no-python mofi train {r} @ " + str(proj))
    assert calls == [
        f"mofi train --list @ {proj}",
        f"mofi storage pull train --if-configured @ {proj}",
        launch.format(r="supervised"), launch.format(r="multitask"),
        f"dvc commit --force --quiet train@supervised train@multitask @ {proj}"]
    assert done.stderr.splitlines()[-1] == (
        "torchrun-train: dvc commit --force train@supervised train@multitask: dvc.lock now "
        "names what torchrun wrote")
    # one recipe named: that one alone, its options passed on
    done, calls = run_launch_script(tmp_path, ["train", "multitask", "--params", "params.yaml"],
                                    {}, proj)
    assert done.returncode == 0, done.stderr
    assert calls[0] == f"mofi train --list multitask --params params.yaml @ {proj}"
    assert calls[2] == ("torchrun --nnodes=1 --node-rank=0 --nproc-per-node=3 "
                        "--master-addr=127.0.0.1 --master-port=29500 --no-python mofi train "
                        f"multitask --params params.yaml @ {proj}")
    assert calls[-1] == f"dvc commit --force --quiet train@multitask @ {proj}"

    static = {"NNODES": "2", "MASTER_ADDR": "node0", "MASTER_PORT": "1234"}
    done, calls = run_launch_script(tmp_path, ["baseline", "--root", str(proj)],
                                    {**static, "NODE_RANK": "1"}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls == [f"mofi storage pull baseline --if-configured --root {proj} @ {tmp_path}",
                     "torchrun --nnodes=2 --node-rank=1 --nproc-per-node=3 "
                     "--master-addr=node0 --master-port=1234 --no-python mofi baseline "
                     f"--root {proj} @ {tmp_path}"]
    assert done.stderr.splitlines()[-1] == "torchrun-train: dvc.lock not updated: node 0 does it"

    skips = [(["train"], {"MOFI_DVC_COMMIT": "0"}, proj, "MOFI_DVC_COMMIT=0"),
             (["train", "-S", "train.steps=2"], {}, proj, "the run used --set overrides"),
             (["train", f"--params={tmp_path}/other.yaml"], {}, proj,
              f"the run read {tmp_path}/other.yaml, not {proj}/params.yaml"),
             (["train", "--root", str(proj)], {}, tmp_path,  # reads ./params.yaml
              f"the run read {tmp_path}/params.yaml, not {proj}/params.yaml"),
             (["train"], {}, tmp_path, f"{tmp_path} is not a DVC project")]
    for args, env, cwd, why in skips:
        done, calls = run_launch_script(tmp_path, args, env, cwd)
        assert done.returncode == 0 and len(calls) == 4, (args, done.stderr)
        assert calls[0].startswith(f"mofi train --list {' '.join(args[1:])}"), calls[0]
        assert "-S" not in calls[1], calls[1]  # the pull takes --root/--params only
        last = done.stderr.splitlines()[-1]
        assert last.startswith(f"torchrun-train: dvc.lock not updated: {why}"), (args, last)
    done, _ = run_launch_script(tmp_path, ["train"], {}, proj, tools=("mofi", "torchrun"))
    assert done.stderr.splitlines()[-1].endswith("dvc.lock not updated: dvc is not on PATH")
    # --root and --params naming the project's own params.yaml: committed there
    done, calls = run_launch_script(tmp_path, ["train", "--root", str(proj), "--params",
                                               str(proj / "params.yaml")], {}, tmp_path)
    assert calls[1] == (f"mofi storage pull train --if-configured --root {proj} --params "
                        f"{proj}/params.yaml @ {tmp_path}")
    assert calls[-1] == (f"dvc commit --force --quiet train@supervised train@multitask "
                         f"@ {proj}"), done.stderr


def test_launch_script_failures_are_one_line(tmp_path):
    proj = tmp_path / "proj"
    (proj / ".dvc").mkdir(parents=True)
    (proj / "dvc.yaml").write_text("stages: {}\n", encoding="utf-8")
    done, calls = run_launch_script(tmp_path, ["train"], {"RDZV_ENDPOINT": "h:1"}, proj)
    assert done.returncode == 2 and calls == []
    assert "RDZV_ENDPOINT is set but RDZV_ID is not" in done.stderr
    # mofi cannot list the recipes (bad params, unknown recipe): nothing is pulled or launched
    done, calls = run_launch_script(tmp_path, ["train"], {"FAKE_FAIL": "mofi"}, proj)
    assert done.returncode == 1 and calls == [f"mofi train --list @ {proj}"], calls
    done, calls = run_launch_script(tmp_path, ["train"], {"FAKE_RECIPES": ""}, proj)
    assert done.returncode == 2 and len(calls) == 1, calls
    assert "train.recipes in params.yaml is empty" in done.stderr
    # the first launch fails: the second recipe is not launched and dvc.lock is left alone
    done, calls = run_launch_script(tmp_path, ["train"], {"FAKE_FAIL": "torchrun"}, proj)
    assert done.returncode == 1 and [c.split()[0] for c in calls] == ["mofi", "mofi", "torchrun"]
    done, calls = run_launch_script(tmp_path, ["train"], {"FAKE_FAIL": "dvc"}, proj)
    assert done.returncode == 1 and calls[-1].startswith("dvc commit")
    assert done.stderr.splitlines()[-1] == (
        "torchrun-train: dvc commit --force train@supervised train@multitask failed (see "
        f"above): the models are in place; run that command in {proj}")
    done, _ = run_launch_script(tmp_path, ["evaluate"], {}, proj)
    assert done.returncode == 2 and "usage:" in done.stderr

