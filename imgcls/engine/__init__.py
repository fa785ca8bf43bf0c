"""The training engine: build a Run (build.py), run its epochs (fit.py) through the loop (loop.py:
train_epoch, validate), with last.pt (checkpoint.py), the run folder (rundir.py) and signals.

Use ``imgcls.train`` / ``imgcls.resume`` (imgcls/api.py) to train with the report at the end.
"""
from .build import FitConfig, Progress, Run, build_run
from .fit import FitResult, fit
from .loop import BatchPrep, EpochState, StepConfig, train_epoch, validate
from .signals import TrainingInterrupted

__all__ = ["Run", "Progress", "FitConfig", "build_run", "fit", "FitResult", "TrainingInterrupted",
           "EpochState", "StepConfig", "BatchPrep", "train_epoch", "validate"]
