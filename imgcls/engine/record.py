"""What the run folder gets from each epoch, whichever engine trained it (imgcls's loop or Lightning's
Trainer): the metrics.csv row and TensorBoard scalars, and at each improvement the best model
(best.safetensors + model.json), val_predictions.csv and val_metrics.json. Later stages read only these.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..data import DataSplit
from ..io import atomic_write_json, write_csv
from ..models.modelinfo import ModelInfo, save_weights
from ..tasks import Task
from .rundir import append_metrics_row, csv_columns


@dataclass(frozen=True)
class Validation:
    """One validation pass: the task's scalars and details, probabilities [N, K] and dataset indices [N]."""
    scalars: dict
    details: dict
    probs: torch.Tensor
    indices: torch.Tensor


def improves(value, best, direction: str, model: nn.Module) -> bool:
    """Whether ``value`` beats ``best`` (None: nothing yet) in ``direction``; a NaN/inf monitor, parameter or
    buffer (batch-norm statistics) never becomes best. Both engines decide best.safetensors by it."""
    finite = value is not None and math.isfinite(value) and all(
        bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())
    return finite and (best is None or (value < best if direction == "min" else value > best))


@dataclass(frozen=True)
class EpochWriter:
    """Writes an epoch's outputs into the run folder ``run_dir``: its metrics row, and the best model."""
    run_dir: Path
    task: Task
    split: DataSplit
    monitor: str

    def append(self, row: dict, writer=None) -> None:
        """metrics.csv's row for the epoch (the task's columns), and its TensorBoard scalars."""
        append_metrics_row(self.run_dir / "metrics.csv", row, csv_columns(self.task.metric_names()))
        if writer is not None:
            for k in ("lr", *self.task.metric_names(), "seconds"):
                if k in row:
                    writer.add_scalar(k, row[k], row["epoch"])
            writer.flush()

    def save_best(self, info: ModelInfo, model: nn.Module, epoch: int, value: float, v: Validation,
                  train_loss: float) -> ModelInfo:
        """Write the improved model and its validation outputs; returns the model record written."""
        # the task's calibration of this epoch (multi-label thresholds) is part of the model
        info = info.replace(epoch=epoch, monitor_value=value, extra={**info.extra, **self.task.calibrate(v.details)})
        save_weights(self.run_dir / "best.safetensors", model)
        info.write(self.run_dir / "model.json")
        val, classes, task = self.split.val, self.split.classes, info.task_type
        order = v.indices.tolist()
        write_csv(self.run_dir / "val_predictions.csv", task.prediction_header(classes, labelled=True),
                  task.prediction_rows([val.paths[i] for i in order], v.probs, classes,
                                       [self.split.label_text(val.labels[i]) for i in order]))
        atomic_write_json(self.run_dir / "val_metrics.json", {
            "epoch": epoch, "monitor": self.monitor, **v.scalars, "train/loss": train_loss, **v.details})
        return info
