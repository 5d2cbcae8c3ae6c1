"""torchvision data sets with the standard augmentations: CIFAR-10/100, MNIST, FashionMNIST, SVHN.

Each datamodule downloads into ``data_dir`` in ``prepare_data`` (``download=True``) and reads the files
in their original formats (CIFAR python pickles, MNIST idx, SVHN ``.mat``). By default the validation
loader is the official test split, as in the papers' CIFAR experiments; ``val_size > 0`` holds out the
last ``val_size`` training images instead (without augmentation), or a random ``val_size`` of them when
``split_seed`` is set.
"""

from __future__ import annotations

import os
from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset
from torchvision import datasets
from torchvision import transforms as T

from ._common import SeededSamples, check_common, consumed_batches, distributed_info, make_loader

__all__ = [
    "DataUnavailableError",
    "CIFAR10DataModule",
    "CIFAR100DataModule",
    "FashionMNISTDataModule",
    "MNISTDataModule",
    "SVHNDataModule",
    "VisionDataModule",
]


class DataUnavailableError(RuntimeError):
    """The data set's files are missing and cannot be downloaded; the message says where to put them."""

    #: the ``lightning-prox`` command reports this as a configuration error (exit status 2)
    prox_config_error = True
    prox_key = "data.init_args.data_dir"


class _CIFAR10Files(datasets.CIFAR10):
    """CIFAR-10 that checks the files exist but not their md5 (``verify_integrity=False``)."""

    def _check_integrity(self) -> bool:
        return all(
            os.path.isfile(os.path.join(self.root, self.base_folder, f))
            for f, _ in self.train_list + self.test_list
        )

    def _load_meta(self) -> None:
        import pickle

        with open(os.path.join(self.root, self.base_folder, self.meta["filename"]), "rb") as f:
            self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


class _CIFAR100Files(_CIFAR10Files, datasets.CIFAR100):
    pass


class _SVHNFiles(datasets.SVHN):
    def _check_integrity(self) -> bool:
        return os.path.isfile(os.path.join(self.root, self.filename))


class VisionDataModule(pl.LightningDataModule):
    """Base class: a torchvision data set, normalization, train-time augmentation, loaders.

    Args:
        data_dir: where the data set is (or is downloaded to).
        batch_size: batch size of every loader (per process under DDP).
        num_workers: DataLoader workers.
        download: download in ``prepare_data`` when the files are missing.
        augment: use the standard train-time augmentation (see each subclass); ``None`` = the data
            set's default (on for CIFAR, SVHN, FashionMNIST; off for MNIST).
        val_size: 0 = validate on the test split; > 0 = hold out that many training images.
        split_seed: ``None`` = hold out the last ``val_size`` training images; an integer = a random
            split drawn as ``torch.utils.data.random_split(train, [n - val_size, val_size],
            generator=torch.Generator().manual_seed(split_seed))`` would (the PathProx code's
            55,000/5,000 MNIST and 45,000/5,000 CIFAR-10 splits use seed 42).
        seed: seed of the per-epoch shuffling.
        shuffle: shuffle the training set each epoch.
        verify_integrity: check the downloaded files' md5 sums (CIFAR, SVHN).
        pin_memory: DataLoader ``pin_memory``.
        drop_last: drop the last incomplete training batch.
    """

    num_classes = 10
    in_chans = 3
    img_size = 32
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    #: whether ``augment=None`` means augmentation on
    default_augment = True

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 4,
        download: bool = True,
        augment: bool | None = None,
        val_size: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        verify_integrity: bool = True,
        pin_memory: bool = False,
        drop_last: bool = False,
        split_seed: int | None = None,
    ) -> None:
        super().__init__()
        check_common(batch_size, num_workers)
        if val_size < 0:
            raise ValueError(f"val_size must be >= 0, got {val_size!r}")
        if split_seed is not None and (isinstance(split_seed, bool) or not isinstance(split_seed, int)):
            raise ValueError(
                f"split_seed must be None (hold out the last images) or an integer, got {split_seed!r}"
            )
        self.save_hyperparameters()
        self.data_dir, self.batch_size, self.num_workers = data_dir, batch_size, num_workers
        self.download, self.val_size = download, val_size
        self.augment = self.default_augment if augment is None else augment
        self.seed, self.shuffle, self.verify_integrity = seed, shuffle, verify_integrity
        self.pin_memory, self.drop_last, self.split_seed = pin_memory, drop_last, split_seed

    # -- what a subclass defines ------------------------------------------------------------------
    def make_dataset(self, train: bool, transform: Any, download: bool = False) -> Dataset:
        raise NotImplementedError

    def augmentations(self) -> list[Any]:
        """Train-time augmentations applied before ``ToTensor`` (standard for the data set)."""
        return []

    def files_hint(self) -> str:
        """Where the files go when they must be put in place by hand (no network)."""
        return f"the data set's files into {os.path.abspath(self.data_dir)}"

    def _unavailable(self, err: BaseException, downloading: bool) -> DataUnavailableError:
        what = "cannot be downloaded" if downloading else "are not there"
        reason = getattr(err, "reason", None) or err
        return DataUnavailableError(
            f"{type(self).__name__}: the files {what} ({type(err).__name__}: {reason}); put "
            f"{self.files_hint()} (data_dir={self.data_dir!r}, data.init_args.data_dir) and run again"
            + ("" if downloading else ", or set download=True with network access")
        )

    # -- transforms ---------------------------------------------------------------------------------
    def eval_transform(self) -> Any:
        return T.Compose([T.ToTensor(), T.Normalize(self.mean, self.std)])

    def train_transform(self) -> Any:
        aug = self.augmentations() if self.augment else []
        return T.Compose([*aug, T.ToTensor(), T.Normalize(self.mean, self.std)])

    # -- Lightning hooks ----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        if self.download:
            for train in (True, False):
                try:
                    self.make_dataset(train, None, download=True)
                except (
                    OSError,
                    RuntimeError,
                ) as err:  # URLError is an OSError; torchvision raises RuntimeError
                    raise self._unavailable(err, downloading=True) from err

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        try:
            train = self.make_dataset(True, self.train_transform())
            test = self.make_dataset(False, self.eval_transform())
        except (OSError, RuntimeError) as err:
            raise self._unavailable(err, downloading=False) from err
        n = len(train)  # type: ignore[arg-type]
        if self.val_size >= n:
            raise ValueError(f"val_size={self.val_size} must be smaller than the training set ({n} images)")
        if self.val_size:
            train_eval = self.make_dataset(True, self.eval_transform())
            if self.split_seed is None:
                order: list[int] = list(range(n))
            else:  # the index rule of torch.utils.data.random_split
                order = torch.randperm(n, generator=torch.Generator().manual_seed(self.split_seed)).tolist()
            self.train_set: Dataset = Subset(train, order[: n - self.val_size])
            self.val_set: Dataset = Subset(train_eval, order[n - self.val_size :])
        else:
            self.train_set, self.val_set = train, test
        self.test_set: Dataset = test

    def _progress(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else consumed_batches(trainer)

    def _distributed(self) -> tuple[int, int] | None:
        return distributed_info(getattr(self, "trainer", None))

    def _loader(self, ds: Dataset, train: bool) -> DataLoader:
        return make_loader(
            ds,
            self.batch_size,
            train=train,
            shuffle=self.shuffle and train,
            seed=self.seed,
            num_workers=self.num_workers,
            distributed=self._distributed() if train else None,
            drop_last=self.drop_last,
            pin_memory=self.pin_memory,
            progress=self._progress if train else None,
        )

    def train_dataloader(self) -> DataLoader:
        # random crops and flips drawn per (seed, epoch, image): a mid-epoch resume repeats them exactly
        train = SeededSamples(self.train_set, self.seed) if self.augment else self.train_set
        return self._loader(train, True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, False)


class CIFAR10DataModule(VisionDataModule):
    """CIFAR-10 (``cifar-10-batches-py``); augmentation: random crop 32 with padding 4, horizontal flip."""

    mean = (0.4914, 0.4822, 0.4465)
    std = (0.2470, 0.2435, 0.2616)
    _cls: Any = datasets.CIFAR10
    _cls_files: Any = _CIFAR10Files

    def make_dataset(self, train: bool, transform: Any, download: bool = False) -> Dataset:
        cls = self._cls if self.verify_integrity or download else self._cls_files
        return cls(self.data_dir, train=train, transform=transform, download=download)

    def files_hint(self) -> str:
        c = self._cls
        root = os.path.abspath(self.data_dir)
        return f"{c.filename} (from {c.url}) or its extracted folder {c.base_folder}/ into {root}"

    def augmentations(self) -> list[Any]:
        return [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]


class CIFAR100DataModule(CIFAR10DataModule):
    """CIFAR-100 (``cifar-100-python``, fine labels); same augmentation as CIFAR-10."""

    num_classes = 100
    mean = (0.5071, 0.4865, 0.4409)
    std = (0.2673, 0.2564, 0.2762)
    _cls = datasets.CIFAR100
    _cls_files = _CIFAR100Files


class MNISTDataModule(VisionDataModule):
    """MNIST (idx files under ``MNIST/raw``); 1 channel, 28x28; augmentation (off by default): random crop.

    ``subset_per_class=k`` trains on a class-balanced subset of the training images, as the PathProx
    paper's Task 1 (Yang et al., 2022, Section 5 and Appendix D.1.1: 100 random images per class, 1000
    in all, with the authors' code shuffling the 60,000 training images with seed 42 and keeping the
    first 100 of each class): the training images are permuted by ``torch.randperm`` with a generator
    seeded by ``subset_seed`` and the first ``k`` images of each class in that order are kept (the
    authors' selection rule; ``subset_per_class=100, subset_seed=42`` is their setting). The
    validation set is then every other training image (59,000 for ``k=100``, without augmentation),
    as in the authors' code; the test set is the full test split. ``val_size`` must stay 0 then.

    Args:
        subset_per_class: images per class in the training subset; 0 = the whole training split.
        subset_seed: seed of the permutation that draws the subset (independent of ``seed``).

    The other arguments are those of :class:`VisionDataModule`.

    Example:
        >>> dm = MNISTDataModule(data_dir="data", subset_per_class=100, subset_seed=42)
        >>> dm.subset_per_class, dm.subset_seed, dm.val_size
        (100, 42, 0)
    """

    in_chans = 1
    img_size = 28
    default_augment = False
    mean = (0.1307,)
    std = (0.3081,)
    _cls: Any = datasets.MNIST

    def __init__(
        self,
        data_dir: str = "data",
        batch_size: int = 128,
        num_workers: int = 4,
        download: bool = True,
        augment: bool | None = None,
        val_size: int = 0,
        seed: int = 0,
        shuffle: bool = True,
        verify_integrity: bool = True,
        pin_memory: bool = False,
        drop_last: bool = False,
        split_seed: int | None = None,
        subset_per_class: int = 0,
        subset_seed: int = 42,
    ) -> None:
        if (
            isinstance(subset_per_class, bool)
            or not isinstance(subset_per_class, int)
            or subset_per_class < 0
        ):
            raise ValueError(
                f"subset_per_class must be an integer >= 0 (0 = the whole training split), got {subset_per_class!r}"
            )
        if isinstance(subset_seed, bool) or not isinstance(subset_seed, int):
            raise ValueError(f"subset_seed must be an integer, got {subset_seed!r}")
        super().__init__(
            data_dir=data_dir,
            batch_size=batch_size,
            num_workers=num_workers,
            download=download,
            augment=augment,
            val_size=val_size,
            seed=seed,
            shuffle=shuffle,
            verify_integrity=verify_integrity,
            pin_memory=pin_memory,
            drop_last=drop_last,
            split_seed=split_seed,
        )
        if subset_per_class and self.val_size:
            raise ValueError(
                f"subset_per_class={subset_per_class} validates on the training images outside the subset; "
                f"val_size={self.val_size} cannot be used with it: set val_size=0"
            )
        self.subset_per_class, self.subset_seed = subset_per_class, subset_seed

    def subset_indices(self, targets: Any) -> tuple[list[int], list[int]]:
        """Indices of the class-balanced training subset and of the remaining (validation) images.

        ``targets`` are the training labels; both index lists are sorted. Raises ``ValueError`` when a
        class has fewer than ``subset_per_class`` images.

        Example:
            >>> import torch
            >>> dm = MNISTDataModule(subset_per_class=1, subset_seed=0)
            >>> train, val = dm.subset_indices(torch.arange(20) % 10)
            >>> len(train), len(val), sorted(i % 10 for i in train) == list(range(10))
            (10, 10, True)
        """
        labels = torch.as_tensor(targets, dtype=torch.int64).reshape(-1)
        k = self.subset_per_class
        perm = torch.randperm(labels.numel(), generator=torch.Generator().manual_seed(self.subset_seed))
        in_order = labels[perm]
        keep = []
        for c in range(self.num_classes):
            idx = perm[in_order == c]
            if idx.numel() < k:
                raise ValueError(
                    f"{type(self).__name__}: class {c} has {idx.numel()} training images, fewer than "
                    f"subset_per_class={k}; lower subset_per_class or check the files in {self.data_dir!r}"
                )
            keep.append(idx[:k])
        chosen = torch.zeros(labels.numel(), dtype=torch.bool)
        chosen[torch.cat(keep)] = True
        return chosen.nonzero().flatten().tolist(), (~chosen).nonzero().flatten().tolist()

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set") or not self.subset_per_class:
            super().setup(stage)
            return
        try:
            train = self.make_dataset(True, self.train_transform())
            train_eval = self.make_dataset(True, self.eval_transform())
            test = self.make_dataset(False, self.eval_transform())
        except (OSError, RuntimeError) as err:
            raise self._unavailable(err, downloading=False) from err
        keep, rest = self.subset_indices(train.targets)  # type: ignore[attr-defined]
        self.train_set = Subset(train, keep)
        self.val_set = Subset(train_eval, rest)
        self.test_set = test

    def make_dataset(self, train: bool, transform: Any, download: bool = False) -> Dataset:
        return self._cls(self.data_dir, train=train, transform=transform, download=download)

    def files_hint(self) -> str:
        files = ", ".join(f for f, _ in self._cls.resources)
        folder = os.path.join(os.path.abspath(self.data_dir), self._cls.__name__, "raw")
        return f"{files} (from {self._cls.mirrors[0]}) into {folder}"

    def augmentations(self) -> list[Any]:
        return [T.RandomCrop(28, padding=2)]


class FashionMNISTDataModule(MNISTDataModule):
    """FashionMNIST (idx files under ``FashionMNIST/raw``); augmentation: horizontal flip."""

    default_augment = True
    mean = (0.2860,)
    std = (0.3530,)
    _cls = datasets.FashionMNIST

    def augmentations(self) -> list[Any]:
        return [T.RandomHorizontalFlip()]


class SVHNDataModule(VisionDataModule):
    """SVHN cropped digits (``train_32x32.mat``/``test_32x32.mat``); augmentation: random crop, no flip."""

    mean = (0.4377, 0.4438, 0.4728)
    std = (0.1980, 0.2010, 0.1970)

    def make_dataset(self, train: bool, transform: Any, download: bool = False) -> Dataset:
        cls = datasets.SVHN if self.verify_integrity or download else _SVHNFiles
        return cls(self.data_dir, split="train" if train else "test", transform=transform, download=download)

    def files_hint(self) -> str:
        urls = [datasets.SVHN.split_list[k][0] for k in ("train", "test")]
        files = ", ".join(datasets.SVHN.split_list[k][1] for k in ("train", "test"))
        return f"{files} (from {', '.join(urls)}) into {os.path.abspath(self.data_dir)}"

    def augmentations(self) -> list[Any]:
        return [T.RandomCrop(32, padding=4)]
