"""Training stage.

- `model_factory`: tokenizer + classifier from a Hugging Face id or path (GPT-2 and kin: end-of-text pad token).
- `batching`: length-grouped batch order, dynamic padding, sharding across processes.
- `trainer`: the fine-tuning loop (`train`) and its result (`TrainedModel`).
- `checkpoint`: atomic, verifiable, resumable checkpoints (safetensors + JSON).
- `health`: training health rules over a run's history.
- `distributed`: torchrun process-group plumbing.
- `cli`: the one training entry point (`python -m components.training.cli`, also under torchrun).
- `launch`: local torchrun runs of the entry point (`training.processes > 1`).
- `sagemaker_entry`: the SageMaker training-container entry point; `sagemaker_job`: the job launcher.
"""
