"""Errors a client of the served encoder sees: one line, the right HTTP status, no traceback.

MLflow's scoring server (``mlflow models serve``, ``mlflow models build-docker``) turns an
:class:`~mlflow.exceptions.MlflowException` raised by ``predict`` into a JSON body of its
``error_code`` and ``message`` only, with the status of the code (``INVALID_PARAMETER_VALUE``:
400). Any other exception becomes a 400 whose body carries the Python ``stack_trace``. So the
model raises :class:`InvalidInput` for a request it cannot embed, and :func:`internal_error`
(the traceback logged on the server, not sent) for its own failures.
"""

from __future__ import annotations

import logging

from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INTERNAL_ERROR, INVALID_PARAMETER_VALUE

logger = logging.getLogger("mofi.serving")

INTERNAL_MESSAGE = "the encoder failed on this input; the server log has the details"


class InvalidInput(MlflowException):
    """A request the model cannot embed (HTTP 400); the message says what to send instead."""

    def __init__(self, message: str) -> None:
        super().__init__(message, error_code=INVALID_PARAMETER_VALUE)


def internal_error(err: BaseException) -> MlflowException:
    """What to raise (``from err``) when embedding fails for a reason that is not the client's:
    the traceback goes to the server log, the client gets a 500 without it."""
    logger.error("embedding failed", exc_info=err)
    return MlflowException(INTERNAL_MESSAGE, error_code=INTERNAL_ERROR)
