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
