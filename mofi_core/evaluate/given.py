"""Retrieval metrics on embeddings someone else computed (``mofi evaluate-embeddings``).

The features are used exactly as stored -- no normalisation, no cast -- so the APs are those the
official GPR1200 code gives on the same array. Labels come from the same ``.npz`` (``labels``),
from a ``.npy``/``.json`` file, or from a GPR1200-layout folder whose category-sorted file list
(``gpr_files``) the rows follow. Arrays are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mofi_core.evaluate.retrieval import gpr_files, retrieval_metrics


def _load_array(path: Path, key: str) -> np.ndarray | None:
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                if key not in z:
                    return None
                return z[key]
        if path.suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if path.suffix == ".json" and key == "labels":
            return np.asarray(json.loads(path.read_text(encoding="utf-8")))
    except ValueError as err:  # object arrays need pickle: refused
        raise ValueError(f"{path}: cannot read {key} without unpickling ({err}); save a plain "
                         "numeric array") from None
    raise ValueError(f"{path}: expected .npy or .npz{' or .json' if key == 'labels' else ''}")


def load_given(features: Path, labels: Path | None = None, gpr_dir: Path | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
    """``(features, labels)`` as stored; exactly one source of labels must be found."""
    if labels is not None and gpr_dir is not None:
        raise ValueError("give labels either as a file (--labels) or from a GPR1200 folder "
                         "(--gpr-dir), not both")
    feats = _load_array(features, "features")
    if feats is None:
        raise ValueError(f"{features}: the .npz holds no array named 'features' "
                         "(np.savez(path, features=..., labels=...))")
    if labels is not None:
        labs = _load_array(labels, "labels")
        if labs is None:
            raise ValueError(f"{labels}: the .npz holds no array named 'labels'")
    elif gpr_dir is not None:
        _, labs = gpr_files(gpr_dir)
    else:
        labs = _load_array(features, "labels") if features.suffix == ".npz" else None
        if labs is None:
            raise ValueError(f"{features}: no labels; store them beside the features in a "
                             ".npz, or pass --labels FILE or --gpr-dir FOLDER")
    if feats.ndim != 2 or len(feats) != len(labs):
        raise ValueError(f"{features}: {feats.shape} features for {len(labs)} labels; expected "
                         "one (dim,) row per label, in the labels' order")
    return feats, np.asarray(labs)


def evaluate_given(features: Path, labels: Path | None = None,
                   gpr_dir: Path | None = None) -> dict:
    """Retrieval metrics (mAP, Recall@1/5, per GPR1200 domain when the labels are its 1,200
    categories) and the set's size."""
    feats, labs = load_given(features, labels, gpr_dir)
    metrics = retrieval_metrics(feats, labs)
    return {"images": len(labs), "classes": len(np.unique(labs)), "dtype": str(feats.dtype),
            **metrics}
