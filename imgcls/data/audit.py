"""Label issues from out-of-fold predictions: confident learning, robust residuals, per label and per head.

Confident learning (Northcutt, Jiang and Chuang, "Confident Learning: Estimating Uncertainty in Dataset
Labels", JAIR 2021), written here in numpy because cleanlab is AGPL-3.0:

1. per-class thresholds ``t_j``: the mean probability of class j over the images labelled j (the mean
   self-confidence);
2. the confident joint ``C[i, j]``: images labelled i whose probability of some class reaches that class's
   threshold, counted under the most probable such class j (an image reaching no threshold is not counted);
3. calibrated, ``Q = C`` with each row rescaled to the number of images labelled i, divided by n: the
   estimated joint distribution of (given label, true label);
4. pruning by noise rate: for each given class i and each other class j, the ``n * Q[i, j]`` images (rounded
   so that each row still sums to the number of images labelled i, as cleanlab's
   ``round_preserving_row_totals`` does; rounding each cell alone can prune one image more or less)
   labelled i with the largest margin ``p_j - p_i`` are flagged; an image the model predicts as its given
   label is never flagged (as cleanlab does).

The label-quality score of an image is its self-confidence ``p[label]`` (0 worst, 1 best); issues are
listed worst first. Every function here takes arrays and returns arrays: the probabilities must be out of
fold (each image predicted by a model that did not train on it), which ``imgcls cv`` provides.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import UserError

# Iglewicz and Hoaglin's cut-off for the modified z-score: |z| > 3.5 is an outlier.
ROBUST_Z_THRESHOLD = 3.5
MAD_TO_SIGMA = 1.4826  # MAD of a normal distribution times this is its standard deviation


@dataclass(frozen=True)
class LabelIssues:
    """What confident learning found, on n images of K classes."""
    thresholds: np.ndarray        # (K,) per-class mean self-confidence
    confident_joint: np.ndarray   # (K, K) counts: given label (row) x confident true label (column)
    joint: np.ndarray             # (K, K) calibrated joint distribution, sums to 1
    issues: np.ndarray            # (n,) bool: the image's label looks wrong
    score: np.ndarray             # (n,) label quality: self-confidence p[label], 0 worst
    suggested: np.ndarray         # (n,) the most probable class other than the given one where flagged, else the label

    def order(self) -> np.ndarray:
        """Indices of the flagged images, worst (lowest score) first; ties by index."""
        idx = np.flatnonzero(self.issues)
        return idx[np.lexsort((idx, self.score[idx]))]


def check_probabilities(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=np.float64)
    if probs.ndim != 2 or labels.shape != (probs.shape[0],):
        raise UserError(f"out-of-fold probabilities of shape {probs.shape} do not match {labels.shape[0]} labels; "
                        "run the cv again.")
    if labels.size and (labels.min() < 0 or labels.max() >= probs.shape[1]):
        raise UserError(f"a label code is outside 0..{probs.shape[1] - 1}; the classes of the cv do not match.")
    return labels.astype(np.int64), probs


def confident_joint(labels, probs) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, confident joint C) of integer labels (n,) and probabilities (n, K)."""
    labels, probs = check_probabilities(labels, probs)
    k = probs.shape[1]
    counts = np.bincount(labels, minlength=k)
    sums = np.zeros(k)
    np.add.at(sums, labels, probs[np.arange(len(labels)), labels])
    # a class nobody is labelled with gets threshold 1 + eps: no image is confidently of it
    thresholds = np.where(counts > 0, sums / np.maximum(counts, 1), 1.0 + 1e-9)
    above = probs >= thresholds[None, :]
    masked = np.where(above, probs, -np.inf)
    confident = above.any(axis=1)
    true = masked.argmax(axis=1)
    cj = np.zeros((k, k), dtype=np.int64)
    np.add.at(cj, (labels[confident], true[confident]), 1)
    return thresholds, cj


def calibrate(cj: np.ndarray, label_counts: np.ndarray) -> np.ndarray:
    """Each row of the confident joint rescaled to its class's number of labels, then divided by n."""
    rows = cj.sum(axis=1, keepdims=True).astype(np.float64)
    scaled = np.where(rows > 0, cj / np.maximum(rows, 1) * label_counts[:, None], 0.0)
    total = scaled.sum()
    return scaled / total if total > 0 else scaled


def round_rows(x: np.ndarray, totals: np.ndarray) -> np.ndarray:
    """Each row of ``x`` rounded to integers that sum to its ``totals`` entry (a row of zeros stays zeros):
    round each cell, then move the cells whose rounding lost (or gained) the most by one until the sum fits."""
    out = np.rint(x).astype(np.int64)
    for i, row in enumerate(x):
        if not row.any():
            continue
        missing = int(totals[i]) - int(out[i].sum())
        error = row - out[i]  # what rounding took away from each cell
        # largest error first when adding, smallest when taking away; ties as cleanlab breaks them
        order = np.argsort(error, kind="stable")[::-1 if missing > 0 else 1][:abs(missing)]
        out[i, order] += np.sign(missing)
    return out


def find_label_issues(labels, probs) -> LabelIssues:
    """Confident learning with pruning by noise rate (see the module's docstring)."""
    labels, probs = check_probabilities(labels, probs)
    n, k = probs.shape
    thresholds, cj = confident_joint(labels, probs)
    joint = calibrate(cj, np.bincount(labels, minlength=k))
    to_remove = round_rows(joint * n, np.bincount(labels, minlength=k))
    issues = np.zeros(n, dtype=bool)
    given = probs[np.arange(n), labels]
    for i in range(k):
        members = np.flatnonzero(labels == i)
        for j in range(k):
            m = min(int(to_remove[i, j]), len(members))
            if j == i or m <= 0:
                continue
            margin = probs[members, j] - given[members]
            worst = members[np.argsort(-margin, kind="stable")[:m]]
            issues[worst] = True
    issues &= probs.argmax(axis=1) != labels
    others = probs.copy()
    others[np.arange(n), labels] = -np.inf
    suggested = np.where(issues, others.argmax(axis=1), labels)
    return LabelIssues(thresholds, cj, joint, issues, given, suggested)


def find_multilabel_issues(targets, probs) -> list[LabelIssues]:
    """Per label: binary confident learning on (absent, present) probabilities of each label.
    ``targets`` (n, L) of 0/1, ``probs`` (n, L) of sigmoid probabilities; one LabelIssues per label."""
    targets, probs = np.asarray(targets).astype(np.int64), np.asarray(probs, dtype=np.float64)
    if targets.shape != probs.shape:
        raise UserError(f"multi-label targets {targets.shape} and probabilities {probs.shape} differ; run the cv "
                        "again.")
    return [find_label_issues(targets[:, c], np.stack([1 - probs[:, c], probs[:, c]], axis=1))
            for c in range(probs.shape[1])]


def robust_z(residuals) -> np.ndarray:
    """Modified z-score of each residual: (r - median) / (1.4826 * MAD); 0 everywhere if the MAD is 0
    and every residual equals the median, else +-inf for those that differ."""
    r = np.asarray(residuals, dtype=np.float64)
    med = np.median(r)
    mad = np.median(np.abs(r - med)) * MAD_TO_SIGMA
    if mad == 0:
        return np.where(r == med, 0.0, np.sign(r - med) * np.inf)
    return (r - med) / mad


def find_regression_issues(targets, predictions, threshold: float = ROBUST_Z_THRESHOLD):
    """(flagged mask, robust z of the out-of-fold residual target - prediction): |z| > threshold."""
    z = robust_z(np.asarray(targets, dtype=np.float64) - np.asarray(predictions, dtype=np.float64))
    return np.abs(z) > threshold, z
