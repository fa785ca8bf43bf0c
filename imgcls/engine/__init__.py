"""The training engine: the loop (train_epoch, validate), checkpoints, and the whole run (train)."""
from .fit import RunResult, TrainingInterrupted, train
from .loop import EpochState, train_epoch, validate

__all__ = ["RunResult", "TrainingInterrupted", "train", "EpochState", "train_epoch", "validate"]
