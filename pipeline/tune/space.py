"""The search space: ``tune.search_space`` maps a dotted spec field to one distribution.

    model.fusion:     {grid: [concat, gated]}        every value, in every sample (grid search)
    train.optimizer:  {choice: [adamw, sgd]}         one value drawn per trial
    train.lr:         {loguniform: [1.0e-4, 1.0e-2]}
    model.dropout:    {uniform: [0.0, 0.3]}
    model.hidden:     {randint: [32, 129]}           integers in [low, high)

Every key must name a spec field, and every value the distribution can produce must make a valid spec: both are
checked when the spec loads, with errors naming ``tune.search_space.<key>``.

A spec without a search space searches ``DEFAULT_SEARCH_SPACE``: what tuning is for, the fusion, the optimizer and
its learning rate (``tests/tune`` keeps it valid against the registries).
"""

from __future__ import annotations

import copy
from typing import Any

KINDS = ("grid", "choice", "uniform", "loguniform", "randint")

# Every fusion of several modalities differs in kind; three of them, each with every optimizer family and a
# learning rate over two decades: num_samples trials per fusion.
DEFAULT_SEARCH_SPACE: dict[str, dict] = {
    "model.fusion": {"grid": ["concat", "gated", "late"]},
    "train.optimizer": {"choice": ["adamw", "momentum"]},
    "train.lr": {"loguniform": [5.0e-4, 5.0e-3]},
}


def default_space(search_alg: str = "random") -> dict[str, dict]:
    """The default search; a searcher that cannot take a grid (optuna) draws the fusion instead."""
    space = copy.deepcopy(DEFAULT_SEARCH_SPACE)
    if search_alg != "random":
        space = {k: ({"choice": d["grid"]} if "grid" in d else d) for k, d in space.items()}
    return space


def describe(space: dict[str, Any]) -> str:
    """``model.fusion: grid [concat, gated] x train.lr: loguniform [0.0003, 0.003]``: one line for the console."""
    return " x ".join(f"{key}: {kind} [{', '.join(str(a) for a in args)}]"
                      for key, dist in space.items() for kind, args in dist.items())


def searched_space(spec) -> tuple[dict[str, Any], bool]:
    """(the search space a tune of ``spec`` runs, whether it is the default)."""
    if spec.tune.search_space:
        return spec.tune.search_space, False
    return default_space(spec.tune.search_alg), True


def with_search_space(spec):
    """``spec`` with the space it searches filled in (the default when it names none)."""
    space, _ = searched_space(spec)
    return spec.model_copy(update={"tune": spec.tune.model_copy(update={"search_space": space})})


def _shape_problem(dist: Any) -> str | None:
    if not isinstance(dist, dict) or len(dist) != 1:
        return f"expected one of {{{', '.join(KINDS)}}}: [...], got {dist!r:.80}"
    kind, args = next(iter(dist.items()))
    if kind not in KINDS:
        return f"unknown distribution {kind!r}; use one of {', '.join(KINDS)}"
    if not isinstance(args, list) or not args:
        return f"{kind} needs a non-empty list"
    if kind in ("uniform", "loguniform", "randint"):
        if len(args) != 2 or not all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in args):
            return f"{kind} needs [low, high] numbers"
        if not args[0] < args[1]:
            return f"{kind} needs low < high, got {args}"
        if kind == "loguniform" and args[0] <= 0:
            return "loguniform needs low > 0"
        if kind == "randint" and not all(isinstance(a, int) for a in args):
            return "randint needs integer bounds"
    return None


def candidates(dist: dict) -> list:
    """Values that represent what the distribution can produce (all choices; the ends of a range)."""
    kind, args = next(iter(dist.items()))
    if kind == "randint":
        return [args[0], args[1] - 1]
    return list(args)


def set_dotted(raw: dict, dotted: str, value: Any) -> dict:
    node = raw
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {}) if isinstance(node.get(part), dict) or part not in node else node[part]
        if not isinstance(node, dict):
            raise ValueError(f"{dotted}: {part} is not a section")
    node[last] = value
    return raw


def apply(raw: dict, values: dict[str, Any]) -> dict:
    """A copy of the raw spec dict with dotted values set."""
    out = copy.deepcopy(raw)
    for dotted, value in values.items():
        set_dotted(out, dotted, value)
    return out


# What every trial shares because the experiment computes it once (the class counts for rebalancing, the
# materialised validation set and its label columns): keys under these may not be searched.
SHARED_BY_TRIALS = ("label", "rebalance.task")


def _shared_by_trials(key: str) -> str | None:
    """The shared setting ``key`` would change (``label``, ``rebalance.task``), else None; ``rebalance`` as a whole
    would change rebalance.task."""
    for shared in SHARED_BY_TRIALS:
        if key == shared or key.startswith(shared + ".") or shared.startswith(key + "."):
            return shared
    return None


def problems(raw: dict, space: dict[str, Any], validate) -> list[tuple[str, str]]:
    """(field path, message) for every bad key or value; ``validate(raw)`` raises on an invalid spec."""
    out = []
    for key, dist in space.items():
        path = f"tune.search_space.{key}"
        if key.startswith("tune.") or key.startswith("data."):
            out.append((path, "the search space may not change the tune or data sections"))
            continue
        fixed = _shared_by_trials(key)
        if fixed:
            out.append((path, f"the search space may not change {fixed}: the class counts and the validation set "
                              "are computed once for every trial (pipeline/tune/runner.py); run one tune per "
                              "setting instead"))
            continue
        shape = _shape_problem(dist)
        if shape:
            out.append((path, shape))
            continue
        for value in candidates(dist):
            try:
                validate(apply(raw, {key: value}))
            except Exception as e:  # the spec's own error message names the field
                msg = str(e).split("\n")
                detail = next((line.strip()[2:] for line in msg if line.strip().startswith("- ")), msg[0])
                out.append((path, f"value {value!r} makes an invalid spec: {detail}"))
                break
    return out


def to_param_space(space: dict[str, Any]) -> dict:
    from ray import tune

    build = {"grid": tune.grid_search, "choice": tune.choice, "uniform": lambda a: tune.uniform(*a),
             "loguniform": lambda a: tune.loguniform(*a), "randint": lambda a: tune.randint(*a)}
    return {key: build[kind](args) for key, dist in space.items() for kind, args in dist.items()}
