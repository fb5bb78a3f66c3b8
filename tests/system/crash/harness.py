"""Kill -9 harness: every DVC stage is killed at several points and re-run; the re-run must
complete with outputs byte-identical to an uninterrupted run.

For a project copy (tiny params, tracking on), the harness

1. runs each stage once uninterrupted (``dvc repro -s -f <stage>``), polling its outputs and
   state folder to learn *when* files appear, and keeps the md5 of every output from dvc.lock;
2. for each kill point: clears the stage's resume state (so the killed run does the real work),
   starts the stage, SIGKILLs its whole process group at the chosen moment, then checks that
   no file under a final output name is partial (parquet/tar/json/safetensors/png parse);
3. re-runs the stage to completion and checks: dvc.lock hashes equal the uninterrupted run's,
   no temporary file is left, and no MLflow run is still 'RUNNING' (the killed run's must have
   been ended FAILED by the re-run).

Kill points are drawn from a seeded generator: most at moments a file appeared in the reference
run (jittered by up to 150 ms: the windows where a partial file could become visible), the rest
uniform over the stage's duration.

    python -m tests.system.crash.harness --points 3 --seed 0 --out crash-report.json [stages...]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Outputs that are not byte-reproducible by nature: compared by existence only.
NONDETERMINISTIC = {"reports/data_docs"}  # great-expectations HTML embeds run timestamps
# Tiny world + checkpoints every few steps, so that training stages have something to resume.
CRASH_PARAMS = {"runtime.baseline.checkpoint_every": 5, "runtime.train.checkpoint_every": 5,
                "baseline.steps": 30, "train.steps": 30}


@dataclass
class PointResult:
    stage: str
    kill_at: float
    killed: bool
    partial_files: list[str] = field(default_factory=list)
    rerun_ok: bool = False
    rerun_error: str = ""
    hash_mismatches: list[str] = field(default_factory=list)
    temp_leftovers: list[str] = field(default_factory=list)
    running_mlflow_runs: int = 0
    orphans_ended: int = 0

    @property
    def survived(self) -> bool:
        return (self.killed and self.rerun_ok and not self.partial_files
                and not self.hash_mismatches and not self.temp_leftovers
                and self.running_mlflow_runs == 0)


def stage_outs(root: Path) -> dict[str, list[str]]:
    """Each DVC stage's outputs (train@<recipe>: one per listed recipe)."""
    from mofi_core import stages
    from mofi_core.config.load import load_params

    lookup = load_params(root / "params.yaml").value
    return {spec.address: list(spec.tracked()) for spec in stages.expand(lookup)}


def lock_hashes(root: Path, stage: str) -> dict[str, str]:
    lock = yaml.safe_load((root / "dvc.lock").read_text())
    return {o["path"]: o.get("md5", "") for o in lock["stages"][stage].get("outs", [])}


def _files(root: Path, rels: list[str]) -> list[Path]:
    found = []
    for rel in rels:
        p = root / rel
        if p.is_file():
            found.append(p)
        elif p.is_dir():
            found += [f for f in p.rglob("*") if f.is_file()]
    return found


def is_partial(path: Path) -> str | None:
    """Why ``path`` is not a complete file of its kind, or None. Temporaries are not final
    names and are skipped."""
    if ".tmp-" in path.name or path.name.endswith(".tmp") or ".tmp/" in path.as_posix():
        return None
    try:
        suffix = path.suffix
        if suffix == ".parquet":
            import pyarrow.parquet as pq
            pq.read_table(path)
        elif suffix == ".tar":
            from mofi_core.io.shards import iter_samples
            for _ in iter_samples(path):
                pass
        elif suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif suffix == ".safetensors":
            from safetensors import safe_open
            with safe_open(str(path), "pt") as fh:
                for k in fh.keys():
                    fh.get_tensor(k)
        elif suffix in (".png", ".jpg"):
            from PIL import Image
            with Image.open(path) as img:
                img.load()
        elif suffix in (".csv", ".md") and not path.read_bytes().endswith(b"\n"):
            return "text file does not end in a newline"
    except Exception as err:  # any parser failure means the file is not complete
        return f"{type(err).__name__}: {err}"
    return None


class Watcher(threading.Thread):
    """Records when each path under ``folders`` first appears (seconds since start)."""

    def __init__(self, folders: list[Path]) -> None:
        super().__init__(daemon=True)
        self.folders, self.seen, self.stop = folders, {}, threading.Event()
        self.start_time = time.perf_counter()

    def run(self) -> None:
        while not self.stop.is_set():
            now = time.perf_counter() - self.start_time
            for folder in self.folders:
                if folder.exists():
                    for p in [folder, *folder.rglob("*")] if folder.is_dir() else [folder]:
                        self.seen.setdefault(p, now)
            time.sleep(0.02)


class Harness:
    def __init__(self, root: Path, env: dict[str, str], log=print) -> None:
        self.root, self.env, self.log = root, env, log
        self.outs = stage_outs(root)
        self.reference: dict[str, dict] = {}

    def _cmd(self, stage: str) -> list[str]:
        return ["dvc", "repro", "--single-item", "--force", stage]

    def _state(self, stage: str) -> Path:
        return self.root / ".mofi" / "state" / stage

    def _watched(self, stage: str) -> list[Path]:
        return [self.root / p for p in self.outs[stage]] + [self._state(stage)]

    STORE = ("mlflow.db", "mlartifacts")  # the project's MLflow store (mofi_core.tracking)

    def _snapshot_registry(self, stage: str) -> None:
        """``register`` keeps its state in the MLflow store: keep the store as it was before
        the stage's first run, so every killed run registers from scratch."""
        import shutil

        saved = self.root.parent / "mlflow-before-register"
        if stage != "register" or saved.exists():
            return
        saved.mkdir()
        for name in self.STORE:
            src = self.root / name
            if src.is_dir():
                shutil.copytree(src, saved / name)
            elif src.is_file():
                shutil.copy2(src, saved / name)

    def _restore_registry(self, stage: str) -> None:
        import shutil

        saved = self.root.parent / "mlflow-before-register"
        if stage != "register" or not saved.exists():
            return
        for name in self.STORE:
            dest = self.root / name
            if dest.is_dir():
                shutil.rmtree(dest)
            elif dest.exists():
                dest.unlink()
            if (saved / name).is_dir():
                shutil.copytree(saved / name, dest)
            elif (saved / name).is_file():
                shutil.copy2(saved / name, dest)

    def run_reference(self, stage: str) -> dict:
        self._snapshot_registry(stage)
        watcher = Watcher(self._watched(stage))
        watcher.start()
        start = time.perf_counter()
        proc = subprocess.run(self._cmd(stage), cwd=self.root, env=self.env,
                              capture_output=True, text=True)
        duration = time.perf_counter() - start
        watcher.stop.set()
        watcher.join()
        if proc.returncode != 0:
            raise RuntimeError(f"uninterrupted run of {stage} failed:\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-3000:]}")
        # the killed run can be faster than this first one (warm caches): stay well inside it
        events = sorted(t for t in watcher.seen.values() if 0.3 < t < 0.8 * duration)
        ref = {"duration": duration, "events": events, "hashes": lock_hashes(self.root, stage)}
        self.reference[stage] = ref
        return ref

    def kill_points(self, stage: str, n: int, rng: random.Random) -> list[float]:
        ref = self.reference[stage]
        events, d = ref["events"], ref["duration"]
        points = []
        for i in range(n):
            if events and i % 2 == 0:  # 1st, 3rd, ...: where a file appeared
                t = rng.choice(events) + rng.uniform(-0.15, 0.15)
            else:
                t = rng.uniform(0.15 * d, 0.8 * d)
            points.append(round(min(max(t, 0.3), 0.8 * d), 3))
        return sorted(points)

    def _running_runs(self) -> int:
        db = self.root / "mlflow.db"
        if not db.exists():
            return 0
        import sqlite3
        with sqlite3.connect(db) as con:
            return con.execute("select count(*) from runs where status = 'RUNNING'").fetchone()[0]

    def kill_and_rerun(self, stage: str, kill_at: float) -> PointResult:
        import shutil

        shutil.rmtree(self._state(stage), ignore_errors=True)
        self._restore_registry(stage)
        proc = subprocess.Popen(self._cmd(stage), cwd=self.root, env=self.env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        try:
            proc.wait(timeout=kill_at)
            killed = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            killed = True
        res = PointResult(stage=stage, kill_at=kill_at, killed=killed)
        for f in _files(self.root, self.outs[stage]):
            why = is_partial(f)
            if why:
                res.partial_files.append(f"{f.relative_to(self.root)}: {why}")
        running_before = self._running_runs()
        rerun = subprocess.run(self._cmd(stage), cwd=self.root, env=self.env,
                               capture_output=True, text=True)
        res.rerun_ok = rerun.returncode == 0
        if not res.rerun_ok:
            res.rerun_error = (rerun.stdout[-2000:] + rerun.stderr[-2000:]).strip()
            return res
        now = lock_hashes(self.root, stage)
        for path, md5 in self.reference[stage]["hashes"].items():
            if path not in NONDETERMINISTIC and now.get(path) != md5:
                res.hash_mismatches.append(f"{path}: {now.get(path)} != {md5}")
        res.temp_leftovers = [str(p.relative_to(self.root)) for d in
                              ("data", "models", "reports", "metrics", "plots", ".mofi")
                              for p in (self.root / d).rglob("*.tmp-*")] \
            if (self.root / "data").exists() else []
        res.running_mlflow_runs = self._running_runs()
        res.orphans_ended = running_before - res.running_mlflow_runs
        return res


def make_project(dest: Path, overrides: dict) -> tuple[Path, dict[str, str]]:
    from flows.pipeline import write_overrides
    from tests.conftest import TINY, copy_project

    root = copy_project(dest)
    write_overrides(root / "params.yaml", {**TINY, **overrides})
    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_TRACKING_URI", "PREFECT_API_URL", "MOFI_PARENT_RUN_ID")}
    env.update({"PATH": f"{BIN}{os.pathsep}{env['PATH']}", "MOFI_TRACKING": "on",
                "MLFLOW_DISABLE_TELEMETRY": "true", "GX_ANALYTICS_ENABLED": "false",
                "DO_NOT_TRACK": "1", "HF_HUB_OFFLINE": "1",
                "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
    return root, env


def run_harness(dest: Path, stages: list[str] | None, points: int, seed: int,
                log=print) -> dict:
    from flows.pipeline import stage_order

    root, env = make_project(dest, CRASH_PARAMS)
    h = Harness(root, env, log)
    order = stage_order(root / "dvc.yaml")
    wanted = stages or order
    rng = random.Random(seed)
    results: list[PointResult] = []
    for stage in order:
        ref = h.run_reference(stage)
        log(f"{stage}: uninterrupted {ref['duration']:.1f} s, {len(ref['events'])} file events")
        if stage not in wanted:
            continue
        for t in h.kill_points(stage, points, rng):
            r = h.kill_and_rerun(stage, t)
            for _ in range(2):  # the run beat its kill (a busy machine slowed the reference)
                if r.killed:
                    break
                t = round(t / 2, 3)
                r = h.kill_and_rerun(stage, t)
            results.append(r)
            log(f"  kill at {t:.2f} s: {'survived' if r.survived else 'FAILED'}"
                + ("" if r.killed else " (finished before the kill)")
                + (f"; partial {r.partial_files}" if r.partial_files else "")
                + (f"; rerun error {r.rerun_error[-500:]}" if r.rerun_error else "")
                + (f"; hash mismatch {r.hash_mismatches}" if r.hash_mismatches else "")
                + (f"; temp left {r.temp_leftovers}" if r.temp_leftovers else "")
                + (f"; {r.running_mlflow_runs} MLflow runs RUNNING" if r.running_mlflow_runs
                   else ""))
    killed = [r for r in results if r.killed]
    return {"seed": seed, "points_per_stage": points,
            "stages": {s: {"seconds": round(h.reference[s]["duration"], 1)} for s in wanted},
            "kill_points": len(killed), "survived": sum(r.survived for r in killed),
            "finished_before_kill": len(results) - len(killed),
            "orphan_runs_ended": sum(r.orphans_ended for r in killed),
            "failures": [asdict(r) for r in killed if not r.survived],
            "points": [{"stage": r.stage, "kill_at": r.kill_at, "killed": r.killed,
                        "survived": r.survived} for r in results]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("stages", nargs="*", help="stages to kill (default: all)")
    ap.add_argument("--points", type=int, default=3, help="kill points per stage")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workdir", type=Path, default=None, help="default: a new temp folder")
    ap.add_argument("--out", type=Path, default=Path("crash-report.json"))
    args = ap.parse_args()
    import tempfile

    work = args.workdir or Path(tempfile.mkdtemp(prefix="mofi-crash-"))
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    report = run_harness(work, args.stages or None, args.points, args.seed)
    report["wall_seconds"] = round(time.perf_counter() - start, 1)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{report['survived']} of {report['kill_points']} kill points survived "
          f"({report['finished_before_kill']} runs finished before their kill), "
          f"{report['orphan_runs_ended']} orphan MLflow runs ended; report: {args.out}")
    sys.exit(0 if report["survived"] == report["kill_points"] else 1)


if __name__ == "__main__":
    main()
