"""Groups by module, not by tensor layout: transposed, grouped and depthwise convs, LSTM/GRU gates, embeddings.

The truth is the module itself: a ``dim="in"`` group is an input channel/feature, so zeroing it must make
the module's output independent of exactly that input (zero gradient w.r.t. it, and only it); a
``dim="out"`` group is an output channel/unit, so zeroing it must make exactly that output constant. The
slices are also written out here by hand (index arithmetic per module type, independent of the library's
reshapes), and the prox is checked against them (closed form, and the optimality conditions under a
diagonal metric), as are the counts of ``tensor_stats`` and of the sparsity monitor.
"""

from __future__ import annotations

import functools
import random

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from helpers.trainers import quiet_trainer
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prox import ProxMixin
from lightning_prox.callbacks import SparsityMonitor
from lightning_prox.callbacks._counting import count, monitored_tensors
from lightning_prox.optim import RAMDA, RMDA, ProxGen, ProxSGD
from lightning_prox.regularizers import L1, GroupLasso
from lightning_prox.structure import (
    from_group_view,
    group_view,
    module_layout,
    num_groups,
    param_groups_regularized,
    param_layouts,
    tensor_stats,
)

MODULES = {
    "linear": lambda: nn.Linear(5, 4),
    "conv": lambda: nn.Conv2d(4, 6, 3),
    "grouped_conv": lambda: nn.Conv2d(4, 6, 3, groups=2),
    "grouped_conv1d": lambda: nn.Conv1d(6, 9, 2, groups=3),
    "depthwise": lambda: nn.Conv2d(4, 4, 3, groups=4),
    "depthwise_multiplier": lambda: nn.Conv2d(4, 8, 3, groups=4),
    "conv_transpose": lambda: nn.ConvTranspose2d(4, 6, 3),
    "conv_transpose_g2": lambda: nn.ConvTranspose2d(4, 6, 3, groups=2),
}
LAYOUTS = {
    "linear": None,
    "conv": None,
    "grouped_conv": "conv:2",
    "grouped_conv1d": "conv:3",
    "depthwise": "conv:4",
    "depthwise_multiplier": "conv:4",
    "conv_transpose": "conv_transpose:1",
    "conv_transpose_g2": "conv_transpose:2",
}


def _module(case: str) -> nn.Module:
    torch.manual_seed(sum(map(ord, case)))
    return MODULES[case]().double()


def _input(m: nn.Module) -> torch.Tensor:
    g = torch.Generator().manual_seed(7)
    if isinstance(m, nn.Linear):
        return torch.randn(3, m.in_features, generator=g, dtype=torch.float64)
    spatial = (5,) * (m.weight.ndim - 2)
    return torch.randn(2, m.in_channels, *spatial, generator=g, dtype=torch.float64)


def hand_masks(module: nn.Module, name: str, dim: str) -> list[torch.Tensor]:
    """Group j as a boolean mask over the weight, from the module's definition (plain index arithmetic)."""
    w = getattr(module, name)
    masks = []

    def new():
        return torch.zeros(w.shape, dtype=torch.bool)

    if isinstance(module, (nn.LSTM, nn.GRU)):
        gates = 4 if isinstance(module, nn.LSTM) else 3
        h = w.shape[0] // gates
        for j in range(h if dim == "out" else w.shape[1]):
            m = new()
            if dim == "out":
                for k in range(gates):
                    m[k * h + j] = True  # unit j's row in every gate
            else:
                m[:, j] = True
            masks.append(m)
    elif isinstance(module, nn.Embedding):
        assert dim == "out"
        for j in range(w.shape[1]):
            m = new()
            m[:, j] = True
            masks.append(m)
    elif isinstance(module, nn.Linear):
        for j in range(w.shape[1] if dim == "in" else w.shape[0]):
            m = new()
            if dim == "in":
                m[:, j] = True
            else:
                m[j] = True
            masks.append(m)
    elif module.transposed:  # weight [in, out/G, *k]
        G = module.groups
        i_g, o_g = module.in_channels // G, module.out_channels // G
        if dim == "in":
            for c in range(module.in_channels):
                m = new()
                m[c] = True
                masks.append(m)
        else:
            for d in range(module.out_channels):
                q, local = divmod(d, o_g)
                m = new()
                m[q * i_g : (q + 1) * i_g, local] = True
                masks.append(m)
    else:  # conv, weight [out, in/G, *k]
        G = module.groups
        i_g, o_g = module.in_channels // G, module.out_channels // G
        if dim == "out":
            for d in range(module.out_channels):
                m = new()
                m[d] = True
                masks.append(m)
        else:
            for c in range(module.in_channels):
                q, local = divmod(c, i_g)
                m = new()
                m[q * o_g : (q + 1) * o_g, local] = True
                masks.append(m)
    return masks


def _zero_group(w: torch.Tensor, dim: str, layout, j: int) -> None:
    with torch.no_grad():
        gv = group_view(w, dim, layout).clone()
        gv[j] = 0
        w.copy_(from_group_view(gv, w, dim, layout))


def input_dependence(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per input channel/feature: does the output depend on it (a random projection of the Jacobian)."""
    x = x.clone().requires_grad_()
    y = m(x)
    r = torch.randn(y.shape, generator=torch.Generator().manual_seed(3), dtype=y.dtype)
    (g,) = torch.autograd.grad((y * r).sum(), x)
    return g.abs().sum(dim=[d for d in range(g.ndim) if d != 1]) > 0


def output_dependence(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per output channel/neuron: does it depend on the input (else it is constant, the bias)."""
    x = x.clone().requires_grad_()
    y = m(x)
    out = []
    for d in range(y.shape[1]):
        (g,) = torch.autograd.grad(y[:, d].sum(), x, retain_graph=True)
        out.append(bool(g.abs().sum() > 0))
    return torch.tensor(out)


# -- the module layout of each weight -------------------------------------------------------------
@pytest.mark.parametrize("case", list(MODULES))
def test_module_layout_is_resolved_per_module(case):
    m = _module(case)
    assert module_layout(m, "weight") == LAYOUTS[case]
    groups = param_groups_regularized(nn.Sequential(m), GroupLasso(1e-3, dim="in"))
    assert groups[0]["regularizer"].layout == LAYOUTS[case]
    assert groups[0]["regularizer"].spec()["layout"] == LAYOUTS[case]  # plain data in the spec


@pytest.mark.parametrize("case", list(MODULES))
@pytest.mark.parametrize("dim", ["in", "out"])
def test_group_j_is_the_hand_written_slice(case, dim):
    m = _module(case)
    layout = module_layout(m, "weight")
    masks = hand_masks(m, "weight", dim)
    assert num_groups(m.weight, dim, layout) == len(masks)
    gv = group_view(m.weight.detach(), dim, layout)
    for j, mask in enumerate(masks):
        torch.testing.assert_close(gv[j].sort().values, m.weight.detach()[mask].sort().values, rtol=0, atol=0)


@pytest.mark.parametrize("case", list(MODULES))
def test_zeroing_an_in_group_disconnects_exactly_that_input_channel(case):
    base = _module(case)
    x = _input(base)
    layout = module_layout(base, "weight")
    assert input_dependence(base, x).all()
    masks = hand_masks(base, "weight", "in")
    for c in range(num_groups(base.weight, "in", layout)):
        m = _module(case)
        _zero_group(m.weight, "in", layout, c)
        assert torch.equal(m.weight.detach() == 0, masks[c])  # exactly the slice of channel c
        dep = input_dependence(m, x)
        expect = torch.ones_like(dep)
        expect[c] = False
        assert torch.equal(dep, expect), (
            f"{case}: zeroing in-group {c} disconnects {(~dep).nonzero().tolist()}"
        )


@pytest.mark.parametrize("case", list(MODULES))
def test_zeroing_an_out_group_makes_exactly_that_output_channel_constant(case):
    base = _module(case)
    x = _input(base)
    layout = module_layout(base, "weight")
    masks = hand_masks(base, "weight", "out")
    for d in range(num_groups(base.weight, "out", layout)):
        m = _module(case)
        _zero_group(m.weight, "out", layout, d)
        assert torch.equal(m.weight.detach() == 0, masks[d])
        dep = output_dependence(m, x)
        expect = torch.ones_like(dep)
        expect[d] = False
        assert torch.equal(dep, expect), (
            f"{case}: zeroing out-group {d} fixes outputs {(~dep).nonzero().tolist()}"
        )
        y = m(x).detach()
        assert torch.equal(
            y[:, d], torch.full_like(y[:, d], float(m.bias[d].detach()))
        )  # the constant is the bias


@pytest.mark.parametrize("case", list(MODULES))
@pytest.mark.parametrize("dim", ["in", "out"])
def test_counts_agree_with_the_module(case, dim):
    m = _module(case)
    x = _input(m)
    layout = module_layout(m, "weight")
    masks = hand_masks(m, "weight", dim)
    rng = random.Random(len(case) + len(dim))
    dead = sorted(rng.sample(range(len(masks)), k=max(1, len(masks) // 2)))
    with torch.no_grad():
        for j in dead:
            m.weight[masks[j]] = 0
    truth = ~(input_dependence(m, x) if dim == "in" else output_dependence(m, x))
    assert truth.nonzero().flatten().tolist() == dead
    s = tensor_stats(m.weight.detach(), dim, layout=layout)
    assert int(s["groups"]) == len(masks) and int(s["zero_groups"]) == len(dead)
    assert int(s["zero_group_numel"]) == sum(int(masks[j].sum()) for j in dead)
    # the sparsity monitor counts what the optimizer's groups say (layout inside the spec)
    model = nn.Sequential(m)
    opt = ProxGen(param_groups_regularized(model, GroupLasso(1e-3, dim=dim)), lr=1e-3)
    totals, rows = count(monitored_tensors(opt.param_groups, model.named_parameters()))
    assert totals["group"] == pytest.approx(len(dead) / len(masks))
    assert rows[0]["zero_groups"] == len(dead)
    # an elementwise regularizer with the monitor's group_dim: the module layout from the model
    opt = ProxGen(param_groups_regularized(model, L1(1e-3)), lr=1e-3)
    tensors = monitored_tensors(opt.param_groups, model.named_parameters(), dim, param_layouts(model))
    assert count(tensors)[1][0]["zero_groups"] == len(dead)


# -- the prox against brute force --------------------------------------------------------------------
def _prox_cases():
    for case in MODULES:
        for dim in ("in", "out"):
            yield case, dim
    yield "lstm", "out"
    yield "lstm", "in"
    yield "gru", "out"


def _weight(case: str) -> tuple[nn.Module, str]:
    if case == "lstm":
        torch.manual_seed(0)
        return nn.LSTM(3, 4).double(), "weight_ih_l0"
    if case == "gru":
        torch.manual_seed(0)
        return nn.GRU(3, 4).double(), "weight_hh_l0"
    return _module(case), "weight"


@pytest.mark.parametrize(("case", "dim"), list(_prox_cases()))
def test_prox_and_value_match_brute_force_on_the_module_groups(case, dim):
    m, name = _weight(case)
    layout = module_layout(m, name)
    masks = hand_masks(m, name, dim)
    g = torch.Generator().manual_seed(11)
    z = torch.randn(getattr(m, name).shape, generator=g, dtype=torch.float64)
    metric = 0.2 + torch.rand(z.shape, generator=g, dtype=torch.float64) * 3
    lam, step = 0.6, 0.7
    reg = GroupLasso(lam, dim=dim, layout=layout)
    tau = step * lam
    for j, mk in enumerate(masks):  # alternate groups below and above the Euclidean threshold
        z[mk] *= tau * float(mk.sum()) ** 0.5 / z[mk].norm() * (0.5 if j % 2 == 0 else 2.5)
    # value: λ Σ_g √|g| ‖z_g‖
    ref_value = sum(lam * float(mk.sum()) ** 0.5 * z[mk].norm() for mk in masks)
    torch.testing.assert_close(reg.value(z), ref_value)
    # Euclidean: closed-form group soft thresholding of every hand-written group
    ref = torch.zeros_like(z)
    n_zero = 0
    for mk in masks:
        t = tau * float(mk.sum()) ** 0.5
        nrm = z[mk].norm()
        ref[mk] = z[mk] * max(0.0, 1 - t / float(nrm))
        n_zero += bool(nrm <= t)
    assert 0 < n_zero < len(masks)  # the check sees both kinds of groups
    torch.testing.assert_close(reg.prox(z, step), ref, rtol=1e-12, atol=1e-12)
    # diagonal metric: x_g = 0 iff ‖m_g z_g‖ ≤ τ√|g|, else m_g(x_g − z_g) + τ√|g| x_g/‖x_g‖ = 0
    for solver, tol in (("newton", 1e-9), ("pg", 1e-4)):
        r = GroupLasso(lam, dim=dim, layout=layout, solver=solver, max_iters=5000, rtol=1e-14)
        x = r.prox(z, step, metric)
        inplace = z.clone()
        r.prox_multi([inplace], step, [metric], out=[inplace])
        torch.testing.assert_close(inplace, x, rtol=0, atol=0)
        for mk in masks:
            t = tau * float(mk.sum()) ** 0.5
            if (metric[mk] * z[mk]).norm() <= t:
                assert torch.equal(x[mk], torch.zeros_like(x[mk]))
            else:
                xg = x[mk]
                resid = metric[mk] * (xg - z[mk]) + t * xg / xg.norm()
                assert float(resid.norm()) <= tol * t, (solver, float(resid.norm()))


def test_layout_prox_keeps_the_plain_path_for_plain_layouts():
    """layout=None is the tensor layout; a module layout that is a reshaped plain grouping is the plain
    prox of that view (transposed conv groups=1: dim="in" is the tensor's dim="out")."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(4, 6, 3, 3, generator=g)
    a = GroupLasso(0.3, dim="in", layout="conv_transpose:1").prox(z, 1.0)
    b = GroupLasso(0.3, dim="out").prox(z, 1.0)
    assert torch.equal(a, b)


# -- LSTM / GRU: hidden units across their gates ---------------------------------------------------
def _rnn(kind: str) -> nn.Module:
    torch.manual_seed(5)
    cls = nn.LSTM if kind == "lstm" else nn.GRU
    return cls(3, 4, num_layers=1).double()


def _step_inputs(kind: str):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(1, 2, 3, generator=g, dtype=torch.float64)  # one time step, batch 2
    h0 = torch.randn(1, 2, 4, generator=g, dtype=torch.float64)
    state = (h0, torch.randn(1, 2, 4, generator=g, dtype=torch.float64)) if kind == "lstm" else h0
    return x, state


def _unit_dependence(rnn, kind, wrt: str) -> torch.Tensor:
    """One step from a random state: per hidden unit j, does h_1[j] depend on x (``wrt="x"``, a vector)
    or on h_0[k] (``wrt="h"``, a matrix [j, k])?"""
    x, state = _step_inputs(kind)
    h0 = state[0] if kind == "lstm" else state
    src = x if wrt == "x" else h0
    src.requires_grad_()
    out, _ = rnn(x, state)
    dep = []
    for j in range(out.shape[-1]):
        (gr,) = torch.autograd.grad(out[..., j].sum(), src, retain_graph=True)
        dep.append(bool(gr.abs().sum() > 0) if wrt == "x" else gr.abs().sum(dim=(0, 1)) > 0)
    return torch.tensor(dep) if wrt == "x" else torch.stack(dep)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("name", ["weight_ih_l0", "weight_hh_l0"])
def test_rnn_out_group_is_a_hidden_unit_across_its_gates(kind, name):
    """Zeroing unit j's rows of every gate in ``weight_ih`` makes the unit's gates (hence h_t[j] given
    h_{t-1}) independent of the input x_t; in ``weight_hh``, its gates independent of the hidden state
    h_{t-1}: the LSTM's h_t[j] then no longer depends on h_{t-1} at all, the GRU's only on its own
    h_{t-1}[j] (the update z·h_{t-1}, which involves no weight)."""
    wrt = "x" if name == "weight_ih_l0" else "h"
    layout = module_layout(_rnn(kind), name)
    assert layout == ("gates:4" if kind == "lstm" else "gates:3")
    for j in range(4):
        rnn = _rnn(kind)
        w = getattr(rnn, name)
        _zero_group(w, "out", layout, j)
        assert torch.equal(w.detach() == 0, hand_masks(rnn, name, "out")[j])
        dep = _unit_dependence(rnn, kind, wrt)
        if wrt == "x":
            expect = torch.ones(4, dtype=torch.bool)
            expect[j] = False
        else:
            expect = torch.ones(4, 4, dtype=torch.bool)
            expect[j] = False
            if kind == "gru":
                expect[j, j] = True
        assert torch.equal(dep, expect), dep


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_unit_zero_in_both_tensors_is_constant_over_a_sequence(kind):
    """With unit j's group zero in weight_ih and weight_hh, h_t[j] is the same for every input sequence
    (a function of t and the biases only, from a zero initial state); the other units still depend on x."""
    rnn = _rnn(kind)
    layout = module_layout(rnn, "weight_ih_l0")
    for name in ("weight_ih_l0", "weight_hh_l0"):
        _zero_group(getattr(rnn, name), "out", layout, 2)
    x = torch.randn(6, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    x.requires_grad_()
    out, _ = rnn(x)
    (gr,) = torch.autograd.grad(out[..., 2].sum(), x, retain_graph=True)
    assert torch.equal(gr, torch.zeros_like(gr))
    assert torch.equal(out[:, 0, 2], out[:, 1, 2]) and torch.equal(out[:, 0, 2], out[:, 2, 2])
    for j in (0, 1, 3):
        (gr,) = torch.autograd.grad(out[..., j].sum(), x, retain_graph=True)
        assert gr.abs().sum() > 0


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_rnn_in_group_is_an_input_feature_of_every_gate(kind):
    rnn = _rnn(kind)
    layout = module_layout(rnn, "weight_ih_l0")
    _zero_group(rnn.weight_ih_l0, "in", layout, 1)
    assert torch.equal(rnn.weight_ih_l0.detach() == 0, hand_masks(rnn, "weight_ih_l0", "in")[1])
    x = torch.randn(
        5, 2, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64, requires_grad=True
    )
    out, _ = rnn(x)
    (gr,) = torch.autograd.grad(out.sum(), x)
    per_feature = gr.abs().sum(dim=(0, 1))
    assert per_feature[1] == 0 and bool((per_feature[[0, 2]] > 0).all())  # the whole sequence, every unit
    # weight_hh column j: h_{t-1}[j] feeds no gate (the GRU keeps its weight-free z·h_{t-1}[j] path)
    rnn = _rnn(kind)
    _zero_group(rnn.weight_hh_l0, "in", layout, 3)
    assert torch.equal(rnn.weight_hh_l0.detach() == 0, hand_masks(rnn, "weight_hh_l0", "in")[3])
    dep = _unit_dependence(rnn, kind, "h")
    expect = torch.ones(4, 4, dtype=torch.bool)
    expect[:, 3] = False
    if kind == "gru":
        expect[3, 3] = True
    assert torch.equal(dep, expect), dep


def test_rnn_counts_follow_the_gates():
    rnn = _rnn("lstm")
    layout = module_layout(rnn, "weight_ih_l0")
    masks = hand_masks(rnn, "weight_ih_l0", "out")
    with torch.no_grad():
        rnn.weight_ih_l0[masks[0] | masks[3]] = 0
        rnn.weight_ih_l0[5, 0] = 0  # one row of one gate: not a zero unit
    s = tensor_stats(rnn.weight_ih_l0.detach(), "out", layout=layout)
    assert (int(s["groups"]), int(s["zero_groups"]), int(s["zero_group_numel"])) == (4, 2, 24)
    assert _unit_dependence(rnn, "lstm", "x").tolist() == [False, True, True, False]


# -- refused groupings -------------------------------------------------------------------------------
class WithEmbedding(nn.Module):
    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(7, 5)
        self.head = nn.Linear(5, 2)


def test_embedding_refuses_dim_in_and_groups_its_coordinates_with_dim_out():
    net = WithEmbedding()
    with pytest.raises(ValueError, match=r"emb\.weight.*token.*dim='out'"):
        param_groups_regularized(net, GroupLasso(1e-3, dim="in"), include=r"^emb\.weight$")
    with pytest.raises(ValueError, match="dim='out'"):
        GroupLasso(1e-3, dim="in", layout="embedding").check_param((7, 5), "emb.weight")
    groups = param_groups_regularized(net, GroupLasso(1e-3, dim="out"), include=r"^emb\.weight$")
    layouts = {n: g["regularizer"].layout for g in groups if g["regularizer"] for n in g["param_names"]}
    assert layouts == {"emb.weight": "embedding", "head.weight": None}
    _zero_group(net.emb.weight, "out", "embedding", 3)
    y = net.emb(torch.arange(7))
    assert torch.equal(y[:, 3], torch.zeros(7)) and bool((y[:, [0, 1, 2, 4]] != 0).all())


def test_layouts_that_do_not_fit_are_refused_naming_the_parameter():
    with pytest.raises(ValueError, match="layout"):
        GroupLasso(1e-3, layout="gates")
    with pytest.raises(ValueError, match="kind must be one of"):
        GroupLasso(1e-3, layout="lstm:4")
    with pytest.raises(ValueError, match=r"rnn\.w.*multiple of 4"):
        GroupLasso(1e-3, dim="out", layout="gates:4").check_param((6, 3), "rnn.w")
    net = nn.Sequential(nn.ConvTranspose2d(4, 6, 3), nn.Conv2d(6, 4, 3, groups=2))
    with pytest.raises(ValueError, match=r"0\.weight.*leave layout unset"):
        param_groups_regularized(net, GroupLasso(1e-3, layout="conv:2"))
    # a tensor shared by modules that group it differently
    net = WithEmbedding()
    tied = nn.Linear(5, 7, bias=False)
    tied.weight = net.emb.weight
    net.tied = tied
    with pytest.raises(ValueError, match=r"emb\.weight is shared"):
        param_groups_regularized(net, GroupLasso(1e-3, dim="out"), include=r"^emb\.weight$")


# -- optimizers and the Lightning layer ------------------------------------------------------------
class Mixed(nn.Module):
    """Dense, depthwise, grouped and transposed convs, then an LSTM over the columns, then a head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.grouped = nn.Conv2d(4, 6, 3, padding=1, groups=2)
        self.up = nn.ConvTranspose2d(6, 4, 2, stride=2, groups=2)
        self.lstm = nn.LSTM(4, 5)
        self.head = nn.Linear(5, 3)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.grouped(x))
        x = self.up(x)  # [B, 4, 2H, 2W]
        seq = x.mean(dim=2).permute(2, 0, 1)  # [2W, B, 4]
        out, _ = self.lstm(seq)
        return self.head(out[-1])


EXPECTED_LAYOUTS = {
    "conv.weight": None,
    "dw.weight": "conv:4",
    "grouped.weight": "conv:2",
    "up.weight": "conv_transpose:2",
    "lstm.weight_ih_l0": "gates:4",
    "lstm.weight_hh_l0": "gates:4",
    "head.weight": None,
}


def _module_zero_groups(model: nn.Module, dim: str) -> tuple[int, int]:
    """(zero groups, groups) over the regularized weights, from the hand-written slices; also checks
    that every zero of a weight lies in an all-zero group (the prox zeroes whole module groups)."""
    zero = total = 0
    for full, p in model.named_parameters():
        if full not in EXPECTED_LAYOUTS:
            continue
        mod_name, name = full.rsplit(".", 1)
        masks = hand_masks(model.get_submodule(mod_name), name, dim)
        w = p.detach()
        dead = torch.zeros(w.shape, dtype=torch.bool)
        for mk in masks:
            if bool((w[mk] == 0).all()):
                zero += 1
                dead |= mk
        total += len(masks)
        assert torch.equal(w == 0, dead), f"{full}: zeros outside whole module groups"
    return zero, total


def _batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g)


def _structured(model: nn.Module, dim: str) -> None:
    """Module groups alternately tiny (even j) and large (odd j), and a small constant gradient."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for full, p in model.named_parameters():
            if full not in EXPECTED_LAYOUTS:
                continue
            mod_name, name = full.rsplit(".", 1)
            for j, mk in enumerate(hand_masks(model.get_submodule(mod_name), name, dim)):
                p[mk] = torch.randn(int(mk.sum()), generator=g) * (1.0 if j % 2 else 1e-3)
            p.grad = torch.full(p.shape, 1e-3)


def _zero_pattern(model: nn.Module, dim: str) -> dict[str, list[bool]]:
    out = {}
    for full, p in model.named_parameters():
        if full in EXPECTED_LAYOUTS:
            mod_name, name = full.rsplit(".", 1)
            masks = hand_masks(model.get_submodule(mod_name), name, dim)
            out[full] = [bool((p.detach()[mk] == 0).all()) for mk in masks]
    return out


# (factory, λ): thresholds between the tiny and the large groups. ProxGen runs the paper's update
# (threshold_cap=None): its default metric floor caps the threshold at the size of Adam's own step,
# which here is as large as the tiny groups themselves, so it would not separate them in two steps.
OPTIMIZERS = {
    "ProxGen": (functools.partial(ProxGen, lr=1e-4, threshold_cap=None), 0.1),
    "ProxSGD": (functools.partial(ProxSGD, lr=0.1), 0.1),
    "RMDA": (functools.partial(RMDA, lr=0.2, momentum=1.0), 0.1),
    "RAMDA": (functools.partial(RAMDA, lr=0.05, momentum=1.0), 0.01),
    "RAMDA-compiled": (functools.partial(RAMDA, lr=0.05, momentum=1.0, implementation="compiled"), 0.01),
}


@pytest.mark.parametrize("name", list(OPTIMIZERS))
@pytest.mark.parametrize("dim", ["in", "out"])
def test_optimizers_apply_the_module_groups(name, dim):
    """Each optimizer zeroes exactly the tiny module groups (every even channel/unit of every weight),
    through the layout in the param group's spec; tensor-layout groups would not."""
    factory, lam = OPTIMIZERS[name]
    torch.manual_seed(0)
    model = Mixed()
    _structured(model, dim)
    opt = factory(param_groups_regularized(model, GroupLasso(lam, dim=dim)))
    got = {
        n: g["regularizer"]["layout"] for g in opt.param_groups if g["regularizer"] for n in g["param_names"]
    }
    assert got == EXPECTED_LAYOUTS  # the spec reaches the optimizer unchanged, layout included
    for _ in range(2):
        opt.step()
    pattern = _zero_pattern(model, dim)
    assert pattern == {n: [j % 2 == 0 for j in range(len(v))] for n, v in pattern.items()}
    _module_zero_groups(model, dim)  # and no zeros outside them
    # the same step with the tensors' own layout (no module resolution) gets the exotic weights wrong
    torch.manual_seed(0)
    plain = Mixed()
    _structured(plain, dim)
    names = [n for n, _ in plain.named_parameters() if n in EXPECTED_LAYOUTS]
    params = [p for n, p in plain.named_parameters() if n in EXPECTED_LAYOUTS]
    opt = factory([{"params": params, "param_names": names, "regularizer": GroupLasso(lam, dim=dim)}])
    for _ in range(2):
        opt.step()
    wrong = {n for n, v in _zero_pattern(plain, dim).items() if v != pattern[n]}
    assert wrong and wrong <= {n for n, lay in EXPECTED_LAYOUTS.items() if lay is not None}


class MixedNet(ProxMixin, pl.LightningModule):
    def __init__(self, optimizer=None, regularizer=None):
        super().__init__(optimizer=optimizer, regularizer=regularizer, sparsity_table=False)
        self.net = Mixed()

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self(x), y)


def _fit(root, epochs, ckpt_path=None):
    pl.seed_everything(0)
    model = MixedNet(optimizer=functools.partial(ProxGen, lr=0.05), regularizer=GroupLasso(0.02, dim="in"))
    x, y = _batch(32, seed=1)
    monitor = SparsityMonitor(every_n_steps=1, histograms=False, image=False, table=False, active_units=False)
    trainer = quiet_trainer(
        max_epochs=epochs,
        deterministic=True,
        default_root_dir=root,
        enable_checkpointing=True,
        callbacks=[monitor, ModelCheckpoint(dirpath=root, filename="{epoch}", save_top_k=-1)],
        num_sanity_val_steps=0,
    )
    trainer.fit(model, DataLoader(TensorDataset(x, y), batch_size=8), ckpt_path=ckpt_path)
    return model, trainer, monitor


def test_mixin_fit_counts_and_weights_only_resume_keep_the_layouts(tmp_path):
    straight, t_straight, monitor = _fit(tmp_path / "straight", 3)
    groups = t_straight.optimizers[0].param_groups
    got = {n: g["regularizer"]["layout"] for g in groups if g["regularizer"] for n in g["param_names"]}
    assert got == {f"net.{k}": v for k, v in EXPECTED_LAYOUTS.items()}
    # the monitor and the mixin's table count the module groups
    zero, total = _module_zero_groups(straight.net, "in")
    assert 0 < zero < total
    totals, _ = monitor.compute()
    assert totals["group"] == pytest.approx(zero / total)
    rows = straight.sparsity_rows()
    assert (sum(r["zero_groups"] for r in rows), sum(r["groups"] for r in rows)) == (zero, total)
    # weights_only checkpoint: the layouts are plain strings of the specs; resume is exact
    _fit(tmp_path / "first", 1)
    ckpt = tmp_path / "first" / "epoch=0.ckpt"
    data = torch.load(ckpt, weights_only=True)
    saved = [
        g["regularizer"]["layout"] for g in data["optimizer_states"][0]["param_groups"] if g["regularizer"]
    ]
    assert set(saved) == set(EXPECTED_LAYOUTS.values())
    resumed, t_resumed, _ = _fit(tmp_path / "resumed", 3, ckpt_path=str(ckpt))
    assert (
        t_resumed.optimizers[0].state_dict()["param_groups"]
        == t_straight.optimizers[0].state_dict()["param_groups"]
    )
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), n


def test_subgradient_penalty_and_spec_dicts_use_the_layouts():
    """``penalty_mode="subgradient"`` adds R(θ) with each group's layout; a spec dict with a layout (as
    in YAML) builds the same regularizer."""
    pl.seed_everything(0)
    model = MixedNet()
    model.configure_prox(regularizer=GroupLasso(0.02, dim="out"), penalty_mode="subgradient")
    ref = 0.0
    for full, p in model.named_parameters():
        short = full.removeprefix("net.")
        if short in EXPECTED_LAYOUTS:
            mod_name, name = full.rsplit(".", 1)
            for mk in hand_masks(model.get_submodule(mod_name), name, "out"):
                ref += 0.02 * float(mk.sum()) ** 0.5 * float(p.detach()[mk].norm())
    assert float(model.prox_penalty().detach()) == pytest.approx(ref, rel=1e-6)
    w = torch.randn(8, 3)
    opt = ProxSGD(
        [
            {
                "params": [w],
                "regularizer": {"name": "GroupLasso", "lam": 0.5, "dim": "out", "layout": "gates:4"},
            }
        ],
        lr=1.0,
    )
    assert opt.param_groups[0]["regularizer"]["layout"] == "gates:4"
    expect = GroupLasso(0.5, dim="out", layout="gates:4").prox(w, 1.0)
    w.grad = torch.zeros_like(w)
    opt.step()
    assert torch.equal(w, expect)
