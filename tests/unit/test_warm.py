"""Warm start (mofi_core.warm): a command run through the warm server behaves, for its caller,
as the same command run in the caller's own process: folder, environment, arguments, streams,
exit code, signals both ways, and death when the caller is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from mofi_core import warm

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.skipif(not warm.supported(), reason="needs fork, pidfd and fd passing")

# a client process: delegates its arguments to the server; 99 when it would start cold
CLIENT = ("import sys\nfrom mofi_core import warm\n"
          "code = warm.delegate(sys.argv[2:], sys.argv[1])\n"
          "sys.exit(99) if code is None else warm.exit_like(code)\n")


def _wait_for(predicate, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {seconds} s")
        time.sleep(0.05)


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))  # the server imports tests.warm_target
    with warm.server(on=True, entry="tests.warm_target:main", preload=("json",)) as path:
        assert path is not None
        _wait_for(lambda: os.path.exists(path) or os.path.exists(path + warm.FAILED))
        assert not os.path.exists(path + warm.FAILED), Path(path + warm.FAILED).read_text()
        yield path


def _client(path: str, *argv: str, cwd: Path | None = None, env: dict | None = None,
            **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", CLIENT, path, *argv], cwd=cwd,
                            env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kwargs)


def test_command_sees_the_clients_folder_environment_arguments_and_streams(server, tmp_path):
    proc = _client(server, "echo", "3", cwd=tmp_path, env={"FOO": "bar"},
                   stdin=subprocess.PIPE)
    out, err = proc.communicate("piped in", timeout=30)
    assert proc.returncode == 3, err
    assert f"cwd={tmp_path}" in out.splitlines()
    assert "FOO=bar" in out.splitlines()
    assert "socket=None" in out.splitlines()  # what the stage launches starts cold
    assert "argv=['mofi', 'echo', '3']" in out.splitlines()
    assert "stdin=piped in" in out.splitlines()
    assert err.strip() == "to stderr"


def test_exit_code_zero_and_an_uncaught_error(server, tmp_path):
    ok = _client(server, "echo", "0", stdin=subprocess.DEVNULL)
    ok.communicate(timeout=30)
    assert ok.returncode == 0
    bug = _client(server, "raise")
    _, err = bug.communicate(timeout=30)
    assert bug.returncode == 1
    assert "ValueError: a stage bug" in err


def test_a_stage_killed_by_a_signal_leaves_its_caller_killed_by_it(server):
    proc = _client(server, "die")
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGTERM


def test_a_signal_to_the_caller_reaches_the_stage(server, tmp_path):
    pid_file = tmp_path / "pid"
    proc = _client(server, "wait", str(pid_file))
    _wait_for(pid_file.exists)
    assert int(pid_file.read_text()) != proc.pid  # the stage is a process of its own
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=30)
    assert out.strip() == f"got signal {int(signal.SIGTERM)}"
    assert proc.returncode == 7


def test_killing_the_caller_outright_kills_the_stage(server, tmp_path):
    pid_file = tmp_path / "pid"
    proc = _client(server, "wait", str(pid_file))
    _wait_for(pid_file.exists)
    stage = int(pid_file.read_text())
    proc.kill()
    proc.wait(timeout=30)

    def gone() -> bool:
        try:
            os.kill(stage, 0)
        except ProcessLookupError:
            return True
        return False

    _wait_for(gone, 10)


def test_server_stops_and_removes_its_folder_when_the_block_ends(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    with warm.server(on=True, entry="tests.warm_target:main", preload=()) as path:
        _wait_for(lambda: os.path.exists(path))
    assert not Path(path).parent.exists()
    proc = _client(path, "echo", "0")  # a late client finds no server and starts cold
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 99
    assert "the warm server is not ready yet; starting cold" in err


def test_off_switch_and_a_failed_server(monkeypatch, tmp_path):
    monkeypatch.setenv(warm.SWITCH_ENV, "off")
    with warm.server() as path:
        assert path is None
    with warm.server(on=False) as path:
        assert path is None
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv(warm.SWITCH_ENV)
    with warm.server(entry="tests.warm_target:no_such_function", preload=()) as path:
        _wait_for(lambda: os.path.exists(path + warm.FAILED))
        proc = _client(path, "echo", "0")
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 99
    assert "the warm server failed (AttributeError" in err
    assert "no_such_function" in err


def test_mofi_command_runs_cold_when_the_server_is_missing(tmp_path):
    env = {**os.environ, warm.SOCKET_ENV: str(tmp_path / "missing" / "sock")}
    done = subprocess.run([sys.executable, "-c", "from mofi_core.cli import main; main()",
                           "--help"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout
    assert "not ready yet; starting cold" in done.stderr


def test_mofi_command_through_the_server(monkeypatch, tmp_path):
    """The real entry: `mofi` delegates and exits with the command's code (2: usage error)."""
    with warm.server(on=True, preload=("mofi_core.cli",)) as path:
        _wait_for(lambda: os.path.exists(path) or os.path.exists(path + warm.FAILED))
        env = {**os.environ, warm.SOCKET_ENV: path}
        done = subprocess.run([sys.executable, "-c", "from mofi_core.cli import main; main()",
                               "no-such-command"], env=env, capture_output=True, text=True,
                              timeout=120, cwd=tmp_path)
    assert done.returncode == 2
    assert "No such command 'no-such-command'" in done.stderr
    assert "starting cold" not in done.stderr


def test_server_refuses_to_fork_with_threads(tmp_path):
    stop = threading.Event()
    other = threading.Thread(target=stop.wait)
    other.start()
    try:
        with pytest.raises(RuntimeError, match="threads after its imports"):
            warm.serve(str(tmp_path / "sock"))
    finally:
        stop.set()
        other.join()
    assert not (tmp_path / "sock").exists()


# `mofi warm CMD`: a command (what `dvc repro` is to it) whose `mofi` clients find the server
WRAPPED = ("import os, subprocess, sys, time\n"
           "path = os.environ['MOFI_WARM_SOCKET']\n"
           "print('socket-path=' + path, flush=True)\n"
           "while not os.path.exists(path): time.sleep(0.05)\n"
           "sys.exit(subprocess.run([sys.executable, '-c', sys.argv[1], path, 'echo', '4'])"
           ".returncode)\n")


def test_wrap_runs_a_command_whose_mofi_clients_use_the_server(monkeypatch, capfd):
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    monkeypatch.delenv(warm.SOCKET_ENV, raising=False)
    code = warm.wrap([sys.executable, "-c", WRAPPED, CLIENT], on=True,
                     entry="tests.warm_target:main", preload=("json",))
    out = capfd.readouterr().out
    assert code == 4  # the stand-in stage's code, through the client and the wrapped command
    assert "argv=['mofi', 'echo', '4']" in out
    path = next(ln for ln in out.splitlines() if ln.startswith("socket-path="))
    assert not Path(path.split("=", 1)[1]).parent.exists()  # the server went with its folder
    assert warm.SOCKET_ENV not in os.environ


def test_wrap_passes_on_sigterm_and_the_commands_exit_code(tmp_path):
    pid_file = tmp_path / "pid"
    waiter = ("import signal, sys, time\nfrom pathlib import Path\n"
              "signal.signal(signal.SIGTERM, lambda s, f: sys.exit(7))\n"
              f"Path({str(pid_file)!r}).write_text('up')\ntime.sleep(60)\n")
    wrapper = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom mofi_core import warm\n"
         "sys.exit(warm.wrap(sys.argv[1:], on=False))", sys.executable, "-c", waiter])
    _wait_for(pid_file.exists)
    wrapper.send_signal(signal.SIGTERM)
    assert wrapper.wait(timeout=30) == 7


def test_mofi_warm_refuses_a_missing_command_before_starting_anything():
    def mofi(*argv):
        return subprocess.run([sys.executable, "-c", "from mofi_core.cli import main; main()",
                               "warm", *argv], capture_output=True, text=True, timeout=120)

    missing = mofi("no-such-tool-mofi", "repro")
    assert missing.returncode == 1
    assert "'no-such-tool-mofi' is not a command on PATH" in missing.stderr.splitlines()[-1]
    assert "warm start: ready" not in missing.stderr
    assert mofi().returncode == 2  # usage: a command is required
    passed = mofi("--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert passed.returncode == 3
