"""Sources as params: the kb stage (demo, parquet/JSON Lines, Wikidata dump), corpus.source none,
and the params that must agree between them."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mofi_core.config.load import apply_overrides, parse_params
from mofi_core.config.section import ParamsError
from mofi_core.io.layout import Layout
from mofi_core.kb.importer import check, materialise, run
from mofi_core.kb.store import KnowledgeBase
from mofi_core.stages import BY_NAME
from tests.wikidata_dump import entity, write_dump

ROWS = [{"entity_id": "E1", "name": "Eiffel Tower", "aliases": ["Tour Eiffel"],
         "description": "tower in Paris", "type": "landmark"},
        {"entity_id": "E2", "name": "Douglas Adams", "aliases": [], "description": "",
         "type": "person"}]


def _params(**over):
    return parse_params(apply_overrides({}, over))


class _Ctx:  # what the stage runner hands a stage: the layout and the params (and more)
    def __init__(self, root):
        self.layout = Layout(root)
        self.params = _params()


def _rows(rows, popularity=0):
    """The rows as the project's KB schema holds them (popularity 0 when a source has none)."""
    return [{**r, "popularity": popularity} for r in rows]


def test_a_parquet_kb_of_the_users_is_checked_and_written_in_the_projects_schema(tmp_path):
    src = tmp_path / "my_kb.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), src)  # the user's own types (large strings...)
    cfg = _params(**{"kb.source": "parquet", "kb.path": "my_kb.parquet"}).kb
    metrics = run(cfg, _Ctx(tmp_path))
    lay = Layout(tmp_path)
    assert pq.read_table(lay.kb_table).to_pylist() == _rows(ROWS)
    assert metrics["entities"] == 2 and metrics["with_description"] == 1
    assert metrics["type.landmark"] == 1 and metrics["type.person"] == 1
    assert metrics["surface_forms"] == 3 and metrics["phrases"] == 3
    assert json.loads((lay.kb / "source.json").read_text()) == {
        "source": "parquet", "path": "my_kb.parquet"}
    kb = KnowledgeBase.open(lay.kb)  # what every later stage opens: the table and its indexes
    assert kb.candidates("tour eiffel") == ("E1",) and kb.get("E2").name == "Douglas Adams"


def test_a_json_lines_kb_gives_the_same_table(tmp_path):
    src = tmp_path / "kb.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    materialise(_params(**{"kb.source": "parquet", "kb.path": str(src)}).kb, src,
                tmp_path / "out")
    assert pq.read_table(tmp_path / "out" / "kb.parquet").to_pylist() == _rows(ROWS)


@pytest.mark.parametrize("bad, message", [
    (lambda rows: [{k: v for k, v in r.items() if k != "aliases"} for r in rows],
     r"my_kb\.parquet: missing columns \['aliases'\]"),
    (lambda rows: [{**r, "name": ""} if r["entity_id"] == "E2" else r for r in rows],
     r"my_kb\.parquet: column 'name' is empty or null in 1 rows"),
    (lambda rows: [{**r, "name": None} if r["entity_id"] == "E2" else r for r in rows],
     r"my_kb\.parquet: column 'name' is empty or null in 1 rows"),
    (lambda rows: [{**r, "entity_id": None} if r["entity_id"] == "E2" else r for r in rows],
     r"my_kb\.parquet: column 'entity_id' is empty or null in 1 rows"),
    (lambda rows: [*rows, rows[0]], r"my_kb\.parquet: column 'entity_id' repeats 1 ids"),
    (lambda rows: [{**r, "aliases": "Tour Eiffel"} for r in rows],
     r"my_kb\.parquet: column 'aliases' is string, expected list<item: string>"),
])
def test_a_bad_kb_is_one_line_naming_the_file_and_the_column(tmp_path, bad, message):
    pq.write_table(pa.Table.from_pylist(bad(ROWS)), tmp_path / "my_kb.parquet")
    cfg = _params(**{"kb.source": "parquet", "kb.path": "my_kb.parquet"}).kb
    with pytest.raises(ValueError, match=message) as err:
        run(cfg, _Ctx(tmp_path))
    assert "\n" not in str(err.value)
    assert not Layout(tmp_path).kb.exists()  # nothing half-written


def test_a_wikidata_dump_is_imported_by_the_stage_with_its_filters(tmp_path):
    write_dump(tmp_path / "dump.json.bz2", [
        entity("Q243", "Eiffel Tower", ["Q570116"], aliases=["Tour Eiffel"], desc="tower"),
        entity("Q42", "Douglas Adams", ["Q5"], sitelinks=5),
        entity("Q1", "Obscure person", ["Q5"], sitelinks=1),
        entity("Q3", "Some galaxy", ["Q318"])])
    cfg = _params(**{"kb.source": "wikidata", "kb.path": "dump.json.bz2",
                     "kb.min_sitelinks": 2, "kb.type_map": {"Q5": "person", "Q318": "galaxy"}}
                  ).kb
    metrics = run(cfg, _Ctx(tmp_path))
    rows = pq.read_table(Layout(tmp_path).kb_table).to_pylist()
    # Q243's P31 is not in this type map; Q1 has too few sitelinks
    assert [r["entity_id"] for r in rows] == ["Q42", "Q3"]
    assert rows[1]["type"] == "galaxy"
    assert [r["popularity"] for r in rows] == [5, 3]  # sitelinks (3: the helper's default)
    assert metrics["entities"] == 2 and metrics["dump_lines"] >= 4
    assert metrics["skipped.too_few_sitelinks"] == 1
    assert metrics["skipped.P31_not_in_type_map"] == 1


def test_a_dump_that_gives_no_entity_says_why(tmp_path):
    write_dump(tmp_path / "dump.json.bz2", [entity("Q3", "Some galaxy", ["Q318"])])
    cfg = _params(**{"kb.source": "wikidata", "kb.path": "dump.json.bz2"}).kb
    with pytest.raises(ValueError, match=r"dump\.json\.bz2 gave no entity .*P31 not in type "
                                         r"map: 1.*kb\.type_map"):
        run(cfg, _Ctx(tmp_path))


def test_a_missing_source_file_is_named_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"kb\.path: the Wikidata dump .*nope\.json\.bz2 "
                                                r"does not exist"):
        check(_params(**{"kb.source": "wikidata", "kb.path": "nope.json.bz2"}).kb,
              _Ctx(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"the corpus stage writes: run it first"):
        check(_params().kb, _Ctx(tmp_path))


@pytest.mark.parametrize("over, message", [
    ({"kb.source": "demo", "kb.path": "mine.parquet"}, "kb.source demo reads the corpus stage"),
    ({"kb.source": "parquet"}, "kb.source parquet needs kb.path"),
    ({"corpus.source": "none", "ingest.input": "shards/"}, "corpus.source none writes no demo KB"),
    ({"corpus.source": "none", "kb.source": "parquet", "kb.path": "kb.parquet"},
     "corpus.source none writes no demo shards: set ingest.input"),
])
def test_sources_that_cannot_work_together_are_params_errors(over, message):
    with pytest.raises(ParamsError, match=message):
        _params(**over)


def test_corpus_source_none_writes_no_world_and_the_report_scores_nothing(tmp_path):
    from mofi_core.demo.world import run as corpus_run
    from mofi_core.report import demo_truth

    params = _params(**{"corpus.source": "none", "kb.source": "parquet",
                        "kb.path": "kb.parquet", "ingest.input": "shards/"})
    lay = Layout(tmp_path)
    assert corpus_run(params.corpus, _Ctx(tmp_path)) == {"samples": 0, "entities": 0}
    for folder in (lay.corpus, lay.truth, lay.benchmark):
        assert json.loads((folder / "world.json").read_text())["source"] == "none"
        assert not list(folder.rglob("*.parquet")) and not list(folder.rglob("*.tar"))
    truth, why = demo_truth(lay, "shards/")
    assert truth is None and "corpus.source is none" in why


def test_the_kb_stage_depends_on_the_file_params_name():
    spec = BY_NAME["kb"]
    assert spec.param_inputs == ("kb.path",) and spec.outs[0].path == "data/kb"
    assert all("data/corpus/kb.parquet" not in s.inputs for s in BY_NAME.values())
