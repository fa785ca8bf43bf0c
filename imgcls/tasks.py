"""Task types: everything that differs between "one class per image" and the tasks to come.

A ``Task`` owns the head layout, how labels become targets, the split's stratification key, the
valid losses and the default one, the metrics (their names and whether higher or lower is better),
the default monitor, post-validation calibration, what TTA and ensembles average, how predictions
become CSV columns, what the model record stores, and which report sections apply.

``multiclass`` is the only task today; a new one is one registry entry (``TASKS``) plus its tests.
Metric names use only letters, digits, ``_ - . /`` and spaces, so every tracker accepts them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor

from .errors import unknown_name

TOP_K = 5  # the top_k column of prediction CSVs and the top-k accuracy of the metrics
_METRIC_NAME = re.compile(r"^[A-Za-z0-9_\-./ ]+$")


@dataclass(frozen=True)
class MetricInfo:
    name: str
    direction: str        # 'max': higher is better; 'min': lower is better
    description: str


class Task:
    """The interface; see ``MulticlassTask`` for what each member means."""
    name: str = ""
    losses: tuple[str, ...] = ()
    default_loss: str = ""
    metrics: tuple[MetricInfo, ...] = ()      # the scalars of metrics.csv, in column order
    default_monitor: str = ""
    log_metrics: tuple[str, ...] = ()
    report_sections: tuple[str, ...] = ()

    # -- names and directions
    def metric_names(self) -> list[str]:
        return [m.name for m in self.metrics]

    def check_monitor(self, name: str, key: str = "train.monitor") -> str:
        if name not in self.metric_names():
            raise unknown_name("monitor metric", name, self.metric_names())
        return name

    def direction(self, name: str) -> str:
        """'max' or 'min' for a metric of this task (declared next to it, never guessed from the name)."""
        for m in self.metrics:
            if m.name == name:
                return m.direction
        raise unknown_name(f"metric of task '{self.name}'", name, self.metric_names())

    def resolve_loss(self, name: str) -> str:
        """``auto`` -> the task's default loss; a loss the task cannot use is one sentence."""
        if name == "auto":
            return self.default_loss
        if name not in self.losses:
            raise unknown_name("loss", name, self.losses)
        return name

    def resolve_monitor(self, name: str) -> str:
        return self.default_monitor if name == "auto" else self.check_monitor(name)


class MulticlassTask(Task):
    """One label per image out of K classes; a single head of K logits, softmax probabilities."""
    name = "multiclass"
    losses = ("cross_entropy", "f1", "focal", "label_smoothing")
    default_loss = "cross_entropy"
    metrics = (
        MetricInfo("train/loss", "min", "mean training loss over the epoch's finite steps"),
        MetricInfo("val/loss", "min", "mean validation loss (the training criterion)"),
        MetricInfo("val/acc", "max", "accuracy"),
        MetricInfo("val/f1_macro", "max", "F1 averaged over all classes (zero_division=0)"),
        MetricInfo("val/precision_macro", "max", "precision averaged over all classes"),
        MetricInfo("val/recall_macro", "max", "recall averaged over all classes"),
        MetricInfo("val/balanced_acc", "max", "mean recall over the classes present"),
        MetricInfo("val/auroc", "max", "one-vs-rest ROC-AUC over the classes present"),
    )
    default_monitor = "val/f1_macro"
    log_metrics = ("val/loss", "val/acc", "val/f1_macro")   # shown on each epoch's line
    report_sections = ("findings", "curves", "per_class", "confusion", "calibration", "roc", "gallery")

    def head_size(self, classes: Sequence[str]) -> int:
        return len(classes)

    def encode(self, labels: Sequence[str], classes: Sequence[str]) -> list[int]:
        """String labels -> integer codes into ``classes`` (the model's output order)."""
        code = {c: i for i, c in enumerate(classes)}
        return [code[label] for label in labels]

    def stratify_key(self, targets: Sequence[int]) -> list[int]:
        return list(targets)

    def create_metrics(self, classes: Sequence[str]):
        from .metrics import ClassificationMetrics
        return ClassificationMetrics(len(classes), list(classes))

    def probabilities(self, logits: Tensor) -> Tensor:
        """What TTA views and ensemble members average: float32 softmax probabilities."""
        return logits.float().softmax(dim=1)

    def epoch_warnings(self, scalars: dict, details: dict) -> list[str]:
        """Sentences for the epoch log: classes whose recall lags far behind accuracy."""
        from .metrics import recall_warnings
        return recall_warnings(scalars, details)

    def calibrate(self, probs: Tensor, targets: Tensor) -> dict:
        """Post-validation calibration stored in the model record; multiclass needs none."""
        return {}

    def record(self, classes: Sequence[str]) -> dict:
        """What model.json stores about the task."""
        return {"type": self.name}

    # -- predictions as CSV columns (the one writer of val_predictions, predict and evaluate)
    def prediction_header(self, classes: Sequence[str], labelled: bool) -> list[str]:
        return ["path", *(["label"] if labelled else []), "pred", "prob", "top_k", *[f"prob_{c}" for c in classes]]

    def prediction_rows(self, paths: Sequence[str], probs: Tensor, classes: Sequence[str],
                        labels: Optional[Sequence[str]] = None, top_k: int = TOP_K) -> list[list[str]]:
        """One row per prediction: path, [label,] pred, its prob, the top-k classes best first
        ('|'-separated), and every class probability (6 significant digits)."""
        k = max(1, min(top_k, len(classes)))
        # A stable sort keeps the first class on ties, so top_k[0] is argmax's choice.
        order = torch.argsort(probs, dim=1, descending=True, stable=True)[:, :k].tolist()
        rows = []
        for i, (p, best) in enumerate(zip(probs.tolist(), order)):
            rows.append([paths[i], *([labels[i]] if labels is not None else []), classes[best[0]],
                         f"{p[best[0]]:.6g}", "|".join(classes[j] for j in best), *[f"{v:.6g}" for v in p]])
        return rows


TASKS: dict[str, Task] = {t.name: t for t in (MulticlassTask(),)}

for _t in TASKS.values():  # names travel to trackers: keep them to the safe characters
    assert all(_METRIC_NAME.match(m.name) for m in _t.metrics), _t.name


def list_tasks() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise unknown_name("task type (task.type)", name, list_tasks())
    return TASKS[name]
