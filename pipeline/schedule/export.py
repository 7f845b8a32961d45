"""Kubernetes manifests for a schedule, for users who let Kubernetes do the scheduling instead of ``serve``.

- ``kuberay``: a KubeRay ``RayCronJob`` (ray.io/v1; KubeRay >= 1.6 with feature gate ``RayCronJob=true``;
  ``spec.timeZone`` needs >= 1.7). Its spec is ``schedule``, ``timeZone``, ``suspend`` and ``jobTemplate`` (a RayJob
  spec: ``entrypoint`` + ``rayClusterSpec``). RayCronJob has no concurrency policy: every due time creates a RayJob.
- ``k8s-cronjob``: a ``batch/v1 CronJob`` whose pod creates a RayJob from a ConfigMap with kubectl and waits for it,
  so the CronJob's ``concurrencyPolicy`` (Forbid / Allow / Replace) applies to whole runs; a replaced pod deletes
  its RayJob. ``startingDeadlineSeconds`` carries the missed-run policy. Comes with the ServiceAccount and Role that
  allow creating RayJobs.

Neither carries the data trigger or this scheduler's DST rules (Kubernetes uses its own cron library).
"""

from __future__ import annotations

import importlib.metadata
import shlex
import unicodedata
from pathlib import Path

import yaml

from pipeline import storage
from pipeline.schedule.store import Schedule

FORMATS = ("kuberay", "k8s-cronjob")
CONCURRENCY = {"forbid": "Forbid", "allow": "Allow", "replace": "Replace"}
KUBECTL_IMAGE = "bitnami/kubectl:1.31"


def ray_version() -> str:
    return importlib.metadata.version("ray")


def default_image() -> str:
    return f"mmpipe:{importlib.metadata.version('mmpipe')}"


def k8s_name(name: str) -> str:
    """A DNS-1123 name (lower case, digits, '-'; at most 52 so suffixes added by controllers still fit)."""
    out = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return (out or "mmpipe")[:52].rstrip("-")


def spec_in_image(sched: Schedule) -> str:
    """The spec's path as the image sees it: relative to where the schedule was added when it lies below it."""
    try:
        return str(Path(sched.spec).relative_to(sched.cwd))
    except ValueError:
        return sched.spec


def entrypoint(sched: Schedule, spec_path: str, runs_dir: str) -> str:
    # One run dir per run: the date is expanded by the shell that starts the job, at run time; everything else is
    # quoted, so a runs dir or name with $, ` or quotes in it stays text.
    prefix = shlex.quote(f"{runs_dir.rstrip('/')}/{sched.name}/")
    run_dir = f'{prefix}"$(date -u +%Y%m%dT%H%M%SZ)"/run'
    sets = " ".join(f"--set {shlex.quote(o)}" for o in sched.overrides)
    return f"mmpipe run {shlex.quote(spec_path)} --run-dir {run_dir}" + (f" {sets}" if sets else "")


def comment_safe(text: str) -> str:
    """``text`` for one YAML comment line: control and format characters (line breaks end a comment; bidi
    overrides hide text) written as escapes; any script's letters kept."""
    return "".join(c.encode("unicode_escape").decode("ascii") if unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp")
                   else c for c in text)


def rayjob_spec(sched: Schedule, image: str, spec_path: str, runs_dir: str) -> dict:
    def group(role: str) -> dict:
        return {"spec": {"containers": [{
            "name": f"ray-{role}", "image": image,
            "resources": {"requests": {"cpu": "1", "memory": "4Gi"}, "limits": {"cpu": "2", "memory": "8Gi"}}}]}}

    return {
        "entrypoint": entrypoint(sched, spec_path, runs_dir),
        "shutdownAfterJobFinishes": True,  # the cluster exists for one run
        "ttlSecondsAfterFinished": 600,
        "rayClusterSpec": {
            "rayVersion": ray_version(),
            "headGroupSpec": {"rayStartParams": {}, "template": group("head")},
            "workerGroupSpecs": [{"groupName": "workers", "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
                                  "rayStartParams": {}, "template": group("worker")}],
        },
    }


def kuberay(sched: Schedule, image: str, spec_path: str, runs_dir: str) -> list[dict]:
    return [{
        "apiVersion": "ray.io/v1",
        "kind": "RayCronJob",
        "metadata": {"name": k8s_name(sched.name), "labels": {"app.kubernetes.io/managed-by": "mmpipe"}},
        "spec": {"schedule": sched.cron, "timeZone": sched.timezone, "suspend": sched.paused,
                 "jobTemplate": rayjob_spec(sched, image, spec_path, runs_dir)},
    }]


_WAIT_SCRIPT = """\
set -eu
name=$(kubectl create -f /etc/mmpipe/rayjob.yaml -o name)
echo "created $name"
# Replaced (concurrencyPolicy: Replace) or deleted: take the RayJob down with this pod.
trap 'kubectl delete "$name" --wait=false; exit 143' TERM INT
while :; do
  state=$(kubectl get "$name" -o jsonpath='{.status.jobDeploymentStatus}')
  case "$state" in
    Complete) job=$(kubectl get "$name" -o jsonpath='{.status.jobStatus}'); echo "$name: $job"
              [ "$job" = SUCCEEDED ] && exit 0 || exit 1 ;;
    Failed) echo "$name: Failed"; exit 1 ;;
  esac
  sleep 30 & wait $!
done
"""


def k8s_cronjob(sched: Schedule, image: str, spec_path: str, runs_dir: str) -> list[dict]:
    name = k8s_name(sched.name)
    rayjob = {"apiVersion": "ray.io/v1", "kind": "RayJob",
              "metadata": {"generateName": f"{name}-", "labels": {"app.kubernetes.io/managed-by": "mmpipe",
                                                                  "mmpipe/schedule": name}},
              "spec": rayjob_spec(sched, image, spec_path, runs_dir)}
    labels = {"app.kubernetes.io/managed-by": "mmpipe", "mmpipe/schedule": name}
    cron_spec: dict = {
        "schedule": sched.cron,
        "timeZone": sched.timezone,
        "concurrencyPolicy": CONCURRENCY[sched.concurrency],
        "suspend": sched.paused,
        "successfulJobsHistoryLimit": 3,
        "failedJobsHistoryLimit": 3,
        "jobTemplate": {"spec": {"backoffLimit": 0, "template": {"metadata": {"labels": labels}, "spec": {
            "serviceAccountName": f"{name}-submitter",
            "restartPolicy": "Never",
            "containers": [{"name": "create-rayjob", "image": KUBECTL_IMAGE, "command": ["/bin/sh", "-c"],
                            "args": [_WAIT_SCRIPT],
                            "volumeMounts": [{"name": "rayjob", "mountPath": "/etc/mmpipe", "readOnly": True}]}],
            "volumes": [{"name": "rayjob", "configMap": {"name": f"{name}-rayjob"}}],
        }}}},
    }
    if sched.missed == "skip":  # a run not started within the grace counts as missed; run_once: no deadline
        cron_spec["startingDeadlineSeconds"] = max(10, sched.grace_s)
    meta = {"labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-rayjob", **meta},
         "data": {"rayjob.yaml": yaml.safe_dump(rayjob, sort_keys=False)}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": f"{name}-submitter", **meta}},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
         "metadata": {"name": f"{name}-submitter", **meta},
         "rules": [{"apiGroups": ["ray.io"], "resources": ["rayjobs"],
                    "verbs": ["create", "get", "list", "watch", "delete"]}]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
         "metadata": {"name": f"{name}-submitter", **meta},
         "subjects": [{"kind": "ServiceAccount", "name": f"{name}-submitter"}],
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": f"{name}-submitter"}},
        {"apiVersion": "batch/v1", "kind": "CronJob", "metadata": {"name": name, **meta}, "spec": cron_spec},
    ]


def export(sched: Schedule, fmt: str, image: str | None = None, spec_path: str | None = None,
           runs_dir: str | None = None) -> str:
    """The manifest(s) as one YAML text, opening with comments that say what to check before applying."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    image = image or default_image()
    spec_path = spec_path or spec_in_image(sched)
    runs_dir = runs_dir or sched.runs_dir
    docs = (kuberay if fmt == "kuberay" else k8s_cronjob)(sched, image, spec_path, runs_dir)
    notes = [f"mmpipe schedule {sched.name!r} as {fmt} (generated by: mmpipe schedule export {sched.name} "
             f"--format {fmt})",
             f"image {image} must contain mmpipe and {spec_path}" +
             ("" if spec_path.startswith("/") else " (relative to its working directory)"),
             f"runs go to {runs_dir}/{sched.name}/<UTC time>/run: use shared storage (s3://, gs://, a volume)"
             if storage.is_local(runs_dir) else f"runs go to {runs_dir}/{sched.name}/<UTC time>/run"]
    if fmt == "kuberay":
        notes.append("needs KubeRay >= 1.6 with --feature-gates=RayCronJob=true (timeZone: >= 1.7)")
        if sched.concurrency != "allow":
            notes.append(f"concurrency={sched.concurrency} is NOT enforced: RayCronJob has no concurrency policy; "
                         "use --format k8s-cronjob for Forbid/Replace")
    if sched.trigger == "data-changed":
        notes.append("trigger=data-changed is not exported: Kubernetes fires on every due time")
    if sched.address:
        notes.append(f"--address {sched.address} is not used: each run gets its own RayCluster")
    head = "".join(f"# {comment_safe(n)}\n" for n in notes)
    return head + yaml.dump_all(docs, Dumper=_PlainDumper, sort_keys=False, width=120)


class _PlainDumper(yaml.SafeDumper):
    """Every mapping written out in full: a dict used twice would otherwise become an anchor and an alias
    (&id001 / *id001), which kubectl accepts but people reviewing the manifest cannot read."""

    def ignore_aliases(self, data) -> bool:
        return True
