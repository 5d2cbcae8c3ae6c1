"""Models: ``ImageClassifier`` (timm backbones or built-in nets) and the small built-in networks."""

from .classifier import ImageClassifier, build_backbone
from .nets import MLP, LeNet

__all__ = ["MLP", "ImageClassifier", "LeNet", "build_backbone"]
