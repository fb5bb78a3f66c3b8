"""``python -m tools.mutation``: run mutmut afresh, then score it per module.

Writes ``reports/mutation.json`` (every module's counts and every mutant no test kills, with
what it changes) and ``reports/mutation.md`` (the table docs/testing.md shows; ``python -m
tools.docs_results`` copies it there). Exits 1 when a module is under the goal or an entry of the
equivalent list is stale, after writing both. ``--score-only`` scores the last run again (after
editing the equivalent list) without re-running mutmut; ``--continue [--only MODULE ...]`` runs
the mutants the last run did not reach or did not kill (after new tests) and adds that run to
the record; ``--no-slow-pass`` scores without the slow_tests pass.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from importlib.metadata import version
from pathlib import Path

from tools.mutation.score import (
    EQUIVALENT,
    GOAL,
    KILLED,
    NOT_KILLED,
    NOT_RUN,
    SCOPE,
    config,
    in_scope,
    load_equivalents,
    load_scope,
    load_slow_tests,
    markdown,
    minutes_in_tests,
    module_of,
    patterns,
    raise_lines,
    score,
    statuses,
)

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = "tools.mutation.plugin"  # the hooks every mutant's pytest loads (pyproject.toml too)


def run_mutmut(root: Path, log: Path, names: list[str]) -> float:
    """``mutmut run NAMES`` in a fresh ``mutants/``; its progress goes to ``log``. Returns
    minutes."""
    shutil.rmtree(root / "mutants", ignore_errors=True)
    return rerun_mutmut(root, log, names)


def rerun_mutmut(root: Path, log: Path, names: list[str]) -> float:
    """``mutmut run NAMES`` in the existing ``mutants/`` (named mutants run again)."""
    mutmut = Path(sys.executable).with_name("mutmut")
    start = time.monotonic()
    print(f"mutmut run (progress in {log}) ...", flush=True)
    with log.open("w", encoding="utf-8") as out:
        done = subprocess.run([str(mutmut), "run", *names], cwd=root, stdout=out,
                              stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": ""})
    minutes = (time.monotonic() - start) / 60
    if done.returncode != 0:
        tail = log.read_text(encoding="utf-8", errors="replace")[-3000:]
        raise SystemExit(f"mutmut run failed ({done.returncode}) after {minutes:.1f} min; the "
                         f"end of {log}:\n{tail}")
    return minutes


def slow_pass(root: Path, found: dict[str, str], scope: dict, slow: dict[str, list[str]],
              workers: int | None = None) -> dict[str, str]:
    """The mutants no fast test killed, run once more, one process each, against their
    module's ``slow_tests`` (tests marked slow: a demo world or gloo processes). Results
    are kept in ``mutants/slow-pass.json``: a second call runs only what is new. ``workers``
    processes at once (default: one per core; each runs torch on one thread, as mutmut's do)."""
    record = root / "mutants" / "slow-pass.json"
    done = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    todo = [n for n, st in sorted(found.items()) if st in NOT_KILLED and n not in done
            and module_of(n) in slow and in_scope(n, scope)]

    def one(name: str) -> str:
        tests = slow[module_of(name)]
        try:
            ran = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p",
                                  "no:cacheprovider", "-p", PLUGIN, *tests],
                                 cwd=root / "mutants",
                                 capture_output=True, text=True, timeout=900,
                                 env={**os.environ, "MUTANT_UNDER_TEST": name,
                                      "PYTHONPATH": str(root / "mutants")})
        except subprocess.TimeoutExpired:
            return "timeout"
        if ran.returncode not in (0, 1):
            raise SystemExit(f"slow pass: pytest exited {ran.returncode} on {name} (tests "
                             f"{tests}); its output ends:\n{ran.stdout[-2000:]}")
        return "killed" if ran.returncode == 1 else "survived"

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        runs = {pool.submit(one, name): name for name in todo}
        try:
            for i, future in enumerate(as_completed(runs), 1):
                name = runs[future]
                done[name] = future.result()
                print(f"slow pass {i}/{len(todo)}: {name}: {done[name]}", flush=True)
                record.write_text(json.dumps(done, indent=1, sort_keys=True) + "\n",
                                  encoding="utf-8")
        except BaseException:  # a SystemExit of one run: the queued ones are not started
            pool.shutdown(cancel_futures=True)
            raise
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--score-only", action="store_true",
                    help="score the mutants/ of the last run again; do not run mutmut")
    ap.add_argument("--no-slow-pass", action="store_true",
                    help="score without running the slow_tests against the survivors")
    ap.add_argument("--continue", dest="resume", action="store_true",
                    help="continue the last run: the mutants in scope it did not reach or "
                         "did not kill (after new tests), the test selection collected afresh")
    ap.add_argument("--only", nargs="+", metavar="MODULE", default=None,
                    help="with --continue: only these modules (paths as in scope.yaml)")
    args = ap.parse_args(argv)
    if args.only and not args.resume:
        ap.error("--only goes with --continue")
    os.chdir(ROOT)  # mutmut reads pyproject.toml and mutants/ from the working directory
    reports = ROOT / "reports"
    reports.mkdir(exist_ok=True)
    previous = reports / "mutation.json"
    cfg = config(ROOT)
    scope = load_scope(ROOT / SCOPE, cfg["only_mutate"])
    from mutmut.stats import status_by_exit_code

    if args.score_only or args.resume:
        if not (ROOT / "mutants").is_dir() or not previous.is_file():
            raise SystemExit("no mutants/ or reports/mutation.json: run make mutation first")
        record = json.loads(previous.read_text())
        runs = record["runs"]
        before = (record.get("slow_pass") or {}).get("minutes", 0.0)
        if args.resume:
            only = set(args.only or scope)
            if only - set(scope):
                ap.error(f"--only {sorted(only - set(scope))}: not modules of {SCOPE}")
            todo = [n for n, st in statuses(ROOT / "mutants", status_by_exit_code.__getitem__)
                    .items() if st in NOT_RUN | NOT_KILLED and in_scope(n, scope)
                    and module_of(n) in only]
            (ROOT / "mutants" / "mutmut-stats.json").unlink(missing_ok=True)  # new tests
            took = rerun_mutmut(ROOT, ROOT / "mutants.log", todo)
            runs = [*runs, {"mutants": len(todo), "minutes": round(took, 1)}]
    else:
        took = run_mutmut(ROOT, ROOT / "mutants.log", patterns(scope))
        runs = [{"mutants": "all in scope", "minutes": round(took, 1)}]
        before = 0.0

    from mutmut.mutation.diff_apply import get_diff_for_mutant

    found = statuses(ROOT / "mutants", status_by_exit_code.__getitem__)
    start = time.monotonic()
    slow = {} if args.no_slow_pass else slow_pass(ROOT, found, scope,
                                                  load_slow_tests(ROOT / SCOPE))
    slow_minutes = before + (time.monotonic() - start) / 60  # the record's passes, summed
    found.update(slow)
    equivalents = load_equivalents(ROOT / EQUIVALENT)
    messages = {m: raise_lines((ROOT / m).read_text(encoding="utf-8")) for m in scope}
    scores, stale = score(scope, found, get_diff_for_mutant, equivalents, messages)
    meta = {"mutmut": version("mutmut"), "runs": runs,
            "minutes": round(sum(r["minutes"] for r in runs), 1),
            "machine": f"{os.cpu_count()} cores, {platform.machine()}",
            "tests": len(cfg["pytest_add_cli_args_test_selection"]),
            "slow_pass": None if args.no_slow_pass else {
                "rerun": len(slow), "killed": sum(v in KILLED for v in slow.values()),
                "minutes": round(slow_minutes, 1)},
            "test_minutes": minutes_in_tests(ROOT / "mutants")}
    previous.write_text(json.dumps({**meta, "goal": GOAL, "modules": [s.as_dict() for s in scores],
                                    "stale_equivalents": [vars(e) for e in stale]}, indent=2)
                        + "\n", encoding="utf-8")
    text = markdown(scores, stale, meta)
    (reports / "mutation.md").write_text(text, encoding="utf-8")
    print(text)
    for s in scores:
        for v in s.survivors:
            print(f"not killed: {v['mutant']} ({v['status']}): {v['from']!r} -> {v['to']!r}")
    under = [s.module for s in scores if s.verdict != "met"]
    if under or stale:
        print(f"goal {GOAL:.0%} not met by {under}; stale equivalents: {len(stale)}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
