"""Configuration is typed and validated at start-up: one clear error lists every bad variable."""

from __future__ import annotations

import subprocess

import pytest
from harness.sandbox import IMAGE_ENV, pod_argv

BAD = {"KRESIZE_MAX_FILES": "many", "KRESIZE_S3_SECURE": "perhaps", "KRESIZE_AUTH": "basic",
       "KRESIZE_LOG_FORMAT": "xml"}


@pytest.mark.parametrize("program", ["kresize-api", "kresize-operator"])
def test_every_bad_variable_is_named_at_once(program):
    env = {**IMAGE_ENV, **BAD, "KRESIZE_S3_SECRET_KEY": "do-not-print-me"}
    result = subprocess.run(pod_argv([program], env), capture_output=True, text=True, timeout=60, env={})
    assert result.returncode == 2, result.stderr
    assert f"{program}: bad configuration" in result.stderr
    named = [var for var in BAD if var in result.stderr]
    expected = [v for v in BAD if program == "kresize-api" or v not in ("KRESIZE_MAX_FILES", "KRESIZE_AUTH")]
    assert named == expected, result.stderr
    assert "do-not-print-me" not in result.stderr
