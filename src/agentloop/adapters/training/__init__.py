"""LoRA fine-tuning of the served model, in a separate process. This package's top level is torch-free:
`lora`, `base_model` (and the child side of `run`) import torch and run in the training subprocess only."""

from agentloop.adapters.training.run import run_training_process
from agentloop.adapters.training.spec import PROJECTIONS, TrainingError, TrainResult, TrainSpec

__all__ = ["PROJECTIONS", "TrainResult", "TrainSpec", "TrainingError", "run_training_process"]
