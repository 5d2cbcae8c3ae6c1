"""Shared pieces of the datamodules: epoch-seeded samplers, resumable loaders, loader construction."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

__all__ = [
    "EpochShuffleSampler",
    "ResumableDataLoader",
    "SeededSamples",
    "consumed_batches",
    "distributed_info",
    "make_loader",
]


def distributed_info(trainer: object | None) -> tuple[int, int] | None:
    """``(world_size, global_rank)`` of a multi-process Trainer, else ``None``."""
    if trainer is None or getattr(trainer, "world_size", 1) <= 1:
        return None
    return int(trainer.world_size), int(trainer.global_rank)  # type: ignore[attr-defined]


def consumed_batches(trainer: Any) -> int:
    """Training batches of the current epoch that the Trainer has taken (its batch progress)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)


class EpochShuffleSampler(Sampler[int]):
    """Random permutation drawn from ``seed + epoch`` (Lightning calls :meth:`set_epoch`).

    The order depends only on the epoch, not on the global RNG, so a run resumed from a checkpoint
    sees exactly the batches of an uninterrupted run: from an epoch-end checkpoint by the epoch alone,
    from a mid-epoch (step) checkpoint together with :class:`ResumableDataLoader`, which makes the
    first resumed iteration start after the batches already taken (:meth:`skip_next`).

    Example:
        >>> s = EpochShuffleSampler(range(5), seed=0)
        >>> first = list(s); s.set_epoch(1); second = list(s); s.set_epoch(0)
        >>> sorted(first) == list(range(5)) and list(s) == first and second != first
        True
        >>> s.skip_next(2, epoch=0); list(s) == first[2:] and list(s) == first
        True
    """

    def __init__(self, data_source: Sized, seed: int = 0) -> None:
        self.n = len(data_source)
        self.seed = int(seed)
        self.epoch = 0
        self._skip: tuple[int, int] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def skip_next(self, count: int, epoch: int) -> None:
        """Leave out the first ``count`` indices of the next iteration, if it is of epoch ``epoch``."""
        self._skip = (int(count), int(epoch))

    #: called with the epoch when an iteration starts (set by ResumableDataLoader for SeededSamples)
    _on_iter: Callable[[int], None] | None = None

    def _take_skip(self) -> int:
        """Start an iteration: the number of indices to leave out (and the epoch to ``_on_iter``)."""
        if self._on_iter is not None:
            self._on_iter(self.epoch)
        skip, self._skip = self._skip, None
        return skip[0] if skip is not None and skip[1] == self.epoch else 0

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(torch.randperm(self.n, generator=g).tolist()[self._take_skip() :])

    def __len__(self) -> int:
        return self.n


class _ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` with :meth:`EpochShuffleSampler.skip_next` (each rank skips its own)."""

    _skip: tuple[int, int] | None = None
    _on_iter: Callable[[int], None] | None = None
    skip_next = EpochShuffleSampler.skip_next
    _take_skip = EpochShuffleSampler._take_skip

    def __iter__(self) -> Iterator[int]:
        skip = self._take_skip()
        return iter(list(super().__iter__())[skip:])


class SeededSamples(Dataset):
    """``dataset`` whose random transforms draw from ``(seed, epoch, index)`` alone.

    Each ``__getitem__`` runs under a forked torch RNG seeded from the three, so an image's random crop
    and flip do not depend on which worker loads it, on what was loaded before, or on the global RNG
    (dropout's numbers are not shifted by data loading): a run resumed mid-epoch sees exactly the
    augmented batches of an uninterrupted run. :class:`ResumableDataLoader`'s sampler sets the epoch
    when it starts an epoch (kept in shared memory, so persistent workers see it). The transforms must
    draw from torch's RNG, as torchvision's ``RandomCrop``/``RandomHorizontalFlip`` do.

    Example:
        >>> noisy = SeededSamples([0.0, 0.0], seed=1)
        >>> noisy.dataset = type("Noise", (), {"__getitem__": lambda self, i: torch.rand(1).item()})()
        >>> a = noisy[1]; _ = torch.rand(1); a == noisy[1] and a != noisy[0]
        True
        >>> noisy.set_epoch(1); a != noisy[1]
        True
    """

    def __init__(self, dataset: Dataset, seed: int = 0) -> None:
        self.dataset, self.seed = dataset, int(seed)
        self._epoch = torch.zeros((), dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        seed = ((self.seed * 1_000_003 + int(self._epoch)) * 1_000_000_007 + int(index)) % (2**63)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.dataset[index]


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` with Lightning's stateful-dataloader protocol (``state_dict``/``load_state_dict``).

    Lightning saves :meth:`state_dict` in every checkpoint and, when ``fit(ckpt_path=...)`` resumes in
    the middle of an epoch, calls :meth:`load_state_dict`; the next iteration then yields only the
    batches the interrupted epoch had not taken, in the same order (the sampler is epoch-seeded). The
    number taken is read from the Trainer (``progress``), not counted at the loader, because Lightning
    fetches one batch ahead. The loader draws its worker base seed from its own generator, reseeded
    from ``seed`` and the epoch, never from the global RNG, so iterating it does not shift the random
    numbers of dropout and the like. What resumes exactly: the batch order and contents, and, when the
    dataset is a :class:`SeededSamples` (the vision datamodules' augmented training sets), their
    random transforms too.

    Example:
        >>> loader = ResumableDataLoader(list(range(10)), batch_size=4, sampler=EpochShuffleSampler(range(10)))
        >>> full = [b.tolist() for b in loader]
        >>> loader.load_state_dict({"epoch": 0, "batches": 1})
        >>> [b.tolist() for b in loader] == full[1:]
        True
    """

    def __init__(
        self, *args: Any, progress: Callable[[], int] | None = None, seed: int = 0, **kwargs: Any
    ) -> None:
        if kwargs.get("generator") is None:
            kwargs["generator"] = torch.Generator()
        super().__init__(*args, **kwargs)
        self._progress = progress
        self._seed = int(seed)
        if isinstance(self.dataset, SeededSamples) and hasattr(self.sampler, "_take_skip"):
            # the epoch the sampler actually iterates (without workers it starts lazily, after iter())
            self.sampler._on_iter = self.dataset.set_epoch  # type: ignore[union-attr]

    def _epoch(self) -> int:
        return int(getattr(self.sampler, "epoch", 0))

    def __iter__(self) -> Any:
        assert self.generator is not None
        self.generator.manual_seed(self._seed * 1_000_003 + self._epoch())
        return super().__iter__()

    def state_dict(self) -> dict[str, int]:
        """``{"epoch": ..., "batches": training batches taken in this epoch}``."""
        progress = self._progress() if self._progress is not None else None
        return {"epoch": self._epoch(), "batches": int(progress if progress is not None else 0)}

    def load_state_dict(self, state_dict: dict[str, int]) -> None:
        batches = int(state_dict.get("batches", 0))
        epoch = int(state_dict.get("epoch", 0))
        set_epoch = getattr(self.sampler, "set_epoch", None)
        if callable(set_epoch):
            # Lightning creates the resumed iterator before it calls set_epoch, and with workers the
            # sampler is iterated right then: give it the epoch that continues (the next one when the
            # checkpoint's epoch was complete)
            set_epoch(epoch + 1 if batches >= len(self) else epoch)
        skip = getattr(self.sampler, "skip_next", None)
        if batches <= 0:
            return
        if self.batch_size is None or skip is None:
            raise ValueError(
                "ResumableDataLoader can resume mid-epoch only with a batch_size and an EpochShuffleSampler "
                "or its distributed sampler"
            )
        if batches * self.batch_size < len(self.sampler):  # type: ignore[arg-type]
            skip(batches * self.batch_size, epoch=epoch)


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
    progress: Callable[[], int] | None = None,
) -> DataLoader:
    """A DataLoader whose order depends only on ``seed`` and the epoch.

    Single process: training loaders shuffle with :class:`EpochShuffleSampler`. Under DDP
    (``distributed=(world_size, rank)``) training loaders get a ``DistributedSampler`` with ``shuffle``
    as asked (Lightning would otherwise insert one that always shuffles); Lightning calls its
    ``set_epoch``. Training loaders are :class:`ResumableDataLoader` (``progress``: the Trainer's
    batch count, see :func:`consumed_batches`), so a mid-epoch resume continues with the next batch.
    Evaluation loaders are left to Lightning (in order, their own generator).
    """
    sampler: Sampler[int] | None = None
    if train and distributed is not None:
        world_size, rank = distributed
        sampler = _ResumableDistributedSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed
        )
    elif train:
        sampler = EpochShuffleSampler(dataset, seed) if shuffle else _InOrderSampler(dataset)  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {
        "batch_size": batch_size,
        "sampler": sampler,
        "shuffle": False if sampler is None else None,
        "num_workers": num_workers,
        "drop_last": drop_last and train,
        "pin_memory": pin_memory,
        "persistent_workers": num_workers > 0,
    }
    if train:
        return ResumableDataLoader(dataset, progress=progress, seed=seed, **kwargs)
    return DataLoader(dataset, generator=torch.Generator().manual_seed(seed), **kwargs)


class _InOrderSampler(EpochShuffleSampler):
    """In order (no shuffling), with :meth:`EpochShuffleSampler.skip_next` for mid-epoch resume."""

    def __iter__(self) -> Iterator[int]:
        return iter(range(self._take_skip(), self.n))


def check_common(batch_size: int, num_workers: int) -> None:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    if num_workers < 0:
        raise ValueError(f"num_workers must be >= 0, got {num_workers!r}")
