"""The flow's plumbing, kept free of Prefect so that it is testable on its own.

Stage graph
    :func:`stage_needs` asks DVC itself (``dvc.repo.Repo(root).index.graph``, the graph that
    ``dvc repro`` plans from) which stages each stage waits for; there is no second parser of
    ``dvc.yaml`` here to disagree with DVC. :func:`stage_order` is a topological order of that
    graph (file order among stages that are ready together); :func:`ready_stages` says which
    stages may start once others are done, so that stages DVC allows in parallel can run so.

Per-run overrides
    :func:`run_overrides` writes a run's overrides into ``params.yaml`` (so DVC sees them and
    ``dvc.lock`` records what produced the outputs) and puts the file back byte for byte when
    the run ends, however it ends; a copy of the original kept under ``.mofi/flow/`` lets the
    next run restore it after a ``kill -9`` (:func:`recover_params`). :func:`save_experiment`
    records the overridden state as a DVC experiment (``dvc exp save``) before that.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import subprocess
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mofi_core.config.load import apply_overrides, parse_params, read_params_file

FLOW_STATE = Path(".mofi") / "flow"  # per-project flow state (git-ignored)


# ---------------------------------------------------------------------------- the stage graph

def _project_root(path: Path) -> Path:
    """The folder DVC is asked about: ``path`` itself, or the folder of a ``dvc.yaml`` path."""
    path = Path(path).resolve()
    return path.parent if path.is_file() or path.name == "dvc.yaml" else path


def stage_needs(project: Path) -> dict[str, tuple[str, ...]]:
    """Every stage with a command, in DVC's stage order, mapped to the stages it waits for.

    Names are DVC's addresses (``name``, or ``sub/dvc.yaml:name`` for a nested ``dvc.yaml``),
    the targets ``dvc repro --single-item`` takes. DVC's graph points from a stage to the stages
    that produce its dependencies; a stage without a command (a ``dvc add``-ed data source) is
    looked through, so what depends on it waits for what it depends on. ``project`` is the
    project folder or its ``dvc.yaml``. DVC's own errors (a cycle, two stages writing one
    output) are raised as DVC raises them.
    """
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    with Repo(str(_project_root(project))) as repo:
        graph = repo.index.graph
        runnable = [s for s in graph.nodes if getattr(s, "cmd", None)]

        def address(stage) -> str:  # Stage.addressing is relative to the working folder
            rel = os.path.relpath(stage.path, repo.root_dir)
            if not isinstance(stage, PipelineStage):
                return rel
            return stage.name if rel == "dvc.yaml" else f"{rel}:{stage.name}"

        def upstream(stage, seen: set) -> list:
            out = []
            for dep in graph.successors(stage):
                if dep in seen:
                    continue
                seen.add(dep)
                out += [dep] if getattr(dep, "cmd", None) else upstream(dep, seen)
            return out

        needs = {address(s): tuple(sorted({address(d) for d in upstream(s, set())}))
                 for s in runnable}
    if not needs:
        raise ValueError(f"{_project_root(project)}: DVC finds no stage to run")
    return needs


def ready_stages(needs: Mapping[str, tuple[str, ...] | set[str]], done: set[str],
                 started: set[str]) -> list[str]:
    """Stages not started yet whose every upstream stage is done, in ``needs`` order."""
    return [s for s, ups in needs.items() if s not in started and set(ups) <= done]


def topological(needs: Mapping[str, tuple[str, ...] | set[str]]) -> list[str]:
    """A topological order of ``needs``: at each step the first ready stage in its order."""
    order: list[str] = []
    while len(order) < len(needs):
        ready = ready_stages(needs, set(order), set(order))
        if not ready:
            raise ValueError(f"cycle among stages {sorted(set(needs) - set(order))}")
        order.append(ready[0])
    return order


def stage_order(project: Path) -> list[str]:
    """DVC's stages in a topological order of its graph, file order among stages that are
    ready together. ``project``: the project folder or its ``dvc.yaml``."""
    return topological(stage_needs(project))


# -------------------------------------------------------------------------------- overrides

def write_overrides(params_file: Path, overrides: dict[str, Any]) -> None:
    """Validate ``overrides`` (dotted keys) against the params schema, then write them into
    ``params_file``. Comments, quoting and layout of every other line are kept (round-trip
    YAML); an invalid override raises before anything is written."""
    if overrides:
        _write_bytes(params_file, render_overrides(params_file, overrides))


def render_overrides(params_file: Path, overrides: dict[str, Any]) -> bytes:
    """The bytes :func:`write_overrides` would write (validated first)."""
    parse_params(apply_overrides(read_params_file(params_file), overrides), str(params_file))
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedSeq

    rt = YAML()  # round-trip mode: builds plain mappings/scalars only, keeps comments
    rt.preserve_quotes = True
    rt.indent(mapping=2, sequence=4, offset=2)  # params.yaml's own style for block lists
    rt.width = 4096  # never wrap a long value
    doc = rt.load(params_file.read_text(encoding="utf-8"))
    for dotted, value in overrides.items():
        node = doc
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        old = node.get(leaf)
        if isinstance(value, list) and isinstance(old, CommentedSeq) and old.fa.flow_style():
            value = CommentedSeq(value)  # `[a, b]` stays `[a, b]`
            value.fa.set_flow_style()
        node[leaf] = value
    import io

    text = io.StringIO()
    rt.dump(doc, text)
    return text.getvalue().encode("utf-8")


def _write_bytes(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically with ``data``, keeping its permission bits."""
    from mofi_core.io.atomic import atomic_path

    mode = path.stat().st_mode & 0o7777 if path.exists() else None
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
        if mode is not None:
            os.chmod(tmp, mode)


def _backup_file(params_file: Path) -> Path:
    return params_file.parent / FLOW_STATE / f"{params_file.name}.before-overrides.json"


def recover_params(params_file: Path) -> str | None:
    """Undo the overrides of a run that was killed before it could restore ``params_file``.

    The backup holds the original text and a digest of what the killed run wrote: the file is
    put back only if it still holds exactly that (an edit made since is never overwritten).
    Returns a line saying what was done, or None when there was nothing to do."""
    backup = _backup_file(params_file)
    if not backup.is_file():
        return None
    saved = json.loads(backup.read_text(encoding="utf-8"))
    now = hashlib.sha256(params_file.read_bytes()).hexdigest() if params_file.is_file() else ""
    if now == saved["written_sha256"]:
        _write_bytes(params_file, saved["original"].encode("utf-8"))
        line = (f"{params_file.name}: restored the original, left overridden by flow run "
                f"{saved.get('run_name', '?')} (it ended before it could restore it)")
    else:
        line = (f"{params_file.name}: a killed flow run {saved.get('run_name', '?')} had "
                "overridden it, but the file has been edited since; left as it is")
    backup.unlink()
    return line


@contextlib.contextmanager
def run_overrides(params_file: Path, overrides: dict[str, Any], run_name: str = ""
                  ) -> Iterator[None]:
    """``params_file`` holds ``overrides`` inside the block and its original bytes after it,
    whether the block returns, raises or is interrupted (KeyboardInterrupt included).

    Invalid overrides raise before the file is touched. A copy of the original is kept under
    ``.mofi/flow/`` while the block runs, for :func:`recover_params` after a ``kill -9``."""
    if not overrides:
        yield
        return
    from mofi_core.io.atomic import write_json

    original = params_file.read_bytes()
    overridden = render_overrides(params_file, overrides)  # raises if invalid
    backup = _backup_file(params_file)
    write_json(backup, {"original": original.decode("utf-8"), "run_name": run_name,
                        "written_sha256": hashlib.sha256(overridden).hexdigest()})
    try:
        _write_bytes(params_file, overridden)
        yield
    finally:
        _write_bytes(params_file, original)
        backup.unlink(missing_ok=True)


@contextlib.contextmanager
def project_lock(root: Path, say=print) -> Iterator[None]:
    """One flow run at a time in a project folder: a second run (another deployment run, a
    ``mofi run``) waits here, so no run ever sees another run's overrides in params.yaml.
    An OS file lock: released by the kernel if the holder dies."""
    path = root / FLOW_STATE / "run.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+", encoding="utf-8") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            say(f"waiting for another flow run in {root} to end ({fh.read().strip()})")
            fcntl.flock(fh, fcntl.LOCK_EX)
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()}, since {datetime.now(UTC):%Y-%m-%dT%H:%M:%SZ}")
        fh.flush()
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


# ----------------------------------------------------------------- recording as an experiment

def default_run_name(now: datetime | None = None) -> str:
    return f"mofi-{(now or datetime.now(UTC)):%Y%m%dT%H%M%SZ}"


def experiment_name(run_name: str) -> str:
    """``run_name`` as a DVC experiment name: a valid git ref component (git check-ref-format)
    without '/', as ``dvc exp save --name`` requires. Never empty."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", run_name)
    name = re.sub(r"\.{2,}", ".", name)
    name = re.sub(r"-{2,}", "-", name)[:100].strip("-.")
    if name.endswith(".lock"):
        name = name[:-len(".lock")] + "-lock"
    return name or default_run_name()


def git_baseline(root: Path) -> str | None:
    """The commit a DVC experiment of ``root`` would be based on; None when DVC works without
    git there (``core.no_scm``, no git repo) or the repo has no commit yet."""
    from dvc.repo import Repo
    from scmrepo.noscm import NoSCM

    with Repo(str(root)) as repo:
        if isinstance(repo.scm, NoSCM) or repo.scm.no_commits:
            return None
        return repo.scm.get_rev()


def _git_identity_env(root: Path) -> dict[str, str]:
    """``dvc exp save`` makes a git commit; where git has no identity configured (a bare
    worker), name the pipeline as its author instead of failing."""
    env = {}
    for key, var, default in (("user.name", "NAME", "mofi pipeline"),
                              ("user.email", "EMAIL", "mofi@localhost")):
        known = subprocess.run(["git", "config", key], cwd=root, capture_output=True,
                               text=True).stdout.strip()
        if not known:
            for who in ("AUTHOR", "COMMITTER"):
                env.setdefault(f"GIT_{who}_{var}", os.environ.get(f"GIT_{who}_{var}", default))
    return env


def git_held_outputs(root: Path) -> list[str]:
    """The ``cache: false`` outputs (metrics, plots, small reports) that exist and git does
    not ignore: git, not DVC's cache, holds them, so an experiment commit must include them
    even while they are untracked, or ``dvc exp show`` finds no metrics for it."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        paths = sorted({os.path.relpath(out.fs_path, repo.root_dir)
                        for stage in repo.index.stages for out in stage.outs
                        if not out.use_cache and os.path.exists(out.fs_path)})
    if not paths:
        return []
    ignored = subprocess.run(["git", "check-ignore", "--", *paths], cwd=root,
                             capture_output=True, text=True).stdout.splitlines()
    return [p for p in paths if p not in set(ignored)]


def save_experiment(root: Path, name: str, message: str) -> dict[str, str]:
    """``dvc exp save --name <name> --force``: the workspace as it is now (params.yaml with the
    overrides, dvc.lock, metrics) becomes experiment ``name`` on top of the current commit;
    ``dvc exp show`` lists it, ``dvc exp apply <name>`` brings it back. The working tree, the
    git index and HEAD are left as they are. Returns name, commit, baseline and ref."""
    baseline = git_baseline(root)
    if baseline is None:
        raise RuntimeError(f"{root}: not a git repo with a commit")
    include = [arg for path in git_held_outputs(root) for arg in ("-I", path)]
    proc = subprocess.run(["dvc", "exp", "save", "--name", name, "--force", "--json",
                           "-m", message, *include], cwd=root, capture_output=True, text=True,
                          env={**os.environ, **_git_identity_env(root)})
    if proc.returncode != 0:
        raise RuntimeError(f"dvc exp save failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    commit = json.loads(proc.stdout.strip().splitlines()[-1])["ref"]
    return {"name": name, "commit": commit, "baseline": baseline,
            "ref": f"refs/exps/{baseline[:2]}/{baseline[2:]}/{name}"}
