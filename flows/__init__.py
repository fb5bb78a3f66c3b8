"""Prefect orchestration of the DVC stages: flow ``mofi``, deployment ``full``."""
