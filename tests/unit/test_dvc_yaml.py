"""dvc.yaml against the stage table and the code: a drift here is a caching bug (a stage that does
not re-run after an edit to a module it runs, or re-runs for a knob that changes nothing)."""

import pytest
import yaml

from mofi_core.config.load import RUNTIME, section_classes
from mofi_core.stages import BY_NAME, STAGES
from tests.conftest import ROOT
from tools.dvc_yaml import (
    ORCHESTRATION,
    closure,
    dvc_entry,
    module_file,
    render_dvc_yaml,
    stage_code_deps,
    stage_modules,
)

DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text(encoding="utf-8"))["stages"]


def body(name: str) -> dict:
    """A stage's entry; a foreach stage's template (``do``)."""
    return DVC[name].get("do", DVC[name])


def _fix(name: str) -> str:
    return ("expected entry (python -m tools.dvc_yaml " + name + "):\n"
            + yaml.safe_dump({name: dvc_entry(BY_NAME[name])}, sort_keys=False))


def test_stage_names_and_order_are_the_tables():
    assert list(DVC) == [s.name for s in STAGES]


@pytest.mark.parametrize("name", [s.name for s in STAGES])
def test_each_stage_entry_is_the_tables_row_with_its_real_code_deps(name):
    assert DVC[name] == dvc_entry(BY_NAME[name]), _fix(name)


@pytest.mark.parametrize("name", [s.name for s in STAGES])
def test_code_deps_cover_every_module_the_stage_runs(name):
    """Independent of the rendering: each file of the import closure is under a listed dep,
    and each listed code dep holds at least one of them (no stale entries)."""
    spec = BY_NAME[name]
    files = {p.relative_to(ROOT).as_posix()
             for p in closure(*stage_modules(spec), skip=tuple(ORCHESTRATION))}
    deps = [d for d in body(name)["deps"] if d.startswith("mofi_core")]

    def under(path: str, dep: str) -> bool:
        return path == dep or path.startswith(dep.rstrip("/") + "/")

    assert [f for f in sorted(files) if not any(under(f, d) for d in deps)] == []
    assert [d for d in deps if not any(under(f, d) for f in files)] == []


def test_the_closure_follows_lazy_imports_and_package_data():
    deps = stage_code_deps(BY_NAME["register"])
    # registry imports serving lazily (inside functions) and reads the pyfunc file by path
    assert "mofi_core/serving/encoder.py" in deps
    assert "mofi_core/serving/pyfunc_model.py" in deps
    # factory reads its architecture JSON files from a package folder
    assert "mofi_core/models/configs" in stage_code_deps(BY_NAME["train"])
    # build runs the label rules; its params schema decides its defaults
    build = stage_code_deps(BY_NAME["build"])
    assert {"mofi_core/curate/rules.py", "mofi_core/config/build.py"} <= set(build)


def test_a_stage_depends_on_its_own_params_schema_only():
    deps = stage_code_deps(BY_NAME["ingest"])
    assert "mofi_core/config/ingest.py" in deps
    assert not [d for d in deps if d.startswith("mofi_core/config/")
                and d not in ("mofi_core/config/ingest.py", "mofi_core/config/section.py")]


def test_orchestration_modules_are_real_and_no_stage_depends_on_them():
    for module in ORCHESTRATION:
        assert module_file(module) is not None, module
    listed = {d for name in DVC for d in body(name)["deps"]}
    files = {module_file(m).relative_to(ROOT).as_posix() for m in ORCHESTRATION}
    assert files.isdisjoint(listed)
    assert "mofi_core/cli.py" not in listed


def test_type_checking_imports_are_not_followed():
    """A stage names ``StageContext`` under ``if TYPE_CHECKING:`` only: no code of it runs."""
    context = ROOT / "mofi_core" / "context.py"
    assert context not in closure("mofi_core.curate.build")
    assert context in closure("mofi_core.runner")


def test_dvc_yaml_is_the_rendering():
    assert (ROOT / "dvc.yaml").read_text(encoding="utf-8") == render_dvc_yaml(STAGES)


def test_only_result_sections_are_tracked():
    tracked = {p for name in DVC for p in body(name)["params"]}
    assert tracked == {s.section for s in STAGES} | {"train.recipes", "ner.spacy_model",
                                                     "ner.max_candidates", "ner.link_weights"}
    assert not {p.partition(".")[0] for p in tracked} & {RUNTIME, "executor", "storage"}


def test_train_is_one_dvc_stage_per_listed_recipe_with_its_own_folders():
    assert DVC["train"]["foreach"] == "${train.recipes}"
    do = DVC["train"]["do"]
    assert do["cmd"] == "mofi train ${item}"
    assert do["outs"] == ["models/${item}"]
    assert do["metrics"] == [{"metrics/train_${item}.json": {"cache": False}}]
    one = BY_NAME["train"].instance("contrastive")
    assert one.address == "train@contrastive"
    assert one.metrics == "metrics/train_contrastive.json"
    assert [o.path for o in one.outs] == ["models/contrastive"]
    assert "plots/train_contrastive_loss.csv" in one.writes()
    # evaluate and register read every model folder and the list itself
    assert "models" in DVC["evaluate"]["deps"] and "train.recipes" in DVC["evaluate"]["params"]
    assert "models" in DVC["register"]["deps"] and "train.recipes" in DVC["register"]["params"]


def test_runtime_keys_are_not_in_the_sections_params_yaml_gives_dvc():
    raw = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    for name, cls in section_classes().items():
        assert not set(raw.get(name) or {}) & set(cls.RUNTIME), name
        assert set(raw.get(RUNTIME, {}).get(name, {})) <= set(cls.RUNTIME), name


def test_streamed_inputs_are_inputs():
    for spec in STAGES:
        assert set(spec.streamed) <= set(spec.inputs), spec.name


def test_every_input_is_another_stages_output_or_external():
    """A data input of one stage is produced by an earlier stage (DVC's graph), so no input
    path can be mistyped without this failing."""
    produced: list[str] = []
    for spec in STAGES:
        for dep in spec.inputs:
            assert any(dep == o or dep.startswith(o + "/") or o.startswith(dep + "/")
                       for o in produced), f"{spec.name}: input {dep} has no producer before it"
        produced += [o.path for o in spec.outs] + [spec.metrics] + [p.path for p in spec.plots]
