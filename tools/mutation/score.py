"""mutmut's results, per module, less the reviewed equivalent mutants.

A mutant counts as *killed* when a test failed, timed out or crashed on it, and as *not killed*
when every test that calls the changed function passed (survived) or no listed test calls it at
all ("no tests"). Equivalent mutants are matched by what they change -- the module, the function
and the changed lines as mutmut's diff shows them -- not by mutmut's running number, which moves
when a function changes; an entry that matches no surviving mutant any more is *stale* and is
reported, so the list cannot quietly outlive the code it excuses.

A mutant that changes nothing but the words of an error message (the text of a string literal
on a line of a ``raise`` statement) is counted apart, as *wording*, and left out of the score
like an equivalent one: a message's words are not behaviour the tests pin (they assert the
error's kind, key and path), except the one-line errors the bad-input matrix promises
(``tests/system/test_hostile_inputs.py``), which make mutation does not run.
"""

from __future__ import annotations

import ast
import io
import json
import tokenize
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

EQUIVALENT = Path("tools/mutation/equivalent.yaml")
SCOPE = Path("tools/mutation/scope.yaml")
GOAL = 0.90
KILLED = {"killed", "timeout", "segfault", "caught by type check"}
NOT_KILLED = {"survived", "no tests", "suspicious"}
NOT_RUN = {"not checked", "check was interrupted by user"}  # a run stopped before them
TIMINGS = "mutmut-timings.jsonl"  # in mutants/: one line per mutant's test run (tests/conftest.py)


def config(root: Path) -> dict:
    """``[tool.mutmut]`` of pyproject.toml: the modules (``only_mutate``) and the tests."""
    return tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))["tool"]["mutmut"]


def load_scope(path: Path, only_mutate: list[str]) -> dict[str, list[str] | None]:
    """Module -> the functions in scope (``None``: all); the modules must be those mutmut
    mutates (``only_mutate``), each with a ``functions`` entry."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if sorted(raw) != sorted(only_mutate):
        raise ValueError(f"{path} names {sorted(raw)}, [tool.mutmut] only_mutate in "
                         f"pyproject.toml names {sorted(only_mutate)}: make them the same")
    scope = {}
    for module, entry in raw.items():
        functions = (entry or {}).get("functions")
        if functions != "all" and not (isinstance(functions, list) and functions):
            raise ValueError(f"{path}: {module} needs 'functions: all' or a list of names")
        scope[module] = None if functions == "all" else [str(f) for f in functions]
    return scope


def load_slow_tests(path: Path) -> dict[str, list[str]]:
    """Module -> its ``slow_tests``: tests marked slow that the slow pass runs against
    the mutants of that module no fast test killed."""
    raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    return {m: [str(t) for t in e["slow_tests"]] for m, e in raw.items()
            if isinstance(e, dict) and e.get("slow_tests")}


def patterns(scope: dict[str, list[str] | None]) -> list[str]:
    """mutmut's names (fnmatch patterns) of the mutants in scope, for ``mutmut run``."""
    out = []
    for module, functions in scope.items():
        dotted = module.removesuffix(".py").replace("/", ".")
        if functions is None:
            out.append(f"{dotted}.*")
            continue
        for f in functions:
            cls, _, method = f.rpartition(".")
            name = f"xǁ{cls}ǁ{method}" if cls else f"x_{f}"
            out.append(f"{dotted}.{name}__mutmut_*" if method != "*" else f"{dotted}.xǁ{cls}ǁ*")
    return out


def module_of(mutant: str) -> str:
    """``mofi_core.a.b.x_f__mutmut_3`` (a method: ``xǁCǁf__mutmut_3``) -> ``mofi_core/a/b.py``"""
    return mutant.rsplit(".", 1)[0].replace(".", "/") + ".py"


def function_of(mutant: str) -> str:
    """The function (or ``Class.method``) a mutant changes, as written in the source."""
    name = mutant.rsplit(".", 1)[1].rsplit("__mutmut_", 1)[0]
    if name.startswith("xǁ"):
        return ".".join(name[2:].split("ǁ"))
    return name[2:] if name.startswith("x_") else name


def statuses(mutants_dir: Path, status_by_code: Callable[[int | None], str]) -> dict[str, str]:
    """Every mutant mutmut made under ``mutants_dir`` and what became of it."""
    found = {}
    for meta in sorted(mutants_dir.rglob("*.py.meta")):
        codes = json.loads(meta.read_text(encoding="utf-8"))["exit_code_by_key"]
        found.update({name: status_by_code(code) for name, code in codes.items()})
    return found


def minutes_in_tests(mutants_dir: Path) -> dict[str, float]:
    """Module -> minutes its mutants' tests ran (both passes, every run of the record), from the
    lines tests/conftest.py appends to ``mutants/mutmut-timings.jsonl``: where the hour goes.
    Process start-up and mutmut's own work are not in it."""
    path = mutants_dir / TIMINGS
    spent: dict[str, float] = {}
    if not path.is_file():
        return spent
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        try:
            row = json.loads(line)
            module, seconds = module_of(row["mutant"]), float(row["seconds"])
        except (ValueError, KeyError, TypeError) as err:
            raise ValueError(f"{path}: line {i} is not a timing line ({err}): {line[:200]!r}; "
                             "remove the file and run make mutation again") from err
        spent[module] = spent.get(module, 0.0) + seconds / 60
    return {m: round(v, 1) for m, v in spent.items()}


def change(diff: str) -> tuple[str, str]:
    """The lines a mutant removes and adds (stripped, joined by `` / ``), from mutmut's diff."""
    lines = [ln for ln in diff.splitlines() if not ln.startswith(("---", "+++", "@@"))]
    removed = " / ".join(ln[1:].strip() for ln in lines if ln.startswith("-"))
    added = " / ".join(ln[1:].strip() for ln in lines if ln.startswith("+"))
    return removed, added


_SKIP = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER,
         tokenize.COMMENT}


def _tokens(text: str) -> list[tuple[int, str]]:
    """The tokens of a source fragment (a line of a longer statement tokenizes up to where it
    stops making sense; what came before is kept)."""
    out = []
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type not in _SKIP:
                out.append((tok.type, tok.string))
    except (tokenize.TokenError, IndentationError, SyntaxError):
        pass
    return out


def text_only(removed: str, added: str) -> bool:
    """The change touches nothing but the contents of string literals."""
    a, b = _tokens(removed.replace(" / ", "\n")), _tokens(added.replace(" / ", "\n"))
    return bool(a) and len(a) == len(b) and a != b and all(
        x == y or (x[0] == y[0] == tokenize.STRING) for x, y in zip(a, b, strict=True))


def raise_lines(source: str) -> set[str]:
    """Every line (stripped) of every ``raise`` statement of a module's source."""
    lines = source.splitlines()
    return {lines[i].strip() for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.Raise) and node.end_lineno is not None
            for i in range(node.lineno - 1, node.end_lineno)}


def wording(removed: str, added: str, messages: set[str]) -> bool:
    """The mutant rewords an error message: only string contents change, on raise lines."""
    return text_only(removed, added) and all(ln in messages for ln in removed.split(" / "))


@dataclass(frozen=True)
class Equivalent:
    """A reviewed equivalent mutant, or a reviewed kind of them: ``module`` and ``function`` may
    be ``*``; ``removed``/``added`` are either the whole changed lines or one edit inside them
    (the mutant's line is the original with that one occurrence of ``removed`` replaced)."""

    module: str
    function: str
    removed: str
    added: str
    why: str

    def matches(self, mutant: str, removed: str, added: str) -> bool:
        if self.module not in ("*", module_of(mutant)) or \
                self.function not in ("*", function_of(mutant)):
            return False
        if (removed, added) == (self.removed, self.added):
            return True
        at = removed.find(self.removed) if self.removed else -1
        while at >= 0:
            if removed[:at] + self.added + removed[at + len(self.removed):] == added:
                return True
            at = removed.find(self.removed, at + 1)
        return False


def load_equivalents(path: Path) -> list[Equivalent]:
    """The reviewed list; every entry needs all five keys and a reason of one line."""
    entries = yaml.safe_load(path.read_text(encoding="utf-8")) or []
    out = []
    for i, e in enumerate(entries):
        keys = {"module", "function", "from", "to", "why"}
        if not isinstance(e, dict) or set(e) != keys:
            raise ValueError(f"{path}: entry {i + 1} must have exactly the keys {sorted(keys)}; "
                             f"it has {sorted(e) if isinstance(e, dict) else type(e).__name__}")
        if not str(e["why"]).strip() or "\n" in str(e["why"]).strip():
            raise ValueError(f"{path}: entry {i + 1} ({e['module']} {e['function']}) needs a "
                             "one-line reason in 'why'")
        out.append(Equivalent(e["module"], e["function"], str(e["from"]), str(e["to"]),
                              str(e["why"]).strip()))
    return out


@dataclass
class ModuleScore:
    module: str
    mutants: int = 0
    killed: int = 0
    equivalent: int = 0
    wording: int = 0  # reword an error message only: not counted in the score
    not_run: int = 0  # in scope, but the run stopped before them: not counted in the score
    survivors: list[dict] = field(default_factory=list)

    @property
    def score(self) -> float:
        counted = self.mutants - self.equivalent - self.wording
        return self.killed / counted if counted else 1.0

    @property
    def verdict(self) -> str:
        if self.not_run:
            return f"incomplete ({self.not_run} not run)"
        return "met" if self.score >= GOAL else "NOT met"

    def as_dict(self) -> dict:
        return {"module": self.module, "mutants": self.mutants, "killed": self.killed,
                "equivalent": self.equivalent, "wording": self.wording,
                "not_killed": len(self.survivors),
                "not_run": self.not_run, "score": round(self.score, 4),
                "verdict": self.verdict, "survivors": self.survivors}


def in_scope(mutant: str, scope: dict[str, list[str] | None]) -> bool:
    module = module_of(mutant)
    if module not in scope:
        return False
    functions = scope[module]
    f = function_of(mutant)
    return functions is None or f in functions or f"{f.partition('.')[0]}.*" in functions


def score(scope: dict[str, list[str] | None], found: dict[str, str],
          diff: Callable[[str], str], equivalents: list[Equivalent],
          messages: dict[str, set[str]] | None = None
          ) -> tuple[list[ModuleScore], list[Equivalent]]:
    """Per module: the mutants in scope, killed, equivalent, wording (``messages``: each
    module's :func:`raise_lines`) and the rest listed; plus the stale entries of the equivalent
    list."""
    messages = messages or {}
    modules = list(scope)
    by_module = {m: ModuleScore(m) for m in modules}
    used: set[Equivalent] = set()
    for name, status in sorted(found.items()):
        m = by_module.get(module_of(name))
        if m is None or not in_scope(name, scope):
            continue
        if status in NOT_RUN:
            m.not_run += 1
            continue
        if status not in KILLED | NOT_KILLED:
            raise RuntimeError(f"mutant {name} is '{status}', a status this scorer does not "
                               "know: look at it with mutmut show NAME")
        m.mutants += 1
        if status in KILLED:
            m.killed += 1
            continue
        removed, added = change(diff(name))
        hit = next((e for e in equivalents if e.matches(name, removed, added)), None)
        if hit is None and wording(removed, added, messages.get(m.module, set())):
            m.wording += 1
        elif hit is not None:
            m.equivalent += 1
            used.add(hit)
        else:
            m.survivors.append({"mutant": name, "status": status, "from": removed,
                                "to": added})
    missing = [m for m in modules if by_module[m].mutants + by_module[m].not_run == 0]
    if missing:
        raise RuntimeError(f"no mutants in scope for {missing}: check [tool.mutmut] "
                           f"only_mutate in pyproject.toml and the names in {SCOPE}")
    return list(by_module.values()), [e for e in equivalents if e not in used]


def markdown(scores: list[ModuleScore], stale: list[Equivalent], meta: dict) -> str:
    """reports/mutation.md: the table per module (every mutant no test kills is in the json)."""
    lines = ["# Mutation testing", "",
             f"Generated by `make mutation` (mutmut {meta['mutmut']}, {meta['minutes']:.0f} min "
             f"on {meta['machine']}, {meta['tests']} test files, see `[tool.mutmut]` in "
             f"pyproject.toml; the functions of each module in scope: `{SCOPE}`). "
             f"Score = killed / (mutants - equivalent); goal "
             f"{GOAL:.0%} on every module. Equivalent mutants, each with its reason: "
             f"`{EQUIVALENT}`; *wording*: mutants that only reword an error message (the "
             "tests assert an error's kind, key and path, not its words), left out of the "
             "score like the equivalent ones; the mutants no test kills, with what they "
             "change: `reports/mutation.json`.", "",
             "| module | mutants | killed | equivalent | wording | not killed | score | goal |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    timed = meta.get("test_minutes")
    if timed is not None:
        lines[-2] += " test min |"
        lines[-1] += "---:|"
        lines[2] += (" *test min*: minutes the module's mutants spent in their tests, both "
                     "passes (process start-up and mutmut's own work not counted).")
    runs = meta.get("runs") or []
    if len(runs) > 1:
        lines[2] += (f" The minutes add up one run and {len(runs) - 1} continuation(s) of it "
                     f"(`--continue`: the mutants not reached or not killed, after new tests: "
                     + ", ".join(f"{r['mutants']} in {r['minutes']:.0f} min"
                                 + (" (stopped)" if r.get("stopped") else "") for r in runs[1:])
                     + ").")
    slow = meta.get("slow_pass")
    if slow is None and "slow_pass" in meta:
        lines[2] += (" The slow pass (each module's `slow_tests` against the mutants no fast "
                     "test killed) was not run.")
    if slow:
        lines[2] += (f" {slow['rerun']} mutants no fast test killed were run again against "
                     f"their module's `slow_tests` (tests marked slow): {slow['killed']} "
                     "killed" + (f", in {slow['minutes']:.0f} min more" if "minutes" in slow
                                 else "") + ".")
    for s in scores:
        shown = f"{s.score:.1%}" if s.mutants else "—"
        lines.append(f"| `{s.module}` | {s.mutants} | {s.killed} | {s.equivalent} | "
                     f"{s.wording} | {len(s.survivors)} | {shown} | {s.verdict} |"
                     + (f" {timed.get(s.module, 0.0):.1f} |" if timed is not None else ""))
    total = sum(s.mutants for s in scores)
    killed = sum(s.killed for s in scores)
    eq = sum(s.equivalent for s in scores)
    words = sum(s.wording for s in scores)
    lines.append(f"| all | {total} | {killed} | {eq} | {words} | {total - killed - eq - words} "
                 f"| {killed / max(1, total - eq - words):.1%} | |" + (
                     f" {sum(timed.values()):.1f} |" if timed is not None else ""))
    if stale:
        lines += ["", f"Stale entries in `{EQUIVALENT}` (they match no surviving mutant; "
                  "remove or update them):", ""]
        lines += [f"- `{e.module}` `{e.function}`: `{e.removed}` -> `{e.added}`" for e in stale]
    return "\n".join(lines) + "\n"

