"""scikit-learn's 8x8 digits (1,797 images, ships with scikit-learn): the offline default data set."""

from __future__ import annotations

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from ._common import check_common, consumed_batches, distributed_info, make_loader

__all__ = ["DigitsDataModule"]


class DigitsDataModule(pl.LightningDataModule):
    """``sklearn.datasets.load_digits`` as ``[N, 1, 8, 8]`` float images in [-1, 1] and int64 labels.

    The split into train / val / test is a fixed permutation drawn from ``seed`` (no download).

    Args:
        batch_size: batch size of every loader (per process under DDP).
        val_fraction: fraction held out for validation.
        test_fraction: fraction held out for testing.
        seed: seed of the split and of the per-epoch shuffling.
        shuffle: shuffle the training set each epoch.
        num_workers: DataLoader workers.
        max_samples: keep only the first ``max_samples`` of the permuted data (quick tests).
        drop_last: drop the last incomplete training batch.

    Example:
        >>> dm = DigitsDataModule(batch_size=32)
        >>> dm.setup("fit")
        >>> x, y = next(iter(dm.train_dataloader()))
        >>> tuple(x.shape), y.dtype, len(dm.train_set) + len(dm.val_set) + len(dm.test_set)
        ((32, 1, 8, 8), torch.int64, 1797)
    """

    num_classes = 10
    in_chans = 1
    img_size = 8

    def __init__(
        self,
        batch_size: int = 64,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        shuffle: bool = True,
        num_workers: int = 0,
        max_samples: int | None = None,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        check_common(batch_size, num_workers)
        if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
            raise ValueError(
                f"val_fraction={val_fraction} and test_fraction={test_fraction} must be in [0, 1) "
                "and sum to less than 1"
            )
        if max_samples is not None and max_samples < 1:
            raise ValueError(f"max_samples must be None or >= 1, got {max_samples!r}")
        self.save_hyperparameters()
        self.batch_size = batch_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.seed, self.shuffle, self.num_workers = seed, shuffle, num_workers
        self.max_samples, self.drop_last = max_samples, drop_last

    def setup(self, stage: str | None = None) -> None:
        if hasattr(self, "train_set"):
            return
        from sklearn.datasets import load_digits

        x, y = load_digits(return_X_y=True)
        x = torch.as_tensor(x, dtype=torch.float32).reshape(-1, 1, 8, 8) / 8.0 - 1.0
        y = torch.as_tensor(y, dtype=torch.int64)
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(self.seed))
        if self.max_samples is not None:
            perm = perm[: self.max_samples]
        n = len(perm)
        n_val, n_test = int(round(self.val_fraction * n)), int(round(self.test_fraction * n))
        n_train = n - n_val - n_test
        idx_train, idx_val, idx_test = (
            perm[:n_train],
            perm[n_train : n_train + n_val],
            perm[n_train + n_val :],
        )
        self.train_set = TensorDataset(x[idx_train], y[idx_train])
        self.val_set = TensorDataset(x[idx_val], y[idx_val])
        self.test_set = TensorDataset(x[idx_test], y[idx_test])

    def _progress(self) -> int | None:
        trainer = getattr(self, "trainer", None)
        return None if trainer is None else consumed_batches(trainer)

    def _distributed(self) -> tuple[int, int] | None:
        return distributed_info(getattr(self, "trainer", None))

    def train_dataloader(self) -> DataLoader:
        return make_loader(
            self.train_set,
            self.batch_size,
            train=True,
            shuffle=self.shuffle,
            seed=self.seed,
            num_workers=self.num_workers,
            distributed=self._distributed(),
            drop_last=self.drop_last,
            progress=self._progress,
        )

    def _eval_loader(self, ds: TensorDataset) -> DataLoader:
        return make_loader(
            ds, self.batch_size, train=False, shuffle=False, seed=0, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        return self._eval_loader(self.val_set)

    def test_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)

    def predict_dataloader(self) -> DataLoader:
        return self._eval_loader(self.test_set)
