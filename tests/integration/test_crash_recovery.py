"""What the next run does after a process was killed outright (kill -9): MLflow runs left
RUNNING are ended FAILED, temporaries of dead processes are swept, live ones are kept."""

import os
import signal
import subprocess
import sys
import textwrap

import mlflow

from mofi_core import tracking
from mofi_core.io.atomic import atomic_path, sweep_stale_temps

HOLD_RUN = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mofi_core import tracking
    with tracking.run("ingest", Path(sys.argv[1]), tags={"mofi.stage": "ingest"}) as t:
        print(t.run_id, flush=True)
        time.sleep(600)
""")


def test_runs_of_killed_processes_are_ended_failed_by_the_next_run(tmp_path, monkeypatch):
    monkeypatch.setenv("MOFI_TRACKING", "on")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    tracking.configure(tmp_path)  # one process creates the store; two at once race on it
    victims = [subprocess.Popen([sys.executable, "-c", HOLD_RUN, str(tmp_path)],
                                stdout=subprocess.PIPE, text=True) for _ in range(2)]
    run_ids = [v.stdout.readline().strip() for v in victims]
    client = mlflow.MlflowClient()
    assert all(client.get_run(r).info.status == "RUNNING" for r in run_ids)
    victims[0].send_signal(signal.SIGKILL)
    victims[0].wait()
    try:
        with tracking.run("ner", tmp_path):
            pass
        dead, alive = (client.get_run(r) for r in run_ids)
        assert dead.info.status == "FAILED" and dead.info.end_time is not None
        assert "was gone" in dead.data.tags["mofi.ended_by"]
        assert alive.info.status == "RUNNING"  # its process still lives: not touched
        assert dead.data.tags["mofi.pid"] == str(victims[0].pid)
    finally:
        victims[1].kill()
        victims[1].wait()


def test_temporaries_of_dead_processes_are_swept_and_live_ones_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / "a" / "b" / f".00001.tar.tmp-{dead.pid}-0123abcd"
    stale_dir = tmp_path / "a" / f".i2e.tmp-{dead.pid}-4567abcd"
    live = tmp_path / "a" / f".x.parquet.tmp-{os.getpid()}-89abcdef"
    for p in (stale, live):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"partial")
    (stale_dir / "inner").mkdir(parents=True)
    final = tmp_path / "a" / "kept.json"
    with atomic_path(final) as tmp:
        tmp.write_text("{}")
    removed = sweep_stale_temps(tmp_path)
    assert sorted(removed) == sorted([stale, stale_dir])
    assert live.exists() and final.exists() and not stale.exists() and not stale_dir.exists()
