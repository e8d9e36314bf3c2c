"""Shared fixtures: the whole platform from real parts on loopback.

- S3: a real SeaweedFS server (tests/harness/s3.py), with credentials it enforces.
- Kubernetes API: kmock's emulator extended with apiserver semantics (tests/harness/kube.py), over HTTP.
- Jobs: a stand-in for the Job controller and kubelet that runs the real `kresize-resizer` per index
  (tests/harness/jobs.py).
- The real `kresize-operator` (kopf) and `kresize-api` (uvicorn) as subprocesses, configured by env vars only.
"""

from __future__ import annotations

import base64
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import kubernetes
import pytest
from harness.jobs import JobRunner
from harness.kube import start_emulator
from harness.procs import Program, free_port, program
from harness.s3 import start_s3
from kresize_common.s3 import ensure_bucket

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
CRD = REPO / "manifests" / "crds" / "resizejobs.kresize.dev.yaml"
NAMESPACE = "default"
BUCKET = "kresize"
SECRET = "kresize-s3"

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


def component_env(s3_server, kubeconfig: Path, **extra: str) -> dict[str, str]:
    return {
        "KUBECONFIG": str(kubeconfig),
        "KRESIZE_NAMESPACE": NAMESPACE,
        "KRESIZE_S3_ENDPOINT": s3_server.endpoint,
        "KRESIZE_S3_ACCESS_KEY": s3_server.access_key,
        "KRESIZE_S3_SECRET_KEY": s3_server.secret_key,
        "KRESIZE_S3_SECURE": "false",
        "KRESIZE_S3_BUCKET": BUCKET,
        "KRESIZE_S3_PUBLIC_ENDPOINT": f"http://{s3_server.endpoint}",
        "KRESIZE_JOB_S3_SECRET": SECRET,
        "KRESIZE_RESIZER_IMAGE": "kresize/resizer:dev",
        "KRESIZE_SYNC_INTERVAL_SECONDS": "0.5",
        "KRESIZE_MAX_PARALLELISM": "2",
        **extra,
    }


@dataclass
class Platform:
    api_url: str
    kubeconfig: Path
    api: kubernetes.client.ApiClient
    s3: object  # minio.Minio
    runner: JobRunner
    operator: Program
    operator_args: tuple[list[str], dict[str, str], Path]

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
        self.operator.kill()
        args, env, log = self.operator_args
        self.operator = Program(args, env, log).start()


@pytest.fixture(scope="session")
def platform(s3_server, kube, tmp_path_factory) -> Platform:
    _, kubeconfig = kube
    logs = tmp_path_factory.mktemp("logs")
    api_client = kube_api(kubeconfig)
    core = kubernetes.client.CoreV1Api(api_client)
    core.create_namespaced_secret(NAMESPACE, {
        "metadata": {"name": SECRET},
        "data": {"accessKey": base64.b64encode(s3_server.access_key.encode()).decode(),
                 "secretKey": base64.b64encode(s3_server.secret_key.encode()).decode()},
    })
    ensure_bucket(s3_server.client(), BUCKET)  # what an installed system has after its first upload
    runner = JobRunner(kubeconfig=kubeconfig, namespace=NAMESPACE, log_dir=logs / "pods")
    runner.start()
    env = component_env(s3_server, kubeconfig)
    health = f"http://127.0.0.1:{free_port()}/healthz"  # as the chart runs it, for the liveness probe
    operator_args = ([program("kresize-operator"), "--namespace", NAMESPACE, "--liveness", health], env,
                     logs / "operator.log")
    operator = Program(*operator_args).start()
    operator.wait_http(health, timeout=60)
    port = free_port()
    api = Program([program("kresize-api"), "--port", str(port)], env, logs / "api.log").start()
    api.wait_http(f"http://127.0.0.1:{port}/healthz")
    platform = Platform(f"http://127.0.0.1:{port}", kubeconfig, api_client, s3_server.client(), runner, operator,
                        operator_args)
    yield platform
    print(f"\n--- operator log tail ---\n{platform.operator.tail(40)}\n--- api log tail ---\n{api.tail(20)}")
    api.stop()
    platform.operator.stop()
    runner.stop()
