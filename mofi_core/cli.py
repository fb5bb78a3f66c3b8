"""The ``mofi`` command: one subcommand per pipeline stage, plus ``run``, ``serve`` and ``ui``.

Stage commands are thin: they hand their params section to the stage's pure function (see
``mofi_core.runner.execute``). DVC calls them (``dvc.yaml``); Prefect calls DVC (``flows/``).
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

from mofi_core.stages import STAGES

# Quiet and offline by default; an explicit environment setting wins.
OFFLINE_DEFAULTS = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
# `mofi run` without PREFECT_API_URL starts a temporary Prefect server and waits for it 20 s
# by default; a busy 2-core machine can take longer, and the run then fails before any stage
# ("Timed out while attempting to connect to ephemeral Prefect API server")
PATIENT_DEFAULTS = {"PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}

app = typer.Typer(help="MOFI pipeline: noisy image/alt-text pairs -> Image-to-Entities dataset "
                       "-> image encoders, evaluated against a CLIP trained on raw alt-text.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

@app.callback()
def _options(debug: Annotated[bool, typer.Option(
        "--debug", help="on a failure, print the traceback before the one-line error")] = False
             ) -> None:
    if debug:
        os.environ["MOFI_DEBUG"] = "1"


ParamsOpt = Annotated[Path, typer.Option("--params", help="params file (one section per stage)")]
RootOpt = Annotated[Path, typer.Option("--root", help="project root holding data/, models/...")]


def _fail(err: BaseException) -> None:
    sys.stdout.flush()  # what the stage printed comes before the error, which is the last line
    if os.environ.get("MOFI_DEBUG"):
        traceback.print_exc()
    typer.echo(f"error: {type(err).__name__}: {err}", err=True)
    raise typer.Exit(1)


SetsOpt = Annotated[list[str], typer.Option(
    "--set", "-S", help="override a param for this run only, e.g. -S train.steps=50 "
                        "(repeatable; params.yaml is not changed, so DVC does not see it)")]


def _stage_command(spec) -> None:
    def run_one(one, params: Path, root: Path, sets: list[str]) -> None:
        from mofi_core import launch
        from mofi_core.runner import execute

        try:
            overrides = parse_sets(sets)
            n = launch.node_processes(one, params, overrides)
            if n == 1:
                metrics = execute(one, params, root, overrides=overrides)
        except Exception as err:  # every failure is reported with its message and exit code 1
            _fail(err)
        if n > 1:  # the inputs once for the node, then n torchrun processes
            _storage_sync("pull", one.address, params, root, if_configured=True)
            code = launch.run_on_node(one, n, params, root, sets)
            if code:
                typer.echo(f"error: {one.address}: the {n} torchrun processes failed (exit "
                           f"{code}); their output above names the cause", err=True)
                raise typer.Exit(code)
            return
        from mofi_core.tracking import is_main_process

        if is_main_process():  # under torchrun every rank returns its own; rank 0 reports
            typer.echo(f"{one.address}: " + ", ".join(f"{k}={_fmt(v)}"
                                                      for k, v in _flat(metrics).items()))

    if spec.foreach:
        key = f"{spec.section}.{spec.foreach}"

        def command(item=None, params: ParamsOpt = Path("params.yaml"),
                    root: RootOpt = Path("."),
                    sets: SetsOpt = [],  # noqa: B006 - typer reads the default
                    list_=False) -> None:
            if item is not None and not list_:
                run_one(spec.instance(item), params, root, sets)
                return
            from mofi_core.config.load import load_params
            from mofi_core.launch import distributed_launch
            from mofi_core.runner import section_of

            try:
                loaded = load_params(params, parse_sets(sets))
                section = loaded.section(spec.section)
                items = [str(v) for v in getattr(section, spec.foreach)]
                if list_:
                    if item is not None:  # refuses an entry the list does not hold
                        section_of(spec.instance(item), loaded)
                    for each in [item] if item is not None else items:
                        typer.echo(spec.instance(each).address)
                    return
                if distributed_launch() and len(items) > 1:  # one process group per process
                    raise ValueError(
                        f"under torchrun, launch one {key} entry at a time (mofi {spec.name} "
                        f"<entry>); infra/torchrun-train.sh does one launch per entry")
            except Exception as err:
                _fail(err)
            for each in items:
                run_one(spec.instance(each), params, root, sets)

        # an object, not a string: the help names this stage (annotations are strings here)
        command.__annotations__["item"] = Annotated[str | None, typer.Argument(
            help=f"which entry of {key} (DVC stage {spec.name}@<entry>); none: each in turn")]
        command.__annotations__["list_"] = Annotated[bool, typer.Option(
            "--list", help=f"print the DVC stage of the entry, or of each {key} entry, one per "
                           "line, and run nothing (infra/torchrun-train.sh reads it)")]
    else:
        def command(params: ParamsOpt = Path("params.yaml"), root: RootOpt = Path("."),
                    sets: SetsOpt = []) -> None:  # noqa: B006 - typer reads the default
            run_one(spec, params, root, sets)

    command.__doc__ = spec.help
    app.command(spec.name, help=spec.help)(command)


def _flat(metrics: dict) -> dict:
    from mofi_core.tracking import flatten

    return flatten(metrics)


def _fmt(v) -> str:
    """One value of a stage's summary line: a list (a curve, per-threshold rows) is summed up
    by its length -- the whole of it is in the stage's metrics file."""
    if isinstance(v, list | tuple):
        return f"[{len(v)} values]"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


for _spec in STAGES:
    _stage_command(_spec)


ModelOpt = Annotated[str, typer.Option(
    "--model", help="models:/mofi-encoder@champion (any MLflow model URI) or a model folder")]


@app.command()
def embed(images: Annotated[list[Path], typer.Argument(help="image files")],
          model: ModelOpt = "models:/mofi-encoder@champion",
          out: Annotated[Path | None, typer.Option(help="write the embeddings here (.npy)")]
          = None,
          root: RootOpt = Path(".")) -> None:
    """Embed images with the registered encoder (L2-normalised rows, one per image)."""
    import numpy as np

    from mofi_core.serving.search import load_encoder

    try:
        vectors = load_encoder(model, root.resolve())(list(images))
    except Exception as err:
        _fail(_registry_error(err, model, root))
    if out is not None:
        np.save(out, vectors, allow_pickle=False)
        typer.echo(f"wrote {out}: {vectors.shape[0]} x {vectors.shape[1]} float32")
        return
    for path, vec in zip(images, vectors, strict=True):
        typer.echo(f"{path}\t" + " ".join(f"{x:.5f}" for x in vec))


@app.command("evaluate-embeddings")
def evaluate_embeddings(
        features: Annotated[Path, typer.Argument(
            help="embeddings, one row per image: .npy, or .npz with 'features' (and 'labels')")],
        labels: Annotated[Path | None, typer.Option(
            help="class of each row: .npy or .json list (or an .npz with 'labels')")] = None,
        gpr_dir: Annotated[Path | None, typer.Option(
            "--gpr-dir", help="GPR1200-layout folder whose category-sorted files the rows "
                              "follow; its categories are the labels")] = None,
        out: Annotated[Path | None, typer.Option(help="also write the metrics here (JSON)")]
        = None) -> None:
    """GPR1200-protocol retrieval on precomputed embeddings, used exactly as stored (no
    normalisation: pass L2-normalised rows for cosine). mAP, Recall@1/5 and, for the real
    benchmark's 1,200 categories, the six per-domain mAPs."""
    import json

    from mofi_core.evaluate.given import evaluate_given

    try:
        metrics = evaluate_given(features, labels, gpr_dir)
    except Exception as err:
        _fail(err)
    text = json.dumps(metrics, indent=2)
    if out is not None:
        out.write_text(text + "\n", encoding="utf-8")
    typer.echo(text)


@app.command()
def search(queries: Annotated[list[Path], typer.Argument(help="query image files")],
           folder: Annotated[Path, typer.Option(help="folder of images to search")],
           k: Annotated[int, typer.Option(help="results per query")] = 8,
           model: ModelOpt = "models:/mofi-encoder@champion",
           root: RootOpt = Path(".")) -> None:
    """Image-based search: the k images of a folder most similar to each query image."""
    from mofi_core.serving.search import load_encoder
    from mofi_core.serving.search import search as run_search

    try:
        results = run_search(load_encoder(model, root.resolve()), list(queries), folder, k)
    except Exception as err:
        _fail(_registry_error(err, model, root))
    for query, hits in zip(queries, results, strict=True):
        typer.echo(f"{query}")
        for rank, (path, score) in enumerate(hits, 1):
            typer.echo(f"  {rank:>2}. {score:.4f}  {path}")


@app.command()
def promote(version: Annotated[int, typer.Argument(help="model version to make champion")],
            reason: Annotated[str, typer.Option(help="why (kept as a tag on the version)")],
            params: ParamsOpt = Path("params.yaml"), root: RootOpt = Path(".")) -> None:
    """Make a registered version the champion by hand (a rollback, or a choice between
    versions measured on different benchmarks); the register stage never moves it back."""
    from mofi_core.config.load import load_params
    from mofi_core.registry import promote as run_promote

    try:
        done = run_promote(version, reason, root.resolve(), load_params(params).section("register"))
    except Exception as err:
        _fail(err)
    typer.echo(f"{done['model_name']}: champion is version {done['champion']} (was "
               f"{done['previous_champion'] or 'none'}); reason: {done['reason']}")


def _registry_error(err: Exception, model: str, root: Path) -> Exception:
    """A registry lookup that found nothing says where it looked and what to do."""
    from mofi_core.tracking import NoTrackingStore, registry_hint

    text = str(err)
    if model.startswith("models:/") and not isinstance(err, NoTrackingStore) and (
            "RESOURCE_DOES_NOT_EXIST" in text or "not found" in text.lower()):
        return LookupError(f"{model}: no such registered model or alias; "
                           f"{registry_hint(root)}")
    return err


@app.command("serve-model")
def serve_model(model: ModelOpt = "models:/mofi-encoder@champion",
                host: Annotated[str, typer.Option(
                    help="bind address; keep loopback unless you mean it")] = "127.0.0.1",
                port: Annotated[int, typer.Option(help="port")] = 5001,
                allowed_root: Annotated[Path | None, typer.Option(
                    help="folder 'path' rows may be read from (default: as registered, "
                         "image bytes only)")] = None,
                workers: Annotated[int, typer.Option(help="server processes")] = 1,
                root: RootOpt = Path(".")) -> None:
    """Serve the registered encoder over HTTP in this environment (MLflow's scoring protocol:
    POST /invocations; errors are one line, never a traceback)."""
    from mofi_core import tracking
    from mofi_core.serving.app import serve

    try:
        if model.startswith("models:/"):
            tracking.configure(root.resolve(), create=False)
        serve(model, host, port, str(allowed_root.resolve()) if allowed_root else None,
              workers)
    except Exception as err:
        _fail(_registry_error(err, model, root))


model_app = typer.Typer(help="Model folders from weights you bring.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("import")
def model_import(
        arch: Annotated[str, typer.Argument(
            help="open_clip architecture the weights were trained with (ViT-B-32...) or a "
                 "mofi one (mofi-tiny)")],
        weights: Annotated[Path, typer.Argument(
            help="local open_clip-format checkpoint: .safetensors or a torch state dict "
                 "(read with weights_only=True)")],
        out: Annotated[Path, typer.Option(
            help="model folder to write; under models/ and named in evaluate.extra_models, "
                 "evaluate compares it beside MOFI and the control")],
        mean: Annotated[str, typer.Option(
            help="image normalisation mean, e.g. 0.5,0.5,0.5 (default: OpenAI CLIP's)")] = "",
        std: Annotated[str, typer.Option(help="image normalisation std (default: OpenAI's)")]
        = "") -> None:
    """An open_clip architecture + local weights as a mofi model folder (kind clip): no
    download, no unpickling; keys or shapes that do not fit are one error line."""
    from mofi_core.models.pretrained import import_clip

    def floats(text: str) -> tuple[float, ...] | None:
        return tuple(float(x) for x in text.split(",")) if text else None

    try:
        folder = import_clip(arch, weights, out, floats(mean), floats(std))
    except Exception as err:
        _fail(err)
    typer.echo(f"wrote {folder}: {arch} from {weights}")


@app.command("import-wikidata")
def import_wikidata(
        dump: Annotated[Path, typer.Argument(help="Wikidata JSON dump (.json, .json.bz2, .gz)")],
        out: Annotated[Path, typer.Option(help="KB parquet to write")] = Path("kb.parquet"),
        type_map: Annotated[Path | None, typer.Option(
            help="YAML/JSON mapping of P31 ids to KB types, e.g. {Q5: person}")] = None,
        language: Annotated[str, typer.Option(help="label/alias/description language")] = "en",
        min_sitelinks: Annotated[int, typer.Option(help="keep entities with at least this "
                                                        "many sitelinks")] = 1) -> None:
    """Stream a Wikidata JSON dump into the KB format (entity_id, name, aliases, ...), outside
    the DAG (in the DAG: kb.source wikidata and the kb stage)."""
    import yaml

    from mofi_core.kb.wikidata import import_wikidata as run_import

    try:
        mapping = None
        if type_map is not None:
            mapping = yaml.safe_load(type_map.read_text(encoding="utf-8"))
            if not isinstance(mapping, dict) or not mapping:
                raise ValueError(f"{type_map}: expected a mapping like {{Q5: person}}")
            mapping = {str(k): str(v) for k, v in mapping.items()}
        stats = run_import(dump, out, mapping, language, min_sitelinks)
    except Exception as err:
        _fail(err)
    typer.echo(f"wrote {out}: {stats.kept} entities from {stats.lines} dump lines; "
               f"skipped {dict(stats.skipped)}")


def parse_sets(values: list[str]) -> dict:
    """``-S key=value`` options as dotted overrides (a malformed one is a usage error)."""
    from mofi_core.config.load import parse_assignments

    try:
        return parse_assignments(values)
    except ValueError as err:
        raise typer.BadParameter(str(err)) from None


@app.command()
def run(sets: Annotated[list[str], typer.Option(
            "--set", "-S", help="override a param for this run only, e.g. -S train.steps=50 "
                                "(repeatable): params.yaml holds it while the stages run and "
                                "is put back byte for byte; the run is recorded as a DVC "
                                "experiment (git projects) and on its MLflow run")] = [],  # noqa: B006
        project_dir: Annotated[Path, typer.Option(help="project folder")] = Path("."),
        retries: Annotated[int, typer.Option(help="retries of a failed stage")] = 1,
        max_parallel: Annotated[int | None, typer.Option(
            help="stages DVC allows in parallel that may run at once (default: 1 on two "
                 "cores or fewer, else 2)")] = None) -> None:
    """Run the whole pipeline now: Prefect flow 'mofi' over the DVC stages (no server needed)."""
    overrides = parse_sets(sets)
    from flows.mofi_flow import mofi

    try:
        summary = mofi(overrides=overrides, project_dir=str(project_dir.resolve()),
                       retries=retries, max_parallel=max_parallel)
    except Exception as err:
        _fail(err)
    _print_summary(summary, project_dir.resolve())
    if summary.get("mlflow_run"):
        typer.echo(f"this run in the MLflow UI: {summary['mlflow_run']}")
    if summary.get("overrides_record"):
        typer.echo(summary["overrides_record"])


def _print_summary(summary: dict, root: Path) -> None:
    typer.echo("\nstage times:")
    for s in summary["stages"]:
        typer.echo(f"  {s['stage']:<20} {s['status']:<8} {s['seconds']:>7.1f} s")
    from mofi_core.recipes import model_label

    typer.echo("\nevery model on the benchmark (GPR1200 protocol; zero-shot: text towers):")
    for name, m in (summary.get("models") or {}).items():
        zs = f"{m['zero_shot_top1']:.4f}" if "zero_shot_top1" in m else "  n/a "
        lp = f"{m['probe_top1']:.4f}" if "probe_top1" in m else "n/a"
        typer.echo(f"  {model_label(name):<24} mAP {m['gpr_map']:.4f}  R@1 "
                   f"{m['recall_at_1']:.4f}  zero-shot {zs}  probe {lp}")
    model = summary.get("model") or {}
    if model.get("candidates"):
        versions = ", ".join(f"{n} v{d['version']}" for n, d in model["candidates"].items())
        typer.echo(f"\nregistered {model['model_name']}: {versions}; best this run: "
                   f"{model['best']}; champion is version {model['champion']}")
    if summary.get("report"):
        typer.echo("\n" + summary["report"])
    typer.echo(f"\nMLflow UI: mofi ui --root {root}   (or plain `mlflow ui` there; then open "
               "http://127.0.0.1:5000)\ncompare runs: dvc exp show, dvc metrics diff, "
               "dvc plots diff (docs/review.md)")


@app.command("remote-s3")
def remote_s3(url: Annotated[str, typer.Argument(help="s3://bucket/prefix for DVC's cache")],
              root: RootOpt = Path("."),
              name: Annotated[str, typer.Option(help="DVC remote name")] = "storage",
              endpoint: Annotated[str, typer.Option(
                  help="S3-compatible endpoint (default: AWS_ENDPOINT_URL)")] = "",
              profile: Annotated[str, typer.Option(help="AWS profile")] = "",
              region: Annotated[str, typer.Option(help="AWS region")] = "",
              store_credentials: Annotated[bool, typer.Option(
                  help="copy AWS_* keys from the environment into .dvc/config.local "
                       "(default: DVC reads them from the environment/profile)")] = False
              ) -> None:
    """Make an S3 bucket the default DVC remote (then: dvc push / dvc pull). The URL goes to
    .dvc/config; endpoint, profile, region (and keys, if asked) to .dvc/config.local."""
    from flows.dvc_remote import configure_s3_remote

    try:
        done = configure_s3_remote(root.resolve(), url, name, endpoint or None,
                                   profile or None, region or None, store_credentials)
    except Exception as err:
        _fail(err)
    typer.echo(f"DVC remote {done['remote']!r} = {done['url']} (default); "
               f".dvc/config.local: {', '.join(done['config_local']) or 'nothing'}")


storage_app = typer.Typer(
    help="The storage root (storage.root / MOFI_STORAGE_ROOT, s3://bucket/prefix): stage "
         "commands fetch their inputs from it and publish their outputs to it themselves; "
         "these commands do either half by hand, and create buckets.",
    no_args_is_help=True)
app.add_typer(storage_app, name="storage")

IfConfiguredOpt = Annotated[bool, typer.Option(
    help="do nothing (exit 0) when no storage root is configured")]
StageArg = Annotated[str, typer.Argument(help="stage name in dvc.yaml")]


def _stage_storage(stage: str, params: Path, root: Path, if_configured: bool):
    """The stage's storage, or None when no root is configured and ``if_configured``."""
    from mofi_core.config.load import load_params
    from mofi_core.io.storage import StageStorage, storage_root

    loaded = load_params(params)
    url = storage_root(loaded.storage.root)
    if not url and if_configured:
        return None
    if not url:
        raise ValueError("no storage root: set storage.root in params.yaml or "
                         "MOFI_STORAGE_ROOT=s3://bucket/prefix")
    return StageStorage.open(url, root.resolve(), stage, loaded.value)


def _storage_sync(action: str, stage: str, params: Path, root: Path,
                  if_configured: bool) -> None:
    try:
        store = _stage_storage(stage, params, root, if_configured)
        if store is None:
            return
        done = store.pull() if action == "pull" else store.push()
    except Exception as err:
        _fail(err)
    for path, stats in done.items():
        typer.echo(f"{stage}: {action} {path} ({store.storage.url(path)}): {stats}")


@storage_app.command("pull")
def storage_pull(stage: StageArg, params: ParamsOpt = Path("params.yaml"),
                 root: RootOpt = Path("."), if_configured: IfConfiguredOpt = False) -> None:
    """Fetch a stage's inputs from the storage root into the project folder (a node that must
    hold them before a launch: infra/torchrun-train.sh)."""
    _storage_sync("pull", stage, params, root, if_configured)


@storage_app.command("push")
def storage_push(stage: StageArg, params: ParamsOpt = Path("params.yaml"),
                 root: RootOpt = Path("."), if_configured: IfConfiguredOpt = False) -> None:
    """Publish a stage's outputs from the project folder to the storage root (after a publish
    failed, or to make the store hold the version dvc.lock records)."""
    _storage_sync("push", stage, params, root, if_configured)


@storage_app.command("create-bucket")
def storage_create_bucket(
        urls: Annotated[list[str], typer.Argument(
            help="s3://bucket or s3://bucket/prefix (the bucket is created; a prefix needs "
                 "nothing)")],
        wait: Annotated[float, typer.Option(
            help="seconds to keep retrying while the S3 server is not answering (just "
                 "started); 0: fail at once")] = 0.0) -> None:
    """Create S3 buckets on the configured endpoint (AWS_ENDPOINT_URL, keys from the
    environment); an existing bucket these credentials can use is fine."""
    import time

    from mofi_core.io import s3

    deadline = time.monotonic() + wait
    for url in urls:
        try:
            bucket = f"s3://{s3.S3Url.parse(url).bucket}"
            while True:
                try:
                    created = s3.create_bucket(bucket)
                    break
                except s3.S3Unavailable:  # not up yet (or its keys not loaded yet)
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(1.0)
        except Exception as err:
            _fail(err)
        typer.echo(f"{bucket}: {'created' if created else 'exists already'} "
                   f"(endpoint {s3.endpoint_name()})")


SERVE_DEPLOYMENT = "local"  # infra/prefect.yaml deploys `full` (work pool): one name per method


@app.command()
def serve(project_dir: Annotated[Path, typer.Option(help="project folder")] = Path(".")) -> None:
    """Register deployment 'local' of flow 'mofi' with the Prefect server and run its flow runs
    here, in this process's checkout (then: prefect deployment run mofi/local). The work-pool
    deployment of infra/prefect.yaml is 'mofi/full'; a run's -p overrides=... are for that
    run only."""
    from flows.mofi_flow import mofi

    mofi.serve(name=SERVE_DEPLOYMENT, parameters={"project_dir": str(project_dir.resolve())},
               description="the whole MOFI pipeline over the DVC stages, served by `mofi "
                           "serve` from its checkout")


# MLflow reads these from the environment too; an explicit flag wins over an inherited value,
# so ``ui_command`` always passes all three and ``ui`` drops the switch that turns them off.
UI_UNSAFE_ENV = ("MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE",)


def ui_command(uri: str, host: str = "127.0.0.1", port: int = 5000,
               artifact_root: str | None = None, allowed_hosts: str | None = None,
               cors_origins: str | None = None) -> list[str]:
    """The argv of ``mofi ui``: ``mlflow ui`` with its security middleware pinned to loopback.

    ``--allowed-hosts`` (DNS-rebinding protection: any other ``Host`` header gets a 403) defaults
    to ``localhost:<port>,127.0.0.1:<port>`` instead of MLflow's "localhost + every private IP".
    ``--cors-allowed-origins`` defaults to the UI's own origins; MLflow additionally always
    accepts ``http://localhost|127.0.0.1|[::1]:*`` and rejects state-changing API calls (403)
    from any other ``Origin``. ``--x-frame-options SAMEORIGIN`` stops clickjacking frames.
    """
    hosts = allowed_hosts or f"localhost:{port},127.0.0.1:{port}"
    origins = cors_origins or f"http://localhost:{port},http://127.0.0.1:{port}"
    cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--host", host,
           "--port", str(port), "--allowed-hosts", hosts, "--cors-allowed-origins", origins,
           "--x-frame-options", "SAMEORIGIN"]
    if artifact_root:
        cmd += ["--default-artifact-root", artifact_root]
    return cmd


@app.command()
def ui(root: RootOpt = Path("."),
       port: Annotated[int, typer.Option(help="port on 127.0.0.1")] = 5000,
       host: Annotated[str, typer.Option(help="bind address; keep loopback unless you mean it")]
       = "127.0.0.1",
       allowed_hosts: Annotated[str | None, typer.Option(
           help="comma-separated Host headers to accept (wildcards allowed; default "
                "localhost:PORT,127.0.0.1:PORT); widen only when exposing the UI")] = None,
       cors_origins: Annotated[str | None, typer.Option(
           "--cors-allowed-origins",
           help="comma-separated CORS origins to accept (default http://localhost:PORT,"
                "http://127.0.0.1:PORT); never '*' unless you mean any website")] = None,
       ) -> None:
    """Open the MLflow UI on the project's tracking store."""
    from mofi_core.tracking import ARTIFACTS, NoTrackingStore, configure

    try:
        configure(root.resolve(), create=False)
    except NoTrackingStore as err:
        _fail(err)
    import mlflow

    uri = mlflow.get_tracking_uri()
    artifact_root = ((Path(uri.removeprefix("sqlite:///")).parent / ARTIFACTS).as_uri()
                     if uri.startswith("sqlite:///") else None)
    cmd = ui_command(uri, host, port, artifact_root, allowed_hosts, cors_origins)
    env = {k: v for k, v in os.environ.items() if k not in UI_UNSAFE_ENV}
    for key in UI_UNSAFE_ENV:
        if key in os.environ:
            typer.echo(f"ignoring {key}: mofi ui keeps MLflow's security middleware on", err=True)
    typer.echo(" ".join(cmd))
    os.execve(sys.executable, cmd, env)  # noqa: S606 - fixed argv, no shell


def _skip_final_collection() -> None:
    """The command is over and the process ends: move every live object out of the garbage
    collector's reach, so the interpreter's last collection does not walk them all. A stage
    holds torch, open_clip, MLflow and SQLAlchemy; that walk took ~2 s of each stage process's
    exit on a 2-core host (0.4 s with this), about 20 s over the demo's 14 stages. The memory
    is returned by the operating system as usual; files are written through context managers
    and ``atexit`` handlers (MLflow's, logging's) still run."""
    import gc

    gc.freeze()


def main() -> None:
    for key, value in {**OFFLINE_DEFAULTS, **PATIENT_DEFAULTS}.items():
        os.environ.setdefault(key, value)
    try:
        app(prog_name="mofi")
    finally:
        _skip_final_collection()


if __name__ == "__main__":
    main()
