"""Shared pieces of the datamodules: an epoch-seeded shuffling sampler and loader construction."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

__all__ = ["EpochShuffleSampler", "distributed_info", "make_loader"]


def distributed_info(trainer: object | None) -> tuple[int, int] | None:
    """``(world_size, global_rank)`` of a multi-process Trainer, else ``None``."""
    if trainer is None or getattr(trainer, "world_size", 1) <= 1:
        return None
    return int(trainer.world_size), int(trainer.global_rank)  # type: ignore[attr-defined]


class EpochShuffleSampler(Sampler[int]):
    """Random permutation drawn from ``seed + epoch`` (Lightning calls :meth:`set_epoch`).

    The order depends only on the epoch, not on the global RNG, so a run resumed from a checkpoint
    sees exactly the batches of an uninterrupted run.

    Example:
        >>> s = EpochShuffleSampler(range(5), seed=0)
        >>> first = list(s); s.set_epoch(1); second = list(s); s.set_epoch(0)
        >>> sorted(first) == list(range(5)) and list(s) == first and second != first
        True
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.n = len(data_source)
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist())

    def __len__(self) -> int:
        return self.n


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    train: bool,
    shuffle: bool,
    seed: int,
    num_workers: int,
    distributed: tuple[int, int] | None = None,
    drop_last: bool = False,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` and the epoch.

    Single process: training loaders shuffle with :class:`EpochShuffleSampler`. Under DDP
    (``distributed=(world_size, rank)``) training loaders get a ``DistributedSampler`` with ``shuffle``
    as asked (Lightning would otherwise insert one that always shuffles); Lightning calls its
    ``set_epoch``. Evaluation loaders are left to Lightning.
    """
    sampler: Sampler[int] | None = None
    if train and distributed is not None:
        world_size, rank = distributed
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
    elif train and shuffle:
        sampler = EpochShuffleSampler(dataset, seed)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False if sampler is None else None,
        num_workers=num_workers,
        drop_last=drop_last and train,
        pin_memory=pin_memory,
        persistent_workers=num_workers > 0,
    )


def check_common(batch_size: int, num_workers: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers!r}")
