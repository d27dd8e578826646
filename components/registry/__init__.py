"""Registry stage: MLflow behind a small interface."""
