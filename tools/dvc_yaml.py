"""``dvc.yaml`` rendered from the stage table, with each stage's code deps read from the source.

A stage's code deps are the ``mofi_core`` files its entry (and check) import, transitively, as
read from the source (AST): every ``import`` counts, also those inside functions (a stage that
imports a module lazily still runs its code), but not those under ``if TYPE_CHECKING:``. To them
the schema module of the stage's params section is added (:mod:`mofi_core.config`), since its
defaults and checks decide what the stage gets.

Left out, and not followed: the modules in :data:`ORCHESTRATION`, which run around a stage or
watch it but cannot change what it computes. A wording change there re-runs no stage; the tests
that hold each of them to that are named beside it.

    python -m tools.dvc_yaml [STAGE ...]   print the entries (all stages by default)
    python -m tools.dvc_yaml --check       exit 1 when dvc.yaml differs from the rendering
    python -m tools.dvc_yaml --write       rewrite dvc.yaml
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "mofi_core"
# module -> why it cannot change a stage's result (and the test that holds it to that)
ORCHESTRATION = {
    "mofi_core.runner": "calls the entry, records metrics, restores outputs on failure "
                        "(tests/e2e/test_caching.py: a wording change re-runs nothing)",
    "mofi_core.launch": "how many processes start (the outputs of n processes: "
                        "tests/system/test_torchrun.py)",
    "mofi_core.context": "a frozen record of what the runner hands over",
    "mofi_core.config.load": "reads, merges and refuses; adds nothing to a section's schema "
                             "(tests/unit/test_config.py)",
    "mofi_core.stages": "the table itself: its paths are dvc.yaml's, which DVC tracks",
    "mofi_core.tracking": "logs to MLflow only (tests/integration/test_stages.py: the same "
                          "outputs with tracking on and off)",
    "mofi_core.progress": "prints progress lines",
    "mofi_core.parallel": "runs shard jobs and skips finished ones (tests/unit/test_parallel.py: "
                          "the same outputs for any number of workers and after a resume)",
    "mofi_core.io.storage": "copies inputs and outputs to and from S3, each file checked by "
                            "hash (tests/integration/test_storage.py)",
}


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
    for node in _runtime_nodes(_tree(path)):
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


def _type_checking_only(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING",
                                                                   "typing.TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node of ``tree`` except the bodies of ``if TYPE_CHECKING:`` (never run)."""
    out, todo = [], [tree]
    while todo:
        node = todo.pop()
        out.append(node)
        if _type_checking_only(node):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))
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


def closure(*modules: str, skip: tuple[str, ...] = ()) -> set[Path]:
    """Files (and package data folders) of ``mofi_core`` that importing ``modules`` runs or
    reads: the modules, everything they import transitively, their packages' ``__init__``;
    the modules of ``skip`` are neither listed nor followed."""
    seen: set[Path] = set()
    todo = [m for m in modules]
    while todo:
        name = todo.pop()
        if not (name == PACKAGE or name.startswith(PACKAGE + ".")) or name in skip:
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


def code_deps(*modules: str, skip: tuple[str, ...] = ()) -> list[str]:
    """The fewest paths that cover the closure exactly: a folder whose every file is in the
    closure is listed as the folder."""
    files = closure(*modules, skip=skip)

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


def section_modules(spec) -> tuple[str, ...]:
    """The schema modules of the params the stage reads (its section, ``also_params``)."""
    from mofi_core.config.load import section_classes

    classes = section_classes()
    names = (spec.section, *(p.partition(".")[0] for p in spec.also_params))
    return tuple(dict.fromkeys(classes[n].__module__ for n in names))


def stage_modules(spec) -> tuple[str, ...]:
    """The modules a stage runs: its entry's and check's, and its params' schema modules."""
    return (*(r.partition(":")[0] for r in (spec.entry, spec.check) if r),
            *section_modules(spec))


def stage_code_deps(spec) -> list[str]:
    """What a stage's ``dvc.yaml`` entry lists as code: the closure of its modules, without
    the orchestration modules."""
    return code_deps(*stage_modules(spec), skip=tuple(ORCHESTRATION))


def dvc_entry(spec) -> dict:
    """The ``dvc.yaml`` entry of a stage-table row (:class:`mofi_core.stages.StageSpec`)."""

    def out(o) -> str | dict:
        opts = {k: v for k, v in (("cache", o.cache), ("persist", o.persist))
                if v != (k == "cache")}
        return {o.path: opts} if opts else o.path

    entry: dict = {"cmd": f"mofi {spec.name}" + (" {item}" if spec.foreach else ""),
                   "deps": [*(f"${{{k}}}" for k in spec.param_inputs), *spec.inputs,
                            *stage_code_deps(spec)],
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
# `mofi run`). Generated from the stage table (mofi_core/stages.py: inputs, outputs, params
# section) by `python -m tools.dvc_yaml --write`; code deps are the mofi_core files each stage
# runs (its entry's imports and its params schema, read from the source), without the modules
# that only run around a stage (the runner, the params loader, tracking: tools/dvc_yaml.py says
# which and why), so a wording change there re-runs nothing. `--check` fails on any drift.
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


def main(argv: list[str]) -> int:
    from mofi_core.stages import BY_NAME, STAGES

    target = ROOT / "dvc.yaml"
    names = [a for a in argv if not a.startswith("--")]
    if "--write" in argv:
        target.write_text(render_dvc_yaml(STAGES), encoding="utf-8")
        print(f"wrote {target}")
    elif "--check" in argv:
        if target.read_text(encoding="utf-8") != render_dvc_yaml(STAGES):
            print(f"{target} differs from the stage table and the code: python -m "
                  "tools.dvc_yaml --write (then dvc status shows what re-runs)", file=sys.stderr)
            return 1
    else:
        print(render_dvc_yaml([BY_NAME[n] for n in names] or STAGES), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
