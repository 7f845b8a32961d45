"""Experiment trackers a run writes to as it trains: TensorBoard event files (always) and MLflow (when asked)."""
