import numpy as np
import pytest

from mofi_core.evaluate.retrieval import average_precisions, gpr_files, recall_at_k


def reference_aps(features, labels):
    """Plain per-query loop, following the published GPR1200 protocol (query kept in ranking)."""
    feats = features / np.linalg.norm(features, axis=1, keepdims=True)
    aps = []
    for i in range(len(feats)):
        order = np.argsort(-(feats @ feats[i]), kind="stable")
        rel = labels[order] == labels[i]
        hits, score = 0, 0.0
        for rank, r in enumerate(rel, start=1):
            if r:
                hits += 1
                score += hits / rank
        aps.append(score / rel.sum())
    return np.array(aps)


def test_hand_computed_example():
    # 1-D embeddings; query 0 (class 0) ranks: itself, item 2 (class 1), item 1 (class 0), item 3
    feats = np.array([[1.0, 0.0], [0.2, 1.0], [0.9, 0.3], [-1.0, 0.1]])
    labels = np.array([0, 0, 1, 1])
    aps = average_precisions(feats, labels)
    # query 0: relevant at ranks 1 and 3 -> (1/1 + 2/3) / 2
    assert aps[0] == pytest.approx((1 + 2 / 3) / 2)


def test_vectorised_equals_reference_loop_with_small_chunks():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(20), 5)
    feats = rng.normal(size=(100, 16)) + labels[:, None] * 0.3
    np.testing.assert_allclose(average_precisions(feats, labels, chunk=7),
                               reference_aps(feats, labels), atol=1e-6)


def test_perfect_and_recall():
    labels = np.array([0, 0, 1, 1])
    feats = np.array([[1, 0], [1, 0.01], [0, 1], [0.01, 1]], dtype=float)
    assert average_precisions(feats, labels).mean() == pytest.approx(1.0)
    assert recall_at_k(feats, labels, 1) == 1.0


def test_zero_embedding_is_an_error():
    with pytest.raises(ValueError, match="all zeros"):
        average_precisions(np.zeros((2, 3)), np.array([0, 1]))


def test_gpr_layout_is_read_in_category_order(tmp_path):
    for name in ["10_b.jpg", "2_a.jpg", "2_c.jpg", "notes.txt"]:
        (tmp_path / name).write_bytes(b"")
    files, cats = gpr_files(tmp_path)
    assert [f.name for f in files] == ["2_a.jpg", "2_c.jpg", "10_b.jpg"]
    assert cats.tolist() == [2, 2, 10]
    (tmp_path / "x_bad.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="integer category"):
        gpr_files(tmp_path)
