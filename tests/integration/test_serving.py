"""Serving the registered encoder over HTTP: real server processes on 127.0.0.1 (nothing
installed: ``--env-manager local`` / the project's venv), a model in a temporary sqlite store.

- ``mlflow models serve``: errors raised by the model reach the client without a traceback;
- ``mofi serve-model`` (``mofi_core.serving.app``): every error response is
  one line of JSON, the traceback stays in the server log;
- the slim requirements logged with the model take torch from PyTorch's CPU index.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from mofi_core import tracking
from mofi_core.config.register import RegisterConfig
from mofi_core.registry import register
from mofi_core.train.run import train_model
from tests.ports import free_port
from tests.servers import healthy, stop_group

BIN = Path(sys.executable).parent
MODEL = "models:/mofi-encoder@champion"
TRACE_MARKERS = ("Traceback", 'File "', "stack_trace")


@pytest.fixture(scope="module")
def model_dir(truth_i2e, tmp_path_factory):
    """A classifier trained a few steps on the truth-labelled I2E set."""
    _, params, i2e = truth_i2e
    out = tmp_path_factory.mktemp("serve") / "model"
    train_model(i2e, out, params.train.model_copy(update={"steps": 5}), lambda s, r: None)
    return out


@pytest.fixture(scope="module")
def store(model_dir, tmp_path_factory):
    """A sqlite MLflow store holding ``mofi-encoder@champion``; yields its environment."""
    root = tmp_path_factory.mktemp("serve-store")
    env = {"MOFI_TRACKING": "on", "MLFLOW_TRACKING_URI": f"sqlite:///{root / 'mlflow.db'}"}
    with pytest.MonkeyPatch.context() as mp:
        for k, v in env.items():
            mp.setenv(k, v)
        with tracking.run("register", root):
            register(model_dir, {"multitask": {"gpr_map": 0.5}}, root, RegisterConfig())
    return env


@pytest.fixture(scope="module")
def images(tiny_world, tmp_path_factory):
    """(allowed root for 'path' rows, an image file inside it, an image file outside it)."""
    outside = sorted(tiny_world[0].gpr.glob("*.jpg"))[0]
    allowed = tmp_path_factory.mktemp("served-images")
    inside = allowed / "ok.jpg"
    inside.write_bytes(outside.read_bytes())
    return allowed, inside, outside


class Server:
    """A server process in its own process group on a free loopback port; its output goes to
    ``log``. Stopped (SIGTERM, then SIGKILL) on exit."""

    def __init__(self, argv: list[str], port: int, env: dict[str, str], log: Path,
                 startup_timeout_s: float = 180) -> None:
        self.argv, self.port, self.env, self.log_path = argv, port, env, log
        self.url = f"http://127.0.0.1:{port}"
        self.timeout = startup_timeout_s

    def __enter__(self) -> Server:
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=self.log_path.parent)  # nothing lands in the checkout
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            if healthy(self.url):
                return self
            time.sleep(0.5)
        self.__exit__()
        raise RuntimeError(f"{self.argv[:4]} did not answer on {self.url}:\n{self.output()}")

    def output(self, tail: int | None = 5000) -> str:
        self.log.flush()
        text = self.log_path.read_text(errors="replace")
        return text[-tail:] if tail else text

    def __exit__(self, *exc) -> None:
        stop_group(self.proc, ((signal.SIGTERM, 20), (signal.SIGKILL, 10)))
        self.log.close()


def _server_env(store: dict[str, str], **extra: str) -> dict[str, str]:
    env = {**os.environ, **store, "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1",
           "HF_HUB_OFFLINE": "1", **extra}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


@pytest.fixture(scope="module")
def mlflow_server(store, images, tmp_path_factory):
    """``mlflow models serve --env-manager local``: no environment is created, nothing is
    installed; 'path' rows allowed under the test folder (``SERVING_MODEL_CONFIG``)."""
    port = free_port()
    argv = [str(BIN / "mlflow"), "models", "serve", "-m", MODEL, "--env-manager", "local",
            "-h", "127.0.0.1", "-p", str(port)]
    env = _server_env(store, SERVING_MODEL_CONFIG=json.dumps({"allowed_root": str(images[0])}))
    with Server(argv, port, env, tmp_path_factory.mktemp("logs") / "mlflow.log") as server:
        yield server


@pytest.fixture(scope="module")
def mofi_server(store, images, tmp_path_factory):
    """The MOFI serving app (``mofi serve-model``), same model, same allowed folder."""
    port = free_port()
    argv = [str(Path(sys.executable).parent / "mofi"), "serve-model", "--model", MODEL,
            "--host", "127.0.0.1", "--port", str(port), "--allowed-root", str(images[0])]
    with Server(argv, port, _server_env(store),
                tmp_path_factory.mktemp("logs") / "mofi.log") as server:
        yield server


def post(url: str, body: bytes | str | dict, content_type: str = "application/json"
         ) -> tuple[int, dict | str]:
    data = json.dumps(body).encode() if isinstance(body, dict) else (
        body.encode() if isinstance(body, str) else body)
    req = urllib.request.Request(f"{url}/invocations", data=data, method="POST",
                                 headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def frame(**columns) -> dict:
    """A ``dataframe_split`` request with the given columns (lists of cells)."""
    names = list(columns)
    return {"dataframe_split": {"columns": names,
                                "data": [list(row) for row in zip(*columns.values(),
                                                                  strict=True)]}}


def assert_clean(status: int, body, *, one_line: bool) -> str:
    """A 4xx JSON error without a traceback; returns its message."""
    assert 400 <= status < 500, (status, body)
    assert isinstance(body, dict), body
    text = json.dumps(body)
    for marker in TRACE_MARKERS:
        assert marker not in text, body
    assert set(body) <= {"error_code", "message", "sqlstate", "error_class"}, body
    message = body["message"]
    print(status, json.dumps(body))  # shown by pytest -rA
    assert message.strip(), body
    if one_line:
        assert "\n" not in message and len(message) <= 500, message
    return message


def not_an_image() -> bytes:
    return b"this is not an image, just some bytes"


def truncated_jpeg(image: Path) -> bytes:
    return image.read_bytes()[:200]


# (request, content type, what the message must say) -> one line from the MOFI app;
# the reason inside MLflow's own message from `mlflow models serve`
BAD = {
    "not an image": (lambda i: frame(image=[b64(not_an_image())]), "application/json",
                     "row 0: 'image' is not an image this model can read"),
    "truncated image": (lambda i: frame(image=[b64(truncated_jpeg(i[1]))]),
                        "application/json", "row 0: 'image' is not an image"),
    "second row bad": (lambda i: frame(image=[b64(i[1].read_bytes()), b64(b"\x00\x01")]),
                       "application/json", "row 1: 'image' is not an image"),
    "empty body": (lambda i: b"", "application/json", "valid JSON"),
    "no rows": (lambda i: frame(image=[]), "application/json", "no rows"),
    "neither column": (lambda i: frame(path=[None]), "application/json",
                       "row 0: each row needs 'image' (bytes) or 'path'"),
    "null image": (lambda i: frame(image=[None]), "application/json",
                   "Data is not compatible with model signature"),
    "other columns": (lambda i: {"dataframe_records": [{"file": "x.jpg"}]},
                      "application/json", "input needs an 'image' column"),
    "path outside the root": (lambda i: frame(path=[str(i[2])]), "application/json",
                              "outside the model's allowed root"),
    "path escaping with ..": (lambda i: frame(path=["../" * 10 + "etc/passwd"]),
                              "application/json", "outside the model's allowed root"),
    "missing file": (lambda i: frame(path=["nope.jpg"]), "application/json",
                     "row 0: 'path' 'nope.jpg': no such file"),
    "a folder": (lambda i: frame(path=["."]), "application/json", "cannot be read"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_mlflow_models_serve_sends_no_traceback(mlflow_server, images, case):
    make, content_type, expected = BAD[case]
    status, body = post(mlflow_server.url, make(images), content_type)
    message = assert_clean(status, body, one_line=False)
    assert expected in message, message
    assert str(images[2].parent) not in message or case == "path outside the root"


@pytest.mark.parametrize("case", sorted(BAD))
def test_mofi_app_sends_one_line_without_traceback(mofi_server, images, case):
    make, content_type, expected = BAD[case]
    status, body = post(mofi_server.url, make(images), content_type)
    message = assert_clean(status, body, one_line=True)
    assert expected in message, message
    if case != "path outside the root":  # the client's own path, repeated
        assert str(images[2].parent) not in message and str(images[0]) not in message


@pytest.mark.parametrize("body, content_type, expected", [
    ("image\n\"unterminated", "text/csv", "Failed to parse input"),
    (b"PAR1 not parquet", "application/vnd.apache.parquet", "Failed to parse input"),
    ({"dataframe_split": {"columns": ["image"], "data": [[12345]]}}, "application/json",
     "Data is not compatible with model signature"),
    ({"dataframe_split": {"columns": ["path"], "data": [[12345]]}}, "application/json",
     "row 0: 'path' must be a string"),
    ({"unknown_format": []}, "application/json", "The input must be a JSON dictionary"),
    ("{}", "text/plain", "content types"),
])
def test_mofi_app_strips_the_traces_mlflow_adds(mofi_server, body, content_type, expected):
    """Parse errors and schema mismatches: MLflow's own server answers these with a
    ``stack_trace`` or with the request echoed over several lines."""
    status, answer = post(mofi_server.url, body, content_type)
    message = assert_clean(status, answer, one_line=True)
    assert expected in message, message
    assert "Failed to predict data" not in message


def test_the_mofi_app_logs_what_it_keeps_from_the_client(mofi_server):
    before = len(mofi_server.output(tail=None))
    status, _ = post(mofi_server.url, 'path\n"unterminated', "text/csv")
    assert status == 400
    deadline = time.monotonic() + 10
    while "-> 400" not in (new := mofi_server.output(tail=None)[before:]) and \
            time.monotonic() < deadline:
        time.sleep(0.2)
    assert "POST /invocations -> 400" in new and "stack_trace" in new and "Traceback" in new


def _embed_in_process(store, images, monkeypatch) -> np.ndarray:
    for k, v in store.items():
        monkeypatch.setenv(k, v)
    mlflow.set_tracking_uri(store["MLFLOW_TRACKING_URI"])
    model = mlflow.pyfunc.load_model(MODEL)
    return model.predict(pd.DataFrame({"image": [images[1].read_bytes()]}))


@pytest.mark.parametrize("server", ["mlflow_server", "mofi_server"])
def test_good_requests_return_embeddings(server, request, store, images, monkeypatch):
    url = request.getfixturevalue(server).url
    image = images[1].read_bytes()
    status, body = post(url, frame(image=[b64(image), b64(image)]))
    assert status == 200, body
    vectors = np.asarray(body["predictions"], dtype=np.float32)
    assert vectors.ndim == 2 and vectors.shape[0] == 2
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors[:1], _embed_in_process(store, images, monkeypatch),
                               atol=1e-5)
    # a path inside the allowed folder, records orientation
    status, body = post(url, {"dataframe_records": [{"path": images[1].name}]})
    assert status == 200, body
    np.testing.assert_allclose(np.asarray(body["predictions"]), vectors[:1], atol=1e-5)
    # the model's own input example (what `mlflow models` tools send)
    status, body = post(url, frame(image=[b64(_jpeg())]))
    assert status == 200 and len(body["predictions"]) == 1, body


def _jpeg() -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buf, format="JPEG")
    return buf.getvalue()


# --- the slim environment: what a fresh `mlflow models serve` / build-docker env installs ---

@pytest.fixture()
def logged_with_serving_requirements(model_dir, tmp_path, monkeypatch):
    """The encoder logged as the pipeline logs it (``serving.logged.log_encoder``, which
    takes its pip requirements from :func:`serving_requirements`); returns the local folder of
    the logged model."""
    from mofi_core.serving.logged import log_encoder

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = tracking.configure(tmp_path)  # artifacts beside the db, not in ./mlruns
    with mlflow.start_run(experiment_id=experiment):
        info = log_encoder(model_dir)
    return Path(mlflow.artifacts.download_artifacts(info.model_uri,
                                                    dst_path=str(tmp_path / "model")))


def test_logged_requirements_take_cpu_torch_from_the_pytorch_index(
        logged_with_serving_requirements, caplog):
    from importlib.metadata import version

    from packaging.requirements import Requirement

    folder = logged_with_serving_requirements
    lines = (folder / "requirements.txt").read_text().splitlines()
    assert lines[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    pins = {r.name: str(r.specifier) for r in map(Requirement, lines[1:])}
    for name in ("torch", "torchvision", "mlflow", "open-clip-torch", "safetensors", "pillow",
                 "pandas", "numpy"):
        assert pins.pop(name) == f"=={version(name).split('+')[0]}", name
    assert pins == {}  # nothing else (no nvidia-*, no inferred extras)
    env = yaml_load(folder / "python_env.yaml")
    assert env["dependencies"] == ["-r requirements.txt"]  # what virtualenv/uv pip-install
    conda = yaml_load(folder / "conda.yaml")
    pip_deps = next(d["pip"] for d in conda["dependencies"] if isinstance(d, dict))
    assert pip_deps == lines
    # the CUDA build installed here satisfies the pins: loading stays quiet (a "+cpu" pin
    # would print MLflow's mismatch warning into every `mofi embed` / `mofi search`)
    caplog.set_level(logging.WARNING)
    mlflow.pyfunc.load_model(str(folder))
    assert "mismatches" not in caplog.text


def yaml_load(path: Path):
    import yaml

    return yaml.safe_load(path.read_text())


# Run with only a slim site-packages on sys.path (python -S): load the logged model, embed an
# image, build MLflow's scoring app around it (what `mlflow models serve` runs in the env).
SLIM_SCRIPT = r"""
import sys
import mlflow, pandas as pd
from mlflow.pyfunc import scoring_server
assert not any("site-packages" in p and "slim-site" not in p for p in sys.path), sys.path
model = mlflow.pyfunc.load_model(sys.argv[1])
out = model.predict(pd.DataFrame({"image": [open(sys.argv[2], "rb").read()]}))
assert out.shape[0] == 1
scoring_server.init(model)
import uvicorn  # what `mlflow models serve` runs the app with
print("ok", mlflow.__file__)
"""


def _slim_site(dest: Path, dists: set[str]) -> Path:
    """A site-packages folder holding (as symlinks) exactly the files of ``dists``."""
    from importlib.metadata import PackageNotFoundError, distribution

    for name in dists:
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            continue
        for f in dist.files or []:
            if str(f).startswith(".."):  # console scripts in bin/
                continue
            src, dst = Path(dist.locate_file(f)), dest / f
            if src.is_file() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                dst.symlink_to(src)
    return dest


def _closure(roots: list[str]) -> set[str]:
    """Every distribution installing ``roots`` pulls in, as installed here (markers evaluated,
    requested extras followed)."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(canonicalize_name(r), frozenset()) for r in roots]
    while todo:
        item = todo.pop()
        if item in seen:
            continue
        seen.add(item)
        name, extras = item
        try:
            requires = distribution(name).requires or []
        except PackageNotFoundError:
            continue
        for line in requires:
            req = Requirement(line)
            if req.marker is None or any(req.marker.evaluate({"extra": e})
                                         for e in ("", *extras)):
                todo.append((canonicalize_name(req.name), frozenset(req.extras)))
    return {name for name, _ in seen}


def test_the_served_model_needs_nothing_outside_the_serving_requirements(
        logged_with_serving_requirements, images, tmp_path):
    """Only the files of the distributions the requirements install (their dependency closure,
    as installed here) are importable; mofi_core comes from the model's code folder."""
    from packaging.requirements import Requirement

    from mofi_core.serving.requirements import serving_requirements

    roots = [Requirement(x).name for x in serving_requirements() if not x.startswith("-")]
    site = _slim_site(tmp_path / "slim-site", _closure(roots))
    assert not any((site / m).exists() for m in ("mofi_core", "dvc", "prefect", "spacy"))
    env = {**_server_env({}), "PYTHONPATH": str(site), "PYTHONNOUSERSITE": "1"}
    done = subprocess.run([sys.executable, "-S", "-c", SLIM_SCRIPT,
                           str(logged_with_serving_requirements), str(images[1])],
                          capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok") and "slim-site" in done.stdout, done.stdout
