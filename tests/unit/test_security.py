"""Security by default: static checks over the project's Python sources, and the MLflow UI's
host/CORS protections checked against a real server.

The static checks walk the syntax tree (``ast``), so formatting, comments and strings cannot fool
them. Names are resolved through the module's imports (``import pickle as pk``, ``from yaml import
load``), so an alias does not hide a call either. Every rule is also fed known-bad and known-good
snippets, so that a rule that has stopped flagging anything fails here instead of passing quietly.
"""

from __future__ import annotations

import ast
import http.client
import inspect
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

import pytest

from tests.ports import free_port
from tests.servers import healthy

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("mofi_core", "flows", "benchmarks", "tests")
SERVER_CODE = ("mofi_core", "flows")  # where a wildcard bind address would be a real server's


# --------------------------------------------------------------------------------------------
# the checker
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    file: str
    line: int
    rule: str
    what: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: [{self.rule}] {self.what}"


# conventional aliases, used when a module never imports the name (snippets, star imports)
CONVENTIONAL = {"np": "numpy", "pd": "pandas"}


def _aliases(tree: ast.AST) -> dict[str, str]:
    """Local name -> dotted name it stands for, from every import in the module (any scope)."""
    names = dict(CONVENTIONAL)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    names[a.asname] = a.name
                else:
                    top = a.name.split(".")[0]
                    names[top] = top
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if a.name != "*":
                    names[a.asname or a.name] = f"{node.module}.{a.name}"
    return names


def _qualname(node: ast.AST, aliases: dict[str, str]) -> str | None:
    """``pd.read_pickle`` -> ``pandas.read_pickle``; None for anything not a dotted name."""
    if isinstance(node, ast.Name):
        return aliases.get(node.id, node.id)
    if isinstance(node, ast.Attribute):
        base = _qualname(node.value, aliases)
        return f"{base}.{node.attr}" if base else None
    return None


def _kw(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _has_star_kwargs(call: ast.Call) -> bool:
    return any(k.arg is None for k in call.keywords)


def _is_const(node: ast.AST | None, value: object) -> bool:
    return isinstance(node, ast.Constant) and node.value is value


class Module:
    """One parsed source file plus its import aliases; rules query it."""

    def __init__(self, source: str, file: str) -> None:
        self.file = file
        self.tree = ast.parse(source, filename=file)
        self.aliases = _aliases(self.tree)

    def calls(self) -> Iterator[tuple[ast.Call, str]]:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Call):
                yield node, _qualname(node.func, self.aliases) or ""

    def found(self, node: ast.AST, rule: str, what: str) -> Finding:
        return Finding(self.file, getattr(node, "lineno", 0), rule, what)


# ---- a. YAML ------------------------------------------------------------------------------

YAML_UNSAFE_CALLS = {f"yaml.{f}" for f in (
    "load", "load_all", "full_load", "full_load_all", "unsafe_load", "unsafe_load_all")} | {
    f"ruamel.yaml.{f}" for f in ("load", "load_all", "unsafe_load", "unsafe_load_all")}
YAML_UNSAFE_LOADERS = {f"yaml.{n}" for n in (
    "Loader", "FullLoader", "UnsafeLoader", "CLoader", "CFullLoader", "CUnsafeLoader")}
YAML_UNSAFE_LOADERS |= {f"yaml.loader.{n.removeprefix('yaml.')}" for n in YAML_UNSAFE_LOADERS}


def check_yaml(mod: Module) -> list[Finding]:
    out = []
    for call, name in mod.calls():
        if name in YAML_UNSAFE_CALLS:
            out.append(mod.found(call, "yaml", f"{name}(): use yaml.safe_load/safe_load_all"))
        elif name == "ruamel.yaml.YAML":
            typ = _kw(call, "typ")
            values = ([typ] if isinstance(typ, ast.Constant) else
                      list(typ.elts) if isinstance(typ, ast.List | ast.Tuple) else None)
            if typ is not None and (values is None
                                    or not all(isinstance(v, ast.Constant) for v in values)):
                out.append(mod.found(call, "yaml", "YAML(typ=<not a literal>): cannot tell it "
                                                   "is safe"))
            elif values and any(v.value == "unsafe" for v in values):
                out.append(mod.found(call, "yaml", "YAML(typ='unsafe') builds arbitrary objects"))
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Name | ast.Attribute) and isinstance(node.ctx, ast.Load):
            name = _qualname(node, mod.aliases)
            if name in YAML_UNSAFE_LOADERS:
                out.append(mod.found(node, "yaml", f"{name} constructs arbitrary Python objects"))
    return out


# ---- b. pickle on load paths --------------------------------------------------------------

PICKLE_LOADS = {"pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load",
                "_pickle.loads", "_pickle.Unpickler", "joblib.load", "pandas.read_pickle",
                "mlflow.pytorch.load_model", "mlflow.sklearn.load_model", "shelve.open"}


def check_pickle(mod: Module) -> list[Finding]:
    out = []
    for call, name in mod.calls():
        module, _, func = name.rpartition(".")
        if name in PICKLE_LOADS or (module.split(".")[0] in ("cloudpickle", "dill")
                                    and "load" in func.lower()):
            out.append(mod.found(call, "pickle", f"{name}() unpickles"))
        elif name in ("torch.load", "torch.serialization.load"):
            if not _is_const(_kw(call, "weights_only"), True):
                out.append(mod.found(call, "pickle", f"{name}() without weights_only=True"))
        elif name == "numpy.load":
            allow = _kw(call, "allow_pickle")
            if (allow is not None and not _is_const(allow, False)) or _has_star_kwargs(call):
                out.append(mod.found(call, "pickle", "numpy.load() may allow_pickle"))
    return out


# ---- c. subprocesses ----------------------------------------------------------------------

SHELL_CALLS = {"os.system", "os.popen", "subprocess.getoutput", "subprocess.getstatusoutput",
               "asyncio.create_subprocess_shell"}
ARGV_CALLS = {f"subprocess.{f}" for f in ("run", "Popen", "call", "check_call", "check_output")}
EXEC_V = {f"os.{f}" for f in ("execv", "execve", "execvp", "execvpe")}
EXEC_L = {f"os.{f}" for f in ("execl", "execle", "execlp", "execlpe")}
SHELLS = {"sh", "bash", "zsh", "dash", "ksh", "/bin/sh", "/bin/bash", "/usr/bin/env sh",
          "cmd", "cmd.exe", "powershell", "pwsh"}
STRING_METHODS = {"format", "join", "replace", "strip", "lower", "upper", "removeprefix"}


def _argv_problem(arg: ast.expr | None) -> str | None:
    """Why ``arg`` is not an acceptable argv (a list/tuple display, name, attribute or call)."""
    if arg is None:
        return "its command is not visible (no positional argv)"
    if isinstance(arg, ast.List | ast.Tuple):
        first = arg.elts[0] if arg.elts else None
        if (isinstance(first, ast.Constant) and first.value in SHELLS
                and any(_is_const_str(e, "-c") for e in arg.elts[1:])):
            return f"runs a shell ({first.value} -c)"
        return None
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str | bytes):
        return "its command is a string literal"
    if isinstance(arg, ast.JoinedStr):
        return "its command is an f-string"
    if isinstance(arg, ast.BinOp):
        return "its command is built by string concatenation/formatting"
    if isinstance(arg, ast.Call):
        if isinstance(arg.func, ast.Attribute) and arg.func.attr in STRING_METHODS:
            return f"its command is built by str.{arg.func.attr}()"
        if isinstance(arg.func, ast.Name) and arg.func.id == "str":
            return "its command is str(...)"
        return None
    if isinstance(arg, ast.Name | ast.Attribute | ast.ListComp):
        return None
    return f"its command is a {type(arg).__name__} expression, not an argv list"


def check_subprocess(mod: Module) -> list[Finding]:
    out = []
    for call, name in mod.calls():
        shell = _kw(call, "shell")
        if shell is not None and not _is_const(shell, False):
            out.append(mod.found(call, "subprocess", f"{name or 'call'}(shell=...)"))
        if name in SHELL_CALLS:
            out.append(mod.found(call, "subprocess", f"{name}() runs a shell"))
        elif name in EXEC_L:
            out.append(mod.found(call, "subprocess", f"{name}(): use os.execv* with an argv list"))
        elif name in ARGV_CALLS or name in EXEC_V:
            index = 1 if name in EXEC_V else 0
            argv = call.args[index] if len(call.args) > index else _kw(call, "args")
            if (why := _argv_problem(argv)) is not None:
                out.append(mod.found(call, "subprocess", f"{name}(): {why}"))
    return out


# ---- d. servers bind loopback -------------------------------------------------------------

WILDCARD_ADDRESSES = {"0.0.0.0", "::", "[::]", "0:0:0:0:0:0:0:0"}


def _wildcard_in(text: str) -> bool:
    for token in text.replace("=", " ").replace(",", " ").split():
        if token in WILDCARD_ADDRESSES:
            return True
        if "://" in token:
            try:
                if urlparse(token).hostname in ("0.0.0.0", "::"):
                    return True
            except ValueError:
                continue
        else:
            host, sep, port = token.rpartition(":")
            if sep and port.isdigit() and host in WILDCARD_ADDRESSES:
                return True  # 0.0.0.0:8000, [::]:8000
    return False


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def check_bind_literals(mod: Module) -> list[Finding]:
    """No wildcard bind address as a string value (docstrings are prose, not values)."""
    skip = _docstrings(mod.tree)
    return [mod.found(node, "bind", f"wildcard address in {node.value!r}: bind 127.0.0.1")
            for node in ast.walk(mod.tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in skip and _wildcard_in(node.value)]


def _is_host_param(name: str) -> bool:
    return name == "host" or name.endswith("_host") or name in ("bind", "bind_address")


def host_params(mod: Module) -> list[tuple[ast.arg, ast.expr | None]]:
    """Every ``host``-like parameter of every function, with its default (None if none)."""
    out = []
    for fn in ast.walk(mod.tree):
        if not isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            continue
        a = fn.args
        positional = [*a.posonlyargs, *a.args]
        defaults = [None] * (len(positional) - len(a.defaults)) + list(a.defaults)
        pairs = [*zip(positional, defaults, strict=True), *zip(a.kwonlyargs, a.kw_defaults,
                                                              strict=True)]
        out += [(arg, default) for arg, default in pairs if _is_host_param(arg.arg)]
    return out


def check_host_defaults(mod: Module) -> list[Finding]:
    return [mod.found(arg, "host_default", f"parameter {arg.arg!r} defaults to "
                                   f"{ast.unparse(default) if default else 'nothing'}, "
                                   "not '127.0.0.1'")
            for arg, default in host_params(mod) if not _is_const_str(default, "127.0.0.1")]


def _is_const_str(node: ast.AST | None, value: str) -> bool:
    return isinstance(node, ast.Constant) and node.value == value


RULES: dict[str, Callable[[Module], list[Finding]]] = {
    "yaml": check_yaml, "pickle": check_pickle, "subprocess": check_subprocess,
    "bind": check_bind_literals, "host_default": check_host_defaults,
}


def scan(source: str, rule: str, file: str = "<snippet>") -> list[Finding]:
    return RULES[rule](Module(source, file))


# --------------------------------------------------------------------------------------------
# the project's sources
# --------------------------------------------------------------------------------------------

def _sources(dirs: tuple[str, ...]) -> list[Path]:
    files = sorted(p for d in dirs for p in (ROOT / d).rglob("*.py")
                   if not any(part.startswith(".") or part == "__pycache__"
                              for part in p.relative_to(ROOT).parts))
    assert files, f"no Python files under {dirs}"
    return files


@cache
def _module(path: Path) -> Module:
    return Module(path.read_text(encoding="utf-8"), str(path.relative_to(ROOT)))


def _offenders(rule: str, dirs: tuple[str, ...]) -> list[Finding]:
    return [f for p in _sources(dirs) for f in RULES[rule](_module(p))]


# Real offenders found in the current code, each xfail(strict=True) until fixed: none today.
KNOWN_OFFENDERS: dict[str, str] = {}


def _rule_case(rule: str, dirs: tuple[str, ...]):
    marks = ([pytest.mark.xfail(strict=True, reason=KNOWN_OFFENDERS[rule])]
             if rule in KNOWN_OFFENDERS else [])
    return pytest.param(rule, dirs, id=rule, marks=marks)


@pytest.mark.parametrize(("rule", "dirs"), [
    _rule_case("yaml", SCANNED), _rule_case("pickle", SCANNED),
    _rule_case("subprocess", SCANNED), _rule_case("bind", SERVER_CODE),
])
def test_project_sources_pass(rule, dirs):
    found = _offenders(rule, dirs)
    assert not found, "\n".join(map(str, found))


def test_scan_covers_the_whole_project():
    files = {str(p.relative_to(ROOT)) for p in _sources(SCANNED)}
    for must in ("mofi_core/cli.py", "mofi_core/registry.py", "flows/pipeline.py",
                 "flows/mofi_flow.py", "tests/unit/test_security.py"):
        assert must in files
    assert any(f.startswith("benchmarks/") for f in files)


def test_cli_host_parameters_default_to_loopback():
    mod = _module(ROOT / "mofi_core" / "cli.py")
    assert host_params(mod), "no host parameter found in mofi_core/cli.py: is the check stale?"
    found = check_host_defaults(mod)
    assert not found, "\n".join(map(str, found))


def test_cli_commands_default_to_loopback_at_runtime():
    from mofi_core.cli import app

    seen = 0
    for command in app.registered_commands:
        for name, param in inspect.signature(command.callback).parameters.items():
            if _is_host_param(name):
                seen += 1
                assert param.default == "127.0.0.1", f"{command.callback.__name__}({name}=...)"
    assert seen, "no typer command takes a host"


# --------------------------------------------------------------------------------------------
# the checker can fail: known-bad snippets are flagged, known-good ones are not
# --------------------------------------------------------------------------------------------

BAD = [
    ("yaml", "import yaml\nyaml.load(x)"),
    ("yaml", "import yaml\nyaml.load(x, Loader=yaml.SafeLoader)"),
    ("yaml", "import yaml\nyaml.full_load(x)"),
    ("yaml", "import yaml\nyaml.unsafe_load(x)"),
    ("yaml", "import yaml\nlist(yaml.load_all(x))"),
    ("yaml", "import yaml\nyaml.safe_load(x) or yaml.load(\n    x,\n    Loader=yaml.FullLoader)"),
    ("yaml", "import yaml\nyaml.load(x, Loader=yaml.UnsafeLoader)"),
    ("yaml", "from yaml import Loader\nd = yaml.load(x, Loader=Loader)"),
    ("yaml", "from yaml import load\nload(x)"),
    ("yaml", "import yaml as y\ny.load(x)"),
    ("yaml", "from ruamel.yaml import YAML\nYAML(typ='unsafe').load(x)"),
    ("yaml", "import ruamel.yaml\nruamel.yaml.YAML(typ=['unsafe'], pure=True)"),
    ("yaml", "from ruamel.yaml import YAML\nYAML(typ=kind)"),
    ("pickle", "import pickle\npickle.load(f)"),
    ("pickle", "import pickle\npickle.loads(b)"),
    ("pickle", "from pickle import loads as l\nl(b)"),
    ("pickle", "import cloudpickle\ncloudpickle.loads(b)"),
    ("pickle", "import dill\ndill.load(f)"),
    ("pickle", "import joblib\njoblib.load(p)"),
    ("pickle", "import pandas as pd\npd.read_pickle(p)"),
    ("pickle", "pd.read_pickle(p)"),
    ("pickle", "import torch\ntorch.load(p)"),
    ("pickle", "import torch\ntorch.load(p, weights_only=False)"),
    ("pickle", "import torch\ntorch.load(p, weights_only=flag)"),
    ("pickle", "from torch import load\nload(p, map_location='cpu')"),
    ("pickle", "import numpy as np\nnp.load(p, allow_pickle=True)"),
    ("pickle", "import numpy\nnumpy.load(p, **kw)"),
    ("pickle", "import mlflow\nmlflow.pytorch.load_model(uri)"),
    ("subprocess", "import subprocess\nsubprocess.run(f'ls {x}', shell=True)"),
    ("subprocess", "import subprocess\nsubprocess.run(['ls', x], shell=True)"),
    ("subprocess", "import subprocess\nsubprocess.run(cmd, shell=use_shell)"),
    ("subprocess", "import subprocess\nsubprocess.run('ls -l')"),
    ("subprocess", "import subprocess\nsubprocess.run(f'ls {x}')"),
    ("subprocess", "import subprocess\nsubprocess.check_output('ls ' + x)"),
    ("subprocess", "import subprocess\nsubprocess.call('ls {}'.format(x))"),
    ("subprocess", "import subprocess\nsubprocess.Popen('ls %s' % x)"),
    ("subprocess", "import subprocess\nsubprocess.Popen(args=f'ls {x}')"),
    ("subprocess", "from subprocess import check_call as cc\ncc(' '.join(argv))"),
    ("subprocess", "import subprocess\nsubprocess.run(['bash', '-c', cmd])"),
    ("subprocess", "import subprocess\nsubprocess.getoutput(cmd)"),
    ("subprocess", "import subprocess\nsubprocess.getstatusoutput(cmd)"),
    ("subprocess", "import os\nos.system('ls')"),
    ("subprocess", "import os\nos.popen(cmd).read()"),
    ("subprocess", "from os import system\nsystem(cmd)"),
    ("subprocess", "import os\nos.execv('/bin/sh', 'sh -c ls')"),
    ("subprocess", "import os\nos.execvp('sh', f'sh -c {x}')"),
    ("subprocess", "import os\nos.execl('/bin/sh', 'sh', '-c', cmd)"),
    ("bind", "app.run(host='0.0.0.0')"),
    ("bind", "HOST = '::'"),
    ("bind", "def serve(host: str = '0.0.0.0'): ..."),
    ("bind", "cmd = ['mlflow', 'ui', '--host=0.0.0.0']"),
    ("bind", "url = 'http://0.0.0.0:5000/'"),
    ("bind", "sock.bind(('0.0.0.0', 8000))"),
    ("host_default", "def ui(port: int = 5000, host: str = '0.0.0.0'): ..."),
    ("host_default", "def ui(*, bind_host='localhost'): ..."),
    ("host_default", "def ui(host): ..."),
]

GOOD = [
    ("yaml", "import yaml\nyaml.safe_load(x)"),
    ("yaml", "import yaml\nlist(yaml.safe_load_all(x))"),
    ("yaml", "import yaml\nyaml.safe_dump(d)"),
    ("yaml", "import yaml\nyaml.dump(d, Dumper=yaml.SafeDumper)"),
    ("yaml", "from ruamel.yaml import YAML\nYAML().load(x)"),
    ("yaml", "from ruamel.yaml import YAML\nYAML(typ='safe').load(x)"),
    ("yaml", "from ruamel.yaml import YAML\nrt = YAML(typ='rt')\nrt.load(x)"),
    ("yaml", "# yaml.load(x)\ns = 'yaml.load(x, Loader=yaml.Loader)'"),
    ("yaml", "import json\njson.load(f)"),
    ("pickle", "import torch\ntorch.load(p, weights_only=True)"),
    ("pickle", "import torch\ntorch.load(\n    p,\n    map_location='cpu',\n"
               "    weights_only=True,\n)"),
    ("pickle", "import numpy as np\nnp.load(p)"),
    ("pickle", "import numpy as np\nnp.load(p, allow_pickle=False)"),
    ("pickle", "import pickle\npickle.dumps(x)"),
    ("pickle", "import pandas as pd\npd.read_parquet(p)"),
    ("pickle", "import mlflow\nmlflow.pyfunc.load_model(uri)"),
    ("pickle", "from safetensors.torch import load_file\nload_file(p)"),
    ("pickle", "'pickle.load(f)'  # torch.load(p)"),
    ("subprocess", "import subprocess\nsubprocess.run(['ls', x])"),
    ("subprocess", "import subprocess\nsubprocess.run(('ls', x), shell=False)"),
    ("subprocess", "import subprocess\nsubprocess.run(cmd, check=True)"),
    ("subprocess", "import subprocess\nsubprocess.run(list(args), cwd=root)"),
    ("subprocess", "import subprocess\nsubprocess.Popen([sys.executable, '-c', code, *argv])"),
    ("subprocess", "import subprocess\nsubprocess.run(['bash', '-n', script])"),
    ("subprocess", "import subprocess\nsubprocess.check_output(self.argv)"),
    ("subprocess", "import os, sys\nos.execv(sys.executable, cmd)"),
    ("subprocess", "import os, sys\nos.execve(sys.executable, [sys.executable, '-V'], env)"),
    ("subprocess", "s = 'subprocess.run(cmd, shell=True)'  # os.system('ls')"),
    ("bind", "app.run(host='127.0.0.1')"),
    ("bind", "url = 'http://127.0.0.1:5000/'"),
    ("bind", "def f():\n    '''never bind 0.0.0.0 here'''\n    return 1"),
    ("bind", "HOST = '::1'"),
    ("bind", "t = '12:30:00'"),
    ("host_default", "def ui(port: int = 5000, host: str = '127.0.0.1'): ..."),
    ("host_default", "def ui(allowed_hosts: str | None = None): ..."),
]


@pytest.mark.parametrize(("rule", "source"), BAD, ids=[f"{r}:{s!r}" for r, s in BAD])
def test_checker_flags_bad_snippet(rule, source):
    found = scan(source, rule)
    assert found, f"rule {rule!r} missed:\n{source}"
    assert all(f.rule == rule and f.line >= 1 and f.file == "<snippet>" for f in found)


@pytest.mark.parametrize(("rule", "source"), GOOD, ids=[f"{r}:{s!r}" for r, s in GOOD])
def test_checker_passes_good_snippet(rule, source):
    assert scan(source, rule) == [], source


def test_findings_point_at_the_offending_line():
    source = "import yaml\n\nx = 1\nd = yaml.load(\n    text)\n"
    (finding,) = scan(source, "yaml", "pkg/mod.py")
    assert str(finding).startswith("pkg/mod.py:4: [yaml]")


# --------------------------------------------------------------------------------------------
# mofi ui: MLflow's host/CORS protections, pinned to loopback
# --------------------------------------------------------------------------------------------

def test_ui_command_pins_security_options_to_loopback():
    from mofi_core.cli import ui_command

    cmd = ui_command("sqlite:///x.db", port=5123)
    assert cmd[:4] == [sys.executable, "-m", "mlflow", "ui"]
    opts = dict(zip(cmd[4::2], cmd[5::2], strict=True))
    assert opts == {
        "--backend-store-uri": "sqlite:///x.db", "--host": "127.0.0.1", "--port": "5123",
        "--allowed-hosts": "localhost:5123,127.0.0.1:5123",
        "--cors-allowed-origins": "http://localhost:5123,http://127.0.0.1:5123",
        "--x-frame-options": "SAMEORIGIN",
    }
    assert "--disable-security-middleware" not in cmd


def test_ui_command_widens_only_when_asked():
    from mofi_core.cli import ui_command

    cmd = ui_command("sqlite:///x.db", "0.0.0.0", 80, "file:///a",  # deliberate
                     "mlflow.example.org", "https://app.example.org")
    opts = dict(zip(cmd[4::2], cmd[5::2], strict=True))
    assert opts["--host"] == "0.0.0.0"
    assert opts["--allowed-hosts"] == "mlflow.example.org"
    assert opts["--cors-allowed-origins"] == "https://app.example.org"
    assert opts["--default-artifact-root"] == "file:///a"


def test_mofi_ui_execs_that_command_without_the_disable_switch(tmp_path, monkeypatch):
    """The typer command prints and execs exactly ``ui_command``'s argv, and does not let an
    inherited MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE switch the protections off."""
    import mlflow
    from typer.testing import CliRunner

    import mofi_core.tracking
    from mofi_core.cli import app, ui_command

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setattr(mofi_core.tracking, "configure", lambda root, create=True: "0")
    monkeypatch.setattr(mlflow, "get_tracking_uri", lambda: uri)
    monkeypatch.setenv("MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE", "true")
    execs = []
    monkeypatch.setattr(os, "execve", lambda path, argv, env: execs.append((path, argv, env)))
    result = CliRunner().invoke(app, ["ui", "--root", str(tmp_path), "--port", "5999",
                                      "--allowed-hosts", "a.example.org"])
    assert result.exit_code == 0, result.output
    expected = ui_command(uri, "127.0.0.1", 5999,
                          (tmp_path / "mlartifacts").resolve().as_uri(),
                          "a.example.org", None)
    ((path, argv, env),) = execs
    assert (path, argv) == (sys.executable, expected)
    assert " ".join(expected) in result.output
    assert "MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE" not in env
    assert env["PATH"] == os.environ["PATH"]


@pytest.fixture(scope="module")
def mlflow_ui(tmp_path_factory):
    """A real ``mlflow ui`` started with ``ui_command``'s argv; yields its port. The environment
    asks for the widest settings MLflow reads from it, to show that the explicit flags win."""
    from mofi_core.cli import ui_command

    tmp = tmp_path_factory.mktemp("mlflow_ui")
    port = free_port()
    cmd = ui_command(f"sqlite:///{tmp / 'mlflow.db'}", "127.0.0.1", port,
                     (tmp / "artifacts").as_uri())
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    env.update(MLFLOW_DISABLE_TELEMETRY="true", MLFLOW_SERVER_ALLOWED_HOSTS="*",
               MLFLOW_SERVER_CORS_ALLOWED_ORIGINS="*", MLFLOW_SERVER_X_FRAME_OPTIONS="NONE")
    log_path = tmp / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not healthy(f"http://127.0.0.1:{port}"):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"mlflow ui not healthy (rc={proc.poll()}):\n"
                            + log_path.read_text()[-3000:])
            time.sleep(0.5)
        yield port
    finally:
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            if proc.poll() is not None:
                break
            try:
                os.killpg(proc.pid, sig)
                proc.wait(wait)
            except ProcessLookupError:
                break
            except subprocess.TimeoutExpired:
                continue


API = "/api/2.0/mlflow/experiments/search"


def _request(port: int, method: str, path: str, headers: dict[str, str],
             body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
    finally:
        conn.close()


def _search(port, method="GET", **headers):
    if method == "POST":
        return _request(port, "POST", API, {"Content-Type": "application/json", **headers},
                        b'{"max_results": 1}')
    return _request(port, method, API + "?max_results=1", headers)


def test_ui_answers_the_normal_host(mlflow_ui):
    for host in (f"127.0.0.1:{mlflow_ui}", f"localhost:{mlflow_ui}"):
        status, headers, body = _search(mlflow_ui, Host=host)
        assert status == 200 and b'"experiments"' in body, (host, status, body[:200])
        assert headers.get("x-frame-options") == "SAMEORIGIN"  # env asked for NONE: flag won
    status, _, body = _request(mlflow_ui, "GET", "/", {})
    assert status == 200 and b"<html" in body.lower()


@pytest.mark.parametrize("host", [
    "evil.example.com", "evil.example.com:{port}",  # DNS rebinding
    "192.168.1.5:{port}", "10.0.0.7:{port}",  # MLflow's own default would accept private IPs
    "localhost:1", "127.0.0.1:1",  # another port on loopback
])
@pytest.mark.parametrize("path", ["/", API + "?max_results=1"])
def test_ui_rejects_other_host_headers(mlflow_ui, host, path):
    status, _, body = _request(mlflow_ui, "GET", path, {"Host": host.format(port=mlflow_ui)})
    assert status == 403, (status, body[:200])
    assert b"Invalid Host header" in body


def test_ui_health_stays_reachable_whatever_the_host(mlflow_ui):
    """MLflow exempts /health from host validation (documented here, so a change is noticed)."""
    assert _request(mlflow_ui, "GET", "/health", {"Host": "evil.example.com"})[0] == 200


EVIL = "http://evil.example.com"


def test_ui_refuses_cross_origin_preflight(mlflow_ui):
    status, headers, body = _request(mlflow_ui, "OPTIONS", API, {
        "Origin": EVIL, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status == 400 and b"Disallowed CORS origin" in body
    assert "access-control-allow-origin" not in headers


def test_ui_blocks_cross_origin_state_changes(mlflow_ui):
    status, headers, body = _search(mlflow_ui, "POST", Origin=EVIL)
    assert status == 403 and b"Cross-origin request blocked" in body
    assert "access-control-allow-origin" not in headers


def test_ui_does_not_share_reads_with_other_origins(mlflow_ui):
    """A simple GET is answered (browsers send those anyway) but without an allow-origin header
    for that origin, so the page that sent it cannot read the answer."""
    status, headers, _ = _search(mlflow_ui, Origin=EVIL)
    assert status == 200
    assert headers.get("access-control-allow-origin") not in (EVIL, "*")


@pytest.mark.parametrize("origin", ["http://localhost:{port}", "http://127.0.0.1:{port}"])
def test_ui_allows_its_own_origins(mlflow_ui, origin):
    origin = origin.format(port=mlflow_ui)
    status, headers, _ = _request(mlflow_ui, "OPTIONS", API, {
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    assert status in (200, 204) and headers.get("access-control-allow-origin") == origin
    status, headers, body = _search(mlflow_ui, "POST", Origin=origin)
    assert status == 200 and b'"experiments"' in body
    assert headers.get("access-control-allow-origin") == origin


def _field_paths(model, prefix=""):
    from pydantic import BaseModel

    for name, info in model.model_fields.items():
        yield f"{prefix}{name}"
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from _field_paths(ann, f"{prefix}{name}.")


def test_params_have_no_place_for_credentials():
    """Credentials come from the environment / AWS profiles only: no params key can hold one."""
    from mofi_core.config.load import Params

    paths = list(_field_paths(Params))
    assert len(paths) > 50 and "train.steps" in paths  # the walk really sees the tree
    suspicious = [p for p in paths if re.search(
        r"secret|password|passwd|token|credential|access_key|api_key", p.split(".")[-1])]
    assert suspicious == []
