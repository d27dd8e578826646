"""fineship flows: Prefect 3 compositions of tasks, plus the `fineship` CLI."""
