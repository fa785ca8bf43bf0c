"""The Task interface (what differs between task types; the package docstring lists it) and what the
types share: MetricInfo, the metric-name rule, CSV columns as tensors, metrics fed decoded outputs."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import Tensor, nn

from ..errors import UserError, unknown_name
from ..metrics import TOP_K  # one k for the metrics' top-k accuracy and the CSVs' top_k column

METRIC_NAME = re.compile(r"^[A-Za-z0-9_\-./ ]+$")


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
        from ..data.sources import resolve_classes
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

    def decoded_from_csv(self, header: Sequence[str], rows: Sequence[Sequence[str]],
                               classes: Sequence[str]) -> Tensor:
        """What ``decode_outputs`` gave, read back from prediction CSV rows (``prob_<class>`` columns)."""
        return float_columns(header, rows, [f"prob_{c}" for c in classes])

    def oof_metrics(self, classes: Sequence[str]):
        """The metrics of out-of-fold predictions (fed ``decode_outputs``' values): validation's own metrics, with
        the calibration the cv's ensemble then uses tuned on them (multi-label thresholds)."""
        return self.scoring_metrics(classes)

    def soft_targets(self, target: Tensor) -> Tensor:
        """A batch of targets as rows that MixUp/CutMix may average (``data.prep.SoftTargetMix``);
        only for tasks with ``mixes`` and a rule of their own (multiclass mixes as torchvision does)."""
        raise NotImplementedError(f"task '{self.name}' has no mixing rule")

    def scoring_metrics(self, classes: Sequence[str]):
        """The validation metrics of a trained model on new data, fed ``decode_outputs``' values (averaged over
        TTA views and ensemble members) instead of outputs, with its calibration fixed (multi-label:
        the stored thresholds, not thresholds tuned again on that data)."""
        return _FromDecoded(self.create_metrics(classes), self.raw_outputs)

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

    def decode_outputs(self, logits: Tensor) -> Tensor:
        """The model's raw outputs [N, head_size] -> what TTA views and ensemble members average and
        predictions are written from, float32: class or label probabilities, or values in the target's unit."""
        raise NotImplementedError

    def raw_outputs(self, probs: Tensor) -> Tensor:
        """The inverse of ``decode_outputs``: outputs that decode to ``probs`` (so metrics fed logits can
        score the averaged probabilities or values of TTA views and ensembles)."""
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

    def classes_text(self, classes: Sequence[str]) -> str:
        """What the model tells apart, for the training log's ``data:`` line ("10 classes")."""
        return f"{len(classes)} classes"


class LabelError(UserError):
    """A label ``Task.encode`` cannot encode: ``what`` is wrong with it and how to ``fix`` it, at position
    ``index`` of the labels (the data reader, which knows the files, names the image)."""

    def __init__(self, what: str, fix: str, index: int):
        super().__init__(f"{what}; {fix}.")
        self.what, self.fix, self.index = what, fix, index


def float_columns(header: Sequence[str], rows: Sequence[Sequence[str]], names: Sequence[str]) -> Tensor:
    """[N, len(names)] float32 of the named CSV columns."""
    from ..errors import UserError
    missing = [n for n in names if n not in header]
    if missing:
        raise UserError(f"the predictions have no column '{missing[0]}'; they were written by another kind of run.")
    at = [list(header).index(n) for n in names]
    return torch.tensor([[float(r[i]) for i in at] for r in rows], dtype=torch.float32).reshape(len(rows), len(at))


class _FromDecoded:
    """Metrics that take a model's outputs, fed decoded ones (``Task.decode_outputs``): each batch is
    turned back into outputs that decode to it (``Task.raw_outputs``)."""

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

