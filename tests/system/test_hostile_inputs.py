"""The hostile-input matrix: every stage command against bad params, bad files and missing
models, in a copy of the end-to-end project after every stage has run once.

Each case breaks one thing, runs ``mofi <stage>`` and asserts what a user must see: a non-zero
exit, a last line naming the key or file and the problem, no traceback, and every earlier
output (data, models, metrics, reports, plots) byte-identical to before the run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from typer.testing import CliRunner

from mofi_core.cli import app
from mofi_core.config.load import apply_overrides, read_params_file
from mofi_core.stages import BY_NAME, STAGES
from tests.conftest import ROOT

OUTPUT_DIRS = ("data", "models", "metrics", "reports", "plots")
KB_SOURCE = "data/corpus/kb.parquet"  # what the kb stage reads (kb.source demo)
KB = "data/kb"  # what it writes, and every later stage opens (kb.arrow and index/)


# minutes of stage runs: the system tier (CI runs it after make test, which stays < 20 min)


@pytest.fixture(scope="module")
def built(first_run) -> Path:
    """The end-to-end project's outputs, params and pipeline right after its first run (all
    stages ran through the Prefect flow over DVC), whatever other tests of this session did to
    the shared project since: what each case copies and starts from."""
    return first_run.copy


def _snapshot(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for d in OUTPUT_DIRS for p in sorted((root / d).rglob("*")) if p.is_file()}


# --- mutations ----------------------------------------------------------------------------------

Mutation = Callable[[Path], None]


def params(**dotted) -> Mutation:
    """Set dotted keys in params.yaml (``__`` for ``.``), unvalidated: the stage must refuse."""
    def apply(root: Path) -> None:
        path = root / "params.yaml"
        raw = apply_overrides(read_params_file(path),
                              {k.replace("__", "."): v for k, v in dotted.items()})
        path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return apply


def append(rel: str, content: str) -> Mutation:
    def apply(root: Path) -> None:
        with (root / rel).open("a", encoding="utf-8") as fh:
            fh.write(content)
    return apply


def text(rel: str, content: str | bytes) -> Mutation:
    def apply(root: Path) -> None:
        path = root / rel
        if path.is_dir():
            shutil.rmtree(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return apply


def remove(rel: str) -> Mutation:
    def apply(root: Path) -> None:
        path = root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return apply


def table(rel: str, change: Callable[[pa.Table], pa.Table]) -> Mutation:
    def apply(root: Path) -> None:
        path = root / rel
        pq.write_table(change(pq.read_table(path)), path)
    return apply


def both(*mutations: Mutation) -> Mutation:
    def apply(root: Path) -> None:
        for m in mutations:
            m(root)
    return apply


def json_edit(rel: str, change: Callable[[dict], dict]) -> Mutation:
    def apply(root: Path) -> None:
        path = root / rel
        path.write_text(json.dumps(change(json.loads(path.read_text()))), encoding="utf-8")
    return apply


def rebuilt_kb(change: Callable[[list[dict]], list[dict]]) -> Mutation:
    """The KB folder written again, by the kb stage's own writer, from changed rows: a KB
    that is whole and consistent, only not this corpus's."""
    def apply(root: Path) -> None:
        from mofi_core.config.kb import KBConfig
        from mofi_core.kb.importer import materialise

        src = root / "other_kb.parquet"
        pq.write_table(_kb_rows(change)(pq.read_table(root / KB / "kb.parquet")), src)
        shutil.rmtree(root / KB)
        materialise(KBConfig(), src, root / KB,
                    read_params_file(root / "params.yaml")["ner"]["spacy_model"])
        src.unlink()
    return apply


def _kb_rows(change: Callable[[list[dict]], list[dict]]) -> Callable[[pa.Table], pa.Table]:
    return lambda t: pa.Table.from_pylist(change(t.to_pylist()), schema=t.schema)


def _dupe(rows):
    return [*rows, rows[0]]


def _null_name(rows):
    return [{**rows[0], "name": None}, *rows[1:]]


def _unrelated(rows):
    return [{**r, "name": f"Zzyzx Qworp {i}", "aliases": [], "description": ""}
            for i, r in enumerate(rows)]


def _failed(report: dict) -> dict:
    return {**report, "summary": {**report["summary"], "success": False, "failed": 3}}


def _other_data(report: dict) -> dict:
    return {**report, "checked": {**report["checked"], "shards": []}}


@dataclass(frozen=True)
class Case:
    stage: str
    name: str
    mutate: Mutation
    expect: str  # regex the last line must match: the key or file, and the problem


GARBAGE = b"\x00\x17not parquet at all\xff" * 40
CSV = b"entity_id,name,aliases,description,type\nQ1,Mount Fuji,,a volcano,place\n"

PARAMS_CASES = [
    Case(s, n, m, e) for s, n, m, e in [
        ("corpus", "wrong type", params(corpus__num_entities="many"),
         r"corpus\.num_entities: Input should be a valid integer"),
        ("corpus", "out of range", params(corpus__num_entities=1),
         r"corpus\.num_entities: Input should be greater than or equal to 2"),
        ("corpus", "non-finite", params(corpus__noise__name=float("inf")),
         r"corpus\.noise\.name: Input should be a finite number"),
        ("corpus", "unknown key", params(corpus__seeds=3), r"corpus\.seeds: unknown key"),
        ("ingest", "out of range", params(ingest__max_reject_fraction=2),
         r"ingest\.max_reject_fraction: Input should be less than or equal to 1"),
        ("ingest", "non-finite", params(ingest__max_reject_fraction=float("nan")),
         r"ingest\.max_reject_fraction: Input should be a finite number"),
        ("ingest", "inconsistent", params(ingest__min_side=5000),
         r"ingest\.min_side \(5000\) > ingest\.max_side \(4096\)"),
        ("ingest", "runtime key in its section", params(ingest__workers=1),
         r"ingest\.workers: a runtime key .* move it to runtime\.ingest\.workers"),
        ("decontam", "out of range", params(decontam__max_distance=65),
         r"decontam\.max_distance: Input should be less than or equal to 64"),
        ("decontam", "unknown method", params(decontam__method="md5"),
         r"decontam\.method: Input should be 'phash' or 'none'"),
        ("decontam", "bad crop", params(decontam__crops=[1.0, 0]),
         r"decontam\.crops: Value error, every crop is a side fraction in \(0, 1\]"),
        ("ner", "wrong type", params(ner__gazetteer="perhaps"),
         r"ner\.gazetteer: Input should be a valid boolean"),
        ("ner", "out of range", params(ner__batch_size=0),
         r"ner\.batch_size: Input should be greater than or equal to 1"),
        ("ner", "unknown runtime key", params(runtime__ner__threads=2),
         r"runtime\.ner\.threads: unknown runtime key"),
        ("baseline", "non-finite", params(baseline__lr=float("inf")),
         r"baseline\.lr: Input should be a finite number"),
        ("baseline", "wrong recipe", params(baseline__recipe="supervised"),
         r"baseline\.recipe: Input should be 'clip'"),
        ("baseline", "inconsistent", params(baseline__warmup_steps=500),
         r"warmup_steps \(500\) must be < steps"),
        ("score", "bad prompt", params(score__prompts=["a photo"]),
         r"score\.prompts: .*must contain '\{name\}'"),
        ("score", "out of range", params(score__null_samples=-1),
         r"score\.null_samples: Input should be greater than or equal to 0"),
        ("kb", "unknown source", params(kb__source="dbpedia"),
         r"kb\.source: Input should be 'demo', 'parquet' or 'wikidata'"),
        ("kb", "own KB with the demo's path", params(kb__source="parquet"),
         r"kb\.source parquet needs kb\.path"),
        ("corpus", "no world, demo KB", params(corpus__source="none"),
         r"corpus\.source none writes no demo KB"),
        ("build", "out of range", params(build__threshold=2),
         r"build\.threshold: Input should be less than or equal to 1"),
        ("build", "unknown rule", params(build__rules=["threshold", "vibes"]),
         r"build\.rules\.1: Input should be 'threshold', 'top_k', 'null_quantile' or 'fdr'"),
        ("validate", "out of range", params(validate__max_entity_share=0),
         r"validate\.max_entity_share: Input should be greater than 0"),
        ("validate", "result key under runtime", params(runtime__validate__max_imbalance=3),
         r"runtime\.validate\.max_imbalance: a result key: set it under validate"),
        ("train", "out of range", params(train__lr=-1),
         r"train\.lr: Input should be greater than 0"),
        ("train", "wrong recipe", params(train__recipes=["supervised", "clip"]),
         r"train\.recipes\.1: Input should be 'supervised', 'contrastive' or 'multitask'"),
        ("train", "the old single recipe key", params(train__recipe="supervised"),
         r"train\.recipe: the candidates are a list now, train\.recipes: \[supervised\]"),
        ("train", "no loss", params(train__loss_weights=[0, 0]),
         r"loss_weights .*both >= 0 and not both 0"),
        ("evaluate", "empty grid", params(evaluate__probe_c=[]),
         r"evaluate\.probe_c: .*at least 1 item"),
        ("evaluate", "missing folder", params(evaluate__gpr_dir="/nonexistent/gpr1200"),
         r"/nonexistent/gpr1200 does not exist; set evaluate\.gpr_dir"),
        ("report", "wrong type", params(report__require_paper_direction="perhaps"),
         r"report\.require_paper_direction: Input should be a valid boolean"),
        ("register", "out of range", params(register__margin=-1),
         r"register\.margin: Input should be greater than or equal to 0"),
        ("register", "unknown metric", params(register__metric="accuracy"),
         r"register\.metric 'accuracy' is not in .*evaluate\.json"),
        ("register", "unknown section", append("params.yaml", "regsiter:\n  x: 1\n"),
         r"regsiter: unknown key"),
    ]
]

FILE_CASES = [
    Case(s, n, m, e) for s, n, m, e in [
        ("corpus", "params file empty", text("params.yaml", ""), r"params\.yaml is empty"),
        ("ingest", "params file not YAML", text("params.yaml", "ingest: [1,\n"),
         r"params\.yaml: line \d+, column \d+ not valid YAML"),
        ("ingest", "input folder missing", params(ingest__input="data/corpus/shardz"),
         r"ingest\.input: .*shardz does not exist"),
        ("ingest", "input list missing", params(ingest__input="@data/shards.txt"),
         r"shards\.txt"),
        ("ingest", "input folder empty", params(ingest__input="data/empty"),
         r"ingest\.input: .*data/empty does not exist"),
        ("ingest", "only missing shards", params(ingest__input="data/corpus/nope-{0..2}.tar"),
         r"ingest\.input .*none of its 3 shard\(s\) exists"),
        ("kb", "KB missing", remove(KB_SOURCE),
         r"kb\.source demo reads .*data/corpus/kb\.parquet, which the corpus stage writes: run "
         r"it first"),
        ("kb", "KB garbage", text(KB_SOURCE, GARBAGE),
         r"data/corpus/kb\.parquet: not a readable parquet file"),
        ("kb", "KB is CSV", text(KB_SOURCE, CSV), r"kb\.parquet: not a readable parquet file"),
        ("kb", "KB column missing", table(KB_SOURCE, lambda t: t.drop_columns(["name"])),
         r"kb\.parquet: missing columns \['name'\]"),
        ("kb", "KB column mistyped",
         table(KB_SOURCE,
               lambda t: t.set_column(0, "entity_id", pa.array(range(len(t)), pa.int64()))),
         r"kb\.parquet: column 'entity_id' is int64, expected string"),
        ("kb", "KB duplicate ids", table(KB_SOURCE, _kb_rows(_dupe)),
         r"kb\.parquet: column 'entity_id' repeats 1 ids \(first: '\w+'"),
        ("kb", "KB null name", table(KB_SOURCE, _kb_rows(_null_name)),
         r"kb\.parquet: column 'name' is empty or null in 1 rows"),
        ("kb", "KB empty", table(KB_SOURCE, lambda t: t.slice(0, 0)),
         r"kb\.parquet holds no entities"),
        ("kb", "Wikidata dump missing",
         params(kb__source="wikidata", kb__path="data/latest-all.json.bz2"),
         r"kb\.path: the Wikidata dump .*latest-all\.json\.bz2 does not exist"),
        ("kb", "Wikidata dump not JSON",
         both(text("data/dump.json", "[\n<rdf:RDF>\n]\n"),
              params(kb__source="wikidata", kb__path="data/dump.json")), r"not JSON"),
        ("ner", "KB missing", remove(KB),
         r"ner needs data/kb, which is missing: run stage 'kb' first"),
        ("ner", "KB of another corpus", rebuilt_kb(_unrelated),
         r"no mention in \d+ alt-texts links to an entity of the KB .*data/kb"),
        ("ner", "KB index of another KB",
         lambda root: (root / KB / "kb.arrow").write_bytes(
             (root / KB / "index" / "form_text.arrow").read_bytes()),
         r"data/kb/index was built from another KB than .*kb\.arrow.*dvc repro -f kb"),
        ("ner", "spaCy pipeline missing", params(ner__spacy_model="xx_nope_sm"),
         r"spaCy pipeline 'xx_nope_sm' \(ner\.spacy_model\) is not installed"),
        ("ner", "ingest parts missing", remove("data/ingest/parts"),
         r"ner needs data/ingest/parts, which is missing: run stage 'ingest' first"),
        ("baseline", "ingest shards missing", remove("data/ingest/shards"),
         r"baseline needs data/ingest/shards, which is missing: run stage 'ingest'"),
        ("score", "KB garbage", text(f"{KB}/kb.arrow", GARBAGE),
         r"data/kb/kb\.arrow: not a readable part of the knowledge base .*dvc repro -f kb"),
        ("score", "KB index truncated", text(f"{KB}/index/form_hash.npy", "\x93NUMPY"),
         r"form_hash\.npy: not a readable part of the knowledge base"),
        ("score", "scorer missing", remove("models/baseline"),
         r"score needs models/baseline, which is missing: run stage 'baseline'"),
        ("score", "scorer metadata garbage", text("models/baseline/model.json", "{nope"),
         r"score\.model: baseline .*model\.json"),
        ("score", "scorer weights missing", remove("models/baseline/model.safetensors"),
         r"model\.safetensors is missing"),
        ("score", "open_clip without weights", params(score__model="ViT-B-16"),
         r"score\.model='ViT-B-16' without score\.pretrained"),
        ("build", "score parts missing", remove("data/score/parts"),
         r"build needs data/score/parts, which is missing: run stage 'score'"),
        ("build", "score part garbage", text("data/score/parts/00000.scores.parquet", GARBAGE),
         r"00000\.scores\.parquet: not a readable parquet file"),
        ("build", "ner parts missing", remove("data/ner/parts"),
         r"build needs data/ner/parts, which is missing: run stage 'ner'"),
        ("build", "link scores missing",
         table("data/ner/parts/00000.parquet", lambda t: t.drop_columns(["link_score"])),
         r"00000\.parquet: missing columns \['link_score'\]"),
        ("validate", "i2e missing", remove("data/i2e"),
         r"validate needs data/i2e, which is missing: run stage 'build'"),
        ("validate", "mentions wrong schema",
         table("data/ner/mentions.parquet", lambda t: t.drop_columns(["entity_id"])),
         r"mentions\.parquet: missing columns \['entity_id'\]"),
        ("train", "never validated", remove("reports/validate.json"),
         r"train needs reports/validate\.json, which is missing: run stage 'validate'"),
        ("train", "validation failed", json_edit("reports/validate.json", _failed),
         r"the last validation failed \(3 expectations.*validate\.json"),
        ("train", "validated other data", json_edit("reports/validate.json", _other_data),
         r"validate\.json validated other data than .*data/i2e holds now"),
        ("train", "vocabulary missing", remove("data/i2e/vocab.json"),
         r"validate\.json validated other data|vocab\.json is missing"),
        ("evaluate", "models missing", remove("models"),
         r"evaluate needs models, which is missing: run stage 'baseline'"),
        ("evaluate", "a candidate missing", remove("models/multitask"),
         r"candidate multitask \(.*models/multitask\) \(stage train@multitask\): .*model\.json"),
        ("evaluate", "model metadata garbage", text("models/multitask/model.json", "[]"),
         r"candidate multitask .*model\.json"),
        ("evaluate", "benchmark missing", remove("data/benchmark"),
         r"evaluate needs data/benchmark, which is missing: run stage 'corpus'"),
        ("report", "truth missing", remove("data/truth"),
         r"report needs data/truth, which is missing: run stage 'corpus'"),
        ("register", "evaluation not JSON", text("metrics/evaluate.json", "{"),
         r"metrics/evaluate\.json is not JSON"),
        ("register", "model weights missing", remove("models/supervised/model.safetensors"),
         r"model\.safetensors is missing"),
    ]
]

# an output that cannot be written: a file stands where its folder goes (root is not stopped by
# permission bits, so this is how an unwritable output is made here)
def _blocker(folder: str) -> Mutation:
    def apply(root: Path) -> None:
        path = root / folder
        if path.is_dir():
            shutil.rmtree(path)
        path.write_bytes(b"in the way\n")
    return apply


def _blocked_folder(spec) -> str:
    """The stage's first folder output, else the folder of its first output file; for a foreach
    stage (``train``), that of its first instance in the tiny world (``train@supervised``)."""
    if spec.foreach:
        spec = spec.instance("supervised")
    folders = [w for w in spec.writes() if not Path(w).suffix]
    return folders[0] if folders else str(Path(spec.writes()[0]).parent)


UNWRITABLE = [Case(spec.name, "output not writable", _blocker(_blocked_folder(spec)),
                   rf"{spec.name} cannot write .*is a file, not a folder")
              for spec in STAGES]

CASES = PARAMS_CASES + FILE_CASES + UNWRITABLE


def test_the_matrix_covers_every_stage():
    assert {c.stage for c in PARAMS_CASES} == set(BY_NAME)
    assert {c.stage for c in UNWRITABLE} == set(BY_NAME)
    assert len(CASES) >= 70


@pytest.mark.parametrize("case", CASES, ids=[f"{c.stage}-{c.name}" for c in CASES])
def test_bad_input_is_one_clear_line_and_destroys_nothing(built, case, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(built, root, symlinks=True)
    case.mutate(root)
    before = _snapshot(root)
    result = CliRunner().invoke(app, [case.stage, "--params", str(root / "params.yaml"),
                                      "--root", str(root)])
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert result.exit_code != 0, result.output
    # the error block comes last: one line, or a header and one line per bad key
    assert lines and any(ln.startswith("error: ") for ln in lines[-3:]), result.output
    assert re.search(case.expect, lines[-1]), lines[-1]
    assert "Traceback" not in result.output
    assert _snapshot(root) == before


def _run(root: Path, *args: str):
    return CliRunner().invoke(app, [*args, "--params", str(root / "params.yaml"),
                                    "--root", str(root)])


def test_a_verdict_keeps_its_evidence_and_the_gate_then_holds(built, tmp_path):
    """A failed validation is a complete result, not a crash: its report replaces the last one
    (restoring an older, passing report would open the gate), and train then refuses."""
    root = tmp_path / "p"
    shutil.copytree(built, root, symlinks=True)
    params(validate__min_fraction_of_corpus=1.0)(root)  # the I2E set never holds every image
    failed = _run(root, "validate")
    assert failed.exit_code != 0 and "data validation failed" in failed.output
    report = json.loads((root / "reports" / "validate.json").read_text())
    assert report["summary"]["success"] is False
    assert json.loads((root / "metrics" / "validate.json").read_text())["validate"]["failed"] >= 1
    refused = _run(root, "train")
    assert refused.exit_code != 0
    assert re.search(r"the last validation failed .*validate\.json", refused.output)
    # a stage command may also override a param for one run, validated like the file
    assert "-S" in _run(root, "train", "--help").output
    bad = _run(root, "train", "-S", "train.lr=-1")
    assert re.search(r"train\.lr: Input should be greater than 0", bad.output)


def test_the_reject_limit_keeps_the_complete_ingest_and_names_its_table(built, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(built, root, symlinks=True)
    params(ingest__max_reject_fraction=0.0)(root)  # the demo corpus has blank alt-texts
    result = _run(root, "ingest")
    assert result.exit_code != 0
    last = [ln for ln in result.output.splitlines() if ln.strip()][-1]
    assert re.search(r"RejectRateError: ingest rejected .*data/ingest/rejects\.parquet", last)
    named = Path(re.search(r"reasons are in (\S+rejects\.parquet)", last).group(1))
    assert pq.read_table(named).num_rows > 0
    metrics = json.loads((root / "metrics" / "ingest.json").read_text())["ingest"]
    assert metrics["samples_rejected"] > 0


def test_debug_shows_the_traceback(built, tmp_path):
    root = tmp_path / "p"
    shutil.copytree(built, root, symlinks=True)
    remove("models/multitask/model.safetensors")(root)
    quiet, loud = _run(root, "register"), CliRunner().invoke(
        app, ["--debug", "register", "--params", str(root / "params.yaml"), "--root", str(root)])
    assert "Traceback" not in quiet.output and "Traceback" in loud.output
    os.environ.pop("MOFI_DEBUG", None)


def test_the_readme_states_the_matrix_size():
    """docs/robustness.md (where the error catalogue lives) states the matrix's size."""
    text = (ROOT / "docs" / "robustness.md").read_text(encoding="utf-8")
    stated = re.search(r"test_hostile_inputs\.py` runs this as a matrix over every stage of a"
                       r"\s+project\s+where\s+all\s+stages\s+have\s+run:\s+(\d+)\s+cases", text)
    assert stated and int(stated.group(1)) == len(CASES)
