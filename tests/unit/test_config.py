import pytest

from mofi_core.config.load import apply_overrides, load_params, parse_params
from mofi_core.config.section import ParamsError


def test_repo_params_file_is_valid_and_sections_are_typed():
    from tests.conftest import ROOT

    params = load_params(ROOT / "params.yaml")
    assert params.baseline.recipe == "clip"
    assert params.section("validate").max_labels_per_image >= 1
    assert params.section("register").model_name == "mofi-encoder"


def test_unknown_key_is_an_error_naming_the_key():
    with pytest.raises(ParamsError, match=r"train\.stepz: unknown key"):
        parse_params({"train": {"stepz": 3}})


def test_unknown_section_is_an_error():
    with pytest.raises(ParamsError, match="trian: unknown key"):
        parse_params({"trian": {}})


def test_bad_value_names_key_and_constraint():
    with pytest.raises(ParamsError, match=r"build\.threshold"):
        parse_params({"build": {"threshold": 3}})


def test_cross_field_check_says_how_to_fix():
    with pytest.raises(ParamsError, match=r"warmup_steps \(50\) must be < steps \(10\)"):
        parse_params({"train": {"steps": 10, "warmup_steps": 50}})
    with pytest.raises(ParamsError, match=r"baseline\.recipe: Input should be 'clip'"):
        parse_params({"baseline": {"recipe": "supervised"}})


def test_params_are_frozen():
    params = parse_params({})
    with pytest.raises(Exception, match="frozen"):
        params.train.steps = 5


def test_overrides_set_nested_keys_without_touching_the_input():
    raw = {"train": {"steps": 10}}
    out = apply_overrides(raw, {"train.steps": 5, "corpus.benchmark.seen_classes": 3})
    assert out == {"train": {"steps": 5}, "corpus": {"benchmark": {"seen_classes": 3}}}
    assert raw == {"train": {"steps": 10}}


@pytest.mark.parametrize("bad", ["steps", "nosuch.key"])
def test_override_must_name_a_section(bad):
    with pytest.raises(ParamsError, match="override"):
        apply_overrides({}, {bad: 1})


def test_params_file_must_be_a_mapping(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ParamsError, match="mapping"):
        load_params(path)
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "missing.yaml")


def test_yaml_tags_are_not_executed(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train: !!python/object/apply:os.system ['echo pwned']\n")
    with pytest.raises(Exception, match="could not determine a constructor"):
        load_params(path)


# runtime keys ----------------------------------------------------------------------------------

def test_runtime_keys_merge_into_their_section_and_stay_out_of_the_result_key():
    params = parse_params({"train": {"steps": 50}, "runtime": {"train": {"log_every": 7,
                                                                          "threads": 1}}})
    assert (params.train.steps, params.train.log_every, params.train.threads) == (50, 7, 1)
    key = params.train.result_key()
    assert key["steps"] == 50 and not {"log_every", "threads", "device"} & set(key)
    # a runtime value never changes the result key; a result value always does
    same = parse_params({"train": {"steps": 50}, "runtime": {"train": {"log_every": 1}}})
    other = parse_params({"train": {"steps": 51}, "runtime": {"train": {"log_every": 7}}})
    assert same.train.result_key() == key != other.train.result_key()


def test_each_sections_runtime_keys_are_its_own_fields():
    from mofi_core.config.load import section_classes

    for name, cls in section_classes().items():
        assert set(cls.RUNTIME) <= set(cls.model_fields), name


def test_a_runtime_key_under_its_section_says_where_it_belongs():
    with pytest.raises(ParamsError, match=r"train\.log_every: a runtime key .* move it to "
                                          r"runtime\.train\.log_every"):
        parse_params({"train": {"log_every": 3}})


def test_a_result_key_under_runtime_says_where_it_belongs():
    with pytest.raises(ParamsError, match=r"runtime\.train\.lr: a result key: set it under "
                                          r"train\.lr"):
        parse_params({"runtime": {"train": {"lr": 0.1}}})


@pytest.mark.parametrize("raw, pattern", [
    ({"runtime": {"build": {"threshold": 0.1}}}, r"runtime\.build: no runtime keys in section"),
    ({"runtime": {"train": {"nosuch": 1}}}, r"runtime\.train\.nosuch: unknown runtime key"),
    ({"runtime": ["train"]}, r"runtime: must be a mapping"),
    ({"runtime": {"train": 3}}, r"runtime\.train: must be a mapping"),
])
def test_misplaced_runtime_sections_and_keys_are_errors(raw, pattern):
    with pytest.raises(ParamsError, match=pattern):
        parse_params(raw)


def test_a_bad_runtime_value_is_named_by_its_runtime_path():
    with pytest.raises(ParamsError, match=r"runtime\.train\.threads: Input should be greater"):
        parse_params({"runtime": {"train": {"threads": -1}}})


def test_runtime_overrides_use_the_runtime_path():
    out = apply_overrides({}, {"runtime.ner.workers": 1})
    assert parse_params(out).ner.workers == 1
    with pytest.raises(ParamsError, match=r"move it to runtime\.ner\.workers"):
        parse_params(apply_overrides({}, {"ner.workers": 1}))


def test_recipe_choices_are_the_recipe_tables_rows():
    from mofi_core.recipes import CONTROL_RECIPES, MOFI_RECIPES, RECIPES

    assert set(CONTROL_RECIPES) | set(MOFI_RECIPES) == set(RECIPES)
    # the demo's candidates: contrastive joins them in make paper (the demo's 10-minute budget)
    assert parse_params({}).train.recipes == ("supervised", "multitask")
    assert set(parse_params({}).train.recipes) < set(MOFI_RECIPES)
    for name in MOFI_RECIPES:
        assert parse_params({"train": {"recipes": [name]}}).train.recipes == (name,)
    with pytest.raises(ParamsError, match=r"train\.recipes"):
        parse_params({"train": {"recipes": ["clip"]}})
    with pytest.raises(ParamsError, match=r"train\.recipes"):
        parse_params({"train": {"recipes": []}})
    with pytest.raises(ParamsError, match="twice"):
        parse_params({"train": {"recipes": ["supervised", "supervised"]}})


def test_the_old_single_recipe_key_says_what_replaced_it():
    with pytest.raises(ParamsError, match=r"train\.recipe: .*train\.recipes: \[contrastive\]"):
        parse_params({"train": {"recipe": "contrastive"}})


def test_a_train_instance_runs_its_recipe_and_only_a_listed_one():
    from mofi_core.config.load import Params
    from mofi_core.runner import section_of
    from mofi_core.stages import get

    params = Params.model_validate({"train": {"recipes": ["supervised", "multitask"]}})
    assert section_of(get("train@multitask"), params).recipe == "multitask"
    assert section_of(get("train@multitask"), params).spec.text_tower
    with pytest.raises(ParamsError, match=r"'contrastive' is not in train\.recipes"):
        section_of(get("train@contrastive"), params)
    with pytest.raises(ParamsError, match=r"mofi train supervised"):
        section_of(get("train"), params)
    # the list says which instances exist, not what one computes: checkpoints survive edits
    one = section_of(get("train@multitask"), params)
    other = section_of(get("train@multitask"), Params.model_validate({}))
    assert one.result_key() == other.result_key()


# no silent defaults ------------------------------------------------------------------------------

def test_code_defaults_are_the_documented_values_of_params_yaml():
    """A section or key left out of params.yaml runs on exactly what the project documents."""
    from tests.conftest import ROOT

    assert parse_params({}) == load_params(ROOT / "params.yaml")


def test_the_loader_adds_nothing_to_a_sections_own_schema():
    """Each section the loader hands a stage is exactly what that section's schema module makes
    of its keys in params.yaml (its runtime keys merged in): the loader reads, merges and
    refuses, and so is no stage's code dependency (tools/dvc_yaml.py, ORCHESTRATION)."""
    from mofi_core.config.load import read_params_file, section_classes
    from tests.conftest import ROOT

    raw = read_params_file(ROOT / "params.yaml")
    loaded = load_params(ROOT / "params.yaml", {"train.steps": 70, "runtime.ner.workers": 3})
    raw["train"]["steps"] = 70
    raw["runtime"]["ner"]["workers"] = 3
    for name, cls in section_classes().items():
        own = {**(raw.get(name) or {}), **(raw.get("runtime", {}).get(name) or {})}
        assert loaded.section(name) == cls.model_validate(own), name
        assert cls.__module__ == f"mofi_core.config.{'train' if name == 'baseline' else name}"


@pytest.mark.parametrize("raw", [{"train": {"lr": float("inf")}}, {"train": {"lr": float("nan")}},
                                 {"build": {"threshold": float("-inf")}},
                                 {"corpus": {"noise": {"name": float("nan")}}}])
def test_non_finite_numbers_are_errors(raw):
    with pytest.raises(ParamsError, match="finite"):
        parse_params(raw)


@pytest.mark.parametrize("text, pattern", [("", "is empty"), ("train: [1\n", "not valid YAML"),
                                           ("- a\n", "mapping")])
def test_an_empty_or_broken_params_file_is_one_clear_error(tmp_path, text, pattern):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ParamsError, match=pattern):
        load_params(path)
