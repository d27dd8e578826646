"""Prefect tasks: thin wrappers that add retries, timeouts and artifacts to components."""
