"""The training process, explicit: one function trains an epoch, one validates.

``train_epoch`` is the course's five steps in order, plus gradient accumulation:

    model.train(); optimizer.zero_grad(); loss = criterion(model(x), y); loss.backward(); optimizer.step()

The knobs fixed for a run live in ``StepConfig``; what turns a loader batch into model input lives in
``BatchPrep`` (imgcls.data.prep); where the run stands lives in ``EpochState``. EMA and similar
additions hook in through ``on_step``; DDP's gradient sync through the wrapped model: with
``StepConfig.world`` processes each micro-batch's loss is weighted by its share of the *global*
window times the world size (DDP averages gradients over processes), and non-stepping micro-batches
run inside ``no_sync()``, so N processes x batch B step exactly as one process with batch N*B.
"""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Callable, Iterable, Optional, Sequence

import torch
from torch import nn

from ..data.prep import BatchPrep
from ..device import accumulator_dtype, autocast_context
from ..errors import UserError


@dataclass(frozen=True)
class StepConfig:
    """What every optimizer step of a run does the same way."""
    batch_sizes: tuple[int, ...]        # global micro-batch sizes of one epoch, in order (see window_sizes)
    accumulate: int = 1                 # micro-batches per optimizer step
    precision: str = "32"               # 32 | bf16 | 16 (16 scales the loss with a GradScaler)
    clip_grad: Optional[float] = None   # max global gradient norm; None = off
    skip_nonfinite: bool = False        # skip (and count) a step whose loss is NaN/inf, instead of stopping
    check_every: int = 0                # also check for a non-finite loss every N steps (the checkpoint cadence)
    world: int = 1                      # data-parallel processes (torchrun); their shards make up each batch


@dataclass
class EpochState:
    """Where training stands: the epoch, the optimizer steps so far, and the running sums of the epoch.

    ``train_epoch`` writes every field but ``epoch``, which only ``next_epoch`` advances. Saved in
    last.pt (also mid-epoch), so a resume continues exactly.
    """
    epoch: int = 0                        # 0-based index of the epoch being trained
    global_step: int = 0                  # optimizer steps since the run began
    batches_done: int = 0                 # micro-batches consumed this epoch
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    samples: int = 0                      # samples behind loss_sum (skipped steps excluded)
    skipped_steps: int = 0                # optimizer steps skipped for a non-finite loss

    @property
    def mean_loss(self) -> float:
        """train/loss: NaN when no step of the epoch was finite."""
        return (self.loss_sum / self.samples).item() if self.samples else float("nan")

    def next_epoch(self) -> None:
        self.epoch += 1
        self.batches_done, self.samples, self.skipped_steps = 0, 0, 0
        self.loss_sum = torch.zeros((), dtype=torch.float64)


class NonFiniteLoss(UserError):
    pass


def window_sizes(batch_sizes: Sequence[int], accumulate: int) -> list[int]:
    """Samples in the accumulation window of each micro-batch (the last window may be partial)."""
    out = []
    for start in range(0, len(batch_sizes), accumulate):
        w = batch_sizes[start:start + accumulate]
        out += [sum(w)] * len(w)
    return out


def train_epoch(model: nn.Module, loader: Iterable, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler, step: StepConfig, prep: BatchPrep, state: EpochState,
                scaler: torch.amp.GradScaler, on_step: Optional[Callable[[EpochState], bool]] = None) -> EpochState:
    """Train one epoch, or its remainder from ``state.batches_done``; ``loader`` yields what is left.

    Each micro-batch's loss is weighted by its share of its accumulation window, so every window,
    a partial last one included, equals one large batch of its actual size. ``scaler`` is a
    GradScaler, enabled only for precision 16 (a no-op otherwise). ``on_step(state)`` runs after each
    optimizer step; returning True stops the epoch there. The loss is checked for NaN/inf every 50
    optimizer steps, every ``step.check_every`` steps and at the end (one host sync each, not per step).
    """
    device, acc = prep.device, accumulator_dtype(prep.device)
    n_batches = len(step.batch_sizes)
    windows = window_sizes(step.batch_sizes, step.accumulate)
    state.loss_sum = state.loss_sum.to(device, acc)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # checked without a per-step sync
    window_loss = torch.zeros((), dtype=acc, device=device)  # joins the epoch's sum at the step
    window_n = 0
    model.train()
    optimizer.zero_grad(set_to_none=True)
    prep.epoch = state.epoch  # the batched augmentation's per-sample draws: (seed, epoch, index)
    for images, targets, index in loader:
        j = state.batches_done  # this micro-batch's index in the epoch
        stepping = (j + 1) % step.accumulate == 0 or j + 1 == n_batches
        x, y = prep(images, targets, index)  # on the device, normalised, augmented; MixUp/CutMix: y probabilities
        n = images.shape[0]
        with _no_sync(model, stepping):  # DDP: gradients are all-reduced only at the window's last micro-batch
            with autocast_context(device, step.precision):
                output = model(x)                            # forward
                loss = criterion(output.float(), y)          # loss = criterion(output, labels)
            scaler.scale(loss * (n * step.world / windows[j])).backward()  # loss.backward(), by window share
        window_loss += loss.detach().to(acc) * n
        window_n += n
        state.batches_done += 1
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()), state.global_step, first_bad)
        if not stepping:
            continue  # still inside the accumulation window

        if step.skip_nonfinite and int(_across(first_bad, step.world)) >= 0:  # a host sync per step, when asked
            state.skipped_steps += 1  # its loss stays out of train/loss
            first_bad.fill_(-1)
        else:
            state.loss_sum += window_loss
            state.samples += window_n
            if step.clip_grad:
                scaler.unscale_(optimizer)                   # true gradients before clipping
                nn.utils.clip_grad_norm_(model.parameters(), step.clip_grad)
            scaler.step(optimizer)                           # optimizer.step()
            scaler.update()
        optimizer.zero_grad(set_to_none=True)                # optimizer.zero_grad() for the next window
        window_loss.zero_()
        window_n = 0
        state.global_step += 1
        scheduler.step_update(state.global_step)  # the LR of the next optimizer step
        s = state.global_step
        if not step.skip_nonfinite and (s % 50 == 0 or j + 1 == n_batches
                                        or (step.check_every and s % step.check_every == 0)):
            _raise_if_nonfinite(first_bad, state.epoch, step.world)
        if on_step is not None and on_step(state):
            break
    if not step.skip_nonfinite:
        _raise_if_nonfinite(first_bad, state.epoch, step.world)
    return state


def _no_sync(model: nn.Module, stepping: bool):
    no_sync = getattr(model, "no_sync", None)  # DistributedDataParallel's
    return no_sync() if (no_sync is not None and not stepping) else contextlib.nullcontext()


def _across(first_bad: torch.Tensor, world: int) -> torch.Tensor:
    """The latest bad step of any process (-1: none), so every process decides a skip or stop alike."""
    if world > 1:
        first_bad = first_bad.clone()
        torch.distributed.all_reduce(first_bad, op=torch.distributed.ReduceOp.MAX)
    return first_bad


def _raise_if_nonfinite(first_bad: torch.Tensor, epoch: int, world: int = 1) -> None:
    step = int(_across(first_bad, world))
    if step >= 0:
        raise NonFiniteLoss(f"the loss became NaN or infinite at epoch {epoch + 1}, optimizer step {step + 1}; "
                            "lower optim.lr, set optim.clip_grad, or set train.skip_nonfinite=true.")


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    return logits.float().softmax(dim=1)


@torch.inference_mode()
def validate(model: nn.Module, loader: Iterable, criterion: Optional[nn.Module], metrics, prep: BatchPrep, *,
             precision: str = "32", probabilities: Callable = _softmax, dist=None
             ) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """Inference on held-out data under model.eval(), no gradients: (scalars, details,
    probabilities [N, K] on the CPU, dataset indices [N]). ``probabilities`` is the task's.

    Under data parallelism (``dist`` active) each process runs its shard (nothing padded); the
    outputs of all are gathered and the metrics computed over every validation sample exactly once,
    in dataset order, identically on every process."""
    model.eval()
    metrics.reset()
    if dist is not None and dist.active:
        return _validate_gathered(model, loader, criterion, metrics, prep, precision, probabilities, dist)
    probs, indices = [], []
    acc = accumulator_dtype(prep.device)
    for images, targets, idx in loader:
        x = prep.images(images)
        y = targets.to(prep.device, non_blocking=True)
        with autocast_context(prep.device, precision):
            logits = model(x).float()
        loss = criterion(logits, y) if criterion is not None else None
        # the loss stays on the device: no host sync per batch for it
        metrics.update(logits, y, None if loss is None else loss.detach().to(acc) * len(y))
        probs.append(probabilities(logits).cpu())
        indices.append(idx)
    return metrics.compute(), metrics.details(), torch.cat(probs), torch.cat(indices)


def _validate_gathered(model, loader, criterion, metrics, prep, precision, probabilities, dist):
    outs = []
    for images, targets, idx in loader:
        with autocast_context(prep.device, precision):
            logits = model(prep.images(images)).float()
        outs.append((logits.cpu(), targets.cpu(), idx.cpu()))
    parts = [o for rank_outs in dist.gather_objects(outs) for o in rank_outs]
    return score_outputs(parts, criterion, metrics, prep.device, probabilities)


def score_outputs(parts: Sequence[tuple], criterion: Optional[nn.Module], metrics, device: torch.device,
                  probabilities: Callable = _softmax) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """The metrics over validation outputs gathered from every process, ``parts`` being (logits,
    targets, dataset indices) batches in any order: each sample counted once, in dataset order.
    Returns what ``validate`` returns."""
    metrics.reset()
    logits, targets, idx = (torch.cat([p[k] for p in parts]) for k in range(3))
    order = idx.argsort()
    logits, targets, idx = logits[order], targets[order], idx[order]
    acc = accumulator_dtype(device)
    probs = []
    for start in range(0, len(idx), 1024):
        lg = logits[start:start + 1024].to(device)
        y = targets[start:start + 1024].to(device)
        loss = criterion(lg, y) if criterion is not None else None
        metrics.update(lg, y, None if loss is None else loss.detach().to(acc) * len(y))
        probs.append(probabilities(lg).cpu())
    return metrics.compute(), metrics.details(), torch.cat(probs), idx


def fit_micro_batch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, *,
                    device: torch.device, image_shape: Sequence[int], num_classes: int, batch_size: int,
                    accumulate: int = 1, precision: str = "32") -> tuple[int, int]:
    """The largest micro-batch ``batch_size / 2**k`` whose training step fits in GPU memory.

    Returns (micro_batch, accumulate'), with micro_batch * accumulate' == batch_size * accumulate:
    the effective batch, and so the learning dynamics, stay those configured. Each probe is a
    full step on random data (forward, backward, optimizer.step, which allocates the optimizer
    state: part of the peak); the model, optimizer and RNG states are restored afterwards.
    """
    saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
    saved_optim = copy.deepcopy(optimizer.state_dict())  # empty state before training: cheap
    cpu_rng = torch.get_rng_state()
    cuda_rng = torch.cuda.get_rng_state_all() if device.type == "cuda" else None
    micro = batch_size
    try:
        while True:
            try:
                x = torch.randn(micro, *image_shape, device=device)
                y = torch.randint(0, num_classes, (micro,), device=device)
                model.train()
                with autocast_context(device, precision):
                    loss = criterion(model(x).float(), y)
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                return micro, accumulate * (batch_size // micro)
            except torch.cuda.OutOfMemoryError:
                x = y = loss = None  # drop the references before freeing the cache
                optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                if micro % 2:
                    raise UserError(f"not even a micro-batch of {micro} fits in GPU memory; lower data.image_size, "
                                    "use train.precision=bf16, or pick a smaller model.") from None
                micro //= 2
    finally:
        model.load_state_dict(saved_model)
        optimizer.load_state_dict(saved_optim)
        optimizer.zero_grad(set_to_none=True)
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
