import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from mofi_core.evaluate.probe import (
    class_texts,
    evaluate_labelled,
    image_folder,
    linear_probe,
    topk_accuracy,
    zero_shot,
)
from mofi_core.kb.store import KBEntity, KnowledgeBase
from mofi_core.models.artifact import (
    LoadedModel,
    build_model,
    default_meta,
    image_transform,
    load_model,
    save_model,
)
from mofi_core.models.factory import arch_config, tokenizer_for
from tests.errors import names

CS = (0.01, 0.1, 1, 10, 100)


def _save_tiny(folder, kind, classes=()):
    torch.manual_seed(0)
    meta = default_meta(kind, "mofi-tiny", arch_config("mofi-tiny"), kind, classes=classes)
    save_model(folder, build_model(meta), meta)
    return folder


def _loaded(folder):
    return LoadedModel.load(folder, torch.device("cpu"))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("models") / "clip", "clip")


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return _save_tiny(tmp_path_factory.mktemp("models") / "clf", "classifier", ("a", "b"))


def _image(path, rng, size=(40, 48)):
    """A coloured background with noise, so that images differ."""
    base = rng.integers(0, 256, size=3)
    pixels = np.clip(base + rng.normal(0, 40, size=(*size, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


# image_folder ------------------------------------------------------------------------------------

def test_image_folder_sorted_classes_and_files(tmp_path):
    rng = np.random.default_rng(0)
    for rel in ["b/x.png", "a/2.jpg", "a/1.webp", ".cache/z.jpg"]:
        _image(tmp_path / rel, rng)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    files, labels, names = image_folder(tmp_path)
    assert names == ["a", "b"]
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["a/1.webp", "a/2.jpg", "b/x.png"]
    assert labels.tolist() == [0, 0, 1]


def test_image_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing"):
        image_folder(tmp_path / "missing")
    with pytest.raises(ValueError, match="no class sub-folders"):
        image_folder(tmp_path)
    _image(tmp_path / "full" / "0.jpg", np.random.default_rng(0))
    (tmp_path / "hollow").mkdir()
    (tmp_path / "hollow" / "readme.txt").write_text("x")
    with pytest.raises(ValueError, match=r"without any image.*hollow"):
        image_folder(tmp_path)


@pytest.mark.parametrize("hollow, listed", [(5, "['e0', 'e1', 'e2', 'e3', 'e4']"),
                                             (6, "['e0', 'e1', 'e2', 'e3', 'e4'] ...")])
def test_image_folder_lists_five_empty_classes_then_says_there_are_more(tmp_path, hollow,
                                                                       listed):
    _image(tmp_path / "full" / "0.jpg", np.random.default_rng(0))
    for i in range(hollow):
        (tmp_path / f"e{i}").mkdir()
    expected = (f"{tmp_path}: class folders without any image (.jpg/.jpeg/.png/.webp): "
                f"{listed}; add images or remove those folders")
    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        image_folder(tmp_path)


def test_a_split_class_without_train_images_is_named_with_the_train_folder(tmp_path):
    rng = np.random.default_rng(0)
    _image(tmp_path / "train" / "a" / "0.jpg", rng)
    _image(tmp_path / "val" / "a" / "0.jpg", rng)
    for name in ["a", *(f"u{i}" for i in range(7))]:
        _image(tmp_path / "test" / name / "0.jpg", rng)
    expected = (f"{tmp_path / 'test'}: classes ['u0', 'u1', 'u2', 'u3', 'u4'] have no train "
                f"images in {tmp_path / 'train'}; the probe cannot learn them")
    from mofi_core.evaluate.probe import _labelled_splits

    with pytest.raises(ValueError, match=f"^{re.escape(expected)}$"):
        _labelled_splits(tmp_path)


# class_texts -------------------------------------------------------------------------------------

def test_class_texts_from_kb_with_fallback_and_descriptions():
    kb = KnowledgeBase([KBEntity("Q1", "Eiffel Tower", ("tour Eiffel",), "tower in Paris.",
                                 "landmark")])
    prompts = ("a photo of {name}.", "{name}: {description}")
    plain = class_texts(kb, ["Q1", "Q99"], prompts, with_description=False)
    assert plain == {"Q1": ["a photo of Eiffel Tower."], "Q99": ["a photo of Q99."]}
    rich = class_texts(kb, ["Q1", "Q99"], prompts, with_description=True)
    assert rich["Q1"] == ["a photo of Eiffel Tower.", "Eiffel Tower: tower in Paris",
                          "Eiffel Tower, tower in Paris."]
    assert rich["Q99"] == ["a photo of Q99."]  # not in the KB: no description to use
    assert class_texts(None, ["x"], prompts, False) == {"x": ["a photo of x."]}
    with pytest.raises(ValueError, match="only use"):
        class_texts(kb, ["Q1"], ("a photo of {nme}.",), False)
    with pytest.raises(ValueError, match="Q99"):
        class_texts(kb, ["Q99"], ("{name}: {description}",), True)


# linear probe ------------------------------------------------------------------------------------

def _blobs(rng, per_class, centres, spread):
    y = np.repeat(np.arange(len(centres)), per_class)
    return centres[y] + rng.normal(0, spread, size=(len(y), centres.shape[1])), y


def test_linear_probe_separable_data_is_perfect_and_ties_pick_smallest_c():
    rng = np.random.default_rng(0)
    centres = np.eye(3, 8) * 10
    splits = [_blobs(rng, n, centres, 0.5) for n in (10, 5, 5)]
    out = linear_probe(*splits[0], *splits[1], *splits[2], cs=CS)
    assert out["probe_top1"] == 1.0
    assert set(out["val_top1"]) == set(CS)
    assert all(v == 1.0 for v in out["val_top1"].values())
    assert out["C"] == 0.01  # every C is perfect on val: the tie goes to the smallest


def test_linear_probe_on_random_labels_stays_near_chance():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(600, 16))
    y = rng.integers(0, 4, size=600)
    out = linear_probe(feats[:200], y[:200], feats[200:300], y[200:300], feats[300:], y[300:],
                       cs=CS)
    assert out["C"] in CS
    assert 0.15 < out["probe_top1"] < 0.35  # chance is 0.25; 300 test images


def test_linear_probe_fits_on_one_blas_thread_whatever_the_caller_allows(monkeypatch):
    """Every fit runs with one BLAS thread (fast for its small products, and its result then
    does not depend on the core count); the caller's own limit is back afterwards."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_info, threadpool_limits

    def blas_threads() -> set[int]:
        return {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}

    def openmp_threads() -> list[int]:  # torch's and sklearn's OpenMP: not the fit's business
        return [p["num_threads"] for p in threadpool_info() if p["user_api"] == "openmp"]

    seen: list[set[int]] = []
    omp: list[list[int]] = []
    fit = LogisticRegression.fit
    monkeypatch.setattr(LogisticRegression, "fit", lambda self, *a, **k: (
        seen.append(blas_threads()), omp.append(openmp_threads()), fit(self, *a, **k))[2])
    omp_before = openmp_threads()
    rng = np.random.default_rng(0)
    splits = [_blobs(rng, n, np.eye(3, 8) * 10, 0.5) for n in (10, 5, 5)]
    if not blas_threads():
        pytest.skip("no BLAS library visible to threadpoolctl")
    with threadpool_limits(2, user_api="blas"):
        linear_probe(*splits[0], *splits[1], *splits[2], cs=CS)
        after = blas_threads()
    assert seen and all(s == {1} for s in seen)
    assert len(seen) == len(CS)
    assert after == {2}
    assert all(o == omp_before for o in omp)


@pytest.mark.parametrize("case, message", [
    ("one class", "linear probe needs at least 2 classes in the train split"),
    ("no val", "linear probe needs a non-empty val and test split"),
    ("no test", "linear probe needs a non-empty val and test split"),
    ("no C", "linear probe needs at least one value of C"),
])
def test_linear_probe_refuses_what_it_cannot_fit_or_score(case, message):
    x, y = np.eye(4, 2), np.array([0, 1, 0, 1])
    args = {"one class": (x, np.zeros(4), x, y, x, y, CS), "no val": (x, y, x[:0], y[:0], x, y, CS),
            "no test": (x, y, x, y, x[:0], y[:0], CS), "no C": (x, y, x, y, x, y, ())}[case]
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        linear_probe(*args[:6], cs=args[6])


def _overlapping(rng, n, classes=5, dim=32):
    """Classes whose clouds overlap, on feature scales three decades apart: the fit is badly
    conditioned (hundreds of lbfgs iterations at a large C) and C changes the answer."""
    centres = np.random.default_rng(7).normal(size=(classes, dim))
    y = rng.integers(0, classes, size=n)
    return (centres[y] + rng.normal(size=(n, dim)) * 1.5) * np.logspace(0, 3, dim), y


def test_each_c_is_fitted_on_train_alone_to_convergence():
    """Every C's validation accuracy and the reported test accuracy are those of an independent
    lbfgs fit on the train split with that C and 2,000 iterations; both need more than sklearn's
    default 100 iterations, so a fit cut short would show."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    (tx, ty), (vx, vy), (sx, sy) = (_overlapping(rng, n) for n in (300, 200, 200))
    cs = (100.0, 1e4)
    out = linear_probe(tx, ty, vx, vy, sx, sy, cs=cs)
    ref = {c: LogisticRegression(C=c, max_iter=2000).fit(tx, ty) for c in cs}
    assert all(100 < m.n_iter_.max() < 2000 for m in ref.values())  # a shorter fit would show
    assert out["val_top1"] == {c: float((m.predict(vx) == vy).mean()) for c, m in ref.items()}
    assert len(set(out["val_top1"].values())) == 2  # C matters here
    assert out["probe_top1"] == float((ref[out["C"]].predict(sx) == sy).mean())
    assert out["not_converged"] == []


def test_a_fit_stopped_at_max_iter_is_listed_and_its_warning_kept_quiet(monkeypatch):
    """A fit that ends on its iteration cap (even exactly on it) is reported by C, and
    sklearn's ConvergenceWarning does not reach the caller (the note says it instead)."""
    import warnings

    from mofi_core.evaluate import probe

    monkeypatch.setattr(probe, "MAX_ITER", 2)
    rng = np.random.default_rng(3)
    (tx, ty), (vx, vy), (sx, sy) = (_overlapping(rng, n) for n in (300, 100, 100))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = linear_probe(tx, ty, vx, vy, sx, sy, cs=(10, 1))
    assert out["not_converged"] == [1.0, 10.0]


def test_topk_accuracy_breaks_long_ties_by_the_lower_index():
    """50 classes tie at the top of a 100-class row: the k best are the k lowest indices among
    them (a quicksort would pick others on a row this long)."""
    scores = np.zeros((1, 100))
    scores[0, ::2] = 1.0
    assert topk_accuracy(scores, np.array([4]), 3) == 1.0  # 0, 2, 4
    assert topk_accuracy(scores, np.array([6]), 3) == 0.0


def test_topk_accuracy_hand_computed():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1], [0.0, 0.5, 0.4]])
    labels = np.array([0, 0, 2])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(1.0)


# zero-shot ---------------------------------------------------------------------------------------

TEXTS = {"c0": ["a photo of a dog."], "c1": ["a photo of a cat.", "a small cat"],
         "c2": ["a red car"], "c3": ["the eiffel tower", "a tall tower", "a landmark"],
         "c4": ["a bowl of soup"], "c5": ["mountains at dusk", "snowy peaks"]}


@torch.no_grad()
def _reference_scores(model_dir, paths):
    """Image x class cosine scores computed here, independently of the probe module."""
    model, meta = load_model(model_dir)
    transform, tokenizer = image_transform(meta), tokenizer_for(meta.arch_config)
    images = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths])
    img = F.normalize(model.encode_image(images), dim=-1)
    cls = torch.stack([F.normalize(F.normalize(model.encode_text(tokenizer(TEXTS[c])), dim=-1)
                                   .mean(0), dim=0) for c in sorted(TEXTS)])
    return (img @ cls.T).numpy()


def test_zero_shot_reports_the_independently_computed_accuracy(clip_dir, tmp_path):
    rng = np.random.default_rng(3)
    staged = [_image(tmp_path / "staged" / f"{j}.png", rng) for j in range(12)]
    scores = _reference_scores(clip_dir, staged)
    ranking = np.argsort(-scores, axis=1)
    ordered = -np.sort(-scores, axis=1)
    # the ranks that decide top-1 and top-5 must not be near-ties (float noise would flip them)
    assert np.abs(ordered[:, 0] - ordered[:, 1]).min() > 1e-4
    assert np.abs(ordered[:, 4] - ordered[:, 5]).min() > 1e-4
    # images 0-5 fill every class folder; 6-11 go to the class ranked 1st, 4th or 6th for them
    labels = np.array([j if j < 6 else ranking[j, (0, 3, 5)[j % 3]] for j in range(12)])
    for j, path in enumerate(staged):
        dest = tmp_path / "split" / f"c{labels[j]}" / path.name
        dest.parent.mkdir(parents=True, exist_ok=True)
        path.rename(dest)
    out = zero_shot(_loaded(clip_dir), tmp_path / "split", TEXTS, batch_size=5)
    assert out["top1"] == pytest.approx(np.mean(ranking[:, 0] == labels))
    assert out["top5"] == pytest.approx(np.mean((ranking[:, :5] == labels[:, None]).any(1)))
    assert out["top1"] >= 2 / 12 and out["top5"] < 1.0  # the forced hits and misses are there
    assert (out["images"], out["classes"]) == (12, 6)


def test_zero_shot_rejects_a_model_without_text_tower(classifier_dir, tmp_path):
    _image(tmp_path / "a" / "0.png", np.random.default_rng(0))
    with pytest.raises(ValueError, match="no text tower"):
        zero_shot(_loaded(classifier_dir), tmp_path, {"a": ["a photo of a."]})


# evaluate_labelled -------------------------------------------------------------------------------

@pytest.mark.slow
def test_evaluate_labelled_on_tiny_world(tiny_world, clip_dir):
    layout, _, _ = tiny_world
    metrics, notes = evaluate_labelled(_loaded(clip_dir), layout.benchmark / "labelled",
                                       layout.kb, ("a photo of {name}.",), batch_size=16)
    assert set(metrics) == {"zero_shot_top1", "zero_shot_top5", "probe_top1", "probe_c"}
    for key in ("zero_shot_top1", "zero_shot_top5", "probe_top1"):
        assert 0.0 <= metrics[key] <= 1.0
    assert metrics["zero_shot_top1"] <= metrics["zero_shot_top5"]
    assert metrics["probe_c"] in CS
    # the demo KB holds only corpus entities: the unseen benchmark classes are reported
    assert any("not KB entities" in n for n in notes)


@pytest.mark.slow
def test_evaluate_labelled_without_text_tower_omits_zero_shot(tiny_world, classifier_dir):
    layout, _, _ = tiny_world
    metrics, notes = evaluate_labelled(_loaded(classifier_dir), layout.benchmark / "labelled",
                                       layout.kb, batch_size=16)
    assert set(metrics) == {"probe_top1", "probe_c"}
    assert any(n.startswith("zero-shot: n/a") for n in notes)


# one load per model folder --------------------------------------------------------------------

def test_a_loaded_model_carries_what_each_kind_needs(clip_dir, classifier_dir):
    clip, clf = _loaded(clip_dir), _loaded(classifier_dir)
    assert clip.has_text_tower and clip.text_model is clip.model and clip.tokenizer is not None
    assert not clf.has_text_tower and clf.tokenizer is None
    with pytest.raises(ValueError, match="no text tower"):
        clf.text_model
    assert next(clip.model.parameters()).device == clip.device


@pytest.mark.slow
def test_evaluate_loads_each_model_folder_once(tiny_world, clip_dir, classifier_dir,
                                               monkeypatch):
    """Retrieval, linear probe and zero-shot share one load per model (they loaded the folder
    three times before)."""
    from mofi_core.config.evaluate import EvaluateConfig
    from mofi_core.evaluate import run

    layout, _, _ = tiny_world
    loads = []
    real = LoadedModel.load.__func__

    def counting(cls, folder, device):
        loads.append(folder)
        return real(cls, folder, device)

    monkeypatch.setattr(run.LoadedModel, "load", classmethod(counting))
    cfg = EvaluateConfig(device="cpu", batch_size=16, pictures=False)
    results = run.evaluate({"mofi": classifier_dir, "baseline": clip_dir}, layout.gpr, cfg,
                           layout.benchmark / "classes.json", layout.benchmark / "labelled",
                           layout.kb)
    assert loads == [classifier_dir, clip_dir]
    assert "zero_shot_top1" in results["baseline"] and "zero_shot_top1" not in results["mofi"]
    assert "probe_top1" in results["mofi"]


def test_embeddings_are_normalised_once_where_they_are_made(clip_dir, tmp_path):
    from mofi_core.evaluate.embed import embed_files

    rng = np.random.default_rng(0)
    files = [_image(tmp_path / f"{i}.png", rng) for i in range(5)]
    loaded = _loaded(clip_dir)
    feats = embed_files(loaded, files, batch_size=2)
    assert feats.dtype == np.float32 and feats.shape[0] == 5
    np.testing.assert_allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-6)
    real = loaded.model.encode_image

    def one_zero_row(images):  # the fourth image (second batch, second row) embeds to zeros
        out = real(images)
        if len(images) == 2 and not getattr(one_zero_row, "seen", False):
            one_zero_row.seen = True
            return out
        out[1:2] = 0
        return out

    loaded.model.encode_image = one_zero_row
    with pytest.raises(ValueError, match=r"zero or non-finite embedding for .*3\.png"):
        embed_files(loaded, files, batch_size=2)



def test_decoded_images_are_shared_between_models_with_the_same_transform(
        clip_dir, classifier_dir, tmp_path):
    """The second model reads the first one's preprocessed images (the files may be gone),
    with the embeddings a fresh decode gives; a set over ``max_bytes`` is never held."""
    from mofi_core.evaluate.embed import DecodedImages, embed_files

    rng = np.random.default_rng(2)
    files = [_image(tmp_path / f"{i}.png", rng) for i in range(5)]
    clip, classifier = _loaded(clip_dir), _loaded(classifier_dir)
    assert repr(clip.transform) == repr(classifier.transform)
    fresh = {m: embed_files(x, files, 2) for m, x in (("clip", clip), ("cls", classifier))}
    decoded = DecodedImages()
    np.testing.assert_array_equal(embed_files(clip, files, 2, decoded=decoded), fresh["clip"])
    assert decoded.used == 5 * 3 * 64 * 64 * 4
    for f in files:
        f.unlink()
    np.testing.assert_array_equal(embed_files(classifier, files, 3, decoded=decoded),
                                  fresh["cls"])
    assert decoded.get(files[:4], clip.transform) is None  # another file list: not shared
    small = DecodedImages(max_bytes=3 * 3 * 64 * 64 * 4)  # room for 3 of the 5 images
    files = [_image(tmp_path / f"b{i}.png", rng) for i in range(5)]
    embed_files(clip, files, 2, decoded=small)
    assert small.get(files, clip.transform) is None and small.used == 0


def _labelled(root, rng, layout):
    for split, classes in layout.items():
        for cls, n in classes.items():
            for i in range(n):
                _image(root / split / cls / f"{i}.png", rng)
    return root


def test_evaluate_labelled_equals_its_parts_with_labels_in_the_train_index(clip_dir, tmp_path):
    """The metrics are exactly those of embedding every split, probing on train/val/test and
    zero-shot on test -- with a test split that lacks a class, so its labels must be mapped to
    the train split's class indices, not its own."""
    from mofi_core.evaluate.embed import embed_files
    from mofi_core.evaluate.probe import text_classifier, zero_shot_scores

    root = _labelled(tmp_path / "lab", np.random.default_rng(1), {
        "train": {"Q1": 3, "Q2": 3, "Q3": 3}, "val": {"Q1": 2, "Q2": 1, "Q3": 2},
        "test": {"Q1": 2, "Q3": 3}})
    kb = KnowledgeBase([KBEntity("Q1", "Alpha", (), "a person", "person"),
                        KBEntity("Q2", "Beta", (), "a place", "place")])
    loaded = _loaded(clip_dir)
    prompts = ("a photo of {name}.", "{name}")
    metrics, notes = evaluate_labelled(loaded, root, kb, prompts, batch_size=4, cs=(0.1, 10))

    names = ["Q1", "Q2", "Q3"]
    files = {s: image_folder(root / s)[0] for s in ("train", "val", "test")}
    ys = {"train": [0, 0, 0, 1, 1, 1, 2, 2, 2], "val": [0, 0, 1, 2, 2],
          "test": [0, 0, 2, 2, 2]}  # test's Q3 is class 2 of train, not its own 1
    feats = {s: embed_files(loaded, files[s], 4) for s in files}
    probe = linear_probe(feats["train"], np.array(ys["train"]), feats["val"],
                         np.array(ys["val"]), feats["test"], np.array(ys["test"]), cs=(0.1, 10))
    weights = text_classifier(loaded, names, class_texts(kb, names, prompts), 4)
    zs = zero_shot_scores(feats["test"], np.array(ys["test"]), weights)
    assert metrics == {"probe_top1": probe["probe_top1"], "probe_c": probe["C"],
                       "zero_shot_top1": zs["top1"], "zero_shot_top5": zs["top5"]}
    assert notes[0] == f"linear probe: C={probe['C']:g} chosen on val, model fitted on train only"
    assert ("zero-shot: 1 of 3 classes are not KB entities; their folder names were used as "
            "class names (first: Q3)") in notes


def test_evaluate_labelled_refuses_a_class_without_train_images(clip_dir, tmp_path):
    root = _labelled(tmp_path / "lab", np.random.default_rng(2), {
        "train": {"Q1": 2, "Q2": 2}, "val": {"Q1": 1, "Q2": 1}, "test": {"Q1": 1, "Q9": 1}})
    with pytest.raises(ValueError, match=r"test: classes \['Q9'\] have no train images"):
        evaluate_labelled(_loaded(clip_dir), root, None, batch_size=4)


def test_evaluate_labelled_without_text_tower_on_a_small_folder(classifier_dir, tmp_path):
    root = _labelled(tmp_path / "lab", np.random.default_rng(3), {
        "train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}, "test": {"a": 1, "b": 1}})
    metrics, notes = evaluate_labelled(_loaded(classifier_dir), root, None, batch_size=4,
                                       cs=(1,))
    assert set(metrics) == {"probe_top1", "probe_c"} and metrics["probe_c"] == 1.0
    assert notes[-1] == "zero-shot: n/a (classifier model has no text tower)"


def test_class_texts_leave_descriptions_out_unless_asked():
    kb = KnowledgeBase([KBEntity("Q1", "Tesla", (), "Model X.", "product")])
    prompts = ("a photo of {name}.", "{name}: {description}")
    assert class_texts(kb, ["Q1"], prompts) == {"Q1": ["a photo of Tesla."]}
    # the description's final full stop goes, and only that (its X stays)
    assert class_texts(kb, ["Q1"], prompts, with_description=True) == {
        "Q1": ["a photo of Tesla.", "Tesla: Model X", "Tesla, Model X."]}
    with pytest.raises(ValueError) as err:
        class_texts(kb, ["Q1"], ("{name}: {description}",))
    names(err.value, "'Q1'", "description", "{name}")


def test_zero_shot_refuses_a_classifier_before_reading_the_folder(classifier_dir, tmp_path):
    with pytest.raises(ValueError, match="no text tower"):
        zero_shot(_loaded(classifier_dir), tmp_path / "missing", {"a": ["a"]})
