"""Shared fixtures: the whole platform from real parts on loopback.

- S3: a real SeaweedFS server (tests/harness/s3.py), with credentials it enforces.
- Kubernetes API: kmock's emulator extended with apiserver semantics (tests/harness/kube.py), over HTTP.
- Jobs: a stand-in for the Job controller and kubelet that runs the real `kresize-resizer` per index
  (tests/harness/jobs.py).
- The real `kresize-operator` (kopf) and `kresize-api` (uvicorn) as subprocesses, each run as its pod runs it:
  command and environment from the rendered Helm chart, uid 65532 with no passwd entry, a read-only root and
  only /tmp writable (tests/harness/pods.py, tests/harness/sandbox.py). The resizer runs the same way, from
  the Job spec the operator builds.
"""

from __future__ import annotations

import base64
import os
import secrets
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import kubernetes
import pytest
from harness.jobs import JobRunner
from harness.kube import start_emulator
from harness.pods import chart_program, render_chart
from harness.procs import Program, free_ports
from harness.s3 import start_s3
from kresize_common.s3 import ensure_bucket

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
CRD = REPO / "manifests" / "crds" / "resizejobs.kresize.dev.yaml"
NAMESPACE = "default"
BUCKET = "kresize"
SECRET = "kresize-s3"
ALLOWED_MISSING_BUCKET = "allowed-but-missing"  # allowed by the storage policy, never created
ORPHAN_GRACE_SECONDS = 15  # unreferenced originals live this long on the platform (tests/test_gc.py)

os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"


@pytest.fixture(scope="session")
def corpus() -> Path:
    if not CORPUS.is_dir():
        pytest.fail(f"the test images are missing: expected {CORPUS} (see ../shared/corpus/README.md)")
    return CORPUS


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    server = start_s3(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


@pytest.fixture(scope="session")
def kube(tmp_path_factory):
    emulator = start_emulator(crds=[CRD])
    kubeconfig = emulator.write_kubeconfig(tmp_path_factory.mktemp("kube") / "kubeconfig")
    yield emulator, kubeconfig
    emulator.stop()


def kube_api(kubeconfig: Path) -> kubernetes.client.ApiClient:
    return kubernetes.config.new_client_from_config(config_file=str(kubeconfig))


def chart_values(s3_endpoint: str, *, api_port: int = 8080, health_port: int = 8081, metrics_port: int = 9090,
                 **overrides) -> dict:
    """Helm values that point the chart at the test platform (external S3 on loopback); overrides merge in."""
    values = {
        "s3": {"endpoint": s3_endpoint, "existingSecret": SECRET, "bucket": BUCKET,
               "publicEndpoint": f"http://{s3_endpoint}"},
        "minio": {"enabled": False},
        "api": {"port": api_port, "metricsPort": metrics_port,
                "urls": {"allowedHosts": ["127.0.0.1"]},  # the tests' image server; other loopback names refused
                # Not a chart value: a short Kubernetes timeout keeps the lost-response tests short.
                "extraEnv": [{"name": "KRESIZE_KUBE_TIMEOUT_SECONDS", "value": "3"}]},
        "operator": {"healthPort": health_port, "maxPods": 2, "allowedBuckets": [ALLOWED_MISSING_BUCKET],
                     "gc": {"intervalSeconds": 1, "orphanGraceSeconds": ORPHAN_GRACE_SECONDS},
                     "metricsPort": metrics_port,
                     # Not a chart value: a fast sync keeps the tests short.
                     "extraEnv": [{"name": "KRESIZE_SCHEDULE_INTERVAL_SECONDS", "value": "0.5"},
                                  # a few corpus images make several shards, so pods can be shared
                                  {"name": "KRESIZE_SHARD_MIN_IMAGES", "value": "2"},
                                  {"name": "KRESIZE_PROGRESS_INTERVAL_SECONDS", "value": "0.5"}]},
    }
    return merge(values, overrides)


def merge(base: dict, overrides: dict) -> dict:
    merged = dict(base)
    for key, value in overrides.items():
        merged[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return merged


TENANTS = ("alice", "bob")  # added to the chart's tokens Secret as a user would (kubectl patch)


def install_api_tokens(api_client: kubernetes.client.ApiClient, namespace: str, s3_server) -> dict[str, str]:
    """Create the chart's API tokens Secret (as `helm install` renders it) plus two tenants; their tokens."""
    (secret,) = [doc for doc in render_chart(chart_values(s3_server.endpoint), namespace)
                 if doc["kind"] == "Secret" and doc["metadata"]["name"].endswith("-api-tokens")]
    tokens = {tenant: base64.b64decode(value).decode() for tenant, value in secret["data"].items()}
    tokens.update({tenant: secrets.token_urlsafe(24) for tenant in TENANTS})
    secret["data"] = {tenant: base64.b64encode(token.encode()).decode() for tenant, token in tokens.items()}
    kubernetes.client.CoreV1Api(api_client).create_namespaced_secret(namespace, secret)
    return tokens


def create_s3_secret(api_client: kubernetes.client.ApiClient, namespace: str, s3_server) -> None:
    """The Secret the chart's `s3.existingSecret` names (keys accessKey, secretKey)."""
    kubernetes.client.CoreV1Api(api_client).create_namespaced_secret(namespace, {
        "metadata": {"name": SECRET},
        "data": {"accessKey": base64.b64encode(s3_server.access_key.encode()).decode(),
                 "secretKey": base64.b64encode(s3_server.secret_key.encode()).decode()},
    })


@dataclass
class Component:
    program: Program
    url: str  # the API's base URL, or the operator's liveness endpoint
    metrics_url: str  # where Prometheus scrapes it

    def stop(self) -> None:
        self.program.stop()


def start_component(component: str, s3_server, kubeconfig: Path, log: Path, *, namespace: str = NAMESPACE,
                    wait: bool = True, program_kubeconfig: Path | None = None, command: list[str] | None = None,
                    **values) -> Component:
    """The chart's API or operator, started as its pod runs it (harness/pods.py), on free loopback ports.

    `kubeconfig` reaches the apiserver the pod's Secrets are read from; the program itself gets
    `program_kubeconfig` when given (say, one pointing at a dead apiserver).
    """
    api_port, health_port, metrics_port = free_ports(3)
    program = chart_program(component, values=chart_values(s3_server.endpoint, api_port=api_port,
                                                           health_port=health_port, metrics_port=metrics_port,
                                                           **values),
                            namespace=namespace, api=kube_api(kubeconfig),
                            kubeconfig=program_kubeconfig or kubeconfig, log=log, command=command)
    url = f"http://127.0.0.1:{api_port}" if component == "api" else f"http://127.0.0.1:{health_port}/healthz"
    program.start()
    if wait:
        program.wait_http(url if component == "operator" else f"{url}/healthz", timeout=60)
    return Component(program, url, f"http://127.0.0.1:{metrics_port}/metrics")


@dataclass
class Platform:
    api_url: str
    kubeconfig: Path
    api: kubernetes.client.ApiClient
    s3: object  # minio.Minio
    runner: JobRunner
    operator: Component
    restart: Callable[..., Component]
    api_component: Component
    tokens: dict[str, str]  # tenant -> bearer token; "admin" is the chart's admin tenant

    def client(self, tenant: str = "admin", **kwargs) -> httpx.Client:
        """An HTTP client of the API, authenticated as `tenant` (None: no token)."""
        headers = {"Authorization": f"Bearer {self.tokens[tenant]}"} if tenant else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=kwargs.pop("timeout", 60), **kwargs)

    @property
    def custom(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.api)

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api)

    @property
    def batch(self) -> kubernetes.client.BatchV1Api:
        return kubernetes.client.BatchV1Api(self.api)

    def resizejob(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", name)

    def restart_operator(self) -> None:
        """SIGKILL the operator and start a new one, as when its pod is deleted."""
        self.operator.program.kill()
        self.operator = self.restart(wait=False)


@pytest.fixture(scope="session")
def platform(s3_server, kube, tmp_path_factory) -> Platform:
    _, kubeconfig = kube
    logs = tmp_path_factory.mktemp("logs")
    api_client = kube_api(kubeconfig)
    create_s3_secret(api_client, NAMESPACE, s3_server)
    tokens = install_api_tokens(api_client, NAMESPACE, s3_server)
    ensure_bucket(s3_server.client(), BUCKET)  # what an installed system has after its first upload
    runner = JobRunner(kubeconfig=kubeconfig, namespace=NAMESPACE, log_dir=logs / "pods")
    runner.start()

    def start_operator(wait: bool = True) -> Component:
        return start_component("operator", s3_server, kubeconfig, logs / "operator.log", wait=wait)

    operator = start_operator()
    api = start_component("api", s3_server, kubeconfig, logs / "api.log")
    platform = Platform(api.url, kubeconfig, api_client, s3_server.client(), runner, operator, start_operator, api,
                        tokens)
    yield platform
    print(f"\n--- operator log tail ---\n{platform.operator.program.tail(40)}\n"
          f"--- api log tail ---\n{api.program.tail(20)}")
    api.stop()
    platform.operator.stop()
    runner.stop()
