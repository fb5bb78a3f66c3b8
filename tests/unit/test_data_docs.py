"""Offline Data Docs rewriting and the GX run name, without running great-expectations."""

from datetime import UTC, datetime

from mofi_core.validate.data_docs import ResultRow, is_remote, make_offline
from mofi_core.validate.suites import run_name
from tests.html_scan import Page, remote_loads

PAGE = """<!DOCTYPE html><html><head>
<link rel="stylesheet" href="https://cdn.example.org/bootstrap.min.css"/>
<link rel="stylesheet" href="//cdn.example.org/x.css">
<link rel="shortcut icon" href="../../static/images/favicon.ico"/>
<script src="https://code.example.org/jquery.js"></script>
<script>$(function () { $('#t').bootstrapTable({data: []}); });</script>
<style>@import url("https://fonts.example.org/f.css");
.brand a { background: url('https://assets.example.org/logo-long.png') no-repeat; }
.x { background: url('https://assets.example.org/gone.png'); }
.y { background: url("../../static/images/short-logo.png"); }</style>
</head><body>
<img
  class="NO-CACHE" src="https://assets.example.org/logo-long.png?d=20240101T000000Z" alt="GX"/>
<img src="https://assets.example.org/missing.png" alt="gone">
<img srcset="https://a.example.org/1.png 1x, ../../static/images/short-logo.png 2x" alt="s">
<div style="background-image: url(https://a.example.org/bg.png)">x</div>
<a href="https://greatexpectations.io">docs</a> <a href="#section-1">top</a>
<p data-note="a > b">text &lt;DATAFRAME&gt;</p>
</body></html>
"""


def _site(tmp_path):
    site = tmp_path / "site"
    (site / "static" / "images").mkdir(parents=True)
    for name in ("logo-long.png", "short-logo.png", "favicon.ico"):
        (site / "static" / "images" / name).write_bytes(b"img")
    (site / "static" / "styles").mkdir()
    (site / "static" / "styles" / "gx.css").write_text(
        ".a { background: url('https://assets.example.org/full_logo_dark.png'); }\n")
    return site


def test_is_remote():
    for url in ("https://x.org/a.js", "http://x", "//cdn.x/a.css", " HTTPS://x", "ftp://x/y"):
        assert is_remote(url), url
    for url in ("static/a.css", "../a.png", "#top", "data:image/png;base64,AA", "a.html?x=1",
                "mailto:a@b.c", "C:/docs/a.png"):
        assert not is_remote(url), url


def test_pages_lose_every_remote_load_and_keep_their_content(tmp_path):
    site = _site(tmp_path)
    page = site / "validations" / "suite" / "run" / "time" / "batch.html"
    page.parent.mkdir(parents=True)
    page.write_text(PAGE)
    assert remote_loads(site)
    make_offline(site)
    assert remote_loads(site) == []
    text = page.read_text()
    parsed = Page(text)
    assert parsed.scripts == 0
    loads = {u for _, _, u in parsed.loads}
    assert "../../../../static/images/logo-long.png" in loads  # the site's own copy
    assert "../../../../static/styles/mofi_offline.css" in loads
    assert "../../static/images/favicon.ico" in loads  # local references are left alone
    assert "https://greatexpectations.io" in parsed.links  # links are not loads
    assert 'url("../../../../static/images/logo-long.png")' in text
    assert "missing.png" not in text and 'alt="gone"' in text
    assert "text &lt;DATAFRAME&gt;" in text and 'data-note="a > b"' in text
    assert (site / "static" / "styles" / "mofi_offline.css").is_file()
    assert "https://" not in (site / "static" / "styles" / "gx.css").read_text()
    before = {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}
    make_offline(site)  # idempotent and deterministic
    assert before == {p: p.read_bytes() for p in site.rglob("*") if p.is_file()}


def test_the_index_tables_become_plain_html_with_relative_links(tmp_path):
    site = _site(tmp_path)
    result = site / "validations" / "images" / "run-1" / "20240101T000000Z" / "mofi-images.html"
    result.parent.mkdir(parents=True)
    result.write_text("<html><head></head><body>result</body></html>")
    (site / "expectations").mkdir()
    (site / "expectations" / "images.html").write_text("<html><body>suite</body></html>")
    (site / "index.html").write_text(
        '<html><head></head><body><div id="t-1-body-table-toolbar" class="ml-1">'
        '<button onclick="clearTableFilters()">Clear Filters</button></div>\n'
        '<table\n  id="t-1"\n  class="table-sm ge-index-page-validation-results-table"\n'
        '  data-toggle="table"\n>\n</table>\n'
        '<table id="t-2" class="table-sm ge-index-page-expectation_suites-table">\n</table>\n'
        "<script>$('#t-1').bootstrapTable({data: [{'run_name': '__none__'}]});</script>"
        "</body></html>")
    row = ResultRow(suite="images", asset="images", status="warnings", run_name="run-1",
                    run_time="2024-01-01 00:00:00", expectations=6, failed=0, warnings=1,
                    page=result.relative_to(site).as_posix(),
                    suite_page="expectations/images.html")
    make_offline(site, [row])
    index = Page((site / "index.html").read_text())
    assert index.scripts == 0 and "Clear Filters" not in (site / "index.html").read_text()
    assert set(index.links) == {result.relative_to(site).as_posix(), "expectations/images.html"}
    assert ["passed with warnings", "2024-01-01 00:00:00", "run-1", "images", "images result",
            "images", "6", "0", "1"] == index.cells[9:18]
    assert "__none__" not in (site / "index.html").read_text()


def test_an_unfamiliar_index_still_gets_the_listing(tmp_path):
    site = _site(tmp_path)
    (site / "index.html").write_text("<html><head></head><body><p>new GX</p></body></html>")
    make_offline(site, [ResultRow(suite="s", asset="s", status="failed", run_name="r",
                                  run_time="t", expectations=1, failed=1, warnings=0,
                                  page="validations/s.html")])
    text = (site / "index.html").read_text()
    assert 'href="validations/s.html"' in text and text.index("mofi-fallback") < text.index("new")


def test_run_name_comes_from_the_environment_made_safe(monkeypatch):
    now = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
    monkeypatch.delenv("MOFI_RUN_NAME", raising=False)
    assert run_name(now) == "validate-20240506T070809Z"
    for given, expected in (("crimson-fox", "crimson-fox"), ("exp 1/a\\b", "exp-1-a-b"),
                            ("  ", "validate-20240506T070809Z"),
                            ("__none__", "validate-20240506T070809Z"),
                            ("../..", "validate-20240506T070809Z"),
                            ("wiry_tanager.v2", "wiry_tanager.v2")):
        monkeypatch.setenv("MOFI_RUN_NAME", given)
        assert run_name(now) == expected, given
    assert run_name(now, "given by caller") == "given-by-caller"
