"""The validate stage's Data Docs read offline and name the pipeline run they validated."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from mofi_core.validate.suites import Inputs, ValidationFailed, validate
from tests.html_scan import Page, remote, remote_loads

RUN = "mofi-flow-crimson-fox"


@pytest.fixture(scope="module")
def docs(truth_i2e, tmp_path_factory):
    """The validate stage's Data Docs and report, once under a pipeline run's name and once
    without one."""
    layout, params, i2e = truth_i2e
    inputs = Inputs(i2e=i2e, kb=layout.kb, manifest=i2e.parent / "ingest" / "manifest.parquet")
    out = {}
    for label, name in (("named", RUN), ("default", None)):
        root = tmp_path_factory.mktemp(f"docs_{label}")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("GX_ANALYTICS_ENABLED", "false")
            if name:
                mp.setenv("MOFI_RUN_NAME", name)
            else:
                mp.delenv("MOFI_RUN_NAME", raising=False)
            try:
                validate(inputs, root / "validate.json", params.validate_, root / "data_docs")
            except ValidationFailed:  # the docs are written either way; they are under test
                pass
        out[label] = root
    return out


def _result_pages(site: Path) -> list[Path]:
    return sorted((site / "validations").rglob("*.html"))


def test_no_page_loads_anything_from_the_network(docs):
    for root in docs.values():
        site = root / "data_docs"
        assert (site / "index.html").is_file() and _result_pages(site)
        assert remote_loads(site) == []
        for page in site.rglob("*.html"):
            assert Page(page.read_text(encoding="utf-8")).scripts == 0, page


def test_the_index_lists_each_validation_result_with_a_working_relative_link(docs):
    site = docs["named"] / "data_docs"
    index = Page((site / "index.html").read_text(encoding="utf-8"))
    local = [h for h in index.links if not remote(h) and not h.startswith("#")]
    assert all(not h.startswith("/") for h in local), local
    targets = {(site / unquote(urlsplit(h).path)).resolve() for h in local}
    assert all(t.is_file() for t in targets), [t for t in targets if not t.is_file()]
    pages = _result_pages(site)
    assert len(pages) == 5  # manifest, images, labels, entities, distribution
    assert {p.resolve() for p in pages} <= targets
    suites = sorted((site / "expectations").rglob("*.html"))
    assert {p.resolve() for p in suites} <= targets
    # the listing is plain HTML: status, run name and counts are table cells
    for batch in ("manifest", "images", "labels", "entities", "distribution"):
        assert f"{batch} result" in index.cells and batch in index.cells
    assert RUN in index.cells
    assert any(c in ("passed", "passed with warnings", "failed") for c in index.cells)


def test_result_pages_show_the_run_name_from_the_environment(docs):
    for page in _result_pages(docs["named"] / "data_docs"):
        cells = Page(page.read_text(encoding="utf-8")).cells
        assert cells[cells.index("Run Name") + 1] == RUN, page
        assert RUN in page.relative_to(docs["named"]).parts


def test_without_a_run_name_the_default_is_a_timestamped_name_not_none(docs):
    site = docs["default"] / "data_docs"
    for page in _result_pages(site):
        cells = Page(page.read_text(encoding="utf-8")).cells
        assert re.fullmatch(r"validate-\d{8}T\d{6}Z", cells[cells.index("Run Name") + 1]), page
    for file in site.rglob("*"):
        assert "__none__" not in file.as_posix()
        if file.suffix == ".html":
            assert "__none__" not in file.read_text(encoding="utf-8"), file


def test_the_run_name_does_not_reach_the_dvc_tracked_report(docs):
    named = (docs["named"] / "validate.json").read_bytes()
    assert named == (docs["default"] / "validate.json").read_bytes()
    assert RUN.encode() not in named
