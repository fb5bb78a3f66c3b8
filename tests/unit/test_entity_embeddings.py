"""The entity text embeddings kept in the score stage's output: a re-run embeds only what it
has not seen, another scorer or KB never reuses them, and a worker refuses a folder made
for another run in one line."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mofi_core.curate import entity_embeddings as ee

IDENT = ee.identity("sha256:kb", "sha256:scorer", ("a photo of {name}.",),
                    ("a photo of {name}, {description}.",))


class Counting:
    """A deterministic stand-in for the text tower that records what it was asked."""

    def __init__(self) -> None:
        self.asked: list[list[str]] = []

    def __call__(self, ids: list[str]) -> np.ndarray:
        self.asked.append(list(ids))
        v = np.array([[float(int(e[1:])), 1.0, 0.0] for e in ids], dtype=np.float32)
        return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_a_rerun_embeds_only_the_entities_it_has_not_seen(tmp_path):
    folder, embed = tmp_path / "entities", Counting()
    first = ee.update(folder, IDENT, ["Q3", "Q1", "Q2"], embed)
    assert (first.embedded, first.reused, first.discarded) == (3, 0, "")
    again = ee.update(folder, IDENT, ["Q1", "Q2", "Q4"], embed)
    assert (again.embedded, again.reused) == (1, 2)
    assert embed.asked == [["Q1", "Q2", "Q3"], ["Q4"]]
    np.testing.assert_array_equal(ee.load(folder, IDENT, ["Q4", "Q1"]),
                                  Counting()(["Q4", "Q1"]))
    meta = json.loads((folder / ee.META).read_text())
    assert meta["entities"] == 3 and meta["width"] == 3  # Q3 is no longer needed: dropped


@pytest.mark.parametrize("field, value", [("scorer", "sha256:other"), ("kb", "sha256:kb2"),
                                          ("prompts", ("{name}",))])
def test_another_scorer_kb_or_prompt_embeds_everything_again(tmp_path, field, value):
    folder, embed = tmp_path / "entities", Counting()
    ee.update(folder, IDENT, ["Q1", "Q2"], embed)
    other = {**IDENT, field: list(value) if isinstance(value, tuple) else value}
    done = ee.update(folder, other, ["Q1", "Q2"], embed)
    assert (done.embedded, done.reused) == (2, 0) and done.discarded.startswith(field)
    with pytest.raises(ee.EmbeddingCacheError, match=f"another run \\({field} ") as err:
        ee.load(folder, IDENT, ["Q1"])  # a worker handed the other run's folder
    assert str(folder) in str(err.value) and "dvc repro -f score" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / ee.META).unlink(), "no entity embeddings in"),
    (lambda f: (f / ee.META).write_text("{nope"), r"meta\.json: not JSON"),
    (lambda f: (f / ee.VECTORS).write_bytes(b"\x93NUMPY"), "not readable"),
    (lambda f: np.save(f / ee.VECTORS, np.zeros((1, 3), np.float32)), "has 1 rows for 2"),
])
def test_a_damaged_folder_is_one_line_naming_it(tmp_path, damage, message):
    folder = tmp_path / "entities"
    ee.update(folder, IDENT, ["Q1", "Q2"], Counting())
    damage(folder)
    with pytest.raises(ee.EmbeddingCacheError, match=message) as err:
        ee.load(folder, IDENT, ["Q1"])
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


def test_an_entity_the_folder_lacks_is_refused_and_an_unreadable_one_is_rebuilt(tmp_path):
    folder, embed = tmp_path / "entities", Counting()
    ee.update(folder, IDENT, ["Q1", "Q2"], embed)
    with pytest.raises(ee.EmbeddingCacheError, match=r"no embedding for 1 entities .*'Q9'"):
        ee.load(folder, IDENT, ["Q1", "Q9"])
    (folder / ee.VECTORS).write_bytes(b"garbage")  # the main process embeds it all again
    done = ee.update(folder, IDENT, ["Q1", "Q2"], embed)
    assert (done.embedded, done.reused) == (2, 0) and done.discarded.startswith("unreadable")
    (folder / ee.META).write_text("{nope")
    done = ee.update(folder, IDENT, ["Q1", "Q2"], embed)
    assert (done.embedded, done.reused) == (2, 0) and "not JSON" in done.discarded
    assert ee.load(folder, IDENT, ["Q2"]).shape == (1, 3)
