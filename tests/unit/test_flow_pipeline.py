import pytest

from flows.pipeline import stage_order, write_overrides
from mofi_core.config import ParamsError, load_params
from tests.conftest import ROOT


def test_stage_order_follows_the_dvc_dag():
    order = stage_order(ROOT / "dvc.yaml")
    assert order == ["corpus", "ingest", "ner", "baseline", "score", "build", "validate",
                     "train", "evaluate", "report", "register"]


def test_stage_order_sorts_by_dependencies_not_file_order(tmp_path):
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  b: {cmd: x, deps: [data/a/file.txt], outs: [data/b]}\n"
        "  a: {cmd: y, outs: [data/a]}\n")
    assert stage_order(tmp_path / "dvc.yaml") == ["a", "b"]
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n  a: {cmd: x, deps: [b], outs: [a]}\n  b: {cmd: y, deps: [a], outs: [b]}\n")
    with pytest.raises(ValueError, match="cycle"):
        stage_order(tmp_path / "dvc.yaml")


def test_overrides_are_validated_and_written_keeping_comments(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text((ROOT / "params.yaml").read_text())
    write_overrides(path, {"train.steps": 70, "build.threshold": 0.1})
    params = load_params(path)
    assert params.train.steps == 70 and params.build.threshold == 0.1
    assert "# the paper's control" in path.read_text()
    before = path.read_text()
    with pytest.raises(ParamsError, match=r"train\.stepz"):
        write_overrides(path, {"train.stepz": 1})
    assert path.read_text() == before
