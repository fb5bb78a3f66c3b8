"""``mofi serve-model``: MLflow's scoring server for the encoder, with client-safe errors.

It serves exactly what ``mlflow models serve --env-manager local`` serves (same routes:
``/invocations``, ``/ping``, ``/health``, ``/version``; same request formats), in the current
environment (nothing is installed), with one difference: every error response is rewritten to
``{"error_code": ..., "message": <one line>}``. MLflow's own server puts a Python
``stack_trace`` into the body when a CSV or Parquet body does not parse or when a model raises
something other than an ``MlflowException``, and wraps prediction errors in a multi-line message
that repeats the request data. Here the full original body (trace included) is logged on the
server (logger ``mofi.serving``) and the client gets only the one-line reason.

    python -m mofi_core.serving.app --model models:/mofi-encoder@champion --port 5001
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

logger = logging.getLogger("mofi.serving")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message],
                                                                       Awaitable[None]]],
                   Awaitable[None]]

MAX_MESSAGE = 500
# the environment the factory reads (uvicorn workers are started by import string)
ENV_MODEL_URI = "MOFI_SERVE_MODEL_URI"
ENV_MODEL_CONFIG = "MOFI_SERVE_MODEL_CONFIG"
_STATUS_CODES = {400: "BAD_REQUEST", 404: "ENDPOINT_NOT_FOUND", 405: "BAD_REQUEST",
                 413: "BAD_REQUEST", 415: "BAD_REQUEST", 422: "BAD_REQUEST",
                 429: "REQUEST_LIMIT_EXCEEDED", 503: "TEMPORARILY_UNAVAILABLE",
                 504: "DEADLINE_EXCEEDED"}
# MLflow wraps an error raised while predicting as "Failed to predict data '<the data>'.
# \nError: <reason>", and a schema mismatch as "Failed to enforce schema of data '<the data>'
# with schema '<schema>'. Error: <reason>": the client needs <reason>
_PREDICT_WRAPPER = re.compile(r"^Failed to predict data .*\nError: (?P<reason>.*)\Z", re.DOTALL)
_SCHEMA_WRAPPER = re.compile(r"^Failed to enforce schema of data .*\. Error: (?P<reason>.*)\Z",
                             re.DOTALL)


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """The reason in an MLflow scoring-server error message, as one line of at most ``limit``
    characters (no echoed request data, no traceback)."""
    message = str(message).strip()
    for wrapper in (_PREDICT_WRAPPER, _SCHEMA_WRAPPER):
        if m := wrapper.match(message):
            message = m.group("reason").strip()
    line = next((x.strip() for x in message.splitlines() if x.strip()), "")
    if line.lower().startswith("traceback"):  # never a trace, whatever produced it
        line = ""
    if len(line) > limit:
        line = line[: limit - 3] + "..."
    return line


def client_error(status: int, body: bytes) -> dict[str, str]:
    """The body a client gets for an error response ``status`` whose original body was
    ``body`` (MLflow's JSON error, or plain text)."""
    try:
        data = json.loads(body)
    except ValueError:
        data = None
    if isinstance(data, dict):  # MLflow's error, or FastAPI's {"detail": ...} (404, 405)
        code, message = data.get("error_code"), data.get("message") or data.get("detail", "")
    else:
        code, message = None, body.decode("utf-8", "replace")
    if not isinstance(code, str) or not code:
        code = _STATUS_CODES.get(status, "BAD_REQUEST" if status < 500 else "INTERNAL_ERROR")
    text = one_line(message if isinstance(message, str) else json.dumps(message))
    if not text:
        text = ("the request could not be processed" if status < 500 else
                "the server failed on this request; its log has the details")
    return {"error_code": code, "message": text}


class CleanErrors:
    """ASGI middleware: error responses (status >= 400) leave as one-line JSON; the original
    body is logged. Exceptions that escape the app become a logged 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: Message | None = None  # the start of an error response, sent once rewritten
        chunks: list[bytes] = []
        state = {"started": False}

        async def rewrite(message: Message) -> None:
            nonlocal held
            kind = message["type"]
            if kind == "http.response.start" and message["status"] >= 400:
                held = message
                return
            if kind == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if not message.get("more_body", False):
                    await self._send_error(scope, send, held["status"], b"".join(chunks))
                    state["started"] = True
                return
            if kind == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, receive, rewrite)
        except Exception:
            logger.exception("%s %s failed", scope.get("method"), scope.get("path"))
            if not state["started"]:
                await self._send_error(scope, send, 500, b"")

    @staticmethod
    async def _send_error(scope: Scope, send, status: int, original: bytes) -> None:
        level = logging.ERROR if status >= 500 else logging.WARNING
        logger.log(level, "%s %s -> %d: %s", scope.get("method"), scope.get("path"), status,
                   original.decode("utf-8", "replace"))
        body = json.dumps(client_error(status, original)).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def create_app(model_uri: str, model_config: dict[str, Any] | None = None) -> CleanErrors:
    """MLflow's scoring app for the pyfunc model at ``model_uri`` (loaded here, in this
    environment), behind :class:`CleanErrors`. ``model_config`` overrides the logged one,
    e.g. ``{"allowed_root": "/srv/images"}`` to let ``path`` rows read from that folder."""
    import mlflow
    from mlflow.pyfunc import scoring_server

    model = mlflow.pyfunc.load_model(model_uri, model_config=model_config or None)
    return CleanErrors(scoring_server.init(model))


def app_from_env() -> CleanErrors:
    """:func:`create_app` for the model named in ``MOFI_SERVE_MODEL_URI`` (config as JSON in
    ``MOFI_SERVE_MODEL_CONFIG``): the factory uvicorn's workers import."""
    config = os.environ.get(ENV_MODEL_CONFIG)
    return create_app(os.environ[ENV_MODEL_URI], json.loads(config) if config else None)


def serve(model_uri: str, host: str = "127.0.0.1", port: int = 5001,
          allowed_root: str | None = None, workers: int = 1, timeout: int | None = None
          ) -> None:
    """Serve the model until interrupted (blocks). ``allowed_root``: a folder ``path`` rows
    may read from (default: the logged ``register.serve_path_root``). ``timeout``: seconds a
    request may take (MLflow's ``MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``, default 60)."""
    import mlflow
    import uvicorn

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # workers are new processes: they find the registry through the environment
    os.environ.setdefault("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())
    if timeout is not None:
        os.environ["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(timeout)
    os.environ[ENV_MODEL_URI] = model_uri
    if allowed_root:
        os.environ[ENV_MODEL_CONFIG] = json.dumps({"allowed_root": str(allowed_root)})
    else:
        os.environ.pop(ENV_MODEL_CONFIG, None)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s "
                                                   "%(message)s")
    uvicorn.run("mofi_core.serving.app:app_from_env", factory=True, host=host, port=port,
                workers=workers, log_level="info")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mofi_core.serving.app",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models:/mofi-encoder@champion",
                        help="MLflow model URI (default %(default)s)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=5001)
    parser.add_argument("--allowed-root", default=None,
                        help="folder 'path' rows may be read from (default: as logged)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--timeout", type=int, default=None, help="seconds per request")
    args = parser.parse_args(argv)
    serve(args.model, args.host, args.port, args.allowed_root, args.workers, args.timeout)


if __name__ == "__main__":
    main()
