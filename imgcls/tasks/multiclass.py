"""Multiclass: one label per image out of K classes (softmax over K logits)."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .base import TOP_K, MetricInfo, Task


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
        MetricInfo("val/mrr", "max", "mean reciprocal rank of the true class among the class scores"),
        MetricInfo("val/ndcg_at_5", "max", "NDCG@5 of the class ranking with the true class as the one relevant item"),
        MetricInfo("val/top5_acc", "max", "top-k accuracy, k = min(5, classes)"),
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

    def create_metrics(self, classes: Sequence[str]):
        from ..metrics import ClassificationMetrics
        return ClassificationMetrics(len(classes), list(classes))

    def decode_outputs(self, logits: Tensor) -> Tensor:
        """What TTA views and ensemble members average: float32 softmax probabilities."""
        return logits.float().softmax(dim=1)

    def epoch_warnings(self, scalars: dict, details: dict) -> list[str]:
        """Sentences for the epoch log: classes whose recall lags far behind accuracy."""
        from ..metrics import recall_warnings
        return recall_warnings(scalars, details)

    def calibrate(self, details: dict) -> dict:
        """Entries for the model record from the best epoch's validation (multi-label: thresholds)."""
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

