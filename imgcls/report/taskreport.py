"""The run report for the task types other than multiclass: multi-label and regression runs
(``page.write_report`` hands them here), and any other task type with its summary and curves.

Sections, in reading order:
  multilabel   findings, summary, curves, per-label table, precision-recall curves
  regression   findings, summary, curves, errors, predicted vs true, residuals, binned confusion (with bins)
  multihead    findings, summary, curves, heads at a glance, one section per head, the combined class
               (built in headreport.py on this module's sections)
  other types  findings, summary, curves

Everything is read from the run folder: val_metrics.json gives the per-label rows as training
computed them; the curves and the error table are recomputed from val_predictions.csv (whose numbers
are rounded to 6 significant digits), so they can be checked against scikit-learn on that file.
Numbers carry ``data-*`` attributes with their exact values, as in the multiclass report.
"""
from __future__ import annotations

import csv
import datetime as _dt
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import matplotlib
import numpy as np
import yaml
from matplotlib.figure import Figure

from . import plots
from .findings import RECALL_GAP, Finding, lr_ending_high, overfitting, still_improving
from .html import bar, duration, esc, img, num, page, section, table
from .page import _cm_cell, _config_facts, _findings, _param_count, _Plots  # one look for both reports
from .rundata import _float, _read_json
from ..errors import UserError
from ..models.modelinfo import ModelInfo

REQUIRED = ("config.yaml", "metrics.csv", "val_metrics.json", "model.json")
FEW_POSITIVES = 5       # a label with fewer validation positives than this has noisy F1 and AP
BIAS_SE = 2.0           # a mean residual is called a bias beyond this many standard errors ...
BIAS_SHARE = 0.25       # ... and when it is at least this fraction of the RMSE (bias² >= 6% of the MSE)
SHRINK_SLOPE = 0.8      # slope of prediction on truth below this: predictions pulled toward the mean
_MANY = 10              # above this many labels, PR curves are grey with the 5 lowest AP in colour


# ------------------------------------------------------------------ the run folder

@dataclass
class TaskRun:
    run_dir: Path
    config: dict
    val_metrics: dict
    history: list[dict]
    info: ModelInfo
    record: dict                         # model.json's "task" object (type, thresholds, mean, std, bins...)
    env: dict = field(default_factory=dict)
    predictions: Optional[list[dict]] = None   # val_predictions.csv rows, as text

    @property
    def task(self) -> str:
        return self.info.task

    @property
    def monitor(self) -> str:
        return str(self.val_metrics.get("monitor") or self.info.monitor or "val/loss")

    def column(self, key: str) -> np.ndarray:
        return np.array([row.get(key, math.nan) for row in self.history], dtype=float)

    def best(self, key: str) -> float:
        v = self.val_metrics.get(key)
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def load_task_run(run_dir: str | Path) -> TaskRun:
    """The files of a finished run folder; a UserError naming what is missing."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run folder '{run_dir}' does not exist; pass a folder written by 'imgcls train'.")
    missing = [name for name in REQUIRED if not (run_dir / name).is_file()]
    if missing:
        raise UserError(f"'{run_dir}' lacks {', '.join(missing)}; pass a run folder in which at least one "
                        "epoch finished.")
    with open(run_dir / "metrics.csv", newline="") as f:
        history = [{k: _float(v) for k, v in row.items()} for row in csv.DictReader(f)]
    predictions = None
    if (run_dir / "val_predictions.csv").is_file():
        with open(run_dir / "val_predictions.csv", newline="") as f:
            predictions = list(csv.DictReader(f))
    return TaskRun(run_dir=run_dir, config=yaml.safe_load((run_dir / "config.yaml").read_text()) or {},
                   val_metrics=_read_json(run_dir / "val_metrics.json"), history=history,
                   info=ModelInfo.read(run_dir / "model.json"),
                   record=_read_json(run_dir / "model.json").get("task", {}),
                   env=_read_json(run_dir / "env.json") if (run_dir / "env.json").is_file() else {},
                   predictions=predictions)


def _columns(run: TaskRun, needed: list[str]) -> list[dict]:
    rows = run.predictions or []
    if rows and not set(needed) <= set(rows[0]):
        raise UserError(f"'{run.run_dir / 'val_predictions.csv'}' lacks the columns "
                        f"{', '.join(c for c in needed if c not in rows[0])} of a {run.task} run; "
                        "re-copy the run folder.")
    return rows


@dataclass
class LabelPredictions:
    """Multi-label val_predictions.csv as arrays, labels in model.json's order."""
    paths: list[str]
    truth: np.ndarray      # [N, L] bool
    decided: np.ndarray    # [N, L] bool: the run's 'pred' column (at the tuned thresholds)
    probs: np.ndarray      # [N, L] float64


def label_predictions(run: TaskRun) -> Optional[LabelPredictions]:
    if run.predictions is None:
        return None
    labels = list(run.info.classes)
    rows = _columns(run, ["path", "label", "pred", *[f"prob_{c}" for c in labels]])
    sep = str(run.record.get("separator", "|"))
    code = {c: j for j, c in enumerate(labels)}

    def matrix(column: str) -> np.ndarray:
        m = np.zeros((len(rows), len(labels)), dtype=bool)
        for i, r in enumerate(rows):
            for tag in (t.strip() for t in r[column].split(sep)):
                if tag and tag not in code:
                    raise UserError(f"'{run.run_dir / 'val_predictions.csv'}' names label '{tag}' that the run "
                                    "does not have; re-copy the run folder.")
                if tag:
                    m[i, code[tag]] = True
        return m

    probs = np.array([[float(r[f"prob_{c}"]) for c in labels] for r in rows], dtype=np.float64)
    return LabelPredictions([r["path"] for r in rows], matrix("label"), matrix("pred"),
                            probs.reshape(len(rows), len(labels)))


@dataclass
class ValuePredictions:
    """Regression val_predictions.csv as arrays, in the target's unit."""
    paths: list[str]
    true: np.ndarray       # [N]
    pred: np.ndarray       # [N]

    @property
    def residual(self) -> np.ndarray:
        """prediction - truth: positive where the model says too much."""
        return self.pred - self.true


def value_predictions(run: TaskRun) -> Optional[ValuePredictions]:
    if run.predictions is None:
        return None
    rows = _columns(run, ["path", "label", "value"])
    return ValuePredictions([r["path"] for r in rows], np.array([float(r["label"]) for r in rows]),
                            np.array([float(r["value"]) for r in rows]))


# ------------------------------------------------------------------ shared sections

def _no_predictions(id_: str, title: str) -> str:
    return section(id_, title, '<p class="note">val_predictions.csv is missing.</p>')


def _training_findings(run: TaskRun) -> list[Optional[Finding]]:
    found = [overfitting(run.column("train/loss"), run.column("val/loss")), lr_ending_high(run.column("lr"))]
    monitor = run.monitor
    if run.history and monitor in run.history[0]:
        direction = _direction(run, monitor)
        found.append(still_improving(run.column(monitor), direction == "max", monitor))
    return found


def _direction(run: TaskRun, metric: str) -> str:
    try:
        return run.info.task_type.direction(metric)
    except UserError:  # a metric the task does not declare (an older run): losses are the only 'min' guess
        return "min" if metric.endswith("loss") else "max"


def _sorted_findings(found: list[Optional[Finding]], ok_text: str) -> list[Finding]:
    found = [f for f in found if f is not None]
    found.sort(key=lambda f: f.severity != "warn")
    if not any(f.severity == "warn" for f in found):
        found.insert(0, Finding("ok", ok_text, "info"))
    return found


def _task_facts(run: TaskRun) -> str:
    r = run.record
    if run.task == "multilabel":
        return (f"multilabel, {len(run.info.classes)} labels joined by '{r.get('separator', '|')}', "
                "one tuned threshold per label")
    if run.task == "regression":
        text = f"regression, training target mean {num(r.get('mean'), 4)}, std {num(r.get('std'), 4)}"
        return text + (f", bins at {', '.join(f'{b:g}' for b in r['bins'])}" if r.get("bins") else "")
    if run.task == "multihead":
        task = run.info.task_type
        heads = "; ".join(f"{h.name} ({f'{h.size} classes' if h.type == 'multiclass' else 'regression'}, {h.loss}"
                          + (f", weight {h.weight:g}" if h.weight != 1 else "") + ")" for h in task.heads)
        rule = f"; combined = {task.rule.expr} ({task.rule.size} classes)" if task.rule is not None else ""
        return f"multihead: {heads}{rule}"
    return run.task


def _train_total(run: TaskRun) -> Optional[int]:
    """Training images, where model.json's counts tell (multi-label counts an image once per label)."""
    counts = run.info.train_counts
    if not counts:
        return None
    if run.task == "regression":
        return sum(counts)
    if run.task == "multihead":  # counts per output, the heads side by side: the first head's add up to N
        return sum(counts[:run.info.task_type.heads[0].size])
    return None


def _summary(run: TaskRun, n_val: Optional[int], names: Optional[Sequence[str]] = None) -> str:
    """Facts about the run and the best epoch's metrics (``names``, default: all the task declares)."""
    vm, info, env = run.val_metrics, run.info, run.env
    params = _param_count(run.run_dir / "best.safetensors")
    seconds = float(np.nansum(run.column("seconds"))) if run.history else math.nan
    n_train = _train_total(run)
    facts = [
        ("run folder", str(run.run_dir.resolve())),
        ("task", _task_facts(run)),
        ("model", f"{info.architecture}" + (f", {params / 1e6:.2f} M parameters" if params else "")
                  + f", input {info.image_size}x{info.image_size}x{info.channels}"),
        ("data", (f"{n_train} train / " if n_train is not None else "")
                 + f"{n_val if n_val is not None else vm.get('num_samples', '?')} validation images"),
        ("best epoch", f"{vm.get('epoch', '?')} of {len(run.history)} by {run.monitor} "
                       f"({num(run.best(run.monitor), 4)}, {'higher' if _direction(run, run.monitor) == 'max' else 'lower'}"
                       " is better)"),
        ("time", f"{duration(seconds)} on {env.get('device', '?')}"
                 + (f" ({env['device_name']})" if env.get("device_name") else "")),
        *_config_facts(run.config),
        ("versions", ", ".join(f"{name} {env[name]}" for name in ("imgcls", "torch", "timm") if env.get(name))
                     + (f", git {str(env['git_commit'])[:10]}" if env.get("git_commit") else "")),
    ]
    facts_html = "".join(f"<div><b>{esc(a)}</b> {esc(b)}</div>" for a, b in facts)
    names = [m for m in (names or run.info.task_type.metric_names()) if math.isfinite(run.best(m))]
    best = table(["metric", "at the best epoch"], [
        f'<tr data-metric="{esc(m)}"><td>{esc(m)}</td><td class="num" data-value="{run.best(m)!r}">'
        f'{num(run.best(m), 4)}</td></tr>' for m in names], id_="best-metrics")
    return section("summary", "Summary", f'<div class="facts">{facts_html}</div>{best}')


def _curves(run: TaskRun, save: _Plots, preferred: tuple[str, ...], most: int) -> str:
    available = set(run.history[0]) if run.history else set()
    shown = [m for m in (run.monitor, *preferred) if m in available and not m.endswith("loss")]
    shown = list(dict.fromkeys(shown))[:most]
    fig = plots.curves(run.column("epoch"), run.column("train/loss"), run.column("val/loss"),
                       {m: run.column(m) for m in shown}, run.column("lr"), run.val_metrics.get("epoch"))
    return section("curves", "Training curves", img(save("curves", fig), "loss, metrics and learning rate per epoch"),
                   "The dotted line marks the best epoch, whose weights are in best.safetensors.")


# ------------------------------------------------------------------ multi-label

def multilabel_findings(run: TaskRun, p: Optional[LabelPredictions]) -> list[Finding]:
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
    found += _training_findings(run)
    return _sorted_findings(found, (
        "No problems found: every label has positives in validation, no label's F1 is far below the others', "
        "validation loss did not climb at the end and the learning rate decayed."))


def _per_label(run: TaskRun) -> str:
    rows = list(run.val_metrics.get("per_label", []))
    if not rows:
        return section("per-label", "Per label", '<p class="note">val_metrics.json has no per_label rows.</p>')
    train = dict(zip(run.info.classes, run.info.train_counts)) if run.info.train_counts else {}
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


def _pr_curves(run: TaskRun, p: Optional[LabelPredictions], save: _Plots) -> str:
    title = "Precision-recall curves"
    if p is None:
        return _no_predictions("pr", title)
    labels = list(run.info.classes)
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


def _multilabel_sections(run: TaskRun, save: _Plots) -> tuple[list[str], tuple]:
    p = label_predictions(run)
    body = [_findings(multilabel_findings(run, p)), _summary(run, len(p.paths) if p else None),
            _curves(run, save, ("val/map", "val/f1_macro", "val/f1_macro_at_0.5"), 3), _per_label(run),
            _pr_curves(run, p, save)]
    return body, MULTILABEL_SECTIONS


# ------------------------------------------------------------------ regression

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


ERROR_ROWS = (  # (key, shown name, val_metrics.json key, meaning)
    ("mae", "MAE", "val/mae", "mean |prediction - truth|"),
    ("rmse", "RMSE", "val/rmse", "root mean squared error: large errors weigh more"),
    ("r2", "R²", "val/r2", "1 - MSE / variance of the truth: 1 is perfect, 0 is predicting the mean"),
    ("mean_residual", "mean residual", None, "mean of prediction - truth: the bias (positive: too high)"),
    ("mse", "MSE", "val/mse", "mean squared error"),
    ("median_abs_error", "median absolute error", None, "half the images are closer than this"),
    ("max_abs_error", "largest absolute error", None, "the worst image"),
)


def _bins(run: TaskRun) -> Optional[list[float]]:
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


def regression_findings(run: TaskRun, p: Optional[ValuePredictions]) -> list[Finding]:
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
    found += _training_findings(run)
    return _sorted_findings(found, (
        "No problems found: the predictions are not biased, R² is above 0, validation loss did not climb at the "
        "end and the learning rate decayed."))


def _bin_names(bins: list[float]) -> list[str]:
    from ..metrics import bin_names
    return bin_names(bins)


def _errors(run: TaskRun, p: Optional[ValuePredictions]) -> str:
    if p is None:
        return _no_predictions("errors", "Errors")
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


def scatter_figure(p: ValuePredictions, bins: Optional[list[float]]) -> Figure:
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


def _scatter(run: TaskRun, p: Optional[ValuePredictions], save: _Plots) -> str:
    if p is None:
        return _no_predictions("scatter", "Predicted against true")
    uri = save("scatter", scatter_figure(p, _bins(run)))
    return section("scatter", "Predicted against true", img(uri, "predicted against true values"),
                   "One dot per validation image; on the dashed line the prediction is exact. "
                   "Dots above it are over-predicted, below it under-predicted.")


def _residuals(p: Optional[ValuePredictions], save: _Plots) -> str:
    if p is None:
        return _no_predictions("residuals", "Residuals")
    uri = save("residuals", residual_figure(p))
    return section("residuals", "Residuals", img(uri, "residual against true value"),
                   "Residual = prediction - truth against the truth. A red line that falls from left to right means "
                   "the predictions are pulled toward the mean; a line off zero everywhere is a bias.")


def _binned_confusion(run: TaskRun, p: Optional[ValuePredictions], save: _Plots) -> str:
    title = "Binned confusion matrix"
    if p is None:
        return _no_predictions("binned", title)
    bins = _bins(run)
    names = _bin_names(bins)
    _, _, cm = binned(p, bins)
    k = len(names)
    totals = cm.sum(axis=1)
    frac = cm / np.maximum(totals[:, None], 1)
    head = "".join(f"<th>{esc(c)}</th>" for c in names)
    body = "".join(
        f'<tr data-true="{esc(names[i])}"><th>{esc(names[i])}</th>'
        + "".join(_cm_cell(i, j, int(cm[i, j]), float(frac[i, j]), names[i], names[j]) for j in range(k))
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


def _regression_sections(run: TaskRun, save: _Plots) -> tuple[list[str], tuple]:
    p = value_predictions(run)
    bins = _bins(run)
    body = [_findings(regression_findings(run, p)), _summary(run, len(p.paths) if p else None),
            _curves(run, save, ("val/mae", "val/rmse"), 2), _errors(run, p), _scatter(run, p, save),
            _residuals(p, save), *([_binned_confusion(run, p, save)] if bins else [])]
    nav = (("findings", "Findings"), ("summary", "Summary"), ("curves", "Curves"), ("errors", "Errors"),
           ("scatter", "Predicted vs true"), ("residuals", "Residuals"), *([("binned", "Binned")] if bins else []))
    return body, nav


def _other_sections(run: TaskRun, save: _Plots) -> tuple[list[str], tuple]:
    """A task type without its own sections yet: what every run has."""
    found = [Finding("generic", f"This report shows the summary and curves only: task type '{run.task}' has no "
                                "task-specific sections yet.", "info"), *_training_findings(run)]
    preferred = tuple(m for m in run.info.task_type.metric_names() if not m.endswith("loss"))
    body = [_findings([f for f in found if f is not None]), _summary(run, None), _curves(run, save, preferred, 2)]
    return body, (("findings", "Findings"), ("summary", "Summary"), ("curves", "Curves"))


# ------------------------------------------------------------------ the report

def _builder(task: str):
    if task == "multihead":
        from .headreport import multihead_sections  # here: headreport builds on this module's sections
        return multihead_sections
    return {"multilabel": _multilabel_sections, "regression": _regression_sections}.get(task, _other_sections)


def write_task_report(run_dir: str | Path) -> Path:
    """Write RUN_DIR/report.html (self-contained) and RUN_DIR/plots/*.png for a run whose task is not
    multiclass. Returns the path of report.html; a UserError when ``run_dir`` is not a finished run folder."""
    from ..io import atomic_write_text, check_writable

    run = load_task_run(run_dir)
    check_writable(run.run_dir, "run folder", "copy the run folder somewhere writable and report on the copy")
    build = _builder(run.task)
    with matplotlib.rc_context(plots.font_rc()):  # label names in any script, where a font has the glyphs
        sections, nav = build(run, _Plots(run.run_dir / "plots"))
    finished = _dt.datetime.fromtimestamp((run.run_dir / "metrics.csv").stat().st_mtime).strftime("%Y-%m-%d %H:%M")
    subtitle = esc(f"{run.run_dir.resolve()}  ·  {run.task}  ·  finished {finished}  ·  best {run.monitor} "
                   f"{num(run.best(run.monitor), 4)} at epoch {run.val_metrics.get('epoch', '?')}")
    html = page(f"Run report: {run.run_dir.name}", subtitle, list(nav), "".join(sections),
                footer=esc(f"written by imgcls {run.env.get('imgcls', '')} from the files in this run folder"))
    out = run.run_dir / "report.html"
    atomic_write_text(out, html)
    return out
