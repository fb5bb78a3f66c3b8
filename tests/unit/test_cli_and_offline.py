import pytest
from typer.testing import CliRunner

from mofi_core.cli import app
from mofi_core.config.score import ScoreConfig
from mofi_core.curate.score import check_pretrained, load_scorer
from mofi_core.stages import BY_NAME as STAGES

runner = CliRunner()


def test_help_lists_every_stage_and_the_orchestration_commands():
    out = runner.invoke(app, ["--help"]).output
    for name in [*STAGES, "run", "serve", "ui"]:
        assert name in out


@pytest.mark.parametrize("stage", list(STAGES))
def test_each_stage_help_explains_its_options(stage):
    result = runner.invoke(app, [stage, "--help"])
    assert result.exit_code == 0
    assert "--params" in result.output and "--root" in result.output


def test_stage_failure_is_one_clear_line_and_exit_code_1(tmp_path):
    result = runner.invoke(app, ["ingest", "--params", str(tmp_path / "none.yaml"),
                                 "--root", str(tmp_path)])
    assert result.exit_code == 1
    assert "params file not found" in result.output


def test_run_rejects_malformed_overrides():
    result = runner.invoke(app, ["run", "-S", "train.steps"])
    assert result.exit_code != 0 and "KEY=VALUE" in result.output


def test_open_clip_without_weights_is_refused(tmp_path):
    with pytest.raises(ValueError, match="random weights"):
        check_pretrained("ViT-B-16", None)
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag"):
        check_pretrained("ViT-B-16", "no-such-tag")


def test_missing_cached_weights_fail_clearly_without_network(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    cfg = ScoreConfig(model="ViT-B-16", pretrained="openai")
    with pytest.raises(RuntimeError, match="Offline, only checkpoint files on disk"):
        load_scorer(cfg, tmp_path)
    missing = ScoreConfig(model="ViT-B-16", pretrained=str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="neither a file"):
        load_scorer(missing, tmp_path)


def test_null_draw_is_seeded_by_key_and_skips_candidates():
    import numpy as np

    from mofi_core.curate.score import null_draw

    pool = np.arange(20)
    a = null_draw("000000001", pool, {3, 4}, 5, seed=0)
    assert len(a) == 5 and not {3, 4} & set(a.tolist())
    assert a.tolist() == null_draw("000000001", pool, {3, 4}, 5, seed=0).tolist()
    assert a.tolist() != null_draw("000000002", pool, {3, 4}, 5, seed=0).tolist()


def test_prompt_templates_are_checked():
    with pytest.raises(ValueError, match="must contain"):
        ScoreConfig(prompts=("a photo",))
    with pytest.raises(ValueError, match="may only use"):
        ScoreConfig(prompts=("{name} {colour}",))
    assert ScoreConfig(prompts=("{name}: {description}",)).prompts


def test_mofi_waits_long_enough_for_its_temporary_prefect_server(monkeypatch):
    """Prefect's 20 s default timed out on a busy 2-core machine before any stage ran; mofi
    sets a longer one unless the environment sets its own."""
    from prefect.settings import Settings

    from mofi_core import cli

    def timeout() -> int:  # what Prefect reads from the environment `mofi run` leaves
        return Settings().server.ephemeral.startup_timeout_seconds

    monkeypatch.setattr(cli, "app", lambda **_: None)
    monkeypatch.setattr(cli, "_skip_final_collection", lambda: None)  # not in pytest's process
    for key in {**cli.OFFLINE_DEFAULTS, **cli.PATIENT_DEFAULTS}:  # put back after the test
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    cli.main()
    assert timeout() == 120
    monkeypatch.setenv("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "45")
    cli.main()
    assert timeout() == 45


@pytest.mark.parametrize("outcome", ["return", "exit 3"])
def test_mofi_leaves_its_objects_to_the_os_at_exit_whatever_the_outcome(outcome):
    """The interpreter's last garbage collection is skipped (objects frozen) once the command
    is over, also when it fails; the exit status is the command's."""
    import subprocess
    import sys

    body = "None" if outcome == "return" else "sys.exit(3)"
    code = ("import gc, sys\nfrom mofi_core import cli\n"
            f"cli.app = lambda **_: {body}\n"
            "try:\n    cli.main()\nfinally:\n    print(gc.get_freeze_count() > 0)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert done.stdout.strip() == "True", done.stderr
    assert done.returncode == (0 if outcome == "return" else 3)


def test_a_stage_summary_line_sums_up_lists_by_their_length():
    from mofi_core.cli import _flat, _fmt

    metrics = {"labels": {"precision": 0.94061, "curve": [{"t": 0.1}, {"t": 0.2}, {"t": 0.3}],
                          "pairs": 3248, "rule": "threshold"}}
    line = ", ".join(f"{k}={_fmt(v)}" for k, v in _flat(metrics).items())
    assert line == ("labels.precision=0.9406, labels.curve=[3 values], labels.pairs=3248, "
                    "labels.rule=threshold")
