"""The score sections several report kinds share: a classification's per-class table and confusion matrix
(a multiclass run, a head, the combined class, out-of-fold predictions), and a regression's errors.

Numbers carry ``data-*`` attributes with their exact values, so tests (and scripts) can read them back.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
from matplotlib.figure import Figure

from . import plots
from .findings import RECALL_GAP
from .html import bar, esc, img, num, section, table
from .rundata import ValuePredictions
from .sections import Plots

TABLE_MAX_CLASSES = 30     # above this, the confusion matrix is a heatmap image (the table folds away)
CONFUSION_INTRO = ("Rows are the true class, columns the prediction; each cell shows the count and, below it, the "
                   "share of the row (the diagonal share is the class's recall). Blue: right, red: wrong.")


# ------------------------------------------------------------------ classification

def worst_first(rows: Sequence[dict]) -> list[int]:
    """Row order worst F1 first (then recall); classes without validation images last: their 0 is a convention."""
    return sorted(range(len(rows)), key=lambda i: (rows[i]["support"] == 0, rows[i]["f1"], rows[i]["recall"]))


def per_class_table(rows: Sequence[dict], acc: float, train_counts: Optional[Sequence[int]], id_: str,
                    meanings: Optional[Sequence[str]] = None) -> str:
    """The per-class table (``rows``: val_metrics.json's per_class), worst F1 first; ``meanings`` adds a
    column saying what each class stands for (a combined code's head classes)."""
    colors = {"precision": "var(--blue)", "recall": "var(--red)", "f1": "var(--grey)"}
    out = []
    for i in worst_first(rows):
        r = rows[i]
        weak = r["support"] > 0 and r["recall"] < acc - RECALL_GAP
        cells = "".join(f'<td class="num" data-metric="{m}" data-value="{r[m]!r}">{num(r[m])}'
                        f'{bar(r[m], colors[m])}</td>' for m in ("precision", "recall", "f1"))
        meaning = f"<td>{esc(meanings[i])}</td>" if meanings else ""
        train_n = train_counts[i] if train_counts else "–"
        out.append(f'<tr data-class="{esc(r["class"])}"{" class=weak" if weak else ""}>'
                   f'<th>{esc(r["class"])}</th>{meaning}{cells}'
                   f'<td class="num" data-metric="support" data-value="{r["support"]}">{r["support"]}</td>'
                   f'<td class="num">{train_n}</td></tr>')
    headers = ["class", *(["stands for"] if meanings else []), "precision", "recall", "F1", "support", "train images"]
    return table(headers, out, "perclass", id_)


def per_class_intro(acc: float) -> str:
    return (f"Worst F1 first. Rows in red: recall more than {RECALL_GAP:.2f} below the accuracy ({num(acc)}). "
            "Support is the number of validation images.")


def cm_cell(i: int, j: int, count: int, frac: float, true: str, pred: str,
            shown: Optional[tuple[str, str]] = None) -> str:
    """One confusion-matrix cell: ``count`` and ``frac`` of its row, the true and predicted class in data-*."""
    # Diagonal in blue (right), off-diagonal in red (wrong); sqrt so that small confusions still show.
    alpha = frac if i == j else math.sqrt(frac)
    rgb = "42,111,176" if i == j else "200,69,60"
    ink = "#fff" if alpha > 0.55 else "inherit"
    attrs = f'data-true="{esc(true)}" data-pred="{esc(pred)}" data-count="{count}" data-frac="{frac!r}"'
    t, p = shown or (true, pred)
    title = f'title="true {esc(t)}, predicted {esc(p)}: {count} ({frac:.1%} of {esc(t)})"'
    if count == 0:
        return f'<td class="zero" {attrs} {title}>0</td>'
    return (f'<td {attrs} {title} style="background:rgba({rgb},{alpha:.3f});color:{ink}">'
            f'{count}<small>{frac:.0%}</small></td>')


def _confused_pairs(cm: np.ndarray, frac: np.ndarray, classes: Sequence[str], shown: Sequence[str],
                    prefix: str) -> str:
    k = len(classes)
    off = cm.copy()
    np.fill_diagonal(off, 0)
    n_pairs = 10 if k <= TABLE_MAX_CLASSES else 20
    pairs = [(int(v), i, j) for v, i, j in sorted(((off[i, j], i, j) for i in range(k) for j in range(k)
                                                   if off[i, j] > 0), reverse=True)[:n_pairs]]
    if not pairs:
        return ""
    items = "".join(
        f'<li data-true="{esc(classes[i])}" data-pred="{esc(classes[j])}" data-count="{v}">'
        f'<b>{esc(shown[i])}</b> taken for <b>{esc(shown[j])}</b>: {v} image(s), '
        f'{frac[i, j]:.0%} of {esc(shown[i])}</li>' for v, i, j in pairs)
    return f'<h3>Most confused pairs</h3><ol id="{prefix}confused-pairs">{items}</ol>'


def confusion_block(cm: np.ndarray, classes: Sequence[str], uri: str, prefix: str = "",
                    shown: Optional[Sequence[str]] = None) -> str:
    """The confusion matrix as a table (a heatmap image ``uri`` above TABLE_MAX_CLASSES) and the most
    confused pairs. Cells carry ``classes`` in data-* attributes and show ``shown`` (default: the same);
    element ids start with ``prefix``."""
    k = len(classes)
    shown = list(shown or classes)
    totals = cm.sum(axis=1)
    frac = cm / np.maximum(totals[:, None], 1)
    rot = ' class="rot"' if k > 8 else ""
    head = "".join(f'<th{rot} title="{esc(s)}">{esc(c if len(s) > 12 and k > 8 else s)}</th>'
                   for c, s in zip(classes, shown))
    body = "".join(
        f'<tr data-true="{esc(classes[i])}"><th>{esc(shown[i])}</th>'
        + "".join(cm_cell(i, j, int(cm[i, j]), float(frac[i, j]), classes[i], classes[j], (shown[i], shown[j]))
                  for j in range(k))
        + f'<td class="num">{int(totals[i])}</td></tr>' for i in range(k))
    grid = (f'<div class="cm-wrap"><table class="cm" id="{prefix}confusion-table"><thead><tr><th>true \\ predicted'
            f'</th>{head}<th>images</th></tr></thead><tbody>{body}</tbody></table></div>')
    if k > TABLE_MAX_CLASSES:
        out = (img(uri, "confusion matrix heatmap, row-normalised")
               + f"<details><summary>the full {k} x {k} table</summary>{grid}</details>")
    else:
        out = grid
    return out + _confused_pairs(cm, frac, classes, shown, prefix)


def classification_section(id_: str, title: str, details: dict, acc: float, train_counts: Optional[Sequence[int]],
                           save: Plots, meanings: Optional[Sequence[str]] = None, intro: str = "") -> str:
    """A classification's per-class table and confusion matrix (``details``: ClassificationMetrics.details())."""
    if not details.get("per_class") or "confusion_matrix" not in details:
        return section(id_, title, '<p class="note">val_metrics.json has no per-class rows for it.</p>')
    classes = [str(c) for c in details["classes"]]
    shown = [f"{c}: {m}" for c, m in zip(classes, meanings)] if meanings else classes
    cm = np.asarray(details["confusion_matrix"], dtype=np.int64)
    uri = save(f"confusion_{id_}", plots.confusion(cm, shown))
    rows = per_class_table(details["per_class"], acc, train_counts, f"{id_}-per-class-table", meanings)
    body = (f"<h3>Per class</h3>{rows}"
            f"<h3>Confusion matrix</h3><p class=\"intro\">{CONFUSION_INTRO}</p>"
            f"{confusion_block(cm, classes, uri, f'{id_}-', shown)}")
    return section(id_, title, body, intro + per_class_intro(acc))


# ------------------------------------------------------------------ regression

ERROR_ROWS = (  # (key, shown name, val_metrics.json key, meaning)
    ("mae", "MAE", "val/mae", "mean |prediction - truth|"),
    ("rmse", "RMSE", "val/rmse", "root mean squared error: large errors weigh more"),
    ("r2", "R²", "val/r2", "1 - MSE / variance of the truth: 1 is perfect, 0 is predicting the mean"),
    ("mean_residual", "mean residual", None, "mean of prediction - truth: the bias (positive: too high)"),
    ("mse", "MSE", "val/mse", "mean squared error"),
    ("median_abs_error", "median absolute error", None, "half the images are closer than this"),
    ("max_abs_error", "largest absolute error", None, "the worst image"),
)


def error_scores(p: ValuePredictions) -> dict[str, float]:
    """The error table, from the CSV's numbers, with scikit-learn's definitions (r2_score: NaN below 2 images)."""
    from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

    r = p.residual
    mse = float(mean_squared_error(p.true, p.pred))
    return {
        "mae": float(mean_absolute_error(p.true, p.pred)),
        "rmse": math.sqrt(mse),
        "mse": mse,
        "r2": float(r2_score(p.true, p.pred)) if len(r) >= 2 else math.nan,
        "mean_residual": float(r.mean()),
        "median_abs_error": float(np.median(np.abs(r))),
        "max_abs_error": float(np.abs(r).max()),
    }


def scatter_figure(p: ValuePredictions, bins: Optional[list[float]]) -> Figure:
    """Predicted against true, the diagonal dashed and ``bins``' boundaries dotted."""
    fig = Figure(figsize=(5.2, 5.0), layout="constrained")
    ax = fig.subplots()
    lo = float(min(p.true.min(), p.pred.min()))
    hi = float(max(p.true.max(), p.pred.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", ls="--", lw=1, label="prediction = truth")
    for b in bins or []:
        ax.axvline(b, color="lightgrey", ls=":", lw=1)
        ax.axhline(b, color="lightgrey", ls=":", lw=1)
    ax.scatter(p.true, p.pred, s=12, alpha=0.6, color="tab:blue", edgecolors="none")
    ax.set_xlabel("truth")
    ax.set_ylabel("prediction")
    ax.set_title("predicted against true" + (" (dotted: bin boundaries)" if bins else ""))
    ax.set_aspect("equal", adjustable="datalim")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig
