"""Atomic checkpoints: kills at many moments, including inside every kind of save, never cost a good file.

The kill points come from the test hook inside atomic writes (between the two halves of the
data, and just before the rename), in real processes killed with SIGKILL or dying with
os._exit. After every kill, each file a later step reads still parses (last.pt with
weights_only=True), and --resume goes on; the chain of 30+ kills ends bit-identical to an
uninterrupted run. Signals: Ctrl-C saves last.pt after the signal and exits 130.
"""
from __future__ import annotations

import csv
import itertools
import json
import os
import signal
from pathlib import Path

import pytest

import crashkit as ck
from conftest import small_config
from imgcls.cli import main
from imgcls.config import to_yaml
from imgcls import io as checkpoint  # the atomic writer and its test hook
from imgcls.engine.checkpoint import load_last
from imgcls.engine.rundir import csv_columns
from imgcls.models.modelinfo import ModelInfo, load_weights
from imgcls.tasks import get_task

CSV_COLUMNS = csv_columns(get_task("multiclass").metric_names())

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="kills and freezes processes the Linux way (fork, /proc)")


# Small batches: many optimizer steps (18 an epoch), hence many mid-epoch saves to die in.
OVERRIDES = {"train.deterministic": True, "data.num_workers": 0, "train.epochs": 3, "train.batch_size": 3,
             "train.checkpoint_every_steps": 1, "train.monitor": "val/loss"}
N_VAL = 18
KILLS = 32


def _config_file(folder, tiny_folder, name, **extra):
    path = folder / f"{name}.yaml"
    path.write_text(to_yaml(small_config(tiny_folder, folder / name, **{**OVERRIDES, **extra})))
    return path, folder / name


@pytest.fixture(scope="module")
def reference(tiny_folder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("atomic_ref")
    cfg, run_dir = _config_file(folder, tiny_folder, "ref")
    assert ck.run_child(["train", str(cfg)], folder / "log") == 0, (folder / "log").read_text()
    return run_dir


def _assert_files_readable(run_dir) -> None:
    """Every file that a later step reads is complete: a kill leaves the old or the new version."""
    if (run_dir / "last.pt").exists():
        state = load_last(run_dir / "last.pt")  # weights_only=True inside
        assert {"model", "optimizer", "scheduler", "rng", "epoch", "global_step"} <= state.keys()
    if (run_dir / "best.safetensors").exists():
        assert "fc.weight" in load_weights(run_dir / "best.safetensors")
    if (run_dir / "model.json").exists():
        ModelInfo.read(run_dir / "model.json")
    if (run_dir / "val_metrics.json").exists():
        assert "val/loss" in json.loads((run_dir / "val_metrics.json").read_text())
    if (run_dir / "metrics.csv").exists():
        with open(run_dir / "metrics.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))
        assert all(r[c] != "" for r in rows for c in CSV_COLUMNS)
    if (run_dir / "val_predictions.csv").exists():
        rows = ck.read_csv_text((run_dir / "val_predictions.csv").read_text())
        assert len(rows) == N_VAL + 1 and all(len(r) == 8 for r in rows)  # path,label,pred,prob,top_k + 3 classes


@pytest.mark.slow
def test_thirty_kills_inside_saves_then_resume_is_bit_identical(reference, tiny_folder, tmp_path):
    cfg, run_dir = _config_file(tmp_path, tiny_folder, "chain")
    log = tmp_path / "log"
    # Where each process dies: the n-th save hook of any kind ("*"), or the first of one kind.
    # First: env.json before any last.pt exists, then config.yaml as a resume rewrites it, then each
    # end-of-epoch file of epoch 1 (which always improves on 'no best yet'), then spread out. A
    # process that dies before its first new last.pt makes no progress; the next one then lives
    # 5 hooks longer per such kill (an epoch end takes ~14 hooks: metrics, best files, last.pt).
    first = [("*", 3), ("*", 1), ("*", 2), ("write:best.safetensors", 1), ("rename:val_predictions.csv", 1),
             ("write:val_metrics.json", 1), ("rename:model.json", 1), ("write:metrics.csv", 1)]
    spread = itertools.cycle([4, 3, 6, 5, 3, 7, 4, 8, 3, 5, 9, 4, 6, 3, 10, 5])
    kills, argv, stalled, where = [], ["train", str(cfg)], 0, None
    for i in range(KILLS):
        how = "exit" if i % 4 == 3 else "SIGKILL"
        kill_at = first[i] if i < len(first) else ("*", next(spread) + 2 * stalled)
        rc = ck.run_child(argv, log, kill_at=kill_at, how=how)
        assert rc == (3 if how == "exit" else -signal.SIGKILL), f"kill {i} at {kill_at}: {rc}\n{log.read_text()}"
        kills.append(log.read_text().rsplit("@hook ", 1)[1].split()[0])
        _assert_files_readable(run_dir)
        last = load_last(run_dir / "last.pt") if (run_dir / "last.pt").exists() else None
        now = last and (last["epoch"], last["global_step"])
        stalled, where = (stalled + 1 if i >= len(first) and now is not None and now == where else 0), now
        argv = ["train", "--resume", str(run_dir)]
    assert ck.run_child(argv, log) == 0, log.read_text()
    hit = set(kills)
    for name in ("last.pt", "metrics.csv", "best.safetensors", "model.json", "val_predictions.csv",
                 "val_metrics.json", "config.yaml", "env.json"):
        assert {f"write:{name}", f"rename:{name}"} & hit, f"no kill while saving {name}: {sorted(hit)}"
    assert {"write:last.pt", "rename:last.pt"} <= hit
    assert not list(run_dir.glob(".*.tmp")), "resume removes half-written temporary files"
    ck.assert_same_run(reference, run_dir)


@pytest.mark.slow
def test_kill_before_config_is_written_fails_clearly(tiny_folder, tmp_path, capsys):
    cfg, run_dir = _config_file(tmp_path, tiny_folder, "early")
    assert ck.run_child(["train", str(cfg)], tmp_path / "log", kill_at=("write:config.yaml", 1)) == -signal.SIGKILL
    assert run_dir.is_dir() and not (run_dir / "config.yaml").exists()
    assert main(["train", "--resume", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "no config.yaml" in err and "Traceback" not in err


@pytest.mark.slow
def test_real_cli_kill_and_resume_cycles(reference, tiny_folder, tmp_path):
    """`python -m imgcls train` SIGKILLed mid-epoch, `--resume` SIGKILLed again, then resumed to the end."""
    cfg, run_dir = _config_file(tmp_path, tiny_folder, "cli")
    log = tmp_path / "log"
    first = ck.kill_mid_epoch(ck.cli_process(["train", str(cfg)], log), run_dir)
    second = ck.kill_mid_epoch(ck.cli_process(["train", "--resume", str(run_dir)], log), run_dir,
                               after_step=first["global_step"])
    assert second["global_step"] > first["global_step"]
    _assert_files_readable(run_dir)
    assert ck.run_child(["train", "--resume", str(run_dir)], log) == 0, log.read_text()
    assert log.read_text().count("resuming") == 2
    ck.assert_same_run(reference, run_dir)


# ---------------------------------------------------------------- Ctrl-C, in this process

def _signal_at(label: str, n: int, signum: int, times: int = 1):
    seen = []

    def hook(at: str) -> None:
        if at == label:
            seen.append(at)
            if len(seen) == n:
                for _ in range(times):
                    os.kill(os.getpid(), signum)
    return hook


@pytest.mark.slow
def test_ctrl_c_finishes_the_step_saves_last_pt_and_exits_130(tiny_folder, tmp_path, monkeypatch, capsys):
    cfg, run_dir = _config_file(tmp_path, tiny_folder, "ctrlc", **{"train.deterministic": False})
    # The 4th last.pt save is that of step 3 (the first is written before training starts).
    monkeypatch.setattr(checkpoint, "_SAVE_HOOK", _signal_at("write:last.pt", 4, signal.SIGINT))
    handler = signal.getsignal(signal.SIGINT)
    assert main(["train", str(cfg)]) == 130
    err = capsys.readouterr().err
    assert f"stopped by signal {int(signal.SIGINT)}; last.pt saved. Resume with: imgcls train --resume {run_dir}" in err
    state = load_last(run_dir / "last.pt")
    # the signal came during step 3's save: that step was already finished, so no further step runs
    assert state["global_step"] == 3 and state["epoch_state"]["batches_done"] == 3
    assert signal.getsignal(signal.SIGINT) is handler  # restored

    monkeypatch.setattr(checkpoint, "_SAVE_HOOK", None)
    assert main(["train", "--resume", str(run_dir), "train.epochs=1"]) == 0
    assert "resuming" in capsys.readouterr().out


def test_second_ctrl_c_stops_at_once_and_keeps_the_previous_last_pt(tiny_folder, tmp_path, monkeypatch, capsys):
    cfg, run_dir = _config_file(tmp_path, tiny_folder, "twice", **{"train.deterministic": False})
    monkeypatch.setattr(checkpoint, "_SAVE_HOOK", _signal_at("write:last.pt", 4, signal.SIGINT, times=2))
    assert main(["train", str(cfg)]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert load_last(run_dir / "last.pt")["global_step"] == 2  # the save in progress was abandoned whole
    assert not list(run_dir.glob(".*.tmp"))
