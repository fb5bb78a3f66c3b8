"""Serving errors without a model server: what the encoder raises for bad input, how MLflow's
scoring app answers it, how the MOFI app rewrites error responses, and the slim requirements."""

from __future__ import annotations

import io
import json
import logging

import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from PIL import Image

from mofi_core.serving.app import CleanErrors, client_error, one_line
from mofi_core.serving.encoder import PathNotAllowed, images_from_frame, to_image
from mofi_core.serving.errors import INTERNAL_MESSAGE, InvalidInput

TRACE = 'Traceback (most recent call last):\n  File "/srv/x.py", line 1, in f\nValueError: x\n'


def _jpeg(size=(16, 12)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (1, 2, 3)).save(buf, format="JPEG")
    return buf.getvalue()


# --- the encoder's input errors -------------------------------------------------------------

def test_good_rows_decode():
    images = images_from_frame(pd.DataFrame({"image": [_jpeg(), _jpeg((5, 5))]}))
    assert [im.size for im in images] == [(16, 12), (5, 5)]


@pytest.mark.parametrize("frame, expected", [
    (pd.DataFrame({"image": [b"not an image"]}), "row 0: 'image' is not an image"),
    (pd.DataFrame({"image": [_jpeg()[:100]]}), "row 0: 'image' is not an image"),
    (pd.DataFrame({"image": [_jpeg(), b"\x89PNG\r\n\x1a\n garbage"]}), "row 1: 'image'"),
    (pd.DataFrame({"image": ["a string"]}), "row 0: 'image' must be the image file's bytes"),
    (pd.DataFrame({"image": []}), "the input has no rows"),
    (pd.DataFrame({"file": ["x"]}), "input needs an 'image' column .* got \\['file'\\]"),
    (pd.DataFrame({"image": [None], "path": [None]}), "row 0: each row needs 'image'"),
])
def test_bad_rows_are_invalid_input_with_one_line(frame, expected):
    with pytest.raises(InvalidInput, match=expected) as info:
        images_from_frame(frame)
    assert "\n" not in info.value.message
    assert info.value.get_http_status_code() == 400
    assert json.loads(info.value.serialize_as_json()).keys() >= {"error_code", "message"}
    assert "stack_trace" not in info.value.serialize_as_json()


def test_path_rows_name_only_what_the_client_sent(tmp_path):
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "ok.jpg").write_bytes(_jpeg())
    (root / "bad.jpg").write_bytes(b"nope")
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(_jpeg())
    assert to_image(None, "ok.jpg", root).size == (16, 12)
    cases = {"missing.jpg": "no such file", "sub": "cannot be read (Is a directory)",
             "bad.jpg": "'path' 'bad.jpg' is not an image", "a\x00b": "not a usable file path",
             "x" * 5000: "x" * 200 + "..."}
    for path, expected in cases.items():
        with pytest.raises(InvalidInput) as info:
            to_image(None, path, root)
        assert expected in info.value.message and str(root) not in info.value.message
        assert len(info.value.message) < 400
    with pytest.raises(PathNotAllowed, match="outside the model's allowed root") as info:
        to_image(None, "../secret.jpg", root)
    assert isinstance(info.value, PermissionError) and isinstance(info.value, MlflowException)
    with pytest.raises(PathNotAllowed, match="'path' input is off"):
        to_image(None, "ok.jpg", None)
    with pytest.raises(InvalidInput, match="'path' must be a string"):
        to_image(None, 5, root)


# --- the pyfunc model: only MlflowExceptions leave predict -----------------------------------

class _Broken:
    def embed(self, images):
        raise RuntimeError("CUDA out of memory at /srv/secret/path")


def _model(encoder, allowed_root=None):
    from mofi_core.serving.pyfunc_model import MofiEncoderModel

    model = MofiEncoderModel()
    model.encoder, model.allowed_root = encoder, allowed_root
    return model


def test_predict_turns_its_own_failures_into_a_500_without_details(caplog):
    caplog.set_level(logging.ERROR, logger="mofi.serving")
    with pytest.raises(MlflowException) as info:
        _model(_Broken()).predict(None, pd.DataFrame({"image": [_jpeg()]}))
    assert info.value.get_http_status_code() == 500
    assert info.value.message == INTERNAL_MESSAGE and "secret" not in info.value.message
    assert isinstance(info.value.__cause__, RuntimeError)  # in-process callers see the cause
    assert "CUDA out of memory" in caplog.text and "Traceback" in caplog.text  # server log


def test_predict_passes_input_errors_through():
    with pytest.raises(InvalidInput, match="row 0"):
        _model(_Broken()).predict(None, pd.DataFrame({"image": [b"junk"]}))
    with pytest.raises(PathNotAllowed):
        _model(_Broken()).predict(None, pd.DataFrame({"path": ["/etc/passwd"]}))


# --- MLflow's scoring app, with and without the MOFI wrapper ---------------------------------

@pytest.fixture(scope="module")
def scoring_apps(tmp_path_factory):
    """MLflow's scoring app for a tiny pyfunc whose predict raises what its input asks for:
    ``(plain app, app behind CleanErrors)``."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    code = tmp_path_factory.mktemp("pyfunc") / "raiser.py"
    code.write_text(
        "import mlflow\n"
        "from mlflow.pyfunc import PythonModel\n"
        "from mofi_core.serving.errors import InvalidInput\n"
        "class Raiser(PythonModel):\n"
        "    def predict(self, context, model_input, params=None):\n"
        "        kind = model_input['kind'][0]\n"
        "        if kind == 'invalid':\n"
        "            raise InvalidInput('row 0: that is not an image')\n"
        "        if kind == 'bug':\n"
        "            raise ValueError('something internal at /srv/app.py')\n"
        "        return [[1.0, 0.0]]\n"
        "mlflow.models.set_model(Raiser())\n")
    path = tmp_path_factory.mktemp("model") / "m"
    mlflow.pyfunc.save_model(path, python_model=str(code), pip_requirements=["mlflow"])
    with pytest.MonkeyPatch.context() as mp:  # init() marks the process as a server: undone
        mp.delenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", raising=False)
        app = scoring_server.init(mlflow.pyfunc.load_model(str(path)))
        yield app, CleanErrors(app)


def _post(app, body, content_type="application/json"):
    from starlette.testclient import TestClient

    client = TestClient(app, raise_server_exceptions=False)  # no lifespan: http only
    data = json.dumps(body) if isinstance(body, dict) else body
    r = client.post("/invocations", content=data, headers={"Content-Type": content_type})
    try:
        return r.status_code, r.json()
    except ValueError:
        return r.status_code, r.text


def _kind(kind: str) -> dict:
    return {"dataframe_split": {"columns": ["kind"], "data": [[kind]]}}


def test_mlflow_sends_no_trace_for_an_mlflow_exception_but_does_for_others(scoring_apps):
    """Why the model raises MlflowExceptions: MLflow's server adds ``stack_trace`` to every
    other exception raised in predict."""
    plain, _ = scoring_apps
    status, body = _post(plain, _kind("invalid"))
    assert status == 400 and "stack_trace" not in body
    assert body["message"].endswith("Error: row 0: that is not an image")
    status, body = _post(plain, _kind("bug"))
    assert status == 400 and "Traceback" in body["stack_trace"]


@pytest.mark.parametrize("body, content_type, status, expected", [
    (_kind("invalid"), "application/json", 400, "row 0: that is not an image"),
    (_kind("bug"), "application/json", 400, "Encountered an unexpected error while evaluating"),
    ('kind\n"open', "text/csv", 400, "Failed to parse input as a Pandas DataFrame"),
    ("not json", "application/json", 400, "Invalid input. Ensure that input is a valid JSON"),
    ("{}", "text/plain", 415, "This predictor only supports"),
])
def test_clean_errors_sends_one_line_and_logs_the_rest(scoring_apps, caplog, body,
                                                       content_type, status, expected):
    caplog.set_level(logging.WARNING, logger="mofi.serving")
    got, answer = _post(scoring_apps[1], body, content_type)
    assert got == status and isinstance(answer, dict), answer
    assert set(answer) == {"error_code", "message"}
    assert answer["message"].startswith(expected) and "\n" not in answer["message"]
    for marker in ("Traceback", 'File "', "stack_trace", "/srv/app.py"):
        assert marker not in json.dumps(answer)
    assert f"POST /invocations -> {status}" in caplog.text


def test_clean_errors_passes_successes_through(scoring_apps):
    status, body = _post(scoring_apps[1], _kind("fine"))
    assert status == 200 and body == {"predictions": [[1.0, 0.0]]}


def test_clean_errors_rewrites_routing_errors_too(scoring_apps):
    from starlette.testclient import TestClient

    r = TestClient(scoring_apps[1]).get("/nowhere")
    assert r.status_code == 404
    assert r.json() == {"error_code": "ENDPOINT_NOT_FOUND", "message": "Not Found"}
    assert TestClient(scoring_apps[1]).get("/ping").status_code == 200


def test_clean_errors_answers_an_exception_that_escapes_the_app(caplog):
    async def crashing(scope, receive, send):
        raise RuntimeError("boom at /srv/secret")

    caplog.set_level(logging.ERROR, logger="mofi.serving")
    status, body = _post(CleanErrors(crashing), {})
    assert status == 500 and body["error_code"] == "INTERNAL_ERROR"
    assert "secret" not in body["message"] and "boom" in caplog.text


@pytest.mark.parametrize("message, expected", [
    ("Failed to predict data '   path\n0  x'. \nError: row 0: bad", "row 0: bad"),
    ("Failed to predict data 'a\nError: fake'. \nError: the real one", "the real one"),
    ("Failed to predict data 'd'. \nError: Failed to enforce schema of data 'x\ny' with "
     "schema 'S'. Error: Incompatible input types for column path.\nmore", "Incompatible input "
     "types for column path."),
    ("Invalid input. Bad JSON. Error: 'x'\nInput: \nsecret request", "Invalid input. Bad JSON."
     " Error: 'x'"),
    (TRACE, ""),
    ("x" * 900, "x" * 497 + "..."),
])
def test_one_line(message, expected):
    assert one_line(message) == expected


def test_client_error_without_json_or_message():
    assert client_error(504, b"Request processing time exceeded limit") == {
        "error_code": "DEADLINE_EXCEEDED", "message": "Request processing time exceeded limit"}
    assert client_error(500, TRACE.encode()) == {
        "error_code": "INTERNAL_ERROR",
        "message": "the server failed on this request; its log has the details"}
    assert client_error(400, json.dumps({"stack_trace": TRACE}).encode())["message"] == \
        "the request could not be processed"


# --- the slim requirements ------------------------------------------------------------------

def test_requirements_pin_the_installed_versions_behind_the_cpu_index():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    from mofi_core.serving.requirements import serving_requirements

    lines = serving_requirements()
    assert lines[0] == "--extra-index-url https://download.pytorch.org/whl/cpu"
    pins = {r.name: str(r.specifier) for r in map(Requirement, lines[1:])}
    assert set(pins) == {"mlflow", "torch", "torchvision", "open-clip-torch", "safetensors",
                         "pillow", "pandas", "numpy"}
    for name, pin in pins.items():
        assert pin == f"=={version(name).split('+')[0]}", name  # no "+cu130"


def test_mlflow_skinny_option():
    from mofi_core.serving.requirements import serving_requirements

    lines = serving_requirements(mlflow_dist="mlflow-skinny")
    assert any(x.startswith("mlflow-skinny==") for x in lines)
    assert not any(x.startswith("mlflow==") for x in lines)
    with pytest.raises(ValueError, match="mlflow_dist"):
        serving_requirements(mlflow_dist="mlflow[extras]")


def _wheel(folder, name: str, version: str) -> None:
    import base64
    import hashlib
    import zipfile

    info = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": f"VERSION = {version!r}\n",
             f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                              "Tag: py3-none-any\n"}
    record = []
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest())
            record.append(f"{path},sha256={digest.rstrip(b'=').decode()},{len(text)}")
        z.writestr(f"{info}/RECORD", "\n".join([*record, f"{info}/RECORD,,"]) + "\n")


@pytest.mark.parametrize("cpu_first", [True, False])
def test_pip_takes_the_cpu_build_for_a_public_pin(tmp_path, cpu_first):
    """What makes ``torch==X`` + the CPU index install ``X+cpu``: offline, with two local
    "indexes" holding ``X`` (PyPI's CUDA build) and ``X+cpu``."""
    import os
    import subprocess
    import sys

    pypi, cpu = tmp_path / "pypi", tmp_path / "cpu"
    for folder, version in ((pypi, "2.14.1"), (cpu, "2.14.1+cpu")):
        folder.mkdir()
        _wheel(folder, "torchprobe", version)
    links = [cpu, pypi] if cpu_first else [pypi, cpu]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    done = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--no-index",
                           "--ignore-installed", "--disable-pip-version-check",
                           *(f"--find-links={x}" for x in links), "torchprobe==2.14.1"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Would install torchprobe-2.14.1+cpu" in done.stdout, done.stdout
