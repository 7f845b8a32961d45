import json
import re
import subprocess
import sys

import pytest
import typer
import typer.main
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.cli.common import BAD_INPUT, FAILED, USER_ERRORS, exits_on_error

runner = CliRunner()


def _command_paths(command, path=()):
    """Every command and sub-command of the app, as the argument lists that name them."""
    yield list(path)
    for name, sub in getattr(command, "commands", {}).items():
        yield from _command_paths(sub, (*path, name))


COMMANDS = list(_command_paths(typer.main.get_command(app)))


def test_every_command_group_is_seen():
    names = {" ".join(p) for p in COMMANDS}
    assert {"pack", "train", "run", "submit", "registry list", "jobs logs", "schedule serve"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "mmpipe")
def test_help_of_every_command(path):
    result = runner.invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output and "--help" in result.output


def test_help_loads_neither_torch_nor_ray():
    code = "import sys; from pipeline.cli import app; print(sorted({'torch', 'ray'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_python_dash_m_runs_the_same_app():  # how the scheduler and cluster jobs start `mmpipe run`
    out = subprocess.run([sys.executable, "-m", "pipeline.cli", "schedule", "--help"], capture_output=True,
                         text=True, check=True).stdout
    assert "Recurring runs of a job spec" in out


def test_every_listed_user_error_is_a_real_exception_class():
    import importlib

    for module, names in USER_ERRORS.items():
        for name in names:
            assert issubclass(getattr(importlib.import_module(module), name), Exception), f"{module}.{name}"


def test_the_guard_turns_library_errors_into_one_line_and_an_exit_code():
    from pipeline.registry import RegistryError
    from pipeline.spec import SpecError

    guarded = typer.Typer()

    @guarded.command()
    def go(what: str) -> None:
        with exits_on_error(FAILED):
            raise {"registry": RegistryError("no version 7 in r/ (已注册: 1, 2)"), "spec": SpecError("train.lr: bad"),
                   "bug": KeyError("k")}[what]

    failed = runner.invoke(guarded, ["registry"])
    assert failed.exit_code == FAILED and failed.output == "error: no version 7 in r/ (已注册: 1, 2)\n"
    spec = runner.invoke(guarded, ["spec"])  # a refused spec is bad input whatever the guard's code
    assert spec.exit_code == BAD_INPUT and spec.output == "error: train.lr: bad\n"
    bug = runner.invoke(guarded, ["bug"])  # not a library error: a traceback, not a tidy line hiding a bug
    assert isinstance(bug.exception, KeyError)



def test_a_stopped_run_says_what_stopped_and_how_to_continue(tmp_path):
    """Ctrl-C (KeyboardInterrupt), or Ray exiting under the run (SystemExit: what Ctrl-C during a Ray Train run
    gives, measured with `kill -INT PID` and `kill -INT -PGID` on `mmpipe train`): one line and an exit code."""
    from pipeline.cli.common import INTERRUPTED, resume_hint, says_how_to_continue

    guarded = typer.Typer()

    @guarded.command()
    def go(how: str) -> None:
        with says_how_to_continue("training", resume_hint(tmp_path)):
            raise KeyboardInterrupt if how == "ctrl-c" else SystemExit(1)

    hint = f"Its checkpoints are in {tmp_path / 'ray'}: the same command again resumes from the last one"
    ctrl_c = runner.invoke(guarded, ["ctrl-c"])
    assert ctrl_c.exit_code == INTERRUPTED and ctrl_c.output.startswith(f"error: interrupted: training stopped. {hint}")
    ray_ended = runner.invoke(guarded, ["ray"])
    assert ray_ended.exit_code == FAILED and ray_ended.output.startswith("error: stopped: the training ended without a result")
    assert hint in ray_ended.output

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
    assert len(counts) >= 6 and max(counts.values()) >= 12 * min(counts.values())  # as the README says


@pytest.mark.ray
def test_validate_writes_report_and_bad_spec_fails_early(ray_session, demo_dir, tmp_path):
    out = tmp_path / "report.json"
    result = runner.invoke(app, ["validate", str(demo_dir / "spec.yaml"), "--out", str(out), "--split", "val"])
    assert result.exit_code == 0, result.output
    assert "rows kept" in result.stdout and "duplicate" in result.stdout
    report = json.loads(out.read_text(encoding="utf-8"))
    manifest = json.loads((demo_dir / "manifest.json").read_text(encoding="utf-8"))
    val = report["splits"]["val"]
    lines = result.stdout.splitlines()  # the header, then one line for the pass (not a terminal: no bar)
    assert lines[:2] == ["validate: job demo", f"  spec: {demo_dir / 'spec.yaml'}"], result.stdout
    assert f"  data: val {demo_dir}/val/*.tar" in lines and f"  report: {out}" in lines
    passes = [line for line in lines if line.startswith("data report: ")]
    assert len(passes) == 1 and re.fullmatch(rf"data report: val: {val['rows_in']:,} rows \({val['rows_kept']:,} "
                                             r"kept\) in \d+\.\d s, [\d,]+ rows/s", passes[0]), passes
    assert set(report["splits"]) == {"val"}  # --split val: only that split was read
    assert val["rows_in"] == manifest["splits"]["val"]["samples"]  # every sample of the split was read...
    assert {r: n for r, n in val["dropped"].items() if n} == manifest["planted"]["val"]  # ...each planted one caught
    assert val["rows_kept"] == val["rows_in"] - sum(val["dropped"].values()) > 0
    bad = runner.invoke(app, ["validate", str(demo_dir / "spec.yaml"), "--set", "clean.dedupee=false"])
    assert bad.exit_code == 2 and "clean.dedupee: unknown field (did you mean dedupe?)" in bad.output


def test_show_spec_resolves_defaults_and_overrides(demo_dir):
    result = runner.invoke(app, ["show-spec", str(demo_dir / "spec.yaml"), "--set", "train.epochs=3"])
    assert result.exit_code == 0 and "epochs: 3" in result.stdout and "fusion: concat" in result.stdout


def test_show_spec_loads_neither_torch_nor_ray_nor_augmentation_libraries(demo_dir):
    """It answers in about a second: names are checked against pipeline/spec_names.py (was 8-10 s)."""
    code = ("import sys; from typer.testing import CliRunner; from pipeline.cli import app; "
            f"r = CliRunner().invoke(app, ['-v', 'show-spec', {str(demo_dir / 'spec.yaml')!r}]); "
            "assert r.exit_code == 0 and 'HorizontalFlip' in r.stdout, r.output; "
            "print(sorted({'torch', 'ray', 'albumentations', 'nlpaug', 'audiomentations'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


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
