"""``ImageClassifier``: a timm backbone or a built-in net, cross-entropy, torchmetrics accuracy, ProxMixin."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from ..module import ProxMixin
from ..regularizers import Regularizer
from .nets import MLP, LeNet
from .pathprox_nets import FactorizedMLP, VGG19NoBN
from .resnet_cifar import CIFAR_RESNET_DEPTHS, CifarResNet

__all__ = ["ImageClassifier", "build_backbone"]


def _adapt_to_small_images(model: nn.Module, num_classes: int) -> nn.Module:
    """CIFAR-style stem/head for timm ResNets (3x3 stride-1 stem, no max-pool) and VGGs (no 4096 MLP)."""
    conv1 = getattr(model, "conv1", None)
    if isinstance(conv1, nn.Conv2d) and hasattr(model, "maxpool"):
        model.conv1 = nn.Conv2d(conv1.in_channels, conv1.out_channels, 3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
        return model
    pre_logits = getattr(model, "pre_logits", None)
    head = getattr(model, "head", None)
    features = getattr(model, "features", None)
    if pre_logits is not None and head is not None and hasattr(head, "fc") and features is not None:
        width = [m for m in features.modules() if isinstance(m, nn.Conv2d)][-1].out_channels
        model.pre_logits = nn.Identity()
        model.head.fc = nn.Linear(width, num_classes)
        model.num_features = width
        return model
    raise ValueError(
        f"small_input=True supports timm ResNet-like (conv1 + maxpool) and VGG-like (features + pre_logits) "
        f"models, not {type(model).__name__}; set small_input=False"
    )


def _cifar_resnet_depth(backbone: str) -> tuple[int, Literal["A", "B"]] | None:
    match = re.fullmatch(r"resnet(\d+)(_a)?", backbone)
    if match is None or int(match.group(1)) not in CIFAR_RESNET_DEPTHS:
        return None
    return int(match.group(1)), "A" if match.group(2) else "B"


def build_backbone(
    backbone: str,
    num_classes: int,
    in_chans: int = 3,
    img_size: int = 32,
    pretrained: bool = False,
    small_input: bool = False,
    hidden: Sequence[int] = (256, 128),
    channels: Sequence[int] = (16, 32),
    drop_rate: float = 0.0,
) -> nn.Module:
    """``"mlp"``, ``"lenet"``, ``"factorized_mlp"``, ``"vgg19_nobn"``, a CIFAR ResNet or any timm model name.

    ``"factorized_mlp"`` is :class:`~lightning_prox.models.FactorizedMLP` with width ``hidden[0]`` and
    ``depth=len(hidden)`` (all widths equal: ``hidden=[400, 400, 400]`` is the PathProx paper's
    MLP-3-400 factorized); ``"vgg19_nobn"`` is :class:`~lightning_prox.models.VGG19NoBN` (32x32 inputs).
    Any other name than the built-in ones is looked up in timm (``timm.list_models()``).

    CIFAR ResNets (:class:`~lightning_prox.models.CifarResNet`): ``"resnet20"``, ``"resnet32"``,
    ``"resnet44"``, ``"resnet56"``, ``"resnet110"`` with option-B shortcuts (1x1 conv + BN, as the
    ProxQuant code), or with the suffix ``"_a"`` (``"resnet20_a"``) option-A zero-padding shortcuts.
    They are built for small images already (``small_input`` does not apply) and have no pretrained
    weights.

    Example:
        >>> import torch
        >>> build_backbone("lenet", 10, in_chans=1, img_size=8)(torch.zeros(1, 1, 8, 8)).shape
        torch.Size([1, 10])
    """
    if backbone == "mlp":
        return MLP(in_chans * img_size * img_size, num_classes, hidden, drop_rate)
    if backbone == "lenet":
        return LeNet(in_chans, num_classes, img_size, channels, hidden[0] if hidden else 64)
    if backbone == "factorized_mlp":
        if not hidden or len(set(hidden)) != 1:
            raise ValueError(
                f"backbone='factorized_mlp' needs hidden = one width per ReLU layer, all equal "
                f"(e.g. [400, 400, 400]), got hidden={list(hidden)!r}"
            )
        return FactorizedMLP(in_chans * img_size * img_size, num_classes, hidden[0], len(hidden))
    if backbone == "vgg19_nobn":
        if img_size != 32 or pretrained:
            raise ValueError(
                f"backbone='vgg19_nobn' is built for 32x32 inputs without pretrained weights, got "
                f"img_size={img_size}, pretrained={pretrained}; set img_size=32, pretrained=False"
            )
        return VGG19NoBN(num_classes, in_chans)
    cifar = _cifar_resnet_depth(backbone)
    if cifar is not None:
        if pretrained:
            raise ValueError(f"backbone={backbone!r} (a CIFAR ResNet) has no pretrained weights")
        return CifarResNet(cifar[0], num_classes, in_chans, shortcut=cifar[1])
    import timm

    if not timm.is_model(backbone):
        raise ValueError(
            f"backbone={backbone!r} is neither 'mlp', 'lenet', 'factorized_mlp', 'vgg19_nobn', a CIFAR ResNet "
            f"({', '.join(f'resnet{d}' for d in CIFAR_RESNET_DEPTHS)}, optionally with '_a') nor a timm "
            "model name; see timm.list_models() (e.g. 'resnet34', 'vgg16')"
        )
    model = timm.create_model(
        backbone, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans, drop_rate=drop_rate
    )
    return _adapt_to_small_images(model, num_classes) if small_input else model


class ImageClassifier(ProxMixin, pl.LightningModule):
    r"""Image classifier trained with a proximal optimizer (or any torch optimizer).

    Logs ``train/loss``, ``train/acc``, ``val/loss``, ``val/acc``, ``test/loss``, ``test/acc``.
    The proximal arguments (``optimizer``, ``regularizer``, ``lr_scheduler``, parameter selection,
    ``rules``, ``exclude_ends``, ``penalty_mode``) are those of :class:`~lightning_prox.module.ProxMixin`;
    ``optimizer=None`` trains with ``ProxGen(lr=1e-3)``. Per-layer rules from YAML, e.g. a group lasso on
    the convs with its own λ, L1 on the rest, the first conv and the classifier dense:

    .. code-block:: yaml

        model:
          init_args:
            exclude_ends: true
            rules:
              - types: [Conv2d]
                regularizer: {class_path: lightning_prox.regularizers.GroupLasso, init_args: {dim: in}}
                lam: 1.0e-3
              - params: ['\.weight$']
                regularizer: {class_path: lightning_prox.regularizers.L1, init_args: {lam: 1.0e-4}}

    Args:
        backbone: ``"mlp"``, ``"lenet"``, ``"factorized_mlp"``, ``"vgg19_nobn"``, a CIFAR ResNet (``"resnet20"``/``32``/``44``/``56``/``110``,
            option-B shortcuts; ``"resnet20_a"``: option A; see :func:`build_backbone`) or a timm model
            name; timm models are built with ``pretrained=False`` unless asked (``pretrained=True``
            downloads weights).
        num_classes: number of classes.
        in_chans: input channels.
        img_size: input height = width (used by the built-in nets).
        pretrained: load timm's pretrained weights.
        small_input: CIFAR-style adaptation of timm ResNets (3x3 stem, no max-pool) and VGGs (global pool
            + one linear layer instead of the 4096-wide MLP), as in the papers' CIFAR experiments.
        hidden: hidden widths of the MLP and the factorized MLP (the first one is LeNet's fully connected width).
        channels: conv widths of LeNet.
        label_smoothing: cross-entropy label smoothing.
        drop_rate: dropout of the MLP's hidden layers / timm's classifier dropout.

    Example:
        >>> from functools import partial
        >>> import torch
        >>> from lightning_prox.regularizers import L1
        >>> from lightning_prox.optim import ProxSGD
        >>> model = ImageClassifier("mlp", num_classes=10, in_chans=1, img_size=8,
        ...                         optimizer=partial(ProxSGD, lr=0.1), regularizer=L1(1e-4))
        >>> model(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        backbone: str = "lenet",
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int = 8,
        pretrained: bool = False,
        small_input: bool = False,
        hidden: Sequence[int] = (64,),
        channels: Sequence[int] = (16, 32),
        label_smoothing: float = 0.0,
        drop_rate: float = 0.0,
        optimizer: OptimizerCallable | None = None,
        regularizer: Regularizer | None = None,
        lr_scheduler: LRSchedulerCallable | None = None,
        include_types: list[str] | None = None,
        include: list[str] | None = None,
        exclude: list[str] | None = None,
        penalty_mode: Literal["prox", "subgradient"] = "prox",
        sparsity_table: bool = True,
        rules: list[dict[str, Any]] | None = None,
        exclude_ends: bool = False,
    ) -> None:
        super().__init__(
            optimizer=optimizer,
            regularizer=regularizer,
            lr_scheduler=lr_scheduler,
            include_types=include_types,
            include=include,
            exclude=exclude,
            penalty_mode=penalty_mode,
            sparsity_table=sparsity_table,
            rules=rules,
            exclude_ends=exclude_ends,
        )
        self.save_hyperparameters()
        self.net = build_backbone(
            backbone, num_classes, in_chans, img_size, pretrained, small_input, hidden, channels, drop_rate
        )
        self.label_smoothing = label_smoothing
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _shared(self, batch: Any, stage: str, acc: MulticlassAccuracy) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing if stage == "train" else 0.0)
        acc(logits.detach(), y)
        self.log(f"{stage}/loss", loss, prog_bar=stage != "train", sync_dist=stage != "train")
        self.log(f"{stage}/acc", acc, prog_bar=True)
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._shared(batch, "train", self.train_acc)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._shared(batch, "val", self.val_acc)

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._shared(batch, "test", self.test_acc)

    def predict_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self(x).argmax(dim=-1)
