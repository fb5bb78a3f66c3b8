"""Stage inputs and outputs under an ``s3://`` storage root, for machines that share no disk.

With ``storage.root`` (or ``MOFI_STORAGE_ROOT``) set to ``s3://bucket/prefix``, every stage
command reads its inputs from, and publishes its outputs to, that prefix; the paths are the
ones ``dvc.yaml`` declares (``data/ingest`` lives at ``s3://bucket/prefix/data/ingest/...``).
The stage itself still works on the project folder, which becomes a working copy:

- before the stage, each data input (a ``dvc.yaml`` dep that another stage outputs) is brought
  into the working copy from the published objects: only files whose content differs are
  downloaded (each checked against its SHA-256), files the publication does not list are
  removed. Inputs a stage streams itself (``ingest`` reads the corpus shards straight from S3)
  are not downloaded;
- after the stage succeeds, each output (``outs``, ``metrics`` and ``plots`` of the stage) is
  published: changed files are uploaded (each atomically, see :func:`s3.upload`), then the
  output's manifest is written, then objects the new manifest no longer lists are deleted.

The manifest (``<root>/_manifests/<output path>.json``: every file's size and SHA-256) is the
completion marker: a reader trusts only the files it lists and verifies each download against
it, so a reader never mixes two publications silently, and an output whose stage never
finished has no manifest (the error names the stage to run).

DVC is not needed for this mode (a Prefect worker or a Kubernetes job per stage can run
``mofi <stage>`` on an empty folder); under ``dvc repro`` the working copy also satisfies
DVC's own checks. Credentials come from the environment as for all S3 access (``s3.py``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import yaml

from mofi_core.io import s3
from mofi_core.io.atomic import atomic_path, write_json
from mofi_core.io.hashing import file_sha256

MANIFESTS = "_manifests"
FORMAT = 1


class StorageError(RuntimeError):
    pass


def dvc_paths(entries: list | None) -> list[str]:
    """dvc.yaml lists outs as strings or as ``{path: {options}}`` mappings."""
    return [e if isinstance(e, str) else next(iter(e)) for e in entries or []]


def under(path: str, parent: str) -> bool:
    path, parent = path.rstrip("/"), parent.rstrip("/")
    return path == parent or path.startswith(parent + "/")


@dataclass(frozen=True)
class StageIO:
    """What a stage reads and writes, from ``dvc.yaml``."""

    stage: str
    inputs: tuple[tuple[str, str, str], ...]  # (dep path, output holding it, producing stage)
    outputs: tuple[str, ...]


def stage_io(dvc_yaml: Path, stage: str) -> StageIO:
    if not dvc_yaml.is_file():
        raise StorageError(f"storage.root is set but {dvc_yaml} is missing: the stage inputs and "
                           "outputs are read from it (run from the project root or pass --root)")
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})
    if stage not in stages:
        raise StorageError(f"{dvc_yaml} has no stage {stage!r}")
    outs = {name: [p for key in ("outs", "metrics", "plots") for p in dvc_paths(s.get(key))]
            for name, s in stages.items()}
    inputs = []
    for dep in dvc_paths(stages[stage].get("deps")):
        owners = [(out, name) for name, paths in outs.items() if name != stage
                  for out in paths if under(dep, out)]
        if owners:  # a data dependency (code deps are nobody's output)
            inputs.append((dep, *owners[0]))
    return StageIO(stage, tuple(inputs), tuple(outs[stage]))


@dataclass
class SyncStats:
    transferred: int = 0
    unchanged: int = 0
    removed: int = 0
    bytes: int = 0

    def __str__(self) -> str:
        return (f"{self.transferred} files ({self.bytes / 1e6:.1f} MB) transferred, "
                f"{self.unchanged} unchanged, {self.removed} removed")


class Storage:
    """A working copy of project paths (``workspace``) published under ``root`` (s3://)."""

    def __init__(self, root: str, workspace: Path) -> None:
        if not s3.is_s3(root):
            raise StorageError(f"storage.root must be an s3://bucket/prefix URL, got {root!r}")
        self.root = root.rstrip("/")
        self.workspace = workspace
        self._hash_file = workspace / ".mofi" / "storage" / "hashes.json"
        self._hashes: dict[str, list] | None = None

    # naming ---------------------------------------------------------------------------------
    @staticmethod
    def _check(rel: str) -> str:
        p = PurePosixPath(rel)
        if p.is_absolute() or ".." in p.parts or not p.parts:
            raise StorageError(f"stage path {rel!r} must be relative to the project root")
        return p.as_posix()

    def url(self, rel: str, member: str = "") -> str:
        rel = self._check(rel)
        return f"{self.root}/{rel}/{member}" if member else f"{self.root}/{rel}"

    def manifest_url(self, out: str) -> str:
        return f"{self.root}/{MANIFESTS}/{self._check(out)}.json"

    def _local(self, out: str, member: str) -> Path:
        return self.workspace / out / member if member else self.workspace / out

    # local hashes (size + mtime cache, so unchanged files are not re-read) ------------------
    def _sha(self, path: Path) -> str:
        if self._hashes is None:
            try:
                self._hashes = json.loads(self._hash_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._hashes = {}  # no cache (or a damaged one): hash again
        st = path.stat()
        key = path.relative_to(self.workspace).as_posix()
        cached = self._hashes.get(key)
        if cached and cached[0] == st.st_size and cached[1] == st.st_mtime_ns:
            return cached[2]
        sha = file_sha256(path)
        self._hashes[key] = [st.st_size, st.st_mtime_ns, sha]
        return sha

    def _save_hashes(self) -> None:
        if self._hashes is not None:
            write_json(self._hash_file, self._hashes)

    def _local_files(self, out: str) -> dict[str, Path]:
        """member name -> path ('' for an output that is one file); temporaries skipped."""
        path = self.workspace / out
        if path.is_file():
            return {"": path}
        if not path.is_dir():
            raise StorageError(f"stage output {out} was not written (no {path}); nothing to "
                               "publish")
        return {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*"))
                if p.is_file() and ".tmp-" not in p.name}

    # manifests ------------------------------------------------------------------------------
    def read_manifest(self, out: str) -> dict[str, dict] | None:
        url = self.manifest_url(out)
        if not s3.exists(url):
            return None
        raw = json.loads(s3.read_bytes(url))
        if raw.get("format") != FORMAT:
            raise StorageError(f"{url}: manifest format {raw.get('format')!r} is not {FORMAT}; "
                               "republish the output with this version")
        return raw["files"]

    def _published(self, out: str, producer: str) -> dict[str, dict]:
        manifest = self.read_manifest(out)
        if manifest is None:
            raise StorageError(
                f"{self.root}/{out} has not been published (no {self.manifest_url(out)}): run "
                f"stage {producer!r} with the same storage root first (or check storage.root / "
                "MOFI_STORAGE_ROOT)")
        return manifest

    # publish --------------------------------------------------------------------------------
    def publish(self, out: str) -> SyncStats:
        """Upload what changed in output ``out``, then its manifest, then delete what the new
        manifest no longer lists."""
        stats = SyncStats()
        files = self._local_files(out)
        old = self.read_manifest(out) or {}
        new: dict[str, dict] = {}
        for member, path in files.items():
            sha = self._sha(path)
            size = path.stat().st_size
            new[member] = {"size": size, "sha256": sha}
            if old.get(member, {}).get("sha256") == sha:
                stats.unchanged += 1
                continue
            s3.upload(path, self.url(out, member))
            stats.transferred += 1
            stats.bytes += size
        s3.write_bytes(self.manifest_url(out), json.dumps(
            {"format": FORMAT, "output": out, "files": new}, indent=1, sort_keys=True).encode())
        for member in sorted(set(old) - set(new)):
            s3.delete(self.url(out, member))
            stats.removed += 1
        self._save_hashes()
        return stats

    # fetch ----------------------------------------------------------------------------------
    def fetch(self, dep: str, out: str, producer: str) -> SyncStats:
        """Make ``dep`` (a path inside output ``out`` of stage ``producer``) in the working copy
        equal to its publication."""
        manifest = self._published(out, producer)
        sub = PurePosixPath(dep).relative_to(out).as_posix() if dep != out else ""
        wanted = {m: meta for m, meta in manifest.items()
                  if not sub or m == sub or m.startswith(sub + "/")}
        if not wanted:
            raise StorageError(f"{dep} is not in the publication of {out} "
                               f"({self.manifest_url(out)} lists no such file or folder)")
        stats = SyncStats()
        for member, meta in sorted(wanted.items()):
            local = self._local(out, member)
            if local.is_file() and local.stat().st_size == meta["size"] \
                    and self._sha(local) == meta["sha256"]:
                stats.unchanged += 1
                continue
            self._download_verified(self.url(out, member), local, meta)
            stats.transferred += 1
            stats.bytes += meta["size"]
        stats.removed = self._remove_unlisted(out, sub, set(wanted))
        self._save_hashes()
        return stats

    def _download_verified(self, url: str, dest: Path, meta: dict) -> None:
        with atomic_path(dest) as tmp:
            s3.download(url, tmp)
            sha = file_sha256(tmp)
            if sha != meta["sha256"]:
                raise StorageError(
                    f"{url} has SHA-256 {sha[:12]}..., its manifest says "
                    f"{meta['sha256'][:12]}...: the output is being republished (retry when "
                    "its stage has finished) or the object was changed outside mofi")

    def _remove_unlisted(self, out: str, sub: str, listed: set[str]) -> int:
        base = self.workspace / out / sub if sub else self.workspace / out
        if not base.is_dir():
            return 0
        removed = 0
        for p in sorted(base.rglob("*")):
            member = p.relative_to(self.workspace / out).as_posix()
            if p.is_file() and member not in listed:
                p.unlink()
                removed += 1
        return removed

    def object_urls(self, rel: str, out: str, producer: str, suffix: str | tuple[str, ...] = ""
                    ) -> list[str]:
        """URLs of the published files under ``rel`` (inside output ``out``) ending in
        ``suffix``, for stages that stream their input rather than fetch it."""
        manifest = self._published(out, producer)
        sub = PurePosixPath(rel).relative_to(out).as_posix() if rel != out else ""
        return [self.url(out, m) for m in sorted(manifest)
                if (not sub or m.startswith(sub + "/")) and m.endswith(suffix)]


def storage_root(configured: str) -> str:
    """The storage root in force: ``MOFI_STORAGE_ROOT`` wins over params ``storage.root``."""
    return os.environ.get("MOFI_STORAGE_ROOT", "") or configured


@dataclass
class StageStorage:
    """The storage of one stage: its inputs and outputs from ``dvc.yaml``."""

    storage: Storage
    io: StageIO
    streamed: tuple[str, ...] = ()  # inputs the stage reads from S3 itself

    @classmethod
    def open(cls, root: str, workspace: Path, stage: str,
             streamed: tuple[str, ...] = ()) -> StageStorage:
        return cls(Storage(root, workspace), stage_io(workspace / "dvc.yaml", stage), streamed)

    def input_for(self, rel: str) -> tuple[str, str] | None:
        """(output, producer) holding input path ``rel``, if it is a data input."""
        for dep, out, producer in self.io.inputs:
            if under(rel, dep) or under(dep, rel):
                return out, producer
        return None

    def pull(self) -> dict[str, SyncStats]:
        return {dep: self.storage.fetch(dep, out, producer)
                for dep, out, producer in self.io.inputs if dep not in self.streamed}

    def push(self) -> dict[str, SyncStats]:
        return {out: self.storage.publish(out) for out in self.io.outputs}
