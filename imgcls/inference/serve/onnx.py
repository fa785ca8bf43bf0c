"""``--backend onnx``: the forward pass through onnxruntime on the run's ONNX export (``imgcls export RUN``),
after the same preprocessing (Predictor.preprocess, then the run's BatchPrep) and the task's same decoding."""
from __future__ import annotations

from typing import Any

import torch

from ...errors import UserError
from ..predictor import Predictor


def onnx_session(predictor: Predictor, tta: bool) -> Any:
    """An onnxruntime session on the one run's model.onnx, or one sentence saying what to do instead."""
    if len(predictor.members) != 1:
        raise UserError("--backend onnx serves one run's ONNX export; pass one run folder (not a cv folder or "
                        "an ensemble), or use --backend torch.")
    if tta:
        raise UserError("--backend onnx runs the exported graph as it is, without test-time augmentation; drop "
                        "--tta or use --backend torch.")
    run_dir = predictor.members[0].run_dir
    path = run_dir / "model.onnx"
    if not path.is_file():
        raise UserError(f"'{path}' does not exist; write it with 'imgcls export {run_dir}' or use --backend torch.")
    try:
        import onnxruntime
    except ImportError:
        raise UserError("--backend onnx needs onnxruntime, which is not installed; pip install 'imgcls[export]'.") from None
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def onnx_probabilities(session: Any, predictor: Predictor, views: list[torch.Tensor]) -> torch.Tensor:
    """uint8 batches (one per view) -> [N, K] rows, as Predictor.probabilities computes them with torch."""
    member, prep = predictor.members[0], predictor.preps[0]
    x = prep.images(views[member.view]).float().cpu().contiguous().numpy()
    logits = session.run(None, {session.get_inputs()[0].name: x})[0]
    return member.info.task_type.decode_outputs(torch.from_numpy(logits)).cpu()
