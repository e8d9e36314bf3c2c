"""An apiserver for tests: kmock's KubernetesEmulator, served over real HTTP, extended with the
apiserver behaviour our code relies on.

kmock provides the HTTP server, request parsing, discovery (/api, /apis, resource lists) and error
rendering. Object handling is replaced with apiserver semantics: metadata.uid, resourceVersion (global
counter; no-op writes change nothing), generation (bumped on spec changes only), creationTimestamp,
201/409/404, merge/JSON/strategic patches (strategic treated as merge) and PUT with resourceVersion
preconditions, the status subresource (main endpoint ignores .status, /status changes only .status),
labelSelector/fieldSelector on list and watch, watch resumption from a resourceVersion, finalizers,
ownerReference garbage collection (background cascade), and for CRDs: structural pruning, defaulting and
validation against the openAPIV3Schema (422 Invalid), list-type map/set uniqueness, and the CEL transition
rule `self == oldSelf` (other CEL rules are not evaluated here; the real-cluster e2e suite covers them).

Known gaps: kmock 0.8 cannot parse `POST /api/v1/namespaces` (namespaces cannot be created over HTTP; objects
may live in any namespace without one), and `/apis/` with a trailing slash is not served.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import itertools
import json
import re
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp.web
import attrs
import kmock
import yaml
from kmock._internal import enums, rendering
from kresize_common.spec import apply_defaults, validate


@dataclass(frozen=True)
class Kind:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    status_subresource: bool = False
    schema: dict[str, Any] | None = None
    short_names: tuple[str, ...] = ()

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version


BUILTIN_KINDS = [
    Kind("", "v1", "namespaces", "Namespace", namespaced=False, status_subresource=True),
    Kind("", "v1", "events", "Event"),
    Kind("", "v1", "secrets", "Secret"),
    Kind("", "v1", "pods", "Pod", status_subresource=True),
    Kind("batch", "v1", "jobs", "Job", status_subresource=True),
    Kind("", "v1", "resourcequotas", "ResourceQuota", status_subresource=True),
    Kind("events.k8s.io", "v1", "events", "Event"),
    Kind("coordination.k8s.io", "v1", "leases", "Lease"),
]


def kinds_from_crd(path: Path) -> list[Kind]:
    crd = yaml.safe_load(Path(path).read_text())
    spec = crd["spec"]
    return [
        Kind(spec["group"], version["name"], spec["names"]["plural"], spec["names"]["kind"],
             namespaced=spec.get("scope", "Namespaced") == "Namespaced",
             status_subresource="status" in (version.get("subresources") or {}),
             schema=version["schema"]["openAPIV3Schema"], short_names=tuple(spec["names"].get("shortNames", [])))
        for version in spec["versions"] if version.get("served", True)
    ]



def _error(status: int, reason: str, message: str) -> kmock.KubernetesError:
    return kmock.KubernetesError(status=status, reason=reason, message=message, details={"causes": []})


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# Label selectors: a=b, a==b, a!=b, a, !a, a in (x,y), a notin (x,y); comma = AND.
_SET_EXPR = re.compile(r"^\s*([\w./-]+)\s+(in|notin)\s+\(([^)]*)\)\s*$")


def _split_selector(text: str) -> list[str]:
    parts, depth, current = [], 0, ""
    for ch in text:
        depth += ch == "("
        depth -= ch == ")"
        if ch == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [p.strip() for p in [*parts, current] if p.strip()]


def label_selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    for term in _split_selector(selector or ""):
        if match := _SET_EXPR.match(term):
            key, op, values = match.group(1), match.group(2), {v.strip() for v in match.group(3).split(",")}
            if (op == "in") != (labels.get(key) in values):
                return False
        elif "!=" in term:
            key, value = (s.strip() for s in term.split("!=", 1))
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = (s.strip() for s in term.replace("==", "=").split("=", 1))
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_selector_matches(selector: str | None, obj: dict[str, Any]) -> bool:
    for term in _split_selector(selector or ""):
        negate = "!=" in term
        key, value = (s.strip() for s in term.replace("==", "=").replace("!=", "=").split("=", 1))
        current: Any = obj
        for part in key.split("."):
            current = current.get(part) if isinstance(current, dict) else None
        if (str(current) == value) == negate:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: Any, operations: list[dict[str, Any]]) -> Any:
    """RFC 6902 (add, remove, replace, test, copy, move)."""
    doc = copy.deepcopy(target)

    def parse(pointer: str) -> list[str]:
        return [p.replace("~1", "/").replace("~0", "~") for p in pointer.split("/")[1:]]

    def parent(path: list[str]) -> tuple[Any, str]:
        node = doc
        for part in path[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node, path[-1]

    def get(path: list[str]) -> Any:
        node = doc
        for part in path:
            node = node[int(part)] if isinstance(node, list) else node[part]
        return node

    for op in operations:
        path = parse(op["path"])
        kind = op["op"]
        if kind == "test":
            if get(path) != op["value"]:
                raise _error(422, "Invalid", f"test operation failed at {op['path']}")
            continue
        if kind in ("copy", "move"):
            value = copy.deepcopy(get(parse(op["from"])))
            if kind == "move":
                node, key = parent(parse(op["from"]))
                del node[int(key) if isinstance(node, list) else key]
            op = {"op": "add", "path": op["path"], "value": value}
            kind = "add"
        node, key = parent(path)
        if kind == "remove":
            del node[int(key) if isinstance(node, list) else key]
        elif isinstance(node, list):
            index = len(node) if key == "-" else int(key)
            if kind == "add":
                node.insert(index, copy.deepcopy(op["value"]))
            else:
                node[index] = copy.deepcopy(op["value"])
        else:
            if kind == "replace" and key not in node:
                raise _error(422, "Invalid", f"replace of missing path {op['path']}")
            node[key] = copy.deepcopy(op["value"])
    return doc


def prune(schema: dict[str, Any], value: Any) -> Any:
    """Structural pruning: drop fields the schema does not declare."""
    if isinstance(value, dict):
        if schema.get("x-kubernetes-preserve-unknown-fields") or "properties" not in schema:
            return value
        return {k: prune(schema["properties"][k], v) for k, v in value.items() if k in schema["properties"]}
    if isinstance(value, list) and "items" in schema:
        return [prune(schema["items"], item) for item in value]
    return value


def transition_errors(schema: dict[str, Any], new: Any, old: Any, path: str) -> list[str]:
    """The CEL transition rule `self == oldSelf` wherever the schema declares it."""
    errors = []
    for rule in schema.get("x-kubernetes-validations", []):
        if rule.get("rule", "").replace(" ", "") == "self==oldSelf" and old is not None and new != old:
            errors.append(f"{path}: Invalid value: {rule.get('message', 'the value is immutable')}")
    if isinstance(new, dict) and isinstance(old, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in new and key in old:
                errors += transition_errors(sub, new[key], old[key], f"{path}.{key}")
    return errors


@dataclass
class Fault:
    """A fault the next `times` creates of `plural` meet (RunningEmulator.inject).

    `lose-response`: the object is created (committed), then the answer is held back for `delay` seconds, as
    when a response is lost and the client times out. `fail`: 500 before anything is stored.
    """

    plural: str
    mode: str
    times: int = 1
    delay: float = 0.0


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator):
    crds: list[Path] = attrs.field(factory=list)
    faults: list[Fault] = attrs.field(factory=list, init=False)
    _kinds: dict[tuple[str, str, str], Kind] = attrs.field(factory=dict, init=False)
    _store: dict[tuple[str, str, str, str | None, str], dict[str, Any]] = attrs.field(factory=dict, init=False)
    _history: list[tuple[int, tuple[str, str, str], dict[str, Any]]] = attrs.field(factory=list, init=False)
    _watchers: list[tuple[tuple[str, str, str], asyncio.Queue]] = attrs.field(factory=list, init=False)
    _versions: Any = attrs.field(factory=lambda: itertools.count(1), init=False)
    _rv: int = attrs.field(default=0, init=False)

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for kind in [*BUILTIN_KINDS, *(k for crd in self.crds for k in kinds_from_crd(crd))]:
            self._kinds[(kind.group, kind.version, kind.plural)] = kind
            self.resources[kmock.resource(kind.group, kind.version, kind.plural)] = kmock.ResourceInfo(
                kind=kind.kind, namespaced=kind.namespaced, singular=kind.kind.lower(),
                shortnames=set(kind.short_names), subresources={"status"} if kind.status_subresource else set(),
                verbs={"create", "delete", "get", "list", "patch", "update", "watch"})
        self._put(("", "v1", "namespaces"), None, "default", {"apiVersion": "v1", "kind": "Namespace",
                                                             "metadata": {"name": "default"}})

    # -- storage ---------------------------------------------------------------------------------
    def _next_rv(self) -> str:
        self._rv = next(self._versions)
        return str(self._rv)

    def _put(self, res: tuple[str, str, str], namespace: str | None, name: str, obj: dict[str, Any]) -> dict:
        kind = self._kinds[res]
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", _now())
        meta.setdefault("generation", 1)
        meta["name"] = name
        if kind.namespaced:
            meta["namespace"] = namespace
        meta["resourceVersion"] = self._next_rv()
        obj["apiVersion"], obj["kind"] = kind.api_version, kind.kind
        self._store[(*res, namespace, name)] = obj
        return obj

    def _emit(self, res: tuple[str, str, str], kind: str, obj: dict[str, Any]) -> None:
        event = {"type": kind, "object": copy.deepcopy(obj)}
        self._history.append((self._rv, res, event))
        for watched, queue in list(self._watchers):
            if watched == res:
                queue.put_nowait(event)

    def get(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> dict | None:
        obj = self._store.get((group, version, plural, namespace, name))
        return copy.deepcopy(obj) if obj else None

    # -- HTTP ------------------------------------------------------------------------------------
    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        res = request.resource
        if res is None or request.action is None:
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        key = (res.group or "", res.version or "", res.plural or "")
        if key not in self._kinds:
            if res.plural:
                raise kmock.KubernetesResourceNotFoundError()
            return await super(kmock.KubernetesEmulator, self)._handle(request)
        kind = self._kinds[key]
        namespace = request.namespace if kind.namespaced else None
        action = request.action
        if action == enums.action.WATCH:
            return await self._watch(request, key, namespace)
        if action == enums.action.LIST:
            return self._json(self._list(request, key, kind, namespace))
        if action == enums.action.FETCH:
            return self._json(self._fetch(key, namespace, request.name))
        if action == enums.action.CREATE:
            fault = self._take_fault(key[2])
            if fault is not None and fault.mode == "fail":
                raise _error(500, "InternalError", "injected fault: the create failed before storing anything")
            created = self._json(self._create(request, key, kind, namespace), status=201)
            if fault is not None and fault.mode == "lose-response":
                await asyncio.sleep(fault.delay)
            return created
        if action == enums.action.DELETE:
            return self._json(self._delete(key, namespace, request.name))
        if request.method in (enums.method.PUT, enums.method.PATCH):
            return self._json(self._update(request, key, kind, namespace))
        raise _error(405, "MethodNotAllowed", f"{request.method} is not supported here")

    def _take_fault(self, plural: str) -> Fault | None:
        for fault in self.faults:
            if fault.plural == plural and fault.times > 0:
                fault.times -= 1
                return fault
        return None

    @staticmethod
    def _json(body: Any, status: int = 200) -> aiohttp.web.Response:
        return aiohttp.web.json_response(body, status=status)

    def _fetch(self, key, namespace, name) -> dict:
        obj = self._store.get((*key, namespace, name))
        if obj is None:
            raise _error(404, "NotFound", f'{key[2]} "{name}" not found')
        return obj

    def _matching(self, request: rendering.Request, key, namespace) -> list[dict]:
        params = request.params
        return [
            obj for (g, v, p, ns, _), obj in sorted(self._store.items(), key=lambda item: str(item[0]))
            if (g, v, p) == key and (namespace is None or ns == namespace)
            and label_selector_matches(params.get("labelSelector"), obj["metadata"].get("labels") or {})
            and field_selector_matches(params.get("fieldSelector"), obj)
        ]

    def _list(self, request, key, kind: Kind, namespace) -> dict:
        return {"apiVersion": kind.api_version, "kind": f"{kind.kind}List",
                "metadata": {"resourceVersion": str(self._rv)}, "items": self._matching(request, key, namespace)}

    async def _watch(self, request: rendering.Request, key, namespace) -> aiohttp.web.StreamResponse:
        params = request.params
        queue: asyncio.Queue = asyncio.Queue()
        since = params.get("resourceVersion")
        if since and since.isdigit() and int(since) > 0:
            backlog = [event for rv, res, event in self._history if res == key and rv > int(since)]
        else:
            backlog = [{"type": "ADDED", "object": copy.deepcopy(o)} for o in self._matching(request, key, namespace)]
        for event in backlog:
            queue.put_nowait(event)
        entry = (key, queue)
        self._watchers.append(entry)
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request._raw_request)
        timeout = float(params.get("timeoutSeconds") or 3600)
        deadline = asyncio.get_running_loop().time() + timeout
        try:
            while (left := deadline - asyncio.get_running_loop().time()) > 0:
                try:
                    event = await asyncio.wait_for(queue.get(), timeout=min(left, 5))
                except TimeoutError:
                    continue
                obj = event["object"]
                meta = obj.get("metadata", {})
                if namespace is not None and meta.get("namespace") != namespace:
                    continue
                if not label_selector_matches(params.get("labelSelector"), meta.get("labels") or {}):
                    continue
                if not field_selector_matches(params.get("fieldSelector"), obj):
                    continue
                await response.write(json.dumps(event).encode() + b"\n")
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            self._watchers.remove(entry)
        return response

    def _validated(self, kind: Kind, obj: dict[str, Any], old: dict[str, Any] | None) -> dict[str, Any]:
        if kind.schema is None:
            return obj
        meta = obj.get("metadata", {})
        obj = prune(kind.schema, obj)
        obj["metadata"] = meta
        obj = apply_defaults(kind.schema, obj)
        errors = [e.lstrip(".") for e in validate(kind.schema, {k: v for k, v in obj.items() if k != "metadata"}, "")]
        if old is not None:
            errors += [e.lstrip(".") for e in transition_errors(kind.schema, obj, old, "")]
        if errors:
            raise _error(422, "Invalid", f'{kind.kind}.{kind.group} "{meta.get("name")}" is invalid: '
                                         + ", ".join(errors))
        return obj

    def _create(self, request, key, kind: Kind, namespace) -> dict:
        obj = copy.deepcopy(request.data) if isinstance(request.data, dict) else None
        if obj is None:
            raise _error(400, "BadRequest", "the request body is not a JSON object")
        meta = obj.setdefault("metadata", {})
        name = meta.get("name") or (meta.get("generateName", "") + uuid.uuid4().hex[:5] if meta.get("generateName")
                                    else None)
        if not name:
            raise _error(422, "Invalid", "metadata.name: Required value")
        namespace = (namespace or meta.get("namespace") or "default") if kind.namespaced else None
        if (*key, namespace, name) in self._store:
            raise _error(409, "AlreadyExists", f'{key[2]}.{key[0]} "{name}" already exists')
        for field in ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp"):
            meta.pop(field, None)
        if kind.status_subresource:
            obj.pop("status", None)
        obj["metadata"]["name"] = name
        obj = self._validated(kind, obj, None)
        stored = self._put(key, namespace, name, obj)
        self._emit(key, "ADDED", stored)
        return stored

    def _update(self, request: rendering.Request, key, kind: Kind, namespace) -> dict:
        old = self._fetch(key, namespace, request.name)
        content_type = request.headers.get("Content-Type", "").split(";")[0]
        if request.method == enums.method.PUT:
            new = copy.deepcopy(request.data)
            wanted_rv = (new.get("metadata") or {}).get("resourceVersion")
            if wanted_rv and wanted_rv != old["metadata"]["resourceVersion"]:
                raise _error(409, "Conflict", "the object has been modified; please apply your changes "
                                              "to the latest version and try again")
        elif content_type == "application/json-patch+json":
            new = json_patch(old, request.data)
        else:  # merge-patch and strategic-merge-patch (lists replaced)
            new = merge_patch(old, request.data)
        status_only = request.subresource == "status"
        if kind.status_subresource:
            if status_only:
                new = {**copy.deepcopy(old), "status": new.get("status")}
                if new["status"] is None:
                    new.pop("status")
            elif "status" in old:
                new["status"] = copy.deepcopy(old["status"])
            else:
                new.pop("status", None)
        meta = new.setdefault("metadata", {})
        for field in ("uid", "creationTimestamp", "name", "namespace", "generation", "resourceVersion"):
            if field in old["metadata"]:
                meta[field] = old["metadata"][field]
        if old["metadata"].get("deletionTimestamp"):
            meta["deletionTimestamp"] = old["metadata"]["deletionTimestamp"]
        new = self._validated(kind, new, old)
        if new == old:
            return old  # a no-op write changes nothing, not even the resourceVersion
        if new.get("spec") != old.get("spec"):
            meta["generation"] = old["metadata"].get("generation", 1) + 1
        stored = self._put(key, namespace, request.name, new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            return self._remove(key, namespace, request.name)
        self._emit(key, "MODIFIED", stored)
        return stored

    def _delete(self, key, namespace, name) -> dict:
        obj = self._fetch(key, namespace, name)
        if obj["metadata"].get("finalizers"):
            if not obj["metadata"].get("deletionTimestamp"):
                obj = copy.deepcopy(obj)
                obj["metadata"]["deletionTimestamp"] = _now()
                stored = self._put(key, namespace, name, obj)
                self._emit(key, "MODIFIED", stored)
                return stored
            return obj
        return self._remove(key, namespace, name)

    def _remove(self, key, namespace, name) -> dict:
        obj = self._store.pop((*key, namespace, name))
        self._next_rv()
        obj["metadata"]["resourceVersion"] = str(self._rv)
        self._emit(key, "DELETED", obj)
        self._collect_garbage(obj["metadata"]["uid"])
        return obj

    def _collect_garbage(self, owner_uid: str) -> None:
        """Background cascading deletion of dependents."""
        for (g, v, p, ns, name), obj in list(self._store.items()):
            owners = obj["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == owner_uid for o in owners) and (g, v, p, ns, name) in self._store:
                self._delete((g, v, p), ns, name)


class RunningEmulator:
    """The emulator on 127.0.0.1:<free port>, in a thread with its own event loop."""

    def __init__(self, crds: list[Path]):
        self.emulator = KubeEmulator(crds=[Path(c) for c in crds])
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._run, name="kube-emulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start")

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with self.emulator, kmock.Server(self.emulator) as server:
            self.url = f"http://127.0.0.1:{server.port}"
            self._ready.set()
            await self._stop.wait()

    def write_kubeconfig(self, path: Path) -> Path:
        path = Path(path)
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "test-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                          "namespace": "default"}}],
        }))
        return path

    def inject(self, fault: Fault) -> Fault:
        """Arm a fault for the next creates (see Fault); its `times` counts down as it strikes."""
        self._loop.call_soon_threadsafe(self.emulator.faults.append, fault)
        return fault

    def get(self, group: str, version: str, plural: str, namespace: str | None, name: str) -> dict | None:
        return asyncio.run_coroutine_threadsafe(
            self._get(group, version, plural, namespace, name), self._loop).result(10)

    async def _get(self, *args: Any) -> dict | None:
        return self.emulator.get(*args)

    def stop(self) -> None:
        if self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(10)

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_emulator(crds: list[Path]) -> RunningEmulator:
    return RunningEmulator(crds)
