"""Shared fixtures: a tiny generated image folder and ONE small training run that read-only tests share; and
``assert_facts``/``facts``, which check an error message's facts rather than its wording.

Under pytest-xdist each worker is its own process with its own session: the session fixtures below are made
once per worker, in that worker's own tmp_path_factory folder, so no two workers share a folder or a run.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("cat", "dog", "fox")

# The facts of a message: what a user acts on. Quoted names, paths and commands; key=value hints; bounds (> 0)
# and ranges ([0, 1)); dotted keys (train.epochs) and snake_case names (min_lr); numbers. The prose around
# them may be reworded freely.
_FACT = re.compile(r"""'[^']*'|"[^"]*"|[\w.\[\]/-]+=[^\s,;]+|[<>]=? ?-?\d[\d.e-]*|[\[(]-?\d[^\])]*[\])]"""
                   r"""|\b[a-z_]\w*(?:\.\w+)+\b|\b[a-z]\w*_\w+\b|(?<![\w.])-?\d+(?:\.\d+)?(?:e-?\d+)?(?!\w)""")


def message_facts(sentence: str) -> list[str]:
    """The facts of ``sentence`` (see _FACT), in order; none for a sentence that is all prose."""
    return [f.rstrip(".,;:") if "=" in f or f[0].isdigit() else f for f in _FACT.findall(sentence)]


def assert_facts(message: str, sentence: str) -> None:
    """``message`` holds every fact of ``sentence`` (the key, the value, the hint), in whatever words; a
    sentence with no facts (a hint in plain words) must appear as it stands."""
    found = message_facts(sentence)
    if not found:
        assert sentence in message, f"got: {message}\n  expected to contain: {sentence}"
        return
    missing = [f for f in found if f not in message]
    assert not missing, f"the message lacks {missing}:\n  got:      {message}\n  expected: {sentence}"


def facts(sentence: str) -> str:
    """A ``pytest.raises(match=...)`` pattern: the message holds every fact of ``sentence``, in any order."""
    found = message_facts(sentence) or [sentence]
    return "(?s)^" + "".join(f"(?=.*{re.escape(f)})" for f in found)


def make_image_folder(root: Path, per_class: int = 24, size: int = 16, seed: int = 0,
                      classes=CLASSES, mode: str = "RGB") -> Path:
    """Learnable tiny images: each class has its own colour and stripe orientation, plus noise."""
    rng = np.random.default_rng(seed)
    for k, name in enumerate(classes):
        d = root / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 60, (size, size, 3), dtype=np.int32)
            img[..., k % 3] += 120
            if k % 2:
                img[:, ::4] += 70
            else:
                img[::4, :] += 70
            arr = np.clip(img, 0, 255).astype(np.uint8)
            im = Image.fromarray(arr)
            if mode == "L":
                im = im.convert("L")
            im.save(d / f"{name}_{i:03d}.png")
    return root


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Never write the demo into the user's ~/.cache during tests (one cache per xdist worker)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("IMGCLS_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> Path:
    return make_image_folder(tmp_path_factory.mktemp("tiny") / "images")


def small_config(data_root: Path, run_dir: Path, **overrides):
    from imgcls.config import Config
    cfg = Config().replace(**{
        "data.root": str(data_root), "data.image_size": 16, "data.augment": "light",
        "data.num_workers": 0, "data.val_fraction": 0.25, "model.name": "small_cnn",
        "optim.lr": 0.01, "sched.name": "cosine", "train.epochs": 2, "train.batch_size": 16,
        "train.progress": False, "run.dir": str(run_dir), "run.report": False,
    })
    return cfg.replace(**overrides) if overrides else cfg


@pytest.fixture(scope="session")
def small_run(tiny_folder, tmp_path_factory):
    """One 2-epoch run on the tiny folder; tests that only READ a run folder share it."""
    from imgcls import train
    run_dir = tmp_path_factory.mktemp("runs") / "small"
    return train(small_config(tiny_folder, run_dir), log=lambda *a: None)
