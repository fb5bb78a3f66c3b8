"""The README's results block is generated from a run's output, never typed by hand.

``python -m mofi_core.readme`` (``make demo`` runs it last) copies the body of
``reports/quality.md`` (what the report stage wrote for the committed demo run) between the
``<!-- results:begin -->`` and ``<!-- results:end -->`` markers of ``README.md``;
``--check`` only says whether the README is in step (a test runs it on the committed files).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

BEGIN = "<!-- results:begin (generated from reports/quality.md by python -m mofi_core.readme) -->"
END = "<!-- results:end -->"


def results_block(quality_md: str) -> str:
    """The report without its title, headings one level down (they sit under a README ##)."""
    lines = quality_md.strip().splitlines()
    if not lines or not lines[0].startswith("# "):
        raise ValueError("reports/quality.md does not start with the report's title; re-run "
                         "the report stage (mofi report)")
    body = [("#" + ln) if ln.startswith("## ") else ln for ln in lines[1:]]
    return "\n".join(body).strip() + "\n"


def synced(readme: str, quality_md: str) -> str:
    """``readme`` with the block between the markers replaced by :func:`results_block`."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README.md has no results markers: put {BEGIN!r} and {END!r} where "
                         "the results go")
    return readme[:start + len(BEGIN)] + "\n" + results_block(quality_md) + readme[end:]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, default=Path("."))
    ap.add_argument("--check", action="store_true", help="fail if README.md is out of step")
    args = ap.parse_args(argv)
    readme, report = args.root / "README.md", args.root / "reports" / "quality.md"
    text = readme.read_text(encoding="utf-8")
    new = synced(text, report.read_text(encoding="utf-8"))
    if args.check:
        if new != text:
            print(f"{readme}: results block differs from {report}; run python -m "
                  "mofi_core.readme", file=sys.stderr)
            return 1
        return 0
    if new != text:
        readme.write_text(new, encoding="utf-8")
        print(f"{readme}: results block updated from {report}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
