"""Ray Tune: search-space validation and resource fitting. The default search runs end to end through `mmpipe tune`
(interrupted, continued, finished: tests/train/test_resume.py); a workflow trains tune's best spec
(tests/cli/test_commands_e2e.py, jobs/tune.yaml)."""

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
