"""``make bench``: every benchmark in one run, one results file, a table and plots.

    python benchmarks/suite.py                 # the full suite (hours on 2 CPU cores)
    python benchmarks/suite.py --quick         # smaller inputs, no 1M run, no demo
    python benchmarks/suite.py --only ratios   # one part: ratios | demo | scaling | kb_scale

Parts:
- ``ratios``: each stage against its raw baseline in the same process, median of >= 5 repeats
  (bench_ingest, bench_ner, bench_score with the demo's mofi-tiny and with ViT-B-32,
  bench_train, bench_train_stage (the whole train/baseline stage against 1.25 x its bare
  fwd/bwd/step loop + 10 s), bench_retrieval, bench_world, bench_publish against a loopback S3
  server);
- ``demo``: the whole pipeline (the Prefect flow over ``dvc repro``, as ``make demo``) in a
  fresh copy of the project, with each stage's time;
- ``scaling``: time and peak RSS of generate, kb, ingest, decontam, ner, score, build and
  evaluate at 1k, 10k and 100k images, and of generate and ingest at 1M (bench_curate_scaling);
- ``kb_scale``: one world of 1M images through kb, ner, score, build and validate against KBs of
  200 to 2,000,000 entities, with the labels against the world's truth (bench_kb_scale; hours,
  resumable: ``--only kb_scale`` again picks up where it stopped).

Each benchmark runs in its own process and writes JSON; this script gathers them into
``benchmarks/results.json`` after every part (a part that fails is recorded with its error and
the others still run), then ``report.py`` writes ``benchmarks/results.md``, the PNG plots in
``benchmarks/plots/`` and the table in ``benchmarks/README.md``, and prints every target with
MET / MISSED; ``billion.py`` then turns the measured throughputs into what a billion images
would cost (``docs/scale.md``). Timing needs a quiet machine: nothing else should run meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results.json"

# (name, script, arguments: full suite, arguments: quick)
RATIOS = (
    ("ingest", "bench_ingest.py", ["--samples", "6000", "--repeats", "5"],
     ["--samples", "2000", "--repeats", "5"]),
    ("ner", "bench_ner.py", ["--samples", "6000", "--repeats", "5"],
     ["--samples", "2000", "--repeats", "5"]),
    ("score", "bench_score.py", ["--samples", "4000", "--repeats", "5"],
     ["--samples", "1000", "--repeats", "5"]),
    ("score_vit_b32", "bench_score.py",
     ["--arch", "ViT-B-32", "--samples", "800", "--batch-size", "50", "--repeats", "5"],
     ["--arch", "ViT-B-32", "--samples", "200", "--batch-size", "50", "--repeats", "5"]),
    ("train", "bench_train.py", ["--steps", "30", "--repeats", "5"],
     ["--steps", "10", "--repeats", "5"]),
    # the demo's steps (train.steps 600): the budget is stated for those
    ("train_stage", "bench_train_stage.py",
     ["--recipe", "supervised", "--steps", "600", "--repeats", "2"],
     ["--recipe", "supervised", "--steps", "300", "--samples", "3000", "--repeats", "3"]),
    # the same stage streaming its shards (train.data_in_memory: false): expected to miss the
    # budget on a small CPU host, which is why the in-memory path (train/memory.py) exists
    ("train_stage_streaming", "bench_train_stage.py",
     ["--recipe", "supervised", "--steps", "600", "--repeats", "2", "--data-in-memory", "false"],
     ["--recipe", "supervised", "--steps", "300", "--samples", "3000", "--repeats", "3",
      "--data-in-memory", "false"]),
    ("train_stage_clip", "bench_train_stage.py",
     ["--recipe", "clip", "--steps", "600", "--repeats", "2"],
     ["--recipe", "clip", "--steps", "300", "--samples", "3000", "--repeats", "3"]),
    ("retrieval", "bench_retrieval.py",
     ["--images", "12000", "--loop-queries", "600", "--repeats", "5"],
     ["--images", "4000", "--loop-queries", "400", "--repeats", "5"]),
    ("world", "bench_world.py", ["--sizes", "5000", "--stage-repeats", "5"],
     ["--sizes", "2000", "--stage-repeats", "5"]),
    ("publish", "bench_publish.py", ["--files", "1000", "--repeats", "5"],
     ["--files", "300", "--repeats", "5"]),
)


def machine() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(mem_gb, 1),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "torch": torch.__version__,
            "os": platform.platform()}


def _env(tracking: bool = False) -> dict:
    """Benchmarks run untracked; the demo tracks as ``make demo`` does (register needs it)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1",
           "PYTHONUNBUFFERED": "1", "MOFI_TRACKING": "on" if tracking else "off"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _bench(script: str, args: list[str], out: Path, timeout: int) -> dict:
    cmd = [sys.executable, str(HERE / script), *args, "--json", str(out)]
    print(f"$ {' '.join(cmd[1:])}", flush=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=HERE, env=_env(), timeout=timeout, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    print(proc.stdout, flush=True)
    if proc.returncode:
        raise RuntimeError(f"{script} exited {proc.returncode}: {proc.stdout[-1500:]}")
    result = json.loads(out.read_text(encoding="utf-8"))
    result["wall_s"] = round(time.perf_counter() - start, 1)
    return result


def stamp_now() -> str:
    """When and where: the mark of a result measured apart from the suite's own run."""
    return f"{datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} on {machine()['cpu']}"


def run_ratios(quick: bool, tmp: Path, names: list[str] | None = None,
               earlier: dict | None = None, stamp: str = "") -> dict:
    """Every ratio benchmark; or, with ``names``, those merged into ``earlier``. A ``stamp``
    (a run apart from the suite's) marks each result with when and where it ran."""
    out = dict(earlier or {}) if names else {}
    for name, script, full, small in RATIOS:
        if names and name not in names:
            continue
        try:
            out[name] = _bench(script, small if quick else full, tmp / f"{name}.json", 3600)
            if stamp:
                out[name]["measured"] = stamp
        except Exception as err:  # recorded, reported as a failed benchmark; the rest still run
            out[name] = {"bench": name, "error": str(err)}
            print(f"{name}: FAILED: {err}", flush=True)
    return out


def copy_project(dest: Path) -> Path:
    """The git-tracked project files in ``dest`` as a fresh git repository (DVC needs one)."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                           check=True).stdout.split()
    for f in files:
        if f.startswith(("data/", "models/", "metrics/", "plots/", "mlruns/")):
            continue
        (dest / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, dest / f)
    (dest / "dvc.lock").unlink(missing_ok=True)  # nothing cached: every stage runs
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit",
                 "-qm", "bench copy"]):
        subprocess.run(cmd, cwd=dest, check=True)
    return dest


DEMO = """
import json, sys
from flows.mofi_flow import mofi
summary = mofi(project_dir=sys.argv[1])
print("MOFI-SUMMARY " + json.dumps({"stages": summary["stages"],
      "models": summary.get("models") or {}}))
"""


def run_demo(tmp: Path) -> dict:
    project = copy_project(tmp / "demo")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", DEMO, str(project)], cwd=project,
                          env=_env(tracking=True),
                          text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          timeout=3600)
    total = time.perf_counter() - start
    line = next((x for x in proc.stdout.splitlines() if x.startswith("MOFI-SUMMARY ")), None)
    if proc.returncode or line is None:
        raise RuntimeError(f"the demo run failed ({proc.returncode}): {proc.stdout[-2000:]}")
    summary = json.loads(line.removeprefix("MOFI-SUMMARY "))
    stages = {s["stage"]: s["seconds"] for s in summary["stages"]}
    print(f"demo: {total:.0f} s; " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()))
    return {"total_s": total, "stages_s": stages, "target_s": 600,
            "gpr_map": {k: m.get("gpr_map") for k, m in summary["models"].items()}}


def run_kb_scale(quick: bool, tmp: Path, images: int | None, sizes: list[int] | None) -> dict:
    """bench_kb_scale.py: one world through the curation against KBs of growing size; its
    work folder (``.mofi/bench-kb-scale``) keeps finished steps, so a stopped run resumes."""
    args = ["--workdir", str(ROOT / ".mofi" / "bench-kb-scale")] + (["--quick"] if quick else [])
    args += ["--images", str(images)] if images else []
    args += ["--kb", *map(str, sizes)] if sizes else []
    return _bench("bench_kb_scale.py", args, tmp / "kb_scale.json", 12 * 3600)


def run_scaling(quick: bool, tmp: Path, stages: list[str] | None = None,
                earlier: dict | None = None) -> dict:
    """All stages; or, with ``stages``, those (and their inputs) merged into ``earlier``."""
    args = ["--sizes", "1000", "10000"] if quick else ["--sizes", "1000", "10000", "100000"]
    if not quick and (not stages or {"generate", "ingest"} & set(stages)):
        args += ["--big", "1000000"]  # the 1M run only when generate or ingest is measured
    if stages:
        args += ["--stages", *stages]
    fresh = _bench("bench_curate_scaling.py", [*args, "--workdir", str(tmp)],
                   tmp / "scaling.json", 4 * 3600)
    if not stages or not earlier or "rows" not in earlier:
        return fresh
    sys.path.insert(0, str(HERE))
    from bench_curate_scaling import STAGES, summarise

    redone = {(r["stage"], r["images"]) for r in fresh["rows"]}
    rows = sorted([r for r in earlier["rows"] if (r["stage"], r["images"]) not in redone]
                  + fresh["rows"],
                  key=lambda r: (STAGES.index(r["stage"]), r["images"]))
    return {"rows": rows, "summary": summarise(rows)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smaller inputs, no 1M run, no demo")
    ap.add_argument("--only", nargs="+", choices=("ratios", "demo", "scaling", "kb_scale"),
                    help="run these parts; the others keep their earlier results")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--no-page", action="store_true",
                    help="leave benchmarks/README.md (the table) as it is")
    ap.add_argument("--ratios", nargs="+", choices=[r[0] for r in RATIOS],
                    help="with --only ratios: re-run these, keep the others' earlier results")
    ap.add_argument("--scaling-stages", nargs="+", metavar="STAGE",
                    help="with --only scaling: re-measure these stages (and their inputs), "
                         "keep the other stages' earlier rows")
    ap.add_argument("--kb-images", type=int, default=None,
                    help="kb_scale: the world's images (default 1M; 20k with --quick)")
    ap.add_argument("--kb-sizes", type=int, nargs="+", default=None,
                    help="kb_scale: the KB sizes (default 200 20000 200000 2000000)")
    args = ap.parse_args()
    parts = args.only or (["ratios", "scaling", "kb_scale"] if args.quick
                          else ["ratios", "demo", "scaling", "kb_scale"])
    results = json.loads(args.out.read_text(encoding="utf-8")) \
        if args.only and args.out.exists() else {}
    partial = bool(args.only)  # keeps the header of the run its other rows come from; what
    if not partial:  # it re-measures is stamped with its own date and machine instead
        results.update({"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
                        "machine": machine(), "quick": args.quick})
    with tempfile.TemporaryDirectory(prefix="mofi-bench-") as tmp:
        for part in parts:
            start = time.perf_counter()
            stamp = stamp_now() if partial else ""
            try:
                if part == "ratios":
                    results["ratios"] = run_ratios(args.quick, Path(tmp), args.ratios,
                                                   results.get("ratios"), stamp)
                elif part == "demo":
                    results["demo"] = run_demo(Path(tmp))
                elif part == "kb_scale":
                    results["kb_scale"] = run_kb_scale(args.quick, Path(tmp), args.kb_images,
                                                       args.kb_sizes)
                else:
                    results["scaling"] = run_scaling(args.quick, Path(tmp), args.scaling_stages,
                                                     results.get("scaling"))
                # one stamp per part: with --scaling-stages its kept rows are not told apart
                if stamp and part != "ratios":  # (ratios stamps each result it re-ran)
                    results[part]["measured"] = stamp
            except Exception as err:  # recorded in the results and the table; others still run
                results[part] = {"error": str(err)}
                print(f"{part}: FAILED: {err}", flush=True)
            results.setdefault("part_seconds", {})[part] = round(time.perf_counter() - start)
            args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    from billion import main as billion
    from report import main as report

    rc = report(["--results", str(args.out)] + (["--no-page"] if args.no_page else []))
    billion(["--results", str(args.out)] + (["--no-page"] if args.no_page else []))
    sys.exit(rc)


if __name__ == "__main__":
    main()
