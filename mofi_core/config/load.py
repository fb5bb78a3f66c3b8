"""Read ``params.yaml`` into one frozen, typed tree: the loader.

The whole file is validated once into :class:`Params`; each stage then receives only its own
section. Unknown keys are errors (``extra="forbid"``) so a typo in ``params.yaml`` never silently
falls back to a default. Overrides use dotted keys (``{"train.steps": 50}``), the same spelling as
``dvc exp run -S``. The loader merges ``runtime.<section>`` into its section (so code reads
``cfg.log_every``), applies overrides and turns validation errors into lines that name the key.

Each section's schema (keys, types, bounds, defaults) lives in its own module of this package
and is a code dependency of its stage. The loader itself only reads, merges and refuses: it adds
nothing to what a section's schema makes of its keys (``tests/unit/test_config.py`` holds it to
that), so no stage depends on this module and a change here re-runs nothing.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import ConfigDict, Field, ValidationError, model_validator

from mofi_core.config.build import BuildConfig
from mofi_core.config.corpus import CorpusConfig
from mofi_core.config.decontam import DecontamConfig
from mofi_core.config.evaluate import EvaluateConfig
from mofi_core.config.ingest import IngestConfig
from mofi_core.config.kb import KBConfig
from mofi_core.config.ner import NerConfig
from mofi_core.config.placement import ExecutorConfig, StorageConfig
from mofi_core.config.register import RegisterConfig
from mofi_core.config.report import ReportConfig
from mofi_core.config.score import ScoreConfig
from mofi_core.config.section import ParamsError, Section
from mofi_core.config.train import BaselineConfig, MofiTrainConfig
from mofi_core.config.validate import ValidateConfig
from mofi_core.stages import SECTIONS

__all__ = ["Params", "ParamsError", "apply_overrides", "load_params", "parse_params",
           "read_params_file"]


class Params(Section):
    corpus: CorpusConfig = CorpusConfig()
    kb: KBConfig = KBConfig()
    ingest: IngestConfig = IngestConfig()
    decontam: DecontamConfig = DecontamConfig()
    ner: NerConfig = NerConfig()
    baseline: BaselineConfig = BaselineConfig()
    score: ScoreConfig = ScoreConfig()
    build: BuildConfig = BuildConfig()
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    train: MofiTrainConfig = MofiTrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    report: ReportConfig = ReportConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    executor: ExecutorConfig = ExecutorConfig()
    storage: StorageConfig = StorageConfig()

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True,
                              allow_inf_nan=False)

    @model_validator(mode="after")
    def _sources_agree(self) -> Params:
        """Without the demo world there is no demo KB nor demo shards to read."""
        if self.corpus.source == "none":
            if self.kb.source == "demo":
                raise ValueError("corpus.source none writes no demo KB: set kb.source to "
                                 "parquet or wikidata and kb.path to your file")
            if self.ingest.input.startswith("data/corpus"):
                raise ValueError(f"corpus.source none writes no demo shards: set ingest.input "
                                 f"to your shards (it is {self.ingest.input!r})")
        return self

    def value(self, dotted: str) -> Any:
        """One value by its dotted key as params.yaml spells it (``train.recipes``)."""
        section, *keys = dotted.split(".")
        node: Any = self.section(section)
        for key in keys:
            if not hasattr(node, key):
                raise ParamsError(f"no params key {dotted!r}")
            node = getattr(node, key)
        return node

    def section(self, name: str) -> Section:
        field = f"{name}_" if name in ("validate", "register") else name
        if field not in type(self).model_fields:
            raise ParamsError(f"no params section {name!r}; sections: {', '.join(SECTIONS)}")
        return getattr(self, field)


RUNTIME = "runtime"  # the top-level section of runtime keys, per stage section


def section_classes() -> dict[str, type[Section]]:
    """Stage section name -> its config class."""
    fields = Params.model_fields
    return {name: fields[f"{name}_" if name in ("validate", "register") else name].annotation
            for name in SECTIONS}


def _merge_runtime(raw: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``raw`` with ``runtime.<section>`` merged into each section, and the misplaced keys: a
    runtime key under its section (it would make DVC re-run the stage), or a result key or
    unknown section under ``runtime``."""
    out = dict(raw)
    runtime = out.pop(RUNTIME, None) or {}
    classes = section_classes()
    if not isinstance(runtime, dict):
        return out, [f"  {RUNTIME}: must be a mapping of sections, e.g. runtime: {{train: "
                     "{log_every: 10}}"]
    problems = []
    for name, cls in classes.items():
        sec = out.get(name)
        for key in sec if isinstance(sec, dict) else ():
            if key in cls.RUNTIME:
                problems.append(f"  {name}.{key}: a runtime key (it never changes a result, so "
                                f"no stage tracks it): move it to {RUNTIME}.{name}.{key}")
    for name, values in runtime.items():
        cls = classes.get(name)
        if cls is None or not cls.RUNTIME:
            have = ", ".join(n for n, c in classes.items() if c.RUNTIME)
            problems.append(f"  {RUNTIME}.{name}: no runtime keys in section {name!r}; "
                            f"runtime sections: {have}")
            continue
        if not isinstance(values, dict):
            problems.append(f"  {RUNTIME}.{name}: must be a mapping of keys")
            continue
        for key in values:
            if key not in cls.RUNTIME:
                where = (f"a result key: set it under {name}.{key}" if key in cls.model_fields
                         else f"unknown runtime key; {RUNTIME}.{name} has "
                              f"{', '.join(cls.RUNTIME)}")
                problems.append(f"  {RUNTIME}.{name}.{key}: {where}")
        sec = out.get(name)
        out[name] = {**(sec if isinstance(sec, dict) else {}), **values}
    return out, problems


def _key_name(loc: tuple) -> str:
    """Dotted key of a validation error, spelled as in params.yaml (runtime keys under
    ``runtime.``)."""
    parts = [str(p).rstrip("_") for p in loc]  # validate_ -> validate
    classes = section_classes()
    if len(parts) >= 2 and parts[0] in classes and parts[1] in classes[parts[0]].RUNTIME:
        parts = [RUNTIME, *parts]
    return ".".join(parts)


def _format_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        key = _key_name(e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key — remove it or fix its spelling")
        elif not key and e["type"] == "value_error":  # across sections: the message names keys
            lines.append(f"  {e['msg'].removeprefix('Value error, ')}")
        else:
            lines.append(f"  {key or '(top level)'}: {e['msg']}")
    return _problems(source, lines)


def _problems(source: str, lines: list[str]) -> str:
    """One line for one problem; else a header and a line per problem (each names its key)."""
    if len(lines) == 1:
        return f"invalid params in {source}: {lines[0].strip()}"
    return f"invalid params in {source}:\n" + "\n".join(lines)


def parse_params(raw: dict[str, Any] | None, source: str = "params") -> Params:
    merged, problems = _merge_runtime(raw or {})
    train = merged.get("train")
    if isinstance(train, dict) and "recipe" in train:
        problems.append(f"  train.recipe: the candidates are a list now, train.recipes: "
                        f"[{train['recipe']}] (or several: each is trained as stage "
                        "train@<recipe>, evaluated and registered)")
    if problems:
        raise ParamsError(_problems(source, problems))
    try:
        return Params.model_validate(merged)
    except ValidationError as err:
        raise ParamsError(_format_error(err, source)) from None


def read_params_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise ParamsError(f"params file not found: {path} "
                          "(run from the project root or pass --params)")
    with path.open(encoding="utf-8") as fh:
        try:
            raw = yaml.safe_load(fh)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ParamsError(f"{path}:{where} not valid YAML "
                              f"({getattr(err, 'problem', None) or err})") from None
    if raw is None:
        raise ParamsError(f"{path} is empty: it must hold the params sections (git checkout "
                          f"{path.name} restores the project's)")
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: top level must be a mapping of sections")
    return raw


def load_params(path: Path | str = "params.yaml",
                overrides: dict[str, Any] | None = None) -> Params:
    """Read, apply dotted overrides, validate. Raises :class:`ParamsError` naming the bad key."""
    path = Path(path)
    raw = apply_overrides(read_params_file(path), overrides or {})
    return parse_params(raw, str(path))


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``raw`` with ``{"a.b.c": v}`` overrides set; the path must name a section."""
    out = copy.deepcopy(raw)
    for dotted, value in overrides.items():
        parts = dotted.split(".")
        if parts[0] not in (*SECTIONS, RUNTIME) or len(parts) < 2:
            raise ParamsError(f"override {dotted!r}: must look like '<section>.<key>' with section "
                              f"one of {', '.join(SECTIONS)} (or {RUNTIME}.<section>.<key>)")
        node = out
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ParamsError(f"override {dotted!r}: {part!r} is a value, not a section")
            node = child
        node[parts[-1]] = value
    return out


def parse_assignments(values: list[str]) -> dict[str, Any]:
    """``["train.steps=50", ...]`` (the ``-S``/``--set`` options) as dotted overrides, each
    value read as YAML (``50`` is an int, ``[a, b]`` a list)."""
    out = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ParamsError(f"--set {item!r}: expected KEY=VALUE, e.g. train.steps=50")
        out[key.strip()] = yaml.safe_load(raw)
    return out
