"""CIFAR ResNets (He et al. 2016, §4.2): ResNet-20/32/44/56/110, the networks of the ProxQuant experiments.

Depth 6n + 2: a 3x3 stem conv with 16 channels, three stages of n basic blocks with 16, 32 and 64
channels (the second and third start with stride 2), global average pooling and one linear layer.
ResNet-20 has n = 3 and about 0.27M parameters.

Shortcuts where the shape changes (the first block of stages 2 and 3):

- ``"B"`` (default): a 1x1 stride-2 conv and batch norm, in a submodule named ``downsample``. This is
  the CIFAR ResNet of the ProxQuant code (``allenbai01/ProxQuant``, ``models/resnet.py``), which
  leaves the ``downsample`` convs full precision, so the recipes exclude them by name.
- ``"A"``: He et al.'s parameter-free shortcut, the input subsampled by 2 and zero-padded with the new
  channels (no ``downsample`` module).

Initialization as the ProxQuant code: convs He-normal over fan-out, batch norms (1, 0); the linear
layer keeps torch's default.
"""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CIFAR_RESNET_DEPTHS", "CifarResNet"]

#: depths built by name (``"resnet20"``, ...): 6n + 2 for n = 3, 5, 7, 9, 18
CIFAR_RESNET_DEPTHS = (20, 32, 44, 56, 110)

Shortcut = Literal["A", "B"]


class _PadShortcut(nn.Module):
    """Option A: take every other pixel and zero-pad the channels (no parameters)."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        self.extra = extra

    def forward(self, x: Tensor) -> Tensor:
        half = self.extra // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    """Two 3x3 conv → BN layers (ReLU between and after the residual add)."""

    def __init__(self, in_planes: int, planes: int, stride: int, shortcut: Shortcut) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        self.pad: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            if shortcut == "B":
                self.downsample = nn.Sequential(
                    nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
                )
            else:
                self.pad = _PadShortcut(planes - in_planes)

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            x = self.downsample(x)
        elif self.pad is not None:
            x = self.pad(x)
        return F.relu(out + x)


class CifarResNet(nn.Module):
    """CIFAR ResNet of depth 6n + 2 (module docstring): 16/32/64 channels, 3n basic blocks.

    Args:
        depth: 20, 32, 44, 56, 110, or any 6n + 2 with n >= 1.
        num_classes: number of outputs.
        in_chans: input channels.
        shortcut: ``"B"`` (1x1 conv + BN ``downsample``, as the ProxQuant code) or ``"A"`` (zero-padding
            identity, He et al.'s CIFAR networks).

    Example:
        >>> import torch
        >>> net = CifarResNet(20)
        >>> net(torch.zeros(2, 3, 32, 32)).shape, sum(p.numel() for p in net.parameters())
        (torch.Size([2, 10]), 272474)
        >>> sum(p.numel() for p in CifarResNet(20, shortcut="A").parameters())
        269722
    """

    def __init__(
        self, depth: int = 20, num_classes: int = 10, in_chans: int = 3, shortcut: Shortcut = "B"
    ) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(
                f"CIFAR ResNet depth must be 6n + 2 with n >= 1 (20, 32, 44, 56, 110), got {depth}"
            )
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' (zero-padding) or 'B' (1x1 conv + BN), got {shortcut!r}")
        n = (depth - 2) // 6
        self.depth, self.shortcut = depth, shortcut
        self.conv1 = nn.Conv2d(in_chans, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        stages = []
        in_planes = 16
        for i, planes in enumerate((16, 32, 64)):
            blocks = []
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                blocks.append(BasicBlock(in_planes, planes, stride, shortcut))
                in_planes = planes
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, num_classes)
        #: the stem conv and the classifier (``exclude_ends=True`` leaves them dense)
        self.prox_ends = {"first_conv": "conv1", "classifier": "fc"}
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.pool(x).flatten(1))
