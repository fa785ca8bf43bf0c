"""Faults during a run: non-finite losses, non-finite models, GPU out of memory, bad input images."""
from __future__ import annotations

import csv
import hashlib
import math

import pytest
import torch
from safetensors.torch import load_file

from conftest import make_image_folder, small_config
from imgcls.cli import main
from imgcls.config import to_yaml
from imgcls.api import train
from imgcls.engine import build_run, fit
from imgcls.engine.checkpoint import load_last
from imgcls.models.modelinfo import ModelInfo
from imgcls.errors import UserError

STEPS = 4  # 54 training images in batches of 16


def _quiet(*a, **k):
    pass


class _LossSpy(torch.nn.Module):
    """Wraps the run's loss: records whether each training call was finite, and can return NaN at given calls."""

    def __init__(self, inner, nan_at=()):
        super().__init__()
        self.inner, self.nan_at, self.finite = inner, set(nan_at), []

    def forward(self, output, target):
        loss = self.inner(output, target)
        if torch.is_grad_enabled():  # training (validation runs under inference_mode)
            if len(self.finite) + 1 in self.nan_at:
                loss = loss * float("nan")
            self.finite.append(bool(torch.isfinite(loss)))
        return loss


def _run(cfg, nan_at=None):
    """A built run whose loss is wrapped by a spy (tests replace a Run's parts, not module globals)."""
    run = build_run(cfg, log=_quiet)
    if nan_at is not None:
        run.criterion = _LossSpy(run.criterion, nan_at)
    return run


def _all_finite(state: dict) -> bool:
    return all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_exploding_lr_stops_naming_epoch_and_first_bad_step(tiny_folder, tmp_path):
    cfg = small_config(tiny_folder, tmp_path / "run", **{"optim.lr": 1e30, "train.checkpoint_every_steps": 1})
    run = _run(cfg, nan_at=())
    with pytest.raises(UserError) as e:
        fit(run)
    first_bad = run.criterion.finite.index(False) + 1  # accumulate=1: one loss call per optimizer step
    msg = str(e.value)
    assert f"the loss became NaN or infinite at epoch 1, optimizer step {first_bad};" in msg
    assert "train.skip_nonfinite=true" in msg and "\n" not in msg
    # Checked at every checkpoint: last.pt never holds the poisoned model, and nothing became best.
    assert _all_finite(load_last(tmp_path / "run" / "last.pt")["model"])
    assert not (tmp_path / "run" / "best.safetensors").exists()


def test_nan_in_epoch_two_keeps_epoch_one_best(tiny_folder, tmp_path):
    cfg = small_config(tiny_folder, tmp_path / "run", **{"train.checkpoint_every_steps": 1})
    with pytest.raises(UserError, match=f"at epoch 2, optimizer step {STEPS + 2};"):
        fit(_run(cfg, nan_at={STEPS + 2}))  # epoch 2, its second step: global step 6
    run = tmp_path / "run"
    assert ModelInfo.read(run / "model.json").epoch == 1
    assert _all_finite(load_file(run / "best.safetensors"))
    last = load_last(run / "last.pt")
    assert _all_finite(last["model"]) and last["global_step"] <= STEPS + 1


def test_skip_nonfinite_skips_and_counts_the_steps(tiny_folder, tmp_path):
    lines, steps = [], []
    cfg = small_config(tiny_folder, tmp_path / "run", **{"train.skip_nonfinite": True})
    run = _run(cfg, nan_at={2, STEPS + 3})
    run.log = lines.append
    run.optimizer.register_step_post_hook(lambda *_: steps.append(1))
    result = fit(run)
    assert len(steps) == 2 * STEPS - 2  # optimizer.step() never ran for the two NaN losses
    assert sum("1 optimizer step(s) skipped for a non-finite loss" in ln for ln in lines) == 2
    assert result.best_epoch >= 1 and _all_finite(load_file(tmp_path / "run" / "best.safetensors"))
    assert _all_finite(load_last(tmp_path / "run" / "last.pt")["model"])
    # the skipped steps' losses stay out of the epoch's train/loss
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert all(math.isfinite(float(r["train/loss"])) for r in rows)


def test_epoch_with_no_finite_step_logs_nan_and_says_so(tiny_folder, tmp_path):
    lines = []
    cfg = small_config(tiny_folder, tmp_path / "run", **{"train.skip_nonfinite": True, "train.epochs": 2})
    run = _run(cfg, nan_at=set(range(STEPS + 1, 2 * STEPS + 1)))  # every step of epoch 2
    run.log = lines.append
    fit(run)
    rows = list(csv.DictReader(open(tmp_path / "run" / "metrics.csv")))
    assert math.isfinite(float(rows[0]["train/loss"])) and math.isnan(float(rows[1]["train/loss"]))
    assert any(f"{STEPS} optimizer step(s) skipped" in ln and "train/loss is NaN" in ln for ln in lines)


class _ScoreOverride:
    """Wraps a run's metrics: epoch 1 scores 0.5, epoch 2 scores 0.9 but poisons ``poison`` first."""

    def __init__(self, inner, poison):
        self.inner, self.poison, self.calls = inner, poison, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def compute(self):
        self.calls += 1
        if self.calls == 2:
            with torch.no_grad():
                self.poison()
        return {**self.inner.compute(), "val/f1_macro": 0.5 if self.calls == 1 else 0.9}


@pytest.mark.parametrize("what", ["parameter", "buffer"])
def test_non_finite_model_never_becomes_best(tiny_folder, tmp_path, what):
    """Epoch 2 reports a better score, but its weights (or batch-norm statistics) are NaN: best stays at epoch 1."""
    run = _run(small_config(tiny_folder, tmp_path / "run"))
    target = next(run.model.parameters()) if what == "parameter" else next(
        b for n, b in run.model.named_buffers() if n.endswith("running_mean"))
    run.metrics = _ScoreOverride(run.metrics, lambda: target.fill_(float("nan")))
    result = fit(run)
    assert result.best_epoch == 1 and result.best_metrics["val/f1_macro"] == 0.5
    assert ModelInfo.read(tmp_path / "run" / "model.json").monitor_value == 0.5
    assert _all_finite(load_file(tmp_path / "run" / "best.safetensors"))


class _OutOfMemory(torch.nn.Module):
    def __init__(self, inner, when_training):
        super().__init__()
        self.inner, self.when_training = inner, when_training

    def forward(self, x):
        if self.training == self.when_training:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.inner(x)


@pytest.mark.parametrize("phase", ["training", "validation"])
def test_gpu_out_of_memory_suggests_smaller_batch_with_accumulation(tiny_folder, tmp_path, phase):
    cfg = small_config(tiny_folder, tmp_path / "run", **{"train.batch_size": 16, "train.accumulate": 2})
    run = _run(cfg)
    run.model = _OutOfMemory(run.model, when_training=phase == "training")
    with pytest.raises(UserError) as e:
        fit(run)
    msg = str(e.value)
    assert f"ran out of memory during {phase}" in msg and "train.batch_size=8 train.accumulate=4" in msg
    assert "\n" not in msg


def test_explain_oom_turns_only_out_of_memory_into_advice():
    from imgcls.engine.fit import _explain_oom
    with pytest.raises(UserError, match="train.batch_size=32 train.accumulate=6 .the same effective batch"):
        with _explain_oom(64, 3, "training"):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
    with pytest.raises(RuntimeError, match="other"):  # anything else passes through untouched
        with _explain_oom(64, 3, "training"):
            raise RuntimeError("other")


# ---------------------------------------------------------------- bad images during training

def _digest(root):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def folder_with_bad_images(tmp_path):
    root = make_image_folder(tmp_path / "data", per_class=12)
    (root / "cat" / "empty.png").write_bytes(b"")
    good = (root / "dog" / "dog_000.png").read_bytes()
    (root / "dog" / "cut.png").write_bytes(good[: len(good) // 2])
    (root / "fox" / "notes.jpg").write_text("not an image")
    return root


def test_bad_images_error_names_every_file_before_training(folder_with_bad_images, tmp_path, capsys):
    before = _digest(folder_with_bad_images)
    rc = main(["train", f"data.root={folder_with_bad_images}", f"run.dir={tmp_path / 'run'}",
               "data.image_size=16", "train.progress=false", "run.report=false", "data.num_workers=0"])
    err = capsys.readouterr().err
    assert rc == 2 and "3 unreadable image(s)" in err and "data.on_bad_image=skip" in err
    for name in ("empty.png", "cut.png", "notes.jpg"):
        assert name in err
    assert not (tmp_path / "run").exists()  # found before anything was written
    assert _digest(folder_with_bad_images) == before


def test_bad_images_skip_lists_them_and_trains_on_the_rest(folder_with_bad_images, tmp_path):
    before = _digest(folder_with_bad_images)
    cfg = small_config(folder_with_bad_images, tmp_path / "run", **{"data.on_bad_image": "skip",
                                                                      "train.epochs": 1})
    train(cfg, log=_quiet)
    listed = (tmp_path / "run" / "bad_images.csv").read_text().splitlines()
    assert listed[0] == "path,problem" and sorted(ln.split(",")[0].rsplit("/", 1)[1] for ln in listed[1:]) == [
        "cut.png", "empty.png", "notes.jpg"]
    used = (tmp_path / "run" / "split" / "train.csv").read_text() + (tmp_path / "run" / "split" / "val.csv").read_text()
    assert used.count("\n") == 2 + 36 and "empty.png" not in used and "cut.png" not in used
    assert _digest(folder_with_bad_images) == before
    with open(tmp_path / "run" / "metrics.csv", newline="") as f:
        assert math.isfinite(float(next(csv.DictReader(f))["train/loss"]))


# ---------------------------------------------------------------- fitting the micro-batch (GPU out of memory)

class _SmallMemory(torch.nn.Module):
    """Raises CUDA's out-of-memory error for batches over ``limit`` samples, as a small GPU would."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit = limit
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Dropout(0.5),
                                       torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(4, 3))

    def forward(self, x):
        if x.shape[0] > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
        return self.net(x)


@pytest.mark.parametrize("batch, accumulate, limit, expected", [
    (64, 1, 16, (16, 4)), (64, 2, 64, (64, 2)), (48, 1, 7, (6, 8)), (8, 3, 1, (1, 24))])
def test_fit_micro_batch_halves_and_keeps_the_effective_batch(batch, accumulate, limit, expected):
    from imgcls.engine.loop import fit_micro_batch
    model = _SmallMemory(limit)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    micro, acc = fit_micro_batch(model, torch.nn.CrossEntropyLoss(), opt, device=torch.device("cpu"),
                                 image_shape=(3, 8, 8), num_classes=3, batch_size=batch, accumulate=accumulate)
    assert (micro, acc) == expected and micro * acc == batch * accumulate
    # The probe step left no trace: weights, BN statistics, optimizer state and the RNG as they were.
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert opt.state_dict()["state"] == {} and all(p.grad is None for p in model.parameters())
    assert torch.equal(torch.get_rng_state(), rng)


def test_fit_micro_batch_gives_up_with_advice():
    from imgcls.engine.loop import fit_micro_batch
    model = _SmallMemory(2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(UserError, match="not even a micro-batch of 3 fits in GPU memory"):
        fit_micro_batch(model, torch.nn.CrossEntropyLoss(), opt, device=torch.device("cpu"), image_shape=(3, 8, 8),
                        num_classes=3, batch_size=12)
