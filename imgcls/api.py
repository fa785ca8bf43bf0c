"""The public entry points: train a new run, resume one. They compose the engine (build_run + fit)
and the report, which is why they live above both.

``resume`` owns the rule of what may change when a run continues: ``train.epochs``, and the process
count with ``train.batch_size`` / ``train.accumulate`` changed so that processes x batch x accumulate
stays what it was (exact resume needs everything else, the data included, to be what the run started
with). Under torchrun every process calls these; rank 0 reads and writes the run folder.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Optional, Sequence

from .config import Config, load_config, parse_override
from .engine.build import build_run
from .engine.checkpoint import load_last
from .engine.dist import DEFAULT_TIMEOUT, init_distributed, launched
from .engine.fit import FitResult, OnEpoch, fit
from .engine.rundir import RunLock
from .errors import UserError
from .integrations.tracking import PARENT_ENV, RunTracking
from .io import check_writable

# what may differ on resume (batch and accumulate only with the global batch kept); the rest is the run folder's
RESUMABLE_KEYS = ("train.epochs", "train.batch_size", "train.accumulate")


def train(cfg: Config, report: Optional[bool] = None, *, log: Callable[[str], None] = print,
          on_epoch: Optional[OnEpoch] = None, parent: Optional[str] = None, **unexpected) -> FitResult:
    """Train with ``cfg`` into a new run folder; ``report`` None follows ``run.report``.

    ``on_epoch(epoch, row) -> bool`` is called after each epoch's metrics row is written; True stops.
    ``parent``: with ``track.mlflow``, the MLflow run id whose child this run's MLflow run is (a cv fold, a tune trial).
    """
    if "resume" in unexpected:
        raise UserError("imgcls.train does not resume runs; call imgcls.resume(run_dir, epochs=...) instead.")
    if unexpected:
        raise TypeError(f"train() got unexpected keyword argument(s) {', '.join(unexpected)}")
    if not isinstance(cfg, Config):
        raise UserError(f"imgcls.train needs a Config (from imgcls.load_config), got {type(cfg).__name__}.")
    dist = init_distributed(cfg.train.device, cfg.train.dist_timeout)
    tracking = RunTracking(cfg, dist, log, parent)  # reaches the tracker before any training
    lock = None
    try:
        if cfg.train.engine == "lightning":  # the one switch that imports the Lightning integration
            from .integrations.lightning import fit_config
            result, lock = fit_config(cfg, dist, log, on_epoch=tracking.chain(on_epoch), on_start=tracking.start)
        else:
            run = build_run(cfg, log=log, dist=dist)
            lock = run.lock
            tracking.start(run.run_dir, str(run.device))
            result = fit(run, tracking.chain(on_epoch))
        if dist.is_main:
            _finish(result, cfg.run.report if report is None else report, log)
        tracking.finish("FINISHED")
        return result
    except BaseException as e:
        tracking.finish(_status(e))
        raise
    finally:
        if lock is not None:
            lock.release()
        dist.close()


def _status(e: BaseException) -> str:
    """The MLflow end status of a run that raised ``e``: stopped by the user, or failed."""
    from .engine.signals import TrainingInterrupted
    return "KILLED" if isinstance(e, (KeyboardInterrupt, TrainingInterrupted)) else "FAILED"


def resume_overrides(texts: Sequence[str]) -> dict:
    """The CLI's ``key=value`` words on ``--resume``: {train.epochs / train.batch_size / train.accumulate:
    value}; any other key is refused in one sentence."""
    changes = {}
    for text in texts:
        if "=" not in text:
            raise UserError(f"'{text}' is not a key=value override; a resumed run keeps its config file, so pass "
                            "only train.epochs=N (or train.batch_size / train.accumulate with another --nproc) "
                            "after --resume RUN.")
        key, value = parse_override(text)
        if key not in RESUMABLE_KEYS:
            raise UserError(f"only train.epochs (and, keeping the global batch, train.batch_size and "
                            f"train.accumulate) may change on resume, not '{key}'; start a new run to change "
                            "other settings.")
        changes[key] = value
    return changes


def resume(run_dir: str | Path, epochs=None, report: Optional[bool] = None, *,
           log: Callable[[str], None] = print, on_epoch: Optional[OnEpoch] = None,
           batch_size=None, accumulate=None) -> FitResult:
    """Continue ``run_dir`` from its last.pt; ``epochs`` may raise train.epochs (never lower it below
    the epochs already done). More epochs re-lay the LR schedule over the new length. ``batch_size``
    and ``accumulate`` change with the number of processes, keeping processes x batch x accumulate."""
    run_dir = Path(run_dir).expanduser()
    changes = {k: v for k, v in (("train.epochs", epochs), ("train.batch_size", batch_size),
                                 ("train.accumulate", accumulate)) if v is not None}
    dist = init_distributed(*_dist_settings(run_dir))
    lock = None
    try:
        payload = None
        if dist.is_main:  # the run folder is rank 0's; the others get its config and last.pt from it
            if not (run_dir / "config.yaml").is_file():
                raise UserError(f"'{run_dir}' is not a run folder (no config.yaml); pass the folder printed by "
                                "'imgcls train'.")
            if changes:  # the same rules as a new run's, checked before anything is touched
                Config().replace(**changes)
            check_writable(run_dir, "run folder", "copy it somewhere writable and resume the copy")
            lock = RunLock(run_dir).acquire()  # before reading last.pt: a running writer may be rewriting it
            payload = _read_resume(run_dir, changes, log)
        cfg, start = dist.broadcast_object(payload)
        tracking = RunTracking(cfg, dist, log)
        try:
            if cfg.train.engine == "lightning":
                from .integrations.lightning import fit_config
                result, _ = fit_config(cfg, dist, log, run_dir, resuming=True, on_epoch=tracking.chain(on_epoch),
                                       on_start=tracking.start)
            else:
                run = build_run(cfg, run_dir=run_dir, start=start, log=log, dist=dist)
                tracking.start(run_dir, str(run.device))  # the same MLflow run (its id is in the run folder)
                result = fit(run, tracking.chain(on_epoch))
            if dist.is_main:
                _finish(result, cfg.run.report if report is None else report, log)
            tracking.finish("FINISHED")
        except BaseException as e:
            tracking.finish(_status(e))
            raise
        return result
    finally:
        if lock is not None:
            lock.release()
        dist.close()


def _dist_settings(run_dir: Path) -> tuple[str, float]:
    """(train.device, train.dist_timeout) of the run being resumed, to join torchrun's group with."""
    if launched() and (run_dir / "config.yaml").is_file():
        t = load_config(run_dir / "config.yaml").train
        return t.device, t.dist_timeout
    return "auto", DEFAULT_TIMEOUT


def _read_resume(run_dir: Path, changes: dict, log) -> tuple[Config, Optional[dict]]:
    cfg = load_config(run_dir / "config.yaml")
    # No last.pt and no metrics.csv: killed before its first checkpoint, so nothing was trained yet
    # and the run starts again in its own folder. Otherwise last.pt is required.
    start = None
    if cfg.train.engine != "lightning" and ((run_dir / "last.pt").exists() or (run_dir / "metrics.csv").exists()):
        start = load_last(run_dir / "last.pt")  # (Lightning resumes from its own last.ckpt)
    batch = {k: v for k, v in changes.items() if k != "train.epochs"}
    if batch:
        cfg = cfg.replace(**batch)
    epochs = changes.get("train.epochs")
    if epochs is not None:
        old = cfg.train.epochs
        cfg = cfg.replace(**{"train.epochs": epochs})
        done = start["epoch"] if start else 0
        if cfg.train.epochs < done:
            raise UserError(f"train.epochs={cfg.train.epochs} is fewer than the {done} epoch(s) '{run_dir}' has "
                            f"already trained; pass train.epochs={done} or more, or start a new run.")
        if cfg.train.epochs != old:
            log(f"train.epochs {old} -> {cfg.train.epochs}: the {cfg.sched.name} LR schedule is laid over the "
                "new length, so the learning rate continues from where that longer schedule stands at this epoch")
    return cfg, start


def cross_validate(cfg: Config, folds: int = 5, only: Optional[Sequence[int]] = None,
                   report: Optional[bool] = None, *, log: Callable[[str], None] = print, nproc: int = 1,
                   verbose: bool = False):
    """K-fold cross-validation of ``cfg`` into a new cv folder: one ordinary run per fold (each with
    its report when ``report``/``run.report`` says so), out-of-fold predictions and a summary
    (see ``imgcls.engine.cv``). ``only`` trains just those folds; ``resume_cv`` adds the others later.
    ``nproc`` > 1 trains each fold data-parallel in that many processes (as ``imgcls train --nproc``;
    ``train.batch_size`` is then per process), one fold after another; ``verbose`` shows every
    process's output and torchrun's logs (as ``--verbose``)."""
    from .engine.cv import create_cv_folder
    if not isinstance(cfg, Config):
        raise UserError(f"imgcls.cross_validate needs a Config (from imgcls.load_config), got {type(cfg).__name__}.")
    from .engine.cv import parse_only
    only = None if only is None else parse_only(",".join(map(str, only)), folds)
    _check_nproc(nproc)
    cv_dir, lock, cfg = create_cv_folder(cfg, folds, log)
    try:
        return _run_folds(cv_dir, cfg, only, report, log, nproc, verbose)
    finally:
        lock.release()


def resume_cv(cv_dir: str | Path, only: Optional[Sequence[int]] = None, report: Optional[bool] = None, *,
              log: Callable[[str], None] = print, nproc: int = 1, verbose: bool = False):
    """Continue a cv folder: every fold not finished yet (or just ``only``) is trained; finished folds
    are kept, a fold killed mid-run resumes from its last.pt (``nproc`` as in ``cross_validate``)."""
    from .engine.cv import parse_only
    from .runfolder import CV_FILE, is_cv_dir, read_state
    cv_dir = Path(cv_dir).expanduser()
    if not is_cv_dir(cv_dir):
        raise UserError(f"'{cv_dir}' is not a cross-validation folder (no {CV_FILE}); pass the folder printed by "
                        "'imgcls cv'.")
    check_writable(cv_dir, "cv folder", "copy it somewhere writable and resume the copy")
    if only is not None:
        only = parse_only(",".join(map(str, only)), read_state(cv_dir)["folds"])
    _check_nproc(nproc)
    lock = RunLock(cv_dir).acquire()
    try:
        return _run_folds(cv_dir, load_config(cv_dir / "config.yaml"), only, report, log, nproc, verbose)
    finally:
        lock.release()


def audit(cfg: Optional[Config] = None, folds: int = 5, *, from_cv: Optional[str | Path] = None,
          test: Optional[str | Path] = None, max_distance: Optional[int] = None, min_cosine: Optional[float] = None,
          embeddings: bool = True, log: Callable[[str], None] = print):
    """``imgcls audit``: label issues, duplicates and leaks from out-of-fold predictions. Without ``from_cv``
    it runs ``cross_validate(cfg, folds)`` into ``run.dir`` (a ``run.dir`` that already holds a cv goes on
    with ``resume_cv``: killed and re-run, the audit continues); with ``from_cv`` it reuses that cv folder
    (finishing any fold left). The files are written to the cv folder, or to ``run.dir`` with ``from_cv``;
    returns the folder. Near-duplicates: pHash within ``max_distance`` bits, and (``embeddings``) the fold
    models' embeddings with a mean cosine similarity of at least ``min_cosine``."""
    from .data.dedup import EMBEDDING_MIN_COSINE, PHASH_MAX_DISTANCE, check_min_cosine
    from .report.auditdata import analyse, summary_words, write_audit
    from .report.auditreport import write_audit_report
    from .runfolder import is_cv_dir, read_state
    min_cosine = check_min_cosine(EMBEDDING_MIN_COSINE if min_cosine is None else min_cosine) if embeddings else None
    if from_cv is not None:
        cv_dir = Path(from_cv).expanduser()
        if not is_cv_dir(cv_dir):
            raise UserError(f"--from-cv '{from_cv}' is not a cross-validation folder (no cv.json); pass a folder "
                            "made by 'imgcls cv' or 'imgcls audit'.")
        out = Path(cfg.run.dir).expanduser() if cfg is not None and cfg.run.dir else cv_dir
    elif cfg is not None and cfg.run.dir and is_cv_dir(Path(cfg.run.dir).expanduser()):
        cv_dir = out = Path(cfg.run.dir).expanduser()
        log(f"audit: continuing the cv in {cv_dir}")
    else:
        if cfg is None:
            raise UserError("imgcls audit needs a config (or key=value data settings), or --from-cv CV_DIR.")
        cv_dir = out = cross_validate(cfg, folds, report=False, log=log).cv_dir
    state = read_state(cv_dir)
    if len(state["finished"]) < state["folds"]:
        resume_cv(cv_dir, report=False, log=log)
    result = analyse(cv_dir, None if test is None else str(test),
                     PHASH_MAX_DISTANCE if max_distance is None else max_distance, min_cosine)
    for path in write_audit(result, out) + [write_audit_report(result, out)]:
        log(f"audit: {path}")
    log(f"audit: {summary_words(result)}")
    return out


def _check_nproc(nproc: int) -> None:
    if nproc < 1:
        raise UserError(f"nproc must be 1 or more, got {nproc}.")
    if launched():  # each fold would set up and tear down the job's process group under torchrun
        raise UserError("imgcls cv runs its folds one after another, each as its own job; start it as one "
                        "process with --nproc N (each fold then trains in N processes), not under torchrun.")


def _launch_fold(cfg: Config, fold_dir: Path, report: Optional[bool], nproc: int, parent: Optional[str],
                 verbose: bool = False) -> None:
    """Fold ``fold_dir`` as an ``imgcls train --nproc`` job: from its resolved config, or from its
    last.pt where an earlier job was stopped mid-fold. The fold's MLflow run is a child of ``parent``."""
    import tempfile
    from .config import to_yaml
    from .engine.launch import launch
    extra = [] if report is None else [f"run.report={str(report).lower()}"]
    resuming = (fold_dir / "config.yaml").is_file()
    tmp = None
    if not resuming:
        fd, tmp = tempfile.mkstemp(prefix=f".{fold_dir.name}-", suffix=".yaml", dir=fold_dir.parent)
        os.close(fd)
        Path(tmp).write_text(to_yaml(cfg))
    argv = ["train", *(["--resume", str(fold_dir)] if resuming else [tmp]), *extra]
    os.environ[PARENT_ENV] = parent or ""   # launch() restores the environment it found, this included
    hint = f"imgcls cv --resume {fold_dir.parent} --nproc {nproc}"
    try:
        code = launch(argv, nproc, str(fold_dir) if resuming else None, resume_hint=hint, verbose=verbose)
    finally:
        os.environ.pop(PARENT_ENV, None)
        if tmp:
            Path(tmp).unlink(missing_ok=True)
    if code in (130, 143):   # Ctrl-C or SIGTERM: the launcher has said how to continue
        raise FoldStopped(code)
    if code:
        raise UserError(f"{fold_dir.name} failed (exit status {code}); once it is fixed, continue the cv with: {hint}")


class FoldStopped(Exception):
    """A cv fold launched with --nproc was stopped by a signal; the launcher printed the resume command."""

    def __init__(self, exit_code: int):
        super().__init__("")
        self.exit_code = exit_code


def _run_folds(cv_dir: Path, cfg: Config, only: Optional[Sequence[int]], report: Optional[bool], log,
               nproc: int = 1, verbose: bool = False):
    from .engine.cv import CVResult, fold_config, format_summary, summarise
    from .runfolder import read_state, write_state
    state = read_state(cv_dir)
    todo = list(only) if only is not None else list(range(state["folds"]))
    from .engine.dist import DistContext
    tracking = RunTracking(cfg, DistContext(), log)  # one parent MLflow run, a child run per fold
    parent = tracking.start(cv_dir, kind="cv")
    for k in todo:
        if k in state["finished"]:
            log(f"fold {k}: finished before, kept")
            continue
        fold_dir = cv_dir / f"fold-{k}"
        say = (lambda k: lambda msg: log(f"fold {k}: {msg}"))(k)
        if nproc > 1:
            say(f"data-parallel in {nproc} processes (imgcls train --nproc {nproc})")
            _launch_fold(fold_config(cfg, cv_dir, k), fold_dir, report, nproc, parent, verbose)
        elif (fold_dir / "config.yaml").is_file():  # killed mid-fold: it continues from its last.pt
            resume(fold_dir, report=report, log=say)
        else:
            train(fold_config(cfg, cv_dir, k), report, log=say, parent=parent)
        state["finished"] = sorted(set(state["finished"]) | {k})
        write_state(cv_dir, state)
    dirs = [cv_dir / f"fold-{k}" for k in sorted(state["finished"])]
    summary = summarise(cv_dir, dirs, complete=len(state["finished"]) == state["folds"])
    log(format_summary(summary))
    if cfg.run.report if report is None else report:
        from .report.cvreport import write_cv_report  # the folds side by side and the out-of-fold results
        try:
            log(f"cv report: {write_cv_report(cv_dir)}")
        except KeyboardInterrupt:
            raise ReportInterrupted(cv_dir) from None
    log(f"cv folder: {cv_dir}")
    tracking.finish("FINISHED")
    return CVResult(cv_dir, dirs, summary)


class ReportInterrupted(Exception):
    """Ctrl-C while the report was being written: training itself had finished."""
    exit_code = 130

    def __init__(self, run_dir: Path):
        super().__init__(f"interrupted while writing the report; training had finished and {run_dir} holds "
                         f"the trained model. Rebuild the report with: imgcls report {run_dir}")


def _finish(result: FitResult, report: bool, log) -> None:
    _timm_folder(result.run_dir, log)
    if report:
        from .report import write_report
        try:
            log(f"report: {write_report(result.run_dir)}")
        except KeyboardInterrupt:
            raise ReportInterrupted(result.run_dir) from None
    log(f"run folder: {result.run_dir}")


def _timm_folder(run_dir: Path, log) -> None:
    """RUN/timm, the folder plain timm opens (imgcls.inference.timmdir), or the sentence saying why there is none;
    a failure here costs a warning, never the trained run."""
    from .models.modelinfo import ModelInfo
    from .inference.timmdir import FOLDER, why_not, write_timm_folder
    try:
        reason = why_not(ModelInfo.read(run_dir / "model.json"))
        if reason:
            log(f"timm folder: none ({reason})")
            return
        log(f"timm folder: {write_timm_folder(run_dir, force=True)} (timm.create_model('local-dir:{run_dir / FOLDER}', "
            "pretrained=True))")
    except (UserError, OSError, RuntimeError, ValueError) as e:
        log(f"warning: the timm folder was not written ({e})")
