"""Layers that hold, read from every import in the source (also those inside functions).

Bottom to top: ``io`` (files, S3, hashing) and ``device``; ``models`` (towers, heads, model
folders: what inference needs); ``curate`` / ``evaluate`` (stages over data and models);
``train`` (recipes, loop, distributed, the sharded head); the CLI, which alone hands over to
``flows`` (Prefect, DVC).
"""

import pytest

from tests.conftest import ROOT
from tools.dvc_yaml import imported_names

PKG = ROOT / "mofi_core"


def _imports(folder_or_file: str) -> dict[str, set[str]]:
    base = PKG / folder_or_file
    files = [base] if base.suffix == ".py" else sorted(base.rglob("*.py"))
    return {f.relative_to(ROOT).as_posix(): imported_names(f) for f in files}


def _offenders(folder: str, forbidden) -> list[str]:
    return [f"{path} imports {name}" for path, names in _imports(folder).items()
            for name in sorted(names) if forbidden(name)]


def _under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


@pytest.mark.parametrize("folder", ["models", "curate", "evaluate", "serving"])
def test_inference_and_data_layers_never_import_training(folder):
    assert _offenders(folder, lambda n: _under(n, "mofi_core.train")) == []


def test_io_imports_nothing_above_it():
    """The stage table (which imports nothing itself) is the one exception: storage reads a
    stage's inputs and outputs from it."""
    assert _offenders("io", lambda n: _under(n, "mofi_core")
                      and not _under(n, "mofi_core.io", "mofi_core.stages")) == []


@pytest.mark.parametrize("package", ["mofi_core", "flows"])
def test_the_product_never_imports_the_workshop(package):
    """Generators, checks, the mutation apparatus, study drivers, benchmarks and tests stand
    beside the library; nothing the package installs may need them."""
    files = sorted((ROOT / package).rglob("*.py"))
    assert files
    found = [f"{f.relative_to(ROOT)} imports {name}" for f in files
             for name in sorted(imported_names(f))
             if _under(name, "tools", "studies", "tests", "benchmarks")]
    assert found == []


def test_the_library_root_stays_small():
    """Rooms, not a hall: at most 15 modules at the root of mofi_core."""
    modules = [p.name for p in PKG.glob("*.py") if p.name != "__init__.py"]
    assert len(modules) <= 15, sorted(modules)


def test_device_selection_is_one_bottom_module():
    assert _offenders("device.py", lambda n: _under(n, "mofi_core")) == []


def test_only_the_cli_hands_over_to_prefect_dvc_and_flows():
    def orchestration(name: str) -> bool:
        return _under(name, "prefect", "dvc", "flows")

    found = [line for line in _offenders(".", orchestration)
             if not line.startswith("mofi_core/cli.py ")]
    assert found == []


def test_the_stage_table_imports_nothing_from_the_project():
    assert _offenders("stages.py", lambda n: _under(n, "mofi_core")) == []


def test_the_checker_sees_lazy_imports():
    """The checks above would pass vacuously if function-local imports were missed."""
    names = imported_names(PKG / "registry.py")
    assert "mofi_core.serving.encoder" not in names  # registry reaches serving via a file path
    assert "mofi_core.models.artifact" in names  # imported inside a function only
