"""What every platform benchmark starts first: SeaweedFS S3 with the platform's bucket, and the apiserver emulator
with the CRD, the S3 Secret and the API tokens Secret, as an installed chart has them."""

from __future__ import annotations

import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import kubernetes

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from conftest import BUCKET, CRD, NAMESPACE, create_s3_secret, install_api_tokens, kube_api  # noqa: E402
from harness.kube import start_emulator  # noqa: E402
from harness.s3 import start_s3  # noqa: E402
from kresize_common.s3 import ensure_bucket  # noqa: E402


@dataclass
class Backends:
    work: Path  # a fresh folder for logs and data
    s3_server: object  # harness.s3's server
    emulator: object  # harness.kube's emulator
    kubeconfig: Path
    api: kubernetes.client.ApiClient
    token: str  # the admin tenant's API token

    def stop(self) -> None:
        self.emulator.stop()
        self.s3_server.stop()


def start_backends(name: str) -> Backends:
    work = Path(tempfile.mkdtemp(prefix=f"kresize-bench-{name}-"))
    (work / "s3").mkdir()
    s3_server = start_s3(work / "s3")
    emulator = start_emulator(crds=[CRD])
    kubeconfig = emulator.write_kubeconfig(work / "kubeconfig")
    api = kube_api(kubeconfig)
    create_s3_secret(api, NAMESPACE, s3_server)
    token = install_api_tokens(api, NAMESPACE, s3_server)["admin"]
    ensure_bucket(s3_server.client(), BUCKET)
    return Backends(work, s3_server, emulator, kubeconfig, api, token)
