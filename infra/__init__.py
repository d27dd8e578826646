"""Infrastructure definitions: AWS resources and Prefect work pools (see infra/aws, infra/prefect)."""
