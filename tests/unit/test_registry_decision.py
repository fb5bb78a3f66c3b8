"""The registry's decision at its edges, without a server: promote only above the champion plus
the margin (equal is not enough), only on the same benchmark; the best candidate by the chosen
metric, the first listed on a tie; the DVC hashes a version is tagged with."""

import pytest

from mofi_core.registry import best_candidate, decide, dvc_hashes, input_hashes


def test_first_version_is_champion_by_default():
    assert decide(0.1, None, 0.5) == (True, "first version: champion by default")


@pytest.mark.parametrize(("value", "champion", "margin", "promoted"), [
    (0.5, 0.4, 0.0, True),
    (0.4, 0.4, 0.0, False),  # equal: the champion stays
    (0.5, 0.4, 0.1, False),  # exactly champion + margin: stays
    (0.5001, 0.4, 0.1, True),
    (0.3, 0.4, 0.0, False),
])
def test_promote_only_above_champion_plus_margin(value, champion, margin, promoted):
    got, reason = decide(value, champion, margin, "abc", "abc")
    assert got is promoted
    sign = ">" if promoted else "<="
    assert reason == (f"{value:.6f} {sign} champion {champion:.6f} + margin {margin:g}")


def test_numbers_of_another_benchmark_are_not_compared():
    promoted, reason = decide(0.9, 0.1, 0.0, "new", "old")
    assert not promoted
    assert reason.startswith("not comparable: measured on benchmark new, the champion on old")
    promoted, reason = decide(0.9, 0.1, 0.0, "", "old")
    assert not promoted and "benchmark unknown, the champion on old" in reason
    assert "mofi promote VERSION" in decide(0.9, 0.1, 0.0, "new", "")[1]


def test_best_candidate_by_the_metric_first_listed_on_a_tie():
    metrics = {"a": {"m": 0.5, "n": 0.9}, "b": {"m": 0.7, "n": 0.1}, "c": {"m": 0.7, "n": 0.2}}
    assert best_candidate(metrics, ["a", "b", "c"], "m") == "b"
    assert best_candidate(metrics, ["c", "b", "a"], "m") == "c"
    assert best_candidate(metrics, ["a", "b", "c"], "n") == "a"
    assert best_candidate(metrics, ["b"], "m") == "b"
    assert best_candidate({"a": {"m": "0.2"}, "b": {"m": 0.10}}, ["a", "b"], "m") == "a"
    with pytest.raises(KeyError, match=r"'zz' is missing for \['a', 'b', 'c'\] .* have \['m', "
                                       r"'n'\]"):
        best_candidate(metrics, ["a", "b", "c"], "zz")
    with pytest.raises(KeyError, match=r"missing for \['d'\] .* have \[\]"):
        best_candidate(metrics, ["a", "d"], "m")


LOCK = {
    "build": {"outs": [{"path": "data/i2e", "md5": "b1"}, {"path": "x", "hash": "none"}],
              "deps": [{"path": "data/score", "md5": "s1"}, {"path": "mofi_core/curate",
                                                             "md5": "code"}]},
    "train@multitask": {"outs": [{"path": "models/multitask", "md5": "t1"}],
                        "deps": [{"path": "data/i2e", "md5": "b1"}, {"path": "params.yaml"}]},
}


def test_dvc_hashes_of_outputs_and_inputs_without_code():
    assert dvc_hashes(LOCK, ("build", "train@multitask", "nope")) == {
        "dvc.build.data/i2e": "b1", "dvc.train.models/multitask": "t1"}
    assert dvc_hashes(LOCK) == {"dvc.build.data/i2e": "b1"}  # train alone has no lock entry
    assert input_hashes(LOCK, ("build", "train@multitask")) == {
        "input.data/score": "s1", "input.data/i2e": "b1"}
    assert input_hashes(LOCK, ()) == {}


def test_without_benchmark_digests_the_numbers_are_compared():
    assert decide(0.5, 0.4, 0.0) == (True, "0.500000 > champion 0.400000 + margin 0")
    assert decide(0.5, 0.4, 0.0, "", "") == decide(0.5, 0.4, 0.0)


def test_the_not_comparable_reason_whole():
    assert decide(0.9, 0.1, 0.0, "new", "") == (False, (
        "not comparable: measured on benchmark new, the champion on unknown; the champion "
        "stays (mofi promote VERSION --reason ... to choose by hand)"))


def test_input_hashes_skip_stages_without_deps():
    lock = {"evaluate": {"outs": []}, "score": {"deps": [{"path": "data/x", "md5": "x1"}]}}
    assert input_hashes(lock, ("evaluate", "missing", "score")) == {"input.data/x": "x1"}
