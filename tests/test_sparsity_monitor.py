"""SparsityMonitor: counts against brute force, TensorBoard event files, logging cadence, 2-process DDP."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from helpers.tensorboard import read_dashboard
from helpers.trainers import csv_trainer
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from lightning_prox.callbacks import RegularizationScheduler, SparsityMonitor
from lightning_prox.optim import RMDA
from lightning_prox.regularizers import L1, GroupLasso


class _Net(pl.LightningModule):
    """conv (group lasso over input channels) → BN → linear (L1); RMDA with c = 1 gives exact zeros."""

    def __init__(self, lam: float = 0.02, plain: bool = False, frozen: bool = False, bn: bool = True):
        super().__init__()
        self.lam, self.plain, self.frozen = lam, plain, frozen
        self.conv = nn.Conv2d(3, 6, 3)
        # per-rank batch statistics would make a DDP run differ from one process: the DDP test uses a
        # per-sample norm (one channel per group keeps conv→fc a unit pair, so active units are compared too)
        self.bn = nn.BatchNorm2d(6) if bn else nn.GroupNorm(6, 6)
        self.fc = nn.Linear(24, 3)

    def forward(self, x):
        return self.fc(nn.functional.adaptive_avg_pool2d(torch.relu(self.bn(self.conv(x))), 2).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return nn.functional.cross_entropy(self(x), y)

    def configure_optimizers(self):
        if self.plain:
            return torch.optim.SGD(self.parameters(), lr=0.1)
        if self.frozen:  # lr = 0: the weights stay as the test set them; groups as plain data
            return torch.optim.SGD(
                [
                    {"params": [self.conv.weight], "regularizer": GroupLasso(self.lam, dim="in").spec()},
                    {"params": [self.fc.weight], "regularizer": L1(self.lam).spec()},
                    {"params": [self.conv.bias, self.bn.weight, self.bn.bias, self.fc.bias]},
                ],
                lr=0.0,
            )
        return RMDA(
            [
                {"params": [self.conv.weight], "regularizer": GroupLasso(self.lam, dim="in")},
                {"params": [self.fc.weight], "regularizer": L1(self.lam)},
                {"params": [self.conv.bias, self.bn.weight, self.bn.bias, self.fc.bias]},
            ],
            lr=0.1,
            momentum=1.0,
        )


def _loader(batch_size: int = 8):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(24, 3, 6, 6, generator=g)
    y = torch.randint(0, 3, (24,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=False)


def _trainer(tmp_path: Path, callbacks, max_epochs: int = 2, **kw) -> pl.Trainer:
    return csv_trainer(tmp_path, callbacks, max_epochs, num_sanity_val_steps=0, **kw)


def _csv(log_dir: str | Path) -> list[dict[str, str]]:
    with open(Path(log_dir) / "metrics.csv") as f:
        return list(csv.DictReader(f))


# -- counts against brute force ---------------------------------------------------------------------
def _reference(net: _Net) -> dict[str, float]:
    w, v = net.conv.weight.detach(), net.fc.weight.detach()
    zeros = int((w == 0).sum() + (v == 0).sum())
    numel = w.numel() + v.numel()
    zero_channels = [j for j in range(w.shape[1]) if bool((w[:, j] == 0).all())]
    ref = {
        "sparsity/unstructured": zeros / numel,
        "sparsity/group": len(zero_channels) / w.shape[1],
        "sparsity/group_weighted": len(zero_channels) * w[:, 0].numel() / w.numel(),
        "sparsity/layer/conv.weight": float((w == 0).sum()) / w.numel(),
        "sparsity/layer/conv.weight/group": len(zero_channels) / w.shape[1],
        "sparsity/layer/fc.weight": float((v == 0).sum()) / v.numel(),
    }
    # active units (digest 004): conv channel k feeds fc columns 4k..4k+3 (2x2 pool, channel-major flatten)
    active = [bool((w[k] != 0).any()) and bool((v[:, 4 * k : 4 * k + 4] != 0).any()) for k in range(6)]
    ref["sparsity/active_units"] = sum(active) / 6
    ref["sparsity/layer/conv.weight/active_units"] = sum(active) / 6
    return ref


def test_counts_match_brute_force_and_follow_each_regularizer(tmp_path):
    pl.seed_everything(0)
    net = _Net(frozen=True)
    with torch.no_grad():
        net.conv.weight[:, 1] = 0  # one zero input channel
        net.conv.weight[0, 2, 0, 0] = 0  # a stray zero that is not a group
        net.fc.weight[:, :5] = 0  # channel 0's four output columns, and one of channel 1's
        net.conv.weight[3] = 0  # filter 3: channel 3 has no input weights
    mon = SparsityMonitor(table=False)
    trainer = _trainer(tmp_path, [mon], max_epochs=1, max_steps=1)
    trainer.fit(net, _loader())
    totals, rows = mon.compute()
    got = mon.metrics(totals, rows)
    ref = _reference(net)
    assert got.keys() == ref.keys()  # fc (L1) has no groups; biases/BN are not monitored
    for k in ref:
        assert got[k] == pytest.approx(ref[k], abs=1e-12), k
    assert got["sparsity/active_units"] == pytest.approx(4 / 6)  # channels 0 and 3 are dead
    assert [r["name"] for r in rows] == ["conv.weight", "fc.weight", "conv.weight"]  # tensors, then pairs
    assert rows[0]["zero_groups"] == 1 and rows[0]["groups"] == 3
    assert rows[2] == {"name": "conv.weight", "units": 6, "active_units": pytest.approx(4 / 6)}

    # group_dim gives the elementwise-regularized tensor groups as well ("out": rows of fc.weight)
    mon2 = SparsityMonitor(group_dim="out", table=False)
    mon2._entries = mon2._collect(trainer, net)
    _, rows2 = mon2.compute()
    assert rows2[1]["groups"] == 3 and rows2[1]["zero_groups"] == 0
    assert rows2[0]["groups"] == 3  # the regularizer's own grouping wins ("in")


def test_active_units_can_be_switched_off(tmp_path):
    mon = SparsityMonitor(table=False, active_units=False)
    _trainer(tmp_path, [mon], max_epochs=1, max_steps=1).fit(_Net(frozen=True), _loader())
    got = mon.metrics(*mon.compute())
    assert "sparsity/unstructured" in got and not any("active_units" in k for k in got)


def test_unregularized_optimizer_monitors_all_weight_matrices(tmp_path):
    net = _Net(plain=True)
    mon = SparsityMonitor(table=False)
    _trainer(tmp_path, [mon], max_epochs=1, max_steps=1).fit(net, _loader())
    assert [e.name for e in mon._entries] == ["conv.weight", "fc.weight"]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"logging_interval": "batch"}, "'batch'"),
        ({"every_n_steps": 0}, "every_n_steps"),
        ({"group_dim": "rows"}, "'rows'"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SparsityMonitor(**kwargs)


def test_logs_only_every_n_steps_and_counts_only_then(tmp_path, monkeypatch):
    calls = []
    orig = SparsityMonitor.compute

    def counting(self):
        calls.append(1)
        return orig(self)

    monkeypatch.setattr(SparsityMonitor, "compute", counting)
    pl.seed_everything(0)
    trainer = _trainer(tmp_path, [SparsityMonitor(every_n_steps=4, table=False)], max_epochs=3)
    trainer.fit(_Net(), _loader())  # 9 steps
    steps = [int(r["step"]) for r in _csv(trainer.logger.log_dir) if r.get("sparsity/unstructured")]
    assert steps == [0, 3, 4, 6, 8, 9]  # start, every 4 steps, each epoch's last step (3 batches an epoch)
    assert len(calls) == 6  # no counting (and no host read) on the other steps


def test_tensorboard_event_files_have_scalars_layout_histograms_and_image(tmp_path, capsys):
    pl.seed_everything(0)
    logger = TensorBoardLogger(tmp_path, name="tb")
    cbs = [SparsityMonitor(), RegularizationScheduler("linear", offset=1)]
    trainer = _trainer(tmp_path, cbs, max_epochs=3, logger=logger)
    net = _Net(lam=0.05)
    trainer.fit(net, _loader())
    logger.experiment.flush()
    ea, charts = read_dashboard(logger.log_dir)
    tags = ea.Tags()
    for t in ("sparsity/unstructured", "sparsity/group", "sparsity/group_weighted", "prox/lambda"):
        assert t in tags["scalars"], t
    assert {"sparsity/active_units", "sparsity/layer/conv.weight/active_units"} <= set(tags["scalars"])
    assert "sparsity/layer/conv.weight/group" in tags["scalars"]
    assert {"group_norms/conv.weight", "group_norms/fc.weight"} <= set(tags["histograms"])
    assert "sparsity/layer_history" in tags["images"]
    assert "custom_scalars__config__" in tags["tensors"]
    assert "^sparsity/group_weighted$" in charts["zero fractions (global)"]
    assert "^sparsity/active_units$" not in charts["zero fractions (global)"]  # a dense fraction: own chart
    assert charts["λ (regularization strength)"] == ["^prox/lambda"]
    assert not any("quantization" in t for t in charts)  # no HardQuantization: no always-empty chart
    assert not any("validation" in t for t in charts)  # no validation_step: no trade-off chart
    # the logged final value is the exact count on the trained weights
    final = ea.Scalars("sparsity/group")[-1]
    assert final.step == trainer.global_step
    assert final.value == pytest.approx(_reference(net)["sparsity/group"])
    assert _reference(net)["sparsity/unstructured"] > 0  # the prox produced exact zeros
    hist = ea.Histograms("group_norms/conv.weight")
    assert [h.step for h in hist] == [3, 6, 9] and hist[-1].histogram_value.num == 3
    assert "sparsity per layer" in capsys.readouterr().out  # the rich table at the end of fit


# -- 2-process DDP (gloo, CPU) ----------------------------------------------------------------------
@pytest.mark.ddp
@pytest.mark.timeout(300)
def test_ddp_logs_the_single_process_values_once(tmp_path):
    class Net(_Net):
        def train_dataloader(self):  # the same 8 samples per step as the single run, split over the ranks
            ds = _loader().dataset
            ws, rank = self.trainer.world_size, self.trainer.global_rank
            sampler = DistributedSampler(ds, num_replicas=ws, rank=rank, shuffle=False)
            return DataLoader(ds, batch_size=8 // ws, sampler=sampler)

    def run(root: Path, devices: int) -> list[dict[str, str]]:
        pl.seed_everything(0)
        cbs = [SparsityMonitor(every_n_steps=2, table=False), RegularizationScheduler("linear", offset=1)]
        kw = {"strategy": "ddp_fork"} if devices > 1 else {}
        trainer = _trainer(root, cbs, max_epochs=3, devices=devices, use_distributed_sampler=False, **kw)
        trainer.fit(Net(lam=0.05, bn=False))
        dirs = sorted((root / "csv").iterdir())
        assert len(dirs) == 1, dirs  # one logger directory: rank 1 wrote nothing
        return _csv(dirs[0])

    single = run(tmp_path / "single", 1)
    ddp = run(tmp_path / "ddp", 2)

    def by_key(rows):
        out: dict[tuple[str, int], list[float]] = {}
        for r in rows:
            for k, v in r.items():
                if v and (k.startswith("sparsity/") or k.startswith("prox/")):
                    out.setdefault((k, int(r["step"])), []).append(float(v))
        return out

    s, d = by_key(single), by_key(ddp)
    assert s.keys() == d.keys()
    assert any(k == "sparsity/active_units" for k, _ in s)
    assert all(len(v) == 1 for v in d.values())  # logged once
    assert d == s  # exact: counts of exact zeros and λ do not depend on the process layout
    assert max(v[0] for (k, _), v in s.items() if k == "sparsity/unstructured") > 0


def test_low_rank_level_of_nuclear_norm_tensors(tmp_path):
    from lightning_prox.regularizers import NuclearNorm

    class LowRank(_Net):
        def configure_optimizers(self):  # lr = 0: the weights stay as set
            return torch.optim.SGD(
                [
                    {"params": [self.fc.weight], "regularizer": NuclearNorm(0.1).spec()},
                    {"params": [p for n, p in self.named_parameters() if n != "fc.weight"]},
                ],
                lr=0.0,
            )

    net = LowRank()
    with torch.no_grad():
        u, v = torch.randn(3, 1), torch.randn(1, 24)
        net.fc.weight.copy_(u @ v)  # rank 1 of min(3, 24) = 3
    mon = SparsityMonitor(table=False)
    _trainer(tmp_path, [mon], max_epochs=1, max_steps=1).fit(net, _loader())
    got = mon.metrics(*mon.compute())
    assert got["sparsity/low_rank"] == pytest.approx(1 - 1 / 3)
    assert got["sparsity/layer/fc.weight/low_rank"] == pytest.approx(1 - 1 / 3)
    assert "sparsity/group" not in got


# -- acceptance: the quickstart recipe's event files ----------------------------------------------
def test_quickstart_event_files_have_the_dashboard(tmp_path, monkeypatch):
    from lightning_prox.cli import ProxCLI

    monkeypatch.chdir(tmp_path)  # lightning_logs/ lands in the temporary directory
    recipe = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"
    args = ["fit", "--config", str(recipe), "--trainer.max_epochs=2", "--data.init_args.max_samples=300"]
    cli = ProxCLI([*args, "--trainer.enable_progress_bar=false", "--trainer.log_every_n_steps=2"])
    assert any(isinstance(cb, SparsityMonitor) for cb in cli.trainer.callbacks)
    ea = EventAccumulator(cli.trainer.log_dir, size_guidance={"tensors": 0, "histograms": 0, "images": 0})
    ea.Reload()
    tags = ea.Tags()
    scalars = [t for t in tags["scalars"] if t.startswith("sparsity/")]
    assert {"sparsity/unstructured", "sparsity/group", "sparsity/group_weighted"} <= set(scalars)
    assert "sparsity/active_units" in scalars  # LeNet: conv→conv, conv→linear, linear→linear units
    assert any(t.startswith("sparsity/layer/") for t in scalars)
    assert "custom_scalars__config__" in tags["tensors"]
    assert tags["histograms"] and all(t.startswith("group_norms/") for t in tags["histograms"])
    assert "sparsity/layer_history" in tags["images"]


# -- metrics into Lightning, resume, collapse guard --------------------------------------------------
class _Recorder(pl.Callback):
    """Records the callback metric each epoch, after the monitor and before ModelCheckpoint decides."""

    def __init__(self, key):
        self.key, self.values = key, []

    def on_train_epoch_end(self, trainer, pl_module):
        self.values.append(float(trainer.callback_metrics[self.key]))


def test_model_checkpoint_on_a_sparsity_metric_keeps_the_right_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_prox.structure import tensor_stats

    pl.seed_everything(0)
    ckpt = ModelCheckpoint(
        dirpath=tmp_path / "ck",
        monitor="sparsity/group",
        mode="max",
        save_top_k=1,
        filename="{epoch}-{sparsity/group:.4f}",
        auto_insert_metric_name=False,
    )
    rec = _Recorder("sparsity/group")
    net = _Net(lam=0.2)  # group sparsity goes up and down again: the best is not the last epoch
    trainer = _trainer(tmp_path, [SparsityMonitor(table=False), rec, ckpt], max_epochs=5)
    trainer.fit(net, _loader())
    best = max(range(5), key=lambda i: (rec.values[i], -i))  # ties: ModelCheckpoint keeps the first
    assert 0 < best < 4 and rec.values[-1] < rec.values[best], rec.values
    assert float(ckpt.best_model_score) == pytest.approx(rec.values[best])
    (kept,) = (tmp_path / "ck").glob("*.ckpt")
    assert kept.name == f"{best}-{rec.values[best]:.4f}.ckpt"
    state = torch.load(kept, weights_only=True)["state_dict"]
    conv = tensor_stats(state["conv.weight"], "in")
    fc = tensor_stats(state["fc.weight"], None)
    assert "zero_groups" not in fc
    assert int(conv["zero_groups"]) / int(conv["groups"]) == pytest.approx(rec.values[best])
    assert "sparsity/group" in trainer.progress_bar_metrics


def test_early_stopping_on_a_sparsity_metric(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping

    pl.seed_everything(0)
    stop = EarlyStopping(monitor="sparsity/unstructured", mode="max", patience=0, stopping_threshold=0.0)
    trainer = _trainer(tmp_path, [SparsityMonitor(table=False), stop], max_epochs=5)
    trainer.fit(_Net(lam=0.03), _loader())
    assert trainer.current_epoch < 5 and stop.stopped_epoch >= 0  # the threshold was met: stopped early


def _history_run(tmp_path, epochs, ckpt_path=None):
    from lightning.pytorch.callbacks import ModelCheckpoint

    pl.seed_everything(0)
    mon = SparsityMonitor(table=False, every_n_steps=2)
    cb = ModelCheckpoint(dirpath=tmp_path / "ck", filename="{epoch}", save_top_k=-1)
    trainer = _trainer(tmp_path, [mon, cb], max_epochs=epochs)
    trainer.fit(_Net(lam=0.02), _loader(), ckpt_path=ckpt_path)
    steps = [int(r["step"]) for r in _csv(trainer.logger.log_dir) if r.get("sparsity/unstructured")]
    return mon, steps


def test_history_and_logged_points_are_the_same_with_and_without_a_resume(tmp_path):
    straight, steps_straight = _history_run(tmp_path / "a", 3)
    _, steps_first = _history_run(tmp_path / "b", 1)
    resumed, steps_resumed = _history_run(tmp_path / "c", 3, str(tmp_path / "b" / "ck" / "epoch=0.ckpt"))
    assert steps_straight == [0, 2, 3, 4, 6, 8, 9]
    assert steps_first + steps_resumed == steps_straight  # no duplicate point at the resume
    assert resumed.history == straight.history and resumed.history_names == straight.history_names


def test_collapse_guard_warns_once_per_layer_naming_lam_and_step(tmp_path):
    pl.seed_everything(0)
    with pytest.warns(
        UserWarning, match=r"conv\.weight \(GroupLasso λ=50\) is entirely zero at step 1 with lam=50"
    ) as rec:
        _trainer(tmp_path, [SparsityMonitor(table=False)], max_epochs=2).fit(_Net(lam=50.0), _loader())
    messages = [str(w.message) for w in rec if "SparsityMonitor" in str(w.message)]
    assert sum("conv.weight" in m for m in messages) == 1  # once, not every logged step
    assert sum("fc.weight" in m for m in messages) == 1
    assert sum("the model has collapsed" in m for m in messages) == 1


# -- the dashboard's trade-off chart and layer-history image ---------------------------------------
class _ValNet(_Net):
    def validation_step(self, batch, batch_idx):
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y).float().mean())


class _AtValidationEnd(pl.Callback):
    def __init__(self):
        self.points = []

    def on_validation_end(self, trainer, pl_module):
        if not trainer.sanity_checking:
            m = trainer.callback_metrics
            self.points.append((float(m["sparsity/group"]), float(m["val/acc"])))


def test_tradeoff_chart_plots_the_validation_metric_against_the_global_sparsity(tmp_path):
    pl.seed_everything(0)
    logger = TensorBoardLogger(tmp_path, name="tb")
    rec = _AtValidationEnd()
    trainer = _trainer(tmp_path, [SparsityMonitor(table=False), rec], max_epochs=4, logger=logger)
    trainer.fit(_ValNet(lam=0.2), _loader(), _loader())
    logger.experiment.flush()
    ea, charts = read_dashboard(logger.log_dir)
    assert charts["validation metric vs sparsity (x axis: sparsity × 10⁴)"] == ["^tradeoff/"]
    points = [(e.step, e.value) for e in ea.Scalars("tradeoff/val_acc_vs_sparsity")]
    assert len(points) == 4 and len({x for x, _ in rec.points}) > 1  # the sparsity moved
    assert points == [(round(1e4 * x), pytest.approx(acc)) for x, acc in rec.points]


_VIRIDIS_0, _VIRIDIS_HALF, _VIRIDIS_1 = (68, 1, 84), (33, 144, 141), (253, 231, 37)


def test_layer_history_image_has_labelled_rows_viridis_cells_and_a_colour_bar():
    from lightning_prox.callbacks._dashboard import history_image

    # layer a: dense, then all zero; layer b: all zero, then half
    img = history_image([[0.0, 1.0], [1.0, 0.5]], ["net.a.weight", "net.b.weight"]).astype(int)
    assert img.ndim == 3 and img.shape[1] >= 480  # readable, not one pixel per point
    row = [tuple(p) for p in img[1]]
    x0 = row.index(_VIRIDIS_0)  # the first heat cell (layer a, first point)
    w = next(i for i in range(x0, len(row)) if row[i] != _VIRIDIS_0) - x0
    h = next(y for y in range(img.shape[0]) if tuple(img[y, x0]) != _VIRIDIS_0)
    assert tuple(img[h + 1, x0]) == _VIRIDIS_1 and tuple(img[1, x0 + w]) == _VIRIDIS_1
    assert tuple(img[h + 1, x0 + w]) == _VIRIDIS_HALF
    # a label (dark text pixels) left of each layer's row
    for y in (0, h):
        assert (img[y : y + h, :x0].sum(axis=2) < 200).any(), f"no label for the row at y={y}"
    # a colour bar under the cells: one row running from the colour of 0 to the colour of 1
    bar = [y for y in range(2 * h, img.shape[0]) if tuple(img[y, x0]) == _VIRIDIS_0]
    assert bar and tuple(img[bar[0], x0 + 2 * w - 1]) == _VIRIDIS_1
    assert (img[2 * h :, :x0].sum(axis=2) < 200).any()  # the bar's "0 dense" caption


@pytest.mark.parametrize("step", [4, 5])  # mid-epoch: a logged step and an unlogged one
def test_history_is_the_same_after_a_mid_epoch_resume(tmp_path, step):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from lightning_prox.data._common import consumed_batches, make_loader

    def run(root, max_steps, ckpt_path=None):
        pl.seed_everything(0)
        mon = SparsityMonitor(table=False, every_n_steps=2)
        cb = ModelCheckpoint(dirpath=root / "ck", filename="{step}", every_n_train_steps=1, save_top_k=-1)
        trainer = _trainer(root, [mon, cb], max_epochs=3, max_steps=max_steps)
        # a loader that resumes mid-epoch (Lightning's stateful-dataloader protocol), as the datamodules'
        loader = make_loader(
            _loader().dataset, 8, train=True, shuffle=False, seed=0, num_workers=0,
            progress=lambda: consumed_batches(trainer),
        )  # fmt: skip
        trainer.fit(_Net(lam=0.02), loader, ckpt_path=ckpt_path)
        steps = [int(r["step"]) for r in _csv(trainer.logger.log_dir) if r.get("sparsity/unstructured")]
        return mon, steps

    straight, steps_straight = run(tmp_path / "a", -1)
    _, steps_first = run(tmp_path / "b", step)
    resumed, steps_resumed = run(tmp_path / "c", -1, str(tmp_path / "b" / "ck" / f"step={step}.ckpt"))
    assert steps_straight == [0, 2, 3, 4, 6, 8, 9]
    # the first run's own end-of-training point (step 5) is not in the checkpoint written before it
    assert steps_first == [s for s in steps_straight if s <= step] + ([step] if step == 5 else [])
    assert steps_resumed == [s for s in steps_straight if s > step]  # no extra point at the resume
    assert resumed.history == straight.history
