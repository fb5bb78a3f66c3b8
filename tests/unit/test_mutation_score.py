"""tools/mutation/score.py: how mutmut's results become the score per module."""

import json

import pytest

from tools.mutation.score import (
    Equivalent,
    change,
    function_of,
    in_scope,
    load_equivalents,
    load_scope,
    markdown,
    minutes_in_tests,
    module_of,
    patterns,
    score,
    statuses,
)

MOD = "mofi_core/evaluate/retrieval.py"
DIFFS = {
    "mofi_core.evaluate.retrieval.x_recall_at_k__mutmut_1":
        "--- a\n+++ b\n@@ -1,2 +1,2 @@\n def f():\n-    return hits >= k\n+    return hits > k",
    "mofi_core.evaluate.retrieval.x_recall_at_k__mutmut_2":
        "--- a\n+++ b\n@@ -1,2 +1,2 @@\n def f():\n-    k = 1\n+    k = 2",
    "mofi_core.evaluate.retrieval.xǁScanǁmean__mutmut_1":
        "--- a\n+++ b\n@@ -1 +1 @@\n-    return a + b\n+    return a - b",
}


def test_names_map_to_module_and_function():
    assert module_of("mofi_core.evaluate.retrieval.x_recall_at_k__mutmut_12") == MOD
    assert function_of("mofi_core.evaluate.retrieval.x_recall_at_k__mutmut_12") == "recall_at_k"
    assert function_of("mofi_core.evaluate.retrieval.x__prepare__mutmut_1") == "_prepare"
    assert function_of("mofi_core.evaluate.retrieval.xǁScanǁmean__mutmut_1") == "Scan.mean"


def test_change_is_the_removed_and_added_lines():
    assert change(DIFFS["mofi_core.evaluate.retrieval.x_recall_at_k__mutmut_1"]) == (
        "return hits >= k", "return hits > k")
    assert change("--- a\n+++ b\n-    x = 1\n-    y = 2\n+    x = 2") == ("x = 1 / y = 2", "x = 2")


def _found(**status):
    names = sorted(DIFFS)
    return {names[0]: status.get("a", "killed"), names[1]: status.get("b", "survived"),
            names[2]: status.get("c", "timeout")}


def test_score_counts_killed_timeouts_and_equivalents_and_lists_the_rest():
    eq = Equivalent(MOD, "recall_at_k", "k = 1", "k = 2", "k is overwritten below")
    (s,), stale = score({MOD: None}, _found(a="survived"), DIFFS.get, [eq])
    assert (s.mutants, s.killed, s.equivalent) == (3, 1, 1) and stale == []
    assert s.survivors == [{"mutant": sorted(DIFFS)[0], "status": "survived",
                            "from": "return hits >= k", "to": "return hits > k"}]
    assert s.score == pytest.approx(1 / 2)  # the equivalent one is left out of the count
    (s,), _ = score({MOD: None}, _found(a="killed", b="no tests"), DIFFS.get, [])
    assert s.score == pytest.approx(2 / 3) and s.survivors[0]["status"] == "no tests"


def test_an_equivalent_entry_that_matches_nothing_is_stale():
    moved = Equivalent(MOD, "recall_at_k", "k = 1", "k = 3", "no longer the mutant")
    killed_now = Equivalent(MOD, "recall_at_k", "return hits >= k", "return hits > k", "was")
    (s,), stale = score({MOD: None}, _found(), DIFFS.get, [moved, killed_now])
    assert stale == [moved, killed_now] and s.equivalent == 0


def test_an_unfinished_run_is_counted_apart_and_a_module_without_mutants_is_an_error():
    (s,), _ = score({MOD: None}, _found(b="not checked"), DIFFS.get, [])
    assert (s.mutants, s.killed, s.not_run, s.verdict) == (2, 2, 1, "incomplete (1 not run)")
    assert s.score == 1.0  # over the mutants that ran
    with pytest.raises(RuntimeError, match="a status this scorer does not know"):
        score({MOD: None}, _found(b="weird"), DIFFS.get, [])
    with pytest.raises(RuntimeError, match=r"no mutants in scope for .*probe\.py"):
        score({MOD: None, "mofi_core/evaluate/probe.py": None}, _found(), DIFFS.get, [])


def test_statuses_read_every_meta_file(tmp_path):
    (tmp_path / "mofi_core" / "curate").mkdir(parents=True)
    (tmp_path / "mofi_core" / "curate" / "rules.py.meta").write_text(
        json.dumps({"exit_code_by_key": {"m.x_f__mutmut_1": 1, "m.x_f__mutmut_2": 0}}))
    codes = {1: "killed", 0: "survived"}
    assert statuses(tmp_path, codes.__getitem__) == {"m.x_f__mutmut_1": "killed",
                                                     "m.x_f__mutmut_2": "survived"}


def test_equivalent_list_needs_every_key_and_a_one_line_reason(tmp_path):
    f = tmp_path / "eq.yaml"
    f.write_text("- {module: m.py, function: f, from: a, to: b}\n")
    with pytest.raises(ValueError, match="entry 1 must have exactly the keys"):
        load_equivalents(f)
    f.write_text("- {module: m.py, function: f, from: a, to: b, why: ''}\n")
    with pytest.raises(ValueError, match="one-line reason"):
        load_equivalents(f)
    f.write_text("- {module: m.py, function: f, from: 1, to: 2, why: ' same '}\n")
    assert load_equivalents(f) == [Equivalent("m.py", "f", "1", "2", "same")]


def test_markdown_marks_modules_under_the_goal_and_lists_stale_entries():
    (s,), _ = score({MOD: None}, _found(a="survived"), DIFFS.get, [])
    stale = [Equivalent(MOD, "f", "a", "b", "why")]
    text = markdown([s], stale, {"mutmut": "3.8.1", "minutes": 12.0, "machine": "2 cores",
                                 "tests": 4})
    assert f"| `{MOD}` | 3 | 1 | 0 | 0 | 2 | 33.3% | NOT met |" in text
    assert "| all | 3 | 1 | 0 | 0 | 2 | 33.3% | |" in text
    assert "Stale entries" in text and "`f`: `a` -> `b`" in text
    assert "run again" not in text
    meta = {"mutmut": "3.8.1", "minutes": 12.0, "machine": "2 cores", "tests": 4,
            "slow_pass": {"rerun": 7, "killed": 5},
            "runs": [{"mutants": "all in scope", "minutes": 30}, {"mutants": 40, "minutes": 6.2}]}
    assert ("7 mutants no fast test killed were run again against their module's "
            "`slow_tests` (tests marked slow): 5 killed.") in markdown([s], [], meta)
    assert ("one run and 1 continuation(s) of it (`--continue`: the mutants not reached or not "
            "killed, after new tests: 40 in 6 min).") in markdown([s], [], meta)
    assert "was not run" not in markdown([s], [], meta)
    timed = {**meta, "slow_pass": {"rerun": 7, "killed": 5, "minutes": 14.6}}
    assert "(tests marked slow): 5 killed, in 15 min more." in markdown([s], [], timed)
    assert "The slow pass (each module's `slow_tests` against the mutants no fast test killed) " \
        "was not run." in markdown([s], [], {**meta, "slow_pass": None})


def test_slow_tests_per_module(tmp_path):
    from tools.mutation.score import load_slow_tests

    f = tmp_path / "scope.yaml"
    f.write_text("a.py: {functions: all, slow_tests: [t.py::x, t.py::y]}\nb.py: {functions: all}\n")
    assert load_slow_tests(f) == {"a.py": ["t.py::x", "t.py::y"]}


def test_the_tracked_equivalent_list_loads():
    from tests.conftest import ROOT
    from tools.mutation.score import EQUIVALENT

    for e in load_equivalents(ROOT / EQUIVALENT):
        assert e.module == "*" or (ROOT / e.module).is_file(), e
        assert e.function == "*" or f"def {e.function.rpartition('.')[2]}(" in (
            ROOT / e.module).read_text(encoding="utf-8"), e


def test_scope_selects_functions_methods_and_whole_modules(tmp_path):
    f = tmp_path / "scope.yaml"
    f.write_text("a/m.py: {functions: all}\nb/n.py: {functions: [f, C.*, D.g], others: x}\n")
    scope = load_scope(f, ["b/n.py", "a/m.py"])
    assert scope == {"a/m.py": None, "b/n.py": ["f", "C.*", "D.g"]}
    assert patterns(scope) == ["a.m.*", "b.n.x_f__mutmut_*", "b.n.xǁCǁ*", "b.n.xǁDǁg__mutmut_*"]
    assert in_scope("b.n.x_f__mutmut_3", scope) and not in_scope("b.n.x_f2__mutmut_1", scope)
    assert in_scope("b.n.xǁCǁh__mutmut_1", scope) and in_scope("b.n.xǁDǁg__mutmut_1", scope)
    assert not in_scope("b.n.xǁDǁh__mutmut_1", scope) and in_scope("a.m.x_z__mutmut_9", scope)
    assert not in_scope("c.o.x_f__mutmut_1", scope)
    with pytest.raises(ValueError, match=r"only_mutate in pyproject\.toml names"):
        load_scope(f, ["a/m.py"])
    f.write_text("a/m.py: {functions: []}\n")
    with pytest.raises(ValueError, match="needs 'functions: all' or a list"):
        load_scope(f, ["a/m.py"])


def test_out_of_scope_mutants_are_not_counted():
    scope = {MOD: ["recall_at_k"]}
    (s,), _ = score(scope, _found(c="not checked"), DIFFS.get, [])
    assert s.mutants == 2  # Scan.mean is out of scope: not run, not counted


def test_the_tracked_scope_matches_the_mutmut_config():
    from tests.conftest import ROOT
    from tools.mutation.score import SCOPE, config

    scope = load_scope(ROOT / SCOPE, config(ROOT)["only_mutate"])
    for module, functions in scope.items():
        text = (ROOT / module).read_text(encoding="utf-8")
        for f in functions or []:
            name = f.rpartition(".")[2] if not f.endswith(".*") else f[:-2]
            assert f"def {name}(" in text or f"class {name}" in text, (module, f)


def test_an_entry_may_name_one_edit_inside_the_line_and_wildcards():
    eq = Equivalent("*", "*", 'encoding="utf-8"', 'encoding="UTF-8"', "codec names ignore case")
    name = "mofi_core.report.x_f__mutmut_1"
    assert eq.matches(name, 'p.read_text(encoding="utf-8")', 'p.read_text(encoding="UTF-8")')
    assert not eq.matches(name, 'p.read_text(encoding="utf-8")', 'p.read_text(encoding=None)')
    assert not eq.matches(name, 'a(encoding="utf-8")', 'b(encoding="UTF-8")')  # one edit only
    two = 'f(encoding="utf-8") + g(encoding="utf-8")'
    assert eq.matches(name, two, 'f(encoding="utf-8") + g(encoding="UTF-8")')  # either one
    gone = Equivalent(MOD, "recall_at_k", ", strict=True", "", "same-length columns")
    assert gone.matches(sorted(DIFFS)[0], "zip(a, b, strict=True)", "zip(a, b)")
    assert not gone.matches("mofi_core.report.x_f__mutmut_1", "zip(a, b, strict=True)",
                            "zip(a, b)")  # another module


def test_a_module_none_of_whose_mutants_ran_has_no_score():
    (s,), _ = score({MOD: None}, {n: "not checked" for n in DIFFS}, DIFFS.get, [])
    text = markdown([s], [], {"mutmut": "3.8.1", "minutes": 1, "machine": "2", "tests": 1})
    assert f"| `{MOD}` | 0 | 0 | 0 | 0 | 0 | — | incomplete (3 not run) |" in text


def test_slow_pass_runs_each_survivor_against_its_modules_slow_tests_two_at_a_time(tmp_path):
    """Real pytest processes on a stand-in mutants/: the test kills exactly the mutants whose
    name it was given to fail on; killed ones, other modules, out-of-scope functions and
    mutants already recorded are not run; the record is kept for a second call."""
    from tools.mutation.__main__ import slow_pass

    mutants = tmp_path / "mutants"
    (mutants / "tools" / "mutation").mkdir(parents=True)  # make mutation copies tools/ there
    for init in ("tools/__init__.py", "tools/mutation/__init__.py", "tools/mutation/plugin.py"):
        (mutants / init).write_text("")
    (mutants / "test_slow.py").write_text(
        "import os\n\n\ndef test_it():\n"
        "    assert not os.environ['MUTANT_UNDER_TEST'].endswith(('_1', '_3'))\n")
    mod = "mofi_core.curate.fdr"
    found = {f"{mod}.x_fit__mutmut_{i}": "survived" for i in (1, 2, 3)}
    found |= {f"{mod}.x_fit__mutmut_4": "killed",
              f"{mod}.x_plot__mutmut_1": "survived",  # out of scope
              "mofi_core.report.x_f__mutmut_1": "survived"}  # no slow tests for report
    scope = {"mofi_core/curate/fdr.py": ["fit"], "mofi_core/report.py": None}
    slow = {"mofi_core/curate/fdr.py": ["test_slow.py::test_it"]}
    got = slow_pass(tmp_path, found, scope, slow, workers=2)
    assert got == {f"{mod}.x_fit__mutmut_1": "killed", f"{mod}.x_fit__mutmut_2": "survived",
                   f"{mod}.x_fit__mutmut_3": "killed"}
    assert json.loads((mutants / "slow-pass.json").read_text()) == got
    (mutants / "test_slow.py").write_text("def test_it():\n    raise SystemExit(3)\n")
    assert slow_pass(tmp_path, found, scope, slow) == got  # recorded: nothing runs again
    found[f"{mod}.x_fit__mutmut_5"] = "survived"
    (mutants / "test_slow.py").write_text("import sys\nsys.exit(4)\n")  # pytest: internal error
    with pytest.raises(SystemExit, match=r"pytest exited 3 on .*x_fit__mutmut_5"):
        slow_pass(tmp_path, found, scope, slow)
    # the first error ends the pass: the runs still queued behind it are not started
    found |= {f"{mod}.x_fit__mutmut_{i}": "survived" for i in range(6, 10)}
    (mutants / "test_slow.py").write_text(
        "import os\nimport pathlib\nimport sys\n\n"
        "pathlib.Path(os.environ['MUTANT_UNDER_TEST'] + '.ran').touch()\nsys.exit(4)\n")
    with pytest.raises(SystemExit, match="pytest exited 3"):
        slow_pass(tmp_path, found, scope, slow, workers=1)
    # five queued, one worker: the first in name order ran; at most the next one had started
    ran = sorted(p.name.removesuffix(".ran").rsplit("_", 1)[1] for p in mutants.glob("*.ran"))
    assert ran in (["5"], ["5", "6"]), ran


def test_minutes_in_tests_add_up_per_module_and_a_bad_line_names_the_file(tmp_path):
    assert minutes_in_tests(tmp_path) == {}  # no run timed yet
    lines = [{"mutant": "mofi_core.evaluate.retrieval.x_f__mutmut_1", "seconds": 30.0, "exit": 1},
             {"mutant": "mofi_core.evaluate.retrieval.xǁScanǁmean__mutmut_2",
              "seconds": 60.0, "exit": 0},
             {"mutant": "mofi_core.curate.rules.x_g__mutmut_1",
              "seconds": 6.0, "exit": 1}]
    path = tmp_path / "mutmut-timings.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    assert minutes_in_tests(tmp_path) == {MOD: 1.5, "mofi_core/curate/rules.py": 0.1}
    path.write_text(path.read_text() + '{"mutant": "mofi_core.a.x_f__mutmut_1"}\n')
    with pytest.raises(ValueError, match=r"mutmut-timings\.jsonl: line 4 is not a timing line"):
        minutes_in_tests(tmp_path)


def test_markdown_gives_each_modules_test_minutes_when_they_were_timed():
    (s,), _ = score({MOD: None}, _found(a="survived"), DIFFS.get, [])
    meta = {"mutmut": "3.8.1", "minutes": 12.0, "machine": "2 cores", "tests": 4,
            "test_minutes": {MOD: 7.25}}
    text = markdown([s], [], meta)
    assert ("| module | mutants | killed | equivalent | wording | not killed | score | goal "
            "| test min |") in text
    assert f"| `{MOD}` | 3 | 1 | 0 | 0 | 2 | 33.3% | NOT met | 7.2 |" in text
    assert "| all | 3 | 1 | 0 | 0 | 2 | 33.3% | | 7.2 |" in text
    assert "*test min*: minutes the module's mutants spent in their tests" in text


def test_mutmuts_fork_server_preloads_the_lazy_packages_and_freezes_its_heap():
    """mutmut's warm-up is a collect-only run with MUTANT_UNDER_TEST set to "" (not unset) and
    the plugin loaded: after it, the process holds the packages mofi_core imports lazily and a
    frozen heap; a collect-only run without the variable, or without the plugin (every run but
    make mutation's), gets neither. Real pytest runs in fresh processes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tools.mutation.plugin import _FORK_SERVER_PRELOAD

    root = Path(__file__).resolve().parents[2]

    def collect(plugin: bool = True, **env) -> str:
        args = ["--collect-only", "-qqq", "-p", "no:cacheprovider",
                *(["-p", "tools.mutation.plugin"] if plugin else []),
                "tests/unit/test_mutation_score.py"]
        probe = (f"import gc, sys, pytest\npytest.main({args!r})\n"
                 f"print(gc.get_freeze_count() > 0,"
                 f" [m in sys.modules for m in {_FORK_SERVER_PRELOAD!r}])")
        base = {k: v for k, v in os.environ.items() if k != "MUTANT_UNDER_TEST"}
        done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                              cwd=root, env={**base, **env}, timeout=300, check=True)
        return done.stdout.strip().splitlines()[-1]

    assert collect(MUTANT_UNDER_TEST="") == "True [True, True, True, True]"
    assert collect() == "False [False, False, False, False]"
    assert collect(plugin=False, MUTANT_UNDER_TEST="") == "False [False, False, False, False]"


def test_a_mutant_that_only_rewords_an_error_message_is_counted_apart():
    """Only string contents changed on a line of a raise statement: wording, not a survivor;
    the same edit outside a raise, or a change of code on a raise line, still counts."""
    from tools.mutation.score import raise_lines, text_only

    source = ("def f(x):\n    if x:\n        raise ValueError(f'bad {x}: '\n"
              "                         'fix it')\n    return 'ok'\n")
    messages = {MOD: raise_lines(source)}
    assert "'fix it')" in messages[MOD] and "return 'ok'" not in messages[MOD]
    name = "mofi_core.evaluate.retrieval.x_f__mutmut_"
    diffs = {f"{name}1": "-                         'fix it')\n"
                         "+                         'XXfix itXX')",
             f"{name}2": "-    return 'ok'\n+    return 'XXokXX'",
             f"{name}3": "-        raise ValueError(f'bad {x}: '\n"
                         "+        raise TypeError(f'bad {x}: '"}
    found = dict.fromkeys(diffs, "survived")
    (s,), _ = score({MOD: None}, found, diffs.get, [], messages)
    assert (s.mutants, s.wording, [v["mutant"][-1] for v in s.survivors]) == (3, 1, ["2", "3"])
    assert s.score == 0.0  # 0 killed of the 2 that count
    assert text_only("raise E('a')", "raise E('XXaXX')")
    assert not text_only("raise E('a')", "raise F('a')")
    assert not text_only("x = 1", "x = 1")
