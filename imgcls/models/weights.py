"""Local weights files: read (safetensors, .pth, .bin; training checkpoints unwrapped) and loaded strictly,
with timm's rules for the classifier head and the first convolution."""
from __future__ import annotations

import os
from pathlib import Path

import timm
import torch
from torch import nn

from ..errors import UserError, first_sentence


PREFIXES = ("module.", "backbone.", "model.", "encoder.", "net.", "_orig_mod.")  # what training scripts wrap with


def _read_state(path: Path, name: str) -> dict:
    if not path.is_file():
        raise UserError(f"model.pretrained file '{path}' does not exist; pass the path of a local "
                        "weights file (.safetensors, .pth or .bin).")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # belt and braces: never reach for a hub
    try:
        state = timm.models.load_state_dict(str(path))
    except Exception as e:  # torch/safetensors raise many kinds for a file that is not weights
        raise UserError(f"model.pretrained file '{path}' cannot be read as weights ({first_sentence(e)}); "
                        "pass a .safetensors, .pth or .bin state dict.") from None
    for key in ("state_dict", "model", "model_state_dict"):  # a training checkpoint around the weights
        if isinstance(state.get(key), dict):
            state = state[key]
    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _strip_prefix(state: dict, expected: set) -> dict:
    """Remove a wrapper prefix (module., backbone., ...) when that makes the keys match the model's."""
    best = state
    for _ in range(3):  # nested wrappers, e.g. module.model.
        if len(set(best) & expected) == len(best):
            break
        for prefix in PREFIXES:
            if best and all(k.startswith(prefix) for k in best):
                best = {k[len(prefix):]: v for k, v in best.items()}
                break
        else:
            break
    return best


def load_pretrained_file(model: nn.Module, path: Path, name: str, log=None) -> None:
    """Load local weights strictly: every tensor must match, except the classifier head (kept at its
    fresh initialisation when its class count differs) and the first convolution (adapted when the
    channel count differs). Anything else missing, unexpected or mis-shaped is one sentence."""
    from timm.models import adapt_input_conv
    cfg = getattr(model, "pretrained_cfg", None) or {}
    heads = cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)
    first = cfg.get("first_conv")
    first_w = f"{first}.weight" if isinstance(first, str) else None
    expected = model.state_dict()
    state = _strip_prefix(_read_state(path, name), set(expected))
    is_head = lambda k: any(k == h or k.startswith(h + ".") for h in heads)  # noqa: E731
    head_reset = False
    notes = []
    if first_w in state and first_w in expected and state[first_w].shape != expected[first_w].shape \
            and state[first_w].shape[0] == expected[first_w].shape[0]:
        notes.append(f"first conv {first} adapted: {state[first_w].shape[1]} -> {expected[first_w].shape[1]} "
                     "input channel(s)")
        state[first_w] = adapt_input_conv(expected[first_w].shape[1], state[first_w])
    old_classes = None
    for k in [k for k in state if is_head(k)]:
        if k not in expected or state[k].shape != expected[k].shape:
            old_classes = state[k].shape[0] if k.endswith(".weight") else old_classes
            del state[k]
            head_reset = True
    missing = [k for k in expected if k not in state and not is_head(k)]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and state[k].shape != expected[k].shape]
    if missing or unexpected or wrong:
        shown = ", ".join(repr(k) for k in (wrong + missing + unexpected)[:4])
        raise UserError(f"model.pretrained file '{path}' does not fit model '{name}': {len(missing)} missing, "
                        f"{len(unexpected)} unexpected and {len(wrong)} mis-shaped tensor(s) (e.g. {shown}); "
                        "pass weights saved from that architecture.")
    head_reset = head_reset or any(is_head(k) and k not in state for k in expected)
    model.load_state_dict(state, strict=False)
    if log is not None:
        n_head = getattr(model, "num_classes", None)
        if head_reset:
            notes.append(f"head {'/'.join(heads)} re-initialised: "
                         f"{old_classes if old_classes is not None else 'no'} -> {n_head} classes")
        log(f"loaded {len(state)} tensors from {path}" + "".join(f"; {n}" for n in notes))

