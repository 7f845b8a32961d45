"""The model registry (real files, real torch checkpoints, real concurrent processes) and the promotion rule."""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import shutil

import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.model.classifier import MultimodalClassifier
from pipeline.spec import spec_from_dict
from pipeline.workflow.champion import decide
from pipeline.registry import ModelRef, PromotionConflict, Registry, RegistryError
from support.registry_race import promote_after_barrier

CLASSES = ["sun", "moon", "river"]
RAW = {"name": "tiny", "modalities": {"image": {"size": [16, 16]}, "text": None, "audio": None},
       "label": {"classes": CLASSES}, "model": {"hidden": 8, "image_width": 4}}


def checkpoint(seed: int = 0) -> bytes:
    """A best.pt as training writes it: weights, classes, the resolved spec."""
    torch.manual_seed(seed)
    spec = spec_from_dict(RAW)
    model = MultimodalClassifier(spec, len(CLASSES))
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "classes": CLASSES, "spec": spec.model_dump(mode="json"),
                "epoch": 0, "metrics": {}}, buf)
    return buf.getvalue()


def add(reg: Registry, run_id: str, score: float = 0.5) -> int:
    return reg.register(checkpoint(), "name: tiny\n", {"metrics": {"test.macro_f1": score}, "holdout": "test"},
                        run_id)


def test_versions_are_numbered_and_registration_is_idempotent_per_run(tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    assert add(reg, "run-a") == 1
    assert add(reg, "run-b") == 2
    assert add(reg, "run-a") == 1  # a resumed run gets its version back, not a new one
    metas = reg.versions()
    assert [m["version"] for m in metas] == [1, 2]
    assert metas[0]["run_id"] == "run-a" and len(metas[0]["model_sha256"]) == 64


def test_a_run_that_retrained_gets_a_new_version_not_an_overwrite(tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    first = add(reg, "run-a")
    sha = reg.meta(first)["model_sha256"]
    other = reg.register(checkpoint(seed=1), "name: tiny\n", {"metrics": {}}, "run-a")  # same run, new weights
    assert other == first + 1
    assert reg.meta(first)["model_sha256"] == sha  # version 1 is unchanged


def test_a_loaded_version_predicts_like_the_saved_model(tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    version = add(reg, "run-a")
    loaded = reg.load(version)
    state = torch.load(io.BytesIO(checkpoint()), weights_only=True)
    original = MultimodalClassifier(spec_from_dict(RAW), 3)
    original.load_state_dict(state["model"])
    original.eval()
    batch = {"image": torch.randint(0, 255, (2, 16, 16, 3), dtype=torch.uint8),
             "present_image": torch.ones(2, dtype=torch.bool)}
    assert torch.equal(loaded.model(batch), original(batch))
    assert loaded.classes == CLASSES


def test_promote_rollback_and_alias_history(tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    v1, v2, v3 = (add(reg, f"run-{i}") for i in range(3))
    assert reg.alias("champion") is None
    reg.set_alias("champion", v1, expected=None)
    reg.set_alias("champion", v2, expected=v1)
    reg.set_alias("champion", v3, expected=v2)
    assert reg.resolve(ModelRef.parse(f"{reg.uri}@champion")) == v3
    entry = reg.rollback("champion")
    assert (entry["previous"], entry["version"]) == (v3, v2)
    assert reg.alias("champion") == v2
    reg.rollback("champion", to=v1)
    assert reg.alias("champion") == v1
    assert [e["version"] for e in reg.alias_events("champion")] == [v1, v2, v3, v2, v1]


def test_promotion_decided_against_a_stale_champion_is_refused(tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    v1, v2, v3 = (add(reg, f"run-{i}") for i in range(3))
    reg.set_alias("champion", v1, expected=None)
    reg.set_alias("champion", v2, expected=v1)  # someone else promoted v2 meanwhile
    with pytest.raises(PromotionConflict, match="moved to version 2"):
        reg.set_alias("champion", v3, expected=v1)
    assert reg.alias("champion") == v2


def test_two_concurrent_promotions_cannot_both_win(tmp_path):
    uri = str(tmp_path / "reg")
    reg = Registry(uri)
    reg.set_alias("champion", add(reg, "run-0"), expected=None)
    ctx = mp.get_context("spawn")  # not fork: this process may hold torch's threads and their locks
    for round_ in range(3):
        base = reg.alias("champion")
        challengers = [add(reg, f"run-{round_}-{i}") for i in range(2)]
        start, results = ctx.Barrier(2), ctx.Queue()
        procs = [ctx.Process(target=promote_after_barrier, args=(uri, v, start, results)) for v in challengers]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        outcome = sorted(results.get(timeout=5) for _ in procs)
        assert [o[0] for o in outcome] == ["lost", "won"]
        winner = [v for status, v in outcome if status == "won"][0]
        assert reg.alias("champion") == winner
        events = reg.alias_events("champion")
        assert events[-1]["previous"] == base  # one clean step in the history, nothing half-written


def test_corrupt_entries_give_clear_errors(tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    v1, v2, v3 = (add(reg, f"run-{i}") for i in range(3))
    model = tmp_path / "reg" / "versions" / "000001" / "model.pt"
    model.write_bytes(model.read_bytes()[:100])
    with pytest.raises(RegistryError, match=r"version 1: .*model.pt is corrupt"):
        reg.load(v1)
    (tmp_path / "reg" / "versions" / "000002" / "meta.json").write_text("{not json")
    with pytest.raises(RegistryError, match=r"version 2: .*meta.json is corrupt"):
        reg.load(v2)
    # bytes that match the recorded hash but are not an mmpipe checkpoint: still one clear line
    meta_path = tmp_path / "reg" / "versions" / "000003" / "meta.json"
    garbage = b"PK\x03\x04 definitely not a checkpoint"
    (tmp_path / "reg" / "versions" / "000003" / "model.pt").write_bytes(garbage)
    import hashlib

    meta = json.loads(meta_path.read_text())
    meta["model_sha256"] = hashlib.sha256(garbage).hexdigest()
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(RegistryError, match=r"version 3: model.pt cannot be loaded"):
        reg.load(v3)
    with pytest.raises(RegistryError, match="no complete version 9"):
        reg.load(9)


def test_incomplete_registration_is_listed_not_served(tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    add(reg, "run-a")
    add(reg, "run-b")
    shutil.rmtree(tmp_path / "reg" / "versions" / "000002")  # crashed before meta.json
    assert reg.versions()[1]["status"].startswith("incomplete")
    with pytest.raises(RegistryError, match="no complete version 2"):
        reg.set_alias("champion", 2)


def test_model_refs():
    assert ModelRef.parse("runs/reg") == ModelRef("runs/reg", alias="champion")
    assert ModelRef.parse("runs/reg:3") == ModelRef("runs/reg", version=3)
    assert ModelRef.parse("s3://b/reg@staging") == ModelRef("s3://b/reg", alias="staging")
    # Arabic-Indic digits are digits to str.isdigit and int(), not a version number here
    assert ModelRef.parse("runs/reg:\u0661") == ModelRef("runs/reg:\u0661", alias="champion")


def test_stray_files_and_folders_do_not_break_listing(tmp_path):
    """Names that are not NNNNNN.json (other digits, other widths, other files) are listed as stray and skipped;
    an entry that is a folder where a file belongs is one bad row, not a broken listing."""
    reg = Registry(str(tmp_path / "reg"))
    v1, v2 = add(reg, "run-a"), add(reg, "run-b")
    claims, aliases = tmp_path / "reg" / "claims", tmp_path / "reg" / "aliases"
    (claims / "\u0661.json").write_text('{"run_id": "x"}')  # int('١') == 1
    (claims / "\u00b2.json").write_text("{}")  # '²'.isdigit() is True, int('²') raises
    (claims / "2.json").write_text("{}")  # would stand for version 2 a second time
    (claims / "notes").mkdir()
    (claims / ".000009.json.1.abc.tmp").write_text("")  # a registration's temporary file: not worth a row
    reg.set_alias("champion", v1)
    (aliases / "staging" / "000001.json").mkdir(parents=True)  # a folder where an alias entry belongs
    shutil.rmtree(tmp_path / "reg" / "versions" / "000002")
    (tmp_path / "reg" / "versions" / "000002" / "meta.json").mkdir(parents=True)

    rows = reg.versions()
    assert [r["version"] for r in rows] == [1, 2, "claims/2.json", "claims/notes", "claims/\u00b2.json",
                                            "claims/\u0661.json"]
    assert "status" not in rows[0] and "meta.json cannot be read" in rows[1]["status"]
    assert all(r["status"].startswith("stray entry") for r in rows[2:])
    assert reg.aliases() == {"champion": v1}  # staging is unreadable: left out, with a warning
    assert add(reg, "run-c") == 3  # registering still works
    r = CliRunner().invoke(app, ["registry", "list", reg.uri])
    assert r.exit_code == 0, r.output
    assert "claims/\u0661.json" in r.output and "stray entry" in r.output


@pytest.mark.parametrize("metric, challenger, champion, margin, promote", [
    ("macro_f1", 0.80, None, 0.0, True),        # no champion yet
    ("macro_f1", 0.80, 0.70, 0.05, True),       # better by more than the margin
    ("macro_f1", 0.72, 0.70, 0.05, False),      # better, but not by the margin
    ("macro_f1", 0.60, 0.70, 0.0, False),
    ("loss", 0.40, 0.50, 0.0, True),            # loss improves downwards
    ("loss", 0.55, 0.50, 0.0, False),
    ("macro_f1", float("nan"), 0.5, 0.0, False),
])
def test_champion_challenger_decision(metric, challenger, champion, margin, promote):
    d = decide(metric, challenger, champion, margin)
    assert d["promote"] is promote
    assert d["challenger"] == challenger or challenger != challenger
    assert d["champion"] == champion and d["reason"]


def test_registry_cli(tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    v1, v2 = add(reg, "run-a", 0.5), add(reg, "run-b", 0.6)
    runner = CliRunner()
    r = runner.invoke(app, ["registry", "promote", reg.uri, str(v1)])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["registry", "promote", reg.uri, str(v2)])
    assert "1 → 2" in r.output
    r = runner.invoke(app, ["registry", "list", reg.uri])
    assert r.exit_code == 0 and "champion" in r.output
    r = runner.invoke(app, ["registry", "rollback", reg.uri])
    assert r.exit_code == 0 and reg.alias("champion") == v1
    r = runner.invoke(app, ["registry", "show", f"{reg.uri}@champion"])
    assert r.exit_code == 0 and '"run_id": "run-a"' in r.output
    r = runner.invoke(app, ["registry", "list", str(tmp_path / "nothing")])
    assert r.exit_code != 0 and "no registry there" in r.output
    r = runner.invoke(app, ["registry", "show", f"{reg.uri}:7"])
    assert r.exit_code == 1 and "no complete version 7" in r.output


def test_memory_uri_registry():
    """Any fsspec filesystem: the same operations on memory://."""
    reg = Registry("memory://mmpipe-test-registry")
    v1, v2 = add(reg, "run-a"), add(reg, "run-b")
    reg.set_alias("champion", v1, expected=None)
    with pytest.raises(PromotionConflict):
        reg.set_alias("champion", v2, expected=None)
    reg.set_alias("champion", v2, expected=v1)
    assert reg.load(reg.alias("champion")).classes == CLASSES


def test_registering_again_never_rewrites_a_version(tmp_path):
    """A resumed run registering its model again gets the version back; the version's files stay as written (a
    second meta with another time or other metrics must not replace the first)."""
    reg = Registry(str(tmp_path / "reg"))
    version = reg.register(checkpoint(), "name: tiny\n", {"created": "2024-01-01T00:00:00+00:00",
                                                           "metrics": {"test.macro_f1": 0.5}}, "run-a")
    files = {p: p.read_bytes() for p in (tmp_path / "reg" / "versions").rglob("*") if p.is_file()}
    again = reg.register(checkpoint(), "name: changed\n", {"created": "2025-06-01T00:00:00+00:00",
                                                           "metrics": {"test.macro_f1": 0.9}}, "run-a")
    assert again == version
    assert {p: p.read_bytes() for p in files} == files
    assert reg.meta(version)["created"] == "2024-01-01T00:00:00+00:00"


def test_moving_an_alias_to_where_it_points_records_nothing(tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    v1 = add(reg, "run-a")
    reg.set_alias("champion", v1, expected=None)
    with pytest.raises(RegistryError, match="already points at version 1; nothing changed"):
        reg.set_alias("champion", v1, expected=v1)
    with pytest.raises(RegistryError, match="already points at version 1"):
        reg.rollback("champion", to=v1)
    assert [(e["previous"], e["version"]) for e in reg.alias_events("champion")] == [(None, v1)]


def test_registry_cli_messages_and_the_alias_history_in_show(tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    v1, v2, v3 = add(reg, "run-a"), add(reg, "run-b"), add(reg, "run-c")
    runner = CliRunner()
    r = runner.invoke(app, ["registry", "promote", reg.uri, str(v1)])
    assert r.exit_code == 0 and "champion: set to version 1 (it was not set before)" in r.output, r.output
    assert "None" not in r.output
    r = runner.invoke(app, ["registry", "promote", reg.uri, str(v1)])
    assert r.exit_code == 1 and "already points at version 1" in r.output
    runner.invoke(app, ["registry", "promote", reg.uri, str(v2), "--reason", "better on ünïcode"])
    runner.invoke(app, ["registry", "promote", reg.uri, str(v3)])
    r = runner.invoke(app, ["registry", "show", f"{reg.uri}:{v2}"])
    shown = json.loads(r.output)
    [(alias, events)] = shown["alias_history"].items()
    assert alias == "champion" and shown["aliases"] == {}  # no longer champion, but it was
    assert [(e["previous"], e["version"], e["reason"]) for e in events] == [
        (None, v1, "promoted by hand"), (v1, v2, "better on ünïcode"), (v2, v3, "promoted by hand")]


def test_registry_list_keeps_every_value_when_piped(tmp_path):
    reg = Registry(str(tmp_path / "reg"))
    version = reg.register(checkpoint(), "name: tiny\n", {"metrics": {"test.accuracy": 0.5, "test.macro_f1": 0.25},
                                                          "holdout": "test",
                                                          "code_version": "1.2.3+g0123456789abcdef.dirty"}, "run-a")
    reg.set_alias("champion", version, expected=None)
    r = CliRunner().invoke(app, ["registry", "list", reg.uri])  # not a terminal
    assert r.exit_code == 0
    [row] = [line for line in r.output.splitlines() if "1.2.3" in line]
    assert "test: accuracy=0.500, macro_f1=0.250" in row and "1.2.3+g0123456789abcdef.dirty" in row, r.output
    assert "champion" in row and reg.meta(version)["created"] in row
