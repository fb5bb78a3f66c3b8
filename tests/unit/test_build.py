import pytest

from mofi_core.config import BuildConfig
from mofi_core.curate.build import select_labels


def test_threshold_then_min_images_then_empty_images_dropped():
    keys = ["a", "a", "b", "c", "d", "e"]
    ents = ["X", "Y", "X", "Y", "Z", "X"]
    scores = [0.9, 0.1, 0.5, 0.6, 0.95, 0.3]
    out = select_labels(keys, ents, scores, BuildConfig(threshold=0.3, min_images_per_entity=2))
    # X: a, b, e pass (3 images); Y: only c passes (1 < 2) -> dropped; Z: 1 image -> dropped
    assert out == {"a": [("X", 0.9)], "b": [("X", 0.5)], "e": [("X", 0.3)]}


def test_multi_label_images_keep_every_passing_entity_sorted():
    out = select_labels(["a", "a", "b", "b"], ["Y", "X", "X", "Y"], [0.5, 0.6, 0.7, 0.8],
                        BuildConfig(threshold=0.0, min_images_per_entity=1))
    assert out == {"a": [("X", 0.6), ("Y", 0.5)], "b": [("X", 0.7), ("Y", 0.8)]}


def test_threshold_bounds_are_validated():
    with pytest.raises(ValueError):
        BuildConfig(threshold=1.5)


def _cfg(**kw):
    return BuildConfig(min_images_per_entity=1, **kw)


def test_top_k_keeps_the_best_candidates_of_each_image():
    out = select_labels(["a", "a", "a", "b"], ["X", "Y", "Z", "X"], [0.2, 0.9, 0.5, 0.1],
                        _cfg(rules=("top_k",), top_k=2))
    assert out == {"a": [("Y", 0.9), ("Z", 0.5)], "b": [("X", 0.1)]}


def test_null_quantile_uses_each_images_own_cutoff():
    out = select_labels(["a", "a", "b"], ["X", "Y", "X"], [0.6, 0.4, 0.45],
                        _cfg(rules=("null_quantile",)), null_cut={"a": 0.5, "b": 0.3})
    assert out == {"a": [("X", 0.6)], "b": [("X", 0.45)]}
    with pytest.raises(ValueError, match="null_samples"):
        select_labels(["c"], ["X"], [0.9], _cfg(rules=("null_quantile",)), null_cut={})


def test_rules_combine_with_and():
    out = select_labels(["a", "a", "b", "b"], ["X", "Y", "X", "Y"], [0.6, 0.5, 0.2, 0.1],
                        _cfg(rules=("top_k", "threshold"), top_k=1, threshold=0.3))
    assert out == {"a": [("X", 0.6)]}  # b's best (0.2) fails the threshold


def test_cap_per_entity_keeps_its_best_images():
    out = select_labels(["a", "b", "c"], ["X", "X", "X"], [0.5, 0.9, 0.7],
                        _cfg(rules=("threshold",), threshold=0.0, max_images_per_entity=2))
    assert out == {"b": [("X", 0.9)], "c": [("X", 0.7)]}


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError):
        BuildConfig(rules=("magic",))
