"""Regression: one number per image, trained standardised, reported in the target's unit (optional bins)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .base import TOP_K, MetricInfo, Task, float_columns


class RegressionTask(Task):
    """One number per image (an age); one output, trained on the target standardised with the
    training mean/std (stored in model.json), reported and predicted in the original unit."""
    name = "regression"
    losses = ("huber", "l1", "mse")
    default_loss = "mse"
    base_metrics = (
        MetricInfo("train/loss", "min", "mean training loss (on the standardised target)"),
        MetricInfo("val/loss", "min", "mean validation loss (on the standardised target)"),
        MetricInfo("val/mae", "min", "mean absolute error, in the target's unit"),
        MetricInfo("val/mse", "min", "mean squared error"),
        MetricInfo("val/rmse", "min", "root mean squared error"),
        MetricInfo("val/r2", "max", "coefficient of determination (scikit-learn's r2_score)"),
    )
    binned_metrics = (
        MetricInfo("val/binned/acc", "max", "accuracy of the binned prediction (task.bins)"),
        MetricInfo("val/binned/f1_macro", "max", "macro F1 over the bins of task.bins"),
    )
    default_monitor = "val/mae"
    log_metrics = ("val/loss", "val/mae", "val/rmse")
    report_sections = ("curves",)
    min_classes = 1
    mixes = False
    per_class_sampling = False

    def __init__(self, mean: float = 0.0, std: float = 1.0, bins: Optional[Sequence[float]] = None):
        self.mean, self.std = float(mean), float(std)
        self.bins = None if not bins else [float(b) for b in bins]

    @property
    def metrics(self) -> tuple[MetricInfo, ...]:
        return self.base_metrics + (self.binned_metrics if self.bins else ())

    def configure(self, record: Optional[dict] = None) -> "Task":
        r = record or {}
        return RegressionTask(r.get("mean", 0.0), r.get("std", 1.0), r.get("bins"))

    def from_config(self, cfg) -> "Task":
        return RegressionTask(bins=cfg.task.bins)

    def fit(self, targets: Sequence, classes: Sequence[str]) -> dict:
        t = torch.tensor(list(targets), dtype=torch.float64)
        std = float(t.std(unbiased=False)) if len(t) > 1 else 0.0
        return {"mean": float(t.mean()), "std": std if std > 0 else 1.0, "bins": self.bins}

    def head_size(self, classes: Sequence[str]) -> int:
        return 1

    def classes_from(self, labels: Sequence[str], explicit: Optional[Sequence[str]]) -> list[str]:
        return ["value"]

    def encode(self, labels: Sequence[str], classes: Sequence[str]) -> list[float]:
        import math
        from .base import LabelError
        out = []
        for i, label in enumerate(labels):
            try:
                v = float(str(label).strip())
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise LabelError(f"regression target '{label}' is not a finite number",
                                 "fix the value, or point task.target at another column", i)
            out.append(v)
        return out

    def label_text(self, target, classes: Sequence[str]) -> str:
        return f"{float(target):.6g}"

    def counts(self, targets: Sequence, classes: Sequence[str]) -> list[int]:
        return [len(targets)]

    def target_tensor(self, targets: Sequence, classes: Sequence[str]) -> Tensor:
        return (torch.tensor(list(targets), dtype=torch.float64) - self.mean).div(self.std).float()

    def fold_targets(self, targets: Sequence) -> dict:
        return {"values": list(targets), "bins": self.bins}

    def create_metrics(self, classes: Sequence[str]):
        from ..metrics import RegressionMetrics, bin_names
        return Destandardised(RegressionMetrics(self.bins, bin_names(self.bins) if self.bins else None),
                               self.mean, self.std)

    def decode_outputs(self, logits: Tensor) -> Tensor:
        """What TTA and ensembles average: the prediction in the target's unit, [N, 1]."""
        return logits.float()[:, :1] * self.std + self.mean

    def raw_outputs(self, probs: Tensor) -> Tensor:
        return (probs.float()[:, :1] - self.mean) / self.std

    def decoded_from_csv(self, header: Sequence[str], rows: Sequence[Sequence[str]],
                               classes: Sequence[str]) -> Tensor:
        return float_columns(header, rows, ["value"])

    def outputs_text(self) -> str:
        return ("[N, 1], the standardised target: value = output * task_record.std + task_record.mean, in the "
                "target's unit")

    def epoch_warnings(self, scalars: dict, details: dict) -> list[str]:
        return []

    def classes_text(self, classes: Sequence[str]) -> str:
        return "a regression target"

    def record(self, classes: Sequence[str]) -> dict:
        return {"type": self.name, "mean": self.mean, "std": self.std, "bins": self.bins}

    def prediction_header(self, classes: Sequence[str], labelled: bool) -> list[str]:
        return ["path", *(["label"] if labelled else []), "value", *(["bin"] if self.bins else [])]

    def prediction_rows(self, paths: Sequence[str], probs: Tensor, classes: Sequence[str],
                        labels: Optional[Sequence[str]] = None, top_k: int = TOP_K) -> list[list[str]]:
        """path, [label,] the predicted value (6 significant digits) [, its bin]."""
        values = probs[:, 0].tolist()
        if self.bins:
            from ..metrics import bin_names, bin_values
            names = bin_names(self.bins)
            which = bin_values(probs[:, 0], self.bins).tolist()
        return [[paths[i], *([labels[i]] if labels is not None else []), f"{v:.6g}",
                 *([names[which[i]]] if self.bins else [])] for i, v in enumerate(values)]


class Destandardised:
    """Regression metrics fed the model's standardised output and target back in the original unit."""

    def __init__(self, inner, mean: float, std: float):
        self.inner, self.mean, self.std = inner, mean, std

    def reset(self) -> None:
        self.inner.reset()

    def update(self, logits: Tensor, target: Tensor, loss_sum=None) -> None:
        pred = logits.float()[:, 0] * self.std + self.mean
        self.inner.update(pred, target.float().reshape(-1) * self.std + self.mean, loss_sum)

    def compute(self) -> dict:
        return self.inner.compute()

    def details(self) -> dict:
        return self.inner.details()

