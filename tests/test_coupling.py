"""coupled_channel_groups: every consumer's input slice of a channel, across residual adds and flattens.

Expected groups are written out from each architecture (which layers read which channel), not from
the tracer.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning")

from lightning_prox.models import MLP, CifarResNet, LeNet
from lightning_prox.structure import coupled_channel_groups


def _as_sets(groups):
    return [{(n, d, tuple(ix)) for n, d, ix in g} for g in groups]


def test_lenet_conv_channel_owns_its_flattened_columns():
    net = LeNet(1, 10, img_size=8, channels=(4, 8), hidden=16)  # 8x8 -> 4x4 -> 2x2: 4 columns per channel
    groups = _as_sets(coupled_channel_groups(net, torch.zeros(1, 1, 8, 8)))
    expected = [{("features.3.weight", 1, (k,))} for k in range(4)]  # conv1 channel k: conv2's input k
    expected += [{("classifier.1.weight", 1, tuple(range(4 * k, 4 * k + 4)))} for k in range(8)]
    expected += [{("classifier.3.weight", 1, (k,))} for k in range(16)]  # hidden unit k: a column of the head
    assert sorted(map(sorted, groups)) == sorted(map(sorted, expected))


def test_mlp_groups_are_columns_of_the_next_layer():
    net = MLP(6, 3, hidden=(5, 4))
    lin = [n for n, m in net.named_modules() if isinstance(m, nn.Linear)]
    groups = _as_sets(coupled_channel_groups(net, torch.zeros(2, 6)))
    expected = [{(f"{lin[1]}.weight", 1, (k,))} for k in range(5)] + [
        {(f"{lin[2]}.weight", 1, (k,))} for k in range(4)
    ]
    assert sorted(map(sorted, groups)) == sorted(map(sorted, expected))


def test_resnet20_residual_channel_spans_every_reader():
    net = CifarResNet(20, in_chans=1)
    groups = _as_sets(coupled_channel_groups(net, torch.zeros(1, 1, 16, 16)))
    by_slice = {s: g for g in groups for s in g}
    assert sum(len(g) for g in groups) == len(by_slice)  # no slice in two groups
    # stage 1 residual stream (conv1 + every block's sum): read by each block's conv1, layer2's entry
    # conv and its downsample conv
    for k in (0, 7, 15):
        readers = {("layer1.0.conv1.weight", 1, (k,)), ("layer1.1.conv1.weight", 1, (k,))}
        readers |= {("layer1.2.conv1.weight", 1, (k,)), ("layer2.0.conv1.weight", 1, (k,))}
        readers |= {("layer2.0.downsample.0.weight", 1, (k,))}
        assert by_slice[("layer1.0.conv1.weight", 1, (k,))] == readers
    # stage 3 stream: read by layer3.1/3.2's conv1 and the classifier's column
    for k in (0, 63):
        readers = {
            ("layer3.1.conv1.weight", 1, (k,)),
            ("layer3.2.conv1.weight", 1, (k,)),
            ("fc.weight", 1, (k,)),
        }
        assert by_slice[("fc.weight", 1, (k,))] == readers
    # block-internal channels: a group of one slice (the block's second conv)
    for stage, width in ((1, 16), (2, 32), (3, 64)):
        for b in range(3):
            for k in (0, width - 1):
                s = (f"layer{stage}.{b}.conv2.weight", 1, (k,))
                assert by_slice[s] == {s}
    assert len(groups) == 16 + 32 + 64 + 9 * 0 + (16 + 32 + 64) * 3  # streams + block-internal
    assert not any(s[0] == "conv1.weight" for s in by_slice)  # the image's channels are no group


class _Detached(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

    def forward(self, x):
        return self.b(self.a(x).detach())


class _Broken(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.Linear(5, 2))

    def forward(self, x):
        return self.body(x)


def test_untraceable_models_raise_naming_the_module():
    with pytest.raises(ValueError, match=r"'body\.1'"):
        coupled_channel_groups(_Broken(), torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"module 'a' \(Linear\) was not reached"):
        coupled_channel_groups(_Detached(), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="example_inputs"):
        coupled_channel_groups(nn.Linear(2, 2), [1, 2])


def test_unknown_layer_raises_or_is_skipped_and_model_state_is_kept():
    net = CifarResNet(8, in_chans=1, shortcut="A")  # the channel-padding shortcut mixes channel indices
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    with pytest.raises(ValueError, match="on_unknown='skip'"):
        coupled_channel_groups(net, torch.randn(2, 1, 8, 8))
    groups = coupled_channel_groups(net, torch.randn(2, 1, 8, 8), on_unknown="skip")
    assert groups and all(len(g) >= 1 for g in groups)
    assert net.training and all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert all(p.requires_grad for p in net.parameters())
