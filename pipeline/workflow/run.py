"""``mmpipe run``: a spec's steps in order, in a run directory, resuming at the first incomplete step.

A step is skipped when an earlier attempt completed it with the same inputs (its spec slice and the outputs of the
steps it reads); otherwise it runs again, and so does everything that reads its outputs.
"""

from __future__ import annotations

import json
import time
import traceback
import uuid
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Callable

from pipeline import storage
from pipeline.spec import JobSpec
from pipeline.workflow.rundir import RunDir, fingerprint, output_files
from pipeline.workflow.steps import STEPS, StepContext, step_inputs

if TYPE_CHECKING:
    from pipeline.data.streaming.plan import DataPlan


class WorkflowFailed(RuntimeError):
    def __init__(self, step: str, error: str, run: dict):
        super().__init__(f"step {step} failed: {error}")
        self.step, self.error, self.run = step, error, run


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def default_run_dir(spec: JobSpec) -> str:
    return spec.workflow.run_dir or f"runs/{spec.name}"


def _outcome(ctx: StepContext) -> dict:
    """What a scheduler or a person wants to know first: which version, and was it promoted, and why."""
    register, promote = ctx.results.get("register", {}), ctx.results.get("promote", {})
    decision = None
    if "promote" in ctx.results:
        decision = json.loads((ctx.outputs("promote") / "decision.json").read_text(encoding="utf-8"))
    return {"registry": ctx.spec.registry.uri, "version": register.get("version"),
            "promoted": promote.get("promoted"), "decision": decision}


def run_workflow(spec: JobSpec, run_dir: str | None = None, say: Callable[[str], None] = print,
                 data_plan: "DataPlan | None" = None,
                 prepare: "Callable[[], DataPlan | None] | None" = None) -> dict:
    """Run (or resume) the workflow; returns run.json's content. Raises WorkflowFailed after recording it.
    ``data_plan``: the run's DataPlan (its steps share one, built on first use when not given). ``prepare``: called
    once before the first step that has work to do (start Ray, build the data plan: it returns the plan); a run
    whose steps are all done never calls it, so it answers in about a second. Holds the run directory's lock
    throughout: a second ``mmpipe run`` on it fails at once (RunLocked) instead of deleting this one's work."""
    run = RunDir(run_dir or default_run_dir(spec))
    with run.lock():
        if prepare is not None and pending_step(spec, run) is not None:
            data_plan = prepare() or data_plan
        return _run_steps(spec, run, say, data_plan)


def _check(spec: JobSpec, run: RunDir, step: str, upstream: dict[str, str]):
    """(inputs, their hash, the error computing them, the manifest when an earlier attempt completed the step with
    these very inputs)."""
    try:  # listing the data can fail (a missing shard): that is this step's failure, recorded by the caller
        inputs, input_error = step_inputs(spec, step, upstream), None
    except Exception as e:  # noqa: BLE001
        inputs, input_error = {"unknown": f"{type(e).__name__}: {e}"}, e
    inputs_sha = fingerprint(inputs)
    return inputs, inputs_sha, input_error, None if input_error else run.completed(step, inputs_sha)


def pending_step(spec: JobSpec, run: RunDir) -> str | None:
    """The first step a run would have to work on (not done earlier with the same inputs); None when none."""
    upstream: dict[str, str] = {}
    for step in spec.steps():
        done = _check(spec, run, step, upstream)[3]
        if not done:
            return step
        upstream[step] = done["outputs_sha256"]
    return None


def _run_steps(spec: JobSpec, run: RunDir, say: Callable[[str], None], data_plan) -> dict:
    previous = run.read_run() or {}
    record = {"name": spec.name, "run_id": previous.get("run_id") or uuid.uuid4().hex,
              "spec_sha256": fingerprint(spec.model_dump(mode="json")), "status": "running",
              "started": _now(), "ended": None, "attempt": previous.get("attempt", 0) + 1,
              "steps": [], "outcome": None}
    ctx = StepContext(spec, run, record["run_id"], say, data_plan=data_plan)
    upstream: dict[str, str] = {}  # step -> fingerprint of its outputs
    steps = spec.steps()
    run.write_run(record)
    for number, step in enumerate(steps, 1):
        inputs, inputs_sha, input_error, done = _check(spec, run, step, upstream)
        if done:
            say(f"[{number}/{len(steps)}] {step}: done in an earlier attempt, skipped")
            upstream[step], ctx.results[step] = done["outputs_sha256"], done.get("summary", {})
            record["steps"].append({**_brief(done), "status": "skipped (done earlier)"})
            run.write_run(record)
            continue
        say(f"[{number}/{len(steps)}] {step} …")
        manifest = {"name": step, "status": "running", "started": _now(), "ended": None, "seconds": None,
                    "inputs": inputs, "inputs_sha256": inputs_sha, "outputs": None, "error": None}
        run.write_manifest(step, manifest)
        record["steps"].append(_brief(manifest))
        run.write_run(record)
        start = time.monotonic()
        try:
            if input_error:
                raise input_error
            ws = run.workspace(step, inputs_sha)
            summary = STEPS[step](ctx, ws) or {}
            outputs = sorted(str(p.relative_to(ws)) for p in output_files(ws))
            upstream[step] = run.commit(step, ws)
        except BaseException as e:  # recorded, then raised: an interrupted step is marked, not lost
            error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            manifest.update(status="failed" if isinstance(e, Exception) else "interrupted", ended=_now(),
                            seconds=round(time.monotonic() - start, 1), error=error,
                            traceback=traceback.format_exc(limit=8))
            run.write_manifest(step, manifest)
            record["steps"][-1] = _brief(manifest)
            record.update(status=manifest["status"], ended=_now(), outcome=_outcome(ctx))
            run.write_run(record)
            if isinstance(e, Exception):
                raise WorkflowFailed(step, error, record) from e
            raise
        ctx.results[step] = summary
        manifest.update(status="succeeded", ended=_now(), seconds=round(time.monotonic() - start, 1),
                        outputs=outputs, outputs_sha256=upstream[step], summary=summary)
        run.write_manifest(step, manifest)
        record["steps"][-1] = _brief(manifest)
        run.write_run(record)
        say(f"[{number}/{len(steps)}] {step}: done in {manifest['seconds']:.1f} s {_short(summary)}")
    record.update(status="succeeded", ended=_now(), outcome=_outcome(ctx))
    run.write_run(record)
    _publish(run, spec)
    return record


def _publish(run: RunDir, spec: JobSpec) -> None:
    """report.html (steps, promotion, the train/tune reports) and environment.json beside run.json, and the
    workflow as an MLflow run of its own when ``tracking`` asks (its train step logs itself). A run directory on a
    URI is reported from its local cache, which gets copies of run.json and the step records first."""
    from pipeline.report import publish_run

    if run.remote:
        run.mirror_records()
    report = publish_run(run.work, spec)
    if run.remote and report is not None:
        for name in (report.name, "environment.json"):
            if (run.work / name).is_file():
                storage.write_bytes(run.uri_of(name), (run.work / name).read_bytes())


def _brief(manifest: dict) -> dict:
    return {k: manifest.get(k) for k in ("name", "status", "started", "ended", "seconds", "error")}


def _short(summary: dict) -> str:
    text = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in summary.items()
                     if not isinstance(v, (dict, list)))
    return f"({text[:200]})" if text else ""
