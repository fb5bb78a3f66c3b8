"""Image-based search with an encoder: a registered model (``models:/name@alias``, any MLflow
model URI) or a local model folder. What ``mofi embed`` and ``mofi search`` run."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif")
EmbedFn = Callable[[list[Path]], np.ndarray]


def load_encoder(model: str, root: Path, batch_size: int = 64) -> EmbedFn:
    """A function from image paths to L2-normalised embeddings (rows in input order)."""
    import pandas as pd

    folder = Path(model)
    if (folder / "model.json").is_file():
        from mofi_core.serving.encoder import Encoder, to_image

        enc = Encoder(folder)

        def predict(batch: list[Path]) -> np.ndarray:
            return enc.embed([to_image(Path(p).read_bytes(), None) for p in batch])
    else:
        import mlflow

        from mofi_core import tracking

        if "://" not in model and not model.startswith("models:/"):
            raise ValueError(f"--model {model!r} is neither a model folder (with model.json) "
                             "nor an MLflow model URI such as models:/mofi-encoder@champion")
        tracking.configure(root, create=False)
        pyfunc = mlflow.pyfunc.load_model(model)

        def predict(batch: list[Path]) -> np.ndarray:
            # the bytes, as a client of a served model sends them (it reads no path)
            rows = pd.DataFrame({"image": [Path(p).read_bytes() for p in batch]})
            return np.asarray(pyfunc.predict(rows), dtype=np.float32)

    def embed(paths: list[Path]) -> np.ndarray:
        missing = [p for p in paths if not Path(p).is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image(s) not found, e.g. {missing[0]}")
        parts = [predict(paths[i:i + batch_size]) for i in range(0, len(paths), batch_size)]
        return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)

    return embed


def folder_images(folder: Path) -> list[Path]:
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return files


def search(embed: EmbedFn, queries: list[Path], folder: Path, k: int
           ) -> list[list[tuple[Path, float]]]:
    """For each query image, the ``k`` most similar images of ``folder`` (cosine), best
    first; the query itself is skipped if it lives in the folder."""
    files = folder_images(folder)
    index = embed(files)
    q = embed(queries)
    sims = q @ index.T
    out = []
    for qi, row in enumerate(sims):
        order = np.argsort(-row, kind="stable")
        same = Path(queries[qi]).resolve()
        hits = [(files[j], float(row[j])) for j in order if files[j].resolve() != same][:k]
        out.append(hits)
    return out
