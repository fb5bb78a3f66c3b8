"""iter_shards streams summaries in job order, skipping what a ResumeState says is done."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from mofi_core.parallel import ResumeState, ShardJob, iter_shards, run_shards
from tests.errors import names

CALLS: list[str] = []


def write_one(job: ShardJob, out: Path) -> tuple[list[Path], dict]:
    CALLS.append(job.name)
    path = out / f"{job.name}.txt"
    path.write_text(job.source)
    return [path], {"name": job.name, "chars": len(job.source)}


@pytest.fixture
def jobs() -> list[ShardJob]:
    CALLS.clear()
    return [ShardJob(f"{i:03d}", "x" * i, f"id{i}") for i in range(5)]


def test_summaries_arrive_one_job_at_a_time_in_job_order(tmp_path: Path, jobs) -> None:
    stream = iter_shards(partial(write_one, out=tmp_path), jobs, lambda j: [], None)
    job, summary, skipped = next(stream)
    assert (job.name, summary, skipped) == ("000", {"name": "000", "chars": 0}, False)
    assert CALLS == ["000"]  # the later jobs have not run: nothing is collected ahead
    rest = list(stream)
    assert [j.name for j, _, _ in rest] == ["001", "002", "003", "004"]
    assert CALLS == [j.name for j in jobs]


def test_done_jobs_yield_their_kept_summary_in_place(tmp_path: Path, jobs) -> None:
    fn = partial(write_one, out=tmp_path)
    outs = lambda j: [tmp_path / f"{j.name}.txt"]  # noqa: E731
    state = ResumeState(tmp_path / "state", "fp")
    run_shards(fn, jobs[1:4:2], outs, state)  # 001 and 003 done before
    CALLS.clear()
    got = list(iter_shards(fn, jobs, outs, state))
    assert [(j.name, skipped) for j, _, skipped in got] == [
        ("000", False), ("001", True), ("002", False), ("003", True), ("004", False)]
    assert [s["chars"] for _, s, _ in got] == [0, 1, 2, 3, 4]
    assert CALLS == ["000", "002", "004"]
    summaries, skipped = run_shards(fn, jobs, outs, state)
    assert skipped == 5 and [s["name"] for s in summaries] == [j.name for j in jobs]


# failures: one line naming the shard, whatever process it ran in --------------------------------

def fail_on_two(job: ShardJob) -> tuple[list[Path], dict]:
    if job.name == "002":
        raise ValueError("bad bytes in the KB file kb.parquet")
    return [], {}


def broken_setup(path: str) -> None:
    raise FileNotFoundError(f"spaCy pipeline not installed: {path}")


@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_job_is_one_line_naming_its_shard_and_keeps_its_type(jobs, workers, capfd):
    with pytest.raises(ValueError) as info:
        run_shards(fail_on_two, jobs, lambda j: [], None, workers)
    assert names(info.value, "kb.parquet").startswith(f"shard 002 ({'x' * 2}): ")
    assert "Traceback" not in capfd.readouterr().err  # no worker traceback on the terminal


def test_a_failing_worker_setup_is_one_line_not_a_broken_pool(jobs, capfd):
    from mofi_core.parallel import ShardJobError

    with pytest.raises(ShardJobError, match=r"worker set-up failed before shard \d+: "
                                            r"FileNotFoundError: spaCy pipeline not installed"):
        run_shards(fail_on_two, jobs, lambda j: [], None, 2, broken_setup, ("xx_model",))
    err = capfd.readouterr().err
    assert "Traceback" not in err and "BrokenProcessPool" not in err
