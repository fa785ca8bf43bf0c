"""``RUN/timm``: a folder that plain timm opens, with no imgcls installed, and that a user can push to a
model hub as it is:

    model = timm.create_model("local-dir:RUN/timm", pretrained=True)      # architecture + weights
    model.pretrained_cfg["label_names"]                                   # the class names, in head order
    transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))

It holds ``model.safetensors`` (best.safetensors, hard-linked where the file system allows), timm's own
``config.json`` (written by ``timm.models.save_config_for_hf``: architecture, head size, ``in_chans``,
label names, and the preprocessing in ``pretrained_cfg``) and a short ``README.md`` (the model card).

The preprocessing is imgcls's evaluation pipeline in timm's terms: mean and std, input size, the run's
interpolation, and a ``crop_pct`` chosen so that timm's resize (``floor(size / crop_pct)``) equals
imgcls's (``round(size / crop_pct)``); the two decoders and resizers differ slightly (PIL vs
torchvision), so probabilities agree closely, not bit for bit.

Written for timm architectures with a class head (multi-class; multi-label too, whose tuned thresholds
stay in model.json); imgcls's own architectures (``small_cnn``, ``digits_cnn``), regression and
multi-head runs get a sentence saying why not.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Optional

from ..errors import UserError
from ..io import atomic_write_text
from ..models.modelinfo import ModelInfo

FOLDER = "timm"
_NOT_THESE_WEIGHTS = ("tag", "license", "hf_hub_id", "url", "paper_ids", "paper_name", "origin_url", "notes",
                      "description")


def why_not(info: ModelInfo) -> Optional[str]:
    """The sentence explaining why a run gets no timm folder, or None when it does."""
    import timm
    from timm.models import get_arch_name
    name = info.architecture
    entry = timm.models._registry._model_entrypoints.get(get_arch_name(name))  # noqa: SLF001 -- where it is registered
    if entry is None or entry.__module__.startswith("imgcls"):
        return (f"'{name}' is imgcls's own architecture, which plain timm does not know; train a timm architecture "
                "(imgcls list models) to get a folder timm opens.")
    if info.task not in ("multiclass", "multilabel"):
        return (f"a {info.task} model has no class head that timm's image-classification tools understand; its "
                "run folder (model.json + best.safetensors) is what imgcls predict uses.")
    return None


def timm_crop_pct(image_size: int, crop_pct: float) -> float:
    """The crop_pct for which timm's floor(size / crop_pct) is imgcls's round(size / crop_pct)."""
    resized = int(round(image_size / crop_pct))
    return image_size / (resized + 0.5)


def write_timm_folder(run_dir: str | os.PathLike, out: Optional[str | os.PathLike] = None, *,
                      force: bool = False) -> Path:
    """Write ``RUN/timm`` (or ``out``) for the run ``run_dir``; returns the folder."""
    from timm.models._hub import save_config_for_hf  # timm's own writer of config.json (what its hub uses)

    from .predictor import load_member
    member = load_member(run_dir)
    info = member.info
    reason = why_not(info)
    if reason:
        raise UserError(f"no timm folder for this run: {reason}")
    folder = Path(out) if out else Path(run_dir) / FOLDER
    if folder.exists() and any(folder.iterdir()) and not force:
        raise UserError(f"'{folder}' already exists; pass --force to replace it, or choose another --out.")
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _link_or_copy(Path(run_dir) / "best.safetensors", tmp / "model.safetensors", inside=_is_inside(folder, run_dir))
    size = info.image_size
    save_config_for_hf(member.model, str(tmp / "config.json"), model_config={
        "label_names": list(info.classes),
        "pretrained_cfg": {"mean": tuple(info.mean), "std": tuple(info.std), "interpolation": info.interpolation,
                           "input_size": (info.channels, size, size), "crop_mode": "center",
                           "crop_pct": timm_crop_pct(size, info.crop_pct)}},
        model_args={"in_chans": info.channels})
    config = json.loads((tmp / "config.json").read_text())
    for key in _NOT_THESE_WEIGHTS:  # about the architecture's published weights, not these
        config["pretrained_cfg"].pop(key, None)
    atomic_write_text(tmp / "config.json", json.dumps(config, indent=2) + "\n")
    atomic_write_text(tmp / "README.md", _model_card(info))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def _is_inside(folder: Path, run_dir: str | os.PathLike) -> bool:
    return Path(os.path.abspath(folder)).is_relative_to(os.path.abspath(run_dir))


def _link_or_copy(src: Path, dst: Path, *, inside: bool) -> None:
    """A hard link saves the space only inside the run folder, which travels (and is edited) as one; anywhere
    else the export is a file of its own, so editing it can never change the run's best.safetensors."""
    if inside:
        try:
            os.link(src, dst)
            return
        except OSError:  # another file system, or links refused
            pass
    shutil.copyfile(src, dst)


def _model_card(info: ModelInfo) -> str:
    gray = info.channels == 1
    lines = [
        "---", "library_name: timm", "tags: [image-classification, timm, imgcls]", "---", "",
        f"# {info.architecture} ({info.task}, {len(info.classes)} classes)", "",
        "Trained with imgcls; opens in timm alone:", "", "```python", "import timm", "import torch",
        "from PIL import Image", "", 'model = timm.create_model("local-dir:PATH/TO/THIS/FOLDER", pretrained=True).eval()',
        "transform = timm.data.create_transform(**timm.data.resolve_data_config(model=model))",
        f'image = Image.open("photo.png").convert("{"L" if gray else "RGB"}")'
        + ("  # this model reads 1-channel (grayscale) images" if gray else ""),
        "with torch.no_grad():",
        "    logits = model(transform(image).unsqueeze(0))",
        ("probs = logits.sigmoid()[0]  # one probability per label" if info.task == "multilabel"
         else "probs = logits.softmax(-1)[0]"),
        'print(model.pretrained_cfg["label_names"][int(probs.argmax())])', "```", "",
        f"Classes, in head order: {', '.join(info.classes)}.", "",
    ]
    if info.task == "multilabel":
        thresholds = info.extra.get("thresholds")
        lines += ["This is a multi-label model: each label is on when its sigmoid probability passes that "
                  "label's threshold. The thresholds imgcls tuned on validation live in the run's model.json"
                  + (f": {json.dumps(thresholds)}." if thresholds else "."), ""]
    return "\n".join(lines)
