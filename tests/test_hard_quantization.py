"""HardQuantization: projection against brute force, freeze semantics with real Trainers, exact resume."""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers.trainers import csv_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_prox.callbacks import HardQuantization, RegularizationScheduler
from lightning_prox.callbacks._quantize import nearest_level
from lightning_prox.optim import ProxGen
from lightning_prox.regularizers import Quantization

QUANT = {"name": "Quantization", "levels": [-1.0, 1.0], "q": 1.0}


# -- the projection ---------------------------------------------------------------------------------
@pytest.mark.parametrize("levels", [(-1.0, 1.0), (-1.0, 0.0, 1.0), (-0.5, 0.25, 2.0, 3.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_nearest_level_is_the_brute_force_argmin(levels, dtype):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(257, generator=g) * 2).to(dtype)
    mids = torch.tensor([(a + b) / 2 for a, b in itertools.pairwise(levels)], dtype=dtype)
    x = torch.cat([x, mids])  # exact ties
    out = nearest_level(x, levels)
    for xi, oi in zip(x.tolist(), out.tolist()):
        best = min(abs(xi - lv) for lv in levels)
        cands = [lv for lv in levels if abs(xi - lv) == best]
        assert oi == max(cands)  # nearest, a tie goes to the larger level
    assert out.dtype == dtype


def test_nearest_level_half_precision_and_zero_goes_to_plus_one():
    x = torch.tensor([-0.7, -0.0, 0.0, 0.3], dtype=torch.bfloat16)
    out = nearest_level(x, (-1.0, 1.0))
    assert out.dtype == torch.bfloat16
    assert out.tolist() == [-1.0, 1.0, 1.0, 1.0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epoch": 0}, "epoch must be an int >= 1"),
        ({"epoch": 2.5}, "2.5"),
        ({"epoch": 2, "levels": [1.0, 1.0]}, "distinct"),
        ({"epoch": 2, "levels": []}, "non-empty"),
        ({"epoch": 2, "regularizer_names": ["L1"]}, "explicit levels"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        HardQuantization(**kwargs)


# -- real Trainers --------------------------------------------------------------------------------
class _BinNet(pl.LightningModule):
    """conv → BN → relu → linear; conv and linear weights are quantization-regularized."""

    def __init__(self, opt: str = "adam", batch_norm: bool = True):
        super().__init__()
        self.opt = opt
        self.conv = nn.Conv2d(1, 4, 3, bias=False)
        # GroupNorm for the DDP comparison: per-rank batch statistics would differ from one process
        self.bn = nn.BatchNorm2d(4) if batch_norm else nn.GroupNorm(2, 4)
        self.fc = nn.Linear(16, 3)
        self.val_weights_quantized: list[tuple[int, bool]] = []

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 2).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def validation_step(self, batch, batch_idx):
        if batch_idx == 0:
            w = torch.cat([self.conv.weight.flatten(), self.fc.weight.flatten()])
            self.val_weights_quantized.append((self.current_epoch, bool(((w == 1) | (w == -1)).all())))

    def configure_optimizers(self):
        quantized = [self.conv.weight, self.fc.weight]
        rest = [self.bn.weight, self.bn.bias, self.fc.bias]
        if self.opt != "adam":  # revised ("preconditioned") or original ("euclidean") ProxQuant
            reg = Quantization(1e-3, levels=(-1.0, 1.0))
            groups = [{"params": quantized, "regularizer": reg}, {"params": rest}]
            return ProxGen(groups, lr=0.05, prox_metric=self.opt)
        # plain-data groups: the spec dict and lam are all HardQuantization reads (DESIGN.md §4)
        return torch.optim.Adam(
            [
                {"params": quantized, "regularizer": dict(QUANT), "lam": 1e-3},
                {"params": rest, "regularizer": None, "lam": 0.0},
            ],
            lr=0.05,
        )


def _loader():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 1, 6, 6, generator=g)
    y = torch.randint(0, 3, (24,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def _trainer(tmp_path: Path, callbacks, max_epochs: int) -> pl.Trainer:
    return csv_trainer(tmp_path, callbacks, max_epochs, num_sanity_val_steps=0)


class _Recorder(Callback):
    """Parameter snapshots after every optimizer step (train batch end)."""

    def __init__(self):
        self.snaps: list[tuple[int, dict[str, torch.Tensor]]] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.snaps.append(
            (trainer.current_epoch, {n: p.detach().clone() for n, p in pl_module.named_parameters()})
        )


@pytest.mark.parametrize("opt", ["adam", "preconditioned", "euclidean"])
def test_freeze_quantizes_and_keeps_quantized_tensors_fixed_while_bn_trains(tmp_path, opt):
    pl.seed_everything(0)
    net = _BinNet(opt)
    rec = _Recorder()
    hq = HardQuantization(epoch=2)
    trainer = _trainer(tmp_path, [hq, rec], max_epochs=5)
    trainer.fit(net, _loader(), _loader())
    assert hq.frozen
    before = [s for e, s in rec.snaps if e < 2]
    after = [s for e, s in rec.snaps if e >= 2]
    assert len(after) == 9
    # before the freeze the weights are real-valued
    assert not ((before[-1]["conv.weight"].abs() == 1).all())
    for name in ("conv.weight", "fc.weight"):
        for s in after:
            assert set(s[name].unique().tolist()) <= {-1.0, 1.0}
            torch.testing.assert_close(s[name], after[0][name], rtol=0, atol=0)
        # the frozen value is the projection of the last pre-freeze value
        torch.testing.assert_close(
            after[0][name], nearest_level(before[-1][name], (-1.0, 1.0)), rtol=0, atol=0
        )
    for name in ("bn.weight", "bn.bias", "fc.bias"):
        assert not torch.equal(after[0][name], after[-1][name]), name
    # validation from the freeze epoch's successor on sees the quantized model
    assert [q for e, q in net.val_weights_quantized] == [False, False, True, True, True]
    with open(Path(trainer.logger.log_dir) / "metrics.csv") as f:
        errs = [(int(r["step"]), float(r["quant/error"])) for r in csv.DictReader(f) if r.get("quant/error")]
    assert [s for s, _ in errs] == [3, 6]  # end of epochs 0 and 1, nothing after the freeze
    w = torch.cat([before[-1]["conv.weight"].flatten(), before[-1]["fc.weight"].flatten()])
    assert errs[-1][1] == pytest.approx(float((w - nearest_level(w, (-1.0, 1.0))).pow(2).mean()), rel=1e-6)


def test_no_quantized_group_is_an_error(tmp_path):
    class Plain(_BinNet):
        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters(), lr=0.01)

    with pytest.raises(ValueError, match="no param group whose regularizer"):
        _trainer(tmp_path, [HardQuantization(epoch=1)], max_epochs=1).fit(Plain(), _loader())


@pytest.mark.parametrize("resume_epoch", [0, 1, 3])  # before, at (end of epoch index 1 = freeze), after
def test_resume_is_exact_across_the_freeze(tmp_path, resume_epoch):
    def callbacks():
        return [HardQuantization(epoch=2), RegularizationScheduler("linear", interval="epoch")]

    pl.seed_everything(0)
    full = _BinNet("preconditioned")  # revised ProxQuant: λ from the scheduler acts in the prox
    _trainer(tmp_path / "a", callbacks(), max_epochs=5).fit(full, _loader())

    pl.seed_everything(0)
    part = _BinNet("preconditioned")
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=-1, every_n_epochs=1)
    _trainer(tmp_path / "b", [*callbacks(), ckpt], max_epochs=resume_epoch + 1).fit(part, _loader())
    path = sorted((tmp_path / "ck").glob(f"epoch={resume_epoch}-*.ckpt"))[0]
    state = torch.load(path, weights_only=True)
    hq_state = next(v for k, v in state["callbacks"].items() if k.startswith("HardQuantization"))
    assert hq_state["frozen"] is (resume_epoch >= 1)

    pl.seed_everything(0)
    resumed = _BinNet("preconditioned")
    rec = _Recorder()
    cbs = callbacks()
    _trainer(tmp_path / "c", [*cbs, rec], max_epochs=5).fit(resumed, _loader(), ckpt_path=path)
    assert cbs[0].frozen
    for (n, a), b in zip(full.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=n)
    for _, s in rec.snaps:
        if resume_epoch >= 1:  # already frozen when resuming: quantized from the first step on
            assert set(s["conv.weight"].unique().tolist()) <= {-1.0, 1.0}


# -- 2-process DDP (gloo, CPU) ----------------------------------------------------------------------
@pytest.mark.ddp
@pytest.mark.timeout(300)
def test_ddp_freeze_matches_single_process(tmp_path):
    class Net(_BinNet):
        def train_dataloader(self):  # the single run's batch of 8, split over the ranks
            ds = _loader().dataset
            ws, rank = self.trainer.world_size, self.trainer.global_rank
            sampler = DistributedSampler(ds, num_replicas=ws, rank=rank, shuffle=False)
            return DataLoader(ds, batch_size=8 // ws, sampler=sampler)

        def on_train_end(self):
            if self.global_rank == 0:
                torch.save(
                    {k: v.clone() for k, v in self.state_dict().items()},
                    self.trainer.default_root_dir + "/w.pt",
                )

    def run(root: Path, devices: int):
        pl.seed_everything(0)
        kw = {"strategy": "ddp_fork"} if devices > 1 else {}
        cbs = [HardQuantization(epoch=2), RegularizationScheduler("linear", offset=1)]
        trainer = csv_trainer(
            str(root),
            cbs,
            4,
            devices=devices,
            use_distributed_sampler=False,
            enable_checkpointing=False,
            **kw,
        )
        trainer.fit(Net("preconditioned", batch_norm=False))
        dirs = sorted((root / "csv").iterdir())
        assert len(dirs) == 1, dirs  # rank 1 logged nothing
        with open(dirs[0] / "metrics.csv") as f:
            errs = [
                (int(r["step"]), float(r["quant/error"])) for r in csv.DictReader(f) if r.get("quant/error")
            ]
        return torch.load(root / "w.pt", weights_only=True), errs

    w1, e1 = run(tmp_path / "single", 1)
    w2, e2 = run(tmp_path / "ddp", 2)
    assert [s for s, _ in e2] == [s for s, _ in e1] == [3, 6]  # logged once per epoch before the freeze
    assert [v for _, v in e2] == pytest.approx([v for _, v in e1], rel=1e-5)
    for name in ("conv.weight", "fc.weight"):
        assert set(w2[name].unique().tolist()) <= {-1.0, 1.0}
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=0)  # same signs as one process
    for name in ("bn.weight", "bn.bias", "fc.bias"):
        torch.testing.assert_close(w2[name], w1[name], rtol=1e-4, atol=1e-5)


# -- weight averaging and a freeze that finds nothing ---------------------------------------------
def _on_levels(model):
    w = torch.cat([model.conv.weight.flatten(), model.fc.weight.flatten()])
    return int(((w != 1) & (w != -1)).sum())


def _averaging(kind):
    from lightning.pytorch.callbacks import EMAWeightAveraging, WeightAveraging

    if kind == "swa":  # torch's AveragedModel default: the running mean of every update
        return WeightAveraging()
    if kind == "ema-late":  # the first average update comes after the freeze
        return EMAWeightAveraging(decay=0.9, update_starting_at_epoch=3)
    return EMAWeightAveraging(decay=float(kind.split("-")[1]))


@pytest.mark.parametrize("first", ["quant", "averaging"])  # the order of the callbacks
@pytest.mark.parametrize("kind", ["ema-0.9", "ema-0.999", "ema-late", "swa"])
def test_weight_averaging_ends_with_only_level_values(tmp_path, kind, first, recwarn):
    pl.seed_everything(0)
    model = _BinNet("preconditioned")
    ema = _averaging(kind)
    callbacks = [HardQuantization(epoch=2), ema]
    trainer = _trainer(tmp_path, callbacks if first == "quant" else callbacks[::-1], max_epochs=4)
    trainer.fit(model, _loader(), _loader())
    assert _on_levels(model) == 0, "the averaged model handed back unquantized weights"
    assert not [w for w in recwarn if "off their levels" in str(w.message)]  # exact, not repaired
    # the weights really are the averaged ones (BN keeps training and is averaged, so it differs)
    avg = dict(ema._average_model.module.named_parameters())
    assert torch.equal(model.bn.weight, avg["bn.weight"]) and torch.equal(
        model.conv.weight, avg["conv.weight"]
    )


def test_ema_without_hard_quantization_would_leave_weights_off_the_levels(tmp_path):
    """The control: averaging after a plain projection (no callback) leaves weights off the levels."""
    from lightning.pytorch.callbacks import EMAWeightAveraging

    pl.seed_everything(0)
    model = _BinNet("preconditioned")
    _trainer(tmp_path, [EMAWeightAveraging(decay=0.9)], max_epochs=2).fit(model, _loader())
    assert _on_levels(model) > 0


class _SwapOptimizer(Callback):
    """Replaces the optimizer by one without quantization groups at the start of an epoch."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch:
            trainer.strategy.optimizers = [torch.optim.SGD(pl_module.parameters(), lr=0.01)]


@pytest.mark.parametrize("swap_epoch", [1, 2])  # before the freeze, and after it
def test_freeze_without_a_quantization_group_in_the_live_optimizer_raises(tmp_path, swap_epoch):
    pl.seed_everything(0)
    hq = HardQuantization(epoch=2)
    trainer = _trainer(tmp_path, [hq, _SwapOptimizer(swap_epoch)], max_epochs=4)
    with pytest.raises(RuntimeError, match="no param group whose regularizer is one of"):
        trainer.fit(_BinNet("preconditioned"), _loader())


def test_table_notes_show_levels_and_the_freeze(tmp_path):
    pl.seed_everything(0)
    hq = HardQuantization(epoch=1)
    trainer = _trainer(tmp_path, [hq], max_epochs=2)
    trainer.fit(_BinNet("preconditioned"), _loader())
    assert hq.table_notes(trainer) == {
        "conv.weight": "100% on {-1,1} frozen",
        "fc.weight": "100% on {-1,1} frozen",
    }


def test_dashboard_and_end_of_fit_table_of_a_binary_network(tmp_path, capsys):
    """λ and the quantization error get charts of their own; the one table shows levels and the freeze."""
    from helpers.tensorboard import read_dashboard
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_prox.callbacks import SparsityMonitor

    pl.seed_everything(0)
    logger = TensorBoardLogger(tmp_path, name="tb")
    cbs = [SparsityMonitor(), HardQuantization(epoch=2), RegularizationScheduler("linear", offset=1)]
    csv_trainer(tmp_path, cbs, 3, num_sanity_val_steps=0, logger=logger).fit(
        _BinNet("preconditioned"), _loader()
    )
    logger.experiment.flush()
    ea, charts = read_dashboard(logger.log_dir)
    assert charts["quantization error (mean squared distance to the levels)"] == ["^quant/error$"]
    assert charts["λ (regularization strength)"] == ["^prox/lambda"]
    assert not any("validation" in t for t in charts)  # validation_step but no val loader: no trade-off
    assert [e.step for e in ea.Scalars("quant/error")] == [3, 6]  # before the freeze only
    out = capsys.readouterr().out
    assert out.count("sparsity per layer") == 1
    lines = out.splitlines()
    assert max(len(line) for line in lines) <= 80
    rows = {line.split()[0]: line for line in lines if line.strip()}
    assert rows["conv"].rstrip().endswith("100% on {-1,1} frozen")
    assert rows["fc"].rstrip().endswith("100% on {-1,1} frozen")
