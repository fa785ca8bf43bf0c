"""The loop's counters: accumulation windows, the partial last window, scheduler steps per epoch."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from imgcls.data.dataset import EpochBatchSampler
from imgcls.data.prep import BatchPrep
from imgcls.engine.loop import EpochState, StepConfig, train_epoch, validate, window_sizes
from imgcls.losses import create_loss
from imgcls.metrics import ClassificationMetrics
from imgcls.optim import create_optimizer, create_scheduler, get_lr

N, C, H, K = 70, 1, 4, 5
MEAN, STD = [0.5], [0.25]
PREP = BatchPrep("cpu", MEAN, STD)
SCALER = torch.amp.GradScaler("cpu", enabled=False)  # precision 32: a no-op, as in a run


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (N, C, H, H), generator=g, dtype=torch.uint8)
    y = torch.randint(0, K, (N,), generator=g)
    return x, y


def _loader(x, y, sampler, epoch):
    """What a DataLoader over ImageDataset yields: (uint8 images, labels, indices) per batch."""
    for b in sampler.batches(epoch):
        idx = torch.tensor(b)
        yield x[idx], y[idx], idx


def _model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(C * H * H, 16), nn.Tanh(), nn.Linear(16, K))  # no batch norm


def _train(batch_size, accumulate, epochs=2, optim="sgd", sched="none"):
    x, y = _data()
    model = _model()
    opt = create_optimizer(model, optim, 0.1, weight_decay=0.01)
    sampler = EpochBatchSampler(N, batch_size, seed=3)
    steps = math.ceil(len(sampler) / accumulate)
    sch = create_scheduler(opt, sched, epochs=epochs, steps_per_epoch=steps, warmup_epochs=0.5 if sched == "cosine" else 0)
    crit = create_loss("cross_entropy", K)
    lrs = []
    step = StepConfig(tuple(len(b) for b in sampler.batches(0)), accumulate)
    state = EpochState()

    def record(st):
        lrs.append(get_lr(opt))
        return False

    for epoch in range(epochs):
        train_epoch(model, _loader(x, y, sampler, epoch), crit, opt, sch, step, PREP, state, SCALER, record)
        state.next_epoch()
    return model, state.global_step, lrs


@pytest.mark.parametrize("optim", ["sgd", "adamw"])
def test_accumulation_equals_large_batch(optim):
    # 70 samples: batch 32 -> windows of 32, 32, 6; batch 8 x 4 -> the same windows, the last one partial.
    big, steps_big, _ = _train(32, 1, optim=optim)
    acc, steps_acc, _ = _train(8, 4, optim=optim)
    assert steps_big == steps_acc == 6
    for p, q in zip(big.parameters(), acc.parameters()):
        torch.testing.assert_close(p, q, atol=1e-6, rtol=0)
    # and accumulation really changed something vs. stepping every micro-batch
    plain, steps_plain, _ = _train(8, 1, optim=optim)
    assert steps_plain == 18
    assert not torch.allclose(next(plain.parameters()), next(big.parameters()), atol=1e-4)


def test_scheduler_steps_once_per_optimizer_step():
    _, steps, lrs = _train(8, 4, epochs=2, sched="cosine")
    assert steps == 6 and len(lrs) == 6
    # cosine over 2 epochs, 3 optimizer steps per epoch, half an epoch of warmup (1.5 steps)
    spe, w, E = 3, 0.5, 2
    expected = []
    for n in range(1, 7):
        t = n / spe
        if t < w:
            expected.append(0.1 * min(1.0, (n + 1) / (w * spe)))
        else:
            expected.append(0.5 * 0.1 * (1 + math.cos(math.pi * min(t - w, E - w) / (E - w))))
    assert lrs == pytest.approx(expected, abs=1e-12)


def test_window_sizes_partial_last_window():
    assert window_sizes([8] * 9, 4) == [32] * 8 + [8]
    assert window_sizes([8, 8, 6], 2) == [16, 16, 6]
    assert window_sizes([5], 3) == [5]


def test_sampler_partial_and_merged_last_batch():
    s = EpochBatchSampler(33, 8, seed=0)
    sizes = [len(b) for b in s.batches(0)]
    assert sizes == [8, 8, 8, 9]  # a last batch of 1 is merged: batch norm cannot train on one sample
    assert len(s) == 4
    s = EpochBatchSampler(30, 8, seed=0)
    assert [len(b) for b in s.batches(0)] == [8, 8, 8, 6] and len(s) == 4
    every = sorted(i for b in s.batches(1) for i in b)
    assert every == list(range(30))  # a permutation: each sample once per epoch
    assert s.batches(0) != s.batches(1)  # a new order each epoch
    assert s.batches(1) == EpochBatchSampler(30, 8, seed=0).batches(1)  # ... from (seed, epoch) alone
    s.set_epoch(1, start_batch=2)
    assert [[i for _, i in b] for b in s] == s.batches(1)[2:]


def test_balanced_sampler_draws_classes_equally():
    from imgcls.data.dataset import balanced_weights
    labels = [0] * 90 + [1] * 10
    s = EpochBatchSampler(100, 10, seed=0, weights=balanced_weights(labels, 2))
    drawn = [labels[i] for e in range(20) for b in s.batches(e) for i in b]
    assert 0.45 < sum(drawn) / len(drawn) < 0.55


def test_nonfinite_loss_stops_with_epoch_and_step():
    from imgcls.engine.loop import NonFiniteLoss
    x, y = _data()
    x = x.float()
    model = _model()
    with torch.no_grad():
        model[1].weight.fill_(float("nan"))
    opt = create_optimizer(model, "sgd", 0.1)
    sampler = EpochBatchSampler(N, 16, seed=0)
    sch = create_scheduler(opt, "none", epochs=1, steps_per_epoch=len(sampler))
    step = StepConfig(tuple(len(b) for b in sampler.batches(0)))
    with pytest.raises(NonFiniteLoss, match="epoch 3, optimizer step 1"):
        train_epoch(model, _loader(x.to(torch.uint8), y, sampler, 0), create_loss("cross_entropy", K), opt, sch,
                    step, PREP, EpochState(epoch=2), SCALER)


def test_validate_matches_direct_computation():
    x, y = _data()
    model = _model().eval()
    sampler = EpochBatchSampler(N, 16, seed=0, shuffle=False)
    metrics = ClassificationMetrics(K, [str(k) for k in range(K)])
    crit = create_loss("cross_entropy", K)
    scalars, details, probs, idx = validate(model, _loader(x, y, sampler, 0), crit, metrics, PREP)
    from imgcls.data.transforms import normalize
    with torch.no_grad():
        logits = model(normalize(x, MEAN, STD))
    torch.testing.assert_close(probs, logits.softmax(1))
    assert idx.tolist() == list(range(N))
    assert scalars["val/loss"] == pytest.approx(nn.functional.cross_entropy(logits, y).item(), rel=1e-5)
    assert scalars["val/acc"] == pytest.approx((logits.argmax(1) == y).float().mean().item())
    assert not model.training
