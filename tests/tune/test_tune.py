"""Ray Tune: search-space validation, resource fitting, and a tiny real search that exports a complete best spec
(which a workflow then trains: tests/cli/test_commands_e2e.py, jobs/tune.yaml)."""

import pytest

from pipeline.spec import SpecError
from pipeline.spec_checks import job_from_dict as spec_from_dict
from pipeline.spec_checks import load_job as load_spec


def test_search_space_errors_name_the_field():
    with pytest.raises(SpecError) as e:
        spec_from_dict({"tune": {"search_space": {
            "model.fusion": {"choice": ["concat", "concatt"]}, "train.lr": {"loguniform": [0, 1]},
            "train.momentum": {"uniform": [0.5]}, "model.size": {"choice": [1]}, "data.splits": {"choice": [1]},
            "train.batch_size": {"normal": [1, 2]}}}})
    msg = str(e.value)
    assert "tune.search_space.model.fusion: value 'concatt' makes an invalid spec: model.fusion" in msg
    assert "tune.search_space.train.lr: loguniform needs low > 0" in msg
    assert "tune.search_space.train.momentum: uniform needs [low, high] numbers" in msg
    assert "tune.search_space.model.size: value 1 makes an invalid spec: model.size: unknown field" in msg
    assert "tune.search_space.data.splits: the search space may not change" in msg
    assert "tune.search_space.train.batch_size: unknown distribution 'normal'" in msg


def test_trials_leave_ray_data_a_cpu():
    from pipeline.tune.runner import concurrent_trials

    spec = spec_from_dict({"scaling": {"num_workers": 2, "cpus_per_worker": 0.5}})
    assert concurrent_trials(spec, 2) == 1
    assert concurrent_trials(spec, 16) == 8  # each trial: 2 workers x 0.495 CPU + 1 data CPU + its function
    assert concurrent_trials(spec_from_dict({"tune": {"max_concurrent_trials": 3}}), 16) == 3
    from pipeline.resources import PlanError

    with pytest.raises(PlanError, match="max_concurrent_trials"):  # 3 trials cannot fit on 2 CPUs: refused up front
        concurrent_trials(spec_from_dict({"tune": {"max_concurrent_trials": 3}}), 2)


@pytest.mark.slow
def test_tiny_search_exports_a_complete_spec_and_continues(ray_session, tiny_demo, tmp_path):
    from pipeline.tune.runner import run_tune

    import io

    from rich.console import Console

    from pipeline.console import PlainView, showing
    from pipeline.tune.space import DEFAULT_SEARCH_SPACE

    # no tune.search_space: the default search (3 fusions, each with a drawn optimizer and lr)
    # tiny data, one epoch a trial, one worker: what is checked is the search, its outputs and its continuation, not
    # a score (trials of two DDP workers run in tests/cli/test_commands_e2e.py, tests/train/test_resume.py and
    # tests/test_liveness.py)
    spec = load_spec(tiny_demo / "spec.yaml", ["tune.num_samples=1", "train.epochs=1", "train.batch_size=16",
                                              "model.hidden=32", "tune.scheduler=asha", "augment.enabled=false",
                                              "scaling.num_workers=1"])
    shown = io.StringIO()
    with showing(PlainView(Console(file=shown, width=10_000, color_system=None))):  # as piped `mmpipe tune`
        result = run_tune(spec, tmp_path / "tune")
    fusions = DEFAULT_SEARCH_SPACE["model.fusion"]["grid"]
    assert result.trials == len(fusions)
    assert set(result.best_config) == {"model.fusion", "train.optimizer", "train.lr"}
    csv_text = (tmp_path / "tune" / "trials.csv").read_text()
    assert csv_text.count("\n") == len(fusions) + 1 and "val.macro_f1" in csv_text
    # the trial table, off a terminal: a line as each trial starts and one as it ends, with what it searched
    ended = [line for line in shown.getvalue().splitlines() if " TERMINATED " in line]
    assert sorted(line.split("fusion=")[1].split()[0] for line in ended) == sorted(fusions), shown.getvalue()
    assert all("optimizer=" in line and "lr=" in line and "best val.macro_f1=" in line
               and "best val.macro_f1=- " not in line for line in ended)
    for name in ("trials_curves.png", "best_by_choice.png", "best_spec.yaml", "data_report.json"):
        assert (tmp_path / "tune" / name).stat().st_size > 0
    assert result.best_checkpoint
    best = load_spec(result.best_spec_path)  # a complete job spec, unchanged
    assert best.model.fusion == result.best_config["model.fusion"]
    assert best.train.optimizer == result.best_config["train.optimizer"]
    # That best_spec.yaml trains is checked where a workflow trains it (tune -> train): tests/cli/test_commands_e2e.py
    again = run_tune(spec, tmp_path / "tune")  # a finished experiment is continued, not started over
    assert again.trials == len(fusions) and again.best_config == result.best_config


def test_optuna_needs_its_extra_and_no_grid(monkeypatch):
    """optuna is in the test extra: the search is built; without the package the error says what to install."""
    import sys

    from ray.tune.search.optuna import OptunaSearch

    from pipeline.tune.runner import TuneError, _search_alg

    spec = spec_from_dict({"tune": {"search_alg": "optuna",
                                    "search_space": {"train.lr": {"loguniform": [0.001, 0.01]}}}})
    assert isinstance(_search_alg(spec), OptunaSearch)
    grid = spec_from_dict({"tune": {"search_alg": "optuna", "search_space": {"model.fusion": {"grid": ["sum"]}}}})
    with pytest.raises(TuneError, match="grid"):
        _search_alg(grid)
    monkeypatch.setitem(sys.modules, "optuna", None)  # as if not installed: importing it raises ImportError
    with pytest.raises(TuneError, match=r"pip install 'mmpipe\[optuna\]'"):
        _search_alg(spec)
