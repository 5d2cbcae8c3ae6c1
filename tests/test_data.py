"""Datamodules: digits splits, epoch-seeded shuffling, and the torchvision formats on tiny files.

The tests write small data sets in the real on-disk formats (CIFAR python pickles, MNIST idx files, SVHN
``.mat``) and check that the datamodules read back exactly the written pixels and labels.
"""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest
import torch

from lightning_prox.data import (
    CIFAR10DataModule,
    CIFAR100DataModule,
    DigitsDataModule,
    EpochShuffleSampler,
    FashionMNISTDataModule,
    MNISTDataModule,
    SVHNDataModule,
)
from lightning_prox.data._common import make_loader

RNG = np.random.default_rng(0)


# -- digits ------------------------------------------------------------------------------------------
def test_digits_split_is_a_partition_and_deterministic():
    from sklearn.datasets import load_digits

    x_all, y_all = load_digits(return_X_y=True)
    dm = DigitsDataModule(val_fraction=0.2, test_fraction=0.1, seed=5)
    dm.setup("fit")
    sets = [dm.train_set, dm.val_set, dm.test_set]
    assert [len(s) for s in sets] == [1797 - 359 - 180, 359, 180]
    rows = [
        tuple(((t[0] + 1.0) * 8.0).round().int().flatten().tolist()) + (int(t[1]),) for s in sets for t in s
    ]
    expected = [tuple(int(v) for v in x) + (int(y),) for x, y in zip(x_all, y_all)]
    assert sorted(rows) == sorted(expected)  # every image exactly once, pixels/16 mapped to [-1, 1]
    dm2 = DigitsDataModule(val_fraction=0.2, test_fraction=0.1, seed=5)
    dm2.setup("fit")
    assert torch.equal(dm.train_set.tensors[0], dm2.train_set.tensors[0])


def test_digits_loaders_and_bad_arguments():
    dm = DigitsDataModule(batch_size=50, max_samples=120, val_fraction=0.25, test_fraction=0.0)
    dm.setup("fit")
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (50, 1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) >= -1.0 and float(x.max()) <= 1.0
    assert len(dm.val_set) == 30 and len(dm.test_set) == 0
    with pytest.raises(ValueError, match="batch_size"):
        DigitsDataModule(batch_size=0)
    with pytest.raises(ValueError, match="val_fraction"):
        DigitsDataModule(val_fraction=0.7, test_fraction=0.4)


def test_epoch_shuffle_sampler_depends_only_on_seed_and_epoch():
    a, b = EpochShuffleSampler(range(50), seed=1), EpochShuffleSampler(range(50), seed=1)
    torch.manual_seed(123)  # the global RNG must not matter
    e0 = list(a)
    torch.manual_seed(999)
    assert list(b) == e0 and sorted(e0) == list(range(50))
    a.set_epoch(1)
    assert list(a) != e0 and sorted(a) == list(range(50))


def test_distributed_loader_respects_no_shuffle():
    ds = torch.utils.data.TensorDataset(torch.arange(8))
    dl = make_loader(ds, 2, train=True, shuffle=False, seed=0, num_workers=0, distributed=(2, 1))
    assert [int(v) for b in dl for v in b[0]] == [1, 3, 5, 7]


# -- writers of the real formats -------------------------------------------------------------------------
def _cifar(root, hundred=False, n=4):
    folder = root / ("cifar-100-python" if hundred else "cifar-10-batches-py")
    folder.mkdir(parents=True)
    key = "fine_labels" if hundred else "labels"
    ncls = 100 if hundred else 10
    written = {}
    names = ["train", "test"] if hundred else [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]
    for name in names:
        data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = RNG.integers(0, ncls, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, key: labels}, f)
        written[name] = (data, labels)
    meta = (
        {"fine_label_names": [f"c{i}" for i in range(100)]}
        if hundred
        else {"label_names": [f"c{i}" for i in range(10)]}
    )
    with open(folder / ("meta" if hundred else "batches.meta"), "wb") as f:
        pickle.dump(meta, f)
    train = [written[k] for k in names[:-1]]
    return (np.concatenate([d for d, _ in train]), sum((lab for _, lab in train), [])), written[names[-1]]


def _idx(root, folder, n_train=6, n_test=3):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = RNG.integers(0, 10, n, dtype=np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(
            struct.pack(">IIII", 0x803, n, 28, 28) + images.tobytes()
        )
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x801, n) + labels.tobytes())
        out[prefix] = (images, labels)
    return out


def _svhn(root, n_train=5, n_test=3):
    from scipy.io import savemat

    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = RNG.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = RNG.integers(1, 11, (n, 1)).astype(np.uint8)  # SVHN stores digit 0 as label 10
        savemat(root / f"{split}_32x32.mat", {"X": x, "y": y})
        out[split] = (x, y)
    return out


def _normalized(hwc_uint8, mean, std):
    x = torch.as_tensor(hwc_uint8, dtype=torch.float32).permute(2, 0, 1) / 255.0
    return (x - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]


def _dm(cls, root, **kw):
    dm = cls(data_dir=str(root), download=False, verify_integrity=False, num_workers=0, augment=False, **kw)
    dm.prepare_data()  # download=False: nothing to fetch
    dm.setup("fit")
    return dm


# -- torchvision data sets -----------------------------------------------------------------------------
@pytest.mark.parametrize("cls", [CIFAR10DataModule, CIFAR100DataModule])
def test_cifar_reads_pickled_batches(tmp_path, cls):
    hundred = cls is CIFAR100DataModule
    (train_x, train_y), (test_x, test_y) = _cifar(tmp_path, hundred)
    dm = _dm(cls, tmp_path, batch_size=3)
    assert len(dm.train_set) == len(train_y) and len(dm.test_set) == len(test_y) and dm.val_set is dm.test_set
    x, y = dm.train_set[2]
    torch.testing.assert_close(
        x, _normalized(train_x[2].reshape(3, 32, 32).transpose(1, 2, 0), dm.mean, dm.std)
    )
    assert y == train_y[2]
    x, y = dm.test_set[1]
    torch.testing.assert_close(
        x, _normalized(test_x[1].reshape(3, 32, 32).transpose(1, 2, 0), dm.mean, dm.std)
    )
    assert y == test_y[1] and dm.num_classes == (100 if hundred else 10)
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (3, 3, 32, 32) and yb.dtype == torch.int64


def test_cifar_holdout_and_augmentation(tmp_path):
    (train_x, _), _ = _cifar(tmp_path)
    dm = _dm(CIFAR10DataModule, tmp_path, val_size=5)
    assert len(dm.train_set) == 15 and len(dm.val_set) == 5
    x, _ = dm.val_set[0]  # the first held-out image, without augmentation
    torch.testing.assert_close(
        x, _normalized(train_x[15].reshape(3, 32, 32).transpose(1, 2, 0), dm.mean, dm.std)
    )
    aug = CIFAR10DataModule(data_dir=str(tmp_path), download=False, verify_integrity=False)
    names = [type(t).__name__ for t in aug.train_transform().transforms]
    assert names == ["RandomCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    aug.setup("fit")
    assert aug.train_set[0][0].shape == (3, 32, 32)


def test_cifar_default_verifies_md5(tmp_path):
    _cifar(tmp_path)
    dm = CIFAR10DataModule(data_dir=str(tmp_path), download=False)
    with pytest.raises(RuntimeError, match="corrupted"):
        dm.setup("fit")


@pytest.mark.parametrize(
    ("cls", "folder"), [(MNISTDataModule, "MNIST"), (FashionMNISTDataModule, "FashionMNIST")]
)
def test_mnist_family_reads_idx_files(tmp_path, cls, folder):
    written = _idx(tmp_path, folder)
    dm = _dm(cls, tmp_path, batch_size=4)
    assert len(dm.train_set) == 6 and len(dm.test_set) == 3
    for ds, key in ((dm.train_set, "train"), (dm.test_set, "t10k")):
        images, labels = written[key]
        for i in range(len(labels)):
            x, y = ds[i]
            torch.testing.assert_close(x, _normalized(images[i][:, :, None], dm.mean, dm.std))
            assert y == int(labels[i])
    assert MNISTDataModule().augment is False and FashionMNISTDataModule().augment is True


def test_svhn_reads_mat_files(tmp_path):
    written = _svhn(tmp_path)
    dm = _dm(SVHNDataModule, tmp_path, batch_size=2)
    assert len(dm.train_set) == 5 and len(dm.test_set) == 3
    x_all, y_all = written["train"]
    for i in range(5):
        x, y = dm.train_set[i]
        torch.testing.assert_close(x, _normalized(x_all[:, :, :, i], dm.mean, dm.std))
        assert y == int(y_all[i, 0]) % 10  # label 10 means digit 0
    names = [type(t).__name__ for t in SVHNDataModule(data_dir=str(tmp_path)).train_transform().transforms]
    assert names[0] == "RandomCrop" and "RandomHorizontalFlip" not in names


# -- mid-epoch resume with random augmentation -------------------------------------------------------
def _augmented_fit(root, data, num_workers, max_steps=-1, ckpt_path=None):
    import lightning.pytorch as pl
    from helpers.trainers import quiet_trainer
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_prox.models import ImageClassifier
    from lightning_prox.regularizers import L1

    pl.seed_everything(0)
    model = ImageClassifier(
        "mlp", in_chans=3, img_size=32, hidden=(8,), drop_rate=0.3, regularizer=L1(1e-3), sparsity_table=False
    )
    ckpt = ModelCheckpoint(dirpath=root, filename="{step}", every_n_train_steps=1, save_top_k=-1)
    trainer = quiet_trainer(
        max_epochs=2, max_steps=max_steps, deterministic=True, enable_checkpointing=True,
        callbacks=[ckpt], num_sanity_val_steps=0, limit_val_batches=0,
    )  # fmt: skip
    dm = CIFAR10DataModule(
        data_dir=str(data), download=False, verify_integrity=False, num_workers=num_workers, batch_size=8
    )
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model


@pytest.mark.parametrize("step", [5, 7])  # the last batch of epoch 0, inside epoch 1
@pytest.mark.parametrize("num_workers", [0, 2])
def test_mid_epoch_resume_with_random_crops_and_flips_is_bit_exact(tmp_path, num_workers, step):
    """Each image's crop and flip are drawn from (seed, epoch, index) alone: the same after a resume."""
    _cifar(tmp_path / "data", n=8)  # 40 training images: 5 batches an epoch
    straight = _augmented_fit(tmp_path / "a", tmp_path / "data", num_workers)
    _augmented_fit(tmp_path / "b", tmp_path / "data", num_workers, max_steps=step)
    resumed = _augmented_fit(
        tmp_path / "c", tmp_path / "data", num_workers, ckpt_path=tmp_path / "b" / f"step={step}.ckpt"
    )
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), f"{n} differs after resuming from a mid-epoch checkpoint"
