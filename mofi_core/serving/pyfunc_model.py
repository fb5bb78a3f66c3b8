"""MLflow pyfunc model, logged as code (``python_model=<this file>``): loading it runs this file
and reads safetensors weights + JSON metadata from the ``model_dir`` artifact; no pickle."""

from __future__ import annotations

import mlflow
import numpy as np
import pandas as pd
from mlflow.pyfunc import PythonModel


class MofiEncoderModel(PythonModel):
    def load_context(self, context) -> None:
        from mofi_core.serving.encoder import Encoder

        self.encoder = Encoder(context.artifacts["model_dir"])
        # a served model reads no file of its host unless given a folder it may read from
        self.allowed_root = (context.model_config or {}).get("allowed_root") or None

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        from mofi_core.serving.encoder import images_from_frame

        return self.encoder.embed(images_from_frame(model_input, self.allowed_root))


mlflow.models.set_model(MofiEncoderModel())
