"""make paper end to end over two tiny worlds: every seed held out from the world that chose its
threshold, the ablation and both controls evaluated, claims counted over seeds, the README block
generated from its output."""

from __future__ import annotations

import json

import pytest

from studies.paper import main, summarise
from tests.conftest import TINY
from tests.system.test_calibrate import _tiny_params
from tools.docs_results import PAPER_BEGIN, PAPER_END, synced

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("paper")
    params = _tiny_params(folder)
    sets = ["-S", "train.recipes=[contrastive, multitask]", "-S", "evaluate.pictures=false"]
    assert "train.recipes" in TINY
    code = main(["--params", str(params), "--seeds", "3", "4", "--work",
                 str(folder / ".mofi/paper"), "--out", str(folder / "reports/paper"),
                 "--target-precision", "0", *sets])
    assert code == 0
    return folder, json.loads((folder / "reports/paper.json").read_text())


def test_each_seed_is_held_out_from_the_world_that_chose_its_threshold(study):
    _, s = study
    assert [(r["seed"], r["calibration_seed"]) for r in s["records"]] == [(3, 4), (4, 3)]
    for r in s["records"]:
        assert set(r["models"]) == {"contrastive", "multitask", "contrastive_name", "baseline",
                                    "baseline_compute"}
        assert 0 <= r["labels"]["filtered"]["precision"] <= 1


def test_the_same_compute_control_trained_for_the_lines_total_steps(study):
    folder, s = study
    assert s["budget"]["compute_steps"] == 20 + 20  # TINY: baseline.steps + train.steps
    for r in s["records"]:  # where each training history ended
        assert r["extra_steps"] == {"baseline_compute": 40, "contrastive_name": 20}
    assert (folder / ".mofi/paper/seed3/models/baseline_compute/model.safetensors").is_file()


def test_mean_std_and_claim_counts_agree_with_the_seeds(study):
    _, s = study
    records = s["records"]
    again = summarise(records)
    assert again == s["summary"]
    vals = [r["models"]["multitask"]["gpr_map"] for r in records]
    m = s["summary"]["models"]["multitask"]["gpr_map"]
    assert m["mean"] == pytest.approx(sum(vals) / 2)
    assert m["std"] == pytest.approx(abs(vals[0] - vals[1]) / 2 ** 0.5)
    c = s["summary"]["claims"]["descriptions_help_contrastive_retrieval"]
    held = sum(r["models"]["contrastive"]["gpr_map"] > r["models"]["contrastive_name"]["gpr_map"]
               for r in records)
    assert c["held_seeds"] == held and c["verdict"] == {0: "not held", 1: "mixed",
                                                        2: "held"}[held]
    # supervised is not a candidate here: its claims are not applicable, not "not held"
    assert "supervised_beats_control_retrieval" not in s["summary"]["claims"]


def test_the_readme_block_is_generated_from_the_markdown(study):
    folder, _ = study
    md = (folder / "reports/paper.md").read_text()
    assert "contrastive, entity names only" in md and "same total compute" in md
    readme = synced(f"x\n{PAPER_BEGIN}\n{PAPER_END}\n", md, PAPER_BEGIN, PAPER_END)
    assert "### The paper's claims" in readme and "/2 seeds" in readme


def test_stage_times_are_summed_over_invocations(study):
    """A resumed study (every stage already done) re-reports the time its stages took when they
    ran, not the seconds of the resuming invocation."""
    folder, s = study
    for r in s["records"]:
        names = set(r["stage_seconds"])
        assert {"corpus", "baseline", "train@multitask", "contrastive_name", "baseline_compute",
                "evaluate (every model)"} <= names, names
        assert all(t > 0 for t in r["stage_seconds"].values())
    total = sum(sum(r["stage_seconds"].values()) for r in s["records"])
    assert s["stage_seconds"] == pytest.approx(total)
    assert s["stage_seconds"] <= s["seconds"]
    params = _tiny_params(folder)
    sets = ["-S", "train.recipes=[contrastive, multitask]", "-S", "evaluate.pictures=false"]
    code = main(["--params", str(params), "--seeds", "3", "4", "--work",
                 str(folder / ".mofi/paper"), "--out", str(folder / "reports/again"),
                 "--target-precision", "0", *sets])
    again = json.loads((folder / "reports/again.json").read_text())
    assert code == 0 and again["summary"] == s["summary"]
    # only the evaluation runs again; everything else keeps the time of its first run
    for before, after in zip(s["records"], again["records"], strict=True):
        assert {k: v for k, v in after["stage_seconds"].items() if k != "evaluate (every model)"} \
            == {k: v for k, v in before["stage_seconds"].items() if k != "evaluate (every model)"}


def test_one_seed_is_refused(tmp_path):
    params = _tiny_params(tmp_path)
    with pytest.raises(ValueError, match="at least two different seeds"):
        main(["--params", str(params), "--seeds", "5", "--work", str(tmp_path / "w")])
