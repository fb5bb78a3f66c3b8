"""MLflow pyfunc model, logged as code (``python_model=<this file>``): loading it runs this file
and reads safetensors weights + JSON metadata from the ``model_dir`` artifact; no pickle.

``predict`` raises only :class:`~mlflow.exceptions.MlflowException`\\ s: input it cannot embed
is an :class:`~mofi_core.serving.errors.InvalidInput` (HTTP 400, one-line message), any other
failure is logged with its traceback and raised as a plain 500. A scoring server therefore
never puts a Python ``stack_trace`` into the response for an error raised here."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel


class MofiEncoderModel(PythonModel):
    def load_context(self, context) -> None:
        from mofi_core.serving.encoder import Encoder

        self.encoder = Encoder(context.artifacts["model_dir"])
        # a served model reads no file of its host unless given a folder it may read from
        self.allowed_root = (context.model_config or {}).get("allowed_root") or None

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        from mofi_core.serving.encoder import images_from_frame
        from mofi_core.serving.errors import internal_error

        try:
            return self.encoder.embed(images_from_frame(model_input, self.allowed_root))
        except MlflowException:  # InvalidInput / PathNotAllowed: the client's to fix
            raise
        except Exception as err:
            raise internal_error(err) from err


mlflow.models.set_model(MofiEncoderModel())
