"""Data Docs that read offline: the great-expectations site, made self-sufficient.

great-expectations 1.x renders its Data Docs pages against Bootstrap, jQuery, bootstrap-table,
Font Awesome and Vega loaded from public CDNs, and a logo from S3; none of these ship with the
package. Without a network the index page is an empty skeleton: its tables of validation results
and expectation suites exist only as data handed to a bootstrap-table script.

:func:`make_offline` post-processes a built site so that every page stands alone:

- every ``<script>`` is removed (the remote libraries and the inline code that needs them); the
  pages' content is plain HTML, which the browser shows as it is;
- ``<link>`` tags that load from the network are removed; images and CSS ``url()`` that point at
  the network are redirected to the same file under the site's ``static/images`` when GX copied
  one there (the logo), and dropped otherwise; remote ``@import`` rules are removed;
- a small local stylesheet (``static/styles/mofi_offline.css``) keeps tables, status icons and
  the page layout readable;
- on the index page, the script-only tables are replaced by plain HTML tables: one row per
  validation result (status, run, counts, a relative link to its page) and one per suite.

Links (``<a href>``) to the web are kept: a browser does not load them by itself.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, urlsplit

STYLESHEET = "static/styles/mofi_offline.css"
IMAGES = "static/images"

# URL schemes a browser resolves without the network
_LOCAL_SCHEMES = {"data", "about", "javascript", "mailto", "tel", "blob"}
# attributes through which a browser loads something by itself (<a>/<area> href excepted)
_LOADING_ATTRS = {"src", "href", "srcset", "imagesrcset", "poster", "data", "background",
                  "xlink:href", "manifest"}

_SCRIPT = re.compile(r"<script\b(?:[^>\"']|\"[^\"]*\"|'[^']*')*>.*?</script\s*>",
                     re.IGNORECASE | re.DOTALL)
_TAG = re.compile(r"<([A-Za-z][\w:-]*)((?:[^>\"']|\"[^\"]*\"|'[^']*')*)>")
_ATTR = re.compile(r"""([^\s=/>"']+)(?:\s*=\s*("[^"]*"|'[^']*'|[^\s"'>]+))?""")
_STYLE_BLOCK = re.compile(r"(<style\b[^>]*>)(.*?)(</style\s*>)", re.IGNORECASE | re.DOTALL)
_CSS_IMPORT = re.compile(r"""@import\s+(?:url\(\s*)?(["']?)([^"')\s;]+)\1\s*\)?[^;]*;""",
                         re.IGNORECASE)
_CSS_URL = re.compile(r"""url\(\s*(["']?)(.*?)\1\s*\)""", re.IGNORECASE | re.DOTALL)
_TOOLBAR = re.compile(r"<div\b[^>]*\bid=\"[^\"]*-table-toolbar\"[^>]*>.*?</div>",
                      re.IGNORECASE | re.DOTALL)


def _table_of(css_class: str) -> re.Pattern:
    return re.compile(r"<table\b(?:[^>\"']|\"[^\"]*\"|'[^']*')*\bclass=\"[^\"]*\b"
                      + re.escape(css_class) + r"\b[^\"]*\"(?:[^>\"']|\"[^\"]*\"|'[^']*')*>"
                      r"\s*</table\s*>", re.IGNORECASE)


_RESULTS_TABLE = _table_of("ge-index-page-validation-results-table")
_SUITES_TABLE = _table_of("ge-index-page-expectation_suites-table")


@dataclass(frozen=True)
class ResultRow:
    """One validation result, as the index page lists it."""
    suite: str
    asset: str
    status: str  # "passed", "warnings" (only warning-severity failures) or "failed"
    run_name: str
    run_time: str  # UTC, ISO 8601
    expectations: int
    failed: int
    warnings: int
    page: str | None = None  # the result page, relative to the site root (posix)
    suite_page: str | None = None  # the suite's page, relative to the site root (posix)


def is_remote(url: str) -> bool:
    """Would a browser go to the network for ``url`` (``http(s)://``, ``//host``, ...)?"""
    url = html.unescape(url).strip()
    if url.startswith("//") or url.startswith("\\\\"):
        return True
    scheme = urlsplit(url).scheme.lower()
    return bool(scheme) and len(scheme) > 1 and scheme not in _LOCAL_SCHEMES


def make_offline(site: Path, rows: Iterable[ResultRow] = ()) -> None:
    """Rewrite the Data Docs site in ``site`` in place so that no page loads anything from the
    network, and the index lists ``rows`` as plain HTML."""
    site = Path(site)
    rows = list(rows)
    sheet = site / STYLESHEET
    sheet.parent.mkdir(parents=True, exist_ok=True)
    sheet.write_text(OFFLINE_CSS, encoding="utf-8")
    for css in sorted(site.rglob("*.css")):
        if css != sheet:
            text = css.read_text(encoding="utf-8")
            new = _css(text, css.parent, site)
            if new != text:
                css.write_text(new, encoding="utf-8")
    index = site / "index.html"
    for page in sorted(site.rglob("*.html")):
        text = page.read_text(encoding="utf-8")
        new = _page(text, page, site)
        if page == index:
            new = _index(new, rows, site)
        if new != text:
            page.write_text(new, encoding="utf-8")


# --- one page ------------------------------------------------------------------------------------

def _rel(site: Path, target: str, base_dir: Path) -> str:
    """``target`` (site-relative, posix) as a URL relative to ``base_dir``."""
    return quote(Path(os.path.relpath(site / target, base_dir)).as_posix())


def _local_copy(url: str, site: Path, base_dir: Path) -> str | None:
    """The site's own copy of a remote image (GX copies its images to static/images)."""
    name = Path(urlsplit(html.unescape(url).strip()).path).name
    if name and (site / IMAGES / name).is_file():
        return _rel(site, f"{IMAGES}/{name}", base_dir)
    return None


def _css(text: str, base_dir: Path, site: Path) -> str:
    text = _CSS_IMPORT.sub(lambda m: "" if is_remote(m.group(2)) else m.group(0), text)

    def url(m: re.Match) -> str:
        if not is_remote(m.group(2)):
            return m.group(0)
        local = _local_copy(m.group(2), site, base_dir)
        return f'url("{local}")' if local else "none"

    return _CSS_URL.sub(url, text)


def _page(text: str, page: Path, site: Path) -> str:
    base = page.parent
    text = _SCRIPT.sub("", text)
    text = _STYLE_BLOCK.sub(lambda m: m.group(1) + _css(m.group(2), base, site) + m.group(3),
                            text)
    text = _TAG.sub(lambda m: _tag(m, base, site), text)
    link = f'<link rel="stylesheet" href="{_rel(site, STYLESHEET, base)}"/>\n'
    if link in text:
        return text
    head_end = re.search(r"</head\s*>", text, re.IGNORECASE)
    if head_end is None:
        return link + text
    return text[:head_end.start()] + link + text[head_end.start():]


def _tag(m: re.Match, base: Path, site: Path) -> str:
    name, attrs = m.group(1).lower(), m.group(2)
    edits: list[tuple[int, int, str]] = []
    for a in _ATTR.finditer(attrs):
        key, raw = a.group(1).lower(), a.group(2)
        if raw is None:
            continue
        value = raw[1:-1] if raw[:1] in "\"'" else raw
        if key == "style":
            new = _css(html.unescape(value), base, site)
            if new != html.unescape(value):
                edits.append((a.start(), a.end(), f'style="{html.escape(new)}"'))
            continue
        if key not in _LOADING_ATTRS or (name in ("a", "area") and key == "href"):
            continue
        if key in ("srcset", "imagesrcset"):
            kept = [c for c in value.split(",") if c.strip() and not is_remote(c.split()[0])]
            if len(kept) != len([c for c in value.split(",") if c.strip()]):
                edits.append((a.start(), a.end(),
                              f'{a.group(1)}="{",".join(kept)}"' if kept else ""))
            continue
        if not is_remote(value):
            continue
        if name in ("link", "script", "iframe", "object", "embed", "base"):
            return ""  # nothing local can stand in for a remote stylesheet, frame or base
        local = _local_copy(value, site, base) if key == "src" else None
        edits.append((a.start(), a.end(), f'{a.group(1)}="{local}"' if local else ""))
    for start, end, new in reversed(edits):
        attrs = attrs[:start] + new + attrs[end:]
    return f"<{m.group(1)}{attrs}>" if edits else m.group(0)


# --- the index page ------------------------------------------------------------------------------

def _index(text: str, rows: list[ResultRow], site: Path) -> str:
    text = _TOOLBAR.sub("", text)
    results, suites = _results_html(rows), _suites_html(rows, site)
    text, found = _RESULTS_TABLE.subn(lambda _: results, text, count=1)
    text = _SUITES_TABLE.sub(lambda _: suites, text, count=1)
    if not found:  # a GX whose index looks different: the list goes first on the page
        body = re.search(r"<body\b[^>]*>", text, re.IGNORECASE)
        at = body.end() if body else 0
        text = text[:at] + f'\n<section class="mofi-fallback">{results}{suites}</section>\n' \
            + text[at:]
    return text


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _link(page: str | None, label: str) -> str:
    return f'<a href="{_e(quote(page))}">{_e(label)}</a>' if page else _e(label)


_STATUS = {"passed": ("fa-check-circle text-success", "passed"),
           "warnings": ("fa-exclamation-triangle text-warning", "passed with warnings"),
           "failed": ("fa-times text-danger", "failed")}


def _results_html(rows: list[ResultRow]) -> str:
    if not rows:
        return '<p class="mofi-summary">No validation results.</p>'
    runs = sorted({(r.run_name, r.run_time) for r in rows})
    failed = sum(r.failed for r in rows)
    warned = sum(r.warnings for r in rows)
    verdict = "failed" if failed else "passed"
    summary = "; ".join(f"run <strong>{_e(n)}</strong> at {_e(t)}" for n, t in runs)
    head = ("Status", "Run time (UTC)", "Run name", "Asset", "Validation result",
            "Expectation suite", "Expectations", "Failed", "Warnings")
    body = []
    for r in rows:
        icon, word = _STATUS.get(r.status, _STATUS["failed"])
        body.append(
            f'<tr class="mofi-{_e(r.status)}">'
            f'<td><span class="mofi-status"><i class="fas {icon}" aria-hidden="true"></i> '
            f"{_e(word)}</span></td><td>{_e(r.run_time)}</td><td>{_e(r.run_name)}</td>"
            f"<td>{_e(r.asset)}</td><td>{_link(r.page, r.suite + ' result')}</td>"
            f"<td>{_link(r.suite_page, r.suite)}</td><td>{r.expectations}</td>"
            f"<td>{r.failed}</td><td>{r.warnings}</td></tr>")
    return (f'<p class="mofi-summary">Validation {summary}: {len(rows)} batches, '
            f'{sum(r.expectations for r in rows)} expectations, {failed} failed, {warned} '
            f'warnings &mdash; gate <strong class="mofi-{verdict}">{verdict}</strong>.</p>\n'
            '<table class="table table-sm mofi-table ge-index-page-validation-results-table">'
            "<thead><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr></thead>\n<tbody>\n"
            + "\n".join(body) + "\n</tbody></table>\n")


def _suites_html(rows: list[ResultRow], site: Path) -> str:
    listed = [(r.suite, r.suite_page) for r in rows if r.suite_page]
    known = {page for _, page in listed}
    for page in sorted(p.relative_to(site).as_posix()
                       for p in (site / "expectations").rglob("*.html")):
        if page not in known:
            listed.append((page.removeprefix("expectations/").removesuffix(".html")
                           .replace("/", "."), page))
    seen: set[str] = set()
    items = []
    for name, page in listed:
        if page not in seen:
            seen.add(page)
            items.append(f"<tr><td>{_link(page, name)}</td></tr>")
    return ('<table class="table table-sm mofi-table ge-index-page-expectation_suites-table">'
            "<thead><tr><th>Expectation suite</th></tr></thead>\n<tbody>\n"
            + "\n".join(items) + "\n</tbody></table>\n")


OFFLINE_CSS = """\
/* MOFI: what Data Docs need to read well without Bootstrap or Font Awesome from a CDN. */
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
  font-size: 15px; line-height: 1.45; color: #212529; background: #fff; margin: 0;
  padding-bottom: 48px; }
a { color: #0b62c4; }
h1, h2, h3, h4, h5, h6 { margin: .4em 0; }
.navbar { display: flex; align-items: center; padding: 8px 16px; height: auto !important;
  border-bottom: 1px solid #dee2e6; }
.navbar-brand img { height: 40px !important; }
.breadcrumb { display: flex; flex-wrap: wrap; list-style: none; margin: 0 0 0 12px; padding: 0; }
.breadcrumb-item + .breadcrumb-item::before { content: "/"; padding: 0 6px; color: #6c757d; }
.container-fluid { box-sizing: border-box; width: 100%; padding: 12px 16px; }
.row { display: flex; flex-wrap: wrap; }
.row > [class*="col-"] { box-sizing: border-box; width: 100%; padding: 0 8px; }
.row > .col-6 { width: 50%; }
@media (min-width: 768px) {
  .row > .col-md-2 { width: 18%; } .row > .col-md-10 { width: 82%; }
  .row > .col-md-6 { width: 50%; } .row > .col-md-4 { width: 33.3%; }
}
.alert { padding: 8px 12px; margin: 8px 0; border: 1px solid #d6d8db; border-radius: 4px;
  background: #e2e3e5; }
.card { border: 1px solid #dee2e6; border-radius: 4px; margin: 8px 0; }
.card-header { padding: 6px 10px; background: #f7f7f9; border-bottom: 1px solid #dee2e6; }
.card-body { padding: 6px 10px; }
.nav, .nav-tabs, .nav-pills { list-style: none; padding-left: 0; margin: 0; }
.nav-tabs { display: flex; gap: 16px; border-bottom: 1px solid #dee2e6; margin: 8px 0; }
.nav-tabs .nav-link { display: inline-block; padding: 4px 0; }
.tab-pane { margin-bottom: 24px; }
table, .table { border-collapse: collapse; margin: 6px 0 12px; max-width: 100%; }
.table th, .table td, table.mofi-table th, table.mofi-table td { border: 1px solid #dee2e6;
  padding: 4px 8px; text-align: left; vertical-align: top; }
.table thead th { background: #f1f3f5; }
.table-responsive { overflow-x: auto; }
.show-scrollbars { overflow: auto; max-height: 60vh; }
pre, code, .code-snippet { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 13px; }
.text-success, .mofi-passed { color: #1e7e34; }
.text-danger, .mofi-failed { color: #c82333; }
.text-warning, .mofi-warnings { color: #a36b00; }
.mofi-summary { margin: 8px 0; }
.mofi-status { white-space: nowrap; }
/* Font Awesome icons GX uses, as plain characters */
.fas { font-style: normal; }
.fa-check-circle::before { content: "\\2714"; }
.fa-times::before { content: "\\2716"; }
.fa-exclamation-triangle::before { content: "\\26A0"; }
.fa-question-circle::before { content: "?"; }
.fa-comment::before { content: "\\1F4AC"; }
/* controls that need the scripts removed for offline reading */
.btn, .btn-group-toggle, .card:has(.btn-group-toggle) { display: none; }
footer { font-size: 13px; }
@media (prefers-color-scheme: dark) {
  body { color: #e9ecef; background: #16181b; }
  a { color: #7ab7ff; }
  .alert, .card-header, .table thead th { background: #2b3035; border-color: #495057; }
  .table th, .table td, table.mofi-table th, table.mofi-table td { border-color: #495057; }
  .navbar-brand a img { visibility: visible !important; }
  .text-success, .mofi-passed { color: #5cd67a; }
  .text-danger, .mofi-failed { color: #ff6b78; }
  .text-warning, .mofi-warnings { color: #ffc857; }
}
"""
