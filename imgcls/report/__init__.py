"""Plots and the HTML run report, built only from a run folder's files.

    write_report(run_dir) -> Path          RUN_DIR/report.html + RUN_DIR/plots/*.png
    compare_runs(run_dirs) -> Comparison   config differences and best metrics of several runs
    write_compare(run_dirs, out) -> Path   compare.html with the runs' curves overlaid
"""
from __future__ import annotations

from .compare import Comparison, compare_runs, format_comparison, write_compare
from .findings import Finding, all_findings
from .page import write_report
from .rundata import RunData, load_run

__all__ = ["write_report", "compare_runs", "format_comparison", "write_compare", "Comparison",
           "Finding", "all_findings", "RunData", "load_run"]
