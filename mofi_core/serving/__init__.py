"""Serving the registered encoder: image decoding and the MLflow pyfunc model (models-from-code,
so nothing is pickled)."""
