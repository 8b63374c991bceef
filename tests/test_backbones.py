"""The offline ImageNet EfficientNet-Lite weights, mapped onto timm, classify real photos correctly."""

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from pipeline.core import backbones
from pipeline.errors import BackboneError


def _batch(images: list[np.ndarray], size: int) -> torch.Tensor:
    resized = [np.asarray(Image.fromarray(im).resize((size, size), Image.BICUBIC)) for im in images]
    return backbones.to_input(torch.from_numpy(np.stack(resized)).permute(0, 3, 1, 2))


@pytest.mark.parametrize("name", backbones.LITE_NAMES)
def test_imagenet_classes_of_real_photos(name):
    """chelsea is an Egyptian cat (285), coffee an espresso (967): a broken mapping cannot pass."""
    model = backbones.efficientnet_lite(name)
    with torch.no_grad():
        logits = model(_batch([data.chelsea(), data.coffee()], 224))
    assert logits.argmax(1).tolist() == [285, 967]


def test_pooled_features_and_new_head():
    features = backbones.efficientnet_lite("efficientnet-lite0", num_classes=0)
    with torch.no_grad():
        pooled = features(_batch([data.chelsea()], 224))
    assert pooled.shape == (1, backbones.FEATURE_DIM)
    head = backbones.efficientnet_lite("efficientnet-lite0", num_classes=2)
    body = {k: v for k, v in head.state_dict().items() if not k.startswith("classifier.")}
    reference = backbones.lite_state_dict("efficientnet-lite0")
    assert all(torch.equal(v, reference[k]) for k, v in body.items())
    assert head.classifier.out_features == 2


def test_state_dict_loads_into_smp_encoder():
    """The segmentation trainer loads the same weights into smp's timm-universal encoder."""
    import segmentation_models_pytorch as smp

    net = smp.Unet(f"tu-{backbones.timm_architecture('efficientnet-lite0')}", encoder_weights=None, classes=1)
    weights = backbones.lite_state_dict("efficientnet-lite0")
    encoder = net.encoder.model
    encoder.load_state_dict({k: v for k, v in weights.items() if k in encoder.state_dict()}, strict=True)
    assert torch.equal(encoder.conv_stem.weight, weights["conv_stem.weight"])


def test_unknown_name_is_one_line_error():
    with pytest.raises(BackboneError, match="unknown backbone 'resnet50'"):
        backbones.efficientnet_lite("resnet50")


@pytest.mark.parametrize("edit, message", [
    (lambda sd: sd.pop("_fc.bias"), r"295 tensors, but timm's efficientnet_lite0 has 296"),
    (lambda sd: sd.update({"_conv_stem.weight": torch.zeros(32, 3, 5, 5)}),
     r"tensor _conv_stem.weight has shape \(32, 3, 5, 5\), but timm's conv_stem.weight needs \(32, 3, 3, 3\)"),
])
def test_weights_that_do_not_fit_are_one_line_errors(tmp_path, monkeypatch, edit, message):
    state = torch.load(backbones.weights_file("efficientnet-lite0"), weights_only=True)
    edit(state)
    torch.save(state, tmp_path / "lite0.pth")
    monkeypatch.setattr(backbones, "weights_file", lambda name: tmp_path / "lite0.pth")
    backbones._mapped.cache_clear()
    try:
        with pytest.raises(BackboneError, match=message):
            backbones.lite_state_dict("efficientnet-lite0")
    finally:
        backbones._mapped.cache_clear()
