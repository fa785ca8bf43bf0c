"""Device, precision and seeding: one place that knows which device a name means, how a precision
runs (one autocast context) and how every random generator is seeded, saved and restored."""
from __future__ import annotations

import contextlib
import os
import random

import numpy as np
import torch

from .errors import UserError


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str, key: str = "train.device") -> torch.device:
    """``auto`` -> cuda, else mps, else cpu; an unavailable device is one sentence naming ``key``."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if _mps_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"{key} is '{name}' but no CUDA GPU is visible; use {key}=auto or cpu.")
    if name == "mps" and not _mps_available():
        raise UserError(f"{key} is 'mps' but Apple MPS is not available; use {key}=auto or cpu.")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda", "mps"):  # 'meta' builds no real tensors
        raise UserError(f"{key} '{name}' is not a device; use auto, cpu, cuda, cuda:N or mps.")
    return device


def channels_last(device: torch.device | str) -> bool:
    """Whether convolution nets run in NHWC (channels_last) on ``device``: on CUDA it is what cuDNN's
    fastest kernels and tensor cores want; on the CPU oneDNN's NHWC kernels measured 1.0-1.45x faster
    (small_cnn at 28 px, resnet18 and efficientnet_b0 at 64-128 px, training and eval; never slower).
    Not on Apple MPS, where it is untested."""
    return torch.device(device).type in ("cuda", "cpu")


def place_model(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """``model`` on ``device``, laid out channels_last where ``channels_last(device)`` says so."""
    model = model.to(device)
    return model.to(memory_format=torch.channels_last) if channels_last(device) else model


def autocast_context(device: torch.device, precision: str):
    """One precision context for the whole step: fp32 (no-op), bf16 or fp16 autocast."""
    if precision == "32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def accumulator_dtype(device: torch.device) -> torch.dtype:
    """float64 for sums over a whole epoch, except on Apple MPS, which has no float64."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict:
    """Every generator's state as plain values and tensors (loads with ``weights_only=True``)."""
    py = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [py[0], list(py[1]), py[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    v, internal, gauss = state["python"]
    random.setstate((v, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
