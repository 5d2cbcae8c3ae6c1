"""SR2 in a Lightning fit: one backward and one extra forward per step, no side effects, clear errors."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers.trainers import quiet_trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins import MixedPrecision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prox import ProxMixin
from lightning_prox.cli import ProxCLI
from lightning_prox.data import DigitsDataModule
from lightning_prox.models import ImageClassifier
from lightning_prox.optim import SR2, ProxSGD
from lightning_prox.regularizers import L0, L1

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


class TinyCNN(ProxMixin, pl.LightningModule):
    def __init__(self, optimizer=None, regularizer=None, **prox_kwargs):
        super().__init__(optimizer=optimizer, regularizer=regularizer, sparsity_table=False, **prox_kwargs)
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.3)
        self.fc = nn.Linear(4 * 6 * 6, 3)
        self.logged: list[str] = []

    def forward(self, x):
        h = self.drop(self.bn(self.conv(x)))  # dropout on BN outputs (nonzero): its mask is output != 0
        return self.fc(F.relu(h).flatten(1))

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss


def _loader(n=32, batch=8):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(n, 1, 6, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch)


class Recorder:
    """Counts forwards (with/without grad), backwards, dropout masks and BN stats around every forward."""

    def __init__(self, model):
        self.forwards: list[bool] = []
        self.backwards = 0
        self.masks: list[tuple[bool, torch.Tensor]] = []
        self.bn: list[tuple[bool, torch.Tensor, torch.Tensor, int]] = []
        model.fc.register_forward_hook(lambda m, i, o: self.forwards.append(torch.is_grad_enabled()))
        model.fc.register_full_backward_hook(lambda m, gi, go: self._bwd())
        model.drop.register_forward_hook(
            lambda m, i, o: self.masks.append((torch.is_grad_enabled(), (o != 0).clone()))
        )
        model.bn.register_forward_pre_hook(lambda m, i: self._bn(m, "pre"))
        model.bn.register_forward_hook(lambda m, i, o: self._bn(m, "post"))

    def _bwd(self):
        self.backwards += 1

    def _bn(self, m, when):
        self.bn.append((when, torch.is_grad_enabled(), m.running_mean.clone(), int(m.num_batches_tracked)))


def _fit(model, steps=8, **trainer_kw):
    trainer = quiet_trainer(max_steps=steps, **trainer_kw)
    trainer.fit(model, _loader())
    return trainer


def _sr2_model(**kw):
    return TinyCNN(optimizer=functools.partial(SR2, sigma=2.0, **kw), regularizer=L1(1e-3))


def test_one_backward_one_extra_forward_no_side_effects():
    pl.seed_everything(0)
    model = _sr2_model()
    rec = Recorder(model)
    logged = {}

    class Grab(Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            logged.update({k: float(v) for k, v in trainer.callback_metrics.items()})

    trainer = _fit(model, 8, callbacks=[Grab()])
    opt = trainer.optimizers[0]
    st = opt.sr2_stats()
    assert st["steps"] == 8 and st["null_steps"] == 0 and trainer.global_step == 8
    assert rec.backwards == 8
    assert rec.forwards == [True, False] * 8  # the closure's forward, then the trial forward
    # the trial uses the masks of its step's forward (same RNG state)
    for (g1, m1), (g2, m2) in zip(rec.masks[0::2], rec.masks[1::2]):
        assert g1 and not g2 and torch.equal(m1, m2)
    # BN running stats: the trial forward changes nothing that the next forward sees
    posts = [e for e in rec.bn if e[0] == "post"]
    pres = [e for e in rec.bn if e[0] == "pre"]
    for k in range(1, 8):
        main_post = posts[2 * (k - 1)]
        next_pre = pres[2 * k]
        assert torch.equal(main_post[2], next_pre[2]) and main_post[3] == next_pre[3]
    assert int(model.bn.num_batches_tracked) == 8
    assert {"sr2/sigma", "sr2/accept_rate", "sr2/rho", "sr2/rejected_steps", "sr2/step_norm"} <= logged.keys()
    assert logged["sr2/sigma"] == pytest.approx(opt.sigma)
    assert opt.param_groups[0]["lr"] == 1.0 / opt.sigma


def test_trial_pass_leaves_the_rng_stream_alone():
    """The closure forwards of an SR2 fit draw the same dropout masks as a ProxSGD fit's."""

    def main_masks(optimizer):
        pl.seed_everything(0)
        model = TinyCNN(optimizer=optimizer, regularizer=L1(1e-3))
        rec = Recorder(model)
        _fit(model, 6)
        return [m for g, m in rec.masks if g], torch.get_rng_state()

    sr2_masks, sr2_rng = main_masks(functools.partial(SR2, sigma=2.0))
    sgd_masks, sgd_rng = main_masks(functools.partial(ProxSGD, lr=0.1))
    assert len(sr2_masks) == len(sgd_masks) == 6
    assert all(torch.equal(a, b) for a, b in zip(sr2_masks, sgd_masks))
    assert torch.equal(sr2_rng, sgd_rng)


def test_rejected_steps_in_a_fit_restore_parameters():
    pl.seed_everything(0)
    model = TinyCNN(optimizer=functools.partial(SR2, sigma=1e-3), regularizer=L1(1e-3))  # huge first steps
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer = _fit(model, 1)
    st = trainer.optimizers[0].sr2_stats()
    assert st["rejected_steps"] == 1
    for n, p in model.named_parameters():
        assert torch.equal(p.detach(), before[n]), n


@pytest.mark.parametrize(
    "trainer_kw,prox_kw,match",
    [
        (dict(accumulate_grad_batches=2), {}, "accumulate_grad_batches=2.*2x batch_size"),
        (dict(plugins=[MixedPrecision("16-mixed", "cpu")]), {}, "16-mixed.*bf16-mixed' or '32-true'"),
        (dict(gradient_clip_val=1.0), {}, "gradient_clip_val=1.0.*sigma"),
        (
            {},
            dict(lr_scheduler=functools.partial(torch.optim.lr_scheduler.StepLR, step_size=1)),
            "SR2 has no lr",
        ),
        ({}, dict(penalty_mode="subgradient"), "penalty_mode='prox'"),
    ],
    ids=["accumulate", "16-mixed", "clip", "scheduler", "subgradient"],
)
def test_incompatible_settings_raise_at_fit_start(trainer_kw, prox_kw, match):
    model = TinyCNN(optimizer=functools.partial(SR2), regularizer=L1(1e-3), **prox_kw)
    with pytest.raises(ValueError, match=match):
        _fit(model, 1, **trainer_kw)


def test_user_optimizer_step_without_trial_closure_gets_the_step_error():
    class Custom(TinyCNN):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            optimizer.step(closure=optimizer_closure)

    model = Custom(optimizer=functools.partial(SR2), regularizer=L1(1e-3))
    with pytest.raises(ValueError, match="pass trial_closure="):
        _fit(model, 1)


def test_manual_optimization_pattern():
    class Manual(TinyCNN):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            x, y = batch

            def closure():
                opt.zero_grad()
                loss = F.cross_entropy(self(x), y)
                self.manual_backward(loss)
                return loss

            opt.step(closure=closure, trial_closure=lambda: F.cross_entropy(self(x), y))

    pl.seed_everything(0)
    model = Manual(optimizer=functools.partial(SR2, sigma=2.0), regularizer=L1(1e-3))
    trainer = _fit(model, 4)
    assert trainer.optimizers[0].sr2_stats()["steps"] == 4


# -- resume: straight == first epoch + checkpoint + resumed epoch ----------------------------------------


def _fit_digits(tmp, epochs, ckpt_path=None):
    pl.seed_everything(0)
    model = ImageClassifier(
        "mlp",
        hidden=(16,),
        drop_rate=0.1,
        optimizer=functools.partial(SR2, sigma=0.05),  # small σ0: rejections in the first epoch
        regularizer=L0(1e-3),
        sparsity_table=False,
    )
    dm = DigitsDataModule(batch_size=32, max_samples=320, seed=3)
    trainer = quiet_trainer(
        max_epochs=epochs,
        deterministic=True,
        default_root_dir=tmp,
        enable_checkpointing=True,
        callbacks=[ModelCheckpoint(dirpath=tmp, filename="{epoch}", save_top_k=-1, every_n_epochs=1)],
        num_sanity_val_steps=0,
    )
    trainer.fit(model, dm, ckpt_path=ckpt_path)
    return model, trainer


def _assert_same_run(model_a, opt_a, model_b, opt_b):
    for (n, a), (_, b) in zip(model_a.state_dict().items(), model_b.state_dict().items()):
        assert torch.equal(a, b), f"{n} differs after resume"
    sa, sb = opt_a.state_dict(), opt_b.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    a, b = sa["state"]["sr2"], sb["state"]["sr2"]
    assert a.keys() == b.keys()
    for k in a:  # rho is nan after a null step
        assert a[k] == b[k] or (math.isnan(a[k]) and math.isnan(b[k])), k


def test_trainer_fit_resume_is_exact(tmp_path):
    straight, t_straight = _fit_digits(tmp_path / "straight", 2)
    _fit_digits(tmp_path / "first", 1)
    ckpt = tmp_path / "first" / "epoch=0.ckpt"
    data = torch.load(ckpt, weights_only=True)
    sr2 = data["optimizer_states"][0]["state"]["sr2"]
    assert sr2["steps"] == 7 and sr2["rejected_steps"] > 0 and sr2["sigma"] > 0
    resumed, t_resumed = _fit_digits(tmp_path / "resumed", 2, str(ckpt))
    assert t_resumed.global_step == t_straight.global_step == 14
    _assert_same_run(straight, t_straight.optimizers[0], resumed, t_resumed.optimizers[0])
    assert t_resumed.optimizers[0].sr2_stats() == pytest.approx(
        t_straight.optimizers[0].sr2_stats(), nan_ok=True
    )


def _cli(tmp, epochs, ckpt_path=None):
    args = [
        "fit",
        "--config",
        str(RECIPES / "quickstart.yaml"),
        '--model.init_args.optimizer={"class_path": "lightning_prox.optim.SR2", "init_args": {"sigma": 0.05}}',
        f"--trainer.max_epochs={epochs}",
        f"--trainer.default_root_dir={tmp}",
        "--trainer.logger=false",
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        "--trainer.num_sanity_val_steps=0",
        "--data.init_args.max_samples=320",
        "--model.init_args.channels=[4,8]",
        "--model.init_args.hidden=[16]",
        "--model.init_args.sparsity_table=false",
    ]
    if ckpt_path:
        args.append(f"--ckpt_path={ckpt_path}")
    return ProxCLI(args)


def test_cli_resume_is_exact(tmp_path):
    straight = _cli(tmp_path / "straight", 2)
    assert isinstance(straight.trainer.optimizers[0], SR2)
    _cli(tmp_path / "first", 1)
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    torch.load(last, weights_only=True)
    resumed = _cli(tmp_path / "resumed", 2, str(last))
    assert resumed.trainer.global_step == straight.trainer.global_step > 0
    _assert_same_run(
        straight.model, straight.trainer.optimizers[0], resumed.model, resumed.trainer.optimizers[0]
    )


def test_hessian_sigma_in_a_fit():
    pl.seed_everything(0)
    model = TinyCNN(optimizer=functools.partial(SR2, sigma="hessian"), regularizer=L1(1e-3))
    rec = Recorder(model)
    trainer = _fit(model, 3)
    opt = trainer.optimizers[0]
    assert math.isfinite(opt.sigma) and opt.sigma > 0
    # step 1: closure, the power iteration's forward (with grad), the trial; then closure + trial
    assert rec.forwards == [True, True, False] + [True, False] * 2
    # 3 closure backwards plus the power iteration's gradient and at most 20 Hessian-vector products
    assert 3 + 2 <= rec.backwards <= 3 + 1 + 20 and int(model.bn.num_batches_tracked) == 3


def test_trial_forward_leaves_torchmetrics_states_alone():
    from torchmetrics import MeanMetric

    class WithMetric(TinyCNN):
        def __init__(self, **kw):
            super().__init__(**kw)
            self.mean_loss = MeanMetric()
            self.seen: list[float] = []

        def training_step(self, batch, batch_idx):
            x, y = batch
            loss = F.cross_entropy(self(x), y)
            self.mean_loss.update(loss.detach())
            if torch.is_grad_enabled():
                self.seen.append(float(loss))
            return loss

    pl.seed_everything(0)
    model = WithMetric(optimizer=functools.partial(SR2, sigma=2.0), regularizer=L1(1e-3))
    _fit(model, 4)
    assert len(model.seen) == 4 and int(model.mean_loss.update_count) == 4
    assert float(model.mean_loss.compute()) == pytest.approx(sum(model.seen) / 4, rel=1e-6)


def test_half_precision_parameters_warn():
    class Linear(ProxMixin, pl.LightningModule):
        def __init__(self, **kw):
            super().__init__(sparsity_table=False, **kw)
            self.fc = nn.Linear(36, 3)

        def training_step(self, batch, batch_idx):
            x, y = batch
            return F.cross_entropy(self.fc(x.flatten(1)), y)

    model = Linear(optimizer=functools.partial(SR2), regularizer=L1(1e-3))
    with pytest.warns(UserWarning, match="bf16-true.*rounding"):
        _fit(model, 1, precision="bf16-true")


def test_bf16_mixed_runs_the_trial_under_the_same_autocast():
    pl.seed_everything(0)
    model = _sr2_model()
    dtypes = []
    model.fc.register_forward_hook(lambda m, i, o: dtypes.append((torch.is_grad_enabled(), o.dtype)))
    trainer = _fit(model, 2, precision="bf16-mixed")
    assert trainer.optimizers[0].sr2_stats()["steps"] == 2
    assert dtypes == [(True, torch.bfloat16), (False, torch.bfloat16)] * 2
