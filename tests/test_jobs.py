"""Every job spec in jobs/ opens with the command that runs it and validates."""

from pathlib import Path

import pytest

from pipeline.spec_checks import load_job as load_spec

JOBS = sorted((Path(__file__).parent.parent / "jobs").glob("*.yaml"))


def test_there_are_jobs():
    assert JOBS


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.name)
def test_job_spec_validates_and_says_how_to_run(path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("#")
    assert "mmpipe" in path.read_text(encoding="utf-8").split("\n\n")[0] or "mmpipe" in first
    load_spec(path)


@pytest.mark.parametrize("command", ["list", "status", "logs", "stop"])
def test_jobs_commands_do_not_talk_about_a_spec_they_do_not_take(command, monkeypatch):
    """`mmpipe jobs …` takes no spec: neither its help nor its missing-address error may send people to one."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    runner = CliRunner()
    shown = runner.invoke(app, ["jobs", command, "--help"], env={"COLUMNS": "200"})
    assert shown.exit_code == 0 and "--address" in shown.output and "spec" not in shown.output, shown.output
    args = ["jobs", command] + ([] if command == "list" else ["raysubmit_x"])
    failed = runner.invoke(app, args)
    assert failed.exit_code == 1 and "no cluster address: pass --address" in failed.output, failed.output
    assert "spec" not in failed.output and "RAY_ADDRESS" in failed.output


def test_submit_still_names_the_spec_address():
    from typer.testing import CliRunner

    from pipeline.cli import app

    shown = CliRunner().invoke(app, ["submit", "--help"], env={"COLUMNS": "200"})
    assert "submit.address" in " ".join(shown.output.split()), shown.output
