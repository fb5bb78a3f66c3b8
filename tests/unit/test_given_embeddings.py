"""`mofi evaluate-embeddings`: retrieval on precomputed embeddings and a GPR1200-layout folder,
checked against a per-query loop written the way the official GPR1200 code evaluates."""

import functools
import json
import os

import numpy as np
import pytest
from typer.testing import CliRunner

from mofi_core.cli import app
from mofi_core.evaluate.given import evaluate_given, load_given
from mofi_core.evaluate.retrieval import GPR1200_DOMAINS, average_precisions, gpr_files
from tests.unit.test_retrieval import loop_aps


def official_domain_maps(folder):
    """The official loader's file order (a stable sort of the directory listing by the integer
    before '_'), the official per-query ranking and AP, and its six blocks of 2,000 rows."""
    return _official(tuple(os.listdir(folder)))


@functools.cache
def _official(listing: tuple[str, ...]):
    """The reference, once per listing: its 12,000 python-level rankings take ~10 s and depend
    on no project code (mutation testing forks one process per mutant after a first run)."""
    features_by_name = _gpr_features()
    names = sorted(listing, key=lambda a: int(a.split("_")[0]))
    cats = np.array([n.split("_")[0] for n in names])
    feats = np.stack([features_by_name[n] for n in names])
    sims = feats @ feats.T  # the official full product (a row alone would go to gemv)
    aps = []
    for q in range(len(feats)):
        order = np.argsort(sims[q])[::-1]  # one row of the official argsort over the matrix
        score, seen = 0.0, 0
        for i in np.where(cats[order] == cats[q])[0]:  # summed in the official order
            seen += 1
            score += seen / (i + 1.0)
        aps.append(score / seen)
    aps = np.array(aps)
    return (float(np.mean(aps)), [float(np.mean(aps[2000 * i:2000 * (i + 1)])) for i in range(6)],
            dict(zip(names, aps, strict=True)))


@pytest.fixture(scope="module")
def gpr_folder(tmp_path_factory):
    """1,200 categories x 10 images in the official layout (an unpacked download: images/
    holding '{category}_{hash}.jpg'), written in a shuffled order; features per file whose
    noise grows by domain."""
    root = tmp_path_factory.mktemp("GPR1200")
    images = root / "images"
    images.mkdir()
    by_name = _gpr_features()
    for name in by_name:
        (images / name).write_bytes(b"")  # the loader reads names only
    return root, by_name


@functools.cache
def _gpr_features() -> dict[str, np.ndarray]:
    """File name -> feature, in a shuffled write order (seeded)."""
    rng = np.random.default_rng(0)
    cats = rng.permutation(np.repeat(np.arange(1200), 10))
    centres = rng.normal(size=(1200, 8))
    by_name = {}
    for i, c in enumerate(cats):
        name = f"{c}_{rng.integers(16**8):08x}{i}.jpg"
        v = centres[c] + rng.normal(size=8) * (0.4 + 0.15 * (c // 200))
        by_name[name] = (v / np.linalg.norm(v)).astype(np.float32)
    return by_name


def test_gpr_layout_domains_in_the_official_order(gpr_folder, tmp_path):
    root, by_name = gpr_folder
    files, _ = gpr_files(root)
    np.save(tmp_path / "feats.npy", np.stack([by_name[f.name] for f in files]))
    result = CliRunner().invoke(app, ["evaluate-embeddings", str(tmp_path / "feats.npy"),
                                      "--gpr-dir", str(root), "--out", str(tmp_path / "m.json")])
    assert result.exit_code == 0, result.output
    ours = json.loads((tmp_path / "m.json").read_text())
    assert ours["images"] == 12_000 and ours["classes"] == 1200 and ours["dtype"] == "float32"
    overall, domains, official_aps = official_domain_maps(root / "images")
    aps = average_precisions(np.load(tmp_path / "feats.npy"), np.array(
        [int(f.name.split("_")[0]) for f in files]))
    assert all(aps[i] == official_aps[f.name] for i, f in enumerate(files))  # bit for bit
    assert ours["gpr_map"] == pytest.approx(overall, abs=1e-9)
    assert [ours[f"gpr_map_{d}"] for d in GPR1200_DOMAINS] == pytest.approx(domains, abs=1e-9)
    assert np.all(np.diff(domains) < 0)  # six different numbers, so a swap would show


def test_npz_with_labels_and_features_used_as_stored(tmp_path):
    feats = np.array([[1.0, 0.0], [3.0, 3.0], [1.0, 0.1], [0.0, 1.0]])
    labels = np.array([0, 1, 0, 1])
    np.savez(tmp_path / "e.npz", features=feats, labels=labels)
    m = evaluate_given(tmp_path / "e.npz")
    assert m["dtype"] == "float64" and m["images"] == 4 and m["classes"] == 2
    np.save(tmp_path / "f.npy", feats)
    (tmp_path / "l.json").write_text(json.dumps(labels.tolist()))
    assert evaluate_given(tmp_path / "f.npy", tmp_path / "l.json") == m
    assert m["gpr_map"] == pytest.approx(loop_aps(feats, labels).mean(), abs=1e-15)
    unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    assert m["gpr_map"] < loop_aps(unit, labels).mean()  # cosine would rank c above b


@pytest.mark.parametrize("case, match", [
    ("no_labels", r"f\.npy: no labels; store them .* --labels FILE or --gpr-dir"),
    ("count", r"\(3, 2\) features for 2 labels"),
    ("pickled", r"cannot read labels without unpickling"),
    ("npz_without_features", r"holds no array named 'features'"),
    ("both", r"not both"),
    ("missing", r"nope\.npy does not exist"),
])
def test_bad_inputs_name_the_file_and_the_fix(tmp_path, case, match):
    np.save(tmp_path / "f.npy", np.eye(3, 2))
    args = {"no_labels": (tmp_path / "f.npy", None, None),
            "count": (tmp_path / "f.npy", tmp_path / "two.npy", None),
            "pickled": (tmp_path / "f.npy", tmp_path / "obj.npy", None),
            "npz_without_features": (tmp_path / "x.npz", None, None),
            "both": (tmp_path / "f.npy", tmp_path / "two.npy", tmp_path),
            "missing": (tmp_path / "nope.npy", None, None)}[case]
    np.save(tmp_path / "two.npy", np.array([0, 1]))
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}, 2, 3], dtype=object), allow_pickle=True)
    np.savez(tmp_path / "x.npz", other=np.zeros(3))
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        load_given(*args)
    result = CliRunner().invoke(app, ["evaluate-embeddings", str(args[0])]
                                + (["--labels", str(args[1])] if args[1] else [])
                                + (["--gpr-dir", str(args[2])] if args[2] else []))
    assert result.exit_code == 1 and "error:" in result.output


def test_a_benchmark_uses_only_its_own_class_list(tmp_path):
    from mofi_core.evaluate.run import classes_file

    demo_gpr, demo_classes = tmp_path / "benchmark" / "gpr", tmp_path / "benchmark" / "c.json"
    demo_gpr.mkdir(parents=True)
    mine = tmp_path / "mine"
    mine.mkdir()
    assert classes_file(demo_gpr, demo_gpr, demo_classes) == demo_classes
    assert classes_file(tmp_path / "benchmark" / ".." / "benchmark" / "gpr", demo_gpr,
                        demo_classes) == demo_classes
    assert classes_file(mine, demo_gpr, demo_classes) is None  # never the demo's list
    (mine / "classes.json").write_text("[]")
    assert classes_file(mine, demo_gpr, demo_classes) == mine / "classes.json"
