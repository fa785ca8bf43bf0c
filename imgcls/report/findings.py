"""What the numbers mean, in words: each check is a plain function returning a Finding or None.

Thresholds are deliberately simple and stated in each docstring, so a reader can tell why a
sentence appeared (or did not).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .rundata import RunData
from ..metrics import RECALL_GAP  # one threshold for the epoch log and the report

IMBALANCE_RATIO = 3.0     # largest / smallest training class
RARE_FRACTION = 1 / 3     # a class is "rare" below this fraction of the median training count
OVERFIT_RISE = 0.10       # val loss this much (relative) above its minimum ...
OVERFIT_EPOCHS = 2        # ... at least this many epochs after the minimum
LR_END_FRACTION = 0.10    # a final LR above this fraction of the peak "ends high"
ECE_HIGH = 0.05           # expected calibration error worth mentioning


@dataclass(frozen=True)
class Finding:
    kind: str          # imbalance | weak_recall | overfitting | lr_high | still_improving | calibration | ok
    text: str
    severity: str = "warn"   # warn | info


def _names(items: Sequence[str], limit: int = 8) -> str:
    shown = ", ".join(items[:limit])
    return shown + (f" and {len(items) - limit} more" if len(items) > limit else "")


def rare_classes(classes: Sequence[str], train_counts: Sequence[int]) -> list[str]:
    """Classes with fewer than RARE_FRACTION of the median training count, rarest first."""
    median = float(np.median(train_counts))
    rare = [i for i, n in enumerate(train_counts) if n < RARE_FRACTION * median]
    return [classes[i] for i in sorted(rare, key=lambda i: train_counts[i])]


def imbalance(classes: Sequence[str], train_counts: Sequence[int]) -> Optional[Finding]:
    """Largest / smallest training class count >= IMBALANCE_RATIO (an empty class always counts)."""
    if not train_counts or max(train_counts) == 0:
        return None
    lo, hi = min(train_counts), max(train_counts)
    if lo > 0 and hi / lo < IMBALANCE_RATIO:
        return None
    rare = rare_classes(classes, train_counts) or [classes[int(np.argmin(train_counts))]]
    counts = {c: n for c, n in zip(classes, train_counts)}
    listed = _names([f"'{c}' ({counts[c]})" for c in rare])
    ratio = "no images at all for some" if lo == 0 else f"{hi / lo:.0f}:1 between the largest and smallest class"
    return Finding("imbalance", f"The training data is imbalanced ({ratio}): {listed} image(s), against a "
                   f"median of {np.median(train_counts):.0f} per class. Rare classes are usually the weak "
                   "ones; check their recall below.")


REMEDIES = ("loss.class_weights=balanced", "data.sampler=balanced", "loss.name=focal")


def remedies_in_use(config: dict) -> set[str]:
    """Which of REMEDIES the run's config.yaml already sets (so the advice does not repeat them)."""
    return {r for r in REMEDIES
            if str(config.get(r.split(".")[0], {}).get(r.split(".")[1].split("=")[0])) == r.split("=")[1]}


def weak_recall(classes: Sequence[str], per_class: Sequence[dict], accuracy: float,
                confusion: Sequence[Sequence[int]], train_counts: Optional[Sequence[int]] = None,
                in_use: frozenset[str] | set[str] = frozenset()) -> Optional[Finding]:
    """Classes (with validation images) whose recall is more than RECALL_GAP below overall accuracy.
    When they are rare in training, suggests the REMEDIES not ``in_use`` yet."""
    weak = [i for i, row in enumerate(per_class) if row["support"] > 0 and row["recall"] < accuracy - RECALL_GAP]
    if not weak:
        return None
    weak.sort(key=lambda i: per_class[i]["recall"])
    parts = []
    for i in weak:
        row = np.array(confusion[i], dtype=float)
        row[i] = -1  # the most common *wrong* prediction
        taken = f" (mostly taken for '{classes[int(row.argmax())]}')" if row.max() > 0 else ""
        parts.append(f"'{classes[i]}' {per_class[i]['recall']:.2f}{taken}")
    shown = "; ".join(parts[:8]) + (f"; and {len(parts) - 8} more" if len(parts) > 8 else "")
    text = (f"Recall trails accuracy ({accuracy:.2f}) for {len(weak)} class(es): {shown}. "
            "The model misses many images of these classes, which overall accuracy hides.")
    if train_counts:
        rare = set(rare_classes(classes, train_counts))
        weak_rare = [classes[i] for i in weak if classes[i] in rare]
        if weak_rare:
            todo = [r for r in REMEDIES if r not in in_use]
            text += (f" {_names([repr(c) for c in weak_rare])} {'is' if len(weak_rare) == 1 else 'are'} rare in "
                     "training: more images help most" + (f"; otherwise try {' or '.join(todo)}." if todo else
                                                          f" ({', '.join(sorted(in_use))} already set)."))
    return Finding("weak_recall", text)


def overfitting(train_loss: Sequence[float], val_loss: Sequence[float]) -> Optional[Finding]:
    """Validation loss ends more than OVERFIT_RISE above its minimum, at least OVERFIT_EPOCHS epochs
    later, while training loss kept falling over the same epochs."""
    tl, vl = np.asarray(train_loss, float), np.asarray(val_loss, float)
    ok = np.isfinite(tl) & np.isfinite(vl)
    if ok.sum() < OVERFIT_EPOCHS + 1 or not (ok[-1]):
        return None
    epochs = np.flatnonzero(ok)
    best = epochs[int(np.argmin(vl[ok]))]
    last = len(vl) - 1
    if last - best < OVERFIT_EPOCHS or vl[last] <= vl[best] * (1 + OVERFIT_RISE) or tl[last] >= tl[best]:
        return None
    return Finding("overfitting", (
        f"Overfitting: validation loss rose from {vl[best]:.3f} (epoch {best + 1}) to {vl[last]:.3f} "
        f"(epoch {last + 1}) while training loss kept falling ({tl[best]:.3f} to {tl[last]:.3f}). "
        "Stop earlier (train.patience), or add augmentation or weight decay."))


def lr_ending_high(lrs: Sequence[float]) -> Optional[Finding]:
    """The last epoch's learning rate is above LR_END_FRACTION of the run's peak."""
    lr = np.asarray(lrs, float)
    lr = lr[np.isfinite(lr)]
    if len(lr) < 2 or lr.max() <= 0 or lr[-1] <= LR_END_FRACTION * lr.max():
        return None
    return Finding("lr_high", (
        f"The learning-rate schedule ends high: {lr[-1]:.2g} after the last epoch, {lr[-1] / lr.max():.0%} of its "
        f"peak {lr.max():.2g}. A schedule that decays towards zero (sched.name=cosine or onecycle) usually "
        "gains a little at the end; or the run was cut short."), "warn")


def still_improving(values: Sequence[float], higher_is_better: bool, name: str) -> Optional[Finding]:
    """The monitored metric improved at the last epoch (and there were at least 3 epochs)."""
    v = np.asarray(values, float)
    if len(v) < 3 or not np.isfinite(v[-2:]).all():
        return None
    better = v[-1] > np.nanmax(v[:-1]) if higher_is_better else v[-1] < np.nanmin(v[:-1])
    if not better:
        return None
    return Finding("still_improving", (
        f"{name} was still improving at the last epoch ({v[-2]:.4f} to {v[-1]:.4f}); more epochs "
        "(train.epochs) may help."), "info")


def calibration(ece: float, confidence: float, accuracy: float) -> Optional[Finding]:
    """Expected calibration error above ECE_HIGH; says whether the model is over- or under-confident."""
    if not math.isfinite(ece) or ece <= ECE_HIGH:
        return None
    way = "over-confident" if confidence > accuracy else "under-confident"
    return Finding("calibration", (
        f"Probabilities are {way}: mean confidence {confidence:.2f} against accuracy {accuracy:.2f} "
        f"(expected calibration error {ece:.3f}); do not read the probabilities as certainties."), "info")


def all_findings(run: RunData) -> list[Finding]:
    """Every check on ``run``, warnings first; one reassuring 'ok' finding when nothing is wrong."""
    vm = run.val_metrics
    acc = float(vm.get("val/acc", math.nan))
    found = [
        imbalance(run.classes, run.train_counts) if run.train_counts else None,
        weak_recall(run.classes, vm["per_class"], acc, vm["confusion_matrix"], run.train_counts,
                    remedies_in_use(run.config)),
        overfitting(run.column("train/loss"), run.column("val/loss")),
        lr_ending_high(run.column("lr")),
    ]
    monitor = run.monitor
    if run.history and monitor in run.history[0]:
        found.append(still_improving(run.column(monitor), not monitor.endswith("loss"), monitor))
    if run.predictions is not None and len(run.predictions.labels):
        p = run.predictions
        found.append(calibration(float(vm.get("ece", math.nan)), float(p.confidence.mean()),
                                 float(p.correct.mean())))
    found = [f for f in found if f is not None]
    found.sort(key=lambda f: f.severity != "warn")
    if not any(f.severity == "warn" for f in found):
        found.insert(0, Finding("ok", (
            f"No problems found: the classes are balanced enough, every class's recall is within "
            f"{RECALL_GAP:.2f} of accuracy, validation loss did not climb at the end and the learning rate "
            "decayed."), "info"))
    return found
