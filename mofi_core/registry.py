"""register: log the encoder as an MLflow pyfunc model and manage the ``champion`` alias.

The model is logged *as code* (``serving/pyfunc_model.py``) with the model folder (safetensors +
JSON) as an artifact, so loading it never unpickles anything. Every new version carries tags
linking it to the git commit, the DVC hashes of its training data and its metrics, and a model
card. Champion/challenger: the new version gets the alias ``challenger``; it also becomes
``champion`` only if its metric beats the current champion's by more than ``register.margin``
(the first version always does). The decision and both numbers are tags on the version.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from mofi_core.config import RegisterConfig

if TYPE_CHECKING:
    from mofi_core.context import StageContext

PYFUNC_CODE = Path(__file__).parent / "serving" / "pyfunc_model.py"
CHAMPION, CHALLENGER = "champion", "challenger"


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True, timeout=30)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.strip() else "")


def dvc_hashes(root: Path, stages: tuple[str, ...] = ("build", "train")) -> dict[str, str]:
    """md5 of each out of the given stages, as recorded in dvc.lock ({} without a lock)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
    out = {}
    for stage in stages:
        for o in data.get("stages", {}).get(stage, {}).get("outs", []):
            if "md5" in o:
                out[f"dvc.{stage}.{o['path']}"] = o["md5"]
    return out


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


def current_champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def decide(value: float, champion_value: float | None, margin: float) -> tuple[bool, str]:
    """Promote the challenger? ``(promoted, reason)``."""
    if champion_value is None:
        return True, "first version: champion by default"
    if value > champion_value + margin:
        return True, f"{value:.6f} > champion {champion_value:.6f} + margin {margin:g}"
    return False, f"{value:.6f} <= champion {champion_value:.6f} + margin {margin:g}"


def model_card(meta, metrics: dict, tags: dict[str, str], cfg: RegisterConfig) -> str:
    """What a reviewer needs before using the model: data, recipe, numbers, limits."""
    mofi, base = metrics.get("mofi", {}), metrics.get("baseline", {})
    rows = [f"| {k} | {v:.4f} | {base[k]:.4f} |" if isinstance(base.get(k), float)
            else f"| {k} | {v:.4f} | — |" for k, v in sorted(mofi.items())
            if isinstance(v, int | float)]
    data = "\n".join(f"- `{k}`: `{v}`" for k, v in sorted(tags.items()) if k.startswith("dvc."))
    return "\n".join([
        f"# {cfg.model_name}: {meta.arch} ({meta.recipe})", "",
        "Image encoder: images in (bytes or paths), L2-normalised embeddings out "
        f"({meta.arch_config['embed_dim']} dims, {meta.image_size} px input).", "",
        "## Data version", f"- git commit: `{tags.get('git_commit', 'unknown')}`",
        data or "- (no dvc.lock hashes)", "",
        "## Training", f"- recipe: `{meta.recipe}`; architecture `{meta.arch}`; "
        f"{len(meta.classes)} entity classes", "",
        "## Metrics (evaluate stage)", "| metric | this model | CLIP control |", "|---|---|---|",
        *rows, "",
        "## Known limits",
        "- Trained and evaluated on the data named above only; retrieval numbers come from that "
        "benchmark (the embedded demo world unless evaluate points elsewhere).",
        "- Entities outside the training vocabulary are represented only through the image "
        "embedding; the classifier head (if any) is not part of the served model.",
        "- Inputs are resized/cropped to the model's input size; very small or non-photographic "
        "images were rare or absent in training.", ""])


def model_sha256(model_dir: Path) -> str:
    """Content hash of a model folder (file names and bytes): the identity of a version."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(model_dir).rglob("*") if p.is_file()):
        h.update(f.relative_to(model_dir).as_posix().encode() + b"\0")
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def find_version(client, name: str, sha: str):
    """The version registered earlier from the same model bytes, or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}' and tags.model_sha256 = '{sha}'")
    except MlflowException:  # registered model does not exist yet
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def _recorded(version, cfg: RegisterConfig) -> dict:
    """The decision stored on a version's tags (see :func:`register`)."""
    t = version.tags
    before = t["champion_before"]
    before_value = t[f"champion_before_{cfg.metric}"]
    promoted = t["promoted"] == "true"
    return {"model_name": cfg.model_name, "version": int(version.version),
            cfg.metric: float(t[cfg.metric]), "promoted": promoted, "decision": t["decision"],
            "previous_champion": None if before == "none" else int(before),
            "previous_champion_metric": None if before_value == "none" else float(before_value),
            "champion": int(version.version) if promoted else int(before)}


def _apply_aliases(client, cfg: RegisterConfig, version: str, promoted: bool) -> None:
    client.set_registered_model_alias(cfg.model_name, CHALLENGER, version)
    if promoted:
        client.set_registered_model_alias(cfg.model_name, CHAMPION, version)


def register(model_dir: Path, metrics: dict, root: Path, cfg: RegisterConfig) -> dict:
    """Log + register; returns what was decided (version, metric, promoted, champion).

    Idempotent: a model folder already registered (same ``model_sha256`` tag) is not registered
    again; its recorded decision is returned and its aliases re-applied. The version is created
    with its hash tag in one call and the decision is tagged before the aliases move, so a run
    killed at any point is completed, not duplicated, by the next one."""
    import mlflow
    from mlflow import MlflowClient

    from mofi_core.models.artifact import read_meta

    if cfg.metric not in metrics.get("mofi", {}):
        raise KeyError(f"register.metric {cfg.metric!r} is not in the evaluate metrics "
                       f"({sorted(metrics.get('mofi', {}))}); choose one of those")
    value = float(metrics["mofi"][cfg.metric])
    meta = read_meta(model_dir)
    client = MlflowClient()
    sha = model_sha256(model_dir)
    existing = find_version(client, cfg.model_name, sha)
    if existing is not None and "decision" in existing.tags:
        decision = _recorded(existing, cfg)
        _apply_aliases(client, cfg, existing.version, decision["promoted"])
        print(f"register: these model bytes are already version {existing.version} of "
              f"{cfg.model_name}; kept its decision ({decision['decision']})")
        return decision
    if existing is None:
        info = mlflow.pyfunc.log_model(
            name="encoder", python_model=str(PYFUNC_CODE),
            artifacts={"model_dir": str(model_dir)}, code_paths=[str(Path(__file__).parent)],
            signature=_signature(meta.arch_config["embed_dim"]),
            # "" = no path input; a loader may set a folder (mlflow ... model_config=)
            model_config={"allowed_root": cfg.serve_path_root},
            input_example=_example(model_dir),
            pip_requirements=["torch==2.14.1", "open-clip-torch==3.3.0", "safetensors",
                              "pillow", "pandas", "numpy"])
        existing = mlflow.register_model(info.model_uri, cfg.model_name,
                                         tags={"model_sha256": sha})
    version = str(existing.version)
    tags = {"git_commit": git_commit(root), cfg.metric: f"{value:.6f}", "recipe": meta.recipe,
            "arch": meta.arch, **dvc_hashes(root)}
    card = model_card(meta, metrics, tags, cfg)
    mlflow.log_text(card, "model_card.md")
    client.update_model_version(cfg.model_name, version, description=card)
    champ = current_champion(client, cfg.model_name)
    if champ is not None and champ.version == version:  # promoted, then killed before tagging
        champ = None
    champ_value = float(champ.tags.get(cfg.metric, "-inf")) if champ else None
    promoted, reason = decide(value, champ_value, cfg.margin)
    tags.update({"promoted": str(promoted).lower(),
                 "champion_before": str(champ.version) if champ else "none",
                 f"champion_before_{cfg.metric}": "none" if champ_value is None
                 else f"{champ_value:.6f}"})
    for k, v in tags.items():
        client.set_model_version_tag(cfg.model_name, version, k, v)
    # "decision" last: its presence marks a complete record
    client.set_model_version_tag(cfg.model_name, version, "decision", reason)
    _apply_aliases(client, cfg, version, promoted)
    # the metric as recorded on the version (6 decimals), so a re-run returns the same record
    return {"model_name": cfg.model_name, "version": int(version),
            cfg.metric: float(tags[cfg.metric]), "promoted": promoted, "decision": reason,
            "previous_champion": int(champ.version) if champ else None,
            "previous_champion_metric": champ_value,
            "champion": int(version) if promoted else int(champ.version)}


def check(cfg: RegisterConfig, ctx: StageContext) -> None:
    """Before anything is logged: the model loads and the evaluation has ``register.metric``."""
    from mofi_core.models.artifact import check_model_folder

    lay = ctx.layout
    check_model_folder(lay.mofi_model, f"the MOFI model ({lay.mofi_model})")
    path = lay.metrics("evaluate")
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path} is not JSON ({err}); run stage 'evaluate' again") from None
    have = metrics.get("mofi", {}) if isinstance(metrics, dict) else {}
    if cfg.metric not in have:
        raise KeyError(f"register.metric {cfg.metric!r} is not in {path} (it has "
                       f"{sorted(have)}); choose one of those")


def run(cfg: RegisterConfig, ctx: StageContext) -> dict:
    """Stage ``register``: needs tracking on (the registry lives in the MLflow store)."""
    lay = ctx.layout
    if ctx.tracker.run_id is None:
        raise RuntimeError("register needs MLflow tracking; unset MOFI_TRACKING=off")
    metrics = json.loads(lay.metrics("evaluate").read_text(encoding="utf-8"))
    decision = register(lay.mofi_model, metrics, lay.root, cfg)
    from mofi_core.io.atomic import write_json

    write_json(lay.reports / "register.json", decision)
    return {k: v for k, v in decision.items() if isinstance(v, int | float) and v is not None}
