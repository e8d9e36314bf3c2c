"""The e2e suite against a real cluster (KUBECONFIG), with kresize installed by `make up` or the chart.

Skipped, with the reason, when no cluster is reachable. Settings (defaults fit `make up` on kind):
KRESIZE_E2E_NAMESPACE (kresize), KRESIZE_E2E_API_URL (http://localhost:30080), KRESIZE_E2E_S3_ENDPOINT
(localhost:30900), KRESIZE_E2E_S3_ACCESS_KEY / _SECRET_KEY (default: read from the Secret kresize-s3),
KRESIZE_E2E_BUCKET (kresize), KRESIZE_E2E_TOKEN (default: the admin token from the Secret kresize-api-tokens).
"""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import httpx
import kubernetes
import pytest
import urllib3
from harness.examples import samples_module
from minio import Minio

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO.parent / "shared" / "corpus"




@dataclass
class Cluster:
    api: kubernetes.client.ApiClient
    namespace: str
    api_url: str
    s3: Minio
    bucket: str
    kubectl_path: str
    token: str  # the admin tenant's API token

    def client(self, token: str | None = None) -> httpx.Client:
        """An HTTP client of the API with a bearer token (the admin's by default; "" for none)."""
        token = self.token if token is None else token
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return httpx.Client(base_url=self.api_url, headers=headers, timeout=300)

    @property
    def custom(self) -> kubernetes.client.CustomObjectsApi:
        return kubernetes.client.CustomObjectsApi(self.api)

    @property
    def batch(self) -> kubernetes.client.BatchV1Api:
        return kubernetes.client.BatchV1Api(self.api)

    @property
    def core(self) -> kubernetes.client.CoreV1Api:
        return kubernetes.client.CoreV1Api(self.api)

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run([self.kubectl_path, "-n", self.namespace, *args], capture_output=True, text=True,
                                timeout=120)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {result.stderr}")
        return result

    def resizejob(self, name: str) -> dict:
        return self.custom.get_namespaced_custom_object("kresize.dev", "v1alpha1", self.namespace, "resizejobs", name)


def _kubectl() -> str | None:
    for candidate in (REPO / "bin" / "kubectl", REPO / ".tools" / "bin" / "kubectl"):
        if candidate.exists():
            return str(candidate)
    return shutil.which("kubectl")


@pytest.fixture(scope="session")
def cluster() -> Cluster:
    where = os.environ.get("KUBECONFIG", "~/.kube/config")
    try:
        api = kubernetes.config.new_client_from_config()
        kubernetes.client.VersionApi(api).get_code(_request_timeout=5)
    except Exception as error:  # noqa: BLE001 - any failure means: no cluster to test against
        pytest.skip(f"no reachable Kubernetes cluster (KUBECONFIG={where}): {type(error).__name__}: {error}")
    kubectl = _kubectl()
    if kubectl is None:
        pytest.skip("kubectl not found (run `hack/tools.sh dev` or put it on PATH)")
    namespace = os.environ.get("KRESIZE_E2E_NAMESPACE", "kresize")
    access, secret = os.environ.get("KRESIZE_E2E_S3_ACCESS_KEY"), os.environ.get("KRESIZE_E2E_S3_SECRET_KEY")
    if not (access and secret):
        data = kubernetes.client.CoreV1Api(api).read_namespaced_secret("kresize-s3", namespace).data
        access, secret = (base64.b64decode(data[k]).decode() for k in ("accessKey", "secretKey"))
    s3 = Minio(os.environ.get("KRESIZE_E2E_S3_ENDPOINT", "localhost:30900"), access_key=access, secret_key=secret,
               secure=os.environ.get("KRESIZE_E2E_S3_SECURE", "false") == "true", region="us-east-1",
               http_client=urllib3.PoolManager(timeout=urllib3.Timeout(connect=5, read=60)))
    bucket = os.environ.get("KRESIZE_E2E_BUCKET", "kresize")
    if not s3.bucket_exists(bucket):
        s3.make_bucket(bucket)
    token = os.environ.get("KRESIZE_E2E_TOKEN") or base64.b64decode(
        kubernetes.client.CoreV1Api(api).read_namespaced_secret("kresize-api-tokens", namespace).data["admin"]).decode()
    return Cluster(api, namespace, os.environ.get("KRESIZE_E2E_API_URL", "http://localhost:30080"), s3, bucket,
                   kubectl, token)


@pytest.fixture(scope="session")
def samples(cluster) -> list:
    """What `make up` seeds (hack/samples.py), seeded again here (idempotent) so the suite runs on any install."""
    return samples_module().seed(cluster.s3, cluster.bucket, CORPUS)
