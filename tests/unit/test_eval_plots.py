import numpy as np
import pytest
from PIL import Image

from mofi_core.evaluate.plots import (
    pick_queries,
    pr_curves,
    retrieval_grid,
    retrieval_tiles,
    tsne_plot,
)


def _png_size(path):
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as img:
        assert img.format == "PNG"
        return img.size


def _no_temporaries(folder):
    assert not [p.name for p in folder.iterdir() if ".tmp-" in p.name]


@pytest.fixture
def images(tmp_path):
    """Nine small images of three colours: three classes."""
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200)]
    files, labels = [], []
    for cls, colour in enumerate(colours):
        for i in range(3):
            path = tmp_path / "imgs" / f"{cls}_{i}.png"
            path.parent.mkdir(exist_ok=True)
            Image.new("RGB", (60 + 10 * i, 50), colour).save(path)
            files.append(path)
            labels.append(cls)
    return files, np.array(labels)


def test_pick_queries_cover_every_class_before_repeating_one():
    labels = np.array([0, 0, 0, 1, 1, 2])
    q = pick_queries(labels, 4, seed=0)
    assert len(set(q.tolist())) == 4
    assert sorted(labels[q[:3]].tolist()) == [0, 1, 2]
    assert q.tolist() == pick_queries(labels, 4, seed=0).tolist()  # deterministic
    assert len(pick_queries(labels, 50)) == len(labels)


def test_retrieval_tiles_rank_other_images_and_mark_same_class():
    feats = np.array([[1.0, 0.0], [0.9, 0.1], [0.8, 0.3], [0.0, 1.0], [0.1, 0.9]])
    labels = np.array(["a", "a", "b", "b", "a"])
    top, same = retrieval_tiles(feats, labels, np.array([0, 3]), k=3)
    # query 0 is closest to 1, then 2, then 4 (3 is orthogonal); never to itself
    assert top.tolist() == [[1, 2, 4], [4, 2, 1]]
    assert same.tolist() == [[True, False, True], [False, True, False]]


def test_retrieval_grid_writes_png(images, tmp_path):
    files, labels = images
    feats = np.eye(3)[labels] + np.random.default_rng(0).normal(0, 0.1, (len(files), 3))
    out = retrieval_grid(files, labels, feats, tmp_path / "out" / "grid.png", queries=3, k=4)
    width, height = _png_size(out)
    assert 550 <= width <= 650 and 350 <= height <= 430  # 5 tiles x 3 rows
    _no_temporaries(out.parent)
    # every tile framed: the query black, same-class neighbours green, the others red (each
    # query's two classmates are its nearest: one-hot features)
    from mofi_core.evaluate.plots import FRAME, GAP, THUMB, TITLE

    with Image.open(out) as img:
        grid = img.convert("RGB")
    colours = []
    for r in range(3):
        y = GAP + r * (TITLE + THUMB + 2 * FRAME + GAP) + TITLE + FRAME + THUMB // 2
        colours.append([grid.getpixel((GAP + c * (THUMB + 2 * FRAME + GAP) + 1, y))
                        for c in range(5)])
    black, green, red = (0, 0, 0), (0, 150, 0), (210, 0, 0)
    assert colours == [[black, green, green, red, red]] * 3
    # k larger than the other images available shrinks to n - 1
    assert _png_size(retrieval_grid(files, labels, feats, tmp_path / "g2.png", 2, k=50))[0] > 0


def test_tsne_plot_by_class_and_by_group(tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    feats = np.eye(3, 6)[labels] * 5 + rng.normal(size=(30, 6))
    assert 550 <= _png_size(tsne_plot(feats, labels, tmp_path / "a.png"))[0] <= 650
    groups = np.where(labels < 2, "seen", "unseen")
    out = tsne_plot(feats, labels, tmp_path / "b.png", groups=groups, max_points=12)
    width, height = _png_size(out)
    assert 550 <= width <= 650 and 450 <= height <= 550
    with pytest.raises(ValueError, match="at least 3"):
        tsne_plot(feats[:2], labels[:2], tmp_path / "c.png")


def test_pr_curves(tmp_path):
    recall = np.linspace(0, 1, 11)
    out = pr_curves({"mofi": (recall, 1 - 0.5 * recall), "baseline": (recall, 1 - 0.8 * recall)},
                    tmp_path / "pr.png")
    width, height = _png_size(out)
    assert 450 <= width <= 550 and 350 <= height <= 450
    with pytest.raises(ValueError, match="recall levels"):
        pr_curves({"bad": (recall, recall[:3])}, tmp_path / "bad.png")
    with pytest.raises(ValueError, match="at least one"):
        pr_curves({}, tmp_path / "none.png")
