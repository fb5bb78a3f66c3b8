"""register: register every candidate the ``train@<recipe>`` runs logged; manage ``champion``.

Each ``train@<recipe>`` stage logs its model into its own run
(:mod:`mofi_core.serving.logged`); this stage finds it by its content hash and registers it
from there, so the version page links the run that trained it (its params, loss curve and
data inputs) and the evaluation metrics are linked to the model. A model not found in the
store (train ran with tracking off, or in another store; or ``register.serve_path_root`` asks
for another path policy) is logged here instead.

Every version is tagged with what made it: the git commit, each data input of ``train`` and
``evaluate`` with its DVC hash, the benchmark's hash, the params that differ from the commit
(a DVC experiment's ``-S`` values, a run's overrides) and its metrics, plus a model card.

Champion/challenger: every candidate of ``train.recipes`` becomes a version (tagged with its
recipe, seed and data hashes); the run's best by ``register.metric`` gets the alias
``challenger`` and becomes ``champion`` only if it was measured on the same benchmark (same
hash) as the champion and its metric beats the champion's by more than ``register.margin``
(the first version always does). The other candidates stay plain versions.
The decision and both numbers are tags on the version. Registering bytes that are already a
version changes nothing: its old decision is history, not an instruction (moving the champion
back to an older version is what ``mofi promote VERSION --reason ...`` is for).
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from mofi_core import tracking
from mofi_core.config.register import RegisterConfig
from mofi_core.recipes import CONTROL_MODEL, PAPER_MODEL, model_label
from mofi_core.serving.logged import SHA_TAG, find_logged, log_encoder, model_sha256

if TYPE_CHECKING:
    from mofi_core.context import StageContext

CHAMPION, CHALLENGER = "champion", "challenger"
ALIASES_DONE = "aliases_applied"  # the last tag of a registration: nothing left to complete
BENCHMARK_TAG = "benchmark_digest"
# their data inputs made the model and its numbers ({name}: the candidate's train instance)
LINEAGE_STAGES = ("train@{name}", "evaluate")


def _lock(root: Path) -> dict:
    """dvc.lock's stages (``{}`` without a lock: stages run outside DVC)."""
    lock = root / "dvc.lock"
    if not lock.is_file():
        return {}
    return (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {})


def dvc_hashes(lock: dict, stages: tuple[str, ...] = ("build", "train")) -> dict[str, str]:
    """``dvc.<stage>.<path>``: the md5 of each out of ``stages`` in dvc.lock's ``lock``
    (``train@multitask`` is tagged ``dvc.train.models/multitask``: MLflow keys take no @)."""
    return {f"dvc.{stage.partition('@')[0]}.{o['path']}": o["md5"] for stage in stages
            for o in lock.get(stage, {}).get("outs", []) if "md5" in o}


def input_hashes(lock: dict, stages: tuple[str, ...]) -> dict[str, str]:
    """``input.<path>``: the DVC hash of every data input (code excepted) of ``stages`` in
    dvc.lock's ``lock``."""
    return {f"input.{d['path']}": d["md5"] for stage in stages
            for d in lock.get(stage, {}).get("deps", [])
            if "md5" in d and not d.get("path", "").startswith("mofi_core")}


def current_champion(client, name: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        return None


def decide(value: float, champion_value: float | None, margin: float,
           benchmark: str = "", champion_benchmark: str = "") -> tuple[bool, str]:
    """Promote the challenger? ``(promoted, reason)``. Only numbers measured on the same
    benchmark (same hash) are compared; the champion stays otherwise."""
    if champion_value is None:
        return True, "first version: champion by default"
    if benchmark != champion_benchmark:
        return False, (f"not comparable: measured on benchmark {benchmark or 'unknown'}, the "
                       f"champion on {champion_benchmark or 'unknown'}; the champion stays "
                       "(mofi promote VERSION --reason ... to choose by hand)")
    if value > champion_value + margin:
        return True, f"{value:.6f} > champion {champion_value:.6f} + margin {margin:g}"
    return False, f"{value:.6f} <= champion {champion_value:.6f} + margin {margin:g}"


def model_card(meta, metrics: dict, tags: dict[str, str], cfg: RegisterConfig,
               name: str) -> str:
    """What a reviewer needs before using model ``name`` (its block of the evaluate metrics):
    data, recipe, numbers against the control, limits."""
    mofi, base = metrics.get(name, {}), metrics.get(CONTROL_MODEL, {})
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
        "## Training", f"- recipe: `{meta.recipe}` ({model_label(name)}); architecture "
        f"`{meta.arch}`; {len(meta.classes)} entity classes; seed {tags.get('seed', '?')}", "",
        "## Metrics (evaluate stage)", "| metric | this model | CLIP control |", "|---|---|---|",
        *rows, "",
        "## Known limits",
        "- Trained and evaluated on the data named above only; retrieval numbers come from that "
        "benchmark (the embedded demo world unless evaluate points elsewhere).",
        "- Entities outside the training vocabulary are represented only through the image "
        "embedding; the classifier head (if any) is not part of the served model.",
        "- Inputs are resized/cropped to the model's input size; very small or non-photographic "
        "images were rare or absent in training.", ""])


def find_version(client, name: str, sha: str):
    """The version registered earlier from the same model bytes, or None."""
    from mlflow.exceptions import MlflowException

    try:
        found = client.search_model_versions(f"name = '{name}' and tags.{SHA_TAG} = '{sha}'")
    except MlflowException:  # registered model does not exist yet
        return None
    return min(found, key=lambda v: int(v.version)) if found else None


def _champion_now(client, cfg: RegisterConfig) -> int | None:
    champ = current_champion(client, cfg.model_name)
    return int(champ.version) if champ else None


def _recorded(version, cfg: RegisterConfig) -> dict:
    """The decision stored on a version's tags (see :func:`register`), exactly as
    :func:`register` returned it when it decided: ``champion`` is the champion right after
    that decision, never today's (which later runs or ``mofi promote`` may have moved), so a
    re-run, or a run completing a killed one, writes the same record."""
    t = version.tags
    before = t["champion_before"]
    before_value = t[f"champion_before_{cfg.metric}"]
    promoted = t["promoted"] == "true"
    previous = None if before == "none" else int(before)
    return {"model_name": cfg.model_name, "version": int(version.version),
            cfg.metric: float(t[cfg.metric]), "promoted": promoted,
            "decision": t["decision"],
            "previous_champion": previous,
            "previous_champion_metric": None if before_value == "none" else float(before_value),
            "champion": int(version.version) if promoted else previous}


def _apply_aliases(client, cfg: RegisterConfig, version: str, promoted: bool,
                   challenger: bool = True) -> None:
    if challenger:  # the run's best candidate
        client.set_registered_model_alias(cfg.model_name, CHALLENGER, version)
    if promoted:
        client.set_registered_model_alias(cfg.model_name, CHAMPION, version)
    client.set_model_version_tag(cfg.model_name, version, ALIASES_DONE, "true")


def _source(model_dir: Path, sha: str, cfg: RegisterConfig) -> tuple[str, str, str]:
    """The model to register: the train run's logged model with these bytes, else one logged
    now into this (register) run. Returns ``(model_uri, where, model_id)``."""
    import mlflow

    experiment = mlflow.active_run().info.experiment_id
    logged = find_logged(sha, experiment, cfg.serve_path_root)
    if logged is not None:
        return logged.model_uri, f"run {logged.source_run_id}", logged.model_id
    info = log_encoder(model_dir, cfg.serve_path_root)
    print("register: no model with these bytes was logged by a train run in this store "
          "(tracking off during train, another store, or another serve_path_root); "
          "logged it in the register run")
    return info.model_uri, "register run", info.model_id


def lineage_tags(root: Path, metrics: dict, cfg: RegisterConfig, name: str = PAPER_MODEL
                 ) -> dict[str, str]:
    """What made candidate ``name``: code, data inputs with their DVC hashes, params changed."""
    base = os.environ.get("DVC_EXP_BASELINE_REV") or "HEAD"
    lock = _lock(root)
    stages = tuple(s.format(name=name) for s in LINEAGE_STAGES)
    tags = {"git_commit": tracking.git_commit(root),
            **dvc_hashes(lock, ("build", f"train@{name}")), **input_hashes(lock, stages),
            BENCHMARK_TAG: str(metrics.get("benchmark", {}).get("digest", "unknown"))}
    changed = tracking.params_changed(root, base)
    tags.update({f"param.{k}": v for k, v in changed.items()})
    tags["params_changed"] = ", ".join(changed) if changed else "none (params of the commit)"
    return tags


def best_candidate(metrics: dict, names: list[str], metric: str) -> str:
    """The candidate with the highest ``metric`` (the first listed on a tie)."""
    missing = [n for n in names if metric not in metrics.get(n, {})]
    if missing:
        have = sorted(metrics.get(missing[0], {}))
        raise KeyError(f"register.metric {metric!r} is missing for {missing} in the evaluate "
                       f"metrics (they have {have}); choose one of those, or re-run evaluate")
    return max(names, key=lambda n: (float(metrics[n][metric]), -names.index(n)))


def register_candidates(models: dict[str, Path], metrics: dict, root: Path,
                        cfg: RegisterConfig, seed: int | None = None) -> dict:
    """Register every candidate (``{name: model folder}``, names as in the evaluate
    metrics); only this run's best by ``register.metric`` may become champion, and only if it
    beats the current one on the same benchmark. Returns the decisions and the champion."""
    names = list(models)
    best = best_candidate(metrics, names, cfg.metric)
    decisions = {}
    for name in names:
        not_best = None if name == best else (
            f"not this run's best candidate: {best} has {cfg.metric} "
            f"{float(metrics[best][cfg.metric]):.6f} >= {float(metrics[name][cfg.metric]):.6f}")
        decisions[name] = register(models[name], metrics, root, cfg, name=name,
                                   not_best=not_best, seed=seed)
    from mlflow import MlflowClient

    return {"model_name": cfg.model_name, "best": best,
            "champion": _champion_now(MlflowClient(), cfg),
            "promoted": decisions[best]["promoted"], "candidates": decisions}


def register(model_dir: Path, metrics: dict, root: Path, cfg: RegisterConfig,
             name: str = PAPER_MODEL, not_best: str | None = None,
             seed: int | None = None) -> dict:
    """Register model ``name`` (its block of the evaluate ``metrics``); returns what was
    decided (version, metric, promoted, champion). ``not_best``: why it may not become
    champion (another candidate of the run is better); it becomes challenger only as the best.

    Idempotent: a model folder already registered (same content hash) is not registered again
    and its old decision is not applied again: the aliases stay where later decisions put them.
    The version is created with its hash tag in one call, the decision is tagged before the
    aliases move and ``aliases_applied`` last, so a run killed at any point is completed, not
    duplicated, by the next one."""
    import mlflow
    from mlflow import MlflowClient

    from mofi_core.models.artifact import read_meta

    if cfg.metric not in metrics.get(name, {}):
        raise KeyError(f"register.metric {cfg.metric!r} is not in the evaluate metrics of "
                       f"{name} ({sorted(metrics.get(name, {}))}); choose one of those")
    value = float(metrics[name][cfg.metric])
    meta = read_meta(model_dir)
    client = MlflowClient()
    sha = model_sha256(model_dir)
    existing = find_version(client, cfg.model_name, sha)
    if existing is not None and "decision" in existing.tags:
        if existing.tags.get(ALIASES_DONE) != "true":  # killed before the aliases moved
            _apply_aliases(client, cfg, existing.version, existing.tags["promoted"] == "true",
                           existing.tags.get("challenger") == "true")
        decision = _recorded(existing, cfg)
        print(f"register: {name}: these model bytes are already version {existing.version} of "
              f"{cfg.model_name} (decided then: {decision['decision']}); aliases unchanged, "
              f"champion is version {_champion_now(client, cfg)}")
        return decision
    if existing is None:
        uri, where, model_id = _source(model_dir, sha, cfg)
        existing = mlflow.register_model(uri, cfg.model_name,
                                         tags={SHA_TAG: sha, "logged_in": where,
                                               "model_id": model_id})
    version = str(existing.version)
    tags = {**lineage_tags(root, metrics, cfg, name), cfg.metric: f"{value:.6f}",
            "recipe": meta.recipe, "arch": meta.arch, "candidate": name,
            "seed": "unknown" if seed is None else str(seed)}
    _link_metrics(existing.tags.get("model_id"), metrics, name)
    card = model_card(meta, metrics, tags, cfg, name)
    mlflow.log_text(card, f"model_card_{name}.md")
    client.update_model_version(cfg.model_name, version, description=card)
    champ = current_champion(client, cfg.model_name)
    if champ is not None and champ.version == version:  # promoted, then killed before tagging
        champ = None
    champ_value = float(champ.tags.get(cfg.metric, "-inf")) if champ else None
    if not_best is not None:
        promoted, reason = False, not_best
    else:
        promoted, reason = decide(value, champ_value, cfg.margin, tags[BENCHMARK_TAG],
                                  champ.tags.get(BENCHMARK_TAG, "") if champ else "")
    tags.update({"promoted": str(promoted).lower(), "challenger": str(not_best is None).lower(),
                 "champion_before": str(champ.version) if champ else "none",
                 f"champion_before_{cfg.metric}": "none" if champ_value is None
                 else f"{champ_value:.6f}"})
    for k, v in tags.items():
        client.set_model_version_tag(cfg.model_name, version, k, v)
    # "decision" last: its presence marks a complete record
    client.set_model_version_tag(cfg.model_name, version, "decision", reason)
    _apply_aliases(client, cfg, version, promoted, not_best is None)
    print(f"register: {name}: version {version} ({cfg.metric} {value:.4f}): {reason}")
    # the metric as recorded on the version (6 decimals), so a re-run returns the same record
    return {"model_name": cfg.model_name, "version": int(version),
            cfg.metric: float(tags[cfg.metric]), "promoted": promoted, "decision": reason,
            "previous_champion": int(champ.version) if champ else None,
            "previous_champion_metric": champ_value,
            "champion": int(version) if promoted else (int(champ.version) if champ else None)}


def _link_metrics(model_id: str | None, metrics: dict, name: str) -> None:
    """The evaluation numbers of model ``name`` and the control on the logged model's page
    (and the register run)."""
    import mlflow

    flat = {f"eval.{k}": float(v) for k, v in tracking.flatten(
        {k: metrics[k] for k in (name, CONTROL_MODEL) if k in metrics}).items()
        if isinstance(v, int | float) and not isinstance(v, bool)}
    if flat:
        mlflow.log_metrics(flat, model_id=model_id)


def promote(version: int, reason: str, root: Path, cfg: RegisterConfig) -> dict:
    """Make ``version`` the champion by hand (a rollback, or a choice across benchmarks); the
    reason, the champion it replaced and the time are tags on the version."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not reason.strip():
        raise ValueError("mofi promote needs --reason: say why this version becomes champion")
    tracking.configure(root, create=False)
    client = MlflowClient()
    try:
        target = client.get_model_version(cfg.model_name, str(version))
    except MlflowException:
        raise KeyError(f"{cfg.model_name} has no version {version}; "
                       f"{tracking.registry_hint(root)}") from None
    before = _champion_now(client, cfg)
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    for k, v in {"promoted_by_hand": reason.strip(), "promoted_by_hand_at": stamp,
                 "promoted_by_hand_from": str(before) if before else "none"}.items():
        client.set_model_version_tag(cfg.model_name, str(version), k, v)
    client.set_registered_model_alias(cfg.model_name, CHAMPION, str(target.version))
    return {"model_name": cfg.model_name, "champion": int(target.version),
            "previous_champion": before, "reason": reason.strip()}


def candidate_models(ctx: StageContext) -> dict[str, Path]:
    """``train.recipes`` -> ``models/<recipe>``: the models this run registers, and with
    ``register.extra_models`` the imported ones ``evaluate`` compared."""
    if ctx.params is None:
        raise ValueError("register reads train.recipes: run it through the stage runner "
                         "(mofi register)")
    names = list(ctx.params.train.recipes)
    if ctx.params.register_.extra_models:
        names += [m for m in ctx.params.evaluate.extra_models if m not in names]
    return {r: ctx.layout.model(r) for r in names}


def check(cfg: RegisterConfig, ctx: StageContext) -> None:
    """Before anything is logged: every candidate loads and has ``register.metric``."""
    from mofi_core.models.artifact import check_model_folder

    lay = ctx.layout
    models = candidate_models(ctx)
    for name, folder in models.items():
        check_model_folder(folder, f"candidate {name} ({folder}; stage train@{name})")
    path = lay.metrics("evaluate")
    metrics = lay.read_metrics("evaluate")
    for name in models:
        have = metrics.get(name, {}) if isinstance(metrics.get(name), dict) else {}
        if cfg.metric not in have:
            raise KeyError(f"register.metric {cfg.metric!r} is not in {path} for {name} (it "
                           f"has {sorted(have) or 'no block for it: re-run evaluate'}); "
                           "choose a metric it has")


def run(cfg: RegisterConfig, ctx: StageContext) -> dict:
    """Stage ``register``: needs tracking on (the registry lives in the MLflow store)."""
    lay = ctx.layout
    if ctx.tracker.run_id is None:
        raise RuntimeError("register needs MLflow tracking; unset MOFI_TRACKING=off")
    metrics = lay.read_metrics("evaluate")
    seed = ctx.params.train.seed if ctx.params is not None else None
    decision = register_candidates(candidate_models(ctx), metrics, lay.root, cfg, seed)
    from mofi_core.io.atomic import write_json

    write_json(lay.reports / "register.json", decision)
    numbers = {"champion": decision["champion"], "promoted": int(decision["promoted"])}
    numbers.update({f"{n}.version": d["version"] for n, d in decision["candidates"].items()})
    return numbers
