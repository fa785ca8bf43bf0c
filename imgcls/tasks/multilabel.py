"""Multi-label: any number of labels per image, one sigmoid and one tuned threshold per label."""
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .base import TOP_K, MetricInfo, Task


class MultilabelTask(Task):
    """Any number of labels per image out of L; L logits, sigmoid probabilities, one decision
    threshold per label (tuned on validation to maximise that label's F1, stored in model.json)."""
    name = "multilabel"
    losses = ("bce", "focal")
    default_loss = "bce"
    metrics = (
        MetricInfo("train/loss", "min", "mean training loss over the epoch's finite steps"),
        MetricInfo("val/loss", "min", "mean validation loss (the training criterion)"),
        MetricInfo("val/map", "max", "mean average precision over labels with a positive in validation"),
        MetricInfo("val/f1_micro", "max", "F1 over all (image, label) decisions, at the tuned thresholds"),
        MetricInfo("val/f1_macro", "max", "F1 averaged over labels, at the tuned thresholds"),
        MetricInfo("val/f1_samples", "max", "F1 averaged over images, at the tuned thresholds"),
        MetricInfo("val/f1_macro_at_0.5", "max", "F1 averaged over labels, every threshold 0.5"),
        MetricInfo("val/precision_micro", "max", "precision over all decisions, at the tuned thresholds"),
        MetricInfo("val/recall_micro", "max", "recall over all decisions, at the tuned thresholds"),
        MetricInfo("val/lrap", "max", "label-ranking average precision (an image with no label scores 1)"),
        MetricInfo("val/coverage", "min", "how far down the ranking all true labels are covered"),
        MetricInfo("val/ndcg", "max", "normalised discounted cumulative gain of the label ranking"),
        MetricInfo("val/mrr", "max", "mean reciprocal rank of the first true label (images with a label)"),
    )
    default_monitor = "val/map"
    log_metrics = ("val/loss", "val/map", "val/f1_macro")
    report_sections = ("curves",)
    min_classes = 1
    mixes = True              # a mixed image carries each label with the weight of its pixels
    per_class_sampling = False

    def __init__(self, thresholds: Optional[Sequence[float]] = None, separator: str = "|"):
        self.thresholds = None if thresholds is None else [float(t) for t in thresholds]
        self.separator = separator

    def configure(self, record: Optional[dict] = None) -> "Task":
        record = record or {}
        return MultilabelTask(record.get("thresholds"), record.get("separator", "|"))

    def from_config(self, cfg) -> "Task":
        return MultilabelTask(None, cfg.data.label_separator)

    def resolve_loss(self, name: str) -> str:
        name = super().resolve_loss(name)
        return "binary_focal" if name == "focal" else name

    def head_size(self, classes: Sequence[str]) -> int:
        return len(classes)

    def _split(self, label: str) -> list[str]:
        return [t.strip() for t in str(label).split(self.separator) if t.strip()]

    def classes_from(self, labels: Sequence[str], explicit: Optional[Sequence[str]]) -> list[str]:
        from ..data.sources import resolve_classes
        names = sorted({t for label in labels for t in self._split(label)})
        if not names:
            from ..errors import UserError
            raise UserError("no image has a label; multi-label targets are the label column's labels joined by "
                            f"data.label_separator ('{self.separator}'), e.g. 'cat{self.separator}outdoor'.")
        return resolve_classes(names, list(explicit) if explicit else None)

    def encode(self, labels: Sequence[str], classes: Sequence[str]) -> list[tuple[int, ...]]:
        code = {c: i for i, c in enumerate(classes)}
        out = []
        for label in labels:
            tags = self._split(label)
            unknown = [t for t in tags if t not in code]
            if unknown:
                from ..errors import UserError
                raise UserError(f"label '{unknown[0]}' is not among the labels ({', '.join(classes)}); fix it or "
                                "list it in data.classes.")
            out.append(tuple(sorted({code[t] for t in tags})))
        return out

    def label_text(self, target, classes: Sequence[str]) -> str:
        return self.separator.join(classes[k] for k in target)

    def counts(self, targets: Sequence, classes: Sequence[str]) -> list[int]:
        return [sum(1 for t in targets if k in t) for k in range(len(classes))]

    def _matrix(self, targets: Sequence, width: int) -> Tensor:
        m = torch.zeros(len(targets), width)
        for i, t in enumerate(targets):
            m[i, list(t)] = 1.0
        return m

    def target_tensor(self, targets: Sequence, classes: Sequence[str]) -> Tensor:
        return self._matrix(targets, len(classes))

    def soft_targets(self, target: Tensor) -> Tensor:
        return target.float()  # the 0/1 rows are already what BCE takes as soft targets

    def fold_targets(self, targets: Sequence) -> dict:
        width = 1 + max((k for t in targets for k in t), default=1)
        return {"multilabel": self._matrix(targets, max(width, 2)).numpy()}

    def create_metrics(self, classes: Sequence[str]):
        from ..metrics import MultilabelMetrics
        return _TunedThresholds(MultilabelMetrics(list(classes)))

    def decode_outputs(self, logits: Tensor) -> Tensor:
        return logits.float().sigmoid()

    def oof_metrics(self, classes: Sequence[str]):
        from ..metrics import MultilabelMetrics
        return _TunedThresholds(MultilabelMetrics(list(classes), inputs="probabilities"))

    def scoring_metrics(self, classes: Sequence[str]):
        from ..metrics import MultilabelMetrics
        m = MultilabelMetrics(list(classes), inputs="probabilities")  # thresholds compare them as they are
        m.set_thresholds(self.thresholds)
        return m

    def raw_outputs(self, probs: Tensor) -> Tensor:
        return torch.logit(probs.double()).clamp(-100.0, 100.0).float()  # a saturated 1.0 stays 1.0

    def outputs_text(self) -> str:
        return ("logits [N, len(classes)]; sigmoid gives each label's probability, and a label is predicted when "
                "it reaches its threshold (task_record.thresholds, tuned on validation; 0.5 if absent)")

    def epoch_warnings(self, scalars: dict, details: dict) -> list[str]:
        return []

    def calibrate(self, details: dict) -> dict:
        return {"thresholds": [row["threshold"] for row in details["per_label"]], "separator": self.separator}

    def classes_text(self, classes: Sequence[str]) -> str:
        return f"{len(classes)} labels"

    def record(self, classes: Sequence[str]) -> dict:
        return {"type": self.name, "separator": self.separator,
                **({"thresholds": self.thresholds} if self.thresholds is not None else {})}

    def decide(self, probs: Tensor) -> Tensor:
        """[N, L] bool: a label is predicted when its probability reaches its threshold (0.5 untuned)."""
        t = torch.tensor(self.thresholds if self.thresholds is not None else [0.5] * probs.shape[1])
        return probs >= t

    def prediction_header(self, classes: Sequence[str], labelled: bool) -> list[str]:
        return ["path", *(["label"] if labelled else []), "pred", *[f"prob_{c}" for c in classes]]

    def prediction_rows(self, paths: Sequence[str], probs: Tensor, classes: Sequence[str],
                        labels: Optional[Sequence[str]] = None, top_k: int = TOP_K) -> list[list[str]]:
        """path, [label,] the decided labels joined by the separator, every label's probability."""
        chosen = self.decide(probs).tolist()
        return [[paths[i], *([labels[i]] if labels is not None else []),
                 self.separator.join(c for c, on in zip(classes, row) if on), *[f"{v:.6g}" for v in p]]
                for i, (p, row) in enumerate(zip(probs.tolist(), chosen))]



class _TunedThresholds:
    """Multi-label metrics whose F1s use thresholds tuned on the same validation pass (optimistic
    there, as the report says); ``val/f1_macro_at_0.5`` stays at 0.5."""

    def __init__(self, inner):
        self.inner = inner

    def reset(self) -> None:
        self.inner.reset()

    def update(self, logits: Tensor, target: Tensor, loss_sum=None) -> None:
        self.inner.update(logits, target, loss_sum)

    def compute(self) -> dict:
        from ..metrics import tune_thresholds
        probs, targets = self.inner.probs_and_targets()
        self.inner.set_thresholds(tune_thresholds(probs, targets))
        return self.inner.compute()

    def details(self) -> dict:
        return self.inner.details()

