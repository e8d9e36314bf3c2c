"""The sample images the examples in manifests/examples/ read, put where they expect them (`samples/`).

`make up` runs this after installing the chart; the e2e suite calls `seed()` too, so every example runs as
written on a fresh install. Idempotent: the same bytes are written again under the same keys.

    .venv/bin/python hack/samples.py [--endpoint localhost:30900] [--namespace kresize] [--bucket kresize]

Credentials are read from the chart's Secret (`kresize-s3`, keys accessKey/secretKey) in the namespace,
through the current kubeconfig context, unless KRESIZE_S3_ACCESS_KEY and KRESIZE_S3_SECRET_KEY are set.
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from minio import Minio
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO.parent / "shared" / "corpus"
PREFIX = "samples/"


@dataclass(frozen=True)
class Sample:
    key: str  # where the examples read it
    source: Path  # the corpus file it is made from
    convert_to: str | None = None  # a Pillow format to re-encode it as (the examples read a PNG, say)

    def data(self) -> bytes:
        if self.convert_to is None:
            return self.source.read_bytes()
        out = io.BytesIO()
        with Image.open(self.source) as image:
            image.save(out, self.convert_to)
        return out.getvalue()


def samples(corpus: Path = CORPUS) -> list[Sample]:
    """Every camera photo of the corpus, plus the two originals manifests/examples/multi-target.yaml names."""
    photos = [Sample(f"{PREFIX}{path.name}", path) for path in sorted((corpus / "photos").glob("*.jpg"))]
    return [
        *photos,
        Sample(f"{PREFIX}landscape.jpg", corpus / "orientation" / "Landscape_1.jpg"),
        Sample(f"{PREFIX}portrait.png", corpus / "orientation" / "Portrait_1.jpg", convert_to="PNG"),
    ]


def seed(s3: Minio, bucket: str, corpus: Path = CORPUS) -> list[Sample]:
    if not s3.bucket_exists(bucket):
        s3.make_bucket(bucket)
    seeded = samples(corpus)
    for sample in seeded:
        data = sample.data()
        content_type = Image.MIME.get((sample.convert_to or "JPEG").upper(), "application/octet-stream")
        s3.put_object(bucket, sample.key, io.BytesIO(data), len(data), content_type=content_type)
    return seeded


def credentials(namespace: str, secret: str = "kresize-s3") -> tuple[str, str]:
    access, secret_key = os.environ.get("KRESIZE_S3_ACCESS_KEY"), os.environ.get("KRESIZE_S3_SECRET_KEY")
    if access and secret_key:
        return access, secret_key
    import kubernetes

    api = kubernetes.config.new_client_from_config()
    data = kubernetes.client.CoreV1Api(api).read_namespaced_secret(secret, namespace).data
    return base64.b64decode(data["accessKey"]).decode(), base64.b64decode(data["secretKey"]).decode()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", default="localhost:30900", help="S3 host:port (kind: the node port)")
    parser.add_argument("--namespace", default="kresize", help="where the chart's S3 Secret is")
    parser.add_argument("--bucket", default="kresize")
    args = parser.parse_args()
    if not CORPUS.is_dir():
        print(f"the sample images are missing: expected {CORPUS}", file=sys.stderr)
        return 1
    access, secret_key = credentials(args.namespace)
    s3 = Minio(args.endpoint, access_key=access, secret_key=secret_key, secure=False, region="us-east-1")
    for sample in seed(s3, args.bucket):
        print(f"  s3://{args.bucket}/{sample.key}  <- {sample.source.relative_to(CORPUS.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
