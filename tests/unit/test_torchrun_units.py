"""Under torchrun a process sets up one process group: `mofi train` without an entry refuses to
loop over several recipes there (infra/torchrun-train.sh launches one torchrun per entry)."""

from __future__ import annotations

from typer.testing import CliRunner

from mofi_core.cli import app
from tests.conftest import ROOT


def test_train_without_an_entry_under_torchrun_is_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    result = CliRunner().invoke(app, ["train", "--params", str(ROOT / "params.yaml"),
                                      "-S", "train.recipes=[supervised, multitask]"])
    assert result.exit_code == 1
    assert "under torchrun, launch one train.recipes entry at a time" in result.output


def test_the_launcher_runs_one_torchrun_per_recipe():
    script = (ROOT / "infra" / "torchrun-train.sh").read_text()
    assert 'for unit in "${units[@]}"' in script and 'rdzv-id="$RDZV_ID$1"' in script
    assert 'dvc commit --force --quiet "${units[@]}"' in script
