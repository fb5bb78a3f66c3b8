"""Stage inputs and outputs under an ``s3://`` storage root, for machines that share no disk.

With ``storage.root`` (or ``MOFI_STORAGE_ROOT``) set to ``s3://bucket/prefix``, every stage
command reads its inputs from, and publishes its outputs to, that prefix; the paths are the
ones the stage table declares (:mod:`mofi_core.stages`, as ``dvc.yaml`` does): ``data/ingest``
lives at ``s3://bucket/prefix/data/ingest/...``. The stage itself still works on the project
folder, which becomes a working copy:

- before the stage, each data input (an input that another stage outputs) is brought
  into the working copy from the published objects: only files whose content differs are
  downloaded (in parallel, each checked against its SHA-256), files the publication does not
  list are removed. Inputs a stage streams itself (``ingest`` reads the corpus shards straight
  from S3) are not downloaded;
- after the stage succeeds, each output (``outs``, ``metrics`` and ``plots`` of the stage) is
  published: one listing of the output's prefix gives every object's size and ETag; a file is
  uploaded (in parallel, each atomically, see :func:`s3.upload`) unless the previous manifest
  has its SHA-256 and its object still has the size and ETag that manifest recorded (so an
  object deleted or overwritten behind the manifest is put back); then the output's manifest
  is written, then objects under the prefix that the new manifest does not list are deleted.

The manifest (``<root>/_manifests/<output path>.json``: every file's size, SHA-256, MD5 and
ETag, and the output's DVC hash) is the completion marker: a reader trusts only the files it
lists and verifies each download against it, so a reader never mixes two publications
silently, and an output whose stage never finished has no manifest (the error names the stage
to run). Temporaries a killed run may leave (``.tmp-``, ``.fetch-``, ``.mofi-probe-``,
``.mofi-upload-``, as in ``.dvcignore``) are never published nor hashed.

The publication and DVC must agree on what an input is. DVC can restore an output from its run
cache or by ``dvc checkout`` without running its stage, so nothing publishes it; when the
publication's DVC hash is not the one ``dvc.lock`` records for the output, but the working copy
is, the working copy wins: inside a DVC stage command (``DVC_STAGE`` set) it is re-published and
used; outside DVC the fetch is refused, naming both versions and the ways out. When the working
copy is neither (a fresh machine, a ``dvc.lock`` that lags behind stages run elsewhere), the
publication wins, as everywhere in this mode.

DVC is not needed for this mode (a Prefect worker or a Kubernetes job per stage can run
``mofi <stage>`` on an empty folder); under ``dvc repro`` the working copy also satisfies
DVC's own checks. Credentials come from the environment as for all S3 access (``s3.py``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from mofi_core import stages
from mofi_core.io import s3
from mofi_core.io.atomic import atomic_path, write_json
from mofi_core.io.hashing import dvc_hash, file_digests

MANIFESTS = "_manifests"
FORMAT = 2  # 2 adds each file's MD5 and ETag and the output's DVC hash
READABLE = (1, 2)  # a format-1 manifest still serves reads; publishing rewrites it as 2
TEMPORARY_PREFIXES = (".fetch-", ".mofi-probe-", ".mofi-upload-")


class StorageError(RuntimeError):
    pass


def one_line(err: BaseException) -> str:
    return " ".join(str(err).split())


def is_temporary(rel: str) -> bool:
    """A name a killed run may leave in an output folder (an atomic write's ``.tmp-``, a
    download, a write probe): never published, never part of a hash (as in ``.dvcignore``)."""
    return any(".tmp-" in part or part.startswith(TEMPORARY_PREFIXES)
               for part in PurePosixPath(rel).parts)


def short(digest: str | None) -> str:
    if not digest:
        return "unknown"
    return digest[:10] + (".dir" if digest.endswith(".dir") else "")


def under(path: str, parent: str) -> bool:
    path, parent = path.rstrip("/"), parent.rstrip("/")
    return path == parent or path.startswith(parent + "/")


@dataclass(frozen=True)
class StageIO:
    """What a stage reads and writes (its data inputs, each with the output and stage that
    hold it; its DVC outputs)."""

    stage: str
    inputs: tuple[tuple[str, str, str], ...]  # (dep path, output holding it, producing stage)
    outputs: tuple[str, ...]
    owners: tuple[str, ...] = ()  # the DVC stage of each output (an instance of a foreach)

    def owner(self, out: str) -> str:
        return dict(zip(self.outputs, self.owners, strict=True)).get(out, self.stage) \
            if self.owners else self.stage


def stage_io(stage: str, lookup: Callable[[str], Any]) -> StageIO:
    """What ``stage`` reads and writes, from the stage table (:mod:`mofi_core.stages`); a
    foreach stage's name stands for all its instances (as in ``dvc repro train``).
    ``lookup(dotted)``: a params value (a foreach list, a path named by ``param_inputs``)."""
    specs = {spec.address: spec for spec in stages.expand(lookup)}
    mine = [stage] if stage in specs else [n for n in specs if n.startswith(stage + "@")]
    if not mine:
        raise StorageError(f"no stage {stage!r}; stages: {', '.join(specs)}")
    outs = {name: spec.tracked() for name, spec in specs.items()}
    others = {name: paths for name, paths in outs.items() if name not in mine}
    inputs: list[tuple[str, str, str]] = []
    for dep in dict.fromkeys(d for m in mine for d in specs[m].reads(lookup)):
        owners = [(out, name) for name, paths in others.items()
                  for out in paths if under(dep, out)]
        if owners:  # another stage's output (else external data: nothing to fetch)
            inputs.append((dep, *owners[0]))
            continue
        # a folder holding outputs of several stages (models/: the control and candidates)
        inputs.extend((out, out, name) for name, paths in others.items()
                      for out in paths if under(out, dep))
    return StageIO(stage, tuple(inputs), tuple(p for m in mine for p in outs[m]),
                   tuple(m for m in mine for _ in outs[m]))


def locked_hash(workspace: Path, stage: str, out: str) -> str | None:
    """The hash ``dvc.lock`` in ``workspace`` records for output ``out`` of ``stage``, if any."""
    lock = workspace / "dvc.lock"
    if not lock.is_file():
        return None
    try:
        data = yaml.safe_load(lock.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise StorageError(f"{lock} is not valid YAML ({one_line(err)}): restore it from git "
                           "(git checkout dvc.lock) or delete it") from None
    body = (data.get("stages") or {}).get(stage) or {}
    for entry in body.get("outs") or []:
        if isinstance(entry, dict) and str(entry.get("path", "")).rstrip("/") == out:
            return entry.get("md5")
    return None


def lock_decision(locked: str | None, published: str | None, local: str | None,
                  in_dvc_stage: bool) -> str:
    """What to do with an input whose publication may not be what ``dvc.lock`` records:

    - ``fetch``: nothing disagrees (no dvc.lock record, or the publication is that version);
    - ``republish``: the working copy is dvc.lock's version and a DVC stage command runs:
      publish it and use it (DVC restored it without running its stage);
    - ``refuse``: the same outside DVC: the user chooses (see :meth:`Storage.fetch`);
    - ``fetch-note``: dvc.lock disagrees and the working copy is missing or not its version:
      the publication wins (stages on separate machines; dvc.lock may lag), with a note.
    """
    if locked is None or published == locked:
        return "fetch"
    if local == locked:
        return "republish" if in_dvc_stage else "refuse"
    return "fetch-note"


@dataclass
class SyncStats:
    transferred: int = 0
    unchanged: int = 0
    removed: int = 0
    bytes: int = 0
    repaired: int = 0  # re-uploaded: the object was missing or changed behind the manifest
    note: str = ""

    def __str__(self) -> str:
        text = (f"{self.transferred} files ({self.bytes / 1e6:.1f} MB) transferred, "
                f"{self.unchanged} unchanged, {self.removed} removed")
        if self.repaired:
            text += f", {self.repaired} restored (missing or changed in the store)"
        return text + (f" ({self.note})" if self.note else "")


@dataclass(frozen=True)
class Manifest:
    """A publication: its files (member -> size, sha256, md5 and etag from format 2) and the
    output's DVC hash (None in format 1)."""

    format: int
    files: dict[str, dict]
    dvc_md5: str | None


def dvc_hash_of_manifest(manifest: Manifest | None) -> str | None:
    """The DVC hash of a publication, from its files' MD5s (None without them)."""
    if manifest is None or any("md5" not in meta for meta in manifest.files.values()):
        return None
    return dvc_hash({m: meta["md5"] for m, meta in manifest.files.items()})


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
    def _load_hashes(self) -> dict[str, list]:
        if self._hashes is None:
            try:
                self._hashes = json.loads(self._hash_file.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._hashes = {}  # no cache (or a damaged one): hash again
        return self._hashes

    def _digests(self, path: Path) -> tuple[str, str]:
        """(SHA-256, MD5) of a working-copy file, cached by size and mtime."""
        hashes = self._load_hashes()
        st = path.stat()
        key = path.relative_to(self.workspace).as_posix()
        cached = hashes.get(key)
        if cached and len(cached) == 4 and cached[:2] == [st.st_size, st.st_mtime_ns]:
            return cached[2], cached[3]
        sha, md5 = file_digests(path)
        hashes[key] = [st.st_size, st.st_mtime_ns, sha, md5]
        return sha, md5

    def _remember(self, path: Path, sha: str, md5: str) -> None:
        st = path.stat()
        self._load_hashes()[path.relative_to(self.workspace).as_posix()] = [
            st.st_size, st.st_mtime_ns, sha, md5]

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
        return {rel: p for p in sorted(path.rglob("*"))
                if p.is_file() and not is_temporary(rel := p.relative_to(path).as_posix())}

    def local_dvc_hash(self, out: str) -> str | None:
        """DVC's hash of output ``out`` in the working copy (None when it is not there)."""
        if not (self.workspace / out).exists():
            return None
        md5s = {m: self._digests(p)[1] for m, p in self._local_files(out).items()}
        self._save_hashes()
        return dvc_hash(md5s)

    # manifests ------------------------------------------------------------------------------
    def read_manifest(self, out: str) -> Manifest | None:
        url = self.manifest_url(out)
        try:
            raw = json.loads(s3.read_bytes(url))
        except s3.S3NotFound:
            return None
        except ValueError as err:
            raise StorageError(f"{url} is not valid JSON ({err}): re-publish the output with "
                               "`mofi storage push STAGE`") from None
        if raw.get("format") not in READABLE:
            raise StorageError(f"{url}: manifest format {raw.get('format')!r} is not one of "
                               f"{READABLE}: it was written by a newer mofi; upgrade, or "
                               "re-publish the output with this version")
        return Manifest(raw["format"], raw["files"], raw.get("dvc_md5"))

    def _published(self, out: str, producer: str) -> Manifest:
        manifest = self.read_manifest(out)
        if manifest is None:
            raise StorageError(
                f"{self.root}/{out} has not been published (no {self.manifest_url(out)}): run "
                f"stage {producer!r} with the same storage root first (or check storage.root / "
                "MOFI_STORAGE_ROOT)")
        return manifest

    def _listing(self, out: str, one_file: bool) -> dict[str, tuple[int, str]]:
        """member -> (size, ETag) of the objects under the output's prefix: one listing."""
        base = self.url(out)
        if one_file:
            found = [(size, etag) for url, size, etag in s3.list_objects_etag(base)
                     if url == base]
            return {"": found[0]} if found else {}
        prefix = base + "/"
        return {url[len(prefix):]: (size, etag)
                for url, size, etag in s3.list_objects_etag(prefix) if url != prefix}

    # publish --------------------------------------------------------------------------------
    def publish(self, out: str, stage: str = "") -> SyncStats:
        """Upload what the store lacks of output ``out`` (of ``stage``, named in errors), then
        its manifest, then delete the objects the new manifest does not list. A store failure
        is one :class:`StorageError` saying how to re-publish."""
        try:
            return self._publish(out)
        except s3.S3Error as err:
            who = stage or "STAGE"
            raise StorageError(
                f"publishing output {out} of stage {who!r} to {self.url(out)} failed (endpoint "
                f"{s3.endpoint_name()}): {one_line(err)}. The outputs are complete in the "
                f"working copy; re-publish them with `mofi storage push {who}` when the store "
                "is back") from None

    def _publish(self, out: str) -> SyncStats:
        stats = SyncStats()
        files = self._local_files(out)
        old = self.read_manifest(out)
        old_files = old.files if old else {}
        listed = self._listing(out, one_file="" in files)
        new: dict[str, dict] = {}
        todo: list[str] = []
        for member, path in files.items():
            sha, md5 = self._digests(path)
            size = path.stat().st_size
            new[member] = {"size": size, "sha256": sha, "md5": md5}
            before = old_files.get(member, {})
            # a format-1 manifest recorded no ETag: a one-PUT object's ETag is its MD5
            expected = (size, before.get("etag") or md5)
            if before.get("sha256") == sha and listed.get(member) == expected:
                new[member]["etag"] = expected[1]
                stats.unchanged += 1
                continue
            todo.append(member)
            if before.get("sha256") == sha and "etag" in before:
                stats.repaired += 1  # the manifest has it, the store does not (any more)
        self._save_hashes()
        etags = s3.map_parallel(lambda m: s3.upload(files[m], self.url(out, m)), todo)
        for member, etag in zip(todo, etags, strict=True):
            new[member]["etag"] = etag
            stats.transferred += 1
            stats.bytes += new[member]["size"]
        s3.write_bytes(self.manifest_url(out), json.dumps(
            {"format": FORMAT, "output": out, "dvc_md5": dvc_hash(
                {m: meta["md5"] for m, meta in new.items()}), "files": new},
            indent=1, sort_keys=True).encode())
        stale = sorted((set(old_files) | set(listed)) - set(new))
        s3.delete_many(self.url(out, m) for m in stale)
        stats.removed = len(stale)
        return stats

    # fetch ----------------------------------------------------------------------------------
    def fetch(self, dep: str, out: str, producer: str) -> SyncStats:
        """Make ``dep`` (a path inside output ``out`` of stage ``producer``) in the working copy
        equal to its publication, unless dvc.lock says the working copy is the right version
        (see :func:`lock_decision` and the module docstring)."""
        manifest = self._published(out, producer)
        sub = PurePosixPath(dep).relative_to(out).as_posix() if dep != out else ""
        wanted = {m: meta for m, meta in manifest.files.items()
                  if not sub or m == sub or m.startswith(sub + "/")}
        if not wanted:
            raise StorageError(f"{dep} is not in the publication of {out} "
                               f"({self.manifest_url(out)} lists no such file or folder)")
        if self._keep_working_copy(out, producer, manifest):
            return SyncStats(unchanged=len(wanted), note="the working copy, re-published")
        stats = SyncStats()
        todo = []
        for member, meta in sorted(wanted.items()):
            local = self._local(out, member)
            if local.is_file() and local.stat().st_size == meta["size"] \
                    and self._digests(local)[0] == meta["sha256"]:
                stats.unchanged += 1
            else:
                todo.append(member)

        def get(member: str) -> tuple[str, str]:
            return self._download_verified(self.url(out, member), self._local(out, member),
                                           wanted[member], producer)

        try:
            digests = s3.map_parallel(get, todo)
        finally:
            self._save_hashes()
        for member, (sha, md5) in zip(todo, digests, strict=True):
            self._remember(self._local(out, member), sha, md5)
            stats.transferred += 1
            stats.bytes += wanted[member]["size"]
        stats.removed = self._remove_unlisted(out, sub, set(wanted))
        self._save_hashes()
        return stats

    def _keep_working_copy(self, out: str, producer: str, manifest: Manifest) -> bool:
        """Whether to use (and re-publish) the working copy of ``out`` instead of fetching it:
        the decision of :func:`lock_decision`, with its message."""
        locked = locked_hash(self.workspace, producer, out)
        if locked is None or manifest.dvc_md5 == locked:
            return False
        local = self.local_dvc_hash(out)
        in_dvc = bool(os.environ.get("DVC_STAGE"))
        action = lock_decision(locked, manifest.dvc_md5, local, in_dvc)
        published = (f"{short(manifest.dvc_md5)}"
                     + (" (format-1 manifest)" if manifest.format == 1 else ""))
        if action == "republish":
            print(f"storage: {out} here is the version dvc.lock records for stage {producer!r} "
                  f"({short(locked)}), the publication is {published} (DVC restored {out} "
                  f"without running {producer!r}): re-publishing the working copy and using it")
            self.publish(out, producer)
            return True
        if action == "refuse":
            raise StorageError(
                f"{out}: the publication at {self.url(out)} is {published} but dvc.lock "
                f"records {short(locked)} (stage {producer!r}), which is the copy here: run "
                f"`mofi storage push {producer}` to publish the version dvc.lock records, or "
                f"delete {out} here to use the published one (then `dvc commit {producer}` "
                "records it)")
        print(f"storage: {out}: dvc.lock records {short(locked)} for stage {producer!r}, the "
              f"publication is {published}, the copy here is {short(local)}: using the "
              "publication (the storage root is the truth when stages run on separate "
              "machines; dvc.lock may lag)")
        return False

    def _download_verified(self, url: str, dest: Path, meta: dict, producer: str
                           ) -> tuple[str, str]:
        """Download ``url`` to ``dest`` atomically, checked against ``meta``'s SHA-256;
        returns (SHA-256, MD5)."""
        with atomic_path(dest) as tmp:
            try:
                s3.download(url, tmp)
            except s3.S3NotFound as err:
                raise StorageError(
                    f"{url} is listed by its manifest but is not in the store ({one_line(err)})"
                    f": re-publish it with `mofi storage push {producer}` where its outputs are, "
                    f"or re-run stage {producer!r}") from None
            sha, md5 = file_digests(tmp)
            if sha != meta["sha256"]:
                raise StorageError(
                    f"{url} has SHA-256 {sha[:12]}..., its manifest says "
                    f"{meta['sha256'][:12]}...: the output is being republished (retry when "
                    "its stage has finished) or the object was changed outside mofi (re-publish "
                    f"it with `mofi storage push {producer}`)")
        return sha, md5

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
        return [self.url(out, m) for m in sorted(manifest.files)
                if (not sub or m.startswith(sub + "/")) and m.endswith(suffix)]


def storage_root(configured: str) -> str:
    """The storage root in force: ``MOFI_STORAGE_ROOT`` wins over params ``storage.root``."""
    return os.environ.get("MOFI_STORAGE_ROOT", "") or configured


@dataclass
class StageStorage:
    """The storage of one stage: its inputs and outputs from the stage table."""

    storage: Storage
    io: StageIO
    streamed: tuple[str, ...] = ()  # inputs the stage reads from S3 itself

    @classmethod
    def open(cls, root: str, workspace: Path, stage: str, lookup: Callable[[str], Any],
             streamed: tuple[str, ...] = ()) -> StageStorage:
        """``lookup``: a params value by dotted key (:meth:`Params.value`)."""
        return cls(Storage(root, workspace), stage_io(stage, lookup), streamed)

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
        """Publish every output of the stage; a store failure names the stage and output."""
        return {out: self.storage.publish(out, self.io.owner(out)) for out in self.io.outputs}
