"""The images behind the numbers: most confident mistakes (with Grad-CAM for conv models) and the
hardest correct examples per class, as small inline thumbnails.

Grad-CAM comes from the ``grad-cam`` package (pytorch_grad_cam): the map is the predicted class's
gradient-weighted activation of the model's last spatial feature layer, shown on the image the model
saw (after the eval resize and centre crop).
"""
from __future__ import annotations

import base64
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from PIL import Image
from torch import nn

from .rundata import Predictions, RunData

THUMB = 112   # px, longest side of a mistake's thumbnail (and its Grad-CAM) in the page
SMALL = 72    # px, the hardest correct examples


@dataclass
class Example:
    row: int                 # row in val_predictions.csv
    path: str
    label: str
    pred: str
    prob: float              # probability of ``pred`` (mistakes) or of the true class (hardest correct)
    thumb: Optional[str] = None   # data URI, None when the image is not at its recorded path
    cam: Optional[str] = None     # Grad-CAM overlay data URI (convolutional models only)


def confident_mistakes(p: Predictions, n: int = 16) -> list[int]:
    """Rows of wrong predictions, the most confident (probability of the predicted class) first."""
    wrong = np.flatnonzero(~p.correct)
    conf = p.probs[wrong, p.preds[wrong]]
    return wrong[np.argsort(-conf, kind="stable")][:n].tolist()


def hardest_correct(p: Predictions, per_class: int) -> dict[int, list[int]]:
    """Per class code: its correctly predicted rows with the lowest probability of the true class."""
    out = {}
    for c in range(p.probs.shape[1]):
        rows = np.flatnonzero(p.correct & (p.labels == c))
        out[c] = rows[np.argsort(p.probs[rows, c], kind="stable")][:per_class].tolist()
    return out


def data_uri(img: Image.Image) -> str:
    """PNG for small or flat images, JPEG for photos (a 112 px photo is ~5 kB as JPEG, ~25 kB as PNG)."""
    buf = io.BytesIO()
    photo = img.mode == "RGB" and min(img.size) >= 64
    if photo:
        img.save(buf, format="JPEG", quality=85)
    else:
        img.save(buf, format="PNG", optimize=True)
    return f"data:image/{'jpeg' if photo else 'png'};base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def fit_thumb(img: Image.Image, side: int = THUMB) -> Image.Image:
    """Scale so the longest side is ``side``: whole-number enlargements stay pixel-sharp (digits)."""
    w, h = img.size
    scale = side / max(w, h)
    if scale >= 2:
        k = int(scale)
        return img.resize((w * k, h * k), Image.NEAREST)
    if scale < 1:
        return img.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    return img


def _to_pil(chw: torch.Tensor) -> Image.Image:
    arr = chw.permute(1, 2, 0).numpy()
    return Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr)


def thumbnail(path: Path, side: int = THUMB) -> Optional[str]:
    from ..data.decode import BadImageError, load_image

    try:
        return data_uri(fit_thumb(_to_pil(load_image(path)), side))
    except (BadImageError, OSError):
        return None


def cam_target_layer(model: nn.Module) -> Optional[nn.Module]:
    """The layer Grad-CAM reads: timm's last feature stage (e.g. resnet 'layer4') where the model
    lists one, else the last Conv2d (small_cnn). None when the model has no convolution at all."""
    info = getattr(model, "feature_info", None)
    if isinstance(info, list) and info and isinstance(info[-1], dict) and info[-1].get("module"):
        try:
            return model.get_submodule(info[-1]["module"])
        except AttributeError:
            pass
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1] if convs else None


def _spatial_output(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> bool:
    """True when ``layer`` outputs a [N, C, H, W] map with H, W > 1 (not a transformer's tokens)."""
    seen = {}

    def hook(module, inputs, output) -> None:  # must return None: a returned value replaces the output
        seen["shape"] = tuple(output.shape)

    handle = layer.register_forward_hook(hook)
    try:
        with torch.no_grad():
            model(x[:1])
    finally:
        handle.remove()
    shape = seen.get("shape", ())
    return len(shape) == 4 and shape[2] * shape[3] > 1


def gradcam_overlays(run: RunData, examples: Sequence[Example]) -> Optional[list[Optional[str]]]:
    """Grad-CAM overlay per example (None where its image is missing); None when the model is not
    convolutional or the run has no best.safetensors / model.json."""
    weights = run.run_dir / "best.safetensors"
    if not examples or not weights.is_file() or run.model is None:
        return None
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from ..models.modelinfo import load_run_model

    model, info = load_run_model(weights.parent, weights.name)
    layer = cam_target_layer(model)
    if layer is None:
        return None
    code = {c: i for i, c in enumerate(info.classes)}
    found = [run.resolve_image(ex.path) for ex in examples]
    where = [i for i, f in enumerate(found) if f is not None]
    batch, ok = info.load_images([found[i] for i in where])  # the one evaluation pipeline
    keep = [where[j] for j in ok]
    if not keep:
        return [None] * len(examples)
    x = info.batch_prep("cpu").images(batch)
    if not _spatial_output(model, layer, x):
        return None
    targets = [ClassifierOutputTarget(code[examples[i].pred]) for i in keep]
    with torch.enable_grad(), GradCAM(model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=x, targets=targets)   # [N, H, W] in [0, 1], at the input size
    out: list[Optional[str]] = [None] * len(examples)
    for j, i in enumerate(keep):
        rgb = batch[j].float().div(255).permute(1, 2, 0).numpy()
        if rgb.shape[2] == 1:
            rgb = np.repeat(rgb, 3, axis=2)
        overlay = show_cam_on_image(rgb.astype(np.float32), maps[j], use_rgb=True, image_weight=0.55)
        out[i] = data_uri(fit_thumb(Image.fromarray(overlay)))
    return out


def build_gallery(run: RunData, n_mistakes: int = 16, gradcam: bool = True
                  ) -> tuple[list[Example], dict[str, list[Example]], Optional[str]]:
    """(confident mistakes, hardest correct per class name, a note on Grad-CAM or None)."""
    p = run.predictions
    if p is None:
        return [], {}, None
    k = len(run.classes)
    # Fewer per class as classes grow, so the page stays about the same size (3 each up to 12 classes).
    per_class = 3 if k <= 12 else 2 if k <= 30 else 1

    def example(row: int, prob_of: int, side: int) -> Example:
        found = run.resolve_image(p.paths[row])
        return Example(row, p.paths[row], run.classes[p.labels[row]], run.classes[p.preds[row]],
                       float(p.probs[row, prob_of]), thumbnail(found, side) if found else None)

    mistakes = [example(r, p.preds[r], THUMB) for r in confident_mistakes(p, n_mistakes)]
    hardest = {run.classes[c]: [example(r, c, SMALL) for r in rows]
               for c, rows in hardest_correct(p, per_class).items()}
    note = None
    if gradcam and mistakes:
        overlays = gradcam_overlays(run, mistakes)
        if overlays is None:
            note = ("No Grad-CAM: it needs a convolutional model whose last feature map is larger than 1x1, "
                    "and the run's best.safetensors and model.json.")
        else:
            for ex, uri in zip(mistakes, overlays):
                ex.cam = uri
    return mistakes, hardest, note
