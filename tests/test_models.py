"""Models: timm names with num_classes / in_chans, local pretrained files, never a download."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from imgcls.errors import UserError
from imgcls.models import create_model, list_models


@pytest.mark.parametrize("name, size, in_chans", [
    (name, size, c) for name, size in [("small_cnn", 28), ("resnet18", 32), ("mobilenetv3_small_050", 32),
                                       ("efficientnet_b0", 32)] for c in (1, 3)
] + [("vit_tiny_patch16_224", 224, 3)])  # a transformer too; one channel count is enough at 224 px
def test_forward_backward(name, size, in_chans):
    model = create_model(name, num_classes=7, in_chans=in_chans)
    x = torch.randn(2, in_chans, size, size)
    out = model(x)
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_small_cnn_is_a_timm_model():
    assert "small_cnn" in list_models() and timm.is_model("small_cnn")


def test_unknown_model_did_you_mean():
    with pytest.raises(UserError, match=r"unknown model 'resnet81'.*did you mean"):
        create_model("resnet81", 3)


def test_hub_weights_refused_without_network():
    with pytest.raises(UserError, match="never downloaded"):
        create_model("resnet18", 3, pretrained=True)


def test_missing_local_weights_file(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        create_model("resnet18", 3, pretrained=tmp_path / "nope.safetensors")


@pytest.mark.parametrize("name", ["resnet18", "small_cnn"])
def test_local_pretrained_file_loads_backbone_and_new_head(tmp_path, name):
    src = timm.create_model(name, num_classes=1000 if name == "resnet18" else 10)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = create_model(name, num_classes=4, in_chans=3, pretrained=path)
    head = "fc.weight"
    assert model.state_dict()[head].shape[0] == 4
    body = [k for k in src.state_dict() if not k.startswith("fc.") and "num_batches" not in k]
    for k in body:
        torch.testing.assert_close(model.state_dict()[k], src.state_dict()[k])


def test_local_pretrained_grayscale_adapts_first_conv(tmp_path):
    src = timm.create_model("resnet18", num_classes=1000)
    path = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    model = create_model("resnet18", num_classes=4, in_chans=1, pretrained=path)
    # timm sums the RGB filters into one channel
    torch.testing.assert_close(model.conv1.weight, src.conv1.weight.sum(1, keepdim=True))


def test_local_file_with_same_head_keeps_it(tmp_path):
    src = create_model("small_cnn", num_classes=4, in_chans=1)
    path = tmp_path / "w.safetensors"
    save_file(src.state_dict(), str(path))
    model = create_model("small_cnn", num_classes=4, in_chans=1, pretrained=path)
    for k, v in src.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k
