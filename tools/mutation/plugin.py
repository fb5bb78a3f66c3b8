"""The pytest side of ``make mutation``: a plugin that only mutmut's runs load.

mutmut is told to pass ``-p tools.mutation.plugin`` (``[tool.mutmut]`` in pyproject.toml), and
the slow pass does the same; no other pytest run sees these hooks. mutmut names the mutant
under test in ``MUTANT_UNDER_TEST`` (set to ``""`` while its fork server collects the tests).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest


def pytest_configure(config):
    """Under make mutation: one torch thread per process (two mutants run at once on two cores,
    and no thread pool is left running in a process mutmut forks), and shard jobs in this
    process instead of a spawn pool -- mutmut sees which test calls which function only in its
    own process, and a stage's outputs are the same for any number of workers."""
    config.stash[_STARTED] = time.monotonic()
    if os.environ.get("MUTANT_UNDER_TEST"):
        import torch

        from mofi_core import parallel

        torch.set_num_threads(1)
        parallel.resolve_workers = lambda requested, jobs: 1


# the heavy packages mofi_core imports inside functions (seconds each: Great Expectations alone
# 2.6 s); under make mutation the fork server imports them once instead of every mutant's process
_FORK_SERVER_PRELOAD = ("great_expectations", "matplotlib.pyplot", "sklearn.linear_model",
                        "open_clip")


def pytest_collection_finish(session):
    """Under make mutation: mutmut's fork server imports and collects the tests once
    (collect-only; mutmut sets MUTANT_UNDER_TEST to "" for it, so the test is whether it is set
    at all), then forks one process per mutant. Here that server also imports the packages
    mofi_core imports lazily, then freezes its heap, so that the children's garbage collections
    (pytest runs two at exit) do not walk every object of torch, Great Expectations and the test
    modules: 0.52 -> 0.12 s of overhead per mutant, and ~2.6 s less for each validate mutant."""
    if "MUTANT_UNDER_TEST" not in os.environ or not session.config.option.collectonly:
        return
    import gc
    import importlib
    import threading

    import matplotlib

    matplotlib.use("Agg")  # as mofi_core's figures choose it
    for name in _FORK_SERVER_PRELOAD:
        importlib.import_module(name)
    if threading.active_count() != 1:  # a forked child gets no copy of another thread
        raise pytest.UsageError(
            f"preloading {_FORK_SERVER_PRELOAD} started threads "
            f"{[t.name for t in threading.enumerate()]}: mutmut forks every mutant from this "
            "process; drop the package that starts them from _FORK_SERVER_PRELOAD")
    gc.collect()
    gc.freeze()


_STARTED = pytest.StashKey[float]()
# mutmut's own phases (not one mutant's tests)
_MUTMUT_PHASES = ("", "stats", "list_all_tests", "mutant_generation", "fail")


def pytest_sessionfinish(session, exitstatus):
    """Under make mutation: each mutant's test time (pytest start to finish in its process) and
    exit status, one JSON line each in ``mutmut-timings.jsonl`` (the mutants/ folder), which
    the report sums per module. Lines of under 4 KiB appended with O_APPEND do not interleave
    between the processes that run at once."""
    name = os.environ.get("MUTANT_UNDER_TEST", "")
    if name in _MUTMUT_PHASES:
        return
    import json

    seconds = time.monotonic() - session.config.stash[_STARTED]
    line = json.dumps({"mutant": name, "seconds": round(seconds, 3), "exit": int(exitstatus)})
    with open("mutmut-timings.jsonl", "a", encoding="utf-8") as out:
        out.write(line + "\n")


def pytest_collection_modifyitems(config, items):
    """Under ``make mutation`` (mutmut names the mutant in MUTANT_UNDER_TEST) run the fastest
    tests first: mutmut stops at the first failure, so a mutant a quick test kills costs that
    test only. The times are those of mutmut's own first run (mutmut-stats.json)."""
    if os.environ.get("MUTANT_UNDER_TEST", "") in ("", "stats", "list_all_tests",
                                                    "mutant_generation"):
        return
    stats = Path("mutmut-stats.json")
    if not stats.is_file():
        return
    import json

    took = json.loads(stats.read_text(encoding="utf-8")).get("duration_by_test", {})
    items.sort(key=lambda item: took.get(item.nodeid, 0.0))
