"""`mofi remote-s3` + `dvc push` / `dvc pull` against the real S3 server."""

import os
import shutil
import subprocess

from mofi_core.io import s3
from tests.conftest import BIN

DVC_YAML = """
stages:
  make:
    cmd: python -c "import os, pathlib; d = pathlib.Path('out'); d.mkdir(exist_ok=True); (d / 'a.bin').write_bytes(os.urandom(300000)); pathlib.Path('b.txt').write_text('b')"
    outs: [out, b.txt]
"""  # noqa: E501


def _project(tmp_path, env):
    root = tmp_path / "proj"
    root.mkdir()
    (root / "dvc.yaml").write_text(DVC_YAML)
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"],
                ["dvc", "config", "core.analytics", "false"], ["dvc", "repro", "-q"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)
    return root


def _run(root, env, *cmd):
    proc = subprocess.run(list(cmd), cwd=root, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, f"{cmd}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
    return proc


def _clean_env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env["PATH"] = f"{BIN}{os.pathsep}{env['PATH']}"
    return env


def test_push_and_pull_with_credentials_from_the_environment(s3_env, s3_server, tmp_path):
    env = {**_clean_env(), **s3_server.env()}
    root = _project(tmp_path, env)
    want = (root / "out" / "a.bin").read_bytes()
    _run(root, env, "mofi", "remote-s3", f"{s3_env}/dvc")
    config, local = (root / ".dvc" / "config").read_text(), \
        (root / ".dvc" / "config.local").read_text()
    assert f"url = {s3_env}/dvc" in config and "remote = storage" in config
    assert s3_server.endpoint in local
    for secret in (s3_server.env()["AWS_SECRET_ACCESS_KEY"], "secret_access_key"):
        assert secret not in config and secret not in local
    _run(root, env, "dvc", "push", "-q")
    shutil.rmtree(root / ".dvc" / "cache")
    shutil.rmtree(root / "out")
    (root / "b.txt").unlink()
    _run(root, env, "dvc", "pull", "-q")
    assert (root / "out" / "a.bin").read_bytes() == want and (root / "b.txt").read_text() == "b"


def test_stored_credentials_live_only_in_config_local(s3_env, s3_server, tmp_path):
    env = {**_clean_env(), **s3_server.env()}
    root = _project(tmp_path, env)
    _run(root, env, "mofi", "remote-s3", f"{s3_env}/dvc2", "--store-credentials")
    secret = s3_server.env()["AWS_SECRET_ACCESS_KEY"]
    assert secret in (root / ".dvc" / "config.local").read_text()
    assert secret not in (root / ".dvc" / "config").read_text()
    ignored = subprocess.run(["git", "check-ignore", ".dvc/config.local"], cwd=root,
                             capture_output=True).returncode
    assert ignored == 0  # never committed
    _run(root, _clean_env(), "dvc", "push", "-q")  # keys from config.local only
    assert len(list(s3.list_objects(f"{s3_env}/dvc2/"))) == 3  # a.bin, b.txt, the dir listing
