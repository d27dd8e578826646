"""Serving stage: the SageMaker-contract inference server and handler."""
