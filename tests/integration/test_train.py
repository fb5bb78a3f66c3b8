"""Training recipes, checkpoints and resume on the truth-labelled tiny I2E set."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mofi_core.models.artifact import load_model
from mofi_core.train import checkpoint
from mofi_core.train.run import train_model

FAST = {"steps": 30, "batch_size": 16, "warmup_steps": 2, "log_every": 5, "num_workers": 0,
        "lr": 2e-3}


def _cfg(params, **over):
    base = params.baseline if over.get("recipe") == "clip" else params.train
    return base.model_copy(update={**FAST, **over})


@pytest.mark.parametrize("over", [
    {"recipe": "supervised"},
    {"recipe": "supervised", "head": "cosine", "head_margin": 0.2, "multi_label": "score"},
    {"recipe": "contrastive"},
    {"recipe": "multitask", "text_source": "mix", "loss_weights": (1.0, 0.5)},
], ids=["supervised-linear", "supervised-cosine-margin", "contrastive", "multitask-mix"])
def test_each_recipe_lowers_its_loss_and_exports_a_model(truth_i2e, tmp_path, over):
    layout, params, i2e = truth_i2e
    cfg = _cfg(params, **over)
    hist = train_model(i2e, tmp_path / "m", cfg, lambda s, r: None, kb_path=layout.kb)
    assert [r["step"] for r in hist] == [5, 10, 15, 20, 25, 30]
    # 30 tiny steps: contrastive starts at chance (log 16 = 2.77) and drops ~8% by the end
    assert hist[-1]["loss"] < 0.95 * hist[0]["loss"], hist
    model, meta = load_model(tmp_path / "m")
    assert meta.recipe == over["recipe"]
    out = model.encode_image(torch.zeros(2, 3, meta.image_size, meta.image_size))
    assert out.shape == (2, meta.arch_config["embed_dim"])


def test_clip_control_trains_on_raw_alt_text(truth_i2e, tmp_path):
    _layout, params, i2e = truth_i2e
    hist = train_model(i2e.parent / "ingest", tmp_path / "b", _cfg(params, recipe="clip"),
                       lambda s, r: None)
    assert hist[-1]["loss_clip"] < hist[0]["loss_clip"]
    assert load_model(tmp_path / "b")[1].kind == "clip"


def test_multitask_loss_is_the_weighted_sum_of_its_terms(truth_i2e):
    from mofi_core.io.shards import iter_samples, list_shards
    from mofi_core.models.factory import arch_config
    from mofi_core.train.losses import build_recipe
    from mofi_core.train.run import _model_meta, _sample_maker, read_vocab

    layout, params, i2e = truth_i2e
    cfg = _cfg(params, recipe="multitask", loss_weights=(0.3, 2.0))
    classes = read_vocab(i2e)
    make = _sample_maker(cfg, _model_meta(cfg, classes), classes, layout.kb)
    samples = [make(s, i) for i, s in zip(range(8), iter_samples(list_shards(i2e / "shards")[0]),
                                          strict=False)]
    batch = tuple(torch.stack(c) for c in zip(*samples, strict=True))
    torch.manual_seed(0)
    recipe = build_recipe(cfg, arch_config(cfg.model), len(classes))
    total, terms = recipe.loss(batch)
    expected = 0.3 * terms["loss_supervised"] + 2.0 * terms["loss_contrastive"]
    torch.testing.assert_close(total.detach(), expected, rtol=1e-6, atol=1e-6)
    assert terms["loss_supervised"] > 0 and terms["loss_contrastive"] > 0


CHILD = """
import json, sys
from pathlib import Path
from mofi_core.config.train import MofiTrainConfig
from mofi_core.train.run import train_model
i2e, out, ckpt, kb, over = sys.argv[1:6]
cfg = MofiTrainConfig(**json.loads(over))
def log(step, row):
    print(json.dumps({"step": step, "loss": row["loss"]}), flush=True)
train_model(Path(i2e), Path(out), cfg, log, kb_path=Path(kb), ckpt_root=Path(ckpt))
"""

RESUME = {"recipe": "multitask", "steps": 40, "batch_size": 8, "warmup_steps": 2,
          "log_every": 1, "checkpoint_every": 5, "num_workers": 1, "shuffle_buffer": 50,
          "threads": 1, "text_source": "mix"}


def _child(args: list[str], **kw) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-c", CHILD, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, **kw)


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


def test_killed_training_resumes_and_ends_with_the_uninterrupted_weights(truth_i2e, tmp_path):
    layout, _, i2e = truth_i2e
    over = json.dumps(RESUME)
    ref = _child([str(i2e), str(tmp_path / "ref"), str(tmp_path / "ck_ref"), str(layout.kb),
                  over])
    assert ref.wait(timeout=600) == 0, ref.stderr.read()[-3000:]

    run = [str(i2e), str(tmp_path / "out"), str(tmp_path / "ck"), str(layout.kb), over]
    first = _child(run)
    deadline = time.monotonic() + 300
    while checkpoint.latest_any(tmp_path / "ck", min_step=15) is None:
        assert first.poll() is None, "training ended before it could be killed"
        assert time.monotonic() < deadline, "no checkpoint after 300 s"
        time.sleep(0.05)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert not (tmp_path / "out").exists()

    second = _child(run)
    stdout, stderr = second.communicate(timeout=600)
    assert second.returncode == 0, stderr[-3000:]
    steps = [json.loads(line)["step"] for line in stdout.splitlines() if line.startswith("{")]
    assert steps[0] > 15 and steps[-1] == 40, steps  # continued, did not start over
    got, want = _weights(tmp_path / "out"), _weights(tmp_path / "ref")
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=k)


def test_checkpoint_of_other_params_is_not_resumed(truth_i2e, tmp_path):
    _layout, params, i2e = truth_i2e
    ck = tmp_path / "ck"
    cfg = _cfg(params, steps=6, checkpoint_every=3)
    train_model(i2e, tmp_path / "a", cfg, lambda s, r: None, ckpt_root=ck)
    (first,) = [p.name for p in ck.iterdir()]
    seen: list[int] = []
    train_model(i2e, tmp_path / "b", cfg.model_copy(update={"lr": 1e-3}),
                lambda s, r: seen.append(s), ckpt_root=ck)
    assert seen[0] == 5  # started over: the first checkpoint's params differ
    assert first not in [p.name for p in ck.iterdir()]  # and it was cleared away
    again: list[int] = []
    hist = train_model(i2e, tmp_path / "c", cfg.model_copy(update={"lr": 1e-3}),
                       lambda s, r: again.append(s), ckpt_root=ck)
    assert again == [] and hist[-1]["step"] == 6  # finished run: nothing left to train
    torch.testing.assert_close(_weights(tmp_path / "b"), _weights(tmp_path / "c"))


def test_checkpoint_refuses_another_world_size_and_ignores_partial_folders(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    from types import SimpleNamespace

    from mofi_core.train.distributed import DistEnv

    def env(world: int) -> DistEnv:
        return DistEnv(rank=0, world=world, local_rank=0, device=torch.device("cpu"))

    trained = SimpleNamespace(model=model, is_sharded=lambda name: False)
    checkpoint.save(tmp_path, 4, trained, opt, {"x": 1}, env(1), "fp")
    (tmp_path / "step-000000008.tmp").mkdir()  # a killed save
    (tmp_path / "step-000000009").mkdir()  # no state.json: incomplete
    found = checkpoint.latest(tmp_path)
    assert found.step == 4
    with pytest.raises(ValueError, match="written by 1 processes, this run has 2"):
        checkpoint.load(found, model, opt, env(2), "fp")
    with pytest.raises(ValueError, match="different training params"):
        checkpoint.load(found, model, opt, env(1), "other")
    fresh = torch.nn.Linear(3, 2)
    opt2 = torch.optim.AdamW(fresh.parameters())
    state = checkpoint.load(found, fresh, opt2, env(1), "fp")
    assert state.step == 4 and state.loop == {"x": 1}
    torch.testing.assert_close(fresh.weight, model.weight)
    assert torch.equal(opt2.state[fresh.weight]["exp_avg"], opt.state[model.weight]["exp_avg"])
    checkpoint.prune(tmp_path, keep=1)
    assert not (tmp_path / "step-000000008.tmp").exists()


@pytest.mark.gpu
def test_bf16_training_on_cuda(truth_i2e, tmp_path):
    layout, params, i2e = truth_i2e
    hist = train_model(i2e, tmp_path / "m", _cfg(params, device="cuda", recipe="multitask"),
                       lambda s, r: None, kb_path=layout.kb)
    assert hist[-1]["loss"] < hist[0]["loss"]


def _first_step_grads(i2e, cfg, checkpointing: bool = False) -> dict[str, torch.Tensor]:
    from mofi_core.io.shards import list_shards
    from mofi_core.train.data import Batches, ShardStream
    from mofi_core.train.distributed import DistEnv
    from mofi_core.train.loop import _micro_steps
    from mofi_core.train.losses import build_recipe
    from mofi_core.train.run import _model_meta, _sample_maker, read_vocab

    classes = read_vocab(i2e)
    meta = _model_meta(cfg, classes)
    torch.manual_seed(0)
    recipe = build_recipe(cfg.model_copy(update={"head": "linear", "shard_head": False,
                                                  "loss_weights": (1.0, 1.0)}),
                          meta.arch_config, len(classes))
    if checkpointing:
        recipe.model.visual.set_grad_checkpointing(True)
    stream = ShardStream([str(p) for p in list_shards(i2e / "shards")],
                         _sample_maker(cfg, meta, classes, None), cfg.batch_size,
                         cfg.shuffle_buffer, cfg.seed)
    env = DistEnv(rank=0, world=1, local_rank=0, device=torch.device("cpu"))
    _micro_steps(recipe, iter(Batches(stream, 0)), cfg, env)
    return {n: p.grad.clone() for n, p in recipe.model.named_parameters()}


def test_grad_accumulation_and_checkpointing_give_the_same_gradient(truth_i2e):
    """16 images in one batch == 2 micro-batches of 8 of the same stream; gradient
    checkpointing recomputes activations and changes nothing."""
    _, params, i2e = truth_i2e
    cfg = _cfg(params)
    want = _first_step_grads(i2e, cfg)
    runs = {"accum": _first_step_grads(i2e, cfg.model_copy(update={"batch_size": 8,
                                                                   "grad_accum": 2})),
            "checkpointing": _first_step_grads(i2e, cfg, checkpointing=True)}
    for name, got in runs.items():
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-6, msg=f"{name} {k}")


def _project_for_train(truth_i2e, tmp_path, checkpoint_every, dvc=False):
    """A project folder holding just what ``mofi train`` reads: I2E, KB, params (4 steps,
    sharded head). With ``dvc``, a copy of the whole project (git + DVC) with those files and
    params.yaml changed only in its train sections."""
    import shutil

    import yaml

    from flows.pipeline import write_overrides
    from mofi_core.config.train import TrainConfig
    from mofi_core.io.atomic import write_json
    from mofi_core.validate.gate import i2e_identity
    from tests.conftest import copy_project

    layout, _, i2e = truth_i2e
    root = copy_project(tmp_path / "proj") if dvc else tmp_path / "proj"
    shutil.copytree(i2e, root / "data" / "i2e")
    (root / "data" / "kb").mkdir(exist_ok=True)
    shutil.copytree(layout.kb, root / "data" / "kb", dirs_exist_ok=True)
    train = {**RESUME, "steps": 4, "checkpoint_every": checkpoint_every, "num_workers": 0,
             "log_every": 2, "shard_head": True}
    runtime = {k: train.pop(k) for k in list(train) if k in TrainConfig.RUNTIME}
    train["recipes"] = [train.pop("recipe")]  # params.yaml lists the candidates
    # what the validate stage records when this data passed (train refuses data without it)
    write_json(root / "reports" / "validate.json",
               {"summary": {"success": True, "failed": 0},
                "checked": i2e_identity(root / "data" / "i2e"), "results": []})
    if dvc:
        write_overrides(root / "params.yaml",
                        {**{f"train.{k}": v for k, v in train.items()},
                         **{f"runtime.train.{k}": v for k, v in runtime.items()}})
    else:
        (root / "params.yaml").write_text(yaml.safe_dump({"train": train,
                                                          "runtime": {"train": runtime}}),
                                          encoding="utf-8")
    return root


def final_loss_lines(output: str, stage: str = "train@multitask") -> list[str]:
    """The stage command's summary line (``train@multitask: final_loss=..., steps=...``)."""
    return [line for line in output.splitlines() if line.startswith(f"{stage}: final_loss=")]


