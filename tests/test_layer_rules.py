"""Per-layer rules and the user's own ``configure_optimizers``: each layer its own regularizer and λ,
first match wins, the ends left dense in one word; the mixin never silently drops a regularizer or the
user's optimizer."""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers.trainers import quiet_trainer
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prox import ProxMixin
from lightning_prox.cli import ProxCLI
from lightning_prox.layer_rules import LayerRule, create_prox_optimizer, model_ends, param_groups_from_rules
from lightning_prox.models import CifarResNet, ImageClassifier, LeNet
from lightning_prox.optim import ProxGen, ProxSGD
from lightning_prox.regularizers import L1, GroupLasso

QUICKSTART = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"


def _data(n=32):
    g = torch.Generator().manual_seed(0)
    return DataLoader(
        TensorDataset(torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)), 16
    )


class UserModule(pl.LightningModule):
    """A user's existing module: its own AdamW + cosine schedule."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.parameters(), lr=1e-2)
        return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, 4)}


# -- the user's configure_optimizers ---------------------------------------------------------------
def test_mixin_first_refuses_to_silently_replace_the_users_optimizer():
    class Sparse(ProxMixin, UserModule):
        pass

    with pytest.raises(TypeError, match=r"would silently replace .*UserModule\.configure_optimizers") as err:
        Sparse(regularizer=L1(1e-3))
    assert "self.prox_param_groups()" in str(err.value) and "ProxMixin.configure_optimizers(self)" in str(
        err.value
    )


def test_users_module_first_in_the_bases_is_refused_at_class_definition():
    """``class Sparse(UserModule, ProxMixin)``: Lightning's hooks would shadow every mixin hook."""
    with pytest.raises(
        TypeError, match=r"class Sparse\(UserModule, ProxMixin\): ProxMixin comes after"
    ) as err:

        class Sparse(UserModule, ProxMixin):
            pass

    assert "put ProxMixin first: class Sparse(ProxMixin, UserModule)" in str(err.value)
    with pytest.raises(TypeError, match="ProxMixin comes after LightningModule"):

        class Own(pl.LightningModule, ProxMixin):
            def configure_optimizers(self):
                return ProxGen(self.prox_param_groups(), lr=1e-2)


def test_mixin_first_with_an_explicit_choice_keeps_the_users_scheduler_and_regularizes():
    class Sparse(ProxMixin, UserModule):
        def configure_optimizers(self):
            opt = ProxGen(self.prox_param_groups(), lr=1e-2)
            return {"optimizer": opt, "lr_scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, 4)}

    model = Sparse(regularizer=L1(0.05), sparsity_table=False)
    trainer = quiet_trainer(max_epochs=2)
    trainer.fit(model, _data())
    (opt,) = trainer.optimizers
    assert isinstance(opt, ProxGen) and opt.param_groups[0]["regularizer"]["name"] == "L1"
    assert isinstance(trainer.lr_scheduler_configs[0].scheduler, torch.optim.lr_scheduler.CosineAnnealingLR)
    assert int((model.fc1.weight == 0).sum()) > 0  # the proximal step ran
    assert int((model.fc1.bias == 0).sum()) == 0  # biases not regularized


def test_mixin_first_can_delegate_to_the_mixins_optimizer_explicitly():
    class Sparse(ProxMixin, UserModule):
        def configure_optimizers(self):
            return ProxMixin.configure_optimizers(self)

    model = Sparse(optimizer=functools.partial(ProxSGD, lr=0.1), regularizer=L1(1e-3))
    assert isinstance(model.configure_optimizers(), ProxSGD)


class OwnOptimizer(ProxMixin, pl.LightningModule):
    """The mixin in the module's own bases, with the module's own configure_optimizers."""

    def __init__(self, build, **kwargs):
        super().__init__(sparsity_table=False, **kwargs)
        self.build = build
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self):
        return self.build(self)


def test_own_configure_optimizers_ignoring_the_regularizer_raises_before_training():
    model = OwnOptimizer(lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2), regularizer=GroupLasso(1e-3))
    before = model.fc1.weight.detach().clone()
    with pytest.raises(
        ValueError, match=r"OwnOptimizer.configure_optimizers returned AdamW with no regularized"
    ):
        quiet_trainer(max_epochs=1).fit(model, _data())
    assert torch.equal(model.fc1.weight, before)


def test_own_configure_optimizers_with_torch_optimizer_over_prox_groups_raises():
    model = OwnOptimizer(lambda m: torch.optim.AdamW(m.prox_param_groups(), lr=1e-2), regularizer=L1(1e-3))
    with pytest.raises(ValueError, match="AdamW does not apply a proximal step"):
        quiet_trainer(max_epochs=1).fit(model, _data())


def test_own_configure_optimizers_from_prox_param_groups_applies_the_regularizer():
    model = OwnOptimizer(lambda m: ProxSGD(m.prox_param_groups(), lr=0.5), regularizer=L1(0.05))
    quiet_trainer(max_epochs=2).fit(model, _data())
    assert int((model.fc1.weight == 0).sum()) > 0


def test_own_plain_optimizer_without_regularizer_is_fine():
    model = OwnOptimizer(lambda m: torch.optim.AdamW(m.parameters(), lr=1e-2))
    trainer = quiet_trainer(max_epochs=1)
    trainer.fit(model, _data())
    assert isinstance(trainer.optimizers[0], torch.optim.AdamW)


def test_own_plain_optimizer_in_subgradient_mode_gets_the_penalty():
    model = OwnOptimizer(
        lambda m: torch.optim.SGD(m.parameters(), lr=0.1), regularizer=L1(0.5), penalty_mode="subgradient"
    )
    trainer = quiet_trainer(max_steps=1)
    trainer.fit(model, _data())
    expected = 0.5 * (model.fc1.weight.abs().sum() + model.fc2.weight.abs().sum())
    assert float(model.prox_penalty()) == pytest.approx(float(expected), rel=1e-6)


def test_create_prox_optimizer_factory():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(4, 2))
    opt = create_prox_optimizer(
        net, "proxsgd", lr=0.1, momentum=0.9, rules=[{"types": ["Linear"], "regularizer": L1(0.1)}]
    )
    assert isinstance(opt, ProxSGD) and opt.param_groups[0]["momentum"] == 0.9
    assert [g["regularizer"] is not None for g in opt.param_groups] == [True, False]
    with pytest.raises(ValueError, match="takes no regularizer"):
        create_prox_optimizer(net, torch.optim.SGD, regularizer=L1(0.1), lr=0.1)
    with pytest.raises(ValueError, match="optimizer='adamw'"):
        create_prox_optimizer(net, "adamw", regularizer=L1(0.1), lr=0.1)


# -- rules ---------------------------------------------------------------------------------------
def _net():
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4, 2))


def test_rules_first_match_wins_and_carry_lam_lr_weight_decay():
    groups = param_groups_from_rules(
        _net(),
        [
            {"params": r"^1\.weight", "regularizer": GroupLasso(1e-3, dim="in"), "lam": 0.2, "lr": 0.01},
            {"types": ["Conv2d", "Linear"], "regularizer": L1(1e-4), "weight_decay": 0.0},
            {"params": r"\.weight$", "regularizer": L1(9.0)},  # shadowed by the rules above
        ],
    )
    got = [(g["param_names"], g["regularizer"], g.get("lr"), g.get("weight_decay")) for g in groups]
    assert got == [
        (["1.weight"], GroupLasso(0.2, dim="in"), 0.01, None),
        (["0.weight", "3.weight"], L1(1e-4), None, 0.0),
        (["0.bias", "1.bias", "3.bias"], None, None, None),
    ]


def test_a_rule_without_regularizer_leaves_layers_out_and_default_regularizer_is_the_last_rule():
    groups = param_groups_from_rules(_net(), [{"params": r"^3\.", "regularizer": None}], regularizer=L1(0.1))
    by_name = {n: g["regularizer"] for g in groups for n in g["param_names"]}
    assert by_name == {"0.weight": L1(0.1), "1.weight": L1(0.1), "3.weight": None} | {
        f"{i}.bias": None for i in (0, 1, 3)
    }


def test_exclude_wins_over_rules():
    groups = param_groups_from_rules(_net(), [{"regularizer": L1(0.1)}], exclude=[r"^0\."])
    assert [g["param_names"] for g in groups if g["regularizer"]] == [["1.weight", "3.weight"]]


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ({"name": "L1"}, r"rules\[0\]: unknown key\(s\) \['name'\]"),
        ({"regularizer": {"lam": 0.1}}, r"rules\[0\]\.regularizer: a regularizer dict needs 'class_path'"),
        ({"regularizer": {"name": "NoSuch", "lam": 0.1}}, r"rules\[0\]\.regularizer: .*NoSuch"),
        ({"params": "(", "regularizer": L1(0.1)}, r"rules\[0\]\.params: '\(' is not a valid regular"),
        ({"params": "^nope", "regularizer": L1(0.1)}, r"rules\[0\] \(params=\['\^nope'\]\) matches no"),
        ({"lam": -1.0, "regularizer": L1(0.1)}, r"rules\[0\]\.lam must be a number >= 0, got -1.0"),
        ({"types": ["Conv2d"], "regularizer": GroupLasso(0.1), "lr": 0}, r"rules\[0\]\.lr must be > 0"),
        ("L1", r"rules\[0\] must be a dict"),
    ],
)
def test_rule_errors_name_the_rule_and_key(rule, message):
    with pytest.raises(ValueError, match=message):
        param_groups_from_rules(_net(), [rule])


def test_layer_rule_objects_work_too():
    groups = param_groups_from_rules(_net(), [LayerRule(types=("Linear",), regularizer=L1(0.3))])
    assert groups[0]["param_names"] == ["3.weight"] and groups[0]["regularizer"] == L1(0.3)


def test_exclude_ends_for_builtin_and_timm_models():
    assert model_ends(LeNet(1, 10, 8)) == ["features.0", "classifier.3"]
    assert model_ends(CifarResNet(20)) == ["conv1", "fc"]
    timm_model = ImageClassifier("resnet18", in_chans=3, img_size=32, small_input=True)
    assert model_ends(timm_model) == ["net.conv1", "net.fc"]
    model = ImageClassifier("lenet", regularizer=GroupLasso(1e-3, dim="in"), exclude_ends=True)
    names = [n for g in model.prox_param_groups() if g["regularizer"] for n in g["param_names"]]
    assert names == ["net.features.3.weight", "net.classifier.1.weight"]
    with pytest.raises(ValueError, match="declares no first conv / classifier"):
        param_groups_from_rules(_net(), regularizer=L1(0.1), exclude_ends=True)


def test_per_layer_rules_from_yaml_reach_the_optimizer_the_table_and_the_monitor(
    tmp_path, capsys, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "rules.yaml"
    config.write_text(
        textwrap.dedent(
            r"""
            model:
              init_args:
                regularizer: null
                exclude_ends: true
                rules:
                  - types: [Conv2d]
                    regularizer:
                      class_path: lightning_prox.regularizers.GroupLasso
                      init_args: {dim: in}
                    lam: 2.0e-3
                  - params: ['classifier\.1\.weight$']
                    regularizer: {class_path: lightning_prox.regularizers.L1, init_args: {lam: 3.0e-4}}
                    lr: 0.002
            """
        )
    )
    cli = ProxCLI(
        [
            "fit",
            "--config",
            str(QUICKSTART),
            "--config",
            str(config),
            "--trainer.max_epochs=1",
            "--trainer.logger=false",
            "--trainer.enable_checkpointing=false",
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            "--data.init_args.max_samples=128",
            "--trainer.callbacks=[{class_path: lightning_prox.callbacks.SparsityMonitor}]",
        ]
    )
    groups = cli.trainer.optimizers[0].param_groups
    regs = [(g["param_names"], g["regularizer"] and g["regularizer"]["name"], g["lam"]) for g in groups]
    assert regs[:2] == [
        (["net.features.3.weight"], "GroupLasso", 2e-3),
        (["net.classifier.1.weight"], "L1", 3e-4),
    ]
    assert groups[1]["lr"] == 0.002 and groups[0]["lr"] == 0.01
    assert all(g["regularizer"] is None for g in groups[2:])
    out = capsys.readouterr().out
    assert out.count("sparsity per layer") == 1  # one end-of-fit table: the monitor's
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip()}
    assert "GroupLasso λ=0.002" in rows["features.3"] and "L1 λ=0.0003" in rows["classifier.1"]
    assert "features.0" not in rows and "classifier.3" not in rows  # the ends stay dense, unlisted
    assert max(len(line) for line in out.splitlines()) <= 80
    monitor = cli.trainer.callbacks[0]
    assert [e.regularizer for e in monitor._entries][:2] == ["GroupLasso λ=0.002", "L1 λ=0.0003"]
