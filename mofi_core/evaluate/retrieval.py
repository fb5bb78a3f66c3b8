"""Image retrieval with the GPR1200 protocol.

GPR1200's official evaluation uses every image as a query against *all* images, the query itself
included (it is not removed from its own ranking, so it is normally found at rank 1 and counts as
one of the class's relevant items), ranks by cosine similarity, and averages the per-query average
precision ``AP = mean over relevant items of (relevant seen so far / rank)``. Categories come from
the file-name prefix before the first ``_``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def gpr_files(folder: Path | str) -> tuple[list[Path], np.ndarray]:
    """Image files and integer categories, ordered as GPR1200 orders them (by category)."""
    files = [p for p in Path(folder).iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png")]
    if not files:
        raise FileNotFoundError(f"no images in {folder}; expected GPR1200 layout "
                                "'{category}_{name}.jpg'")
    try:
        cats = [int(p.name.split("_", 1)[0]) for p in files]
    except ValueError as err:
        raise ValueError(f"{folder}: file names must start with an integer category and '_' "
                         f"({err})") from None
    order = sorted(range(len(files)), key=lambda i: (cats[i], files[i].name))
    return [files[i] for i in order], np.asarray([cats[i] for i in order])


def l2_normalise(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise ValueError("an embedding is all zeros; cannot rank by cosine similarity")
    return x / norms


def average_precisions(features: np.ndarray, labels: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """Per-query AP over the full ranking; chunked matrix products, no per-query Python loop."""
    feats = l2_normalise(features.astype(np.float32))
    labels = np.asarray(labels)
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    n_rel = counts[inverse]  # relevant items per query, the query itself included
    aps = np.empty(len(feats), dtype=np.float64)
    ranks = np.arange(1, len(feats) + 1, dtype=np.float64)
    for start in range(0, len(feats), chunk):
        sims = feats[start:start + chunk] @ feats.T
        order = np.argsort(-sims, axis=1, kind="stable")
        rel = labels[order] == labels[start:start + chunk, None]
        hits = np.cumsum(rel, axis=1)
        aps[start:start + chunk] = (rel * hits / ranks).sum(1) / n_rel[start:start + chunk]
    return aps


def recall_at_k(features: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Share of queries with a same-class image among the k nearest *other* images."""
    feats = l2_normalise(features.astype(np.float32))
    sims = feats @ feats.T
    np.fill_diagonal(sims, -np.inf)
    top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return float((labels[top] == labels[:, None]).any(1).mean())


def retrieval_metrics(features: np.ndarray, labels: np.ndarray,
                      partitions: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """mAP over all queries, plus ``gpr_map_<part>`` over the queries of each partition (a
    boolean mask, e.g. seen/unseen classes, or GPR1200's six domains)."""
    aps = average_precisions(features, labels)
    out = {"gpr_map": float(aps.mean()),
           "recall_at_1": recall_at_k(features, labels, 1),
           "recall_at_5": recall_at_k(features, labels, 5)}
    for part, mask in (partitions or {}).items():
        if mask.any():
            out[f"gpr_map_{part}"] = float(aps[mask].mean())
    return out
