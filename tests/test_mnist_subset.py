"""MNIST's class-balanced training subset (``subset_per_class``, the PathProx paper's Task 1) on small
idx files written in the real MNIST format (no download)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_prox.cli import ProxCLI
from lightning_prox.data import FashionMNISTDataModule, MNISTDataModule

RNG = np.random.default_rng(7)


def _write_idx(root, labels, folder="MNIST", n_test=4):
    """Random train images with the given labels, and a test split of the first ``n_test`` of them."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    labels = np.asarray(labels, dtype=np.uint8)
    images = RNG.integers(0, 256, (len(labels), 28, 28), dtype=np.uint8)
    for prefix, x, y in (
        ("train", images, labels),
        ("t10k", images[:n_test], labels[:n_test]),
    ):
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x803, len(y), 28, 28) + x.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, len(y)) + y.tobytes())
    return images, labels


def _dm(root, cls=MNISTDataModule, **kw):
    dm = cls(data_dir=str(root), download=False, num_workers=0, batch_size=4, **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def _reference(labels, k, seed):
    """Shuffle with torch.randperm(seed), walk the permutation, keep the first k images of each class."""
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    counts, keep = [0] * 10, []
    for i in perm:
        c = int(labels[i])
        if counts[c] < k:
            counts[c] += 1
            keep.append(i)
    return sorted(keep)


def _balanced_labels(per_class=6):
    return RNG.permutation(np.repeat(np.arange(10), per_class))


@pytest.mark.parametrize(
    ("cls", "folder"), [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")]
)
def test_subset_is_class_balanced_and_validation_is_the_rest(tmp_path, cls, folder):
    images, labels = _write_idx(tmp_path, _balanced_labels(6), folder)
    dm = _dm(tmp_path, cls, subset_per_class=2, subset_seed=42, augment=False)
    train_idx, val_idx = list(dm.train_set.indices), list(dm.val_set.indices)
    assert len(train_idx) == 20 and len(val_idx) == 40 and len(dm.test_set) == 4
    assert set(train_idx).isdisjoint(val_idx) and sorted(train_idx + val_idx) == list(range(60))
    assert train_idx == _reference(labels, 2, 42)
    assert np.bincount([dm.train_set[j][1] for j in range(len(train_idx))], minlength=10).tolist() == [2] * 10
    # the loaders return the written pixels (normalized) and labels of the chosen images
    x, y = dm.train_set[3]
    i = train_idx[3]
    expected = (torch.as_tensor(images[i], dtype=torch.float32) / 255.0 - dm.mean[0]) / dm.std[0]
    torch.testing.assert_close(x[0], expected)
    assert y == int(labels[i])
    x, y = dm.val_set[0]
    assert y == int(labels[val_idx[0]])
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (4, 1, 28, 28) and yb.dtype == torch.int64
    assert sum(len(b[1]) for b in dm.val_dataloader()) == 40
    # with augmentation on, only the training subset is augmented
    aug = _dm(tmp_path, cls, subset_per_class=2, subset_seed=42, augment=True)
    names = [type(t).__name__ for t in aug.train_set.dataset.transform.transforms]
    assert names[0].startswith("Random") and list(aug.train_set.indices) == train_idx
    assert [type(t).__name__ for t in aug.val_set.dataset.transform.transforms] == ["ToTensor", "Normalize"]


def test_subset_is_deterministic_per_seed(tmp_path):
    _, labels = _write_idx(tmp_path, _balanced_labels(8))
    first = _dm(tmp_path, subset_per_class=3, subset_seed=42).train_set.indices
    again = _dm(tmp_path, subset_per_class=3, subset_seed=42).train_set.indices
    other = _dm(tmp_path, subset_per_class=3, subset_seed=0).train_set.indices
    assert list(first) == list(again) == _reference(labels, 3, 42)
    assert list(other) == _reference(labels, 3, 0) and list(other) != list(first)
    # the shuffling seed of the loaders does not move the subset
    assert list(_dm(tmp_path, subset_per_class=3, subset_seed=42, seed=5).train_set.indices) == list(first)


def test_subset_whole_class_and_default_is_the_full_split(tmp_path):
    _, labels = _write_idx(tmp_path, _balanced_labels(3))
    dm = _dm(tmp_path, subset_per_class=3)
    assert list(dm.train_set.indices) == list(range(30)) and len(dm.val_set) == 0
    full = _dm(tmp_path)
    assert len(full.train_set) == 30 and full.val_set is full.test_set


def test_a_class_with_too_few_images_is_a_clear_error(tmp_path):
    labels = _balanced_labels(4)
    labels[np.flatnonzero(labels == 3)[1:]] = 5  # class 3 keeps a single image
    _write_idx(tmp_path, labels)
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False, num_workers=0, subset_per_class=2)
    with pytest.raises(ValueError, match=r"class 3 has 1 training images, fewer than subset_per_class=2"):
        dm.setup("fit")
    assert not hasattr(dm, "train_set")


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"subset_per_class": -1}, "subset_per_class must be an integer >= 0"),
        ({"subset_per_class": 1.5}, "subset_per_class must be an integer >= 0"),
        ({"subset_per_class": True}, "subset_per_class must be an integer >= 0"),
        ({"subset_seed": "42"}, "subset_seed must be an integer"),
        ({"subset_per_class": 100, "val_size": 5000}, "val_size=5000 cannot be used with it"),
    ],
)
def test_bad_subset_arguments(kw, match):
    with pytest.raises(ValueError, match=match):
        MNISTDataModule(**kw)


RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.mark.parametrize("name", ["pathprox_mnist_subset_fmlp", "pathprox_mnist_subset_fmlp_wd"])
def test_task1_recipe_trains_on_mnist_files(tmp_path, monkeypatch, name):
    """The Task 1 recipes run end to end (one step, one validation batch) on MNIST-format files."""
    monkeypatch.chdir(tmp_path)
    _write_idx(tmp_path, _balanced_labels(101), n_test=8)
    args = [
        "fit",
        "--config",
        str(RECIPES / f"{name}.yaml"),
        "--trainer.fast_dev_run=true",
        "--trainer.accelerator=cpu",
        f"--data.init_args.data_dir={tmp_path}",
        "--data.init_args.download=false",
        "--data.init_args.num_workers=0",
    ]
    cli = ProxCLI(args)
    dm = cli.datamodule
    assert cli.trainer.global_step == 1 and len(dm.train_set) == 1000 and len(dm.val_set) == 10
    assert (
        np.bincount([int(dm.train_set.dataset.targets[i]) for i in dm.train_set.indices]).tolist()
        == [100] * 10
    )
    opt = cli.trainer.optimizers[0]
    assert type(opt).__name__ == ("SGD" if name.endswith("_wd") else "PathProx")


def test_seeded_holdout_is_torch_random_split(tmp_path):
    """``split_seed`` draws the held-out images as ``random_split`` (the PathProx code's 55,000/5,000 split)."""
    images, labels = _write_idx(tmp_path, _balanced_labels(6))
    dm = _dm(tmp_path, val_size=10, split_seed=42, augment=False)
    ref_train, ref_val = torch.utils.data.random_split(
        range(60), [50, 10], generator=torch.Generator().manual_seed(42)
    )
    assert list(dm.train_set.indices) == list(ref_train.indices)
    assert list(dm.val_set.indices) == list(ref_val.indices)
    x, y = dm.val_set[0]
    i = ref_val.indices[0]
    torch.testing.assert_close(
        x[0], (torch.as_tensor(images[i], dtype=torch.float32) / 255.0 - 0.1307) / 0.3081
    )
    assert y == int(labels[i])
    other = _dm(tmp_path, val_size=10, split_seed=0)
    assert sorted(other.val_set.indices) != sorted(dm.val_set.indices)
    last = _dm(tmp_path, val_size=10)  # no seed: the last images, as before
    assert list(last.val_set.indices) == list(range(50, 60)) and list(last.train_set.indices) == list(
        range(50)
    )
    with pytest.raises(ValueError, match="split_seed must be None"):
        MNISTDataModule(val_size=10, split_seed=1.0)
