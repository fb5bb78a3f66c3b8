"""Results shown in README.md and the docs are generated from the reports, never typed by hand.

``python -m tools.docs_results`` (``make demo``, ``make paper`` and ``make mutation`` run it last)
rewrites what lies between pairs of markers:

- ``docs/results.md``: the body of ``reports/paper.md`` (``make paper``'s study over seeds)
  between the ``paper`` markers, and that of ``reports/quality.md`` (the report stage's output
  for the committed demo run) between the ``results`` markers. The demo run is one seed: its
  block opens with a line that says so and points at ``make paper``, and its verdicts are not
  set in bold;
- ``README.md``: the headline, from ``reports/paper.md`` only: its model table and the claims'
  verdicts (as a table), then one line linking to ``docs/results.md``;
- ``docs/testing.md``: the body of ``reports/mutation.md`` (``make mutation``'s table).

A report that does not exist leaves its blocks as they are. ``--check`` changes nothing and exits
1 when any block is out of step with its report (a test runs it on the committed files).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def _marker(name: str, report: str) -> tuple[str, str]:
    return (f"<!-- {name}:begin (generated from reports/{report} by python -m tools.docs_results) "
            "-->", f"<!-- {name}:end -->")


BEGIN, END = _marker("results", "quality.md")
PAPER_BEGIN, PAPER_END = _marker("paper", "paper.md")
HEADLINE_BEGIN, HEADLINE_END = _marker("headline", "paper.md")
MUTATION_BEGIN, MUTATION_END = _marker("mutation", "mutation.md")

ONE_SEED = ("*One world seed and one training seed: these verdicts show the direction on this "
            "run only and are not a result. The claims over seeds are the study above "
            "(`make paper`).*")
RESULTS_LINK = ("Mean ± sample std over the world and training seeds of `make paper`; the "
                "study's budget, label quality and the demo run: "
                "[docs/results.md](docs/results.md).")
# "- <claim>: **<verdict>** (<k>/<n> seeds; mean <metric> difference <+x>)"
CLAIM = re.compile(r"^- (?P<claim>.+): \*\*(?P<verdict>[^*]+)\*\* \((?P<seeds>\d+/\d+) seeds; "
                   r"mean (?P<metric>\S+) difference (?P<diff>[^)]+)\)$")


def _lines_after_title(report_md: str) -> list[str]:
    lines = report_md.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise ValueError("the report does not start with its title (a '# ' line); re-run what "
                         "writes it (mofi report, make paper, make mutation)")
    return lines[1:]


def results_block(report_md: str) -> str:
    """The report without its title, headings one level down (they sit under a page's ##)."""
    body = [("#" + ln) if ln.startswith("## ") else ln for ln in _lines_after_title(report_md)]
    return "\n".join(body).strip() + "\n"


def sections(report_md: str) -> dict[str, str]:
    """The report's ``## `` sections by heading, each body stripped."""
    out: dict[str, list[str]] = {}
    current = None
    for line in _lines_after_title(report_md):
        if line.startswith("## "):
            current = line[3:].strip()
            out[current] = []
        elif current is not None:
            out[current].append(line)
    return {k: "\n".join(v).strip() for k, v in out.items()}


def _section(found: dict[str, str], prefix: str) -> tuple[str, str]:
    for heading, body in found.items():
        if heading.startswith(prefix):
            return heading, body
    raise ValueError(f"reports/paper.md has no section starting {prefix!r} (sections: "
                     f"{', '.join(found) or 'none'}); re-run make paper")


def claims_table(claims_md: str) -> str:
    """The claims list as a table (claim, verdict, seeds agreeing, mean difference); a list
    this does not recognise line for line is kept as it is."""
    items = [ln for ln in claims_md.splitlines() if ln.strip()]
    parsed = [CLAIM.match(ln) for ln in items]
    if not parsed or not all(parsed):
        return claims_md.strip()
    rows = ["| claim | verdict | seeds agreeing | mean difference |", "|---|---|---|---|"]
    rows += [f"| {m['claim']} | **{m['verdict']}** | {m['seeds']} | {m['metric']} {m['diff']} |"
             for m in parsed]
    return "\n".join(rows)


def headline_block(paper_md: str) -> str:
    """README's headline: the study's model table and the claims' verdicts, then the link."""
    found = sections(paper_md)
    models_heading, models = _section(found, "Every model")
    claims_heading, claims = _section(found, "The paper's claims")
    table = "\n".join(ln for ln in models.splitlines() if ln.startswith("|"))
    return (f"### {models_heading}\n\n{table}\n\n### {claims_heading}\n\n"
            f"{claims_table(claims)}\n\n{RESULTS_LINK}\n")


def demo_block(quality_md: str) -> str:
    """The demo run's report (one seed): its verdicts unbolded, after a line that says so."""
    body = results_block(quality_md)
    body = body.replace("**not held**", "not held").replace("**held**", "held")
    return f"{ONE_SEED}\n\n{body}"


def synced(text: str, report_md: str, begin: str = BEGIN, end_marker: str = END,
           render: Callable[[str], str] = results_block) -> str:
    """``text`` with the block between the markers replaced by ``render(report_md)``."""
    start, end = text.find(begin), text.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"no results markers: put {begin!r} and {end_marker!r} where the "
                         "results go")
    return text[:start + len(begin)] + "\n" + render(report_md) + text[end:]


@dataclass(frozen=True)
class Block:
    page: str  # relative to the root
    report: str  # relative to reports/
    begin: str
    end: str
    render: Callable[[str], str]


BLOCKS = (Block("docs/results.md", "paper.md", PAPER_BEGIN, PAPER_END, results_block),
          Block("docs/results.md", "quality.md", BEGIN, END, demo_block),
          Block("README.md", "paper.md", HEADLINE_BEGIN, HEADLINE_END, headline_block),
          Block("docs/testing.md", "mutation.md", MUTATION_BEGIN, MUTATION_END, results_block))


def render_pages(root: Path) -> dict[Path, tuple[str, str, list[str]]]:
    """Per page: (its text now, its text with every block in step, the reports used)."""
    pages: dict[Path, tuple[str, str, list[str]]] = {}
    for block in BLOCKS:
        report = root / "reports" / block.report
        if not report.is_file():
            continue
        page = root / block.page
        if page not in pages:
            if not page.is_file():
                raise ValueError(f"{page} does not exist; it holds the block generated from "
                                 f"{report}")
            text = page.read_text(encoding="utf-8")
            pages[page] = (text, text, [])
        old, new, used = pages[page]
        try:
            new = synced(new, report.read_text(encoding="utf-8"), block.begin, block.end,
                         block.render)
        except ValueError as err:
            raise ValueError(f"{page}: {err}") from None
        pages[page] = (old, new, [*used, str(report)])
    return pages


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--check", action="store_true",
                    help="change nothing; exit 1 when a block is out of step with its report")
    args = ap.parse_args(argv)
    try:
        pages = render_pages(args.root)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    stale = 0
    for page, (old, new, used) in pages.items():
        if new == old:
            continue
        if args.check:
            stale += 1
            print(f"{page}: a generated block differs from {', '.join(used)}; run python -m "
                  "tools.docs_results", file=sys.stderr)
        else:
            page.write_text(new, encoding="utf-8")
            print(f"{page}: generated blocks updated from {', '.join(used)}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
