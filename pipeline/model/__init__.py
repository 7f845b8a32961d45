"""Model side: encoders, fusion registry, classifier, losses."""
