"""ImageClassifier and the built-in nets: shapes, timm backbones with the CIFAR adaptation, training."""

from __future__ import annotations

import functools

import lightning.pytorch as pl
import pytest
import torch
from torch import nn

from lightning_prox.data import DigitsDataModule
from lightning_prox.models import MLP, ImageClassifier, LeNet, build_backbone
from lightning_prox.optim import ProxGen
from lightning_prox.regularizers import GroupLasso
from lightning_prox.structure import tensor_stats


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


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
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=6,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, DigitsDataModule(batch_size=64))
    assert float(trainer.callback_metrics["val/acc"]) > 0.8
    stats = tensor_stats(model.net.classifier[1].weight.detach(), "in")
    assert int(stats["zero_groups"]) > 0  # whole input features of the first linear layer removed
    rows = model.sparsity_rows()
    assert [r["name"] for r in rows] == [n for n, _ in model.regularized_parameters()]
    assert rows[2]["zero_groups"] == int(stats["zero_groups"])
