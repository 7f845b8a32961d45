import json
import subprocess

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def test_console_script_lists_commands():
    out = subprocess.run(["mmpipe", "--help"], capture_output=True, text=True, check=True).stdout
    for command in ("pack", "demo-data", "validate", "inspect", "show-spec"):
        assert command in out


def test_demo_data_inspect_from_manifest_and_by_scan(tmp_path):
    d = tmp_path / "d"
    subprocess.run(["mmpipe", "demo-data", str(d), "--scale", "0.1"], check=True, capture_output=True)
    info = json.loads(runner.invoke(app, ["inspect", str(d), "--json"]).stdout)
    assert info["source"] == "manifest.json" and set(info["splits"]) == {"train", "val", "test"}
    scanned = json.loads(runner.invoke(app, ["inspect", str(d / "train"), "--json"]).stdout)
    assert scanned["source"] == "scan"
    assert scanned["splits"]["train"]["samples"] == info["splits"]["train"]["samples"]
    table = runner.invoke(app, ["inspect", str(d)])
    assert table.exit_code == 0 and "coverage" in table.stdout


def test_demo_data_is_deterministic_per_seed(tmp_path):
    from pipeline.data.tools.demo import write_demo

    a = write_demo(tmp_path / "a", seed=3, scale=0.1)
    b = write_demo(tmp_path / "b", seed=3, scale=0.1)
    c = write_demo(tmp_path / "c", seed=4, scale=0.1)
    sha = lambda m: [s["sha256"] for split in m["splits"].values() for s in split["shards"]]  # noqa: E731
    assert sha(a) == sha(b) and sha(a) != sha(c)
    full = write_demo(tmp_path / "full", seed=0)  # the default size is long-tailed
    counts = full["splits"]["train"]["class_histogram"]
    assert len(counts) >= 6 and max(counts.values()) >= 10 * min(counts.values())


@pytest.mark.ray
def test_validate_writes_report_and_bad_spec_fails_early(ray_session, demo_dir, tmp_path):
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["validate", str(demo_dir / "spec.yaml"), "--out", str(out), "--split", "val"])
    assert result.exit_code == 0, result.output
    assert "rows kept" in result.stdout and "duplicate" in result.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    assert report["splits"]["val"]["balanced"] is True
    bad = runner.invoke(app, ["validate", str(demo_dir / "spec.yaml"), "--set", "clean.dedupee=false"])
    assert bad.exit_code == 2 and "clean.dedupee: unknown field (did you mean dedupe?)" in bad.output


def test_show_spec_resolves_defaults_and_overrides(demo_dir):
    result = runner.invoke(app, ["show-spec", str(demo_dir / "spec.yaml"), "--set", "train.epochs=3"])
    assert result.exit_code == 0 and "epochs: 3" in result.stdout and "fusion: concat" in result.stdout


def test_output_folder_with_a_dataset_is_not_mixed_into(tmp_path):
    d = tmp_path / "d"
    assert runner.invoke(app, ["demo-data", str(d), "--scale", "0.3"]).exit_code == 0
    again = runner.invoke(app, ["demo-data", str(d), "--scale", "0.1"])
    assert again.exit_code == 2 and "already holds a dataset" in again.output
    assert runner.invoke(app, ["demo-data", str(d), "--scale", "0.1", "--overwrite"]).exit_code == 0
    manifest = json.loads((d / "manifest.json").read_text())
    on_disk = sorted(p.relative_to(d).as_posix() for p in d.rglob("*.tar"))
    assert on_disk == sorted(s["path"] for split in manifest["splits"].values() for s in split["shards"])


@pytest.mark.ray
def test_preview_augment_writes_sheet_and_texts(ray_session, demo_dir, tmp_path):
    result = runner.invoke(app, ["preview-augment", str(demo_dir / "spec.yaml"), "--n", "3", "--out", str(tmp_path),
                                 "--set", "augment.text=[{name: RandomCharAug, p: 1.0, params: {action: swap}}]"])
    assert result.exit_code == 0, result.output
    png = (tmp_path / "augment_preview.png").read_bytes()
    assert png[:4] == b"\x89PNG" and len(png) > 10_000
    texts = json.loads((tmp_path / "augment_preview.json").read_text(encoding="utf-8"))
    assert len(texts) == 3 and any(t["before"] != t["after"] for t in texts if t["before"])


@pytest.mark.ray
def test_validate_writes_class_distribution_plot(ray_session, demo_dir, tmp_path):
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["validate", str(demo_dir / "spec.yaml"), "--out", str(out), "--split", "train"])
    assert result.exit_code == 0, result.output
    assert "rebalance: sqrt" in result.stdout
    report = json.loads(out.read_text())
    assert report["rebalance"]["strategy"] == "sqrt"
    assert sum(report["rebalance"]["expected_after"].values()) == pytest.approx(
        sum(report["rebalance"]["before"].values()), rel=1e-6)
    assert (tmp_path / "r_classes.png").read_bytes()[:4] == b"\x89PNG"
