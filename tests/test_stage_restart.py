"""StageRestart with real Lightning Trainers (CPU): lr stages, restarts, ε, the final-stage c ramp, resume."""

import math

import lightning.pytorch as pl
import pytest
import torch
from helpers.trainers import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from lightning_prox.callbacks import StageRestart
from lightning_prox.callbacks.stage_restart import final_stage_momentum, stage_index
from lightning_prox.optim import RAMDA, RMDA
from lightning_prox.regularizers import GroupLasso

BATCHES = 4  # batches per epoch


class TinyModule(pl.LightningModule):
    """A linear classifier whose optimizer is chosen by name; records what the optimizer saw each step."""

    def __init__(self, opt_name="RAMDA"):
        super().__init__()
        torch.manual_seed(0)
        self.net = torch.nn.Linear(6, 3)
        self.opt_name = opt_name
        self.seen = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.trainer.optimizers[0]
        g = opt.param_groups[0]
        st = opt.state.get(self.net.weight, {})
        self.seen.append(
            {
                "epoch": self.current_epoch,
                "global_step": self.global_step,
                "lr": g["lr"],
                "momentum": g.get("momentum"),
                "eps": g.get("eps"),
                "t_before": st.get("step", 0),
            }
        )
        return torch.nn.functional.cross_entropy(self.net(x), y)

    def configure_optimizers(self):
        groups = [
            {"params": [self.net.weight], "regularizer": GroupLasso(1e-3, dim="in")},
            {"params": [self.net.bias]},
        ]
        if self.opt_name == "RAMDA":
            return RAMDA(groups, lr=0.05, momentum=0.1, eps=1e-4)
        if self.opt_name == "RMDA":
            return RMDA(groups, lr=0.5, momentum=0.1)
        return torch.optim.SGD(self.parameters(), lr=0.1, momentum=0.9)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(1)
        x = torch.randn(8 * BATCHES, 6, generator=g)
        y = torch.randint(0, 3, (8 * BATCHES,), generator=g)
        return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def _trainer(tmp_path, max_epochs, callbacks):
    return quiet_trainer(
        default_root_dir=tmp_path,
        max_epochs=max_epochs,
        devices=1,
        enable_checkpointing=True,  # Lightning's default: the tests' own ModelCheckpoints, or its own
        callbacks=callbacks,
    )


def test_pure_schedule_functions():
    assert [stage_index(e, [2, 4]) for e in range(6)] == [0, 0, 1, 1, 2, 2]
    assert final_stage_momentum(0.01, 1) == 0.01
    assert final_stage_momentum(0.01, 2500) == pytest.approx(0.5)
    assert final_stage_momentum(0.01, 10_000) == 1.0 and final_stage_momentum(0.01, 10**6) == 1.0


@pytest.mark.parametrize("opt_name", ["RAMDA", "RMDA"])
def test_stages_restart_and_ramp(tmp_path, opt_name):
    module = TinyModule(opt_name)
    cb = StageRestart(milestones=[2, 4], gamma=0.1, eps_gamma=0.5)
    _trainer(tmp_path, 6, [cb, ModelCheckpoint(dirpath=tmp_path, save_last=True)]).fit(module)
    lr0 = 0.05 if opt_name == "RAMDA" else 0.5
    final_start = 4 * BATCHES
    for rec in module.seen:
        e, gs = rec["epoch"], rec["global_step"]
        assert rec["lr"] == pytest.approx(lr0 * 0.1 ** stage_index(e, [2, 4]), rel=1e-12)
        # t restarts at each milestone: the counter before this step = steps since the stage began
        stage_start = 0 if e < 2 else (2 * BATCHES if e < 4 else final_start)
        assert rec["t_before"] == gs - stage_start
        if opt_name == "RAMDA":
            assert rec["eps"] == pytest.approx(1e-4 * 0.5 ** stage_index(e, [2, 4]), rel=1e-12)
        expected_c = 0.1 if e < 4 else min(0.1 * math.sqrt(gs - final_start + 1), 1.0)
        assert rec["momentum"] == pytest.approx(expected_c, rel=1e-12)
    assert module.seen[-1]["momentum"] == pytest.approx(0.1 * math.sqrt(2 * BATCHES))
    assert cb.stages_done == 2 and cb.final_stage_start_step == final_start
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)  # plain data only
    assert ckpt["callbacks"][cb.state_key] == cb.state_dict()


def _train_resume(tmp_path, stop_epoch, total, milestones):
    """Train ``total`` epochs in one go, and ``stop_epoch`` epochs then resume from the checkpoint."""
    full = TinyModule()
    _trainer(tmp_path / "full", total, [StageRestart(milestones)]).fit(full)
    first = TinyModule()
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    _trainer(tmp_path / "a", stop_epoch, [StageRestart(milestones), ck]).fit(first)
    resumed = TinyModule()
    cb = StageRestart(milestones)
    _trainer(tmp_path / "b", total, [cb, ModelCheckpoint(dirpath=tmp_path / "ck2")]).fit(
        resumed, ckpt_path=str(tmp_path / "ck" / "last.ckpt")
    )
    return full, resumed, cb


@pytest.mark.parametrize("stop_epoch", [2, 4])  # just before a milestone; inside the final stage
def test_resume_from_checkpoint_is_exact(tmp_path, stop_epoch):
    full, resumed, cb = _train_resume(tmp_path, stop_epoch, 6, [2, 3])
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    tail = full.seen[-len(resumed.seen) :]
    assert [r["momentum"] for r in resumed.seen] == [r["momentum"] for r in tail]
    assert [r["lr"] for r in resumed.seen] == [r["lr"] for r in tail]
    assert cb.stages_done == 2 and cb.final_stage_start_step == 3 * BATCHES


def test_other_optimizers_get_only_the_lr_schedule(tmp_path):
    module = TinyModule("SGD")
    _trainer(tmp_path, 3, [StageRestart([1, 2], gamma=0.5)]).fit(module)
    assert [r["lr"] for r in module.seen[::BATCHES]] == pytest.approx([0.1, 0.05, 0.025])
    assert all(r["momentum"] == 0.9 for r in module.seen)  # SGD's momentum is not RMDA's c


def test_state_key_and_round_trip():
    cb = StageRestart([10, 20], gamma=0.2)
    assert cb.state_key != StageRestart([10, 30], gamma=0.2).state_key
    cb.base_lrs, cb.base_momenta, cb.stages_done, cb.final_stage_start_step = [[0.1]], [[0.01]], 2, 77
    other = StageRestart([10, 20], gamma=0.2)
    other.load_state_dict(cb.state_dict())
    assert other.state_dict() == cb.state_dict()


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"milestones": []}, r"milestones must be .*\[\]"),
        ({"milestones": [3, 2]}, r"strictly increasing.*\[3, 2\]"),
        ({"milestones": [0, 2]}, r"positive ints.*\[0, 2\]"),
        ({"milestones": [2], "gamma": 0.0}, r"gamma must be .*0\.0"),
        ({"milestones": [2], "eps_gamma": -1.0}, r"eps_gamma must be .*-1\.0"),
        ({"milestones": [2], "interval": "batch"}, r"interval must be .*'batch'"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StageRestart(**kwargs)
