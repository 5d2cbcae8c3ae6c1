"""Models: ``ImageClassifier`` (timm backbones or built-in nets), the small built-in networks and the
CIFAR ResNets."""

from .classifier import ImageClassifier, build_backbone
from .nets import MLP, LeNet
from .resnet_cifar import CifarResNet

__all__ = ["MLP", "CifarResNet", "ImageClassifier", "LeNet", "build_backbone"]
