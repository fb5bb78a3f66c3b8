"""The training loop on a toy recipe, at its edges: the learning-rate schedule step by step,
weight decay per parameter kind, global-norm clipping, gradient accumulation, the logging and
checkpoint cadence, and resume -- a run cut at a checkpoint ends with the weights of the run
that was never cut. Fast (a 4-8-3 MLP); the real recipes run in tests/integration/test_train.py.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from mofi_core.config.train import TrainConfig
from mofi_core.train import checkpoint
from mofi_core.train.distributed import DistEnv
from mofi_core.train.loop import clip_grad_global, lr_at, param_groups, train_loop
from mofi_core.train.losses import Recipe
from tests.errors import names

ENV = DistEnv(rank=0, world=1, local_rank=0, device=torch.device("cpu"))


def cfg(**over) -> TrainConfig:
    base = {"recipe": "supervised", "steps": 10, "lr": 0.1, "warmup_steps": 4, "batch_size": 4,
            "weight_decay": 0.1, "grad_clip": 1.0, "log_every": 1, "checkpoint_every": 3,
            "keep_checkpoints": 2}
    return TrainConfig(**{**base, **over})


class Toy(Recipe):
    name = "toy"

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 3))
        super().__init__(net, net)
        self.after = 0

    def loss(self, batch):
        x, y = batch
        loss = F.cross_entropy(self.forward(x), y)
        return loss, {"loss_toy": loss.detach(), "batch": torch.tensor(float(x.shape[0]))}

    def after_step(self) -> None:
        self.after += 1


class Batches:
    """The loop's data interface (iterate, position, restore) over 32 fixed samples in batches
    of ``size`` (4 unless a test says otherwise)."""

    def __init__(self, size: int = 4) -> None:
        g = torch.Generator().manual_seed(1)
        self.x, self.y = torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g)
        self.size, self.i = size, 0

    def __iter__(self):
        while True:
            j = self.i % (32 // self.size)
            self.i += 1
            rows = slice(self.size * j, self.size * (j + 1))
            yield self.x[rows], self.y[rows]

    def position(self) -> dict:
        return {"i": self.i}

    def restore(self, position: dict | None) -> None:
        self.i = position["i"] if position else 0


def test_lr_warms_up_linearly_then_decays_on_a_cosine_to_zero():
    c = cfg(steps=10, warmup_steps=4, lr=0.1)
    got = [lr_at(s, c) for s in range(11)]
    assert got[:4] == pytest.approx([0.025, 0.05, 0.075, 0.1])  # reaches lr on the last warm-up
    assert got[4] == pytest.approx(0.1)  # cosine starts at the peak
    assert got[7] == pytest.approx(0.05)  # half-way through the 6 decay steps
    assert got[5] == pytest.approx(0.05 * (1 + math.cos(math.pi / 6)))
    assert got[10] == pytest.approx(0.0, abs=1e-12)
    assert lr_at(25, c) == pytest.approx(0.0, abs=1e-12)  # past the end: stays at zero
    no_warmup = cfg(steps=4, warmup_steps=0, lr=1.0)
    assert [lr_at(s, no_warmup) for s in range(4)] == pytest.approx(
        [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4))])
    one_decay = cfg(steps=3, warmup_steps=2, lr=0.3)
    assert [lr_at(s, one_decay) for s in range(4)] == pytest.approx([0.15, 0.3, 0.3, 0.0])


def test_weight_decay_only_on_matrices():
    toy = Toy()
    decay, no_decay = param_groups(toy.model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert [p.ndim for p in decay["params"]] == [2, 2]
    assert [p.ndim for p in no_decay["params"]] == [1, 1, 1, 1]  # biases and the norm
    toy.model[0].bias.requires_grad_(False)
    assert len(param_groups(toy.model, 0.1)[1]["params"]) == 3  # frozen: not optimised


def test_clipping_uses_the_norm_of_the_whole_gradient():
    toy = Toy()
    toy.loss((torch.randn(4, 4) * 50, torch.tensor([0, 1, 2, 0])))[0].backward()
    grads = [p.grad.clone() for p in toy.model.parameters()]
    total = torch.sqrt(sum((g ** 2).sum() for g in grads))
    assert total > 0.5
    got = clip_grad_global(toy, 0.5, ENV)
    assert float(got) == pytest.approx(float(total), rel=1e-6)  # the norm before clipping
    after = torch.sqrt(sum((p.grad ** 2).sum() for p in toy.model.parameters()))
    assert float(after) == pytest.approx(0.5, rel=1e-4)  # one factor for every parameter
    for p, g in zip(toy.model.parameters(), grads, strict=True):
        assert torch.allclose(p.grad, g * 0.5 / total, rtol=1e-4, atol=1e-9)
    small = Toy()
    small.loss((torch.randn(4, 4) * 1e-4, torch.tensor([0, 1, 2, 0])))[0].backward()
    before = [p.grad.clone() for p in small.model.parameters()]
    clip_grad_global(small, 100.0, ENV)
    assert all(torch.equal(p.grad, g) for p, g in zip(small.model.parameters(), before,
                                                      strict=True))


def test_clipping_counts_a_sharded_heads_gradient_once_with_the_rest():
    """A recipe whose last layer is sharded (one process holds the whole shard): the norm is
    still that of every gradient together, and one factor scales both kinds."""

    class Sharded(Toy):
        def is_sharded(self, name: str) -> bool:
            return name.startswith("2.")

    toy = Sharded()
    toy.loss((torch.randn(4, 4) * 50, torch.tensor([0, 1, 2, 0])))[0].backward()
    grads = [p.grad.clone() for p in toy.model.parameters()]
    total = torch.sqrt(sum((g ** 2).sum() for g in grads))
    head = torch.sqrt(sum((g ** 2).sum() for g in grads[-2:]))
    assert 0.5 < head < total
    assert float(clip_grad_global(toy, 0.5, ENV)) == pytest.approx(float(total), rel=1e-6)
    for p, g in zip(toy.model.parameters(), grads, strict=True):
        assert torch.allclose(p.grad, g * 0.5 / total, rtol=1e-4, atol=1e-9)


def test_logs_every_n_steps_and_the_last_with_the_steps_lr():
    logged = []
    toy = Toy()
    history = train_loop(toy, Batches(), cfg(steps=7, log_every=3), ENV,
                         lambda step, row: logged.append((step, row)))
    rows = [r["step"] for r in history]
    assert rows == [3, 6, 7] and [s for s, _ in logged] == [3, 6, 7]
    c = cfg(steps=7)
    assert [r["lr"] for r in history] == pytest.approx([lr_at(2, c), lr_at(5, c), lr_at(6, c)])
    assert toy.after == 7
    assert all(r["batch"] == 4 and r["loss"] > 0 and "loss_toy" in r for r in history)
    assert all(r["images_per_s"] > 0 and r["grad_norm"] > 0 for r in history)


def test_grad_accumulation_averages_the_micro_batches():
    """Two micro-batches of 4 then one step == one batch of 8 (same data, same update)."""
    a, b = Toy(), Toy()
    ha = train_loop(a, Batches(), cfg(steps=3, warmup_steps=1, grad_accum=2, grad_clip=100.0), ENV,
                    lambda *_: None)
    hb = train_loop(b, Batches(size=8), cfg(steps=3, warmup_steps=1, grad_clip=100.0), ENV,
                    lambda *_: None)
    for pa, pb in zip(a.model.parameters(), b.model.parameters(), strict=True):
        assert torch.allclose(pa, pb, atol=1e-6)
    assert [r["loss"] for r in ha] == pytest.approx([r["loss"] for r in hb], rel=1e-5)
    # the gradient of the mean loss, not of the sum (Adam alone would not tell them apart)
    assert [r["grad_norm"] for r in ha] == pytest.approx([r["grad_norm"] for r in hb], rel=1e-4)
    assert [r["batch"] for r in ha] == [4, 4, 4]  # the micro-batch terms are averaged


def test_a_cut_run_resumes_to_the_uninterrupted_weights(tmp_path):
    whole = Toy()
    full = train_loop(whole, Batches(), cfg(steps=8, checkpoint_every=3), ENV, lambda *_: None,
                      ckpt_root=tmp_path / "whole", fingerprint="f")
    # the cut run: killed while logging step 4, after the checkpoint of step 3
    class Killed(Exception):
        pass

    def kill_at_4(step, row):
        if step == 4:
            raise Killed

    with pytest.raises(Killed):
        train_loop(Toy(), Batches(), cfg(steps=8, checkpoint_every=3), ENV, kill_at_4,
                   ckpt_root=tmp_path / "cut", fingerprint="f")
    assert [p.name for p in (tmp_path / "cut").iterdir()] == ["step-000000003"]
    resumed = Toy(seed=9)  # other initial weights: the checkpoint must overwrite all of them
    history = train_loop(resumed, Batches(), cfg(steps=8, checkpoint_every=3), ENV,
                         lambda *_: None, ckpt_root=tmp_path / "cut", fingerprint="f")
    for pa, pb in zip(whole.model.parameters(), resumed.model.parameters(), strict=True):
        assert torch.equal(pa, pb)
    assert [r["step"] for r in history] == [r["step"] for r in full] == list(range(1, 9))
    assert [r["loss"] for r in history] == [r["loss"] for r in full]
    # the whole run kept the 2 newest checkpoints: 6 and the last step
    assert [p.name for p in sorted((tmp_path / "whole").iterdir())] == [
        "step-000000006", "step-000000008"]
    state = json.loads((tmp_path / "whole" / "step-000000008" / "state.json").read_text())
    assert state["step"] == 8 and state["world"] == 1 and state["fingerprint"] == "f"


def test_a_finished_run_does_no_step_again(tmp_path):
    toy = Toy()
    short = cfg(steps=3, warmup_steps=1)
    train_loop(toy, Batches(), short, ENV, lambda *_: None, ckpt_root=tmp_path, fingerprint="f")
    again = Toy(seed=5)
    logged = []
    history = train_loop(again, Batches(), short, ENV, lambda s, r: logged.append(s),
                         ckpt_root=tmp_path, fingerprint="f")
    assert logged == [] and [r["step"] for r in history] == [1, 2, 3] and again.after == 0
    for pa, pb in zip(toy.model.parameters(), again.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_a_non_finite_loss_stops_with_what_to_change():
    class Nan(Toy):
        def loss(self, batch):
            loss, terms = super().loss(batch)
            return loss * float("nan"), terms

    with pytest.raises(FloatingPointError, match=r"loss is nan at step 1; lower train\.lr or "
                                                 r"raise train\.warmup_steps$"):
        train_loop(Nan(), Batches(), cfg(steps=2, warmup_steps=1), ENV, lambda *_: None)


def test_latest_any_is_the_newest_complete_checkpoint_of_any_run(tmp_path):
    toy = Toy()
    opt = torch.optim.AdamW(toy.model.parameters())
    assert checkpoint.latest_any(tmp_path / "nothing") is None
    for run, step in (("a", 2), ("a", 5), ("b", 4)):
        checkpoint.save(tmp_path / run, step, toy, opt, {}, ENV, "f")
    (tmp_path / "c" / "step-000000009").mkdir(parents=True)  # incomplete: no state.json
    (tmp_path / "loose-file").write_text("")
    found = checkpoint.latest_any(tmp_path)
    assert (found.path, found.step) == (tmp_path / "a" / "step-000000005", 5)
    assert checkpoint.latest_any(tmp_path, min_step=5).step == 5  # at the bound: kept
    assert checkpoint.latest_any(tmp_path, min_step=6) is None
    only_b = tmp_path / "only"
    checkpoint.save(only_b / "x", 3, toy, opt, {}, ENV, "f")
    checkpoint.save(only_b / "y", 1, toy, opt, {}, ENV, "f")
    assert checkpoint.latest_any(only_b).step == 3
    assert checkpoint.latest_any(only_b, min_step=0).path == only_b / "x" / "step-000000003"


def _saved(root, step, seed=0):
    toy = Toy(seed)
    opt = torch.optim.AdamW(toy.model.parameters())
    return toy, opt, checkpoint.save(root, step, toy, opt, {"data": {"i": step}}, ENV, "f")


def test_latest_prune_and_a_stale_tmp(tmp_path):
    for step in (1, 3, 12, 2):
        _saved(tmp_path, step)
    (tmp_path / "step-000000020").mkdir()  # incomplete: no state.json
    (tmp_path / "notes").mkdir()
    found = checkpoint.latest(tmp_path)
    assert (found.path.name, found.step) == ("step-000000012", 12)
    assert checkpoint.latest(tmp_path / "missing") is None
    (tmp_path / "step-000000013.tmp").mkdir()
    checkpoint.prune(tmp_path, 0)  # 0 keeps every checkpoint, drops only .tmp leftovers
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "notes", "step-000000001", "step-000000002", "step-000000003", "step-000000012",
        "step-000000020"]
    (tmp_path / "step-000000020").rmdir()
    checkpoint.prune(tmp_path, 2)  # the two newest by step, not by the order of the listing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "step-000000003",
                                                          "step-000000012"]
    checkpoint.prune(tmp_path, 1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "step-000000012"]
    checkpoint.prune(tmp_path / "missing", 1)  # nothing to do, no error
    # a .tmp left by a killed save is cleared, not merged into the new checkpoint
    stale = tmp_path / "step-000000030.tmp"
    stale.mkdir()
    (stale / "junk.bin").write_bytes(b"x")
    final = _saved(tmp_path, 30)[2]
    assert final.name == "step-000000030" and not (final / "junk.bin").exists()
    assert sorted(p.name for p in final.iterdir()) == [
        "rank-00000.json", "rank-00000.safetensors", "replicated.safetensors", "state.json"]


def test_load_refuses_another_format_world_or_params(tmp_path):
    toy, opt, final = _saved(tmp_path, 4)
    ck = checkpoint.latest(tmp_path)
    state = json.loads((final / "state.json").read_text())
    for change, said in (({"format": "old"}, ("'old'", repr(checkpoint.FORMAT))),
                         ({"world": 2}, ("2 processes", "this run has 1")),
                         ({"fingerprint": "g"}, ("different training params",))):
        (final / "state.json").write_text(json.dumps({**state, **change}))
        with pytest.raises(ValueError) as err:
            checkpoint.load(ck, toy.model, opt, ENV, "f")
        assert names(err.value, *said).startswith(str(final))
    (final / "state.json").write_text(json.dumps(state))
    got = checkpoint.load(ck, Toy(7).model, opt, ENV, "f")
    assert (got.step, got.loop) == (4, {"data": {"i": 4}})


def test_load_restores_every_rng_and_the_optimizer_state(tmp_path):
    import random

    import numpy as np

    toy = Toy()
    opt = torch.optim.AdamW(toy.model.parameters(), lr=0.1)
    toy.loss((torch.randn(4, 4), torch.tensor([0, 1, 2, 0])))[0].backward()
    opt.step()
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    checkpoint.save(tmp_path, 1, toy, opt, {}, ENV, "f")
    want = (random.random(), float(np.random.rand()), float(torch.rand(())))
    other = Toy(3)
    opt2 = torch.optim.AdamW(other.model.parameters(), lr=0.1)
    checkpoint.load(checkpoint.latest(tmp_path), other.model, opt2, ENV, "f")
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == want
    for p, q in zip(toy.model.parameters(), other.model.parameters(), strict=True):
        for slot in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][slot], opt2.state[q][slot]), slot


def test_optimizer_state_of_an_unknown_parameter_is_refused(tmp_path):
    _saved(tmp_path, 1)
    smaller = nn.Sequential(nn.Linear(4, 8))
    opt = torch.optim.AdamW(smaller.parameters())
    with pytest.raises(ValueError, match="parameters do not match the model"):
        checkpoint.load(checkpoint.latest(tmp_path), smaller, opt, ENV, "f")
    tensors = {"optim/nope.weight/exp_avg": torch.zeros(1)}
    with pytest.raises(ValueError) as err:
        checkpoint.load_optimizer_tensors(opt, smaller, tensors, tmp_path)
    names(err.value, f"{tmp_path}:", "'nope.weight'", "train.checkpoint_dir")


class FakeMirror:
    """The loop's side of checkpoint.RemoteMirror: the remote copy says which step to resume."""

    url = "s3://bucket/ckpt"

    def __init__(self, remote_step: int | None) -> None:
        self.remote_step, self.ensured, self.pushed, self.finished = remote_step, [], [], []

    def latest_step(self):
        return self.remote_step

    def ensure(self, run_dir, step):
        self.ensured.append((run_dir, step))
        return True

    def push_rank(self, tmp_dir, step, rank):
        assert tmp_dir.name == f"step-{step:09d}.tmp" and (tmp_dir / "rank-00000.json").is_file()
        self.pushed.append((step, rank))

    def finish(self, final_dir):
        self.finished.append(final_dir.name)


def test_the_remote_copy_decides_where_training_resumes(tmp_path, capsys):
    c = cfg(steps=6, checkpoint_every=2, keep_checkpoints=5)
    train_loop(Toy(), Batches(), c, ENV, lambda *_: None, ckpt_root=tmp_path,
               fingerprint="f")  # local: 2, 4, 6
    # the remote copy holds step 2 only: resume there, not from the local step 6
    mirror = FakeMirror(2)
    logged = []
    history = train_loop(Toy(), Batches(), c, ENV, lambda s, r: logged.append(s),
                         ckpt_root=tmp_path, fingerprint="f", mirror=mirror)
    assert mirror.ensured == [(tmp_path, 2)] and logged == [3, 4, 5, 6]
    assert [r["step"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert "train: resuming from step 2 downloaded from s3://bucket/ckpt" in capsys.readouterr().out
    assert mirror.pushed == [(4, 0), (6, 0)] and mirror.finished == ["step-000000004",
                                                                       "step-000000006"]
    # no remote checkpoint: start over, whatever is on the local disk
    fresh = FakeMirror(None)
    logged.clear()
    train_loop(Toy(), Batches(), c, ENV, lambda s, r: logged.append(s), ckpt_root=tmp_path,
               fingerprint="f", mirror=fresh)
    assert fresh.ensured == [] and logged == [1, 2, 3, 4, 5, 6]


def test_the_first_step_uses_the_warm_up_lr_and_logs_the_batchs_loss():
    """Adam's first update moves every 1-d parameter (no weight decay) by exactly the step's
    lr; the logged loss is the first batch's under the initial weights."""
    toy = Toy()
    start = [p.detach().clone() for p in toy.model.parameters()]
    x, y = next(iter(Batches()))
    with torch.no_grad():
        want_loss = float(F.cross_entropy(toy.model(x), y))
    c = cfg(steps=5, warmup_steps=4, lr=0.1, log_every=1)
    rows, moved = [], []

    def on_log(step, row):
        rows.append(row)
        if step == 1:
            moved.extend(float((p.detach() - b).abs().max()) for p, b in
                         zip(toy.model.parameters(), start, strict=True) if p.ndim == 1)

    train_loop(toy, Batches(), c, ENV, on_log)
    assert rows[0]["loss"] == pytest.approx(want_loss, rel=1e-6)
    assert [r["lr"] for r in rows] == pytest.approx([lr_at(s, c) for s in range(5)])
    assert len(moved) == 4 and all(m == pytest.approx(0.025, rel=1e-3) for m in moved)


def test_logged_rows_and_the_grad_norm_are_handed_to_the_caller():
    logged = []
    history = train_loop(Toy(), Batches(), cfg(steps=3, warmup_steps=1), ENV,
                         lambda s, r: logged.append((s, r)))
    assert logged == [(r["step"], r) for r in history]


def test_grad_checkpointing_and_compile_are_switched_on_for_the_towers(monkeypatch):
    calls, compiled = [], []

    class Tower(nn.Linear):
        def set_grad_checkpointing(self, enable):
            calls.append(enable)

    toy = Toy()
    toy.model[0] = Tower(4, 8)
    toy.model.set_grad_checkpointing = lambda enable: calls.append(("root", enable))
    monkeypatch.setattr(torch, "compile", lambda fn: compiled.append(fn) or fn)
    net = toy.forward
    train_loop(toy, Batches(), cfg(steps=2, warmup_steps=1, grad_checkpointing=True,
                                   compile=True), ENV, lambda *_: None)
    assert calls == [True] and compiled == [net]  # the towers, not the recipe's own model


def test_fused_adamw_where_pytorch_has_it_with_the_configured_lr_and_decay():
    from mofi_core.train.loop import make_optimizer

    model = Toy().model
    opt = make_optimizer(model, cfg(lr=0.3, weight_decay=0.2), torch.device("cpu"))
    assert isinstance(opt, torch.optim.AdamW) and opt.defaults["fused"] is True
    assert [(g["lr"], g["weight_decay"], len(g["params"])) for g in opt.param_groups] == [
        (0.3, 0.2, 2), (0.3, 0.0, 4)]
    assert make_optimizer(model, cfg(), torch.device("meta")).defaults["fused"] is False
    # decided by the device the run trains on (no GPU needed to check the choice)
    assert make_optimizer(model, cfg(), torch.device("cuda")).defaults["fused"] is True


def test_throughput_counts_every_image_of_every_micro_batch(monkeypatch):
    """images_per_s = images since the start / seconds since the start, with two micro-batches
    of 2 (of 4 features: a count read from the wrong axis shows) per step and a clock that
    moves 2 s between reads: 2 images/s at every log."""
    from types import SimpleNamespace

    from mofi_core.train import loop

    ticks = iter(range(100, 1000, 2))
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: float(next(ticks))))
    history = train_loop(Toy(), Batches(size=2), cfg(steps=3, warmup_steps=1, grad_accum=2), ENV,
                         lambda *_: None)
    assert [r["images_per_s"] for r in history] == [2.0, 2.0, 2.0]


def test_a_logged_row_holds_exactly_its_named_values():
    row = train_loop(Toy(), Batches(), cfg(steps=2, warmup_steps=1), ENV, lambda *_: None)[0]
    assert sorted(row) == ["batch", "grad_norm", "images_per_s", "loss", "loss_toy", "lr",
                           "memory_mb", "step"]
    assert row["memory_mb"] > 0


def test_a_parameter_without_a_gradient_is_left_alone():
    """Gradients are set to None between steps: a parameter the loss never reaches has no
    gradient and AdamW skips it (a zero gradient would still shrink it by weight decay)."""
    toy = Toy()
    toy.model.register_parameter("spare", nn.Parameter(torch.ones(3, 3)))
    train_loop(toy, Batches(), cfg(steps=3, warmup_steps=1, weight_decay=0.5), ENV,
               lambda *_: None)
    assert toy.model.spare.grad is None and torch.equal(toy.model.spare, torch.ones(3, 3))


def test_replicated_parameters_outside_the_net_train_as_usual_in_one_process():
    """A head outside the DDP net has its gradients averaged by the loop: over one process
    that leaves them as they are."""

    class Extra(Toy):
        def replicated_extra(self):
            return list(self.model[2].parameters())

    plain, extra = Toy(), Extra()
    for toy in (plain, extra):
        train_loop(toy, Batches(), cfg(steps=3, warmup_steps=1), ENV, lambda *_: None)
    for pa, pb in zip(plain.model.parameters(), extra.model.parameters(), strict=True):
        assert torch.equal(pa, pb)


def test_checkpoints_without_a_fingerprint_record_an_empty_one(tmp_path):
    train_loop(Toy(), Batches(), cfg(steps=3, checkpoint_every=3, warmup_steps=1), ENV,
               lambda *_: None, ckpt_root=tmp_path)
    state = json.loads((tmp_path / "step-000000003" / "state.json").read_text())
    assert state["fingerprint"] == "" and state["step"] == 3


def test_progress_names_the_recipe_counts_steps_and_shows_the_logged_loss(monkeypatch, capsys):
    """A line per step (MOFI_PROGRESS_SECONDS=0, not a terminal): the loss appears from the
    first logged step on and stays until the next; a last line says it is done."""
    monkeypatch.setenv("MOFI_PROGRESS_SECONDS", "0")
    history = train_loop(Toy(), Batches(), cfg(steps=4, log_every=2, warmup_steps=1), ENV,
                         lambda *_: None)
    lines = capsys.readouterr().out.splitlines()
    l2, l4 = (f"{r['loss']:.4f}" for r in history)
    assert [x.split(" | ")[0] for x in lines] == [
        "train (toy): step 1/4 (25%)", f"train (toy): step 2/4 (50%) loss {l2}",
        f"train (toy): step 3/4 (75%) loss {l2}", f"train (toy): step 4/4 (100%) loss {l4}",
        f"train (toy): step 4/4 (100%) loss {l4}"]
    assert "done in" in lines[-1] and "step/s" in lines[-1]
    other = DistEnv(rank=1, world=1, local_rank=0, device=torch.device("cpu"))
    train_loop(Toy(), Batches(), cfg(steps=2, warmup_steps=1), other, lambda *_: None)
    assert capsys.readouterr().out == ""  # only rank 0 shows progress


class Normed(Recipe):
    """A model with buffers (batch norm) whose last layer counts as sharded: at world 1 its
    tensors go to the rank's own file, the rest to the replicated one."""

    name = "normed"

    def __init__(self, seed: int = 0) -> None:
        torch.manual_seed(seed)
        net = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 3))
        super().__init__(net, net)

    def is_sharded(self, name: str) -> bool:
        return name.startswith("2.")

    def loss(self, batch):
        x, y = batch
        loss = F.cross_entropy(self.forward(x), y)
        return loss, {}


def _trained(recipe: Recipe, steps: int = 2) -> torch.optim.Optimizer:
    opt = torch.optim.AdamW(recipe.model.parameters(), lr=0.1)
    batches = iter(Batches())
    for _ in range(steps):
        opt.zero_grad()
        recipe.loss(next(batches))[0].backward()
        opt.step()
    return opt


def test_buffers_sharded_tensors_and_optimizer_state_come_back(tmp_path):
    from safetensors.torch import load_file

    saved = Normed()
    opt = _trained(saved)
    final = checkpoint.save(tmp_path, 2, saved, opt, {}, ENV, "f")
    own = load_file(str(final / "rank-00000.safetensors"))
    shared = load_file(str(final / "replicated.safetensors"))
    assert sorted(k for k in own if not k.startswith("rng/")) == [
        "optim/2.bias/exp_avg", "optim/2.bias/exp_avg_sq", "optim/2.bias/step",
        "optim/2.weight/exp_avg", "optim/2.weight/exp_avg_sq", "optim/2.weight/step",
        "param/2.bias", "param/2.weight"]
    assert "buffer/1.running_mean" in shared and "param/0.weight" in shared
    assert not any(k.startswith(("param/2.", "optim/2.")) for k in shared)
    back = Normed(seed=4)
    opt2 = torch.optim.AdamW(back.model.parameters(), lr=0.1)
    checkpoint.load(checkpoint.latest(tmp_path), back.model, opt2, ENV, "f")
    for (name, a), b in zip(saved.model.state_dict().items(), back.model.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name  # parameters and buffers (running mean and variance)
    for p, q in zip(saved.model.parameters(), back.model.parameters(), strict=True):
        assert opt2.state[q].keys() == opt.state[p].keys()
        for slot, value in opt.state[p].items():
            assert torch.equal(value, opt2.state[q][slot]), slot


def test_a_parameter_mismatch_names_the_folder_and_three_names_of_each_kind(tmp_path):
    final = _saved(tmp_path, 1)[2]
    many = nn.Module()
    for i in range(5):
        many.register_parameter(f"p{i}", nn.Parameter(torch.zeros(1)))
    with pytest.raises(ValueError) as err:
        checkpoint.load(checkpoint.latest(tmp_path), many, torch.optim.AdamW(many.parameters()),
                        ENV, "f")
    names(err.value, f"{final}:", "['p0', 'p1', 'p2']", "['0.bias', '0.weight', '1.bias']")


def test_the_cuda_generator_is_saved_and_restored_where_cuda_is_in_use(tmp_path, monkeypatch):
    """No GPU here: torch.cuda's generator calls are stood in for, to check the checkpoint
    saves the CUDA generator when CUDA is initialised and sets it back on load."""
    state = {"rng": torch.arange(8, dtype=torch.uint8)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda: state["rng"].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda t: state.update(rng=t.clone()))
    toy, opt, final = _saved(tmp_path, 1)
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(final / "rank-00000.safetensors"))["rng/cuda"],
                       torch.arange(8, dtype=torch.uint8))
    state["rng"] = torch.zeros(8, dtype=torch.uint8)
    checkpoint.load(checkpoint.latest(tmp_path), toy.model, opt, ENV, "f")
    assert torch.equal(state["rng"], torch.arange(8, dtype=torch.uint8))
    # CUDA present but never initialised (nothing ran on it): no CUDA generator is saved
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    final = _saved(tmp_path, 2)[2]
    assert "rng/cuda" not in load_file(str(final / "rank-00000.safetensors"))


def test_a_save_cut_before_its_rename_leaves_only_the_tmp_folder(tmp_path, monkeypatch):
    """The folder a save writes into is step-N.tmp until the last moment: a save killed
    before the rename leaves no step-N that latest() would take as complete."""
    from pathlib import Path

    def killed(self, target):
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "rename", killed)
    with pytest.raises(KeyboardInterrupt):
        _saved(tmp_path, 5)
    assert [p.name for p in tmp_path.iterdir()] == ["step-000000005.tmp"]
    assert checkpoint.latest(tmp_path) is None


def test_optimizer_state_goes_to_its_parameters_device_and_the_step_stays_on_the_cpu(tmp_path):
    """Moments follow their parameter's device (here the meta device stands in for a GPU);
    AdamW wants its step counters on the CPU."""
    toy = Toy()
    tensors = checkpoint.optimizer_tensors(_trained(toy), toy.model, lambda name: True)
    moved = Toy()
    moved.model.to("meta")
    opt = torch.optim.AdamW(moved.model.parameters())
    checkpoint.load_optimizer_tensors(opt, moved.model, tensors, tmp_path)
    for p in moved.model.parameters():
        assert {k: v.device.type for k, v in opt.state[p].items()} == {
            "exp_avg": "meta", "exp_avg_sq": "meta", "step": "cpu"}
