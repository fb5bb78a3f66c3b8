import pytest

from mofi_core.config import ParamsError, apply_overrides, load_params, parse_params


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
