"""`kresize-resizer local` as a user runs it: a real process on a real folder."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
SPEC = {
    "apiVersion": "kresize.dev/v1alpha1", "kind": "ResizeJob", "metadata": {"name": "local"},
    "spec": {"source": {"prefix": "unused/"},
             "targets": [{"name": "thumb", "width": 120, "height": 120, "format": "webp"},
                         {"name": "big", "width": 600, "height": 600, "fit": "inside", "format": "jpeg"}]},
}


def resizer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kresize_resizer", *args], capture_output=True, text=True,
                          timeout=120)


def test_local_run_on_a_folder(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for path in [*sorted((CORPUS / "orientation").glob("Portrait_[568].jpg")), *sorted((CORPUS / "bad").iterdir())]:
        shutil.copy(path, inputs / path.name)
    (inputs / ".hidden.jpg").write_bytes(b"skipped")
    spec = tmp_path / "job.yaml"
    spec.write_text(yaml.safe_dump(SPEC))
    result = resizer("local", "--spec", str(spec), "--input", str(inputs), "--output", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    records = json.loads((tmp_path / "out" / "results.json").read_text())
    assert sorted(r["source"] for r in records) == sorted(p.name for p in inputs.iterdir() if p.name[0] != ".")
    by_source = {r["source"]: r for r in records}
    for name in ("Portrait_5.jpg", "Portrait_6.jpg", "Portrait_8.jpg"):
        record = by_source[name]
        assert record["status"] == "succeeded" and record["error"] is None
        assert [o["target"] for o in record["outputs"]] == ["thumb", "big"]
        big = record["outputs"][1]
        assert big["path"] == f"{Path(name).stem}/big.jpg"
        with Image.open(tmp_path / "out" / big["path"]) as image:
            assert image.size == (big["width"], big["height"]) == (400, 600)
            assert big["bytes"] == (tmp_path / "out" / big["path"]).stat().st_size
    for bad in (CORPUS / "bad").iterdir():
        assert by_source[bad.name]["status"] == "failed" and by_source[bad.name]["error"]
        assert not (tmp_path / "out" / bad.stem).exists()


def test_same_stem_twice_does_not_overwrite(tmp_path):
    inputs = tmp_path / "in"
    inputs.mkdir()
    Image.new("RGB", (50, 50), "red").save(inputs / "a.png")
    Image.new("RGB", (50, 50), "blue").save(inputs / "a.webp")
    spec = tmp_path / "job.json"
    spec.write_text(json.dumps(SPEC))
    result = resizer("local", "--spec", str(spec), "--input", str(inputs), "--output", str(tmp_path / "o"))
    assert result.returncode == 0, result.stderr
    records = {r["source"]: r for r in json.loads((tmp_path / "o" / "results.json").read_text())}
    assert records["a.png"]["status"] == "succeeded"
    assert records["a.webp"]["status"] == "failed" and "already produced" in records["a.webp"]["error"]


@pytest.mark.parametrize(
    ("spec", "message"),
    [(None, "cannot read --spec"), ({"spec": {"targets": [{"name": "x", "width": 0}]}}, "at least 1"),
     ({"spec": {"targets": []}}, "non-empty")],
)
def test_usage_errors_exit_2_with_a_clear_message(tmp_path, spec, message):
    path = tmp_path / "spec.yaml"
    if spec is not None:
        path.write_text(yaml.safe_dump(spec))
    result = resizer("local", "--spec", str(path), "--input", str(tmp_path), "--output", str(tmp_path / "o"))
    assert result.returncode == 2
    assert message in result.stderr
