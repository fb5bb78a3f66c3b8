"""The project's import graph, read from the source (AST), for the dvc.yaml and layering tests.

Every ``import`` counts, also those inside functions: a stage that imports a module lazily still
runs its code. ``python -m tests.imports STAGE`` prints the code deps ``dvc.yaml`` should list.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mofi_core"
RUNNER = "mofi_core.stage"  # runs around every stage's entry (mofi_core/stage.py)


def module_file(name: str) -> Path | None:
    """The file of a dotted ``mofi_core`` module (a package's ``__init__.py``), if it exists."""
    base = ROOT / Path(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), str(path))


def imported_names(path: Path) -> set[str]:
    """Every module name ``path`` imports (absolute and relative, at any depth in the file);
    ``from a import b`` gives ``a.b`` when that is a module, else ``a``."""
    out: set[str] = set()
    package = module_name(path) if path.name == "__init__.py" else \
        module_name(path).rpartition(".")[0]
    for node in ast.walk(_tree(path)):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                out.add(sub if module_file(sub) is not None else base)
    return out


def data_paths(path: Path) -> set[Path]:
    """Package files or folders a module reads by ``Path(__file__).parent / "x" / ...``."""
    found = set()
    for node in ast.walk(_tree(path)):
        parts: list[str] = []
        cur = node
        while isinstance(cur, ast.BinOp) and isinstance(cur.op, ast.Div) \
                and isinstance(cur.right, ast.Constant) and isinstance(cur.right.value, str):
            parts.insert(0, cur.right.value)
            cur = cur.left
        if parts and ast.unparse(cur) == "Path(__file__).parent":
            target = path.parent.joinpath(*parts)
            if target.exists():
                found.add(target)
    # the outermost expression holds every part; drop the prefixes seen on inner nodes
    return {p for p in found if not any(q != p and p in q.parents for q in found)}


def _counts(path: Path) -> bool:
    """Whether a file is code that runs: an ``__init__.py`` with only a docstring does not."""
    if path.name != "__init__.py":
        return True
    body = _tree(path).body
    return any(not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))
               for n in body)


def closure(*modules: str) -> set[Path]:
    """Files (and package data folders) of ``mofi_core`` that importing ``modules`` runs or
    reads: the modules, everything they import transitively, their packages' ``__init__``."""
    seen: set[Path] = set()
    todo = [m for m in modules]
    while todo:
        name = todo.pop()
        if not (name == PACKAGE or name.startswith(PACKAGE + ".")):
            continue
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__ and a/b/__init__
            path = module_file(".".join(parts[:i]))
            if path is None or path in seen:
                continue
            seen.add(path)
            todo.extend(imported_names(path))
            for data in data_paths(path):
                if data.suffix == ".py":
                    todo.append(module_name(data))
                else:
                    seen.add(data)
    return {p for p in seen if p.is_dir() or _counts(p)}


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts
            and (p.suffix != ".py" or _counts(p))]


def code_deps(*modules: str) -> list[str]:
    """The fewest paths that cover the closure exactly: a folder whose every file is in the
    closure is listed as the folder."""
    files = closure(*modules)

    def covered(p: Path) -> bool:
        return p in files or any(d in files for d in p.parents)

    chosen = set(files)
    folders = sorted({d for f in files for d in f.parents
                      if d != ROOT / PACKAGE and (ROOT / PACKAGE) in d.parents},
                     key=lambda d: len(d.parts))
    for folder in folders:  # outermost first
        if any(c in chosen for c in folder.parents):
            continue
        if all(covered(f) for f in _files_under(folder)):
            chosen = {c for c in chosen if folder not in c.parents} | {folder}
    return sorted(p.relative_to(ROOT).as_posix() for p in chosen)


def stage_code_deps(*refs: str) -> list[str]:
    """What a stage's ``dvc.yaml`` entry must list: the closure of its entry's (and check's)
    modules and the runner's."""
    return code_deps(*(r.partition(":")[0] for r in refs if r), RUNNER)


def dvc_entry(spec) -> dict:
    """The ``dvc.yaml`` entry of a stage-table row (:class:`mofi_core.stages.StageSpec`)."""

    def out(o) -> str | dict:
        opts = {k: v for k, v in (("cache", o.cache), ("persist", o.persist))
                if v != (k == "cache")}
        return {o.path: opts} if opts else o.path

    entry: dict = {"cmd": f"mofi {spec.name}" + (" {item}" if spec.foreach else ""),
                   "deps": [*(f"${{{k}}}" for k in spec.param_inputs), *spec.inputs,
                            *stage_code_deps(spec.entry, spec.check)],
                   "params": [spec.section, *spec.also_params]}
    if spec.outs:
        entry["outs"] = [out(o) for o in spec.outs]
    if spec.metrics_in_git:
        entry["metrics"] = [{spec.metrics: {"cache": False}}]
    else:  # registry state, not a result of the commit: a git-ignored output
        entry.setdefault("outs", []).append({spec.metrics: {"cache": False}})
    if spec.plots:
        entry["plots"] = [{p.path: {"cache": False, "x": p.x, "y": p.y} if p.x
                           else {"cache": False}} for p in spec.plots]
    if spec.foreach:  # DVC's template: one stage <name>@<value> per value of the params list
        import json

        entry = json.loads(json.dumps(entry).replace("{item}", "${item}"))
        return {"foreach": f"${{{spec.section}.{spec.foreach}}}", "do": entry}
    return entry


HEADER = """\
# The pipeline's stages for DVC. Every stage is `mofi <stage>`; run all with `dvc repro` (or
# `mofi run`). This file repeats the stage table (mofi_core/stages.py: inputs, outputs, params
# section) and lists as code deps exactly the mofi_core files each stage runs (its entry's
# imports plus the runner's, computed from the source). tests/unit/test_dvc_yaml.py fails when
# either drifts; `python -m tests.imports --write` rewrites this file from them.
# Params: each stage tracks its own section; the `runtime`, `executor` and `storage` sections
# only say how and where stages run, so no stage tracks them and changing them re-runs nothing.
# persist: true outputs keep finished shards across re-runs (skipped via .mofi/state).
# train is a foreach stage: one stage train@<recipe> per entry of train.recipes in params.yaml.
"""


def render_dvc_yaml(specs) -> str:
    import yaml

    body = yaml.safe_dump({"stages": {s.name: dvc_entry(s) for s in specs}}, sort_keys=False,
                          indent=2)
    # a blank line before each stage, for the reader
    lines = [("\n" + ln if ln.startswith("  ") and not ln.startswith("   ") else ln)
             for ln in body.splitlines()]
    return HEADER + "\n".join(lines) + "\n"


if __name__ == "__main__":
    from mofi_core.stages import BY_NAME, STAGES

    args = [a for a in sys.argv[1:] if a != "--write"]
    if "--write" in sys.argv[1:]:
        (ROOT / "dvc.yaml").write_text(render_dvc_yaml(STAGES), encoding="utf-8")
        print(f"wrote {ROOT / 'dvc.yaml'}")
    else:
        print(render_dvc_yaml([BY_NAME[n] for n in args] or STAGES), end="")
