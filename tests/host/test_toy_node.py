"""The LEDITS Toy Model node: both committed toy models load through the host's classes and are what the pack
takes them for; an unknown choice is refused."""

import pytest
import torch


@pytest.fixture(scope="module")
def toy_node(host):
    host.load_pack()
    return host.import_pack_module("nodes.toy_node"), host.import_pack_module("nodes.host_model")


@pytest.mark.parametrize("label, family, prediction, channels", [
    ("UNet (SD1.x)", "sd1", "eps", 4), ("flow transformer (SD3)", "sd3", "flow", 16)])
def test_each_toy_model_loads_as_its_family(toy_node, label, family, prediction, channels):
    node, host_model = toy_node
    model, clip, vae = node.LeditsToyModel.execute(model=label).result
    kind = host_model.model_kind(model)
    assert (kind.family, kind.prediction) == (family, prediction)
    pixels = torch.full((1, 128, 128, 3), 0.9)
    latent = vae.encode(pixels)
    assert latent.shape == (1, channels, 32, 32)
    cond = clip.encode_from_tokens_scheduled(clip.tokenize("a red circle"))
    assert cond[0][0].shape[1:] == (77, 64)


def test_the_default_is_the_unet(toy_node):
    node, host_model = toy_node
    model, _, _ = node.LeditsToyModel.execute().result
    assert host_model.model_kind(model).family == "sd1"


def test_an_unknown_toy_model_is_refused(toy_node):
    node, _ = toy_node
    with pytest.raises(ValueError, match="unknown model 'sdxl'.*UNet \\(SD1.x\\)"):
        node.LeditsToyModel.execute(model="sdxl")
