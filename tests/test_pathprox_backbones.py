"""``build_backbone`` / ``ImageClassifier`` names of the PathProx paper's nets: ``factorized_mlp``, ``vgg19_nobn``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lightning_prox.models import FactorizedMLP, ImageClassifier, VGG19NoBN, build_backbone
from lightning_prox.structure import pathprox_pairs


def test_factorized_mlp_name_builds_the_factorized_mlp():
    net = build_backbone("factorized_mlp", 10, in_chans=1, img_size=28, hidden=[40, 40, 40])
    assert isinstance(net, FactorizedMLP)
    shapes = [tuple(m.weight.shape) for m in net.modules() if isinstance(m, nn.Linear)]
    assert shapes == [(40, 784), (40, 40), (40, 40), (40, 40), (40, 40), (10, 40)]
    assert [(p.w_name, p.v_name) for p in pathprox_pairs(net)] == [
        ("net.1", "net.3"),
        ("net.4", "net.6"),
        ("net.7", "net.9"),
    ]
    model = ImageClassifier("factorized_mlp", 10, in_chans=1, img_size=28, hidden=[16])
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)
    assert sum(isinstance(m, nn.Linear) for m in model.net.modules()) == 2  # depth 1: in→16→10


@pytest.mark.parametrize("hidden", [[], [400, 200]])
def test_factorized_mlp_needs_equal_widths(hidden):
    with pytest.raises(
        ValueError, match=r"backbone='factorized_mlp' needs hidden = one width per ReLU layer"
    ):
        build_backbone("factorized_mlp", 10, 1, 28, hidden=hidden)


def test_vgg19_nobn_name_builds_vgg19_without_batch_norm():
    torch.manual_seed(0)
    net = build_backbone("vgg19_nobn", 10, in_chans=3, img_size=32)
    assert isinstance(net, VGG19NoBN) and len(pathprox_pairs(net)) == 8
    assert sum(isinstance(m, nn.Conv2d) for m in net.modules()) == 16
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 10)
    with pytest.raises(ValueError, match=r"backbone='vgg19_nobn' is built for 32x32 inputs.*img_size=28"):
        build_backbone("vgg19_nobn", 10, in_chans=1, img_size=28)
    with pytest.raises(ValueError, match="pretrained=True"):
        build_backbone("vgg19_nobn", 10, img_size=32, pretrained=True)
