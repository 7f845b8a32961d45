"""Workflow invalidation on real data and real training: a step re-runs when its data changed, and so does
everything that reads its outputs; unchanged steps are skipped. Also what register records (code version, hashes)
and the refusal to compare a champion with other classes."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil

import pytest
import torch

from pipeline.data.tools.demo import write_demo
from pipeline.spec_checks import load_job
from pipeline.workflow.rundir import fingerprint
from pipeline.workflow.run import WorkflowFailed, run_workflow

SETS = ["train.epochs=1", "train.batch_size=16", "model.hidden=32", "augment.enabled=false", "scaling.num_workers=1",
        "workflow.steps=[validate-data, train, evaluate, register]"]  # one worker: the workflow is what is tested


def _status(run: dict) -> dict[str, str]:
    return {s["name"]: ("skipped" if s["status"].startswith("skipped") else s["status"]) for s in run["steps"]}


def _replace_split(data, other, split: str) -> None:
    """Put ``other``'s shards of ``split`` in place of ``data``'s (same names: only their content changes)."""
    for shard in (other / split).glob("*.tar"):
        shutil.copyfile(shard, data / split / shard.name)


@pytest.fixture(scope="module")
def invalidated(ray_session, tmp_path_factory):
    """One run directory, four attempts: first; unchanged; new test data; new train data."""
    root = tmp_path_factory.mktemp("invalidation")
    data, other = root / "data", root / "other"
    write_demo(data, seed=1, scale=0.1)
    write_demo(other, seed=2, scale=0.1)  # same layout and shard names, other samples
    spec = load_job(data / "spec.yaml", SETS + [f"registry.uri={root / 'registry'}"])
    run = lambda: run_workflow(spec, str(root / "run"), say=lambda m: None)  # noqa: E731
    runs = {"first": run(), "unchanged": run()}
    steps = root / "run" / "steps"
    runs["first_manifests"] = {p.stem: json.loads(p.read_text()) for p in steps.glob("*.json")}
    _replace_split(data, other, "test")
    runs["new_test"] = run()
    trained_before = (root / "run" / "train" / "best.pt").read_bytes()
    _replace_split(data, other, "train")
    runs["new_train"] = run()
    runs.update(root=root, spec=spec, trained_before=trained_before)
    return runs


def test_an_unchanged_rerun_skips_every_step(invalidated):
    assert set(_status(invalidated["first"]).values()) == {"succeeded"}
    assert set(_status(invalidated["unchanged"]).values()) == {"skipped"}


def test_new_test_data_reruns_the_steps_that_read_it_and_nothing_else(invalidated):
    """validate-data and evaluate read the test split; train reads train and val only; register reads
    evaluate's outputs (which changed)."""
    assert _status(invalidated["new_test"]) == {"validate-data": "succeeded", "train": "skipped",
                                                "evaluate": "succeeded", "register": "succeeded"}


def test_new_train_data_retrains_and_everything_downstream_reruns(invalidated):
    assert set(_status(invalidated["new_train"]).values()) == {"succeeded"}
    root = invalidated["root"]
    assert (root / "run" / "train" / "best.pt").read_bytes() != invalidated["trained_before"]
    manifest = json.loads((root / "run" / "steps" / "evaluate.json").read_text())
    before = invalidated["first_manifests"]["evaluate"]
    assert manifest["inputs"]["train.outputs"] != before["inputs"]["train.outputs"]  # it read the new model
    assert manifest["inputs_sha256"] == fingerprint(manifest["inputs"])


def test_register_records_the_code_version_and_the_hashes_of_what_it_registered(invalidated):
    from pipeline.registry import Registry
    from pipeline.workflow.steps import code_version

    root = invalidated["root"]
    reg = Registry(str(root / "registry"))
    # the same model registered again (new test data) keeps its version; the retrained one got a new one
    assert [v["version"] for v in reg.versions()] == [1, 2]
    meta = reg.meta(2)
    assert re.fullmatch(r"\d+\.\d+[^+]*(\+g[0-9a-f]{4,}(\.dirty)?)?", meta["code_version"]), meta["code_version"]
    assert meta["code_version"] == code_version()
    run = root / "run"
    assert meta["spec_sha256"] == fingerprint((run / "train" / "spec.yaml").read_text(encoding="utf-8"))
    assert meta["data"] == json.loads((run / "validate-data" / "data.json").read_text())
    assert meta["data"] != reg.meta(1)["data"]  # the train split changed since version 1
    evaluation = json.loads((run / "evaluate" / "evaluation.json").read_text())
    assert meta["metrics"] == evaluation["metrics"] and meta["classes"] == evaluation["classes"]
    assert meta["model_sha256"] == hashlib.sha256((run / "train" / "best.pt").read_bytes()).hexdigest()
    for step, manifest in ((p.stem, json.loads(p.read_text())) for p in (run / "steps").glob("*.json")):
        assert manifest["inputs_sha256"] == fingerprint(manifest["inputs"]), step
        assert manifest["status"] == "succeeded" and manifest["outputs_sha256"], step


def test_a_champion_with_other_classes_is_not_compared(invalidated):
    """Promote refuses a champion trained on other classes, names both and how to promote by hand; the steps
    before it are reused (none of them reads the registry)."""
    from pipeline.model.classifier import MultimodalClassifier
    from pipeline.registry import Registry
    from pipeline.spec import dump_spec, spec_from_dict

    root = invalidated["root"]
    other = Registry(str(root / "other-registry"))
    tiny = spec_from_dict({"name": "tiny", "modalities": {"image": {"size": [16, 16]}, "text": None, "audio": None},
                           "label": {"classes": ["sun", "moon"]}, "model": {"hidden": 8}})
    buf = io.BytesIO()
    torch.save({"model": MultimodalClassifier(tiny, 2).state_dict(), "classes": ["sun", "moon"],
                "spec": tiny.model_dump(mode="json"), "epoch": 0, "metrics": {}}, buf)
    version = other.register(buf.getvalue(), dump_spec(tiny), {"classes": ["sun", "moon"]}, "elsewhere")
    other.set_alias("champion", version, expected=None, reason="test")
    spec = invalidated["spec"].model_copy(deep=True)
    spec.registry.uri = other.uri
    spec.workflow.steps = ["validate-data", "train", "evaluate", "register", "promote"]
    with pytest.raises(WorkflowFailed, match=r"champion version 1 has classes \['sun', 'moon'\].*not comparable"):
        run_workflow(spec, str(root / "run"), say=lambda m: None)
    run = json.loads((root / "run" / "run.json").read_text())
    assert _status(run) == {"validate-data": "skipped", "train": "skipped", "evaluate": "skipped",
                            "register": "succeeded", "promote": "failed"}
    assert "mmpipe registry promote" in run["steps"][-1]["error"]
    assert other.alias("champion") == version  # nothing moved
