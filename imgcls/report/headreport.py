"""The run report of a multi-head run (task.type=multihead): RUN_DIR/report.html and RUN_DIR/plots/*.png.

Sections, in reading order: findings, summary, curves, heads at a glance, one section per head and the
combined class of ``task.combine`` (built by ``headsections``, which the cv report shares). Per-class
rows and confusion matrices are val_metrics.json's ``details``, as training computed them; regression
errors and the scatter are recomputed from val_predictions.csv.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

from . import plots
from .findings import RECALL_GAP
from .headsections import HeadResults, combined_train_counts, head_findings, head_sections
from .rundata import RunData
from .sections import (Plots, findings_section, sorted_findings, task_curves, task_summary, training_findings,
                       write_run_page)
from ..errors import UserError


def run_results(run: RunData) -> HeadResults:
    """A multi-head run's validation results, as the head sections read them."""
    task = run.model.task_type
    details = {k: run.val_metrics[k] for k in ("heads", "combined") if k in run.val_metrics}
    if "heads" not in details:
        raise UserError(f"'{run.run_dir / 'val_metrics.json'}' lacks the heads' details of a multihead run; "
                        "re-copy the run folder or retrain.")
    return HeadResults(task, run.val_metrics, details, run.rows, run.model.train_counts,
                       combined_train_counts(run.run_dir / "split" / "train.csv", task),
                       source=str(run.run_dir / "val_predictions.csv"))


def multihead_sections(run: RunData, save: Plots) -> tuple[list[str], list[tuple[str, str]]]:
    """The multi-head run's sections and their navigation entries."""
    res = run_results(run)
    task = res.task
    found = sorted_findings(head_findings(res) + training_findings(run), (
        "No problems found: no head's F1 lags the others', every class's recall is within "
        f"{RECALL_GAP:.2f} of its head's accuracy, validation loss did not climb at the end and the learning rate "
        "decayed."))
    monitor_head = run.monitor.split("/")[1] if run.monitor.count("/") == 2 else None
    regression = {h.name for h in task.heads if h.type == "regression"}
    # F1s share an axis in [0, 1]; a regression monitor (an MAE, in its own unit) is drawn alone
    preferred = () if monitor_head in regression else (
        "val/combined/f1_macro", *[f"val/{h.name}/f1_macro" for h in task.heads if h.type == "multiclass"])
    n_val = len(run.rows) if run.rows is not None else None
    body = [findings_section(found),
            task_summary(run, n_val, list(dict.fromkeys(["val/loss", "train/loss", run.monitor]))),
            task_curves(run, save, preferred, 4)]
    heads, nav = head_sections(res, save)
    return body + heads, [("findings", "Findings"), ("summary", "Summary"), ("curves", "Curves"), *nav]


def write_multihead_report(run: RunData) -> Path:
    """Write RUN_DIR/report.html (self-contained) and RUN_DIR/plots/*.png of a multi-head run."""
    from ..io import check_writable

    check_writable(run.run_dir, "run folder", "copy the run folder somewhere writable and report on the copy")
    with matplotlib.rc_context(plots.font_rc()):  # class names in any script, where a font has the glyphs
        body, nav = multihead_sections(run, Plots(run.run_dir / "plots"))
    return write_run_page(run, body, nav)
