"""Options of a run end to end, one short epoch each: sampler, class weights, MixUp, bf16, early stop."""
from __future__ import annotations

import csv

import pytest
import torch

from imgcls import train

from conftest import small_config


def _rows(run_dir):
    return list(csv.DictReader(open(run_dir / "metrics.csv")))


def _build(tiny_folder, tmp_path, **overrides):
    from imgcls.engine import build_run
    return build_run(small_config(tiny_folder, tmp_path / "run", **{"train.epochs": 1, **overrides}),
                     log=lambda *a: None)


def _one_batch(run):
    run.sampler.set_epoch(0)
    images, labels, _ = next(iter(run.train_loader))
    return images, labels


@pytest.fixture(scope="module")
def imbalanced_folder(tmp_path_factory):
    from conftest import make_image_folder
    root = tmp_path_factory.mktemp("imb") / "images"
    make_image_folder(root, per_class=40, classes=("cat",))
    make_image_folder(root, per_class=8, classes=("dog", "fox"), seed=1)
    return root


@pytest.mark.parametrize("sampler", ["random", "balanced"])
def test_balanced_sampler_draws_classes_about_equally(imbalanced_folder, tmp_path, sampler):
    import numpy as np
    run = _build(imbalanced_folder, tmp_path, **{"data.sampler": sampler})
    labels = np.asarray(run.split.train.labels)
    drawn = np.concatenate([labels[b] for e in range(30) for b in run.sampler.batches(e)])
    share = np.bincount(drawn, minlength=3) / len(drawn)
    if sampler == "balanced":
        assert np.all(np.abs(share - 1 / 3) < 0.05), share
    else:  # each sample once per epoch: the data's own 40:8:8
        assert share == pytest.approx(np.bincount(labels, minlength=3) / len(labels))


def test_class_weights_change_the_loss_by_the_expected_factor(imbalanced_folder, tmp_path):
    import torch.nn.functional as F
    logits, y = torch.randn(12, 3, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2] * 4)
    plain = _build(imbalanced_folder, tmp_path / "a").criterion
    explicit = _build(imbalanced_folder, tmp_path / "b", **{"loss.class_weights": [1.0, 3.0, 0.5]}).criterion
    balanced = _build(imbalanced_folder, tmp_path / "c", **{"loss.class_weights": "balanced"})
    w = torch.tensor([1.0, 3.0, 0.5])
    assert plain(logits, y).item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)
    assert explicit(logits, y).item() == pytest.approx(F.cross_entropy(logits, y, weight=w).item(), rel=1e-6)
    per_sample = F.cross_entropy(logits, y, reduction="none")
    assert explicit(logits, y).item() == pytest.approx(((w[y] * per_sample).sum() / w[y].sum()).item(), rel=1e-6)
    counts = torch.tensor(balanced.split.counts("train"), dtype=torch.float32)
    expected = (1 / counts) / (1 / counts).mean()  # inverse frequency, mean 1
    torch.testing.assert_close(balanced.criterion.class_weights, expected)
    assert balanced.criterion.class_weights[0] < balanced.criterion.class_weights[1]  # the common class counts less


@pytest.mark.parametrize("mix", [{"data.mixup": 0.4}, {"data.cutmix": 1.0}])
def test_mixup_and_cutmix_turn_labels_into_mixed_targets(tiny_folder, tmp_path, mix):
    run = _build(tiny_folder, tmp_path, **mix)
    images, labels = _one_batch(run)
    torch.manual_seed(0)
    x, y = run.prep(images, labels)
    assert y.shape == (len(labels), 3) and y.is_floating_point()
    torch.testing.assert_close(y.sum(1), torch.ones(len(labels)))
    assert (y.max(1).values < 1).any()  # some rows really are mixtures of two classes
    plain_x, plain_y = _build(tiny_folder, tmp_path / "plain").prep(images, labels)
    assert torch.equal(plain_y, labels) and not torch.allclose(x, plain_x)


def _grad_norms(run):
    """Total gradient norm seen by each optimizer step (after any clipping)."""
    norms = []
    run.optimizer.register_step_pre_hook(lambda opt, *_: norms.append(float(torch.linalg.vector_norm(
        torch.stack([p.grad.norm() for g in opt.param_groups for p in g["params"] if p.grad is not None])))))
    return norms


def test_clipping_bounds_the_gradient_norm(tiny_folder, tmp_path):
    from imgcls.engine import fit
    clipped = _build(tiny_folder, tmp_path / "a", **{"optim.clip_grad": 0.05})
    free = _build(tiny_folder, tmp_path / "b")
    seen_clipped, seen_free = _grad_norms(clipped), _grad_norms(free)
    fit(clipped), fit(free)
    assert max(seen_clipped) <= 0.05 * (1 + 1e-4)
    assert min(seen_free) > 0.05  # the bound really bit


@pytest.mark.slow
def test_bf16_runs_the_forward_in_bf16(tiny_folder, tmp_path):
    from imgcls.engine import fit
    dtypes = {}
    for precision in ("32", "bf16"):
        run = _build(tiny_folder, tmp_path / precision, **{"train.precision": precision})
        conv = next(m for m in run.model.modules() if isinstance(m, torch.nn.Conv2d))
        seen = dtypes.setdefault(precision, set())
        conv.register_forward_hook(lambda m, i, o, seen=seen: seen.add((m.training, o.dtype)))
        fit(run)
    assert dtypes["bf16"] == {(True, torch.bfloat16), (False, torch.bfloat16)}
    assert dtypes["32"] == {(True, torch.float32), (False, torch.float32)}


@pytest.mark.parametrize("preset", ["none", "digits", "light", "default", "strong"])
def test_augment_presets_change_pixels_as_they_say(preset):
    from imgcls.data.transforms import get_preset, train_transform
    g = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8, generator=g)
    img[:, :, :10] //= 4  # left half dark: a flip is visible
    transform = train_transform(preset, 20, 3)
    outs = []
    for i in range(8):
        torch.manual_seed(i)
        outs.append(transform(img))
    assert all(o.shape == (3, 20, 20) and o.dtype == torch.uint8 for o in outs)
    changed = sum(not torch.equal(o, img) for o in outs)
    if preset == "none":
        assert changed == 0  # resize to the same size and centre crop: the pixels as they were
    else:
        assert changed >= 6
    if not get_preset(preset).allows_flip:
        assert not any(torch.equal(o, img.flip(-1)) for o in outs)


@pytest.mark.slow
def test_early_stopping(tiny_folder, tmp_path):
    # lr 1e-12: nothing improves after epoch 1, so patience 2 stops after epoch 3 of 6
    cfg = small_config(tiny_folder, tmp_path / "run", **{"train.epochs": 6, "train.patience": 2,
                                                         "optim.lr": 1e-12, "sched.name": "none"})
    lines = []
    res = train(cfg, log=lines.append)
    assert res.stopped == "early" and res.best_epoch == 1
    assert len(_rows(res.run_dir)) == 3
    assert any("early stopping" in l for l in lines)


@pytest.mark.slow
def test_monitor_direction_picks_lowest_loss(tiny_folder, tmp_path):
    cfg = small_config(tiny_folder, tmp_path / "run", **{"train.epochs": 3, "train.monitor": "val/loss"})
    res = train(cfg, log=lambda *a: None)
    losses = [float(r["val/loss"]) for r in _rows(res.run_dir)]
    assert res.best_epoch == 1 + losses.index(min(losses))


@pytest.mark.slow
def test_no_data_trains_on_the_demo(tmp_path, monkeypatch):
    """`imgcls train` with nothing configured materialises the demo once into $IMGCLS_CACHE."""
    import os
    from pathlib import Path
    from imgcls.config import load_config
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/demo.yaml",
                      ["train.epochs=1", "train.progress=false", f"run.dir={tmp_path / 'run'}",
                       "data.val_fraction=0.5", "data.num_workers=0", "train.batch_size=256", "run.report=false",
                       "train.ema=null"])  # 16 steps: the demo's EMA would still be mostly the initial weights
    lines = []
    res = train(cfg, log=lines.append)
    assert "MNIST-5k demo" in lines[0]
    cache = Path(os.environ["IMGCLS_CACHE"])
    assert str(cache) in lines[0]
    assert sum(1 for _ in (cache / "demo" / "mnist5k" / "train").rglob("*.png")) == 4000
    assert res.best_metrics["val/acc"] > 0.2  # chance is 0.1 after one short epoch


def test_batch_size_auto_needs_a_gpu(tiny_folder, tmp_path):
    import torch
    from imgcls.errors import UserError
    cfg = small_config(tiny_folder, tmp_path / "run", **{"train.batch_size": "auto", "train.device": "cpu"})
    with pytest.raises(UserError, match="train.batch_size=auto probes GPU memory"):
        train(cfg, log=lambda *a: None)
    with pytest.raises(UserError, match="must be a number or auto"):
        cfg.replace(**{"train.batch_size": "big"})


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA GPU")
def test_batch_size_auto_on_gpu_keeps_the_effective_batch(tiny_folder, tmp_path):
    import torch
    cfg = small_config(tiny_folder, tmp_path / "run", **{"train.batch_size": "auto", "train.accumulate": 2,
                                                         "train.epochs": 1})
    lines = []
    res = train(cfg, log=lines.append)
    line = next(l for l in lines if "train.batch_size=auto" in l)
    assert "effective batch 512" in line
    last = torch.load(res.run_dir / "last.pt", weights_only=True)
    assert last["batch_size"] * last["accumulate"] == 512


@pytest.mark.slow
def test_plateau_gets_the_monitored_value_even_for_train_loss(tiny_folder, tmp_path):
    from imgcls.engine import fit
    run = _build(tiny_folder, tmp_path, **{"sched.name": "plateau", "train.monitor": "train/loss", "train.epochs": 2})
    seen, step_epoch = [], run.scheduler.step_epoch
    run.scheduler.step_epoch = lambda v: (seen.append(v), step_epoch(v))
    fit(run)
    rows = _rows(tmp_path / "run")
    assert seen == pytest.approx([float(r["train/loss"]) for r in rows])
