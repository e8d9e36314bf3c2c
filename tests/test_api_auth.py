"""Authentication and tenants: every /v1 route needs a token; a tenant sees only its own jobs.

Someone else's job answers 404, exactly like a missing one, so job names do not leak across tenants.
"""

from __future__ import annotations

import httpx
import pytest
from conftest import NAMESPACE, start_component
from harness.images import noise_png
from harness.procs import wait_for
from kresize_api.auth import TENANT_LABEL, TokenStore

pytestmark = pytest.mark.slow
ROUTES = [("post", "/v1/jobs"), ("get", "/v1/jobs"), ("get", "/v1/jobs/any"), ("delete", "/v1/jobs/any")]


def submit(client: httpx.Client) -> str:
    response = client.post("/v1/jobs", files=[("files", ("a.png", noise_png(8)))], data={"width": "4"})
    assert response.status_code == 202, response.text
    return response.json()["name"]


@pytest.mark.parametrize(("method", "path"), ROUTES)
def test_every_route_needs_a_valid_token(platform, method, path):
    for headers in ({}, {"Authorization": "Bearer not-a-token-of-anyone"}, {"Authorization": "Basic YTpi"}):
        response = httpx.request(method.upper(), f"{platform.api_url}{path}", headers=headers, timeout=30)
        assert response.status_code == 401, (headers, response.text)
        assert response.headers["www-authenticate"] == "Bearer"


def test_health_is_open_and_says_nothing_internal(platform):
    assert httpx.get(f"{platform.api_url}/healthz").json() == {"status": "ok"}
    assert httpx.get(f"{platform.api_url}/readyz").json() == {"status": "ready"}


def test_tenants_see_only_their_own_jobs(platform):
    with platform.client("alice") as alice, platform.client("bob") as bob, platform.client("admin") as admin:
        name = submit(alice)
        assert platform.resizejob(name)["metadata"]["labels"][TENANT_LABEL] == "alice"
        assert name in {j["name"] for j in alice.get("/v1/jobs").json()["items"]}
        assert name not in {j["name"] for j in bob.get("/v1/jobs").json()["items"]}
        assert name in {j["name"] for j in admin.get("/v1/jobs").json()["items"]}
        assert alice.get(f"/v1/jobs/{name}").status_code == 200
        assert admin.get(f"/v1/jobs/{name}").status_code == 200
        for response in (bob.get(f"/v1/jobs/{name}"), bob.delete(f"/v1/jobs/{name}")):
            assert response.status_code == 404
            assert response.json() == {"error": {"status": 404, "message": f"no job named {name!r}", "details": [],
                                                 "files": None}}
            assert bob.get("/v1/jobs/no-such-job").json()["error"]["message"] == "no job named 'no-such-job'"
        assert platform.resizejob(name)  # bob's delete did nothing
        assert alice.delete(f"/v1/jobs/{name}").status_code == 202
        wait_for(lambda: name not in {j["metadata"]["name"] for j in platform.custom.list_namespaced_custom_object(
            "kresize.dev", "v1alpha1", NAMESPACE, "resizejobs")["items"]}, 30, message="the job to be deleted")


def test_jobs_made_with_kubectl_are_for_admins_only(platform):
    platform.custom.create_namespaced_custom_object("kresize.dev", "v1alpha1", NAMESPACE, "resizejobs", {
        "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": "by-kubectl"},
        "spec": {"source": {"prefix": "nothing/"}, "targets": [{"name": "t", "width": 10}]}})
    with platform.client("alice") as alice, platform.client("admin") as admin:
        assert alice.get("/v1/jobs/by-kubectl").status_code == 404
        assert "by-kubectl" not in {j["name"] for j in alice.get("/v1/jobs").json()["items"]}
        assert admin.get("/v1/jobs/by-kubectl").status_code == 200
        assert "by-kubectl" in {j["name"] for j in admin.get("/v1/jobs").json()["items"]}


def test_tokens_never_reach_the_log(platform):
    with platform.client("alice") as alice:
        submit(alice)
    log = platform.api_component.program.log.read_text()
    assert all(token not in log for token in platform.tokens.values())


def test_auth_off_is_explicit_and_warned(platform, s3_server, kube, tmp_path):
    api = start_component("api", s3_server, kube[1], tmp_path / "api.log", api={"auth": {"enabled": False}})
    try:
        assert httpx.get(f"{api.url}/v1/jobs", timeout=30).status_code == 200
        assert "KRESIZE_AUTH=none: authentication is OFF" in api.program.log.read_text()
    finally:
        api.stop()


def test_presigned_links_live_a_day_at_most(platform, s3_server, kube, tmp_path):
    api = start_component("api", s3_server, kube[1], tmp_path / "api.log", wait=False,
                          api={"presignExpirySeconds": 86401})
    try:
        assert api.program.proc is not None and api.program.proc.wait(60) != 0
        assert "KRESIZE_PRESIGN_EXPIRY_SECONDS: Input should be less than or equal to 86400" \
            in api.program.log.read_text()
    finally:
        api.stop()


def test_token_store_reads_a_mounted_secret(tmp_path):
    (tmp_path / "..data").mkdir()  # the kubelet's hidden layout is skipped
    (tmp_path / "admin").write_text("a" * 32 + "\n")
    (tmp_path / "shorty").write_text("too-short")
    (tmp_path / "bad name").write_text("b" * 32)
    store = TokenStore(tmp_path, frozenset({"admin"}), refresh_seconds=0)
    assert store.authenticate("a" * 32).admin and store.authenticate("a" * 32).tenant == "admin"
    assert store.authenticate("too-short") is None and store.authenticate("b" * 32) is None
    (tmp_path / "carol").write_text("c" * 32)  # a tenant added later is picked up without a restart
    carol = store.authenticate("c" * 32)
    assert carol is not None and (carol.tenant, carol.admin) == ("carol", False)
    (tmp_path / "admin").unlink()
    assert store.authenticate("a" * 32) is None


def test_no_tokens_at_all_refuses_to_start(tmp_path):
    with pytest.raises(ValueError, match="KRESIZE_AUTH=none"):
        TokenStore(tmp_path, frozenset())
