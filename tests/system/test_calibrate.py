"""make calibrate (python -m studies.calibrate): the filter threshold is chosen on another
world's truth, written into params.yaml with the seed that chose it, and the report says whether
its numbers are held out."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import pytest
import yaml

from mofi_core.config.load import apply_overrides, load_params
from mofi_core.report import report_markdown, threshold_choice
from studies.calibrate import CalibrationError, Point, choose, main
from tests.conftest import ROOT, TINY

# a calibration world end to end (minutes): the system tier, with make paper's own test
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _calibrate(capsys, *args: str) -> tuple[int, str]:
    """``python -m studies.calibrate ARGS`` in this process: exit status and output."""
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out + out.err


def _tiny_params(folder: Path) -> Path:
    """The project's params.yaml (comments and all) with the tiny world's values in it."""
    from ruamel.yaml import YAML

    rt = YAML()
    data = rt.load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    def merge(into, values):
        for key, value in values.items():
            if isinstance(value, dict) and key in into:
                merge(into[key], value)
            else:
                into[key] = value

    merge(data, apply_overrides({}, TINY))
    path = folder / "params.yaml"
    with path.open("w", encoding="utf-8") as f:
        rt.dump(data, f)
    return path


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calib")
    params = _tiny_params(folder)
    code = main(["--seed", "7", "--params", str(params), "--target-precision", "0", "--write"])
    assert code == 0
    chosen = json.loads((folder / "reports" / "calibration.json").read_text())["chosen"]
    return folder, params, f"threshold {chosen['threshold']:.2f}"


def test_the_calibration_world_is_another_seed_and_the_choice_lands_in_params(calibrated):
    folder, params, output = calibrated
    record = json.loads((folder / "reports" / "calibration.json").read_text())
    assert record["calibration_seed"] == 7
    world = json.loads((folder / ".mofi/calibrate/seed7/metrics/corpus.json").read_text())
    assert world  # the scratch world ran its own corpus stage
    chosen = record["chosen"]
    written = load_params(params).build
    assert written.threshold == pytest.approx(round(chosen["threshold"], 2))
    assert written.calibration_seed == 7
    assert load_params(params).corpus.seed == 0  # the project's own world is untouched
    text = params.read_text()
    assert "calibration_seed: 7" in text and "# min cosine(image, entity text)" in text
    assert f"threshold {chosen['threshold']:.2f}" in output
    assert (folder / "reports" / "calibration.md").read_text().count("| 0.") >= 10


def test_the_curve_is_a_real_sweep(calibrated):
    folder, _, _ = calibrated
    curve = [Point(**p) for p in
             json.loads((folder / "reports" / "calibration.json").read_text())["curve"]]
    assert len(curve) == 71
    # a higher threshold never keeps more pairs; the lowest keeps some, the highest fewer
    pairs = [p.pairs for p in curve]
    assert all(a >= b for a, b in itertools.pairwise(pairs))
    assert pairs[0] > pairs[-1]


def test_choose_takes_the_best_recall_at_the_target(calibrated):
    folder, _, _ = calibrated
    curve = [Point(**p) for p in
             json.loads((folder / "reports" / "calibration.json").read_text())["curve"]]
    reached = sorted({p.precision for p in curve if p.pairs})
    target = reached[len(reached) // 2]
    chosen = choose(curve, target)
    assert chosen.precision >= target
    assert all(p.filter_recall <= chosen.filter_recall for p in curve
               if p.pairs and p.precision >= target)
    with pytest.raises(CalibrationError, match="lower --target-precision"):
        choose(curve, reached[-1] + 1e-6)


def test_the_reported_seed_cannot_calibrate(tmp_path, capsys):
    params = _tiny_params(tmp_path)
    code, output = _calibrate(capsys, "--seed", "0", "--params", str(params))
    assert code == 1
    assert "pick another seed" in output
    assert not (tmp_path / ".mofi").exists()  # refused before any work


def test_a_world_made_with_other_params_is_never_reused(calibrated, capsys):
    folder, params, _ = calibrated
    other = folder / "other.yaml"
    shutil.copy(params, other)
    code, output = _calibrate(capsys, "--seed", "7", "--params", str(other),
                              "-S", "corpus.images_per_entity=11")
    assert code == 1 and "made with other params" in output


@pytest.mark.parametrize(("seed", "kind", "phrase"), [
    (3, "held out", "**held out**"), (0, "in-sample", "**in-sample**"),
    (None, "by hand", "set by hand")])
def test_the_report_says_where_the_threshold_came_from(seed, kind, phrase):
    choice = threshold_choice({"threshold": 0.41, "calibration_seed": seed}, report_seed=0)
    assert choice["kind"] == kind
    q = {"precision": 0.9, "recall": 0.5, "filter_recall": 0.8, "pairs": 10}
    text = report_markdown({"raw_ner": q, "filtered": q, "threshold_choice": choice}, {})
    assert phrase in text and "Threshold 0.41" in text


def test_calibration_seed_is_validated():
    with pytest.raises(Exception, match="calibration_seed"):
        load_params(ROOT / "params.yaml", {"build.calibration_seed": "one"})
    assert yaml.safe_load((ROOT / "params.yaml").read_text())["build"]["calibration_seed"] != 0
