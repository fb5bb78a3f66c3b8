"""README.md is a front door and docs/ a reference: no dated measurements, no before -> after
figures, no work diary in either (those live in dev/LOG.md and the benchmark tables), a README
short enough to read, and links that lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

MONTHS = ("Jan(?:uary)?|Feb(?:ruary)?|Mar(?:ch)?|Apr(?:il)?|May|June?|July?|Aug(?:ust)?|"
          "Sep(?:t(?:ember)?)?|Oct(?:ober)?|Nov(?:ember)?|Dec(?:ember)?")
# (what it is, pattern): each is a measurement of one hour or a diary sentence, never reference
FORBIDDEN = (
    ("a date", re.compile(r"\b(?:19|20)\d\d-[01]\d-[0-3]\d\b")),
    ("a date", re.compile(rf"\b(?:{MONTHS})\.? [0-3]?\d(?:st|nd|rd|th)?\b")),
    ("a date", re.compile(rf"\b[0-3]?\d(?:st|nd|rd|th)? (?:of )?(?:{MONTHS})\b")),
    ("a before figure ('was <number>')", re.compile(r"\b(?:was|were) [~≈+-]?\d", re.I)),
    ("a before -> after figure", re.compile(
        r"\d[\d.,]*\s*(?:%|x|×|s|ms|min|h|GB|MB)?[*_`]*\s*(?:→|->|⟶|=>|⇒)\s*[*_`]*[~≈+-]?\d")),
    ("a diary phrase", re.compile(
        r"\b(?:(?:this|last|previous|next|that) session|today|tonight|yesterday|"
        r"(?:this|that) (?:morning|afternoon|evening|hour)|last night|at a slow hour|"
        r"a slow hour|has never run(?: yet)?|never run yet|previous run measured|"
        r"this host was|(?:this|that) host(?:'s)? (?:was|is) slow|on this session's host)\b",
        re.I)),
)
REQUIRED_PAGES = ("index", "architecture", "curation", "training", "evaluation", "running",
                  "scale", "robustness", "review", "testing", "results")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def offences(text: str) -> list[tuple[int, str, str]]:
    """(line number, what, the matched text) for every forbidden pattern in ``text``."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        for what, pattern in FORBIDDEN:
            for match in pattern.finditer(line):
                found.append((number, what, match.group(0)))
    return found


def relative_links(text: str) -> list[str]:
    """Link targets that are files of this repository (no scheme, no bare anchor)."""
    targets = (m.group(1) for m in LINK.finditer(text))
    return [t for t in targets if not re.match(r"^(?:[a-z][a-z0-9+.-]*:|#)", t, re.I)]


@pytest.mark.parametrize("line, what", [
    ("Measured 2026-12-02 on the host.", "a date"),
    ("the run of Dec 2 took longer", "a date"),
    ("on 1 December the demo", "a date"),
    ("baseline 155 s (was 162), evaluate 40 s", "a before figure ('was <number>')"),
    ("ViT-B-32 whole run 0.77 → **0.91**", "a before -> after figure"),
    ("ViT-B-32 whole run 0.77 → 0.91 (target met)", "a before -> after figure"),
    ("overhead 0.52 s -> 0.12 s per mutant", "a before -> after figure"),
    ("profiled, then changed this session", "a diary phrase"),
    ("as measured in the last session", "a diary phrase"),
    ("Today the demo took 10 min", "a diary phrase"),
    ("against 3.6 in this morning's run", "a diary phrase"),
    ("at a slow hour of this host", "a diary phrase"),
    ("so it has never run yet on one", "a diary phrase"),
    ("the previous run measured 600 s", "a diary phrase"),
])
def test_the_scanner_finds_what_it_forbids(line, what):
    assert what in {w for _, w, _ in offences(f"fine line\n{line}\n")}
    assert all(n == 2 for n, _, _ in offences(f"fine line\n{line}\n"))


@pytest.mark.parametrize("line", [
    "corpus ─┬─► kb ─► ingest",  # arrows between words
    "`train.recipes` candidates: `supervised` → `multitask`",
    "a 2M × 768 head does not fit one GPU",
    "| step 1200/5000 (24%) loss 3.1416 | ETA 1m32s |",
    "thresholds keeping 20 to 95 % of the images",
    "May the filter keep it; March on",
    "released in June 2024",
])
def test_the_scanner_leaves_reference_prose_alone(line):
    assert offences(line) == []


def test_no_dates_before_after_figures_or_diary_in_readme_and_docs():
    found = [f"{page.relative_to(ROOT)}:{n}: {what}: {text!r}"
             for page in pages()
             for n, what, text in offences(page.read_text(encoding="utf-8"))]
    assert found == [], ("dated measurements and diary belong in dev/LOG.md (or a benchmark "
                         "table), not in README.md or docs/:\n" + "\n".join(found))


def test_the_readme_is_a_short_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    lines = len(text.splitlines())
    assert lines <= 250, f"README.md has {lines} lines; at most 250 (move reference to docs/)"
    for command in ("make demo", "make test"):
        assert command in text, command
    assert "https://arxiv.org/abs/2306.07952" in text


def test_relative_links_in_the_readme_lead_to_files():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = relative_links(text)
    assert any(link.startswith("docs/") for link in links)
    missing = [link for link in links if not (ROOT / link.split("#", 1)[0]).exists()]
    assert missing == [], f"README.md links to files that do not exist: {missing}"


def test_relative_links_in_the_docs_lead_to_files():
    missing = []
    for page in sorted((ROOT / "docs").rglob("*.md")):
        for link in relative_links(page.read_text(encoding="utf-8")):
            if not (page.parent / link.split("#", 1)[0]).exists():
                missing.append(f"{page.relative_to(ROOT)}: {link}")
    assert missing == []


def test_the_link_finder_sees_relative_links_only():
    text = ("[a](docs/x.md) [b](https://example.org) [c](#here) ![img](docs/p.png) "
            "[d](../dev/LOG.md#top) [e](mailto:x@y)")
    assert relative_links(text) == ["docs/x.md", "../dev/LOG.md#top"]


def test_the_site_has_every_page_in_its_nav_and_builds_strict_offline():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert config["docs_dir"] == "docs" and config["site_dir"] == "site"
    assert config["strict"] is True
    assert config["theme"]["name"] == "material" and config["theme"]["font"] is False
    plugins = [p if isinstance(p, str) else next(iter(p)) for p in config["plugins"]]
    assert not {"social", "privacy", "git-revision-date-localized"} & set(plugins)
    assert not [s for s in config.get("extra_javascript", []) + config.get("extra_css", [])
                if "//" in str(s)]

    def listed(nav) -> list[str]:
        out = []
        for item in nav:
            value = next(iter(item.values())) if isinstance(item, dict) else item
            out += listed(value) if isinstance(value, list) else [value]
        return out

    in_nav = set(listed(config["nav"]))
    for name in REQUIRED_PAGES:
        assert f"{name}.md" in in_nav and (ROOT / "docs" / f"{name}.md").is_file(), name
    reference = [p.relative_to(ROOT / "docs").as_posix()
                 for p in (ROOT / "docs" / "reference").glob("*.md")]
    assert reference and set(reference) <= in_nav
    assert any("::: mofi_core." in (ROOT / "docs" / r).read_text(encoding="utf-8")
               for r in reference)


def test_the_walkthroughs_are_where_their_tests_look():
    assert "<!-- own-data-walkthrough" in (ROOT / "README.md").read_text(encoding="utf-8")
    scale = (ROOT / "docs" / "scale.md").read_text(encoding="utf-8")
    assert "<!-- scale-walkthrough" in scale and "mofi warm" not in scale
