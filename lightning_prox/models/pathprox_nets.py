"""The networks of the PathProx paper (Yang et al., 2022, Table 4), as in the authors' code (``Leiay/PathProx``)."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["VGG19_CFG", "FactorizedMLP", "VGG19NoBN"]

#: conv widths of VGG19 ("M": 2×2 max pooling), without the last pooling as in the authors' code
VGG19_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512,
)  # fmt: skip


class FactorizedMLP(nn.Module):
    """MLP with factorized hidden layers: ``Linear → ReLU``, then per extra layer two linear factors.

    ``depth=3`` is the paper's MLP-3-H factorized (Table 4: ``[in×H, ReLU, H×H]``, ``[H×H, ReLU, H×H]``,
    ``[H×H, ReLU, H×classes]``): six linear layers, no activation between the two factors of a layer,
    so the PathProx pairs (:func:`~lightning_prox.structure.pathprox_pairs`) are ``(1, 2), (3, 4),
    (5, 6)`` and every activated hidden layer has its own units (Yang et al., 2022, Appendix A.2).

    Args:
        in_features: inputs (the image is flattened).
        num_classes: outputs.
        hidden: width H of every layer.
        depth: number of ReLU hidden layers (≥ 1).

    Example:
        >>> import torch
        >>> from lightning_prox.structure import pathprox_pairs
        >>> net = FactorizedMLP(64, 10, hidden=16)
        >>> net(torch.zeros(2, 1, 8, 8)).shape, [(p.w_name, p.v_name) for p in pathprox_pairs(net)]
        (torch.Size([2, 10]), [('net.1', 'net.3'), ('net.4', 'net.6'), ('net.7', 'net.9')])
    """

    def __init__(self, in_features: int, num_classes: int, hidden: int = 400, depth: int = 3) -> None:
        super().__init__()
        if min(in_features, num_classes, hidden, depth) < 1:
            raise ValueError(
                f"FactorizedMLP sizes must be >= 1, got in_features={in_features}, num_classes={num_classes}, "
                f"hidden={hidden}, depth={depth}"
            )
        layers: list[nn.Module] = [nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Linear(hidden, hidden), nn.Linear(hidden, hidden), nn.ReLU()]
        layers.append(nn.Linear(hidden, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class VGG19NoBN(nn.Module):
    """VGG19 without batch norm and with one linear classifier, as the PathProx code trains it on CIFAR-10.

    ``Conv3×3 → ReLU`` per width of :data:`VGG19_CFG` (2×2 max pooling at ``"M"``), then
    ``AvgPool2d(2)``, flatten and ``Linear(512, num_classes)``; Kaiming-normal initialization (fan-in,
    ReLU gain) and zero biases. For 32×32 inputs. The 16 convs form the 8 PathProx pairs within the
    blocks; the classifier gets plain weight decay.

    Args:
        num_classes: outputs.
        in_chans: input channels.

    Example:
        >>> import torch
        >>> from lightning_prox.structure import pathprox_pairs
        >>> net = VGG19NoBN()
        >>> net(torch.zeros(1, 3, 32, 32)).shape, len(pathprox_pairs(net))
        (torch.Size([1, 10]), 8)
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c = in_chans
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU()]
                c = int(v)
        layers.append(nn.AvgPool2d(2))
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512, num_classes)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).flatten(1))
