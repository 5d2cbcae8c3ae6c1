"""Grouping, parameter selection and sparsity statistics (lightning_prox.structure)."""

import pytest
import torch
from torch import nn

from lightning_prox.regularizers import L1, GroupLasso
from lightning_prox.structure import (
    active_units,
    check_groupable,
    from_group_view,
    group_blocks,
    group_norms,
    group_reduce_dims,
    group_size,
    group_view,
    model_sparsity,
    num_groups,
    param_groups_regularized,
    param_layouts,
    parse_layout,
    plain_form,
    select_parameters,
    sparsity_ratios,
    sum_stats,
    tensor_stats,
    unit_pairs,
    unit_stats,
)


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.lstm = nn.LSTM(6, 5, num_layers=2, bidirectional=True)
        self.ln = nn.LayerNorm(5)
        self.head = nn.Linear(10, 2)
        self.tied = nn.Linear(6, 10, bias=False)
        self.tied.weight = self.emb.weight  # tied to the embedding (shape [10, 6])


@pytest.mark.parametrize(
    ("shape", "dim", "slicer"),
    [
        ((4, 3, 2, 2), "in", lambda x, j: x[:, j]),
        ((4, 3, 2, 2), "out", lambda x, j: x[j]),
        ((5, 7), "in", lambda x, j: x[:, j]),
        ((5, 7), "out", lambda x, j: x[j]),
        ((6, 2, 5), "in", lambda x, j: x[:, j]),
    ],
)
def test_groups_are_the_documented_slices(shape, dim, slicer):
    x = torch.randn(shape)
    sq = x.pow(2).sum(dim=group_reduce_dims(x.ndim, dim), keepdim=True).flatten()
    n = num_groups(x, dim)
    ref = torch.stack([slicer(x, j).pow(2).sum() for j in range(n)])
    torch.testing.assert_close(sq, ref)
    assert group_size(x, dim) * n == x.numel()
    assert group_size(x, dim) == slicer(x, 0).numel()


def test_grouping_that_does_not_fit_names_shape_and_dim():
    with pytest.raises(ValueError, match=r"dim='in'.*\(5,\)"):
        check_groupable(torch.zeros(5), "in")
    with pytest.raises(ValueError, match="'rows'"):
        check_groupable(torch.zeros(5, 5), "rows")


def test_default_selection_conv_linear_lstm_weights_only():
    reg, rest = select_parameters(Net())
    names = [n for n, _ in reg]
    assert names == [
        "conv.weight",
        "lstm.weight_ih_l0",
        "lstm.weight_hh_l0",
        "lstm.weight_ih_l0_reverse",
        "lstm.weight_hh_l0_reverse",
        "lstm.weight_ih_l1",
        "lstm.weight_hh_l1",
        "lstm.weight_ih_l1_reverse",
        "lstm.weight_hh_l1_reverse",
        "head.weight",
    ]
    rest_names = [n for n, _ in rest]
    # the embedding weight is shared with `tied` (a Linear): it appears once, under its first name,
    # and the tie does not drag the embedding into the regularized set.
    assert "emb.weight" in rest_names and "tied.weight" not in rest_names
    assert all(
        n.rsplit(".", 1)[-1].startswith("bias") or n.startswith(("bn.", "ln.", "emb.")) for n in rest_names
    )


def test_include_exclude_and_type_names():
    reg, _ = select_parameters(Net(), include_types=["Conv2d"], include=r"^emb\.", exclude=[r"conv"])
    assert [n for n, _ in reg] == ["emb.weight"]
    reg, _ = select_parameters(Net(), include_types=[nn.Linear])
    assert [n for n, _ in reg] == ["head.weight"]
    with pytest.raises(ValueError, match="not a valid regular expression"):
        select_parameters(Net(), include="(")
    with pytest.raises(ValueError, match="include_types"):
        select_parameters(Net(), include_types=[3])


def test_frozen_parameters_are_skipped():
    net = nn.Linear(3, 3)
    net.weight.requires_grad_(False)
    reg, rest = select_parameters(net)
    assert reg == [] and [n for n, _ in rest] == ["bias"]


def test_param_groups_regularized_checks_each_tensor():
    class NeedsMatrix:
        def check_param(self, shape, name):
            if len(shape) < 2:
                raise ValueError(f"{name}: shape {shape}")

    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 1))
    groups = param_groups_regularized(net, NeedsMatrix(), lr=0.5)
    assert groups[0]["param_names"] == ["0.weight", "2.weight"] and groups[0]["lr"] == 0.5
    assert groups[1]["regularizer"] is None and "lr" not in groups[1]
    with pytest.raises(ValueError, match=r"0\.bias"):
        param_groups_regularized(net, NeedsMatrix(), include=r"bias")


@pytest.mark.parametrize("dim", ["in", "out"])
def test_tensor_stats_match_brute_force(dim):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 5, 3, 3, generator=g)
    x[x.abs() < 0.5] = 0
    kill = [0, 3] if dim == "in" else [1, 2, 5]
    for j in kill:
        (x[:, j] if dim == "in" else x[j]).zero_()
    s = tensor_stats(x, dim)
    slices = [x[:, j] for j in range(5)] if dim == "in" else [x[j] for j in range(6)]
    zero_groups = sum(int((t == 0).all()) for t in slices)
    assert int(s["zeros"]) == int((x == 0).sum())
    assert int(s["numel"]) == x.numel()
    assert int(s["groups"]) == len(slices)
    assert int(s["zero_groups"]) == zero_groups == len(kill)
    assert int(s["zero_group_numel"]) == sum(t.numel() for t in slices if (t == 0).all())


def test_weighted_group_sparsity_pools_layers_by_size():
    a = torch.ones(8, 4)  # groups of size 8
    a[:, :2] = 0
    b = torch.ones(2, 10)  # groups of size 2
    b[:, :5] = 0
    ratios = sparsity_ratios(sum_stats([tensor_stats(a, "in"), tensor_stats(b, "in")]))
    assert float(ratios["group"]) == pytest.approx((2 + 5) / (4 + 10))
    assert float(ratios["group_weighted"]) == pytest.approx((16 + 10) / (32 + 20))
    assert float(ratios["unstructured"]) == pytest.approx(26 / 52)


def test_low_rank_level():
    u, v = torch.randn(6, 2, dtype=torch.float64), torch.randn(2, 12, dtype=torch.float64)
    x = (u @ v).float().reshape(6, 3, 2, 2)
    s = tensor_stats(x, rank=True)
    assert int(s["rank"]) == 2 and int(s["full_rank"]) == 6
    assert float(sparsity_ratios(s)["low_rank"]) == pytest.approx(4 / 6)


def test_model_sparsity_mixes_grouped_and_1d_tensors():
    w = torch.zeros(3, 4)
    w[:, 0] = 1
    out = model_sparsity([("w", w), ("b", torch.zeros(5))])
    assert out["unstructured"] == pytest.approx((9 + 5) / 17)
    assert out["group"] == pytest.approx(3 / 4)
    assert out["group_weighted"] == pytest.approx(9 / 12)


# -- module layouts -----------------------------------------------------------------------------------
LAYOUT_CASES = [  # (shape, dim, layout, hand-written slice of group j)
    ((6, 2, 3), "in", "conv:2", lambda x, j: x[(j // 2) * 3 : (j // 2 + 1) * 3, j % 2]),
    ((6, 2, 3), "out", "conv:2", lambda x, j: x[j]),
    ((4, 1, 3, 3), "in", "conv:4", lambda x, j: x[j, 0]),
    ((8, 1, 3), "in", "conv:4", lambda x, j: x[2 * j : 2 * j + 2, 0]),
    ((4, 3, 2, 2), "in", "conv_transpose:1", lambda x, j: x[j]),
    ((4, 3, 2, 2), "out", "conv_transpose:1", lambda x, j: x[:, j]),
    ((4, 3, 2), "out", "conv_transpose:2", lambda x, j: x[(j // 3) * 2 : (j // 3 + 1) * 2, j % 3]),
    ((8, 3), "out", "gates:4", lambda x, j: x[[j, 2 + j, 4 + j, 6 + j]]),
    ((8, 3), "in", "gates:4", lambda x, j: x[:, j]),
    ((9,), "out", "gates:3", lambda x, j: x[[j, 3 + j, 6 + j]]),
    ((7, 5), "out", "embedding", lambda x, j: x[:, j]),
]


@pytest.mark.parametrize(("shape", "dim", "layout", "slicer"), LAYOUT_CASES)
def test_layout_groups_are_the_documented_slices(shape, dim, layout, slicer):
    x = torch.randn(shape, dtype=torch.float64)
    n = num_groups(x, dim, layout)
    gv = group_view(x, dim, layout)
    assert gv.shape == (n, group_size(x, dim, layout)) and n * gv.shape[1] == x.numel()
    for j in range(n):
        torch.testing.assert_close(gv[j].sort().values, slicer(x, j).flatten().sort().values, rtol=0, atol=0)
    torch.testing.assert_close(group_norms(x, dim, layout), gv.norm(dim=1))
    assert torch.equal(from_group_view(gv, x, dim, layout), x)
    form = plain_form(shape, dim, layout)
    if form is not None:  # the same groups as a plain grouping of a reshaped view (no gather)
        view_shape, plain_dim = form
        torch.testing.assert_close(group_norms(x.view(view_shape), plain_dim), gv.norm(dim=1))
    # counts follow the layout
    x[tuple(torch.tensor(0) for _ in shape)] = 0  # a single zero does not make a zero group
    gv = group_view(x, dim, layout).clone()
    gv[n - 1] = 0
    x = from_group_view(gv, x, dim, layout)
    s = tensor_stats(x, dim, layout=layout)
    assert (int(s["groups"]), int(s["zero_groups"]), int(s["zero_group_numel"])) == (n, 1, gv.shape[1])


def test_layout_strings_and_refusals():
    assert parse_layout("gates:4") == ("gates", 4) and parse_layout("embedding") == ("embedding", 1)
    for bad in ("conv", "conv:0", "conv:x", "embedding:2", "rows:2", 3):
        with pytest.raises(ValueError, match="layout"):
            parse_layout(bad)
    assert group_blocks((8, 2, 3, 3), "in", "conv:2") == (2, 4, 2, 9)
    with pytest.raises(ValueError, match=r"lstm\.w .*multiple of 4"):
        check_groupable((6, 3), "out", "gates:4", name="lstm.w")
    with pytest.raises(ValueError, match=r"emb.*dim='out'"):
        check_groupable((7, 5), "in", "embedding", name="emb")
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        check_groupable((6,), "out", "conv:2")


def test_param_layouts_and_regularized_groups_per_layout():
    net = Net()
    layouts = param_layouts(net)
    assert layouts["conv.weight"] is None and layouts["head.weight"] is None
    assert layouts["emb.weight"] == "embedding"  # first owner of the tied weight
    assert {layouts[n] for n in layouts if n.startswith("lstm.")} == {"gates:4"}
    with pytest.raises(ValueError, match=r"emb\.weight is shared"):
        param_layouts(net, dim="out")  # Embedding columns vs Linear rows
    groups = param_groups_regularized(net, GroupLasso(1e-3, dim="in"), lr=0.1)
    assert groups[0]["param_names"] == ["conv.weight", "head.weight"]
    assert groups[0]["regularizer"].layout is None and groups[0]["lr"] == 0.1
    assert groups[1]["regularizer"].layout == "gates:4" and groups[1]["lr"] == 0.1
    assert groups[1]["param_names"] == [n for n, _ in select_parameters(net)[0] if n.startswith("lstm.")]
    assert groups[2]["regularizer"] is None and len(groups) == 3
    # elementwise regularizers keep one group; so do models without special layouts
    assert len(param_groups_regularized(net, L1(1e-3))) == 2
    assert len(param_groups_regularized(nn.Linear(3, 2), GroupLasso(1e-3))) == 2


def test_model_sparsity_follows_layouts():
    up = nn.ConvTranspose2d(4, 3, 2)  # weight [in=4, out=3, 2, 2]
    with torch.no_grad():
        up.weight[1] = 0  # input channel 1
    named = [("weight", up.weight)]
    assert model_sparsity(named, "in", layouts=param_layouts(up))["group"] == pytest.approx(1 / 4)
    assert model_sparsity(named, "in")["group"] == 0.0  # the tensor's own dim 1 is the output channel
    emb = nn.Embedding(5, 3)
    out = model_sparsity([("weight", emb.weight)], "in", layouts=param_layouts(emb))
    assert "group" not in out  # refused grouping: unstructured only


# -- active units (digest 004) ----------------------------------------------------------------------
def _brute_active(w: torch.Tensor, v: torch.Tensor, block: int = 1) -> tuple[int, int]:
    """Unit k is active when ||w_k|| * ||v_k|| > 0 (w_k: filter/row k; v_k: v's input slice of unit k)."""
    units = w.shape[0]
    active = 0
    for k in range(units):
        vk = v[:, k * block : (k + 1) * block] if v.ndim == 2 else v[:, k]
        active += int(float(w[k].norm()) * float(vk.norm()) > 0)
    return units, active


def test_active_units_of_a_hand_built_mlp():
    net = nn.Sequential(
        nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3), nn.ReLU(), nn.Dropout(0.1), nn.Linear(3, 2)
    )
    with torch.no_grad():
        net[0].weight[1] = 0  # hidden unit 1 of layer 1: no input weights
        net[2].weight[:, 3] = 0  # hidden unit 3 of layer 1: no output weights
        net[2].weight[0] = 0  # hidden unit 0 of layer 2: no input weights...
        net[5].weight[:, 0] = 0  # ...and no output weights (counted once)
        net[5].weight[0, 1] = 1e-30  # tiny is not zero: the test is exact
    pairs = unit_pairs(net)
    assert [(p.name, p.next_name, p.block) for p in pairs] == [
        ("0.weight", "2.weight", 1),
        ("2.weight", "5.weight", 1),
    ]
    got = [{k: int(v) for k, v in unit_stats(p.w, p.v, p.block).items()} for p in pairs]
    assert got == [{"units": 5, "active_units": 3}, {"units": 3, "active_units": 2}]
    assert active_units(net) == {"units": 8, "active_units": 5}
    assert sparsity_ratios(sum_stats(unit_stats(p.w, p.v) for p in pairs))["active_units"] == 5 / 8


def test_active_units_conv_pool_flatten_linear_blocks():
    from lightning_prox.models import LeNet

    net = LeNet(1, 10, img_size=8, channels=(4, 6), hidden=5)  # conv 1→4, conv 4→6, 6x2x2 → 5 → 10
    pairs = unit_pairs(net)
    assert [(p.name, p.next_name, p.block) for p in pairs] == [
        ("features.0.weight", "features.3.weight", 1),
        ("features.3.weight", "classifier.1.weight", 4),
        ("classifier.1.weight", "classifier.3.weight", 1),
    ]
    with torch.no_grad():
        net.features[3].weight[:, 2] = 0  # conv-1 channel 2: no output weights
        net.features[3].weight[5] = 0  # conv-2 channel 5: no input weights
        net.classifier[1].weight[:, 4:8] = 0  # conv-2 channel 1: its 2x2 columns of the linear layer
        net.classifier[1].weight[:, 8:11] = 0  # channel 2 keeps one column: still active
    for p, want in zip(pairs, [(4, 3), (6, 4), (5, 5)]):
        assert _brute_active(p.w.detach(), p.v.detach(), p.block) == want
        assert tuple(int(v) for v in unit_stats(p.w, p.v, p.block).values()) == want


def test_active_units_random_masks_match_brute_force():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        w = torch.randn(7, 3, 2, 2, generator=g) * (torch.rand(7, 1, 1, 1, generator=g) > 0.4)
        v = torch.randn(5, 7, 2, 2, generator=g) * (torch.rand(1, 7, 1, 1, generator=g) > 0.4)
        assert tuple(int(x) for x in unit_stats(w, v).values()) == _brute_active(w, v)
        lin = torch.randn(4, 28, generator=g) * (torch.rand(1, 28, generator=g) > 0.5)
        assert tuple(int(x) for x in unit_stats(w, lin, 4).values()) == _brute_active(w, lin, 4)


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(4, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 4, 3, padding=1), nn.BatchNorm2d(4)
        self.conv3 = nn.Conv2d(4, 4, 1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        y = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        x = torch.relu(x + y)  # the residual stream: conv2's channels stay alive through the skip
        x = self.dw(self.conv3(x))  # depthwise: no channel-to-channel pair
        return self.fc(self.gn(x).mean((2, 3)))  # group norm mixes channels; mean is not followed


def test_unit_pairs_see_through_view_with_size_and_functional_ops():
    class Classic(nn.Module):  # the pytorch-cifar style: functional ops and x.view(x.size(0), -1)
        def __init__(self):
            super().__init__()
            self.conv1, self.conv2, self.fc = nn.Conv2d(1, 3, 3), nn.Conv2d(3, 4, 3), nn.Linear(4 * 2 * 2, 5)

        def forward(self, x):
            x = torch.nn.functional.max_pool2d(torch.relu(self.conv1(x)), 2)
            x = torch.relu(self.conv2(x))
            return self.fc(x.view(x.size(0), -1))

    net = Classic()
    assert [(p.name, p.next_name, p.block) for p in unit_pairs(net)] == [
        ("conv1.weight", "conv2.weight", 1),
        ("conv2.weight", "fc.weight", 4),
    ]
    assert net(torch.zeros(1, 1, 10, 10)).shape == (1, 5)


def test_unit_pairs_stop_at_residual_adds_depthwise_convs_and_channel_mixing():
    assert [(p.name, p.next_name) for p in unit_pairs(_Residual())] == [("conv1.weight", "conv2.weight")]


def test_unit_pairs_skip_shared_layers_and_trace_children_of_untraceable_models():
    lin = nn.Linear(3, 3)
    shared = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), lin, nn.ReLU(), lin)
    assert [p.name for p in unit_pairs(shared)] == []

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))

        def forward(self, x):
            return self.body(x) if x.sum() > 0 else -self.body(x)  # data-dependent: fx cannot trace it

    assert [(p.name, p.next_name) for p in unit_pairs(Branchy())] == [("body.0.weight", "body.2.weight")]
    assert unit_pairs(nn.Linear(2, 2)) == [] and active_units(nn.Linear(2, 2)) == {
        "units": 0,
        "active_units": 0,
    }
