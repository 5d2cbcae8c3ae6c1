"""RegularizationScheduler: schedules against their closed forms, real Trainers, exact resume."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers.trainers import csv_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prox.callbacks import RegularizationScheduler
from lightning_prox.callbacks._schedules import lam_factor
from lightning_prox.optim import RMDA
from lightning_prox.regularizers import L1


# -- the schedule functions against hand-written formulas -------------------------------------------
@pytest.mark.parametrize("t", [0, 1, 2, 7, 30])
def test_lam_factor_closed_forms(t):
    assert lam_factor("constant", t) == 1.0
    assert lam_factor("linear", t) == t
    assert lam_factor("linear", t, offset=1) == t + 1
    assert lam_factor("step", t, milestones=[2, 7], gamma=0.5) == 0.5 ** ((t >= 2) + (t >= 7))
    expect_cos = 0.1 + (2.0 - 0.1) * 0.5 * (1 + math.cos(math.pi * min(t, 10) / 10))
    assert lam_factor("cosine", t, total=10, start_factor=2.0, final_factor=0.1) == pytest.approx(expect_cos)
    assert lam_factor("warmup", t, warmup=4) == min(1.0, t / 4)
    assert lam_factor("linear", t, warmup=4) == t * min(1.0, t / 4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"schedule": "exp"}, "'exp'"),
        ({"schedule": "step"}, "milestones"),
        ({"schedule": "step", "milestones": [5, 2]}, r"\[5, 2\]"),
        ({"schedule": "warmup"}, "warmup >= 1"),
        ({"interval": "batch"}, "'batch'"),
        ({"lam": -1.0}, "-1.0"),
        ({"gamma": -0.1}, "-0.1"),
        ({"total": 0}, "total"),
        ({"schedule": "linear", "offset": -1}, "offset"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        RegularizationScheduler(**kwargs)


# -- real Trainers --------------------------------------------------------------------------------
class _Net(pl.LightningModule):
    def __init__(self, lam: float = 0.05):
        super().__init__()
        self.lam = lam
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)
        self.seen_lams: list[tuple[int, int, float]] = []  # (epoch, global_step, lam used by the step)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def on_before_optimizer_step(self, optimizer):
        lam = [g["lam"] for g in optimizer.param_groups if g["regularizer"] is not None][0]
        self.seen_lams.append((self.current_epoch, self.global_step, lam))

    def configure_optimizers(self):
        return RMDA(
            [
                {"params": [self.fc1.weight, self.fc2.weight], "regularizer": L1(self.lam)},
                {"params": [self.fc1.bias, self.fc2.bias]},
            ],
            lr=0.05,
            momentum=1.0,
        )


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 6, generator=g)
    y = torch.randint(0, 3, (24,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def _read_metric(logger: CSVLogger, key: str) -> list[tuple[int, float]]:
    with open(Path(logger.log_dir) / "metrics.csv") as f:
        return [(int(r["step"]), float(r[key])) for r in csv.DictReader(f) if r.get(key)]


def test_linear_homotopy_per_epoch_writes_lam_and_logs(tmp_path):
    pl.seed_everything(0)
    net = _Net(lam=0.01)
    trainer = csv_trainer(tmp_path, [RegularizationScheduler("linear", interval="epoch")], max_epochs=3)
    trainer.fit(net, _loader())
    # 3 steps per epoch; λ_epoch = λ·epoch with a 0-based epoch (ProxQuant)
    assert [lam for *_, lam in net.seen_lams] == pytest.approx([0.01 * e for e in range(3) for _ in range(3)])
    group = trainer.optimizers[0].param_groups[0]
    assert group["initial_lam"] == 0.01 and group["lam"] == pytest.approx(0.02)
    assert trainer.optimizers[0].param_groups[1]["lam"] == 0.0  # unregularized group untouched
    assert _read_metric(trainer.logger, "prox/lambda") == [(0, 0.0), (3, 0.01), (6, 0.02)]


def test_per_step_schedule_uses_global_step(tmp_path):
    pl.seed_everything(0)
    net = _Net(lam=0.01)
    cb = RegularizationScheduler("cosine", interval="step", lam=0.2, start_factor=0.0, final_factor=1.0)
    trainer = csv_trainer(tmp_path, [cb], max_epochs=2)
    trainer.fit(net, _loader())
    total = 6  # estimated_stepping_batches
    expect = [0.2 * (1.0 - 0.5 * (1 + math.cos(math.pi * s / total))) for s in range(6)]
    assert [s for _, s, _ in net.seen_lams] == list(range(6))
    assert [lam for *_, lam in net.seen_lams] == pytest.approx(expect)
    logged = _read_metric(trainer.logger, "prox/lambda")
    assert [s for s, _ in logged] == list(range(6))
    assert [v for _, v in logged] == pytest.approx(expect)


def test_no_regularized_group_is_an_error(tmp_path):
    class Plain(_Net):
        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    trainer = csv_trainer(tmp_path, [RegularizationScheduler("linear")], max_epochs=1)
    with pytest.raises(ValueError, match="no param group with a regularizer"):
        trainer.fit(Plain(), _loader())


class _Snapshot(Callback):
    def __init__(self):
        self.lams: list[float] = []

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        self.lams.append(optimizer.param_groups[0]["lam"])


@pytest.mark.parametrize("interval", ["epoch", "step"])
def test_resume_is_exact(tmp_path, interval):
    def sched():
        return RegularizationScheduler(
            "step" if interval == "epoch" else "linear", interval=interval, milestones=[1, 2], gamma=3.0
        )

    pl.seed_everything(0)
    full = _Net(lam=0.01)
    snap_full = _Snapshot()
    csv_trainer(tmp_path / "a", [sched(), snap_full], max_epochs=4).fit(full, _loader())

    pl.seed_everything(0)
    part = _Net(lam=0.01)
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, every_n_epochs=1)
    csv_trainer(tmp_path / "b", [sched(), ckpt], max_epochs=2).fit(part, _loader())
    path = sorted((tmp_path / "ck").glob("epoch=1*.ckpt"))[0]
    state = torch.load(path, weights_only=True)  # plain data only
    assert any("RegularizationScheduler" in k for k in state["callbacks"])

    pl.seed_everything(0)
    resumed = _Net(lam=0.01)
    snap_res = _Snapshot()
    csv_trainer(tmp_path / "c", [sched(), snap_res], max_epochs=4).fit(resumed, _loader(), ckpt_path=path)
    assert snap_res.lams == snap_full.lams[6:]
    for a, b in zip(full.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # λ mattered: the L1 prox produced exact zeros
    assert (full.fc1.weight == 0).any()


def test_subgradient_penalty_groups_are_scheduled_too(tmp_path):
    """``ProxMixin(penalty_mode="subgradient")`` keeps the spec as ``group["penalty"]``: λ is scheduled there."""
    import functools

    from lightning_prox import ProxMixin

    class Sub(ProxMixin, pl.LightningModule):
        def __init__(self):
            super().__init__(
                optimizer=functools.partial(torch.optim.SGD, lr=0.05),
                regularizer=L1(0.01),
                penalty_mode="subgradient",
                sparsity_table=False,
            )
            self.fc = nn.Linear(6, 3)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return nn.functional.cross_entropy(self.fc(x), y)

    net = Sub()
    trainer = csv_trainer(tmp_path, [RegularizationScheduler("linear", offset=1)], max_epochs=3)
    trainer.fit(net, _loader())
    group = next(g for g in trainer.optimizers[0].param_groups if g.get("penalty") is not None)
    assert group["lam"] == pytest.approx(0.03)  # λ·(epoch + 1) at the last epoch
    torch.testing.assert_close(net.prox_penalty(), 0.03 * net.fc.weight.detach().abs().sum())
