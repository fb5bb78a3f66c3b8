"""flows/pipeline.py: the stage graph comes from DVC, overrides last one run."""

import multiprocessing
import subprocess
import threading

import pytest

from flows.pipeline import (
    experiment_name,
    project_lock,
    ready_stages,
    recover_params,
    run_overrides,
    stage_needs,
    stage_order,
    topological,
    write_overrides,
)
from mofi_core.config.load import load_params
from mofi_core.config.section import ParamsError
from tests.conftest import ROOT

# a diamond, listed bottom-up so that file order is never a valid run order:
# a -> (b, c) -> d, plus e reading a `dvc add`-ed file (a stage with no command)
DIAMOND = """
stages:
  d: {cmd: python -c "print(4)", deps: [b.txt, c.txt], outs: [d.txt]}
  c: {cmd: python -c "print(3)", deps: [a.txt], outs: [c.txt]}
  b: {cmd: python -c "print(2)", deps: [a.txt], outs: [b.txt]}
  a: {cmd: python -c "print(1)", outs: [a.txt]}
  e: {cmd: python -c "print(5)", deps: [raw.txt], outs: [e.txt]}
"""


def _dvc_repo(path, dvc_yaml):
    subprocess.run(["dvc", "init", "-q", "--no-scm"], cwd=path, check=True)
    (path / "dvc.yaml").write_text(dvc_yaml)
    return path


@pytest.fixture()
def diamond(tmp_path):
    _dvc_repo(tmp_path, DIAMOND)
    (tmp_path / "raw.txt").write_text("raw")
    subprocess.run(["dvc", "add", "-q", "raw.txt"], cwd=tmp_path, check=True)
    return tmp_path


def _dvc_edges(root):
    """(stage, stage it depends on) pairs of DVC's own graph, by stage name."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        return {(a.name, b.name) for a, b in repo.index.graph.edges
                if hasattr(a, "name") and hasattr(b, "name")}


def test_the_projects_order_is_a_topological_order_of_dvcs_graph():
    order = stage_order(ROOT / "dvc.yaml")
    assert order == stage_order(ROOT)
    assert order == ["corpus", "kb", "ingest", "decontam", "ner", "baseline", "score", "build",
                     "validate",
                     "train@supervised", "train@multitask", "evaluate",
                     "report", "register"]
    edges = _dvc_edges(ROOT)
    assert edges and all(order.index(dep) < order.index(stage) for stage, dep in edges)


def test_stages_dvc_allows_in_parallel_are_ready_together():
    needs = stage_needs(ROOT)
    assert ready_stages(needs, {"corpus"}, {"corpus"}) == ["kb", "ingest"]
    assert ready_stages(needs, {"corpus", "ingest"}, {"corpus", "ingest"}) == ["kb",
                                                                                "decontam"]
    first = {"corpus", "kb", "ingest"}
    assert ready_stages(needs, first, first) == ["decontam", "ner"]
    done = {"corpus", "kb", "ingest", "decontam"}
    assert ready_stages(needs, done, done) == ["ner", "baseline"]
    before = set(topological(needs)[:topological(needs).index("evaluate") + 1])
    assert ready_stages(needs, before, before) == ["report", "register"]
    # ...and nothing waits for what it does not read
    assert "ner" not in needs["baseline"] and "baseline" not in needs["ner"]
    assert "report" not in needs["register"] and "register" not in needs["report"]


def test_a_diamond_dag_is_ordered_by_dvcs_graph_not_by_file_order(diamond):
    needs = stage_needs(diamond / "dvc.yaml")
    assert needs == {"d": ("b", "c"), "c": ("a",), "b": ("a",), "a": (), "e": ()}
    order = stage_order(diamond)
    assert order == ["a", "c", "b", "d", "e"]
    for stage, dep in _dvc_edges(diamond):
        if dep in needs:  # raw.txt.dvc has no command: e needs nothing to run first
            assert order.index(dep) < order.index(stage)
    # the two sides of the diamond are ready at the same time, d only after both
    assert ready_stages(needs, set(), set()) == ["a", "e"]
    assert ready_stages(needs, {"a"}, {"a"}) == ["c", "b", "e"]
    assert ready_stages(needs, {"a", "b"}, {"a", "b", "c"}) == ["e"]
    assert ready_stages(needs, {"a", "b", "c"}, {"a", "b", "c"}) == ["d", "e"]


def test_a_stage_in_a_nested_dvc_yaml_is_named_as_dvc_repro_wants_it(diamond):
    (diamond / "sub").mkdir()
    (diamond / "sub" / "dvc.yaml").write_text(
        "stages:\n  f: {cmd: python -c 'print(6)', deps: [../d.txt], outs: [f.txt]}\n")
    assert stage_needs(diamond)["sub/dvc.yaml:f"] == ("d",)


def test_dvcs_own_errors_surface(tmp_path):
    _dvc_repo(tmp_path, "stages:\n  a: {cmd: x, deps: [b.txt], outs: [a.txt]}\n"
                        "  b: {cmd: y, deps: [a.txt], outs: [b.txt]}\n")
    from dvc.exceptions import CyclicGraphError

    with pytest.raises(CyclicGraphError):
        stage_order(tmp_path)
    with pytest.raises(ValueError, match="cycle"):
        topological({"a": ("b",), "b": ("a",)})


def test_overrides_are_validated_and_written_changing_no_other_line(tmp_path):
    path = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_text()
    path.write_text(original)
    write_overrides(path, {"train.steps": 70, "build.threshold": 0.1,
                           "build.rules": ["threshold"]})
    params = load_params(path)
    assert params.train.steps == 70 and params.build.threshold == 0.1
    changed = [(a, b) for a, b in zip(original.splitlines(), path.read_text().splitlines(),
                                      strict=True) if a != b]
    assert [b.split("#")[0].strip() for _, b in changed] == [
        "rules: [threshold]", "threshold: 0.1", "steps: 70"]
    before = path.read_text()
    with pytest.raises(ParamsError, match=r"train\.stepz"):
        write_overrides(path, {"train.stepz": 1})
    assert path.read_text() == before


@pytest.mark.parametrize("ending", ["returns", "raises", "is interrupted"])
def test_run_overrides_put_params_back_byte_for_byte(tmp_path, ending):
    path = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_bytes() + b"# trailing comment, no newline"
    path.write_bytes(original)
    path.chmod(0o640)
    error = {"returns": None, "raises": RuntimeError("stage failed"),
             "is interrupted": KeyboardInterrupt()}[ending]
    with pytest.raises(type(error)) if error else _nothing():
        with run_overrides(path, {"train.steps": 70}, "run-1"):
            assert load_params(path).train.steps == 70
            assert (tmp_path / ".mofi" / "flow").is_dir()
            if error:
                raise error
    assert path.read_bytes() == original
    assert path.stat().st_mode & 0o777 == 0o640
    assert not list((tmp_path / ".mofi" / "flow").iterdir())  # no backup left
    assert recover_params(path) is None


def _nothing():
    import contextlib

    return contextlib.nullcontext()


def test_invalid_overrides_leave_params_untouched(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_bytes((ROOT / "params.yaml").read_bytes())
    with pytest.raises(ParamsError, match=r"train\.stepz"):
        with run_overrides(path, {"train.stepz": 1}):
            pytest.fail("the block must not run")
    assert path.read_bytes() == (ROOT / "params.yaml").read_bytes()


def test_the_next_run_restores_params_left_overridden_by_a_killed_run(tmp_path):
    path = tmp_path / "params.yaml"
    original = (ROOT / "params.yaml").read_bytes()
    path.write_bytes(original)
    killed = run_overrides(path, {"train.steps": 70}, "killed-run")
    killed.__enter__()  # ...and never left: the process died
    assert load_params(path).train.steps == 70
    assert "killed-run" in recover_params(path)
    assert path.read_bytes() == original
    # an edit made after the killed run is never overwritten
    killed = run_overrides(path, {"train.steps": 70}, "killed-run")
    killed.__enter__()
    write_overrides(path, {"train.steps": 90})
    assert "edited since" in recover_params(path)
    assert load_params(path).train.steps == 90
    assert recover_params(path) is None


@pytest.mark.parametrize("run_name", ["gregarious-lemur", "run name with spaces", "a/b:c~d^e",
                                      "..hidden..", "x.lock", "@{weird}", "-", "", "é" * 5,
                                      "n" * 300])
def test_experiment_names_are_valid_git_ref_components(tmp_path, run_name):
    name = experiment_name(run_name)
    assert name and "/" not in name and len(name) <= 100
    ok = subprocess.run(["git", "check-ref-format", f"refs/exps/ab/cdef/{name}"])
    assert ok.returncode == 0, name
    if run_name == "gregarious-lemur":
        assert name == run_name


def _hold(root, started, release):
    with project_lock(root, say=lambda _: None):
        started.set()
        release.wait(30)


def test_one_flow_run_at_a_time_per_project_folder(tmp_path):
    ctx = multiprocessing.get_context("fork")
    started, release = ctx.Event(), ctx.Event()
    holder = ctx.Process(target=_hold, args=(tmp_path, started, release))
    holder.start()
    try:
        assert started.wait(30)
        entered, said = threading.Event(), []

        def second():
            with project_lock(tmp_path, say=said.append):
                entered.set()

        thread = threading.Thread(target=second)
        thread.start()
        assert not entered.wait(1.0)
        assert said and "waiting for another flow run" in said[0] and "pid" in said[0]
        release.set()
        assert entered.wait(30)
        thread.join(30)
    finally:
        release.set()
        holder.join(30)
