"""Log a model folder to MLflow as the pyfunc encoder, and find it again by its bytes.

The ``train`` stage logs the model it trained into its own run (so the run that made the model
holds it, its loss curve and its data inputs); ``register`` finds that logged model by its
content hash and registers it from there. The model is logged *as code*
(``serving/pyfunc_model.py``) with the folder (safetensors + JSON) as an artifact, so loading it
never unpickles anything.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from mofi_core.serving.requirements import serving_requirements

PYFUNC_CODE = Path(__file__).parent / "pyfunc_model.py"
PACKAGE = Path(__file__).parent.parent  # mofi_core, shipped with the model (code_paths)
ARTIFACT_NAME = "encoder"
SHA_TAG = "model_sha256"
ROOT_TAG = "serve_path_root"


def model_sha256(model_dir: Path) -> str:
    """Content hash of a model folder (file names and bytes): the identity of a version."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        h.update(f.relative_to(model_dir).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def _signature(embed_dim: int):
    import numpy as np
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, Schema, TensorSpec

    inputs = Schema([ColSpec("binary", "image", required=False),
                     ColSpec("string", "path", required=False)])
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype("float32"),
                                                                    (-1, embed_dim))]))


def _example(model_dir: Path):
    import pandas as pd
    from PIL import Image

    from mofi_core.models.artifact import read_meta

    size = read_meta(model_dir).image_size
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (128, 64, 32)).save(buf, format="JPEG")
    return pd.DataFrame({"image": [buf.getvalue()]})


def log_encoder(model_dir: Path, allowed_root: str = "", tags: dict[str, str] | None = None):
    """Log ``model_dir`` into the active run as the pyfunc encoder; returns MLflow's
    ``ModelInfo`` (``model_id``, ``model_uri``). ``allowed_root``: the folder the served model
    may read ``path`` rows from ("" = image bytes only)."""
    import mlflow

    from mofi_core.models.artifact import read_meta

    meta = read_meta(model_dir)
    return mlflow.pyfunc.log_model(
        name=ARTIFACT_NAME, python_model=str(PYFUNC_CODE),
        artifacts={"model_dir": str(model_dir)}, code_paths=[str(PACKAGE)],
        signature=_signature(meta.arch_config["embed_dim"]),
        model_config={"allowed_root": allowed_root}, input_example=_example(model_dir),
        pip_requirements=serving_requirements(),
        tags={SHA_TAG: model_sha256(model_dir), ROOT_TAG: allowed_root, "recipe": meta.recipe,
              "arch": meta.arch, **(tags or {})})


def find_logged(sha: str, experiment_id: str, allowed_root: str = ""):
    """The newest logged model with these bytes (and this path policy), or None."""
    import mlflow

    found = mlflow.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"tags.{SHA_TAG} = '{sha}'",
        order_by=[{"field_name": "creation_time", "ascending": False}], output_format="list")
    for model in found:
        if model.tags.get(ROOT_TAG, "") == allowed_root and str(model.status).endswith("READY"):
            return model
    return None
