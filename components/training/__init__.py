"""Training stage: model factory and the fine-tuning loop."""
