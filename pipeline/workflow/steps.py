"""The workflow's steps. Each writes its outputs into a fresh folder ``ws`` and returns a small summary for its
manifest; what a step reads of the spec is declared in ``STEP_INPUTS`` so that a re-run reuses a step only when
nothing it depends on changed."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from pipeline.io import atomic_write_text
from pipeline.spec import STEPS as STEP_NAMES
from pipeline.tracking.mlflow_log import mlflow_run_id
from pipeline.spec import JobSpec
from pipeline.spec_checks import load_job as load_spec
from pipeline.tasks import holdout_task
from pipeline.workflow.champion import decide
from pipeline.registry import Registry
from pipeline.workflow.rundir import RunDir, fingerprint

if TYPE_CHECKING:
    from pipeline.data.streaming.plan import DataPlan


class WorkflowError(RuntimeError):
    """A step that cannot go on; the message says why."""


@dataclass
class StepContext:
    spec: JobSpec
    run: RunDir
    run_id: str
    say: Callable[[str], None] = print
    results: dict = field(default_factory=dict)  # step -> summary, of this and earlier attempts
    data_plan: "DataPlan | None" = None  # the run's one data plan, shared by its steps (built on first use)
    # (sha256 of a best.pt, split) -> its metrics on this run's data, scored in this process: a split is scored
    # once per checkpoint, whichever step needs it first
    scores: dict = field(default_factory=dict)

    @property
    def data(self) -> "DataPlan":
        if self.data_plan is None:
            from pipeline.data.streaming.plan import DataPlan

            self.data_plan = DataPlan(self.spec)
        return self.data_plan

    @property
    def registry(self) -> Registry:
        return Registry(self.spec.registry.uri)

    def outputs(self, step: str) -> Path:
        return self.run.outputs(step)


# ---------------------------------------------------------------- what each step depends on

_DATA = ("data", "modalities", "label", "clean", "align")
_TRAINING = _DATA + ("augment", "rebalance", "model", "train", "scaling", "seed")


def _sections(spec: JobSpec, names) -> dict:
    dumped = spec.model_dump(mode="json")
    out = {n: dumped[n] for n in names}
    if "label" in names and spec.label.tasks:  # fingerprints sort keys: the order of label.tasks (the heads' order
        out["label_task_order"] = list(spec.label.tasks)  # in the logits) must show (only with tasks: old stamps hold)
    return out


def _data_inputs(spec: JobSpec) -> dict:
    """The data sections and what the shards are now: new or changed shards under the same globs count."""
    from pipeline.data.shards.fingerprint import data_fingerprint

    return {**_sections(spec, _DATA + ("rebalance",)), "fingerprint": data_fingerprint(spec)}


def _split_data(spec: JobSpec, splits: list[str]) -> dict:
    """The shards (and manifest) of ``splits`` as they are now, so new data under the same globs re-runs a step."""
    from pipeline.data.shards.fingerprint import data_fingerprint

    return data_fingerprint(spec, [s for s in splits if s in spec.data.splits])


def _predict_inputs(spec: JobSpec) -> dict:
    """The predict section, the version the model reference points at now, and the shards as they are now."""
    from pipeline.data.shards.fingerprint import shard_listing
    from pipeline.registry import ModelRef, RegistryError

    try:
        ref = ModelRef.parse(spec.predict.model)
        version = Registry(ref.registry).resolve(ref)
    except RegistryError as e:
        version = f"unresolved: {e}"  # the step itself reports it
    try:
        shards = shard_listing(spec.predict.shards)
    except Exception as e:  # noqa: BLE001 - the step reports missing shards properly
        shards = f"unlisted: {e}"
    return {"predict": spec.model_dump(mode="json")["predict"], "version": version, "shards": shards}


def step_inputs(spec: JobSpec, step: str, upstream: dict[str, str]) -> dict:
    """The step's inputs: its spec slice and the output fingerprints of the earlier steps it reads."""
    slice_of, reads = STEP_INPUTS[step]
    return {"spec": fingerprint(slice_of(spec)), **{f"{s}.outputs": upstream[s] for s in reads if s in upstream}}


# ---------------------------------------------------------------- the steps

def validate_data(ctx: StepContext, ws: Path) -> dict:
    from pipeline.data.shards.fingerprint import data_fingerprint

    report = ctx.data.validate()
    report.write_json(ws / "data_report.json")
    data = data_fingerprint(ctx.spec)
    atomic_write_text(ws / "data.json", json.dumps(data, indent=2))
    empty = [name for name, s in report.splits.items() if s.rows_kept == 0]
    if empty:
        raise WorkflowError(f"no usable rows in split(s) {', '.join(empty)} (see {ws.name}/data_report.json)")
    return {"rows_kept": {n: s.rows_kept for n, s in report.splits.items()},
            "dropped": {n: sum(s.dropped.values()) for n, s in report.splits.items()}, **data}


def tune(ctx: StepContext, ws: Path) -> dict:
    from pipeline.tune.runner import run_tune

    result = run_tune(ctx.spec, ws, data_plan=ctx.data)
    return {"trials": result.trials, "best_metric": result.best_metric, "best_config": result.best_config}


def pretrain(ctx: StepContext, ws: Path) -> dict:
    from pipeline.train.pretrain import run_pretraining

    result = run_pretraining(ctx.spec, ws, data_plan=ctx.data)
    last = result.history[-1]
    return {"epochs_run": last["epoch"], "train.loss": last["train.loss"], "temperature": last["temperature"]}


def _training_spec(ctx: StepContext) -> JobSpec:
    """The spec to train: Tune's best when this workflow tuned, else the run's own; started from the pretrain
    step's encoders when this workflow pretrained."""
    spec = load_spec(ctx.outputs("tune") / "best_spec.yaml") if "tune" in ctx.spec.steps() else ctx.spec
    if "pretrain" in ctx.spec.steps():
        spec = spec.model_copy(deep=True)
        spec.model.init_from = str(ctx.outputs("pretrain"))
    return spec


def train(ctx: StepContext, ws: Path) -> dict:
    from pipeline.train.trainer import run_training

    # validate-data already read and counted every split: its report stands for this run's, not a second pass
    reported = "validate-data" in ctx.spec.steps()
    spec = _training_spec(ctx)
    result = run_training(spec, ws, data_report=not reported, data_plan=ctx.data)
    if reported:
        shutil.copyfile(ctx.outputs("validate-data") / "data_report.json", ws / "data_report.json")
    # scored on this run's test data with the code evaluate uses: no second pass. Not with label.tasks: training's
    # test pass drops rows for an unknown further label, the holdout's (score) keeps every primary-labelled row
    if spec.data == ctx.spec.data and not spec.label.tasks:
        ctx.scores[(_sha256(ws / "best.pt"), "test")] = {k: v for k, v in result.metrics.items()
                                                          if k.startswith("test.")}
    keep = ("best_epoch", "epochs_run", "val.macro_f1", "val.accuracy")
    return {k: result.metrics[k] for k in keep if k in result.metrics}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def score(model, model_spec: JobSpec, data: "DataPlan", split: str, classes: list[str]) -> dict:
    """``model`` (trained with ``model_spec``'s modalities and alignment) on the run's ``split`` (``data``). Only
    the primary label is required: a further task's value unknown to this model is -1 (as in prediction), so a
    champion and a challenger with other label.tasks classes are scored on the same rows."""
    from pipeline.data.streaming.actors import actors_scope
    from pipeline.train.trainer import evaluate

    if split not in data.spec.data.splits:
        raise WorkflowError(f"the holdout split {split!r} (registry.holdout) is not in data.splits "
                            f"(have: {', '.join(data.spec.data.splits) or 'none'})")
    spec = model_spec.model_copy(deep=True)
    spec.data = data.spec.data.model_copy(deep=True)
    with actors_scope():  # the read's duplicate index ends with the evaluation (docs/liveness.md)
        return evaluate(model, data.for_spec(spec, classes).eval_dataset(split, further_required=False), spec,
                        classes, split)


def _scalars(metrics: dict) -> dict:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in metrics.items() if isinstance(v, (int, float))}


def evaluate_step(ctx: StepContext, ws: Path) -> dict:
    from pipeline.model.checkpoint import load_model  # torch: only for a step that runs

    best = ctx.outputs("train") / "best.pt"
    model, model_spec, classes = load_model(best, str(best))
    split = ctx.spec.registry.holdout
    metrics = ctx.scores.get((_sha256(best), split)) or score(model, model_spec, ctx.data, split, classes)
    atomic_write_text(ws / "evaluation.json", json.dumps({"split": split, "classes": classes,
                                                          "metrics": _scalars(metrics),
                                                          "confusion": metrics[f"{split}.confusion"]}, indent=2))
    return {k: v for k, v in _scalars(metrics).items() if k.count(".") == 1}


def code_version() -> str:
    version = metadata.version("mmpipe")
    try:
        here = Path(__file__).resolve().parent
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        if commit:
            version += f"+g{commit}" + (".dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return version


def register(ctx: StepContext, ws: Path) -> dict:
    train_dir = ctx.outputs("train")
    evaluation = json.loads((ctx.outputs("evaluate") / "evaluation.json").read_text(encoding="utf-8"))
    data = json.loads((ctx.outputs("validate-data") / "data.json").read_text(encoding="utf-8")) \
        if "validate-data" in ctx.spec.steps() else {}
    trained_spec = (train_dir / "spec.yaml").read_text(encoding="utf-8")
    meta = {"name": ctx.spec.name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "spec_sha256": fingerprint(trained_spec), "data": data, "holdout": evaluation["split"],
            "metrics": evaluation["metrics"], "classes": evaluation["classes"], "code_version": code_version(),
            "run_dir": ctx.run.uri, "mlflow_run_id": mlflow_run_id(train_dir)}  # None: not logged to MLflow
    task = holdout_task(ctx.spec)
    if task:  # label.tasks: the holdout metric (test.macro_f1) is the primary task's
        meta["task"] = task
    version = ctx.registry.register((train_dir / "best.pt").read_bytes(), trained_spec, meta, ctx.run_id)
    atomic_write_text(ws / "register.json", json.dumps({"registry": ctx.registry.uri, "version": version}))
    return {"registry": ctx.registry.uri, "version": version}


def promote(ctx: StepContext, ws: Path) -> dict:
    registry, reg = ctx.registry, ctx.spec.registry
    version = json.loads((ctx.outputs("register") / "register.json").read_text())["version"]
    evaluation = json.loads((ctx.outputs("evaluate") / "evaluation.json").read_text(encoding="utf-8"))
    key = f"{reg.holdout}.{reg.metric}"
    champion = registry.alias("champion")
    earlier = registry.decision(version)
    if champion == version and (earlier is None or _same_rule(earlier, reg)):
        # promoted by an earlier attempt of this run under the same rule (or by hand): that decision stands
        decision = earlier or {"promote": True, "reason": "already champion"}
    else:
        # this version is champion under another rule (e.g. another min_improvement): decide again against the
        # champion it replaced, and give that one its place back if the rule says so now
        against = champion if champion != version else _replaced(registry, version)
        champion_score = None
        if against is not None:
            ctx.say(f"scoring champion version {against} on {reg.holdout}")
            loaded = registry.load(against)
            if loaded.classes != evaluation["classes"]:
                raise WorkflowError(f"champion version {against} has classes {loaded.classes}, the new model "
                                    f"{evaluation['classes']}: not comparable. Promote by hand if intended: "
                                    f"mmpipe registry promote {registry.uri} {version}")
            # NaN stays NaN here (not None): decide() must not read a scoreless champion as "no champion"
            scored = score(loaded.model, loaded.spec, ctx.data, reg.holdout, loaded.classes)
            _same_rows(scored, evaluation["metrics"], reg.holdout, against, version)
            champion_score = scored.get(key)
        decision = decide(reg.metric, evaluation["metrics"].get(key), champion_score, reg.min_improvement,
                          task=holdout_task(ctx.spec))  # the primary task's
        decision.update({"challenger_version": version, "champion_version": against, "split": reg.holdout,
                         "run_dir": ctx.run.uri,
                         "time": datetime.now(timezone.utc).isoformat(timespec="seconds")})
        registry.record_decision(version, decision)
        scores = {"challenger": decision["challenger"], "champion": decision["champion"]}
        if decision["promote"] and champion != version:
            registry.set_alias("champion", version, expected=champion, reason=decision["reason"], scores=scores)
        elif not decision["promote"] and champion == version and against is not None:
            registry.set_alias("champion", against, expected=version, scores=scores,
                               reason=f"version {version} re-decided: {decision['reason']}")
    atomic_write_text(ws / "decision.json", json.dumps(decision, indent=2))
    return {"promoted": bool(decision["promote"]), "version": version, "reason": decision["reason"]}


def _same_rows(champion: dict, challenger: dict, split: str, against: int, version: int) -> None:
    """Refuse to compare scores over different holdout rows (another clean or label spec can keep other rows)."""
    rows = f"{split}.rows"
    if rows in champion and rows in challenger and champion[rows] != challenger[rows]:
        raise WorkflowError(f"champion version {against} was scored on {champion[rows]} rows of {split}, the new "
                            f"version {version} on {challenger[rows]}: not comparable (their specs keep other "
                            "rows). Promote by hand if intended.")


def _same_rule(decision: dict, reg) -> bool:
    """Whether a recorded decision was taken under the spec's promotion rule (its inputs besides the scores)."""
    return (decision.get("metric"), decision.get("split"), decision.get("min_improvement")) == \
        (reg.metric, reg.holdout, reg.min_improvement)


def _replaced(registry: Registry, version: int) -> int | None:
    """The champion that ``version`` replaced when it was last made champion."""
    moves = [e for e in registry.alias_events("champion") if e.get("version") == version]
    return moves[-1].get("previous") if moves else None


def predict_step(ctx: StepContext, ws: Path) -> dict:
    from pipeline.predict import predict

    p = ctx.spec.predict
    result = predict(p.model, p.shards, p.out, p.batch_size, p.actors, p.use_gpu)
    atomic_write_text(ws / "predict_report.json", json.dumps(
        {"out": result.out, "version": result.version, "rows": result.rows, "predicted": result.predicted,
         "report": result.report.to_dict()}, indent=2, ensure_ascii=False))
    return {"out": result.out, "version": result.version, "rows": result.rows, "predicted": result.predicted}


# Step names and their order are the spec's (pipeline.spec.STEPS, which workflow.steps is validated against): each row
# below is one step, in that order, so the tables hold exactly the names the spec accepts (strict: one row each).
# A row: (what runs, the spec slice it reads, the earlier steps whose outputs it reads).
_TABLE = dict(zip(STEP_NAMES, (
    (validate_data, _data_inputs, ()),
    (pretrain, lambda s: {**_sections(s, _TRAINING + ("pretrain",)), "data": _split_data(s, ["train"])}, ()),
    (tune, lambda s: {**_sections(s, _TRAINING + ("tune",)), "data": _split_data(s, ["train", "val"])}, ()),
    (train, lambda s: {**_sections(s, _TRAINING), "data": _split_data(s, ["train", "val"])}, ("tune", "pretrain")),
    (evaluate_step, lambda s: {"holdout": s.registry.holdout, **_sections(s, _DATA),
                               "data": _split_data(s, [s.registry.holdout])}, ("train",)),
    (register, lambda s: {"registry": s.registry.uri}, ("train", "evaluate", "validate-data")),
    (promote, lambda s: {"registry": s.model_dump(mode="json")["registry"]}, ("register", "evaluate")),
    (predict_step, _predict_inputs, ("promote",)),
), strict=True))
STEPS: dict[str, Callable[[StepContext, Path], dict]] = {name: row[0] for name, row in _TABLE.items()}
STEP_INPUTS: dict[str, tuple[Callable[[JobSpec], dict], tuple[str, ...]]] = {
    name: (row[1], row[2]) for name, row in _TABLE.items()}
if {r for _, _, reads in _TABLE.values() for r in reads} - set(_TABLE):  # a misspelt step name would read nothing
    raise RuntimeError(f"workflow step table reads unknown steps: {_TABLE}")
