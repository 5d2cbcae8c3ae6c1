"""Small built-in networks for quick experiments and tests: an MLP and a LeNet-style CNN."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor, nn

__all__ = ["MLP", "LeNet"]


class MLP(nn.Module):
    """Flatten, then ``Linear → ReLU`` per hidden width, then a linear classifier.

    Args:
        in_features: number of input features (``in_chans * img_size**2`` for images).
        num_classes: number of outputs.
        hidden: widths of the hidden layers.
        dropout: dropout probability after each hidden activation.

    Example:
        >>> import torch
        >>> MLP(64, 10, hidden=(32,))(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self, in_features: int, num_classes: int, hidden: Sequence[int] = (256, 128), dropout: float = 0.0
    ) -> None:
        super().__init__()
        if in_features < 1 or num_classes < 1 or any(h < 1 for h in hidden):
            raise ValueError(
                f"MLP sizes must be >= 1, got in_features={in_features}, num_classes={num_classes}, "
                f"hidden={tuple(hidden)}"
            )
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        self.net = nn.Sequential(*layers)
        #: the input and output layers (``exclude_ends=True`` leaves them dense)
        self.prox_ends = {"first_conv": "net.1", "classifier": f"net.{len(layers) - 1}"}

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class LeNet(nn.Module):
    """LeNet-style CNN: ``[Conv3x3 → ReLU → MaxPool2]`` per channel width, then ``Linear → ReLU → Linear``.

    The convolutions use padding 1, so each stage halves the image size; the flattened feature size
    follows from ``img_size``.

    Args:
        in_chans: input channels.
        num_classes: number of outputs.
        img_size: input height = width.
        channels: output channels of the conv stages.
        hidden: width of the hidden fully connected layer.

    Example:
        >>> import torch
        >>> LeNet(1, 10, img_size=8, channels=(4, 8), hidden=16)(torch.zeros(2, 1, 8, 8)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_chans: int,
        num_classes: int,
        img_size: int,
        channels: Sequence[int] = (16, 32),
        hidden: int = 64,
    ) -> None:
        super().__init__()
        if not channels or img_size >> len(channels) < 1:
            raise ValueError(
                f"LeNet: img_size={img_size} is too small for {len(channels)} conv stages "
                f"(each halves it); use fewer channels entries or a larger img_size"
            )
        feats: list[nn.Module] = []
        c = in_chans
        for out in channels:
            feats += [nn.Conv2d(c, out, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            c = out
        self.features = nn.Sequential(*feats)
        side = img_size >> len(channels)
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c * side * side, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
        )
        #: the first conv and the output layer (``exclude_ends=True`` leaves them dense)
        self.prox_ends = {"first_conv": "features.0", "classifier": "classifier.3"}

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))
