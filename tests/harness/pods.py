"""Our programs as their pods run them: the command and environment come from what Kubernetes would get.

- The API and the operator: from the Helm chart, rendered with `helm template` (the Deployment's container
  args and env, `valueFrom` resolved the way the kubelet resolves it).
- The resizer: from the Job spec the operator built (harness/jobs.py resolves it the same way).

Each is started under container rules (harness/sandbox.py). The one addition is KUBECONFIG, a file that
stands in for the service-account token the pod would get mounted (in-cluster config needs HTTPS to
`kubernetes.default`; the emulator speaks plain HTTP on loopback).
"""

from __future__ import annotations

import base64
import functools
import importlib.util
import json
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import kubernetes
import yaml

from .procs import Program, program
from .sandbox import IMAGE_ENV, pod_argv

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "kresize"
RELEASE = "kresize"
ENTRYPOINTS = {"api": "kresize-api", "operator": "kresize-operator", "resizer": "kresize-resizer"}
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


@functools.cache
def helm() -> str:
    spec = importlib.util.spec_from_file_location("kresize_generate", REPO / "hack" / "generate.py")
    assert spec and spec.loader
    generate = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("kresize_generate", generate)  # dataclasses look their module up by name
    spec.loader.exec_module(generate)
    return generate.find_helm()


@functools.cache
def _render(values_json: str, namespace: str) -> tuple[dict[str, Any], ...]:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as values:
        values.write(values_json)  # JSON is YAML
        values.flush()
        result = subprocess.run(
            [helm(), "template", RELEASE, str(CHART), "--namespace", namespace, "-f", values.name],
            capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed: {result.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(result.stdout) if doc)


def render_chart(values: Mapping[str, Any], namespace: str) -> list[dict[str, Any]]:
    """The chart's objects for these values (cached: the same values render the same objects)."""
    return list(_render(json.dumps(values, sort_keys=True), namespace))


def chart_pod(objects: list[dict[str, Any]], component: str) -> dict[str, Any]:
    """The pod spec of the chart's Deployment for `component` (api, operator)."""
    for doc in objects:
        labels = doc["metadata"].get("labels") or {}
        if doc["kind"] == "Deployment" and labels.get("app.kubernetes.io/component") == component:
            return doc["spec"]["template"]["spec"]
    raise LookupError(f"the chart renders no Deployment for {component}")


def resolve_env(
    env: list[dict[str, Any]], *, secret: Callable[[str], Mapping[str, str]], fields: Mapping[str, str],
) -> dict[str, str]:
    """A container's `env` as the kubelet hands it to the process: `value`, `secretKeyRef`, `fieldRef`.

    `secret(name)` returns a Secret's data (base64, as the API returns it); a missing non-optional key is an
    error, as it keeps a real pod from starting. Later entries override earlier ones, as in Kubernetes.
    """
    resolved: dict[str, str] = {}
    for var in env:
        name, source = var["name"], var.get("valueFrom")
        if source is None:
            resolved[name] = str(var.get("value", ""))
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = secret(ref["name"])
            if ref["key"] in data:
                resolved[name] = base64.b64decode(data[ref["key"]]).decode()
            elif not ref.get("optional"):
                raise RuntimeError(f"Secret {ref['name']} has no key {ref['key']} (the pod would not start)")
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            if path not in fields:
                raise RuntimeError(f"fieldRef {path} is not provided by the test's pod stand-in")
            resolved[name] = fields[path]
        else:
            raise RuntimeError(f"env {name}: valueFrom {sorted(source)} is not supported by the pod stand-in")
    return resolved


def secret_reader(api: kubernetes.client.ApiClient, namespace: str) -> Callable[[str], Mapping[str, str]]:
    core = kubernetes.client.CoreV1Api(api)

    def read(name: str) -> Mapping[str, str]:
        try:
            return core.read_namespaced_secret(name, namespace).data or {}
        except kubernetes.client.ApiException as error:
            if error.status == 404:
                return {}
            raise

    return read


def secret_volumes(
    pod: dict[str, Any], container: dict[str, Any], secret: Callable[[str], Mapping[str, str]], scratch: Path,
) -> dict[str, Path]:
    """The container's Secret volumes as the kubelet lays them out: a folder with one file per key."""
    volumes = {v["name"]: v for v in pod.get("volumes") or []}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        source = volumes[mount["name"]].get("secret")
        if source is None:
            continue  # emptyDir /tmp: the sandbox's own /tmp
        data = secret(source["secretName"])
        if not data and not source.get("optional"):
            raise RuntimeError(f"Secret {source['secretName']} is missing or empty (the pod would not start)")
        folder = scratch / mount["name"]
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in data.items():
            (folder / key).write_bytes(base64.b64decode(value))
        mounts[mount["mountPath"]] = folder
    return mounts


def chart_program(
    component: str, *, values: Mapping[str, Any], namespace: str, api: kubernetes.client.ApiClient,
    kubeconfig: Path, log: Path, command: list[str] | None = None, rootfs: Path | str = "/",
    image_env: Mapping[str, str] = IMAGE_ENV, entrypoint: list[str] | None = None,
) -> Program:
    """The chart's `component` (api, operator) as its pod runs it; not started yet.

    By default on the host's root filesystem with the test virtualenv standing in for the image; with
    `rootfs`, `image_env` and `entrypoint` from a built image (tests/test_images.py), on that image.
    `command`, as in a pod spec, replaces the image's entrypoint (and the chart's command). Secret volumes
    are written next to `log` and mounted where the pod would have them.
    """
    pod = chart_pod(render_chart(values, namespace), component)
    container = pod["containers"][0]
    pod_name = f"{RELEASE}-{component}-7d9f8c6b5-x2x4q"
    secret = secret_reader(api, namespace)
    env = {
        **image_env,
        "HOSTNAME": pod_name,
        **resolve_env(container.get("env") or [], secret=secret,
                      fields={"metadata.name": pod_name, "metadata.namespace": namespace}),
        "KUBECONFIG": str(kubeconfig),
    }
    mounts = secret_volumes(pod, container, secret, Path(tempfile.mkdtemp(prefix=f"{component}-volumes-",
                                                                           dir=log.parent)))
    argv = [*(command or container.get("command") or entrypoint or [program(ENTRYPOINTS[component])]),
            *(container.get("args") or [])]
    return Program(pod_argv(argv, env, rootfs=rootfs, read_only=[kubeconfig], mounts=mounts), {}, log)
