"""Read what a finished run left in ``<run_dir>/run.json`` (written by ``mmpipe run``): the workflow status, the
failed step, the registered version and the promotion decision."""

from __future__ import annotations

from typing import Any

from pipeline import storage


def run_json(run_dir: str) -> str:
    return storage.join(run_dir, "run.json")


def read_run_json(run_dir: str) -> dict | None:
    """The run's run.json, or None when it is missing or unreadable (the run died before writing it, or it was
    written where this machine cannot see it)."""
    # Not RunDir.read_run: constructing a RunDir creates folders, and a reader should leave no trace.
    try:
        doc = storage.read_json(run_json(run_dir))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def outcome_values(doc: dict | None) -> dict[str, Any]:
    """Columns for the runs table: registry, version, promoted, decision."""
    out = (doc or {}).get("outcome") or {}
    version, promoted = out.get("version"), out.get("promoted")
    return {"registry": out.get("registry"),
            "version": int(version) if isinstance(version, (int, float)) else None,
            "promoted": promoted if isinstance(promoted, bool) else None,
            "decision": out.get("decision") if isinstance(out.get("decision"), dict) else None}


def failure(doc: dict | None) -> str | None:
    """'step: error' of the first failed step, when run.json names one."""
    for step in (doc or {}).get("steps") or []:
        if isinstance(step, dict) and step.get("status") == "failed":
            return f"step {step.get('name')!r} failed: {step.get('error') or 'no error message'}"
    return None
