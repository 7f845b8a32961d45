"""Recurring runs of a job spec: cron due times (cron), state in SQLite (store), policies (policy), the data
trigger (trigger), launchers (launch, wrap), run outcomes (outcome), the pass and the loop (scheduler), Kubernetes
manifests (export). The ``mmpipe schedule`` commands are in pipeline/cli/schedule.py; see docs/schedule.md."""
