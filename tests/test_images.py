"""The three images, built from their Dockerfiles, run the way their pods run them.

`hack/build-images.sh` builds the images with buildah (no Docker engine) against a debootstrapped stand-in
for the python slim base and unpacks each one into build/images/<component>/rootfs. Each entry point then
runs on its image's root filesystem under bubblewrap (tests/harness/sandbox.py): uid 65532 with no passwd
entry, the root filesystem read-only, only /tmp writable, and only the environment the image config
(build/images/<component>/config.json) and the pod spec give it. The operator and the API get the pod spec
of the rendered Helm chart (tests/harness/pods.py) and talk to the test platform's real S3 server and
apiserver emulator; the kubeconfig stands in for the service-account mount.

Needs root, buildah, debootstrap and bwrap (apt-get install -y buildah debootstrap bubblewrap): without
them these tests skip, or fail when CI=true.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import kubernetes
import pytest
import yaml
from conftest import REPO, chart_values, create_s3_secret, install_api_tokens, kube_api
from harness.pods import chart_program
from harness.procs import Program, free_ports, wait_for
from harness.sandbox import POD_UID, pod_argv
from kresize_common.spec import Target
from kresize_resizer.pipeline import output_size
from PIL import Image, ImageOps

OUTDIR = REPO / "build" / "images"
SCRIPT = REPO / "hack" / "build-images.sh"
BUILD_LOG = REPO / "build" / "build-images.log"
BUILD_TIMEOUT = 45 * 60  # a cold build takes about 2 minutes here; PyPI may be slower elsewhere
TOOLS = ("buildah", "debootstrap", "bwrap")
COMPONENTS = ("api", "operator", "resizer")
THUMBNAILS = REPO / "manifests" / "examples" / "thumbnails.yaml"
NAMESPACE = "kresize-images"  # its own namespace: the platform fixture's operator watches "default"

pytestmark = pytest.mark.slow


@dataclass
class BuiltImage:
    name: str
    rootfs: Path
    config: dict

    @property
    def entrypoint(self) -> list[str]:
        return list(self.config["Entrypoint"])

    @property
    def env(self) -> dict[str, str]:
        """The image config's Env: what every container of the image starts with."""
        return dict(item.split("=", 1) for item in self.config["Env"] or [])

    @contextlib.contextmanager
    def mount_points(self, paths: Iterable[Path]) -> Iterator[None]:
        """Empty files and folders in the root filesystem at those of `paths` outside /tmp, while in use, as a
        container runtime creates the targets of a pod's volume mounts: bwrap cannot create them on a read-only
        root. (Under /tmp, bwrap creates them on the pod's fresh /tmp.)"""
        created: list[Path] = []
        try:
            for path in paths:
                if Path("/tmp") in path.parents:
                    continue
                target = self.rootfs / path.relative_to("/")
                missing = [p for p in (target, *target.parents) if self.rootfs in p.parents and not p.exists()]
                for p in reversed(missing):
                    if p == target and path.is_file():
                        p.touch()
                    else:
                        p.mkdir()
                    created.append(p)
            yield
        finally:
            for p in reversed(created):
                if p.is_dir():
                    p.rmdir()
                else:
                    p.unlink()


def _unavailable() -> str | None:
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return (f"building and running the images needs {', '.join(missing)} "
                "(apt-get install -y buildah debootstrap bubblewrap)")
    if os.geteuid() != 0:
        return "building the images needs root (debootstrap, buildah's vfs storage)"
    return None


@pytest.fixture(scope="session")
def images() -> dict[str, BuiltImage]:
    reason = _unavailable()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    BUILD_LOG.parent.mkdir(parents=True, exist_ok=True)
    with BUILD_LOG.open("w") as log:
        try:
            result = subprocess.run(["bash", str(SCRIPT), str(OUTDIR)], stdout=log, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, timeout=BUILD_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{SCRIPT.name} did not finish in {BUILD_TIMEOUT}s; log: {BUILD_LOG}")
    output = BUILD_LOG.read_text(errors="replace")
    if result.returncode != 0:
        pytest.fail(f"{SCRIPT.name} failed ({result.returncode}):\n" + "\n".join(output.splitlines()[-60:]))
    print(f"\n--- {SCRIPT.name} ---\n{output}")
    return {name: BuiltImage(name, OUTDIR / name / "rootfs", json.loads((OUTDIR / name / "config.json").read_text()))
            for name in COMPONENTS}


@pytest.fixture(scope="module")
def cluster(s3_server, kube) -> tuple[kubernetes.client.ApiClient, Path]:
    """The apiserver emulator with the Secrets an install has in NAMESPACE, and the kubeconfig to reach it."""
    _, kubeconfig = kube
    api = kube_api(kubeconfig)
    create_s3_secret(api, NAMESPACE, s3_server)
    install_api_tokens(api, NAMESPACE, s3_server)
    return api, kubeconfig


def image_pod(image: BuiltImage, component: str, s3_server, cluster, log: Path) -> tuple[Program, str]:
    """The chart's `component` (api, operator) run as its pod runs it on its image; not started yet.
    Returns the program and the URL of its probe."""
    api, kubeconfig = cluster
    api_port, health_port, metrics_port = free_ports(3)
    values = chart_values(s3_server.endpoint, api_port=api_port, health_port=health_port, metrics_port=metrics_port)
    program = chart_program(component, values=values, namespace=NAMESPACE, api=api, kubeconfig=kubeconfig, log=log,
                            rootfs=image.rootfs, image_env=image.env, entrypoint=image.entrypoint)
    port = api_port if component == "api" else health_port
    return program, f"http://127.0.0.1:{port}/{'readyz' if component == 'api' else 'healthz'}"


@pytest.mark.parametrize("name", COMPONENTS)
def test_image_config_is_what_the_pod_needs(images, name):
    image = images[name]
    assert image.config["User"] == f"{POD_UID}:{POD_UID}"  # numeric, so runAsNonRoot can check it
    assert image.config["WorkingDir"] == "/tmp"
    assert image.entrypoint == [f"kresize-{name}"]
    assert image.env["HOME"] == "/tmp" and image.env["PYTHONDONTWRITEBYTECODE"] == "1"
    assert "/usr/local/bin" in image.env["PATH"].split(":")
    assert (image.rootfs / "usr" / "local" / "bin" / f"kresize-{name}").is_file()
    assert f":{POD_UID}:" not in (image.rootfs / "etc" / "passwd").read_text()  # the pod user has no name
    assert not (image.rootfs / "wheels").exists()  # bind-mounted from the builder, never in a layer


def test_resizer_local_on_the_corpus(images, corpus, tmp_path):
    image = images["resizer"]
    photos = corpus / "photos"
    out = tmp_path / "out"
    out.mkdir()
    argv = [*image.entrypoint, "local", "--spec", str(THUMBNAILS), "--input", str(photos), "--output", str(out)]
    with image.mount_points([photos, THUMBNAILS, out]):
        result = subprocess.run(
            pod_argv(argv, image.env, rootfs=image.rootfs, read_only=[photos, THUMBNAILS], writable=[out]),
            capture_output=True, text=True, timeout=300, env={})
    assert result.returncode == 0, result.stderr

    targets = [Target.from_dict(t) for t in yaml.safe_load(THUMBNAILS.read_text())["spec"]["targets"]]
    records = {r["source"]: r for r in json.loads((out / "results.json").read_text())}
    sources = sorted(p for p in photos.iterdir() if p.is_file() and not p.name.startswith("."))
    assert sorted(records) == [p.name for p in sources]
    for source in sources:
        record = records[source.name]
        assert record["status"] == "succeeded" and record["error"] is None, record
        with Image.open(source) as original:
            upright = ImageOps.exif_transpose(original).size
        assert [o["target"] for o in record["outputs"]] == [t.name for t in targets]
        for target, output in zip(targets, record["outputs"], strict=True):
            assert output["path"] == f"{source.stem}/{target.name}.jpg"  # jpeg, and `original` of a JPEG
            path = out / output["path"]
            with Image.open(path) as variant:
                assert variant.format == "JPEG"
                assert variant.size == (output["width"], output["height"]) == output_size(*upright, target)
            assert output["bytes"] == path.stat().st_size


def test_operator_starts_and_runs_a_resizejob(images, s3_server, cluster, corpus, tmp_path):
    """In its image, the operator answers its probe, then plans a ResizeJob and creates its Job."""
    api, _ = cluster
    operator, probe = image_pod(images["operator"], "operator", s3_server, cluster, tmp_path / "operator.log")
    s3_server.client().fput_object("kresize", "samples/image-test/a.jpg", str(corpus / "photos" / "DSCN0010.jpg"))
    with images["operator"].mount_points([cluster[1]]):
        operator.start()
        try:
            operator.wait_http(probe, timeout=90)
            custom = kubernetes.client.CustomObjectsApi(api)
            custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", {
                "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": "in-image"},
                "spec": {"source": {"prefix": "samples/image-test/"}, "targets": [{"name": "t", "width": 8}]}})
            wait_for(lambda: (custom.get_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs",
                                                                  "in-image").get("status") or {}).get("phase")
                     == "Running", 60, message=f"the ResizeJob to run\n{operator.tail()}")
            assert kubernetes.client.BatchV1Api(api).read_namespaced_job("in-image-resize", NAMESPACE)
            assert operator.alive(), operator.tail()
        finally:
            operator.stop()


def test_api_starts_and_is_ready(images, s3_server, cluster, tmp_path):
    api, probe = image_pod(images["api"], "api", s3_server, cluster, tmp_path / "api.log")
    with images["api"].mount_points([cluster[1]]):
        api.start()
        try:
            api.wait_http(probe, timeout=90)
            assert api.alive(), api.tail()
        finally:
            api.stop()
