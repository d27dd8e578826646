"""Deploy stage: local endpoint processes (`local`) and SageMaker endpoints with blue/green updates (`sagemaker`)."""
