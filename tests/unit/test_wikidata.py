"""`mofi import-wikidata` on a small dump written here in Wikidata's real JSON shape."""

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from mofi_core.cli import app
from mofi_core.kb.store import KnowledgeBase
from tests.wikidata_dump import entity as _entity
from tests.wikidata_dump import write_dump as _write_dump


@pytest.fixture()
def dump(tmp_path):
    path = tmp_path / "latest-all.json.bz2"
    _write_dump(path, [
        _entity("Q243", "Eiffel Tower", ["Q570116", "Q1440476"], aliases=["Tour Eiffel"],
                desc="tower in Paris"),
        _entity("Q42", "Douglas Adams", ["Q5"], desc="English writer"),
        _entity("Q1", "Obscure thing", ["Q5"], sitelinks=0),
        _entity("Q2", "", ["Q5"]),
        _entity("Q3", "Some galaxy", ["Q318"]),
        _entity("P31", "instance of", [], kind="property"),
    ])
    return path


def test_dump_streams_into_the_kb_format_with_counted_skips(dump, tmp_path):
    out = tmp_path / "kb.parquet"
    result = CliRunner().invoke(app, ["import-wikidata", str(dump), "--out", str(out),
                                      "--min-sitelinks", "1"])
    assert result.exit_code == 0, result.output
    rows = pq.read_table(out).to_pylist()
    assert rows == [
        {"entity_id": "Q243", "name": "Eiffel Tower", "aliases": ["Tour Eiffel"],
         "description": "tower in Paris", "type": "landmark", "popularity": 3},
        {"entity_id": "Q42", "name": "Douglas Adams", "aliases": [],
         "description": "English writer", "type": "person", "popularity": 3}]  # sitelinks
    assert "too few sitelinks" in result.output and "P31 not in type map" in result.output
    assert KnowledgeBase.load(out).candidates("tour eiffel") == ("Q243",)


def test_custom_type_map_and_language(dump, tmp_path):
    types = tmp_path / "types.yaml"
    types.write_text("Q318: galaxy\n")
    out = tmp_path / "kb.parquet"
    result = CliRunner().invoke(app, ["import-wikidata", str(dump), "--out", str(out),
                                      "--type-map", str(types), "--language", "de"])
    assert result.exit_code == 0, result.output
    assert pq.read_table(out).to_pylist()[0]["name"] == "Some galaxy (de)"


def test_not_a_json_dump_is_a_clear_error(tmp_path):
    bad = tmp_path / "dump.json"
    bad.write_text("[\n<rdf:RDF>\n]\n")
    result = CliRunner().invoke(app, ["import-wikidata", str(bad), "--out",
                                      str(tmp_path / "kb.parquet")])
    assert result.exit_code == 1 and "not JSON" in result.output
    assert not (tmp_path / "kb.parquet").exists()
