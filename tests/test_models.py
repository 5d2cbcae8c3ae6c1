"""ImageClassifier and the built-in nets: shapes, timm backbones with the CIFAR adaptation, training."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch
from helpers.trainers import quiet_trainer
from torch import nn

from lightning_prox.data import DigitsDataModule
from lightning_prox.models import MLP, CifarResNet, ImageClassifier, LeNet, build_backbone
from lightning_prox.optim import ProxGen
from lightning_prox.regularizers import GroupLasso
from lightning_prox.structure import tensor_stats, unit_pairs


def test_builtin_nets_shapes_and_errors():
    assert MLP(3 * 4 * 4, 5, hidden=(7, 6), dropout=0.5)(torch.zeros(2, 3, 4, 4)).shape == (2, 5)
    lenet = LeNet(3, 7, img_size=28, channels=(4, 8, 8), hidden=10)
    assert lenet(torch.zeros(2, 3, 28, 28)).shape == (2, 7)
    assert lenet.classifier[1].in_features == 8 * 3 * 3
    with pytest.raises(ValueError, match="img_size=4"):
        LeNet(1, 10, img_size=4, channels=(4, 4, 4))
    with pytest.raises(ValueError, match="no_such_net"):
        build_backbone("no_such_net", 10)


def test_timm_backbones_with_small_input_adaptation():
    resnet = build_backbone("resnet18", 10, in_chans=3, small_input=True)
    assert resnet.conv1.kernel_size == (3, 3) and resnet.conv1.stride == (1, 1)
    assert isinstance(resnet.maxpool, nn.Identity)
    assert resnet(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    vgg = build_backbone("vgg11_bn", 100, in_chans=3, small_input=True)
    assert isinstance(vgg.pre_logits, nn.Identity) and vgg.head.fc.in_features == 512
    assert vgg(torch.zeros(2, 3, 32, 32)).shape == (2, 100)
    plain = build_backbone("resnet18", 10, in_chans=1)
    assert plain.conv1.kernel_size == (7, 7) and plain.conv1.in_channels == 1
    with pytest.raises(ValueError, match="small_input"):
        build_backbone("vit_tiny_patch16_224", 10, small_input=True)


# He et al. 2016, Table 6: ResNet-20/32/44/56/110 have 0.27M/0.46M/0.66M/0.85M/1.7M parameters
@pytest.mark.parametrize(("depth", "millions"), [(20, 0.27), (32, 0.46), (44, 0.66), (56, 0.85), (110, 1.7)])
def test_cifar_resnet_family_parameter_counts(depth, millions):
    count_a = sum(p.numel() for p in CifarResNet(depth, shortcut="A").parameters())
    count_b = sum(p.numel() for p in CifarResNet(depth, shortcut="B").parameters())
    # option B adds the two 1x1 downsample convs (16·32 + 32·64) and their batch norms (2·(32 + 64))
    assert count_b - count_a == 16 * 32 + 32 * 64 + 2 * (32 + 64)
    assert count_a == pytest.approx(millions * 1e6, rel=0.02)
    if depth == 20:
        assert count_a == 269_722 and count_b == 272_474


@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_cifar_resnet20_structure_and_forward(shortcut):
    net = build_backbone("resnet20" if shortcut == "B" else "resnet20_a", 10, in_chans=3)
    assert isinstance(net, CifarResNet) and net.shortcut == shortcut
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) == 19 and sum(isinstance(m, nn.Linear) for m in net.modules()) == 1  # 19 + 1 = 20
    assert [len(s) for s in (net.layer1, net.layer2, net.layer3)] == [3, 3, 3]
    assert [s[-1].conv2.out_channels for s in (net.layer1, net.layer2, net.layer3)] == [16, 32, 64]
    downsample = [n for n, _ in net.named_modules() if n.endswith("downsample")]
    assert downsample == (["layer2.0.downsample", "layer3.0.downsample"] if shortcut == "B" else [])
    x = torch.randn(2, 3, 32, 32)
    assert net(x).shape == (2, 10)
    feats = net.layer2(net.layer1(torch.relu(net.bn1(net.conv1(x)))))
    assert feats.shape == (2, 32, 16, 16)
    # units: the inner channels of the 9 blocks (the residual stream has none)
    assert [p.name for p in unit_pairs(net)] == [
        f"layer{i}.{j}.conv1.weight" for i in (1, 2, 3) for j in range(3)
    ]


def test_cifar_resnet_errors():
    with pytest.raises(ValueError, match="6n"):
        CifarResNet(18)
    with pytest.raises(ValueError, match="shortcut"):
        CifarResNet(20, shortcut="C")
    with pytest.raises(ValueError, match="pretrained"):
        build_backbone("resnet20", 10, pretrained=True)
    assert not isinstance(build_backbone("resnet26", 10), CifarResNet)  # 6n + 2, but timm's resnet26


def test_proxquant_selection_on_resnet20_skips_downsample_norms_and_biases():
    model = ImageClassifier(
        "resnet20", in_chans=3, img_size=32, exclude=["downsample"], regularizer=GroupLasso(1e-3)
    )
    names = [n for n, _ in model.regularized_parameters()]
    assert len(names) == 19 + 1 and "net.conv1.weight" in names and "net.fc.weight" in names
    assert not any("downsample" in n or ".bn" in n or n.endswith("bias") for n in names)


def test_timm_backbone_parameter_selection_skips_norms_and_biases():
    model = ImageClassifier(
        "resnet18", in_chans=3, img_size=32, small_input=True, regularizer=GroupLasso(1e-3)
    )
    names = [n for n, _ in model.regularized_parameters()]
    assert "net.conv1.weight" in names and "net.fc.weight" in names
    assert not any(".bn" in n or n.endswith("bias") for n in names)


def test_hparams_are_plain_data():
    model = ImageClassifier(
        "mlp", optimizer=functools.partial(ProxGen, lr=0.02), regularizer=GroupLasso(1e-3)
    )
    ckpt = {"hyper_parameters": dict(model.hparams)}
    model.on_save_checkpoint(ckpt)
    hp = ckpt["hyper_parameters"]
    assert hp["optimizer"] == {
        "class_path": "lightning_prox.optim.proxgen.ProxGen",
        "init_args": {"lr": 0.02},
    }
    assert (
        hp["regularizer"]["class_path"].endswith("GroupLasso")
        and hp["regularizer"]["init_args"]["lam"] == 1e-3
    )
    assert hp["backbone"] == "mlp"


def test_image_classifier_learns_digits_with_group_sparsity():
    pl.seed_everything(0)
    model = ImageClassifier(
        "lenet",
        channels=(8, 16),
        hidden=(32,),
        optimizer=functools.partial(ProxGen, lr=1e-2),
        regularizer=GroupLasso(1e-3, dim="in"),
        sparsity_table=False,
    )
    trainer = quiet_trainer(max_epochs=6)
    trainer.fit(model, DigitsDataModule(batch_size=64))
    assert float(trainer.callback_metrics["val/acc"]) > 0.8
    stats = tensor_stats(model.net.classifier[3].weight.detach(), "in")
    assert int(stats["zero_groups"]) > 0  # whole hidden units (inputs of the last linear layer) removed
    rows = model.sparsity_rows()
    assert [r["name"] for r in rows] == [n for n, _ in model.regularized_parameters()]
    assert rows[3]["zero_groups"] == int(stats["zero_groups"])
