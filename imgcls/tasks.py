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
from torch import Tensor, nn

from .errors import unknown_name

TOP_K = 5  # the top_k column of prediction CSVs and the top-k accuracy of the metrics
_METRIC_NAME = re.compile(r"^[A-Za-z0-9_\-./ ]+$")


@dataclass(frozen=True)
class MetricInfo:
    name: str
    direction: str        # 'max': higher is better; 'min': lower is better
    description: str


class Task:
    """The interface; see ``MulticlassTask`` for what each member means.

    The registry holds one unconfigured instance per type; ``configure(record)`` gives the instance a
    run uses, carrying what model.json records about the task (regression's target mean/std and bins,
    multi-label thresholds). ``fit(targets)`` computes that record from the training targets.
    """
    name: str = ""
    losses: tuple[str, ...] = ()
    default_loss: str = ""
    metrics: tuple[MetricInfo, ...] = ()      # the scalars of metrics.csv, in column order
    default_monitor: str = ""
    log_metrics: tuple[str, ...] = ()
    report_sections: tuple[str, ...] = ()
    min_classes: int = 2                      # of model.json's classes (regression: its one output)
    mixes: bool = True                        # MixUp/CutMix have a rule for these targets
    per_class_sampling: bool = True           # data.sampler=balanced and loss.class_weights apply

    # -- configuration (what model.json's task record holds)
    def configure(self, record: Optional[dict] = None) -> "Task":
        return self

    def fit(self, targets: Sequence, classes: Sequence[str]) -> dict:
        """The record entries computed from the training targets (regression: mean and std)."""
        return {}

    def from_config(self, cfg) -> "Task":
        """The task as a config sets it up (before any data is read)."""
        return self

    # -- labels and targets
    def classes_from(self, labels: Sequence[str], explicit: Optional[Sequence[str]]) -> list[str]:
        from .data.sources import resolve_classes
        return resolve_classes(list(labels), list(explicit) if explicit else None)

    def label_text(self, target, classes: Sequence[str]) -> str:
        return str(classes[target])

    def labels_from_text(self, texts: Sequence[str]) -> list:
        """The 'label' cells of a prediction CSV (``label_text``'s output) -> labels ``encode`` takes."""
        return list(texts)

    def counts(self, targets: Sequence, classes: Sequence[str]) -> list[int]:
        """Training images per class (per label for multi-label)."""
        return [list(targets).count(k) for k in range(len(classes))]

    def target_tensor(self, targets: Sequence, classes: Sequence[str]) -> Tensor:
        """What the dataset returns per image, for all of them: [N] class codes here."""
        return torch.as_tensor(list(targets), dtype=torch.long)

    def fold_targets(self, targets: Sequence) -> dict:
        """How folds and the validation split stratify: keyword arguments of data.folds.make_folds."""
        return {"labels": list(targets)}

    def calibrate(self, details: dict) -> dict:
        """Entries for the model record from the best epoch's validation (multi-label: thresholds)."""
        return {}

    def sampling_classes(self, targets: Sequence, classes: Sequence[str]) -> tuple[list[int], int]:
        """(a class code per image, the number of classes) that data.sampler=balanced draws equally often."""
        return list(targets), len(classes)

    def probabilities_from_csv(self, header: Sequence[str], rows: Sequence[Sequence[str]],
                               classes: Sequence[str]) -> Tensor:
        """What ``probabilities`` gave, read back from prediction CSV rows (``prob_<class>`` columns)."""
        return _columns(header, rows, [f"prob_{c}" for c in classes])

    def oof_metrics(self, classes: Sequence[str]):
        """The metrics of out-of-fold predictions (fed probabilities): validation's own metrics, with
        the calibration the cv's ensemble then uses tuned on them (multi-label thresholds)."""
        return self.scoring_metrics(classes)

    def soft_targets(self, target: Tensor) -> Tensor:
        """A batch of targets as rows that MixUp/CutMix may average (``data.prep.SoftTargetMix``);
        only for tasks with ``mixes`` and a rule of their own (multiclass mixes as torchvision does)."""
        raise NotImplementedError(f"task '{self.name}' has no mixing rule")

    def scoring_metrics(self, classes: Sequence[str]):
        """The validation metrics of a trained model on new data, fed ``probabilities`` (averaged over
        TTA views and ensemble members) instead of outputs, with its calibration fixed (multi-label:
        the stored thresholds, not thresholds tuned again on that data)."""
        return _FromProbabilities(self.create_metrics(classes), self.raw_outputs)

    def epoch_warnings(self, scalars: dict, details: dict) -> list[str]:
        return []

    def record(self, classes: Sequence[str]) -> dict:
        """What model.json stores about the task."""
        return {"type": self.name}

    def criterion(self, kwargs: dict) -> Optional[nn.Module]:
        """A task whose loss is not one registry entry builds it here (multi-head); None: create_loss."""
        return None

    def outputs_text(self) -> str:
        """What the model's raw outputs are, in words (exported models carry it in their metadata)."""
        return "logits [N, len(classes)]; softmax gives probabilities"

    def raw_outputs(self, probs: Tensor) -> Tensor:
        """The inverse of ``probabilities``: outputs whose probabilities are ``probs`` (so metrics fed
        logits can score averaged probabilities of TTA views and ensembles)."""
        return probs.clamp_min(torch.finfo(torch.float32).tiny).log()

    def predicted(self, probs: Tensor, classes: Sequence[str]) -> list[str]:
        """The prediction of each row as text (the 'pred' or 'value' column)."""
        return [r[1] for r in self.prediction_rows([""] * len(probs), probs, classes)]

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
        from .metrics import ClassificationMetrics
        return ClassificationMetrics(len(classes), list(classes))

    def probabilities(self, logits: Tensor) -> Tensor:
        """What TTA views and ensemble members average: float32 softmax probabilities."""
        return logits.float().softmax(dim=1)

    def epoch_warnings(self, scalars: dict, details: dict) -> list[str]:
        """Sentences for the epoch log: classes whose recall lags far behind accuracy."""
        from .metrics import recall_warnings
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


def _metric(name: str, direction: str, description: str) -> MetricInfo:
    return MetricInfo(name, direction, description)


class MultilabelTask(Task):
    """Any number of labels per image out of L; L logits, sigmoid probabilities, one decision
    threshold per label (tuned on validation to maximise that label's F1, stored in model.json)."""
    name = "multilabel"
    losses = ("bce", "focal")
    default_loss = "bce"
    metrics = (
        _metric("train/loss", "min", "mean training loss over the epoch's finite steps"),
        _metric("val/loss", "min", "mean validation loss (the training criterion)"),
        _metric("val/map", "max", "mean average precision over labels with a positive in validation"),
        _metric("val/f1_micro", "max", "F1 over all (image, label) decisions, at the tuned thresholds"),
        _metric("val/f1_macro", "max", "F1 averaged over labels, at the tuned thresholds"),
        _metric("val/f1_samples", "max", "F1 averaged over images, at the tuned thresholds"),
        _metric("val/f1_macro_at_0.5", "max", "F1 averaged over labels, every threshold 0.5"),
        _metric("val/precision_micro", "max", "precision over all decisions, at the tuned thresholds"),
        _metric("val/recall_micro", "max", "recall over all decisions, at the tuned thresholds"),
        _metric("val/lrap", "max", "label-ranking average precision (an image with no label scores 1)"),
        _metric("val/coverage", "min", "how far down the ranking all true labels are covered"),
        _metric("val/ndcg", "max", "normalised discounted cumulative gain of the label ranking"),
        _metric("val/mrr", "max", "mean reciprocal rank of the first true label (images with a label)"),
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
        from .data.sources import resolve_classes
        names = sorted({t for label in labels for t in self._split(label)})
        if not names:
            from .errors import UserError
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
                from .errors import UserError
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
        from .metrics import MultilabelMetrics
        return _TunedThresholds(MultilabelMetrics(list(classes)))

    def probabilities(self, logits: Tensor) -> Tensor:
        return logits.float().sigmoid()

    def oof_metrics(self, classes: Sequence[str]):
        from .metrics import MultilabelMetrics
        return _TunedThresholds(MultilabelMetrics(list(classes), inputs="probabilities"))

    def scoring_metrics(self, classes: Sequence[str]):
        from .metrics import MultilabelMetrics
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


def _columns(header: Sequence[str], rows: Sequence[Sequence[str]], names: Sequence[str]) -> Tensor:
    """[N, len(names)] float32 of the named CSV columns."""
    from .errors import UserError
    missing = [n for n in names if n not in header]
    if missing:
        raise UserError(f"the predictions have no column '{missing[0]}'; they were written by another kind of run.")
    at = [list(header).index(n) for n in names]
    return torch.tensor([[float(r[i]) for i in at] for r in rows], dtype=torch.float32).reshape(len(rows), len(at))


class _FromProbabilities:
    """Metrics that take a model's outputs, fed probabilities: each batch is turned back into outputs
    whose probabilities they are (``Task.raw_outputs``)."""

    def __init__(self, inner, raw_outputs):
        self.inner, self.raw_outputs = inner, raw_outputs

    def reset(self) -> None:
        self.inner.reset()

    def update(self, probs: Tensor, target: Tensor, loss_sum=None) -> None:
        self.inner.update(self.raw_outputs(probs), target, loss_sum)

    def compute(self) -> dict:
        return self.inner.compute()

    def details(self) -> dict:
        return self.inner.details()


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
        from .metrics import tune_thresholds
        probs, targets = self.inner.probs_and_targets()
        self.inner.set_thresholds(tune_thresholds(probs, targets))
        return self.inner.compute()

    def details(self) -> dict:
        return self.inner.details()


class RegressionTask(Task):
    """One number per image (an age); one output, trained on the target standardised with the
    training mean/std (stored in model.json), reported and predicted in the original unit."""
    name = "regression"
    losses = ("huber", "l1", "mse")
    default_loss = "mse"
    base_metrics = (
        _metric("train/loss", "min", "mean training loss (on the standardised target)"),
        _metric("val/loss", "min", "mean validation loss (on the standardised target)"),
        _metric("val/mae", "min", "mean absolute error, in the target's unit"),
        _metric("val/mse", "min", "mean squared error"),
        _metric("val/rmse", "min", "root mean squared error"),
        _metric("val/r2", "max", "coefficient of determination (scikit-learn's r2_score)"),
    )
    binned_metrics = (
        _metric("val/binned/acc", "max", "accuracy of the binned prediction (task.bins)"),
        _metric("val/binned/f1_macro", "max", "macro F1 over the bins of task.bins"),
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
        from .errors import UserError
        out = []
        for label in labels:
            try:
                v = float(str(label).strip())
            except ValueError:
                v = math.nan
            if not math.isfinite(v):
                raise UserError(f"regression target '{label}' is not a finite number; fix the label column "
                                "(task.target names another column).")
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
        from .metrics import RegressionMetrics, bin_names
        return _Destandardised(RegressionMetrics(self.bins, bin_names(self.bins) if self.bins else None),
                               self.mean, self.std)

    def probabilities(self, logits: Tensor) -> Tensor:
        """What TTA and ensembles average: the prediction in the target's unit, [N, 1]."""
        return logits.float()[:, :1] * self.std + self.mean

    def raw_outputs(self, probs: Tensor) -> Tensor:
        return (probs.float()[:, :1] - self.mean) / self.std

    def probabilities_from_csv(self, header: Sequence[str], rows: Sequence[Sequence[str]],
                               classes: Sequence[str]) -> Tensor:
        return _columns(header, rows, ["value"])

    def outputs_text(self) -> str:
        return ("[N, 1], the standardised target: value = output * task_record.std + task_record.mean, in the "
                "target's unit")

    def epoch_warnings(self, scalars: dict, details: dict) -> list[str]:
        return []

    def record(self, classes: Sequence[str]) -> dict:
        return {"type": self.name, "mean": self.mean, "std": self.std, "bins": self.bins}

    def prediction_header(self, classes: Sequence[str], labelled: bool) -> list[str]:
        return ["path", *(["label"] if labelled else []), "value", *(["bin"] if self.bins else [])]

    def prediction_rows(self, paths: Sequence[str], probs: Tensor, classes: Sequence[str],
                        labels: Optional[Sequence[str]] = None, top_k: int = TOP_K) -> list[list[str]]:
        """path, [label,] the predicted value (6 significant digits) [, its bin]."""
        values = probs[:, 0].tolist()
        if self.bins:
            from .metrics import bin_names, bin_values
            names = bin_names(self.bins)
            which = bin_values(probs[:, 0], self.bins).tolist()
        return [[paths[i], *([labels[i]] if labels is not None else []), f"{v:.6g}",
                 *([names[which[i]]] if self.bins else [])] for i, v in enumerate(values)]


class _Destandardised:
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


from .heads import MultiheadTask  # noqa: E402  (it builds on the task types above)

TASKS: dict[str, Task] = {t.name: t for t in (MulticlassTask(), MultilabelTask(), RegressionTask(), MultiheadTask())}

for _t in (*TASKS.values(), RegressionTask(bins=[1.0])):  # names travel to trackers: safe characters only
    assert all(_METRIC_NAME.match(m.name) for m in _t.metrics), _t.name


def list_tasks() -> list[str]:
    return sorted(TASKS)


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise unknown_name("task type (task.type)", name, list_tasks())
    return TASKS[name]
