"""Training on Ray Train: the per-worker loop, trainer construction, metrics, artifacts."""
