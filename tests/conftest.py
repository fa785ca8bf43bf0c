"""Shared fixtures: a tiny generated image folder and ONE small training run that read-only tests share."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

CLASSES = ("cat", "dog", "fox")


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
    """Never write the demo into the user's ~/.cache during tests."""
    old = os.environ.get("IMGCLS_CACHE")
    os.environ["IMGCLS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("IMGCLS_CACHE", None)
    else:
        os.environ["IMGCLS_CACHE"] = old


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
