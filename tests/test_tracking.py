"""Tracking against a real `mlflow server` (SQLite backend, local artifact folder, 127.0.0.1 on a free
port, started and stopped here), read back with MlflowClient and compared with the run folder."""
from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

pytest.importorskip("mlflow")

from mlflow.tracking import MlflowClient  # noqa: E402

from conftest import small_config  # noqa: E402
from imgcls import cross_validate, resume, train  # noqa: E402
from imgcls.errors import UserError  # noqa: E402

START_TIMEOUT = 90


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`mlflow server` in its own process group, on 127.0.0.1; stop() ends it and its workers."""

    def __init__(self, root: Path):
        self.port = _free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        root.mkdir(parents=True, exist_ok=True)
        mlflow_cli = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [str(mlflow_cli), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "art")],
            stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                if urllib.request.urlopen(f"{self.uri}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            assert self.proc.poll() is None, (root / "server.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "mlflow server did not start"
            time.sleep(0.3)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("mlflow"))
    yield s
    s.stop()


def _rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _run_id(folder: Path) -> str:
    return json.loads((folder / "mlflow.json").read_text())["run_id"]


def _tracked(tiny_folder, run: Path, server, **extra):
    return small_config(tiny_folder, run, **{"track.mlflow": server.uri, "track.experiment": "tests", **extra})


@pytest.mark.slow
def test_a_run_logs_its_config_metrics_and_artifacts(tiny_folder, tmp_path, server):
    run = tmp_path / "tracked"
    train(_tracked(tiny_folder, run, server, **{"run.report": True}), log=lambda *a: None)
    client = MlflowClient(server.uri)
    got = client.get_run(_run_id(run))
    assert got.info.status == "FINISHED" and got.info.run_name == "tracked"
    params = got.data.params
    assert params["train.epochs"] == "2" and params["model.name"] == "small_cnn" and params["optim.lr"] == "0.01"
    assert got.data.tags["imgcls.task"] == "multiclass" and got.data.tags["imgcls.version"]
    rows = _rows(run / "metrics.csv")
    for key in (k for k in rows[0] if k not in ("epoch",)):
        history = client.get_metric_history(got.info.run_id, key)
        last = {}
        for point in sorted(history, key=lambda m: m.timestamp):
            last[point.step] = point.value  # the last point of each step
        assert last == pytest.approx({int(r["epoch"]): float(r[key]) for r in rows}, rel=1e-9, nan_ok=True), key
    artifacts = {a.path for a in client.list_artifacts(got.info.run_id)}
    assert {"report.html", "model.json", "best.safetensors", "metrics.csv", "val_predictions.csv"} <= artifacts


@pytest.mark.slow
def test_a_resume_continues_the_same_mlflow_run(tiny_folder, tmp_path, server):
    run = tmp_path / "resumed"
    train(_tracked(tiny_folder, run, server, **{"train.epochs": 1}), log=lambda *a: None)
    first = _run_id(run)
    resume(run, epochs=2, log=lambda *a: None)
    assert _run_id(run) == first
    client = MlflowClient(server.uri)
    assert sorted(m.step for m in client.get_metric_history(first, "val/f1_macro")) == [1, 2]
    assert client.get_run(first).info.status == "FINISHED"


@pytest.mark.parametrize("nproc", [1, 2])
@pytest.mark.slow
def test_cv_logs_a_parent_run_with_a_child_per_fold(tiny_folder, tmp_path, server, nproc, monkeypatch):
    """In process, and with --nproc 2 (each fold a launched 2-process job that finds its parent run)."""
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    cfg = _tracked(tiny_folder, tmp_path / "cv", server, **{"train.epochs": 1, "track.experiment": f"cv-tests-{nproc}"})
    result = cross_validate(cfg, folds=2, log=lambda *a: None, nproc=nproc)
    parent = _run_id(result.cv_dir)
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name(f"cv-tests-{nproc}")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_id for r in children) == sorted(_run_id(d) for d in result.fold_dirs)
    assert client.get_run(parent).data.tags["imgcls.kind"] == "cv"


@pytest.mark.slow
def test_a_tune_logs_a_parent_run_with_a_child_per_trial(tiny_folder, tmp_path, server):
    pytest.importorskip("optuna")
    from imgcls.cli import main
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: {log_uniform: [1e-3, 1e-1]}\n")
    tune_dir = tmp_path / "tune"
    assert main(["tune", f"data.root={tiny_folder}", "data.image_size=16", "model.name=small_cnn", "train.epochs=1",
                 "train.progress=false", f"run.dir={tune_dir}", f"track.mlflow={server.uri}",
                 "track.experiment=tune-tests", "--space", str(space), "--trials", "2", "--pruner", "none"]) == 0
    client = MlflowClient(server.uri)
    parent = _run_id(tune_dir)
    assert client.get_run(parent).data.tags["imgcls.kind"] == "tune"
    exp = client.get_experiment_by_name("tune-tests")
    children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{parent}'")
    assert sorted(r.info.run_id for r in children) == sorted(_run_id(tune_dir / f"trial-{n}") for n in (0, 1))
    assert {r.data.params["optim.lr"] for r in children} == {
        r["optim.lr"] for r in csv.DictReader(open(tune_dir / "trials.csv"))}


def test_an_unreachable_tracker_stops_before_training_unless_not_required(tiny_folder, tmp_path):
    dead = f"http://127.0.0.1:{_free_port()}"
    run = tmp_path / "never"
    with pytest.raises(UserError, match=r"cannot be reached .* track.required=false"):
        train(small_config(tiny_folder, run, **{"track.mlflow": dead}), log=lambda *a: None)
    assert not run.exists()  # nothing was created, nothing trained
    said = []
    t0 = time.monotonic()
    train(small_config(tiny_folder, run, **{"track.mlflow": dead, "track.required": False, "train.epochs": 1}),
          log=said.append)
    assert any("training without tracking" in s for s in said) and (run / "best.safetensors").is_file()
    assert time.monotonic() - t0 < 60


@pytest.mark.slow
def test_a_tracker_lost_mid_run_costs_one_warning_not_the_training(tiny_folder, tmp_path, server):
    """Last in this module: it stops the module's server after the first epoch."""
    run = tmp_path / "goes-on"
    said = []

    def kill_after_first(epoch, row):
        if epoch == 1:
            server.stop()
        return False
    t0 = time.monotonic()
    train(small_config(tiny_folder, run, **{"track.mlflow": server.uri, "train.epochs": 3}),
          on_epoch=kill_after_first, log=said.append)
    assert [int(r["epoch"]) for r in _rows(run / "metrics.csv")] == [1, 2, 3]
    assert sum("stopped answering" in s for s in said) == 1, said
    assert (run / "best.safetensors").is_file() and (run / "mlflow.json").is_file()
    assert time.monotonic() - t0 < 90
