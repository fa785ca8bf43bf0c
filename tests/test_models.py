"""Models: timm names with num_classes / in_chans, local pretrained files, never a download."""
from __future__ import annotations

import pytest
import timm
import torch
from safetensors.torch import save_file

from imgcls.errors import UserError
from imgcls.models import create_model, list_models


@pytest.mark.parametrize("name, size, in_chans", [
    (name, size, c) for name, size in [("small_cnn", 28), ("digits_cnn", 28), ("digits_cnn", 40), ("resnet18", 32), ("mobilenetv3_small_050", 32),
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
    assert "digits_cnn" in list_models() and timm.is_model("digits_cnn")


def test_digits_cnn_head_sees_the_7x7_map_in_place():
    """At 28 px the head reads the last conv block's 7x7 map as it is (the adaptive pool is the
    identity), so moving a stroke changes which head weights see it: the output is a linear map of
    the flattened map, checked against F.linear by hand."""
    model = create_model("digits_cnn", num_classes=10, in_chans=1).eval()
    x = torch.randn(3, 1, 28, 28)
    convs = model.features[:-2](x)               # up to (not including) the adaptive pool and flatten
    assert convs.shape == (3, 64, 7, 7)
    want = torch.nn.functional.linear(convs.flatten(1), model.fc.weight, model.fc.bias)
    torch.testing.assert_close(model(x), want)


def test_unknown_model_did_you_mean():
    with pytest.raises(UserError, match=r"unknown model 'resnet81'.*did you mean"):
        create_model("resnet81", 3)


def test_hub_weights_not_cached_offline_name_the_fix(tmp_path, monkeypatch):
    """Hub weights are resolved through huggingface_hub's cache (tests/test_pretrained.py); uncached: one sentence."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UserError, match="imgcls weights download resnet18"):
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


def _save(tmp_path, state, name="w.safetensors"):
    path = tmp_path / name
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    return path


@pytest.mark.parametrize("prefix", ["module.", "backbone.", "model.module."])
def test_prefixed_weights_are_loaded_after_stripping_the_prefix(tmp_path, prefix):
    src = timm.create_model("resnet18", num_classes=1000)
    path = _save(tmp_path, {prefix + k: v for k, v in src.state_dict().items()})
    lines = []
    model = create_model("resnet18", num_classes=4, pretrained=path, log=lines.append)
    torch.testing.assert_close(model.layer4[1].conv2.weight, src.layer4[1].conv2.weight)
    torch.testing.assert_close(model.bn1.running_mean, src.bn1.running_mean)
    n_body = len([k for k in src.state_dict() if not k.startswith("fc.")])
    assert lines == [f"loaded {n_body} tensors from {path}; head fc re-initialised: 1000 -> 4 classes"]


def test_weights_of_another_architecture_are_refused(tmp_path):
    """resnet34 into resnet18: most tensors share names and shapes, but not all: fail, never half-load."""
    path = _save(tmp_path, timm.create_model("resnet34", num_classes=1000).state_dict())
    with pytest.raises(UserError, match=r"does not fit model 'resnet18': 0 missing, \d+ unexpected and 0 mis-shaped"):
        create_model("resnet18", num_classes=4, pretrained=path)


def test_weights_with_an_unknown_prefix_are_refused(tmp_path):
    path = _save(tmp_path, {"trunk." + k: v for k, v in timm.create_model("resnet18").state_dict().items()})
    with pytest.raises(UserError, match=r"\d+ missing, \d+ unexpected"):
        create_model("resnet18", num_classes=4, pretrained=path)


def test_fixed_input_size_models_are_built_for_the_configured_size():
    model = create_model("vit_tiny_patch16_224", num_classes=3, image_size=32)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
