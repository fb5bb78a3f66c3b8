"""Progress lines where no terminal shows a bar (dvc repro, Prefect task logs, CI)."""

from __future__ import annotations

import io
import re

import pytest

from mofi_core.progress import ENV_VAR, Progress, format_duration, interval_from_env


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _progress(total=5000, unit="step", label="train", **kw):
    clock, out = FakeClock(), io.StringIO()
    p = Progress(label, total, unit, tty=False, stream=out, clock=clock, **kw)
    return p, clock, out


def _lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def test_a_line_every_n_seconds_with_count_fields_throughput_and_eta():
    p, clock, out = _progress(every_s=30)
    for t, done in [(10, 400), (29.9, 1190), (30, 1200), (45, 1800), (59, 2360)]:
        clock.now = 1000 + t
        p.update(done, loss=3.14159)
    # one line in the first 30 s (at 30 s), none until 30 s after it
    assert _lines(out) == ["train: step 1200/5000 (24%) loss 3.1416 | 40.0 step/s | ETA 1m35s"]
    clock.now = 1060
    p.update(2400, loss=2.5)
    assert _lines(out)[1] == "train: step 2400/5000 (48%) loss 2.5000 | 40.0 step/s | ETA 1m05s"
    clock.now = 1065  # 5 s later: rate-limited, but close always has the last word
    p.update(2500)  # fields are kept until given again
    p.close()
    p.close()  # only once
    assert _lines(out)[2:] == [
        "train: step 2500/5000 (50%) loss 2.5000 | 38.5 step/s | stopped after 1m05s"]


def test_resumed_items_count_towards_the_total_not_the_throughput():
    p, clock, out = _progress(start=1000, every_s=0)
    clock.now += 10
    p.update(1400)  # 400 steps in 10 s, whatever was done before the resume
    assert _lines(out) == ["train: step 1400/5000 (28%) | 40.0 step/s | ETA 1m30s"]

    p, clock, out = _progress(total=10, unit="shard", label="ingest", every_s=0)
    p.advance(3, resumed=True, kept=120)  # skipped shards, done by an earlier run
    clock.now += 4
    p.advance(kept=160)
    assert _lines(out) == [
        "ingest: shard 3/10 (30%) kept 120 | ? shard/s | ETA ?",
        "ingest: shard 4/10 (40%) kept 160 | 4.0 s/shard | ETA 24s"]


def test_unknown_total_has_no_percent_nor_eta_and_a_finished_run_says_done():
    p, clock, out = _progress(total=None, unit="image", label="embed", every_s=0)
    with p:
        clock.now += 10
        p.advance(64)
    assert _lines(out) == ["embed: image 64 | 6.4 image/s",
                           "embed: image 64 | 6.4 image/s | done in 10s"]
    p, clock, out = _progress(total=20, every_s=30)
    with p:
        clock.now += 3726
        p.update(20, loss=0.5)
    assert _lines(out) == ["train: step 20/20 (100%) loss 0.5000 | 186.3 s/step | ETA 0s",
                           "train: step 20/20 (100%) loss 0.5000 | 186.3 s/step | done in 1h02m"]


def test_durations():
    assert [format_duration(s) for s in (0, 14.4, 59.6, 92, 3599, 7500)] == [
        "0s", "14s", "1m00s", "1m32s", "59m59s", "2h05m"]


def test_interval_comes_from_the_environment(monkeypatch, capsys):
    monkeypatch.delenv(ENV_VAR, raising=False)
    assert interval_from_env() == 30
    monkeypatch.setenv(ENV_VAR, "0")  # a line at every update
    clock = FakeClock()
    p = Progress("score", 3, "shard", tty=False, clock=clock)  # default stream: sys.stdout
    for _ in range(3):
        p.advance(images=7)
    p.close()
    out = capsys.readouterr().out.splitlines()
    assert [line.split(" | ")[0] for line in out] == [
        "score: shard 1/3 (33%) images 7", "score: shard 2/3 (66%) images 7",
        "score: shard 3/3 (100%) images 7", "score: shard 3/3 (100%) images 7"]
    assert out[-1].endswith("| done in 0s")
    monkeypatch.setenv(ENV_VAR, "2.5")
    assert interval_from_env() == 2.5


@pytest.mark.parametrize("value", ["-1", "abc", "nan", "30s"])
def test_a_bad_interval_names_the_variable_and_what_to_set(monkeypatch, value):
    monkeypatch.setenv(ENV_VAR, value)
    with pytest.raises(ValueError, match=rf"{ENV_VAR}=.*set it to 0 .*positive number"):
        Progress("train", 10, enabled=False)  # every rank fails alike, printing or not


def test_disabled_is_silent(capsys):
    p, clock, out = _progress(every_s=0, enabled=False)
    with p:
        clock.now += 5
        p.update(10, loss=1.0)
    assert out.getvalue() == ""
    with Progress("train", 10, every_s=0, enabled=False, tty=True) as bar:  # no bar either
        bar.update(5)
    assert capsys.readouterr() == ("", "")


def test_a_terminal_gets_a_bar_on_stderr_and_no_lines(capsys):
    with Progress("train", 10, "step", every_s=0, tty=True) as p:
        p.update(5, loss=1.25)
        assert (p._bar.n, p._bar.postfix) == (5, "loss 1.2500")
    got = capsys.readouterr()
    assert got.out == ""
    assert "train" in got.err


def test_ingest_prints_progress_per_shard(tiny_world, tmp_path, monkeypatch, capsys):
    """A real stage function: lines counted in this process as the shard workers return."""
    from mofi_core.curate.ingest import ingest

    layout, params, _ = tiny_world
    monkeypatch.setenv(ENV_VAR, "0")
    result = ingest(layout.corpus_shards, tmp_path / "ingest", params.ingest)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("ingest: shard ")]
    n = result.shards
    assert n >= 2 and len(lines) == n + 1  # one per shard, then the last one
    assert [re.match(r"ingest: shard (\d+)/(\d+)", x).groups() for x in lines] == \
        [(str(i), str(n)) for i in [*range(1, n + 1), n]]
    assert lines[-1].startswith(f"ingest: shard {n}/{n} (100%) kept ")
    assert re.search(r"\| [\d.]+ (shard/s|s/shard) \| done in \d", lines[-1])


def test_the_train_loop_prints_step_loss_and_eta(truth_i2e, tmp_path, monkeypatch, capsys):
    from mofi_core.train.run import train_model

    layout, params, i2e = truth_i2e
    cfg = params.train.model_copy(update={"recipe": "supervised", "steps": 6, "batch_size": 8,
                                          "warmup_steps": 1, "log_every": 3, "num_workers": 0})
    monkeypatch.setenv(ENV_VAR, "0")
    train_model(i2e, tmp_path / "m", cfg, lambda s, r: None, kb_path=layout.kb)
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("train (")]
    assert len(lines) == 7, lines  # every step, then the last line
    assert lines[0].startswith("train (supervised): step 1/6 (16%) | ")
    assert " | ETA " in lines[0]
    assert re.match(r"train \(supervised\): step 3/6 \(50%\) loss \d+\.\d{4} \| "
                    r"[\d.]+ (step/s|s/step) \| ETA \d+s$", lines[2]), lines[2]
    assert re.match(r"train \(supervised\): step 6/6 \(100%\) loss \d+\.\d{4} \| .* \| "
                    r"done in \d+s$", lines[-1]), lines[-1]


def test_the_module_sits_at_the_bottom_of_the_package():
    from tests.conftest import ROOT
    from tools.dvc_yaml import imported_names

    names = imported_names(ROOT / "mofi_core" / "progress.py")
    assert [n for n in names if n == "mofi_core" or n.startswith("mofi_core.")] == []
