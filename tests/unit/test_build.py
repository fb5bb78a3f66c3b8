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
