"""Classification benchmarks on an ImageFolder-layout set: zero-shot and linear probe.

Zero-shot needs a text tower (a ``clip`` model, or a ``multitask`` model through ``model.clip``):
each class becomes the renormalised mean of its prompts' text embeddings, and every image is
assigned the class whose vector is closest. The linear probe works for any model: a logistic
regression on frozen, L2-normalised image embeddings, with ``C`` chosen on the validation split.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mofi_core.evaluate.embed import DecodedImages, embed_files
from mofi_core.kb.store import KnowledgeBase
from mofi_core.models.artifact import LoadedModel
from mofi_core.models.factory import encode_texts

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")
SPLITS = ("train", "val", "test")
DEFAULT_PROMPTS = ("a photo of {name}.",)


def image_folder(root: Path | str) -> tuple[list[Path], np.ndarray, list[str]]:
    """Files, integer labels and class names (sorted sub-folder names) of an ImageFolder tree
    ``root/<class>/<image>``. Hidden folders are ignored; files are sorted within a class."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder; expected '{root}/<class>/<image>.jpg'")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise ValueError(f"{root} has no class sub-folders; expected '{root}/<class>/<image>.jpg'")
    files: list[Path] = []
    labels: list[int] = []
    empty = []
    for i, name in enumerate(classes):
        found = sorted(p for p in (root / name).iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not found:
            empty.append(name)
        files += found
        labels += [i] * len(found)
    if empty:
        more = " ..." if len(empty) > 5 else ""
        raise ValueError(f"{root}: class folders without any image ({'/'.join(IMAGE_SUFFIXES)}): "
                         f"{empty[:5]}{more}; add images or remove those folders")
    return files, np.asarray(labels, dtype=np.int64), classes


def class_texts(kb: KnowledgeBase | None, class_names: Sequence[str],
                prompts: Sequence[str] = DEFAULT_PROMPTS, with_description: bool = False
                ) -> dict[str, list[str]]:
    """Prompt texts per class folder (folder name = KB entity id).

    Templates may use ``{name}`` and ``{description}``. A folder name that is not a KB entity id
    is used as the name itself. Templates with ``{description}`` are used only when
    ``with_description`` is set and the entity has a description; ``with_description`` also adds
    a plain ``"{name}, {description}."`` text.
    """
    out = {}
    for cls in class_names:
        ent = kb.get(cls) if kb is not None else None
        name = ent.name if ent else cls
        desc = ent.description.strip().rstrip(".") if ent and with_description else ""
        texts = [_fill(p, name, desc) for p in prompts if desc or "{description}" not in p]
        if desc:
            texts.append(f"{name}, {desc}.")
        if not texts:
            raise ValueError(f"class {cls!r}: every prompt needs a description and it has none; "
                             "add a template that only uses {name}")
        out[cls] = list(dict.fromkeys(texts))
    return out


def _fill(template: str, name: str, description: str) -> str:
    try:
        return template.format(name=name, description=description)
    except (KeyError, IndexError) as err:
        raise ValueError(f"prompt {template!r} may only use {{name}} and {{description}} "
                         f"(got {err})") from None


@torch.no_grad()
def text_classifier(loaded: LoadedModel, class_names: Sequence[str],
                    texts: dict[str, list[str]], batch_size: int = 256) -> np.ndarray:
    """One unit vector per class (rows follow ``class_names``): the prompt ensemble, i.e. the
    mean of the normalised text embeddings of the class's texts, renormalised. Raises
    ``ValueError`` for a model without a text tower."""
    clip = loaded.text_model
    missing = [c for c in class_names if not texts.get(c)]
    if missing:
        raise ValueError(f"no prompt texts for classes {missing[:5]}; build them with class_texts")
    flat = [t for c in class_names for t in texts[c]]
    owner = torch.repeat_interleave(torch.arange(len(class_names)),
                                    torch.tensor([len(texts[c]) for c in class_names]))
    per_text = encode_texts(clip, loaded.tokenizer, flat, loaded.device, batch_size).cpu()
    sums = torch.zeros(len(class_names), per_text.shape[1]).index_add_(0, owner, per_text)
    return torch.nn.functional.normalize(sums, dim=-1).numpy()


def topk_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of rows whose label is among the ``k`` highest scores (ties: lower index first)."""
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return float((top == np.asarray(labels)[:, None]).any(1).mean())


def zero_shot_scores(image_feats: np.ndarray, labels: np.ndarray, weights: np.ndarray
                     ) -> dict[str, float]:
    """Top-1 and top-5 (top-min(5, classes)) accuracy of cosine scores against class vectors."""
    scores = image_feats @ weights.T
    return {"top1": topk_accuracy(scores, labels, 1),
            "top5": topk_accuracy(scores, labels, min(5, len(weights)))}


def zero_shot(loaded: LoadedModel, split_dir: Path | str, class_texts: dict[str, list[str]],
              batch_size: int = 256) -> dict[str, float]:
    """Zero-shot accuracy on an ImageFolder split; the label space is the split's class folders.
    Raises ``ValueError`` for a model without a text tower (kind ``classifier``)."""
    _ = loaded.text_model  # raises for a model without a text tower, before any embedding
    files, labels, names = image_folder(split_dir)
    weights = text_classifier(loaded, names, class_texts, batch_size)
    feats = embed_files(loaded, files, batch_size)
    return {**zero_shot_scores(feats, labels, weights), "images": len(files),
            "classes": len(names)}


MAX_ITER = 2000  # lbfgs iterations per fit; a fit stopped there is listed in not_converged


def _fit(feats: np.ndarray, labels: np.ndarray, c: float):
    """One lbfgs fit on one BLAS thread: its products are small (images x classes x dim), and
    waking a team of BLAS threads for each made the demo's 15 fits 8x slower on 2 cores. One
    thread also makes the fit, hence ``C`` and the probe's accuracy, independent of the
    machine's core count (lbfgs stops at a tolerance, so summation order moves it)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    clf = LogisticRegression(C=c, solver="lbfgs", max_iter=MAX_ITER)  # deterministic: no seed
    with warnings.catch_warnings(), threadpool_limits(1, user_api="blas"):
        # not swallowed: the caller reports every C whose fit hit max_iter
        warnings.simplefilter("ignore", ConvergenceWarning)
        return clf.fit(feats, labels)


def linear_probe(train_feats: np.ndarray, train_y: np.ndarray, val_feats: np.ndarray,
                 val_y: np.ndarray, test_feats: np.ndarray, test_y: np.ndarray,
                 cs: Sequence[float] = (0.01, 0.1, 1, 10, 100)) -> dict:
    """Multinomial logistic regression (lbfgs) on frozen features.

    ``C`` is the value with the best validation top-1 (ties go to the smaller ``C``). The model
    reported on test is the one fitted on the *train split only* for that ``C``: it is not refit
    on train+val, so validation images never influence the test model beyond choosing ``C``.

    Returns ``probe_top1`` (test), ``C``, ``val_top1`` ({C: val top-1}) and ``not_converged``
    (the values of C whose fit stopped at ``max_iter``).
    """
    if len(np.unique(train_y)) < 2:
        raise ValueError("linear probe needs at least 2 classes in the train split")
    if len(val_y) == 0 or len(test_y) == 0:
        raise ValueError("linear probe needs a non-empty val and test split")
    if not cs:
        raise ValueError("linear probe needs at least one value of C")
    val_top1: dict[float, float] = {}
    not_converged = []
    best = None
    for c in sorted({float(c) for c in cs}):
        clf = _fit(train_feats, train_y, c)
        if clf.n_iter_.max() >= clf.max_iter:
            not_converged.append(c)
        val_top1[c] = float((clf.predict(val_feats) == val_y).mean())
        if best is None or val_top1[c] > val_top1[best[0]]:  # strict: ties keep the smaller C
            best = (c, clf)
    c, clf = best
    return {"probe_top1": float((clf.predict(test_feats) == test_y).mean()), "C": c,
            "val_top1": val_top1, "not_converged": not_converged}


def _labelled_splits(root: Path) -> tuple[list[str], dict[str, tuple[list[Path], np.ndarray]]]:
    """Read train/val/test and express every split's labels in the train split's class indices."""
    read = {s: image_folder(root / s) for s in SPLITS}
    names = read["train"][2]
    index = {n: i for i, n in enumerate(names)}
    out = {}
    for split, (files, labels, split_names) in read.items():
        unknown = sorted(set(split_names) - set(index))
        if unknown:
            raise ValueError(f"{root / split}: classes {unknown[:5]} have no train images in "
                             f"{root / 'train'}; the probe cannot learn them")
        out[split] = (files, np.asarray([index[split_names[y]] for y in labels], dtype=np.int64))
    return names, out


def evaluate_labelled(loaded: LoadedModel, labelled_root: Path | str,
                      kb: KnowledgeBase | Path | str | None,
                      prompts: Sequence[str] = DEFAULT_PROMPTS, batch_size: int = 256,
                      with_description: bool = False,
                      cs: Sequence[float] = (0.01, 0.1, 1, 10, 100),
                      label: str = "embed labelled", decoded: DecodedImages | None = None
                      ) -> tuple[dict[str, float], list[str]]:
    """Linear probe (any model) and zero-shot (models with a text tower) on the test split of
    ``labelled_root/{train,val,test}/<entity_id>/*``; label space = the train split's classes.

    Returns ``(metrics, notes)``: metrics has ``probe_top1``, ``probe_c`` and, when zero-shot
    applies, ``zero_shot_top1``/``zero_shot_top5``; notes say what was not applicable or odd.
    """
    root = Path(labelled_root)
    names, splits = _labelled_splits(root)
    files = [f for s in SPLITS for f in splits[s][0]]
    feats = np.split(embed_files(loaded, files, batch_size, label=label, decoded=decoded),
                     np.cumsum([len(splits[s][0]) for s in SPLITS])[:-1])
    probe = linear_probe(feats[0], splits["train"][1], feats[1], splits["val"][1], feats[2],
                         splits["test"][1], cs=tuple(cs))
    metrics = {"probe_top1": probe["probe_top1"], "probe_c": probe["C"]}
    notes = [f"linear probe: C={probe['C']:g} chosen on val, model fitted on train only"]
    if probe["not_converged"]:
        notes.append(f"linear probe: lbfgs hit max_iter for C in {probe['not_converged']}")
    if not loaded.has_text_tower:
        notes.append(f"zero-shot: n/a ({loaded.meta.kind} model has no text tower)")
        return metrics, notes
    if kb is not None and not isinstance(kb, KnowledgeBase):
        kb = KnowledgeBase.read(kb)
    unknown = [n for n in names if kb is None or n not in kb]
    if unknown:
        notes.append(f"zero-shot: {len(unknown)} of {len(names)} classes are not KB entities; "
                     f"their folder names were used as class names (first: {unknown[0]})")
    weights = text_classifier(loaded, names, class_texts(kb, names, prompts, with_description),
                              batch_size)
    scores = zero_shot_scores(feats[2], splits["test"][1], weights)
    metrics.update(zero_shot_top1=scores["top1"], zero_shot_top5=scores["top5"])
    return metrics, notes
