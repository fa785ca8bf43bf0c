"""Plots and the HTML reports, built only from a run (or cv) folder's files.

    write_report(run_dir) -> Path          RUN_DIR/report.html + RUN_DIR/plots/*.png, by the run's kind
    compare_runs(run_dirs) -> Comparison   config differences and best metrics of several runs
    write_compare(run_dirs, out) -> Path   compare.html with the runs' curves overlaid
    page(title, subtitle, nav, body)       the page shell every report (and tune.html) is written in

One reader (rundata), the sections the pages share (sections, scores, headsections), the page shell
(html.page), then one module per report kind: classreport (multiclass), taskreport (multi-label,
regression), headreport (multi-head), cvreport (a cv folder), compare. ``write_report`` picks the kind;
no kind imports another.
"""
from __future__ import annotations

from pathlib import Path

from .classreport import write_class_report
from .compare import Comparison, compare_runs, format_comparison, write_compare
from .cvreport import write_cv_report
from .findings import Finding, all_findings
from .headreport import write_multihead_report
from .html import page
from .rundata import RunData, load_run
from .taskreport import write_task_report

__all__ = ["write_report", "compare_runs", "format_comparison", "write_compare", "Comparison",
           "Finding", "all_findings", "RunData", "load_run", "page"]


def write_report(run_dir: str | Path, *, gradcam: bool = True, force: bool = False) -> Path:
    """Write RUN_DIR/report.html (self-contained) and RUN_DIR/plots/*.png from the run folder's files.

    Returns the path of report.html. Raises UserError when ``run_dir`` is not a run folder with at
    least one finished epoch. ``gradcam=False`` skips the Grad-CAM overlays of a multiclass run (no
    model is built). A cv folder (``imgcls cv``) gets CV_DIR/report.html instead, from ``cvreport``.
    A multiclass run whose validation images are gone keeps its existing report (a warning says so) unless
    ``force``: a rebuilt one would show no pictures.
    """
    from ..runfolder import is_cv_dir

    if is_cv_dir(run_dir):
        return write_cv_report(run_dir)
    run = load_run(run_dir)
    if run.task == "multiclass":
        return write_class_report(run, gradcam=gradcam, force=force)
    if run.task == "multihead":
        return write_multihead_report(run)
    return write_task_report(run)
