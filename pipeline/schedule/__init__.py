"""Recurring runs of a job spec: cron due times (cron), state in SQLite (store), policies (policy), the data
trigger (trigger), launchers (launch, wrap), run outcomes (outcome), the pass and the loop (scheduler), Kubernetes
manifests (export) and the ``mmpipe schedule`` commands (cli). See docs/schedule.md."""
