"""The README's results block is the committed run's reports/quality.md, never typed by hand."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT
from tools.docs_results import BEGIN, END, main, results_block, synced


def test_the_committed_readme_shows_the_committed_report():
    assert main(["--root", str(ROOT), "--check"]) == 0
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = text[text.index(BEGIN) + len(BEGIN):text.index(END)]
    report = (ROOT / "reports" / "quality.md").read_text(encoding="utf-8")
    assert block.strip() == results_block(report).strip()
    assert "| model |" in block and "held" in block


def test_sync_replaces_only_the_block_and_check_fails_when_out_of_step(tmp_path):
    (tmp_path / "reports").mkdir()
    (tmp_path / "reports" / "quality.md").write_text("# T\n\n## Part\n\n| a |\n")
    (tmp_path / "README.md").write_text(f"intro\n{BEGIN}\nold typed table\n{END}\ntail\n")
    assert main(["--root", str(tmp_path), "--check"]) == 1
    assert main(["--root", str(tmp_path)]) == 0
    assert (tmp_path / "README.md").read_text() == (
        f"intro\n{BEGIN}\n### Part\n\n| a |\n{END}\ntail\n")
    assert main(["--root", str(tmp_path), "--check"]) == 0


def test_missing_markers_or_title_are_errors():
    with pytest.raises(ValueError, match="no results markers"):
        synced("no markers here", "# T\n")
    with pytest.raises(ValueError, match="title"):
        results_block("## not a title\n")
