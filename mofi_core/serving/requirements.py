"""The pip requirements logged with the encoder: what a fresh serving environment installs.

``mlflow models serve`` and ``mlflow models build-docker`` (default env manager ``virtualenv``,
or ``uv``) create a new environment from the model's ``requirements.txt``. Torch from PyPI is the
CUDA build on Linux x86_64 (several GB of ``nvidia-*`` wheels); the served encoder runs on the
CPU. So the first line is ``--extra-index-url https://download.pytorch.org/whl/cpu`` (pip and
uv read index options in a requirements file; MLflow copies the line into ``requirements.txt``
unchanged), and torch/torchvision are pinned to their public version, ``torch==X``:

- that index names its CPU wheels ``X+cpu`` (Linux x86_64, Windows); ``==X`` matches them
  (PEP 440 ignores a candidate's local label when the pin has none) and ``X+cpu`` sorts above
  ``X``, so pip takes the CPU wheel over PyPI's CUDA one, whatever the order of the indexes;
  uv takes a package from the first index that has it, extra indexes first;
- a pin on ``X+cpu`` itself would make MLflow warn "mismatches between the model's
  dependencies and the current Python environment" on every ``load_model`` here (the project
  runs the CUDA build ``X+cu130``); those lines land in ``mofi embed``/``mofi search`` output.

Every version is the one installed here (the environment the model was tested in), local labels
such as ``+cu130`` dropped. Measured here (CPU torch 2.13.0 wheel: 192 MB download, 699 MB
installed; every other package as installed): about 1.7 GB installed with ``mlflow``, 1.2 GB with
``mlflow_dist="mlflow-skinny"`` (enough to load the model and run MLflow's scoring server;
``build-docker`` installs the full ``mlflow`` into the image anyway), against about 6.5 GB with
the CUDA torch from PyPI.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

CPU_INDEX = "https://download.pytorch.org/whl/cpu"
# what the served model imports (mofi_core itself travels with the model as code);
# torchvision: open-clip-torch requires it, and it must be the CPU build that matches torch
PACKAGES = ("torch", "torchvision", "open-clip-torch", "safetensors", "pillow", "pandas",
            "numpy")


def installed_version(name: str) -> str:
    """The installed version of distribution ``name`` without a local label (``+cu130``)."""
    try:
        return version(name).split("+", 1)[0]
    except PackageNotFoundError:
        raise RuntimeError(f"{name} is not installed: it is needed to log the served model "
                           "with pinned requirements") from None


def serving_requirements(cpu_index: str = CPU_INDEX, mlflow_dist: str = "mlflow"
                         ) -> list[str]:
    """``pip_requirements`` for ``mlflow.pyfunc.log_model``: the PyTorch CPU index, then every
    package pinned to its installed version. ``mlflow_dist``: ``"mlflow"`` or
    ``"mlflow-skinny"`` (same version; about 0.6 GB less to install)."""
    if mlflow_dist not in ("mlflow", "mlflow-skinny"):
        raise ValueError(f"mlflow_dist must be 'mlflow' or 'mlflow-skinny', not {mlflow_dist!r}")
    # the skinny distribution is versioned with mlflow: pin it to the installed mlflow
    return [f"--extra-index-url {cpu_index}", f"{mlflow_dist}=={installed_version('mlflow')}",
            *(f"{name}=={installed_version(name)}" for name in PACKAGES)]
