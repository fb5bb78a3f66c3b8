"""Classification heads: full heads against a dense F.cross_entropy reference, and the sharded
head on 2 gloo processes against a single-process full head on the concatenated batch."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

from mofi_core.models.heads import CosineHead, LinearHead
from mofi_core.train.sharded_head import ShardedHead, shard_range
from tests.ports import free_port

C, D, D_IN, K = 11, 8, 5, 3  # 11 classes: the 2 shards are 6 and 5 rows
WORLD, B_LOCAL = 2, 3
EPS, SCALE, MARGIN, LR = 0.1, 4.0, 0.25, 0.5
KINDS = ("linear", "cosine")
TOL = dict(atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------- shared problem


def _targets(gen: torch.Generator, rows: int, max_labels: int) -> tuple[torch.Tensor, ...]:
    """Padded multi-label targets: 1..max_labels distinct classes per row, weights summing to 1."""
    idx = torch.full((rows, K), -1, dtype=torch.long)
    w = torch.zeros(rows, K)
    for r in range(rows):
        n = int(torch.randint(1, max_labels + 1, (1,), generator=gen))
        idx[r, :n] = torch.randperm(C, generator=gen)[:n]
        raw = torch.rand(n, generator=gen) + 0.1
        w[r, :n] = raw / raw.sum()
    return idx, w


def _problem(kind: str) -> dict[str, torch.Tensor]:
    """The global batch and full-head weights, identical in every process. Rank 1's rows have
    at most K-1 labels so that it can send narrower targets (K-1 columns) than rank 0."""
    gen = torch.Generator().manual_seed(7 if kind == "linear" else 8)
    idx0, w0 = _targets(gen, B_LOCAL, K)
    idx1, w1 = _targets(gen, B_LOCAL, K - 1)
    weight = torch.randn(C, D, generator=gen) * 0.7
    feats = torch.randn(WORLD * B_LOCAL, D, generator=gen)
    idx, w = torch.cat([idx0, idx1]), torch.cat([w0, w1])
    best = idx.gather(1, w.argmax(1, keepdim=True)).squeeze(1)
    feats[::2] = 2 * weight[best[::2]]  # make some predictions right, so top-1 is not trivial
    return {"idx": idx, "w": w, "weight": weight, "bias": torch.randn(C, generator=gen) * 0.1,
            "feats": feats, "x": torch.randn(WORLD * B_LOCAL, D_IN, generator=gen),
            "tower_w": torch.randn(D, D_IN, generator=gen) * 0.5,
            "tower_b": torch.randn(D, generator=gen) * 0.1}


def _full_head(kind: str, p: dict[str, torch.Tensor]) -> LinearHead | CosineHead:
    if kind == "linear":
        head = LinearHead(D, C)
        head.load_state_dict({"weight": p["weight"], "bias": p["bias"]})
        return head
    head = CosineHead(D, C, scale=SCALE, margin=MARGIN)
    head.load_state_dict({"weight": p["weight"]})
    return head


def _sharded_head(kind: str, p: dict[str, torch.Tensor]) -> ShardedHead:
    margin = MARGIN if kind == "cosine" else 0.0
    head = ShardedHead(D, C, kind=kind, scale=SCALE, margin=margin)
    head.load_full_state_dict({"weight": p["weight"], "bias": p["bias"]})
    return head


def _local_targets(p: dict[str, torch.Tensor], rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    rows = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
    width = K if rank == 0 else K - 1
    return p["idx"][rows, :width], p["w"][rows, :width]


# --------------------------------------------------------------------------- distributed worker


def _sharded_run(kind: str, rank: int) -> dict:
    p = _problem(kind)
    head = _sharded_head(kind, p)
    feats = p["feats"][rank * B_LOCAL:(rank + 1) * B_LOCAL].clone().requires_grad_()
    loss, metrics = head.loss(feats, *_local_targets(p, rank), label_smoothing=EPS)
    loss.backward()
    out = {"loss": loss.detach(), "top1": metrics["train_top1"], "start": head.start,
           "end": head.end, "weight_grad": head.weight.grad.clone(), "feats_grad": feats.grad,
           "loaded": head.full_state_dict()}
    if head.bias is not None:
        out["bias_grad"] = head.bias.grad.clone()
    torch.optim.SGD(head.parameters(), lr=LR).step()
    out["trained"] = head.full_state_dict()
    return out


def _ddp_run(kind: str, rank: int) -> dict:
    p = _problem(kind)
    tower = nn.Linear(D_IN, D)
    tower.load_state_dict({"weight": p["tower_w"], "bias": p["tower_b"]})
    model = DDP(tower)  # only the tower: the head shards must not be averaged
    head = _sharded_head(kind, p)
    feats = model(p["x"][rank * B_LOCAL:(rank + 1) * B_LOCAL])
    loss, _ = head.loss(feats, *_local_targets(p, rank), label_smoothing=EPS)
    loss.backward()
    return {"weight": tower.weight.grad.clone(), "bias": tower.bias.grad.clone()}


def _uneven_batch_error(rank: int) -> str:
    head = ShardedHead(D, C)
    rows = B_LOCAL - rank  # rank 1 brings one row fewer
    idx = torch.zeros(rows, 1, dtype=torch.long)
    try:
        head.loss(torch.randn(rows, D), idx, torch.ones(rows, 1))
    except ValueError as err:
        return str(err)
    return ""


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    try:
        result = {kind: _sharded_run(kind, rank) for kind in KINDS}
        result.update({f"ddp_{kind}": _ddp_run(kind, rank) for kind in KINDS})
        result["uneven_error"] = _uneven_batch_error(rank)
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    """One spawn of 2 gloo ranks runs every distributed case; results come back as files."""
    out = tmp_path_factory.mktemp("sharded")
    ctx = mp.spawn(_worker, args=(WORLD, free_port(), str(out)), nprocs=WORLD, join=False)
    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail("gloo workers did not finish within 120 s (deadlock in a collective?)")
    return [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def _full_run(kind: str) -> dict:
    p = _problem(kind)
    head = _full_head(kind, p)
    feats = p["feats"].clone().requires_grad_()
    loss, metrics = head.loss(feats, p["idx"], p["w"], label_smoothing=EPS)
    loss.backward()
    out = {"loss": loss.detach(), "top1": metrics["train_top1"], "feats_grad": feats.grad,
           "weight_grad": head.weight.grad, "weight": p["weight"]}
    if kind == "linear":
        out.update(bias_grad=head.bias.grad, bias=p["bias"])
    return out


# --------------------------------------------------------------------------- shard_range


def test_shard_range_uneven_split_is_contiguous_and_balanced() -> None:
    assert [shard_range(11, r, 2) for r in range(2)] == [(0, 6), (6, 11)]
    assert [shard_range(10, r, 3) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
    assert [shard_range(8, r, 4) for r in range(4)] == [(0, 2), (2, 4), (4, 6), (6, 8)]
    assert shard_range(5, 0, 1) == (0, 5)
    assert [shard_range(3, r, 3) for r in range(3)] == [(0, 1), (1, 2), (2, 3)]  # one each


@pytest.mark.parametrize(("classes", "rank", "world", "message"), [
    (3, 0, 4, "every rank needs at least one class"),
    (10, 2, 2, "rank must be in"),
    (10, -1, 2, "rank must be in"),
    (10, 0, 0, "world must be"),
])
def test_shard_range_rejects_bad_arguments(classes: int, rank: int, world: int,
                                           message: str) -> None:
    with pytest.raises(ValueError, match=message):
        shard_range(classes, rank, world)


# --------------------------------------------------------------------------- full heads


def _dense(idx: torch.Tensor, w: torch.Tensor, classes: int) -> torch.Tensor:
    dense = torch.zeros(idx.shape[0], classes)
    for r in range(idx.shape[0]):
        for k in range(idx.shape[1]):
            if idx[r, k] >= 0:
                dense[r, idx[r, k]] += w[r, k]
    return dense


@pytest.mark.parametrize("eps", [0.0, EPS])
def test_linear_head_loss_matches_dense_cross_entropy(eps: float) -> None:
    p = _problem("linear")
    head = _full_head("linear", p)
    loss, metrics = head.loss(p["feats"], p["idx"], p["w"], label_smoothing=eps)
    logits = p["feats"] @ p["weight"].T + p["bias"]
    ref = F.cross_entropy(logits, _dense(p["idx"], p["w"], C), label_smoothing=eps)
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    best = [int(p["idx"][r, p["w"][r].argmax()]) for r in range(len(logits))]
    hits = [int(logits[r].argmax()) == best[r] for r in range(len(logits))]
    assert float(metrics["train_top1"]) == pytest.approx(sum(hits) / len(hits))
    assert 0 < sum(hits) < len(hits)
    assert not metrics["train_top1"].requires_grad


@pytest.mark.parametrize("eps", [0.0, EPS])
def test_cosine_head_margin_hits_positive_classes_only_in_loss(eps: float) -> None:
    p = _problem("cosine")
    head = _full_head("cosine", p)
    cos = F.normalize(p["feats"], dim=1) @ F.normalize(p["weight"], dim=1).T
    positive = (_dense(p["idx"], p["w"], C) > 0).float()
    loss, _ = head.loss(p["feats"], p["idx"], p["w"], label_smoothing=eps)
    ref = F.cross_entropy(SCALE * (cos - MARGIN * positive), _dense(p["idx"], p["w"], C),
                          label_smoothing=eps)
    torch.testing.assert_close(loss, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(head.logits(p["feats"]), SCALE * cos, atol=1e-6, rtol=1e-6)
    no_margin = CosineHead(D, C, scale=SCALE)
    no_margin.load_state_dict(head.state_dict())
    torch.testing.assert_close(no_margin.logits(p["feats"]), head.logits(p["feats"]))
    assert no_margin.loss(p["feats"], p["idx"], p["w"], eps)[0] < loss


def test_cosine_head_learned_scale_gets_a_gradient() -> None:
    p = _problem("cosine")
    head = CosineHead(D, C, scale=SCALE, learn_scale=True)
    assert float(head.scale.detach()) == pytest.approx(SCALE)
    loss, metrics = head.loss(p["feats"], p["idx"], p["w"])
    loss.backward()
    assert head.log_scale.grad is not None and head.log_scale.grad != 0
    assert float(metrics["scale"]) == pytest.approx(SCALE)


def test_padding_entries_change_nothing() -> None:
    p = _problem("linear")
    head = _full_head("linear", p)
    wide_idx = torch.cat([p["idx"], torch.full((len(p["idx"]), 2), -1)], dim=1)
    wide_w = torch.cat([p["w"], torch.zeros(len(p["w"]), 2)], dim=1)
    torch.testing.assert_close(head.loss(p["feats"], wide_idx, wide_w, EPS)[0],
                               head.loss(p["feats"], p["idx"], p["w"], EPS)[0])


def test_bad_target_shapes_are_rejected() -> None:
    head = LinearHead(D, C)
    with pytest.raises(ValueError, match="target_idx and target_w"):
        head.loss(torch.randn(2, D), torch.zeros(2, 2, dtype=torch.long), torch.ones(2, 3))
    with pytest.raises(ValueError, match="rows but feats"):
        head.loss(torch.randn(3, D), torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1))
    with pytest.raises(ValueError, match="label_smoothing"):
        head.loss(torch.randn(2, D), torch.zeros(2, 1, dtype=torch.long), torch.ones(2, 1), 1.0)


# --------------------------------------------------------------------------- sharded, world 1


@pytest.mark.parametrize("kind", KINDS)
def test_world_one_sharded_head_equals_full_head(kind: str) -> None:
    p = _problem(kind)
    full, sharded = _full_run(kind), _sharded_head(kind, p)
    assert (sharded.start, sharded.end, sharded.world) == (0, C, 1)
    feats = p["feats"].clone().requires_grad_()
    loss, metrics = sharded.loss(feats, p["idx"], p["w"], label_smoothing=EPS)
    loss.backward()
    torch.testing.assert_close(loss.detach(), full["loss"], **TOL)
    torch.testing.assert_close(metrics["train_top1"], full["top1"])
    torch.testing.assert_close(sharded.weight.grad, full["weight_grad"], **TOL)
    torch.testing.assert_close(feats.grad, full["feats_grad"], **TOL)
    if kind == "linear":
        torch.testing.assert_close(sharded.bias.grad, full["bias_grad"], **TOL)
    exported = sharded.to_full_head()
    torch.testing.assert_close(exported.logits(p["feats"]), _full_head(kind, p).logits(p["feats"]))


def test_sharded_head_rejects_margin_on_linear_and_unknown_kind() -> None:
    with pytest.raises(ValueError, match=r"margin.*kind='cosine'"):
        ShardedHead(D, C, kind="linear", margin=0.1)
    with pytest.raises(ValueError, match="kind"):
        ShardedHead(D, C, kind="arcface")  # type: ignore[arg-type]


def test_sharded_head_defaults_and_initial_weights_match_the_linear_head() -> None:
    """Without a process group: a linear head (with a bias) at scale 16 and no margin, its
    weights drawn with LinearHead's standard deviation 1/sqrt(dim)."""
    torch.manual_seed(0)
    head = ShardedHead(256, 2000)
    assert (head.kind, head.scale, head.margin, head.start, head.end) == (
        "linear", 16.0, 0.0, 0, 2000)
    assert head.bias is not None and torch.equal(head.bias, torch.zeros(2000))
    assert float(head.weight.detach().std()) == pytest.approx(256 ** -0.5, rel=0.02)
    assert abs(float(head.weight.detach().mean())) < 0.002


# --------------------------------------------------------------------------- sharded, 2 ranks


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_sharded_loss_and_metric_equal_full_head(ranks: list[dict], kind: str) -> None:
    full = _full_run(kind)
    assert [(r[kind]["start"], r[kind]["end"]) for r in ranks] == [(0, 6), (6, 11)]
    for r in ranks:
        torch.testing.assert_close(r[kind]["loss"], full["loss"], **TOL)
        torch.testing.assert_close(r[kind]["top1"], full["top1"])
    assert float(full["top1"]) > 0


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_sharded_grads_are_slices_of_full_grads(ranks: list[dict], kind: str) -> None:
    full = _full_run(kind)
    for rank, r in enumerate(ranks):
        rows = slice(r[kind]["start"], r[kind]["end"])
        torch.testing.assert_close(r[kind]["weight_grad"], full["weight_grad"][rows], **TOL)
        if kind == "linear":
            torch.testing.assert_close(r[kind]["bias_grad"], full["bias_grad"][rows], **TOL)
        batch = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
        torch.testing.assert_close(r[kind]["feats_grad"], WORLD * full["feats_grad"][batch],
                                   **TOL)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_full_state_dict_round_trip_and_trained_export(ranks: list[dict], kind: str) -> None:
    full = _full_run(kind)
    keys = ("weight", "bias") if kind == "linear" else ("weight",)
    for r in ranks:
        assert set(r[kind]["loaded"]) == set(keys)
        for key in keys:
            torch.testing.assert_close(r[kind]["loaded"][key], full[key], atol=0, rtol=0)
            stepped = full[key] - LR * full[f"{key}_grad"]
            torch.testing.assert_close(r[kind]["trained"][key], stepped, **TOL)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_ddp_tower_grads_equal_single_process_full_batch(ranks: list[dict], kind: str) -> None:
    p = _problem(kind)
    tower = nn.Linear(D_IN, D)
    tower.load_state_dict({"weight": p["tower_w"], "bias": p["tower_b"]})
    loss, _ = _full_head(kind, p).loss(tower(p["x"]), p["idx"], p["w"], label_smoothing=EPS)
    loss.backward()
    for r in ranks:
        torch.testing.assert_close(r[f"ddp_{kind}"]["weight"], tower.weight.grad, **TOL)
        torch.testing.assert_close(r[f"ddp_{kind}"]["bias"], tower.bias.grad, **TOL)


@pytest.mark.slow
def test_unequal_local_batches_raise_on_every_rank(ranks: list[dict]) -> None:
    for r in ranks:
        assert "equal local batch sizes" in r["uneven_error"]
        assert "[3, 2]" in r["uneven_error"]


@pytest.mark.parametrize("kind", KINDS)
def test_no_smoothing_by_default_and_the_export_keeps_scale_and_margin(kind: str) -> None:
    p = _problem(kind)
    sharded, full = _sharded_head(kind, p), _full_head(kind, p)
    loss, _ = sharded.loss(p["feats"], p["idx"], p["w"])
    want, _ = full.loss(p["feats"], p["idx"], p["w"], label_smoothing=0.0)
    torch.testing.assert_close(loss.detach(), want.detach(), **TOL)
    exported = sharded.to_full_head()
    torch.testing.assert_close(exported.loss(p["feats"], p["idx"], p["w"])[0].detach(),
                               want.detach(), **TOL)
    if kind == "cosine":
        assert (exported.scale, exported.margin) == (SCALE, MARGIN)
