"""Results in README.md and docs/ are the committed reports, never typed by hand."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from tools.docs_results import (
    BEGIN,
    END,
    HEADLINE_BEGIN,
    HEADLINE_END,
    MUTATION_BEGIN,
    MUTATION_END,
    ONE_SEED,
    PAPER_BEGIN,
    PAPER_END,
    claims_table,
    demo_block,
    headline_block,
    main,
    results_block,
    synced,
)

PAPER = """# MOFI paper comparison over seeds

Seeds 0, 1; every model 8 steps.

## Every model

| model | mAP all |
|---|---|
| MOFI (multitask) | 0.4111 ± 0.0180 |
| control CLIP (alt-text) | 0.3213 ± 0.0100 |

Label precision 95.2 ± 3.0%.

## The paper's claims

""" + "\n".join([
    "- MOFI beats the alt-text CLIP on retrieval mAP: **held** (2/2 seeds; mean gpr_map "
    "difference +0.0898)",
    "- MOFI beats the alt-text CLIP on zero-shot top-1: **not held** (0/2 seeds; mean "
    "zero_shot_top1 difference -0.0108)"]) + "\n"
QUALITY = """# MOFI demo-world report

## Every model on the benchmark (GPR1200 protocol)

| model | mAP all |
|---|---|
| MOFI (multitask) | 0.4136 |

Threshold 0.63: chosen on world seed 1 (**held out**).

## Does the paper's direction hold? (this run: one seed)

- MOFI beats the alt-text CLIP on retrieval mAP: **held** (gpr_map 0.4136 vs 0.3122)
- MOFI beats the alt-text CLIP on zero-shot top-1: **not held** (zero_shot_top1 0.1500 vs 0.1775)
"""
MUTATION = "# Mutation testing\n\n| module | score |\n|---|---|\n| `a.py` | 99.0% |\n"


def _block(text: str, begin: str, end: str) -> str:
    return text[text.index(begin) + len(begin):text.index(end)]


def _project(tmp_path, reports: dict[str, str]):
    (tmp_path / "reports").mkdir()
    (tmp_path / "docs").mkdir()
    for name, body in reports.items():
        (tmp_path / "reports" / name).write_text(body, encoding="utf-8")
    (tmp_path / "README.md").write_text(f"intro\n{HEADLINE_BEGIN}\ntyped\n{HEADLINE_END}\ntail\n")
    (tmp_path / "docs" / "results.md").write_text(
        f"# R\n{PAPER_BEGIN}\nold\n{PAPER_END}\nmid\n{BEGIN}\nold\n{END}\nend\n")
    (tmp_path / "docs" / "testing.md").write_text(f"# T\n{MUTATION_BEGIN}\n{MUTATION_END}\n")
    return tmp_path


def test_the_committed_pages_show_the_committed_reports():
    assert main(["--root", str(ROOT), "--check"]) == 0
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    results = (ROOT / "docs" / "results.md").read_text(encoding="utf-8")
    testing = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    paper = (ROOT / "reports" / "paper.md").read_text(encoding="utf-8")
    quality = (ROOT / "reports" / "quality.md").read_text(encoding="utf-8")
    mutation = (ROOT / "reports" / "mutation.md").read_text(encoding="utf-8")
    assert _block(readme, HEADLINE_BEGIN, HEADLINE_END).strip() == headline_block(paper).strip()
    assert _block(results, PAPER_BEGIN, PAPER_END).strip() == results_block(paper).strip()
    assert _block(results, BEGIN, END).strip() == demo_block(quality).strip()
    assert _block(testing, MUTATION_BEGIN, MUTATION_END).strip() == \
        results_block(mutation).strip()
    headline = _block(readme, HEADLINE_BEGIN, HEADLINE_END)
    assert "| model |" in headline and "| claim | verdict |" in headline
    assert "docs/results.md" in headline
    assert "Label precision" not in headline  # the headline is the two tables, no more


def test_sync_writes_every_block_and_check_fails_when_out_of_step(tmp_path):
    root = _project(tmp_path, {"paper.md": PAPER, "quality.md": QUALITY,
                               "mutation.md": MUTATION})
    assert main(["--root", str(root), "--check"]) == 1
    assert "typed" in (root / "README.md").read_text()  # --check changes nothing
    assert main(["--root", str(root)]) == 0
    assert main(["--root", str(root), "--check"]) == 0
    readme = (root / "README.md").read_text()
    assert readme.startswith(f"intro\n{HEADLINE_BEGIN}\n### Every model\n")
    assert readme.endswith(f"{HEADLINE_END}\ntail\n")
    assert "| MOFI beats the alt-text CLIP on retrieval mAP | **held** | 2/2 | gpr_map +0.0898 |" \
        in readme
    assert "Label precision" not in readme and "typed" not in readme
    results = (root / "docs" / "results.md").read_text()
    assert "### The paper's claims" in _block(results, PAPER_BEGIN, PAPER_END)
    assert "\nmid\n" in results and results.endswith(f"{END}\nend\n")
    testing = (root / "docs" / "testing.md").read_text()
    assert _block(testing, MUTATION_BEGIN, MUTATION_END) == "\n| module | score |\n|---|---|\n" \
                                                           "| `a.py` | 99.0% |\n"
    (root / "reports" / "mutation.md").write_text(MUTATION.replace("99.0", "80.0"))
    assert main(["--root", str(root), "--check"]) == 1


def test_the_demo_block_says_it_is_one_seed_and_bolds_no_verdict():
    block = demo_block(QUALITY)
    assert block.startswith(ONE_SEED) and "make paper" in ONE_SEED
    assert "**held**" not in block and "**not held**" not in block
    assert ": held (gpr_map" in block and ": not held (zero_shot" in block
    assert "(**held out**)" in block  # where the threshold came from is not a verdict
    assert "### Does the paper's direction hold?" in block


def test_a_missing_report_leaves_its_blocks_as_they_are(tmp_path):
    root = _project(tmp_path, {"mutation.md": MUTATION})
    assert main(["--root", str(root)]) == 0
    assert "typed" in (root / "README.md").read_text()
    assert "\nold\n" in (root / "docs" / "results.md").read_text()
    assert "99.0%" in (root / "docs" / "testing.md").read_text()


def test_missing_markers_or_title_are_errors(tmp_path, capsys):
    with pytest.raises(ValueError, match="no results markers"):
        synced("no markers here", "# T\n")
    with pytest.raises(ValueError, match="title"):
        results_block("## not a title\n")
    with pytest.raises(ValueError, match="no section starting"):
        headline_block("# T\n\n## Every model\n\n| a |\n")
    root = _project(tmp_path, {"paper.md": PAPER})
    (root / "README.md").write_text("no markers\n")
    assert main(["--root", str(root)]) == 1
    assert "README.md" in capsys.readouterr().err


def test_claims_the_table_cannot_read_stay_a_list():
    odd = "- a claim worded another way: **held**\n"
    assert claims_table(odd) == odd.strip()
    assert claims_table(PAPER.split("## The paper's claims")[1]).startswith("| claim |")
