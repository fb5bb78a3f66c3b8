"""The README's results blocks are generated from runs' outputs, never typed by hand.

``python -m tools.docs_results`` (``make demo`` and ``make paper`` run it last) copies the body of
``reports/quality.md`` (the report stage's output for the committed demo run) between the
``<!-- results:begin ... -->`` and ``<!-- results:end -->`` markers of ``README.md``, and that of
``reports/paper.md`` (``make paper``'s output) between the ``paper`` markers and that of
``reports/mutation.md`` (``make mutation``'s) between the ``mutation`` markers; a report that
does not exist leaves its block as it is. ``--check`` only says whether the README is in step (a
test runs it on the committed files).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BEGIN = "<!-- results:begin (generated from reports/quality.md by python -m tools.docs_results) -->"
END = "<!-- results:end -->"
PAPER_BEGIN = "<!-- paper:begin (generated from reports/paper.md by python -m tools.docs_results) -->"
PAPER_END = "<!-- paper:end -->"
MUTATION_BEGIN = ("<!-- mutation:begin (generated from reports/mutation.md by python -m "
                  "tools.docs_results) -->")
MUTATION_END = "<!-- mutation:end -->"
BLOCKS = (("quality.md", BEGIN, END), ("paper.md", PAPER_BEGIN, PAPER_END),
          ("mutation.md", MUTATION_BEGIN, MUTATION_END))


def results_block(quality_md: str) -> str:
    """The report without its title, headings one level down (they sit under a README ##)."""
    lines = quality_md.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise ValueError("the report does not start with its title (a '# ' line); re-run what "
                         "writes it (mofi report, make paper, make mutation)")
    body = [("#" + ln) if ln.startswith("## ") else ln for ln in lines[1:]]
    return "\n".join(body).strip() + "\n"


def synced(readme: str, report_md: str, begin: str = BEGIN, end_marker: str = END) -> str:
    """``readme`` with the block between the markers replaced by :func:`results_block`."""
    start, end = readme.find(begin), readme.find(end_marker)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no results markers: put {begin!r} and {end_marker!r} "
                         "where the results go")
    return readme[:start + len(begin)] + "\n" + results_block(report_md) + readme[end:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--check", action="store_true", help="fail if README.md is out of step")
    args = ap.parse_args(argv)
    readme = args.root / "README.md"
    text = new = readme.read_text(encoding="utf-8")
    sources = []
    for name, begin, end in BLOCKS:
        report = args.root / "reports" / name
        if report.is_file():
            new = synced(new, report.read_text(encoding="utf-8"), begin, end)
            sources.append(str(report))
    if args.check:
        if new != text:
            print(f"{readme}: a results block differs from {', '.join(sources)}; run python -m "
                  "tools.docs_results", file=sys.stderr)
            return 1
        return 0
    if new != text:
        readme.write_text(new, encoding="utf-8")
        print(f"{readme}: results blocks updated from {', '.join(sources)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
