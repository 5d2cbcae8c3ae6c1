"""Datamodules: scikit-learn digits (offline default) and torchvision image data sets."""

from ._common import EpochShuffleSampler
from .digits import DigitsDataModule
from .vision import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DataUnavailableError,
    FashionMNISTDataModule,
    MNISTDataModule,
    SVHNDataModule,
    VisionDataModule,
)

__all__ = [
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "DataUnavailableError",
    "DigitsDataModule",
    "EpochShuffleSampler",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "SVHNDataModule",
    "VisionDataModule",
]
