"""The run report of multi-label and regression runs (and of a task type without sections of its own):
RUN_DIR/report.html and RUN_DIR/plots/*.png.

Sections, in reading order:
  multilabel   findings, summary, curves, per-label table, precision-recall curves
  regression   findings, summary, curves, errors, predicted vs true, residuals, binned confusion (with bins)
  other types  findings, summary, curves

Everything is read from the run folder: val_metrics.json gives the per-label rows as training
computed them; the curves and the error table are recomputed from val_predictions.csv (whose numbers
are rounded to 6 significant digits), so they can be checked against scikit-learn on that file.
Numbers carry ``data-*`` attributes with their exact values, as in the multiclass report.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from . import plots
from .findings import RECALL_GAP, Finding
from .html import bar, esc, img, num, section, table
from .rundata import LabelPredictions, RunData, ValuePredictions, label_predictions, value_predictions
from .scores import ERROR_ROWS, cm_cell, error_scores, scatter_figure
from .sections import (Plots, findings_section, no_predictions, sorted_findings, task_curves, task_summary,
                       training_findings, write_run_page)

FEW_POSITIVES = 5       # a label with fewer validation positives than this has noisy F1 and AP
BIAS_SE = 2.0           # a mean residual is called a bias beyond this many standard errors ...
BIAS_SHARE = 0.25       # ... and when it is at least this fraction of the RMSE (bias² >= 6% of the MSE)
SHRINK_SLOPE = 0.8      # slope of prediction on truth below this: predictions pulled toward the mean
_MANY = 10              # above this many labels, PR curves are grey with the 5 lowest AP in colour


# ------------------------------------------------------------------ multi-label

def multilabel_findings(run: RunData, p: Optional[LabelPredictions]) -> list[Finding]:
    rows = list(run.val_metrics.get("per_label", []))
    found: list[Optional[Finding]] = []
    empty = [r["label"] for r in rows if r["support"] == 0]
    if empty:
        names = ", ".join(f"'{n}'" for n in empty[:8]) + (f" and {len(empty) - 8} more" if len(empty) > 8 else "")
        found.append(Finding("no_positive", (
            f"{'Label' if len(empty) == 1 else 'Labels'} {names} {'has' if len(empty) == 1 else 'have'} no positive "
            "in validation, so "
            f"{'it is' if len(empty) == 1 else 'they are'} left out of val/map (AP is undefined) and "
            f"{'its' if len(empty) == 1 else 'their'} F1 of 0 is a convention; use a larger data.val_fraction.")))
    few = [r for r in rows if 0 < r["support"] < FEW_POSITIVES]
    if few:
        found.append(Finding("few_positives", (
            f"{len(few)} label(s) have fewer than {FEW_POSITIVES} positives in validation ("
            + ", ".join(f"'{r['label']}' {r['support']}" for r in few[:8])
            + "): their F1, AP and tuned threshold rest on a handful of images."), "info"))
    present = [r for r in rows if r["support"] > 0]
    if present:
        macro = float(np.mean([r["f1"] for r in present]))
        weak = sorted((r for r in present if r["f1"] < macro - RECALL_GAP), key=lambda r: r["f1"])
        if weak:
            found.append(Finding("weak_label", (
                f"F1 trails the mean over labels ({macro:.2f}) by more than {RECALL_GAP:.2f} for "
                + "; ".join(f"'{r['label']}' {r['f1']:.2f} (AP {num(r['ap'], 2)}, {r['support']} positives)"
                            for r in weak[:8]) + ".")))
    tuned, at_half = run.best("val/f1_macro"), run.best("val/f1_macro_at_0.5")
    found.append(Finding("tuned_thresholds", (
        "F1 at the tuned thresholds is optimistic: they were tuned on this validation set, to maximise each "
        f"label's F1 there (val/f1_macro {num(tuned)}, against {num(at_half)} with every threshold at 0.5). "
        "val/map does not depend on thresholds; for an unbiased F1, run 'imgcls evaluate' on held-out images."),
        "info"))
    if p is not None and len(p.paths):
        none = int((~p.truth.any(axis=1)).sum())
        if none:
            found.append(Finding("unlabelled", (
                f"{none} of {len(p.paths)} validation images ({none / len(p.paths):.0%}) have no label: "
                "val/lrap counts each as 1 and val/mrr leaves them out."), "info"))
    found += training_findings(run)
    return sorted_findings(found, (
        "No problems found: every label has positives in validation, no label's F1 is far below the others', "
        "validation loss did not climb at the end and the learning rate decayed."))


def _per_label(run: RunData) -> str:
    rows = list(run.val_metrics.get("per_label", []))
    if not rows:
        return section("per-label", "Per label", '<p class="note">val_metrics.json has no per_label rows.</p>')
    train = dict(zip(run.model.classes, run.model.train_counts)) if run.model.train_counts else {}
    present = [r["f1"] for r in rows if r["support"] > 0]
    macro = float(np.mean(present)) if present else math.nan
    # Worst F1 first (then AP); labels without validation positives last: their 0 is a convention.
    order = sorted(rows, key=lambda r: (r["support"] == 0, r["f1"], r["ap"] if r["ap"] is not None else 2.0))
    colors = {"precision": "var(--blue)", "recall": "var(--red)", "f1": "var(--grey)", "ap": "var(--blue)"}
    out = []
    for r in order:
        weak = r["support"] > 0 and r["f1"] < macro - RECALL_GAP
        cells = "".join(
            f'<td class="num" data-metric="{m}" data-value="{r[m]!r}">{num(r[m])}{bar(r[m], colors[m])}</td>'
            if r[m] is not None else f'<td class="num" data-metric="{m}" data-value="">–</td>'
            for m in ("precision", "recall", "f1"))
        ap = r["ap"]
        ap_cell = (f'<td class="num" data-metric="ap" data-value="{ap!r}">{num(ap)}{bar(ap, colors["ap"])}</td>'
                   if ap is not None else '<td class="num" data-metric="ap" data-value="">–</td>')
        out.append(f'<tr data-label="{esc(r["label"])}"{" class=weak" if weak else ""}><th>{esc(r["label"])}</th>'
                   f'{cells}<td class="num" data-metric="support" data-value="{r["support"]}">{r["support"]}</td>'
                   f'{ap_cell}<td class="num" data-metric="threshold" data-value="{r["threshold"]!r}">'
                   f'{num(r["threshold"])}</td><td class="num">{train.get(r["label"], "–")}</td></tr>')
    intro = (f"Worst F1 first, at each label's tuned threshold. Rows in red: F1 more than {RECALL_GAP:.2f} below the "
             f"mean over labels ({num(macro)}). Support is the number of validation images with the label; AP "
             "(average precision) does not depend on the threshold, and is blank for a label without positives. "
             "<b>The thresholds were tuned on this validation set</b>, so these F1s are optimistic.")
    return section("per-label", "Per-label precision, recall, F1 and AP",
                   table(["label", "precision", "recall", "F1", "support", "AP", "threshold", "train images"], out,
                         "perclass", "per-label-table"), intro)


def pr_per_label(truth: np.ndarray, probs: np.ndarray) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """(precision, recall, AP) per label with sklearn; empty curves and NaN AP for a label without positives."""
    from sklearn.metrics import average_precision_score, precision_recall_curve

    out = []
    for j in range(probs.shape[1]):
        y = truth[:, j]
        if not y.any():
            out.append((np.array([]), np.array([]), math.nan))
            continue
        precision, recall, _ = precision_recall_curve(y, probs[:, j])
        out.append((precision, recall, float(average_precision_score(y, probs[:, j]))))
    return out


def _operating_point(y: np.ndarray, p: np.ndarray, threshold: float) -> tuple[float, float]:
    """(recall, precision) when positive means prob >= threshold, as training decides."""
    decided = p >= threshold
    tp = float((decided & y).sum())
    return tp / max(y.sum(), 1), (tp / decided.sum() if decided.any() else 1.0)


def pr_figure(curves: list[tuple], labels: list[str], points: list[Optional[tuple[float, float]]]) -> Figure:
    """Precision-recall curves, the tuned threshold of each as a dot; beyond _MANY labels the 5 lowest AP in colour."""
    fig = Figure(figsize=(5.6, 4.8), layout="constrained")
    ax = fig.subplots()
    valid = [j for j, (_, _, a) in enumerate(curves) if math.isfinite(a)]
    highlight = valid if len(labels) <= _MANY else sorted(valid, key=lambda j: curves[j][2])[:5]
    for j in valid:
        precision, recall, a = curves[j]
        if j in highlight:
            line, = ax.plot(recall, precision, lw=1.5, drawstyle="steps-post", label=f"{labels[j]} (AP {a:.3f})")
            if points[j] is not None:
                ax.plot(*points[j], "o", ms=5, color=line.get_color())
        else:
            ax.plot(recall, precision, lw=0.6, color="grey", alpha=0.4, drawstyle="steps-post")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("precision-recall per label (dot: tuned threshold)"
                 + ("" if len(labels) <= _MANY else "\n5 lowest AP in colour"))
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.grid(alpha=0.3)
    if highlight:
        ax.legend(fontsize=7, loc="lower left")
    return fig


def _pr_curves(run: RunData, p: Optional[LabelPredictions], save: Plots) -> str:
    title = "Precision-recall curves"
    if p is None:
        return no_predictions("pr", title)
    labels = list(run.model.classes)
    thresholds = run.record.get("thresholds") or [0.5] * len(labels)
    curves = pr_per_label(p.truth, p.probs)
    points = [_operating_point(p.truth[:, j], p.probs[:, j], float(thresholds[j])) if p.truth[:, j].any() else None
              for j in range(len(labels))]
    uri = save("pr_curves", pr_figure(curves, labels, points))
    order = sorted(range(len(labels)), key=lambda j: (not math.isfinite(curves[j][2]), curves[j][2]))
    rows = [f'<tr data-label="{esc(labels[j])}"><td>{esc(labels[j])}</td>'
            f'<td class="num" data-value="{curves[j][2]!r}">{num(curves[j][2])}</td>'
            f'<td class="num" data-value="{float(thresholds[j])!r}">{num(float(thresholds[j]))}</td></tr>'
            for j in order]
    aps = [a for _, _, a in curves if math.isfinite(a)]
    mean_ap = float(np.mean(aps)) if aps else math.nan
    listing = table(["label", "AP", "tuned threshold"], rows, id_="ap-table")
    intro = (f"From the probabilities in val_predictions.csv (scikit-learn's precision_recall_curve and "
             f"average_precision_score); mean AP <b id=\"mean-ap\" data-value=\"{mean_ap!r}\">{num(mean_ap)}</b> over "
             f"the {len(aps)} label(s) with a positive (val/map at training {num(run.best('val/map'))}). "
             "The dot on each curve is the operating point at the label's tuned threshold; "
             "<b>the thresholds were tuned on this validation set</b> (the best F1 per label there), so the dots "
             "sit where this data favours them, and new images will score somewhat lower.")
    return section("pr", title, f'<div class="grid">{img(uri, "precision-recall curves per label")}'
                                f'<div class="scroll">{listing}</div></div>', intro)


MULTILABEL_SECTIONS = (("findings", "Findings"), ("summary", "Summary"), ("curves", "Curves"),
                       ("per-label", "Per label"), ("pr", "Precision-recall"))


def _multilabel_sections(run: RunData, save: Plots) -> tuple[list[str], tuple]:
    p = label_predictions(run)
    body = [findings_section(multilabel_findings(run, p)), task_summary(run, len(p.paths) if p else None),
            task_curves(run, save, ("val/map", "val/f1_macro", "val/f1_macro_at_0.5"), 3), _per_label(run),
            _pr_curves(run, p, save)]
    return body, MULTILABEL_SECTIONS


# ------------------------------------------------------------------ regression

def _bins(run: RunData) -> Optional[list[float]]:
    bins = run.record.get("bins")
    return [float(b) for b in bins] if bins else None


def binned(p: ValuePredictions, bins: list[float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true bin, predicted bin, confusion matrix rows = true) with bin i = number of boundaries <= v."""
    import torch

    from ..metrics import bin_values

    k = len(bins) + 1
    t = bin_values(torch.as_tensor(p.true), bins).numpy()
    q = bin_values(torch.as_tensor(p.pred), bins).numpy()
    return t, q, np.bincount(t * k + q, minlength=k * k).reshape(k, k)


def regression_findings(run: RunData, p: Optional[ValuePredictions]) -> list[Finding]:
    found: list[Optional[Finding]] = []
    if p is not None and len(p.paths) >= 2:
        s = error_scores(p)
        r = p.residual
        se = float(r.std(ddof=1)) / math.sqrt(len(r))
        bias = s["mean_residual"]
        if abs(bias) > BIAS_SE * se and abs(bias) >= BIAS_SHARE * s["rmse"]:
            found.append(Finding("bias", (
                f"Predictions are biased by {bias:+.3g} on average (too {'high' if bias > 0 else 'low'}; "
                f"{abs(bias) / se:.1f} standard errors, {bias ** 2 / s['mse']:.0%} of the MSE). A shift between the "
                "training and validation targets, or too few epochs, are the usual causes.")))
        if math.isfinite(s["r2"]) and s["r2"] < 0:
            found.append(Finding("r2_negative", (
                f"R² is below 0 ({s['r2']:.3f}): worse than predicting the mean of the validation targets for every "
                "image. The model has not learned the target yet; train longer or check the labels.")))
        mean = run.record.get("mean")
        if isinstance(mean, (int, float)):
            baseline = float(np.mean(np.abs(p.true - mean)))
            worse = s["mae"] >= baseline
            found.append(Finding("baseline", (
                f"MAE {s['mae']:.3g}, against {baseline:.3g} for always predicting the training mean {mean:.3g}"
                + (": no better than that constant." if worse else f" ({1 - s['mae'] / baseline:.0%} lower).")),
                "warn" if worse else "info"))
        var = float(np.var(p.true))
        if var > 0:
            slope = float(np.mean((p.true - p.true.mean()) * (p.pred - p.pred.mean()))) / var
            if slope < SHRINK_SLOPE:
                found.append(Finding("shrinkage", (
                    f"Predictions are pulled toward the mean: the slope of prediction on truth is {slope:.2f} "
                    "(1 is ideal), so high targets come out too low and low ones too high (see the residuals)."),
                    "info"))
        bins = _bins(run)
        if bins:
            _, _, cm = binned(p, bins)
            names = _bin_names(bins)
            acc = float(np.trace(cm)) / max(int(cm.sum()), 1)
            recall = np.diag(cm) / np.maximum(cm.sum(axis=1), 1)
            weak = [i for i in np.argsort(recall) if cm[i].sum() > 0 and recall[i] < acc - RECALL_GAP]
            if weak:
                found.append(Finding("weak_bin", (
                    f"Binned accuracy is {acc:.2f}, but the bin(s) "
                    + "; ".join(f"'{names[i]}' {recall[i]:.2f}" for i in weak)
                    + " are recognised far less often (recall); see the binned confusion matrix.")))
    found += training_findings(run)
    return sorted_findings(found, (
        "No problems found: the predictions are not biased, R² is above 0, validation loss did not climb at the "
        "end and the learning rate decayed."))


def _bin_names(bins: list[float]) -> list[str]:
    from ..metrics import bin_names
    return bin_names(bins)


def _errors(run: RunData, p: Optional[ValuePredictions]) -> str:
    if p is None:
        return no_predictions("errors", "Errors")
    s = error_scores(p)
    rows = []
    for key, name, vm_key, meaning in ERROR_ROWS:
        at_training = num(run.best(vm_key), 4) if vm_key else "–"
        rows.append(f'<tr data-metric="{key}"><td>{esc(name)}</td><td class="num" data-metric="{key}" data-value="{s[key]!r}">'
                    f'{num(s[key], 4)}</td><td class="num">{at_training}</td><td>{esc(meaning)}</td></tr>')
    errors = table(["error", "val_predictions.csv", "val_metrics.json", "meaning"], rows, id_="error-table")
    worst = np.argsort(-np.abs(p.residual), kind="stable")[:10]
    worst_rows = [f'<tr data-row="{i}"><td title="{esc(p.paths[i])}">{esc(Path(p.paths[i]).name)}</td>'
                  f'<td class="num">{p.true[i]:.4g}</td><td class="num">{p.pred[i]:.4g}</td>'
                  f'<td class="num">{p.residual[i]:+.4g}</td></tr>' for i in worst]
    largest = f'<h3>Largest errors</h3>{table(["image", "truth", "prediction", "residual"], worst_rows, id_="worst")}'
    intro = (f"On the {len(p.paths)} validation images, in the target's unit. The first column is recomputed from "
             "val_predictions.csv (6 significant digits), the second is what training computed. "
             "Residual = prediction - truth.")
    return section("errors", "Errors", f'<div class="grid"><div>{errors}</div><div>{largest}</div></div>', intro)


def residual_figure(p: ValuePredictions) -> Figure:
    """Residual against truth, with the mean residual over tenths of the true range (the trend)."""
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.axhline(0, color="grey", ls="--", lw=1)
    ax.scatter(p.true, p.residual, s=12, alpha=0.6, color="tab:blue", edgecolors="none")
    edges = np.quantile(p.true, np.linspace(0, 1, 11))
    which = np.clip(np.searchsorted(edges, p.true, side="right") - 1, 0, 9)
    centres = [(p.true[which == i].mean(), p.residual[which == i].mean()) for i in range(10) if (which == i).any()]
    if len(centres) > 1:
        ax.plot(*zip(*centres), color="tab:red", lw=1.5, marker="o", ms=3, label="mean residual per tenth of truth")
        ax.legend(fontsize=8)
    ax.set_xlabel("truth")
    ax.set_ylabel("residual (prediction - truth)")
    ax.set_title("residuals")
    ax.grid(alpha=0.3)
    return fig


def _scatter(run: RunData, p: Optional[ValuePredictions], save: Plots) -> str:
    if p is None:
        return no_predictions("scatter", "Predicted against true")
    uri = save("scatter", scatter_figure(p, _bins(run)))
    return section("scatter", "Predicted against true", img(uri, "predicted against true values"),
                   "One dot per validation image; on the dashed line the prediction is exact. "
                   "Dots above it are over-predicted, below it under-predicted.")


def _residuals(p: Optional[ValuePredictions], save: Plots) -> str:
    if p is None:
        return no_predictions("residuals", "Residuals")
    uri = save("residuals", residual_figure(p))
    return section("residuals", "Residuals", img(uri, "residual against true value"),
                   "Residual = prediction - truth against the truth. A red line that falls from left to right means "
                   "the predictions are pulled toward the mean; a line off zero everywhere is a bias.")


def _binned_confusion(run: RunData, p: Optional[ValuePredictions], save: Plots) -> str:
    title = "Binned confusion matrix"
    if p is None:
        return no_predictions("binned", title)
    bins = _bins(run)
    names = _bin_names(bins)
    _, _, cm = binned(p, bins)
    k = len(names)
    totals = cm.sum(axis=1)
    frac = cm / np.maximum(totals[:, None], 1)
    head = "".join(f"<th>{esc(c)}</th>" for c in names)
    body = "".join(
        f'<tr data-true="{esc(names[i])}"><th>{esc(names[i])}</th>'
        + "".join(cm_cell(i, j, int(cm[i, j]), float(frac[i, j]), names[i], names[j]) for j in range(k))
        + f'<td class="num">{int(totals[i])}</td></tr>' for i in range(k))
    grid = (f'<div class="cm-wrap"><table class="cm" id="binned-confusion-table"><thead><tr><th>true \\ predicted'
            f'</th>{head}<th>images</th></tr></thead><tbody>{body}</tbody></table></div>')
    uri = save("binned_confusion", plots.confusion(cm, names))
    acc = float(np.trace(cm)) / max(int(cm.sum()), 1)
    intro = (f"True and predicted values binned at {', '.join(f'{b:g}' for b in bins)} (a value on a boundary "
             f"belongs to the bin above it). Rows are the true bin; binned accuracy "
             f"<b id=\"binned-acc\" data-value=\"{acc!r}\">{acc:.3f}</b> (val/binned/acc at training "
             f"{num(run.best('val/binned/acc'))}).")
    return section("binned", title, f'<div class="grid">{grid}{img(uri, "binned confusion matrix")}</div>', intro)


def _regression_sections(run: RunData, save: Plots) -> tuple[list[str], tuple]:
    p = value_predictions(run)
    bins = _bins(run)
    body = [findings_section(regression_findings(run, p)), task_summary(run, len(p.paths) if p else None),
            task_curves(run, save, ("val/mae", "val/rmse"), 2), _errors(run, p), _scatter(run, p, save),
            _residuals(p, save), *([_binned_confusion(run, p, save)] if bins else [])]
    nav = (("findings", "Findings"), ("summary", "Summary"), ("curves", "Curves"), ("errors", "Errors"),
           ("scatter", "Predicted vs true"), ("residuals", "Residuals"), *([("binned", "Binned")] if bins else []))
    return body, nav


def _other_sections(run: RunData, save: Plots) -> tuple[list[str], tuple]:
    """A task type without its own sections yet: what every run has."""
    found = [Finding("generic", f"This report shows the summary and curves only: task type '{run.task}' has no "
                                "task-specific sections yet.", "info"), *training_findings(run)]
    preferred = tuple(m for m in run.model.task_type.metric_names() if not m.endswith("loss"))
    body = [findings_section([f for f in found if f is not None]), task_summary(run, None),
            task_curves(run, save, preferred, 2)]
    return body, (("findings", "Findings"), ("summary", "Summary"), ("curves", "Curves"))


# ------------------------------------------------------------------ the report

def write_task_report(run: RunData) -> Path:
    """Write RUN_DIR/report.html (self-contained) and RUN_DIR/plots/*.png of a multi-label or regression run
    (or the summary and curves of another task type without a multiclass or multi-head report)."""
    from ..io import check_writable

    check_writable(run.run_dir, "run folder", "copy the run folder somewhere writable and report on the copy")
    build = {"multilabel": _multilabel_sections, "regression": _regression_sections}.get(run.task, _other_sections)
    with matplotlib.rc_context(plots.font_rc()):  # label names in any script, where a font has the glyphs
        body, nav = build(run, Plots(run.run_dir / "plots"))
    return write_run_page(run, body, list(nav))
