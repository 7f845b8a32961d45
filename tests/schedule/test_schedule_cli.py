"""``mmpipe schedule`` commands end to end through the CLI (state file from --state and MMPIPE_SCHEDULE_DB), and the
Kubernetes manifests that ``export`` writes, parsed back."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.schedule.store import Store

runner = CliRunner()


@pytest.fixture
def spec(tmp_path):
    (tmp_path / "jobs").mkdir()
    p = tmp_path / "jobs" / "retrain.yaml"
    p.write_text("name: r\ndata:\n  splits:\n    train: ../data/*.tar\nlabel:\n  classes: [a, b]\n"
                 "schedule:\n  cron: '15 4 * * *'\n  timezone: Europe/Berlin\n")
    return p


def cli(*args, env=None):
    result = runner.invoke(app, ["schedule", *args], env=env)
    return result.exit_code, result.output


def test_add_defaults_from_the_spec_and_stores_the_spec_absolute(tmp_path, spec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    db = tmp_path / "s.db"
    code, out = cli("add", "nightly", "--spec", "jobs/retrain.yaml", "--set", "train.epochs=1", "--state", str(db))
    assert code == 0, out
    s = Store(db).get("nightly")
    assert (s.cron, s.timezone, s.spec, s.overrides) == ("15 4 * * *", "Europe/Berlin", str(spec), ["train.epochs=1"])
    assert (s.concurrency, s.missed, s.trigger, s.retries) == ("forbid", "skip", "always", 2)
    assert s.runs_dir == str(tmp_path / "runs")


def test_state_location_from_the_environment(tmp_path, spec):
    db = tmp_path / "env" / "state.db"
    code, out = cli("add", "n", "--spec", str(spec), "--cron", "0 3 * * *", env={"MMPIPE_SCHEDULE_DB": str(db)})
    assert code == 0, out
    assert db.exists() and Store(db).get("n").cron == "0 3 * * *"


@pytest.mark.parametrize("args, message", [
    (["--cron", "0 3 * *"], "expected 5"),
    (["--cron", "0 3 * * *", "--timezone", "Europe/Berln"], "did you mean Europe/Berlin"),
    (["--concurrency", "queue"], "--concurrency 'queue': choose one of forbid, allow, replace"),
    (["--missed", "all"], "--missed 'all'"),
    (["--trigger", "weekly"], "--trigger 'weekly'"),
])
def test_add_rejects_bad_settings_with_a_clear_message(tmp_path, spec, args, message):
    code, out = cli("add", "n", "--spec", str(spec), *args, "--state", str(tmp_path / "s.db"))
    assert code == 2 and message in " ".join(out.split())


def test_add_rejects_a_bad_spec_a_bad_name_and_a_duplicate(tmp_path, spec):
    db = str(tmp_path / "s.db")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {epochs: zero}\n")
    code, out = cli("add", "n", "--spec", str(bad), "--cron", "0 3 * * *", "--state", db)
    assert code == 2 and "train.epochs" in out
    code, out = cli("add", "../n", "--spec", str(spec), "--state", db)
    assert code == 2 and "schedule name '../n'" in out
    assert cli("add", "n", "--spec", str(spec), "--state", db)[0] == 0
    code, out = cli("add", "n", "--spec", str(spec), "--state", db)
    assert code == 2 and "exists already" in out


def test_list_show_pause_resume_history_remove(tmp_path, spec):
    db = str(tmp_path / "s.db")
    assert cli("add", "n", "--spec", str(spec), "--state", db)[0] == 0
    code, out = cli("list", "--json", "--state", db)
    [row] = json.loads(out)
    assert code == 0 and row["name"] == "n" and row["last"] is None
    code, out = cli("show", "n", "--json", "--state", db)
    shown = json.loads(out)
    assert len(shown["next"]) == 3 and shown["concurrency"] == "forbid"
    assert cli("pause", "n", "--state", db)[0] == 0 and Store(db).get("n").paused
    assert "(paused)" in cli("show", "n", "--state", db)[1]
    assert cli("resume", "n", "--state", db)[0] == 0 and not Store(db).get("n").paused
    code, out = cli("history", "n", "--json", "--state", db)
    assert code == 0 and json.loads(out) == []
    code, out = cli("show", "nope", "--state", db)
    assert code == 2 and "no schedule named 'nope'" in out
    assert cli("remove", "n", "--state", db)[0] == 0
    assert json.loads(cli("list", "--json", "--state", db)[1]) == []


def test_tick_with_nothing_due_does_nothing(tmp_path, spec):
    db = str(tmp_path / "s.db")
    assert cli("add", "n", "--spec", str(spec), "--state", db)[0] == 0
    code, out = cli("tick", "--state", db)
    assert code == 0 and Store(db).runs("n") == []
    code, out = cli("tick", "other", "--state", db)
    assert code == 2 and "no schedule named 'other'" in out


def test_add_refuses_a_local_runs_dir_for_a_cluster_on_another_machine(tmp_path, spec):
    db = str(tmp_path / "s.db")
    base = ("--spec", str(spec), "--state", db)
    code, out = cli("add", "a", *base, "--address", "http://head:8265")
    assert code == 2 and f"the default runs folder {tmp_path / 'runs'} is a local path" in " ".join(out.split())
    code, out = cli("add", "a", *base, "--address", "http://head:8265", "--runs-dir", str(tmp_path / "r"))
    assert code == 2 and "--shared-runs-dir" in " ".join(out.split())
    code, out = cli("add", "a", *base, "--address", "head:8265")
    assert code == 2 and "expected the dashboard URL" in " ".join(out.split())
    assert cli("add", "b", *base, "--address", "http://head:8265", "--runs-dir", "s3://bkt/runs")[0] == 0
    assert cli("add", "c", *base, "--address", "http://head:8265", "--runs-dir", "/mnt/shared/runs",
               "--shared-runs-dir")[0] == 0
    assert cli("add", "d", *base, "--address", "http://127.0.0.1:8265")[0] == 0  # this machine
    assert Store(db).get("b").runs_dir == "s3://bkt/runs" and Store(db).get("c").runs_dir == "/mnt/shared/runs"


def test_tick_exits_1_with_one_line_per_failed_schedule(tmp_path, spec, monkeypatch):
    from pipeline.schedule.scheduler import Scheduler

    db = str(tmp_path / "s.db")
    assert cli("add", "n", "--spec", str(spec), "--state", db)[0] == 0

    def broken(self, sched, now):
        raise RuntimeError("state of run #7 unreadable")

    monkeypatch.setattr(Scheduler, "_reconcile", broken)
    code, out = cli("tick", "--state", db)
    assert code == 1 and "Traceback" not in out
    assert "1 failure(s) in this pass: n: reconciling its runs failed: RuntimeError: state of run #7 unreadable" \
        in " ".join(out.split())


# ---------------------------------------------------------------- export

def _exported(tmp_path, spec, fmt, *add_args):
    db = str(tmp_path / "s.db")
    code, out = cli("add", "Nightly_Retrain", "--spec", str(spec), "--set", "train.epochs=1", "--runs-dir",
                    "s3://bucket/runs", "--state", db, *add_args)
    assert code == 0, out
    target = tmp_path / f"{fmt}.yaml"
    code, out = cli("export", "Nightly_Retrain", "--format", fmt, "--image", "reg/mmpipe:1", "--out", str(target),
                    "--state", db)
    assert code == 0, out
    return target.read_text(), list(yaml.safe_load_all(target.read_text()))


def test_export_kuberay_raycronjob(tmp_path, spec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text, [doc] = _exported(tmp_path, spec, "kuberay", "--concurrency", "forbid")
    assert (doc["apiVersion"], doc["kind"]) == ("ray.io/v1", "RayCronJob")
    assert doc["metadata"]["name"] == "nightly-retrain"
    s = doc["spec"]
    assert (s["schedule"], s["timeZone"], s["suspend"]) == ("15 4 * * *", "Europe/Berlin", False)
    job = s["jobTemplate"]  # a RayJob spec, directly (no nested "spec:")
    assert job["entrypoint"].startswith("mmpipe run jobs/retrain.yaml --run-dir s3://bucket/runs/Nightly_Retrain/")
    assert "--set train.epochs=1" in job["entrypoint"]
    cluster = job["rayClusterSpec"]
    assert cluster["headGroupSpec"]["template"]["spec"]["containers"][0]["image"] == "reg/mmpipe:1"
    assert cluster["workerGroupSpecs"][0]["groupName"] and cluster["rayVersion"].startswith("2.")
    assert "concurrencyPolicy" not in s  # RayCronJob has no such field: say so instead of writing a dead one
    assert "concurrency=forbid is NOT enforced" in text


@pytest.mark.parametrize("policy, k8s", [("forbid", "Forbid"), ("allow", "Allow"), ("replace", "Replace")])
def test_export_k8s_cronjob_maps_the_concurrency_policy(tmp_path, spec, policy, k8s):
    _, docs = _exported(tmp_path, spec, "k8s-cronjob", "--concurrency", policy, "--paused")
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "ServiceAccount", "Role", "RoleBinding", "CronJob"}
    cron = kinds["CronJob"]
    assert cron["apiVersion"] == "batch/v1"
    s = cron["spec"]
    assert (s["schedule"], s["timeZone"], s["concurrencyPolicy"], s["suspend"]) == \
        ("15 4 * * *", "Europe/Berlin", k8s, True)
    assert s["startingDeadlineSeconds"] == 600  # missed=skip: late runs are not started
    pod = s["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["serviceAccountName"] == kinds["ServiceAccount"]["metadata"]["name"]
    assert "kubectl create -f /etc/mmpipe/rayjob.yaml" in pod["containers"][0]["args"][0]
    assert pod["volumes"][0]["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    rayjob = yaml.safe_load(kinds["ConfigMap"]["data"]["rayjob.yaml"])
    assert (rayjob["apiVersion"], rayjob["kind"]) == ("ray.io/v1", "RayJob")
    assert rayjob["spec"]["entrypoint"].startswith("mmpipe run ") and "rayClusterSpec" in rayjob["spec"]
    rule = kinds["Role"]["rules"][0]
    assert rule["apiGroups"] == ["ray.io"] and "create" in rule["verbs"] and rule["resources"] == ["rayjobs"]


def test_export_run_once_has_no_starting_deadline_and_rejects_unknown_formats(tmp_path, spec):
    _, docs = _exported(tmp_path, spec, "k8s-cronjob", "--missed", "run_once")
    assert "startingDeadlineSeconds" not in [d for d in docs if d["kind"] == "CronJob"][0]["spec"]
    code, out = cli("export", "Nightly_Retrain", "--format", "helm", "--state", str(tmp_path / "s.db"))
    assert code == 2 and "--format 'helm'" in out


HOSTILE_RUNS = "s3://b/夜间 runs/$(touch PWNED)/`touch PWNED`/'q' \"d\"\n# injected: true\u2028\u202e"


def test_export_quotes_the_runs_dir_for_the_shell_and_keeps_control_characters_out_of_comments(tmp_path, spec):
    db = str(tmp_path / "s.db")
    code, out = cli("add", "n", "--spec", str(spec), "--runs-dir", HOSTILE_RUNS, "--state", db)
    assert code == 0, out
    target = tmp_path / "n.yaml"
    code, out = cli("export", "n", "--format", "kuberay", "--image", "i:1", "--out", str(target), "--state", db)
    assert code == 0, out
    text = target.read_text(encoding="utf-8")
    comments = [line for line in text.splitlines() if line.startswith("#")]
    assert any("夜间 runs" in c and "\\n# injected: true\\u2028\\u202e" in c for c in comments), comments
    assert "\u2028" not in text and "\u202e" not in text
    [doc] = yaml.safe_load_all(text)
    assert "injected" not in doc  # the runs dir stayed inside its comment
    # The entrypoint as a shell runs it: the date expands, the rest is one literal argument.
    entrypoint = doc["spec"]["jobTemplate"]["entrypoint"]
    done = subprocess.run(["sh", "-c", 'mmpipe() { printf "%s\\0" "$@"; }; ' + entrypoint], cwd=tmp_path,
                          capture_output=True, text=True, check=True)
    args = done.stdout.split("\0")[:-1]
    run_dir = args[args.index("--run-dir") + 1]
    assert re.fullmatch(re.escape(f"{HOSTILE_RUNS}/n/") + r"\d{8}T\d{6}Z/run", run_dir), run_dir
    assert not (tmp_path / "PWNED").exists()


def test_show_list_and_history_speak_to_people_and_json_carries_values(tmp_path, spec):
    """No Python reprs in `show`, null (not a sentence) for a paused schedule's next run in JSON, an empty history
    that says so, and a table whose long values survive a pipe (CliRunner's output is not a terminal)."""
    db = str(tmp_path / "s.db")
    long_set = "data.splits.train=" + "/very/long/path/to/the/shards" * 4 + "/*.tar"
    assert cli("add", "n", "--spec", str(spec), "--set", long_set, "--paused", "--state", db)[0] == 0
    code, out = cli("show", "n", "--state", db)
    assert code == 0 and re.search(r"^address +local$", out, re.M) and re.search(r"^paused +yes$", out, re.M)
    assert re.search(rf"^overrides +{re.escape(long_set)}$", out, re.M), out
    assert "None" not in out and "False" not in out and "['" not in out
    [row] = json.loads(cli("list", "--json", "--state", db)[1])
    assert row["paused"] is True and row["next"] is None
    cli("resume", "n", "--state", db)
    [row] = json.loads(cli("list", "--json", "--state", db)[1])
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", row["next"]), row
    far = "http://head-node-of-the-nightly-training-cluster.example.internal:8265"
    assert cli("add", "far", "--spec", str(spec), "--address", far, "--runs-dir", "s3://b/r", "--state", db)[0] == 0
    code, out = cli("list", "--state", db)  # every value whole, on its schedule's line
    assert code == 0 and re.search(rf"\bfar\b.*15 4 \* \* \* \(Europe/Berlin\).*{re.escape(far)}.*forbid/skip/always",
                                   out), out
    code, out = cli("history", "n", "--state", db)
    assert code == 0 and "schedule n has no runs yet" in out
    assert cli("list", "--state", str(tmp_path / "empty.db"))[1].startswith("no schedules in ")


def test_export_has_no_yaml_anchors_and_keeps_an_absolute_spec_path_absolute(tmp_path, spec, monkeypatch):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the spec is not below the folder the schedule was added from
    text, docs = _exported(tmp_path, spec, "k8s-cronjob")
    assert "&id" not in text and "*id" not in text, text
    assert f"must contain mmpipe and {spec}\n" in text and "relative to its working directory" not in text
    rayjob = yaml.safe_load([d for d in docs if d["kind"] == "ConfigMap"][0]["data"]["rayjob.yaml"])
    assert rayjob["spec"]["entrypoint"].startswith(f"mmpipe run {spec} ")
