"""Hyperparameter search with Ray Tune over fusion architectures and optimizer settings."""
