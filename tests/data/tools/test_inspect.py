"""``mmpipe inspect`` of a shard pattern names the classes from the manifest.json beside the shards, as
``inspect <folder>`` does (issue 18: a glob showed class indices, and '99' and 'volcano' among them)."""

from __future__ import annotations

from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.data.tools.demo import write_demo
from pipeline.data.tools.inspect import inspect_path


def test_a_shard_pattern_names_classes_from_the_manifest_beside_it(tmp_path):
    write_demo(tmp_path, seed=1, scale=0.1)
    folder = inspect_path(str(tmp_path))
    for pattern in (f"{tmp_path}/*/*.tar", f"{tmp_path}/train"):
        scanned = inspect_path(pattern)
        assert scanned["source"] == "scan" and scanned["classes"] == folder["classes"]
        assert scanned["classes_from"] == f"{tmp_path}/manifest.json"
        train = scanned["splits"]["train"]
        assert train["class_histogram"] == folder["splits"]["train"]["class_histogram"]
        assert train["labels_unusable"] == {"99": 1, "volcano": 1}  # the demo's planted bad labels, apart
    out = CliRunner().invoke(app, ["inspect", f"{tmp_path}/*/*.tar"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())
    assert "classes from" in text and "labels no class matches: '99' (1), 'volcano' (1)" in text
    assert "│ sun" in out.output and "│ 0 " not in out.output


def test_without_a_manifest_the_scan_shows_the_labels_as_stored(tmp_path):
    write_demo(tmp_path, seed=1, scale=0.1)
    (tmp_path / "manifest.json").unlink()
    scanned = inspect_path(f"{tmp_path}/*/*.tar")
    assert scanned["classes"] == [] and "classes_from" not in scanned
    assert {"0", "99", "volcano"} <= set(scanned["splits"]["train"]["class_histogram"])
