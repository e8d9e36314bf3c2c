"""The rules our pods run under, and what breaks a program that does not follow them.

The platform tests start every program under these rules (harness/sandbox.py, harness/pods.py); these tests
show the rules are really in force, and that they catch what a real cluster caught: kopf naming its
operator from the passwd entry of a uid that has none (the operator crash-looped on every install).
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import NAMESPACE, start_component
from harness.sandbox import IMAGE_ENV, POD_UID, pod_argv

pytestmark = pytest.mark.slow


def in_pod(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(pod_argv([sys.executable, "-c", code], {**IMAGE_ENV, **env}), capture_output=True,
                          text=True, timeout=60, env={})


def test_a_pod_has_a_uid_without_a_name_and_only_the_env_it_is_given():
    result = in_pod("import os, json; print(json.dumps([os.getuid(), os.getgid(), dict(os.environ)]))", ONLY="me")
    assert result.returncode == 0, result.stderr
    uid, gid, env = __import__("json").loads(result.stdout)
    assert (uid, gid) == (POD_UID, POD_UID)
    # PWD comes from the working directory, LC_CTYPE from Python's own C-locale coercion (PEP 538).
    assert {k: v for k, v in env.items() if k not in ("PWD", "LC_CTYPE")} == {**IMAGE_ENV, "ONLY": "me"}
    nameless = in_pod("import getpass; getpass.getuser()")
    assert nameless.returncode != 0 and "uid not found: 65532" in nameless.stderr


def test_a_pod_writes_only_to_tmp(tmp_path):
    outside = tmp_path.parent / "written-by-a-pod"  # on the host's /tmp, which the pod does not see
    result = in_pod(f"open('/tmp/ok', 'w').write('x'); open({str(outside)!r}, 'w').write('x')")
    assert result.returncode != 0 and not outside.exists()
    for path in ("/usr/lib/kresize-was-here", f"{sys.prefix}/kresize-was-here"):
        result = in_pod(f"open({path!r}, 'w')")
        assert "Read-only file system" in result.stderr, result.stderr


def test_operator_without_its_identity_fix_crashes_in_a_pod(platform, s3_server, kube, tmp_path):
    """With kopf left to guess its identity (the fix reverted), the operator dies as it did on the cluster."""
    reverted = ("import sys, kresize_operator.__main__ as m; m.operator_identity = lambda: None; "
                "sys.argv[0] = 'kresize-operator'; m.main(sys.argv[1:])")
    operator = start_component("operator", s3_server, kube[1], tmp_path / "operator.log", wait=False,
                               command=[sys.executable, "-c", reverted])
    try:
        assert operator.program.proc is not None
        assert operator.program.proc.wait(60) != 0
        assert "getpwuid(): uid not found: 65532" in operator.program.tail(), operator.program.tail()
    finally:
        operator.stop()


def pod_env(argv: list[str]) -> dict[str, str]:
    """The environment a pod_argv() command line gives its program (its --setenv pairs)."""
    return {argv[i + 1]: argv[i + 2] for i, arg in enumerate(argv) if arg == "--setenv"}


def test_operator_and_api_start_as_their_pods_do(platform):
    """The platform's operator and API run under the rules, with the chart's env (and the fix in place)."""
    for component in (platform.operator, platform.api_component):
        argv = component.program.args
        assert argv[0].endswith("bwrap") and "--clearenv" in argv and component.program.alive()
        assert argv[argv.index("--uid") + 1] == str(POD_UID)
        env = pod_env(argv)
        assert env["KRESIZE_NAMESPACE"] == NAMESPACE and env["HOME"] == "/tmp"
        assert "USER" not in env and "LOGNAME" not in env
    assert pod_env(platform.operator.program.args)["POD_NAME"].startswith("kresize-operator-")
