"""The training process, explicit: one function trains an epoch, one validates."""
from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from tqdm import tqdm

from ..data.transforms import normalize
from ..errors import UserError
from ..metrics import accumulator_dtype


@dataclass
class EpochState:
    """Progress inside one epoch; saved in mid-epoch checkpoints so a resume continues exactly."""
    batches_done: int = 0                 # micro-batches consumed this epoch
    loss_sum: torch.Tensor = field(default_factory=lambda: torch.zeros((), dtype=torch.float64))
    samples: int = 0
    skipped_steps: int = 0                # optimizer steps skipped for a non-finite loss


class NonFiniteLoss(UserError):
    pass


def autocast_context(device: torch.device, precision: str):
    """One precision context for the whole step: fp32 (no-op), bf16 or fp16 autocast."""
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def window_sizes(batch_sizes: Sequence[int], accumulate: int) -> list[int]:
    """Samples in the accumulation window of each micro-batch (the last window may be partial)."""
    out = []
    for start in range(0, len(batch_sizes), accumulate):
        w = batch_sizes[start:start + accumulate]
        out += [sum(w)] * len(w)
    return out


def train_epoch(model: nn.Module, loader, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                scheduler, *, device: torch.device, mean: Sequence[float], std: Sequence[float],
                batch_sizes: Sequence[int], accumulate: int = 1, precision: str = "32",
                scaler: Optional[torch.amp.GradScaler] = None, clip_grad: Optional[float] = None,
                mix: Optional[Callable] = None, state: Optional[EpochState] = None,
                global_step: int = 0, skip_nonfinite: bool = False, epoch: int = 0,
                after_step: Optional[Callable[[int, EpochState], bool]] = None,
                progress: bool = True, check_every: int = 0) -> tuple[EpochState, int]:
    """Train one epoch (or its remainder, from ``state.batches_done``); returns (state, global_step).

    ``batch_sizes`` are the sizes of the remaining micro-batches, so each micro-batch's loss
    can be weighted by its share of its window's samples: every window, including a partial
    last one, then equals one large batch of its actual size.
    ``after_step(global_step, state)`` runs after each optimizer step; returning True stops early.
    The loss is checked for NaN/inf every 50 optimizer steps, at the end, and every ``check_every``
    steps (the mid-epoch checkpoint cadence, so a non-finite model is never checkpointed).
    """
    state = state or EpochState()
    acc = accumulator_dtype(device)
    state.loss_sum = state.loss_sum.to(device, acc)
    windows = window_sizes(batch_sizes, accumulate)
    first_bad = torch.full((), -1, dtype=torch.long, device=device)  # checked without a per-step sync
    window_loss = torch.zeros((), dtype=acc, device=device)  # joins the epoch's mean at the step
    window_n = 0
    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (mean, std))  # once, not per batch
    model.train()
    optimizer.zero_grad(set_to_none=True)
    bar = tqdm(loader, total=len(batch_sizes), desc=f"epoch {epoch + 1}", leave=False,
               disable=not progress, dynamic_ncols=True)
    for i, (images, labels, _) in enumerate(bar):
        x = normalize(images.to(device, non_blocking=True), mean, std)
        y = labels.to(device, non_blocking=True)
        if mix is not None:
            x, y = mix(x, y)  # MixUp/CutMix: y becomes class probabilities
        with autocast_context(device, precision):
            output = model(x)
            loss = criterion(output.float(), y)
        n = images.shape[0]
        # Weight by share of the window: the sum over the window is the mean over its samples.
        scaled = loss * (n / windows[i])
        (scaler.scale(scaled) if scaler is not None else scaled).backward()
        window_loss += loss.detach().to(acc) * n
        window_n += n
        state.batches_done += 1
        first_bad = torch.where((first_bad < 0) & ~torch.isfinite(loss.detach()),
                                global_step, first_bad)

        if (i + 1) % accumulate and i + 1 != len(batch_sizes):
            continue  # still inside the accumulation window
        if skip_nonfinite and int(first_bad) >= 0:  # a host sync per step, only when asked for
            optimizer.zero_grad(set_to_none=True)
            state.skipped_steps += 1  # its loss stays out of train/loss
            first_bad.fill_(-1)
        else:
            state.loss_sum += window_loss
            state.samples += window_n
            if clip_grad:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
            if scaler is not None:
                scaler.step(optimizer)
                scaler.update()
            else:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        window_loss.zero_()
        window_n = 0
        global_step += 1
        scheduler.step_update(global_step)  # the LR for the next optimizer step
        if progress and global_step % 10 == 0:
            bar.set_postfix(loss=f"{(state.loss_sum / max(state.samples, 1)).item():.4f}")
        if not skip_nonfinite and (global_step % 50 == 0 or i + 1 == len(batch_sizes)
                                   or (check_every and global_step % check_every == 0)):
            _raise_if_nonfinite(first_bad, epoch)
        if after_step is not None and after_step(global_step, state):
            break
    bar.close()
    if not skip_nonfinite:
        _raise_if_nonfinite(first_bad, epoch)
    return state, global_step


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


def _raise_if_nonfinite(first_bad: torch.Tensor, epoch: int) -> None:
    step = int(first_bad)
    if step >= 0:
        raise NonFiniteLoss(f"the loss became NaN or infinite at epoch {epoch + 1}, optimizer step {step + 1}; "
                            "lower optim.lr, set optim.clip_grad, or set train.skip_nonfinite=true.")


@torch.inference_mode()
def validate(model: nn.Module, loader, criterion: nn.Module, metrics, *, device: torch.device,
             mean: Sequence[float], std: Sequence[float], precision: str = "32",
             progress: bool = False) -> tuple[dict, dict, torch.Tensor, torch.Tensor]:
    """Inference on held-out data: returns (scalars, details, probabilities [N,K], dataset indices [N])."""
    model.eval()
    metrics.reset()
    probs, indices = [], []
    mean, std = (torch.as_tensor(v, dtype=torch.float32, device=device) for v in (mean, std))
    for images, labels, idx in tqdm(loader, desc="validate", leave=False, disable=not progress):
        x = normalize(images.to(device, non_blocking=True), mean, std)
        y = labels.to(device, non_blocking=True)
        with autocast_context(device, precision):
            logits = model(x).float()
        loss = criterion(logits, y) if criterion is not None else None
        # the loss stays on the device: no host sync per batch for it
        metrics.update(logits, y, None if loss is None else loss.detach().to(accumulator_dtype(device)) * len(y))
        probs.append(logits.softmax(dim=1).cpu())
        indices.append(idx)
    return metrics.compute(), metrics.details(), torch.cat(probs), torch.cat(indices)
