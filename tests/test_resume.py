"""Exact resume: a run killed (SIGKILL) or stopped (SIGTERM) and resumed ends bit-identical to an uninterrupted one.

CPU, deterministic algorithms, shuffling, augmentation, MixUp, dropout and 2 DataLoader
workers: every source of randomness a real run has. Compared: best.safetensors, the model,
optimizer and scheduler state in last.pt, and metrics.csv apart from its `seconds` column.
"""
from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

import crashkit as ck
from conftest import small_config
from imgcls.config import to_yaml
from imgcls.engine.checkpoint import load_last

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(),
                                reason="kills and freezes processes the Linux way (fork, /proc)")


OVERRIDES = {
    "train.deterministic": True, "data.num_workers": 2, "train.epochs": 3, "train.batch_size": 8,
    "train.checkpoint_every_steps": 1, "model.drop_rate": 0.3, "data.mixup": 0.2, "data.augment": "light",
}
STEPS_PER_EPOCH = 7  # 54 training images in batches of 8


def _config_file(folder, tiny_folder, name, **extra):
    run_dir = folder / name
    path = folder / f"{name}.yaml"
    path.write_text(to_yaml(small_config(tiny_folder, run_dir, **{**OVERRIDES, **extra})))
    return path, run_dir


@pytest.fixture(scope="module")
def reference(tiny_folder, tmp_path_factory):
    """The uninterrupted run every interrupted one must reproduce."""
    folder = tmp_path_factory.mktemp("resume_ref")
    cfg, run_dir = _config_file(folder, tiny_folder, "ref")
    assert ck.run_child(["train", str(cfg)], folder / "ref.log") == 0, (folder / "ref.log").read_text()
    assert len(ck.metrics_rows(run_dir)) == 3
    return run_dir


@pytest.mark.slow
def test_cli_sigkill_mid_epoch_then_resume_is_bit_identical(reference, tiny_folder, tmp_path):
    cfg, run_dir = _config_file(tmp_path, tiny_folder, "killed")
    proc = ck.cli_process(["train", str(cfg)], tmp_path / "run.log")
    # Past the first epoch, so the resumed run also needs the scheduler, optimizer and best value.
    state = ck.kill_mid_epoch(proc, run_dir, after_step=STEPS_PER_EPOCH + 1)
    assert proc.returncode == -signal.SIGKILL
    assert 0 < state["epoch_state"]["batches_done"] < STEPS_PER_EPOCH
    rows_before = ck.metrics_rows(run_dir)
    assert len(rows_before) == state["epoch"] < 3

    resumed = ck.cli_process(["train", "--resume", str(run_dir)], tmp_path / "run.log")
    assert resumed.wait(timeout=120) == 0, (tmp_path / "run.log").read_text()
    log = (tmp_path / "run.log").read_text()
    assert f"resuming {run_dir} at epoch {state['epoch'] + 1}, batch {state['epoch_state']['batches_done'] + 1}" in log
    ck.assert_same_run(reference, run_dir)


@pytest.mark.slow
def test_kill_after_metrics_row_before_epoch_checkpoint(reference, tiny_folder, tmp_path):
    """Resume after an epoch boundary, from a kill that left metrics.csv one epoch ahead of last.pt."""
    cfg, run_dir = _config_file(tmp_path, tiny_folder, "boundary", **{"train.checkpoint_every_steps": 0})
    # last.pt saves: the initial one, then one per epoch; die while writing the end-of-epoch-2 one.
    rc = ck.run_child(["train", str(cfg)], tmp_path / "log", kill_at=("write:last.pt", 3))
    assert rc == -signal.SIGKILL
    assert load_last(run_dir / "last.pt")["epoch"] == 1 and load_last(run_dir / "last.pt")["epoch_state"] is None
    assert [r["epoch"] for r in ck.metrics_rows(run_dir)] == ["1", "2"]
    assert list(run_dir.glob(".last.pt.*.tmp")), "the kill should leave a half-written temporary file"

    assert ck.run_child(["train", "--resume", str(run_dir)], tmp_path / "log") == 0, (tmp_path / "log").read_text()
    assert "resuming" in (tmp_path / "log").read_text()
    assert not list(run_dir.glob(".*.tmp"))
    ck.assert_same_run(reference, run_dir)


@pytest.mark.slow
def test_sigterm_saves_mid_epoch_and_resume_is_bit_identical(reference, tiny_folder, tmp_path):
    cfg, run_dir = _config_file(tmp_path, tiny_folder, "term")
    # Freeze the run while it writes its 12th last.pt (epoch 2, step 11), then SIGTERM it from outside.
    p = ck.start_child(["train", str(cfg)], tmp_path / "log", kill_at=("write:last.pt", 12), how="SIGSTOP")
    ck.wait_stopped(p.pid)
    before = load_last(run_dir / "last.pt")
    assert before["global_step"] == 10
    os.kill(p.pid, signal.SIGTERM)
    os.kill(p.pid, signal.SIGCONT)
    p.join(60)
    log = (tmp_path / "log").read_text()
    assert p.exitcode == 143, log
    assert f"last.pt saved. Resume with: imgcls train --resume {run_dir}" in log
    after = load_last(run_dir / "last.pt")
    assert after["global_step"] > before["global_step"]  # written after the signal
    assert after["epoch"] == 1 and after["epoch_state"] is not None  # mid-epoch, not at its end

    assert ck.run_child(["train", "--resume", str(run_dir)], tmp_path / "log") == 0, log
    ck.assert_same_run(reference, run_dir)


def test_the_comparison_sees_a_one_ulp_change(reference, tmp_path):
    """'Bit-identical' above is checked to the last bit: nudging one weight by one ulp fails it."""
    copy = tmp_path / "copy"
    shutil.copytree(reference, copy)
    state = load_file(copy / "best.safetensors")
    w = state["fc.weight"]
    w.view(-1)[0] = torch.nextafter(w.view(-1)[0], torch.tensor(float("inf")))
    save_file(state, copy / "best.safetensors")
    with pytest.raises(AssertionError, match="fc.weight"):
        ck.assert_same_run(reference, copy)
