"""CoupledGroupLasso from the mixin: a Lightning fit of a tiny CIFAR ResNet on digits zeroes whole
residual-stream channels, export_compact removes them, and the checkpoint loads with weights_only=True."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("torch_pruning")

from helpers.trainers import quiet_trainer

from lightning_prox.data import DigitsDataModule
from lightning_prox.export import export_compact
from lightning_prox.models import ImageClassifier
from lightning_prox.optim import ProxGen
from lightning_prox.regularizers import CoupledGroupLasso, GroupLasso, as_regularizer


def _stream_readers(net):
    """Stage-1 residual stream channel k: the input slices of every conv that reads it (from the
    architecture of CifarResNet(20): each layer1 block's conv1, layer2.0's conv1 and downsample)."""
    ws = [b.conv1.weight for b in net.layer1] + [
        net.layer2[0].conv1.weight,
        net.layer2[0].downsample[0].weight,
    ]
    return torch.stack([(w == 0).flatten(2).all(2).all(0) for w in ws], 1)  # [16 channels, 5 readers]


def _classifier(reg):
    torch.manual_seed(0)
    return ImageClassifier(
        "resnet20", in_chans=1, img_size=8, optimizer=lambda groups: ProxGen(groups, lr=2e-2), regularizer=reg
    )


def _fit(model, **kwargs):
    trainer = quiet_trainer(max_epochs=3, **kwargs)
    trainer.fit(model, DigitsDataModule(batch_size=64, max_samples=512))
    return trainer


def test_fit_zeroes_whole_coupled_groups_and_export_removes_them(tmp_path):
    model = _classifier(CoupledGroupLasso(lam=6e-3))
    groups = model.prox_param_groups()
    reg = groups[0]["regularizer"]
    assert (
        isinstance(reg, CoupledGroupLasso) and reg.num_groups == (16 + 32 + 64) * 4
    )  # 3 streams + 9 blocks' internal channels
    assert "net.fc.weight" in reg.names and "net.conv1.weight" not in reg.names  # the stem reads the image
    trainer = _fit(model, enable_checkpointing=True, default_root_dir=tmp_path)
    readers = _stream_readers(model.net)
    assert int(readers.all(1).sum()) >= 3  # residual channels removed...
    assert torch.equal(readers.any(1), readers.all(1))  # ...only as whole groups
    net = model.net.eval()
    x = torch.randn(4, 1, 8, 8)
    compact, report = export_compact(net, x, latency_batches=())
    assert report.removed_channels >= int(readers.all(1).sum())
    assert compact.layer1[0].conv1.in_channels == 16 - int(readers.all(1).sum())
    torch.testing.assert_close(compact(x), net(x), rtol=1e-5, atol=1e-5)
    ckpt = torch.load(trainer.checkpoint_callback.best_model_path, weights_only=True)
    spec = ckpt["optimizer_states"][0]["param_groups"][0]["regularizer"]
    assert (
        as_regularizer({**spec, "lam": 6e-3}) == reg
    )  # the coupling as plain data, equal to the rebuilt one


def test_yaml_form_and_exclude_ends_bind_to_the_model():
    yaml_reg = {"class_path": "lightning_prox.regularizers.CoupledGroupLasso", "init_args": {"lam": 1e-3}}
    model = ImageClassifier("resnet20", in_chans=1, img_size=8, regularizer=yaml_reg, exclude_ends=True)
    groups = model.prox_param_groups()
    reg = groups[0]["regularizer"]
    assert (
        isinstance(reg, CoupledGroupLasso)
        and reg.lam == 1e-3
        and reg.names == tuple(groups[0]["param_names"])
    )
    assert "net.fc.weight" not in reg.names  # the dense classifier's columns are no part of any group
    assert "net.fc.weight" in [n for g in groups[1:] for n in g["param_names"]]
    assert reg.num_groups == (16 + 32 + 64) * 4  # the stage-3 stream's groups keep their two conv readers


def test_cli_yaml_recipe_trains_with_coupled_groups(tmp_path, monkeypatch):
    from pathlib import Path

    from lightning_prox.cli import ProxCLI

    monkeypatch.chdir(tmp_path)
    quickstart = Path(__file__).resolve().parent.parent / "recipes" / "quickstart.yaml"
    text = quickstart.read_text().replace(
        "      class_path: lightning_prox.regularizers.GroupLasso\n      init_args:\n        lam: 0.001\n        dim: in",
        "      class_path: lightning_prox.regularizers.CoupledGroupLasso\n      init_args:\n        lam: 0.001",
    )
    assert "CoupledGroupLasso" in text
    (tmp_path / "coupled.yaml").write_text(text)
    cli = ProxCLI(
        [
            "fit",
            "--config",
            str(tmp_path / "coupled.yaml"),
            "--trainer.max_epochs=1",
            "--data.init_args.max_samples=200",
            "--trainer.enable_progress_bar=false",
        ]
    )
    ckpt = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    group = torch.load(ckpt, weights_only=True)["optimizer_states"][0]["param_groups"][0]
    assert group["regularizer"]["name"] == "CoupledGroupLasso" and group["lam"] == 0.001
    # LeNet: conv1's channels are read by conv2, conv2's by the hidden layer's 4x4 columns, ...
    assert group["regularizer"]["names"] == [
        "net.features.3.weight",
        "net.classifier.1.weight",
        "net.classifier.3.weight",
    ]


def test_per_tensor_group_lasso_at_the_same_lam_removes_no_residual_channel():
    """The same fit with GroupLasso(dim="in"): each reader's slice is its own group, and no stream
    channel ends with all five readers zero, so export_compact keeps every stream channel."""
    model = _classifier(GroupLasso(6e-3, dim="in"))
    _fit(model, enable_checkpointing=False)
    readers = _stream_readers(model.net)
    assert int(readers.all(1).sum()) == 0
    compact, _ = export_compact(model.net.eval(), torch.randn(2, 1, 8, 8), latency_batches=())
    assert compact.layer1[0].conv1.in_channels == 16
