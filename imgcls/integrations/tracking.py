"""Tracking with MLflow (``track.mlflow``; ``pip install 'imgcls[mlflow]'``): the run folder stays the
truth, and the tracker gets a copy: the flattened resolved config as parameters, every epoch's metrics
row (the names of metrics.csv, step = epoch), tags (imgcls version, git commit, device, task type), and
at the end the artifacts (report.html, model.json, best.safetensors, metrics.csv, val_predictions.csv).

The MLflow run id is kept in the run folder (``mlflow.json``), so ``--resume`` continues the same MLflow
run (epochs redone after a kill are logged again at the same step, and MLflow's last point of each step
is then metrics.csv's). A cross-validation logs one parent run with a child run per fold.

The tracker is never the training's master: a server that cannot be reached at the start is one
sentence before any training (``track.required: false`` makes it a warning and trains untracked); one
that goes away mid-run costs a single warning, and each later call gives up within about 5 seconds
(MLflow's HTTP timeout and retries are bounded for imgcls's calls, unless the user set them), so an
epoch loses at most ~10 s to it; nothing in the run folder depends on the tracker. Only rank 0 talks
to it under torchrun (``RunTracking`` connects on rank 0 only).

A leaf behind an optional extra: MLflow itself is imported only when ``track.mlflow`` is set, and
``RunTracking``, which imgcls.api holds around every run, does nothing without it.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, Optional

from .. import __version__
from ..config import Config
from ..errors import UserError, first_sentence
from ..io import atomic_write_json

RUN_FILE = "mlflow.json"   # in the run (or cv) folder: the tracking URI, experiment and MLflow run id
ARTIFACTS = ("report.html", "model.json", "best.safetensors", "metrics.csv", "val_predictions.csv",  # a run's
             "cv_summary.json", "oof_predictions.csv", "folds.csv")  # a cv folder's (report.html too)
PARENT_ENV = "IMGCLS_MLFLOW_PARENT"   # a cv's parent MLflow run, for the folds launched with --nproc
_BOUNDS = {"MLFLOW_HTTP_REQUEST_TIMEOUT": "5", "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
           "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0"}


def _uri(setting: str) -> str:
    if setting == "env":
        uri = os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            raise UserError("track.mlflow=env, but MLFLOW_TRACKING_URI is not set; export it (e.g. "
                            "http://127.0.0.1:5000) or set track.mlflow to the tracking URI.")
        return uri
    return setting


def flatten(cfg: Config) -> dict[str, str]:
    """The resolved config as MLflow parameters: {"train.epochs": "10", ...}."""
    out = {}
    for section, values in cfg.to_dict().items():
        for key, value in values.items():
            out[f"{section}.{key}"] = json.dumps(value) if isinstance(value, (dict, list)) else str(value)
    return out


class Tracker:
    """One MLflow run of an imgcls run (or the parent run of a cv folder)."""

    def __init__(self, client, uri: str, experiment_id: str, log: Callable[[str], None]):
        self.client, self.uri, self.experiment_id, self.say = client, uri, experiment_id, log
        self.run_id: Optional[str] = None
        self.down = False  # warned once already

    @classmethod
    def connect(cls, cfg: Config, log: Callable[[str], None] = print) -> Optional["Tracker"]:
        """Reach the tracker before any training; None (with a warning) when unreachable and not required."""
        t = cfg.track
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise UserError("track.mlflow needs MLflow; install it with: pip install 'imgcls[mlflow]'.") from None
        for key, value in _BOUNDS.items():  # imgcls's calls give up quickly; a user's own setting wins
            os.environ.setdefault(key, value)
        uri = _uri(t.mlflow)
        try:
            client = MlflowClient(tracking_uri=uri)
            found = client.get_experiment_by_name(t.experiment)
            experiment_id = found.experiment_id if found else client.create_experiment(t.experiment)
        except Exception as e:  # noqa: BLE001 -- any failure to reach the server means the same to the user
            why = first_sentence(e)
            if t.required:
                raise UserError(f"the MLflow tracker at '{uri}' cannot be reached ({why}); start it, fix track.mlflow, "
                                "or set track.required=false to train without tracking.") from None
            log(f"warning: the MLflow tracker at '{uri}' cannot be reached ({why}); training without tracking "
                "(track.required=false).")
            return None
        return cls(client, uri, experiment_id, log)

    # ------------------------------------------------------------ the run

    def start(self, folder: Path, cfg: Config, *, kind: str = "run", parent: Optional[str] = None,
              device: str = "") -> str:
        """Open (or, when ``folder`` has one, continue) the MLflow run of ``folder``; returns its id."""
        saved = _read(folder)
        if saved and saved.get("run_id"):
            self.run_id = saved["run_id"]
            self._call(lambda: self.client.update_run(self.run_id, status="RUNNING"))
            self.say(f"mlflow: continuing run {self.run_id} in experiment '{cfg.track.experiment}' at {self.uri}")
            return self.run_id
        from ..engine.rundir import git_commit
        tags = {"imgcls.version": __version__, "imgcls.kind": kind, "imgcls.task": cfg.task.type,
                "imgcls.device": device, "imgcls.run_dir": str(Path(folder).resolve())}
        commit = git_commit()
        if commit:
            tags["mlflow.source.git.commit"] = commit
        if parent:
            tags["mlflow.parentRunId"] = parent
        name = cfg.track.run_name or Path(folder).name
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=name)
        self.run_id = run.info.run_id
        atomic_write_json(Path(folder) / RUN_FILE, {"tracking_uri": self.uri, "experiment": cfg.track.experiment,
                                                    "run_id": self.run_id})
        from mlflow.entities import Param
        params = [Param(k, v[:6000]) for k, v in flatten(cfg).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per batch
            self.client.log_batch(self.run_id, params=params[i:i + 100])
        self.say(f"mlflow: run {self.run_id} in experiment '{cfg.track.experiment}' at {self.uri}")
        return self.run_id

    def on_epoch(self, epoch: int, row: dict) -> bool:
        """Log one metrics row (the fit loop's on_epoch); never stops the run."""
        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch) for k, v in row.items()
                   if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)]
        self._call(lambda: self.client.log_batch(self.run_id, metrics=metrics))
        return False

    def finish(self, folder: Path, status: str = "FINISHED") -> None:
        """The artifacts of ``folder`` that exist, then the run's end status."""
        for name in ARTIFACTS:
            path = Path(folder) / name
            if path.is_file() and not self._call(lambda: self.client.log_artifact(self.run_id, str(path))):
                break
        self._call(lambda: self.client.set_terminated(self.run_id, status=status))

    def _call(self, fn) -> bool:
        """Run one tracker call; a failure is one warning for the whole run, never an error."""
        try:
            fn()
            return True
        except Exception as e:  # noqa: BLE001 -- the tracker must never cost the training
            if not self.down:
                self.down = True
                why = first_sentence(e)
                self.say(f"warning: the MLflow tracker at '{self.uri}' stopped answering ({why}); training goes on, "
                         "and the run folder has everything.")
            return False


def _read(folder: Path) -> Optional[dict]:
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def chain(*callbacks):
    """One on_epoch from several (None skipped): each is called; True from any stops the run."""
    live = [c for c in callbacks if c is not None]
    if not live:
        return None

    def on_epoch(epoch: int, row: dict) -> bool:
        return any([c(epoch, row) for c in live])
    return on_epoch


class RunTracking:
    """``track.mlflow`` around one run, on rank 0: reach the tracker before training, open its run once
    the folder exists, log each epoch's row, and the artifacts and status at the end; without
    ``track.mlflow`` (or on other ranks) every call does nothing."""

    def __init__(self, cfg: Config, dist, log: Callable[[str], None], parent: Optional[str] = None):
        parent = parent or os.environ.get(PARENT_ENV) or None   # a cv fold launched with --nproc
        self.cfg, self.parent, self.tracker, self.folder = cfg, parent, None, None
        if cfg.track.mlflow and dist.is_main:  # the one switch that reaches MLflow
            self.tracker = Tracker.connect(cfg, log)

    def start(self, folder: Path, device: str = "", kind: str = "run") -> Optional[str]:
        """Open (or continue) the MLflow run of ``folder``; its id, or None when not tracking."""
        if self.tracker is None:
            return None
        self.folder = Path(folder)
        return self.tracker.start(self.folder, self.cfg, parent=self.parent, device=device, kind=kind)

    def chain(self, on_epoch: Optional[Callable[[int, dict], bool]]) -> Optional[Callable[[int, dict], bool]]:
        """``on_epoch`` with the tracker's epoch logging in front of it (just ``on_epoch`` when not tracking)."""
        if self.tracker is None:
            return on_epoch
        return chain(self.tracker.on_epoch, on_epoch)

    def finish(self, status: str) -> None:
        """The artifacts and the end status (FINISHED, FAILED, KILLED), once."""
        if self.tracker is not None and self.folder is not None and self.tracker.run_id:
            self.tracker.finish(self.folder, status)
            self.tracker.run_id = None  # once
