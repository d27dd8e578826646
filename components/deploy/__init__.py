"""Deploy stage: local endpoint processes (and, later, SageMaker)."""
