"""fineship components: plain library code, one sub-package per pipeline stage.

Nothing here imports Prefect, reads environment settings or touches the network at import
time; services are passed in by the caller (tasks, flows, the CLI).
"""
