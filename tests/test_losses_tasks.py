"""The multi-label and regression losses against torch's and torchvision's own functions."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import sigmoid_focal_loss

from imgcls.errors import UserError
from imgcls.losses import create_loss, list_losses

G = torch.Generator().manual_seed(0)
LOGITS = torch.randn(16, 5, generator=G) * 3
TARGET = (torch.rand(16, 5, generator=G) > 0.6).float()


def test_families():
    assert list_losses("binary") == ["bce", "binary_focal"] and list_losses("regression") == ["huber", "l1", "mse"]


def test_bce_with_and_without_pos_weight_is_torchs():
    assert torch.allclose(create_loss("bce", 5)(LOGITS, TARGET), F.binary_cross_entropy_with_logits(LOGITS, TARGET))
    w = [1.0, 2.0, 0.5, 3.0, 1.5]
    got = create_loss("bce", 5, pos_weight=w)(LOGITS, TARGET)
    assert torch.allclose(got, F.binary_cross_entropy_with_logits(LOGITS, TARGET, pos_weight=torch.tensor(w)))
    with pytest.raises(UserError, match="lists 2 values for 5 labels"):
        create_loss("bce", 5, pos_weight=[1.0, 2.0])
    with pytest.raises(UserError, match="takes no class weights"):
        create_loss("bce", 5, class_weights=[1.0] * 5)


@pytest.mark.parametrize("gamma, alpha", [(2.0, None), (1.5, 0.25), (0.0, 0.75)])
def test_binary_focal_is_torchvisions_sigmoid_focal_loss(gamma, alpha):
    got = create_loss("binary_focal", 5, gamma=gamma, alpha=alpha)(LOGITS, TARGET)
    want = sigmoid_focal_loss(LOGITS, TARGET, alpha=-1 if alpha is None else alpha, gamma=gamma, reduction="mean")
    assert torch.allclose(got, want, atol=1e-6)
    if gamma == 0 and alpha is None:
        assert torch.allclose(got, F.binary_cross_entropy_with_logits(LOGITS, TARGET))


def test_focal_gamma_zero_is_bce():
    got = create_loss("binary_focal", 5, gamma=0.0, alpha=None)(LOGITS, TARGET)
    assert torch.allclose(got, F.binary_cross_entropy_with_logits(LOGITS, TARGET), atol=1e-6)


@pytest.mark.parametrize("name, oracle", [("mse", F.mse_loss), ("l1", F.l1_loss),
                                          ("huber", lambda x, y: F.huber_loss(x, y, delta=0.5))])
def test_regression_losses_are_torchs_on_one_output(name, oracle):
    out, y = torch.randn(16, 1, generator=G), torch.randn(16, generator=G)
    loss = create_loss(name, 1, **({"delta": 0.5} if name == "huber" else {}))
    assert torch.allclose(loss(out, y), oracle(out[:, 0], y))
    out.requires_grad_(True)
    loss(out, y).backward()
    assert out.grad is not None and out.grad.shape == (16, 1)
