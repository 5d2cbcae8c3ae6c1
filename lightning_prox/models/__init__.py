"""Models: ``ImageClassifier`` (timm backbones or built-in nets), the small built-in networks and the
CIFAR ResNets."""

from .classifier import ImageClassifier, build_backbone
from .nets import MLP, LeNet
from .pathprox_nets import FactorizedMLP, VGG19NoBN
from .resnet_cifar import CifarResNet

__all__ = [
    "MLP",
    "CifarResNet",
    "FactorizedMLP",
    "ImageClassifier",
    "LeNet",
    "VGG19NoBN",
    "build_backbone",
]
