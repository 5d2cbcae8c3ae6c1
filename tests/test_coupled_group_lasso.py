"""CoupledGroupLasso: exact prox of groups spanning several tensors (KKT), agreement with GroupLasso,
the four optimizers, bit-exact resume with weights_only=True, non-finite inputs, refusals."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from lightning_prox.optim import RAMDA, RMDA, ProxGen, ProxSGD
from lightning_prox.regularizers import CoupledGroupLasso, GroupLasso, from_spec

SHAPES = [(3, 4, 2), (5, 3), (2, 6, 1, 2), (4, 5)]
DIMS = [1, 0, 1, 1]


def _coupling(seed: int, n_groups: int = 6):
    """Random groups over the slices of SHAPES: group g spans 1 + g % 4 tensors; some slices in none."""
    g = torch.Generator().manual_seed(seed)
    ids = [[-1] * s[d] for s, d in zip(SHAPES, DIMS)]
    free = [list(range(s[d])) for s, d in zip(SHAPES, DIMS)]
    for grp in range(n_groups):
        span = 1 + grp % 4
        order = torch.randperm(len(SHAPES), generator=g).tolist()
        tensors = [t for t in order if free[t]][:span]
        for t in tensors:
            j = free[t].pop(int(torch.randint(len(free[t]), (1,), generator=g)))
            ids[t][j] = grp
    return tuple(tuple(r) for r in ids)


def _masks(ids, shapes=SHAPES, dims=DIMS):
    """Per group, per tensor: the boolean mask of the group's elements (written from the definition)."""
    G = 1 + max(i for r in ids for i in r)
    out = []
    for grp in range(G):
        ms = []
        for shape, d, row in zip(shapes, dims, ids):
            m = torch.zeros(shape, dtype=torch.bool)
            for j, i in enumerate(row):
                if i == grp:
                    m.select(d, j).fill_(True)
            ms.append(m)
        out.append(ms)
    return out


def _reg(lam, ids, **kw):
    return CoupledGroupLasso(lam, names=tuple("abcd"), dims=tuple(DIMS), slice_groups=ids, **kw)


@pytest.mark.parametrize("metric", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prox_satisfies_kkt(metric, seed):
    ids = _coupling(seed)
    gen = torch.Generator().manual_seed(100 + seed)
    zs = [torch.randn(s, generator=gen, dtype=torch.float64) for s in SHAPES]
    ms = [torch.rand(s, generator=gen, dtype=torch.float64) * 3 + 0.1 for s in SHAPES] if metric else None
    ones = [torch.ones_like(z) for z in zs]
    mm = ms if metric else ones
    masks = _masks(ids)
    # λ between the middle values of ‖m_g z_g‖ / w_g: about half of the groups are zero
    r = sorted(
        float(torch.cat([(m * z)[k] for m, z, k in zip(mm, zs, gm)]).norm())
        / math.sqrt(sum(int(k.sum()) for k in gm))
        for gm in masks
    )
    step = 0.7
    lam = (r[2] + r[3]) / 2 / step
    reg = _reg(lam, ids, rtol=1e-12)
    xs = reg.prox_multi(zs, step, ms)
    tau = step * lam
    covered = [torch.zeros(s, dtype=torch.bool) for s in SHAPES]
    n_zero = n_live = 0
    for gm in masks:
        x = torch.cat([x[k] for x, k in zip(xs, gm)])
        z = torch.cat([z[k] for z, k in zip(zs, gm)])
        m = torch.cat([m[k] for m, k in zip(mm, gm)])
        w = math.sqrt(x.numel())
        if bool((x == 0).all()):
            n_zero += 1
            assert float(torch.linalg.vector_norm(m * z)) <= tau * w * (1 + 1e-12)
        else:
            n_live += 1
            assert bool((x != 0).all())
            grad = m * (x - z) + tau * w * x / torch.linalg.vector_norm(x)  # ∇ of ½‖x−z‖²_D + τw‖x‖
            assert float(grad.abs().max()) < 1e-9
        for c, k in zip(covered, gm):
            c |= k
    assert n_zero and n_live  # both cases exercised
    for x, z, c in zip(xs, zs, covered):  # elements in no group are untouched
        assert torch.equal(x[~c], z[~c])


def test_groups_of_one_slice_agree_with_group_lasso():
    gen = torch.Generator().manual_seed(3)
    shapes = [(6, 4, 3, 3), (5, 4)]
    zs = [torch.randn(s, generator=gen) * 0.3 for s in shapes]
    ms = [torch.rand(s, generator=gen) + 0.2 for s in shapes]
    ids = (tuple(range(4)), tuple(range(4, 8)))
    reg = CoupledGroupLasso(0.3, names=("conv", "fc"), dims=(1, 1), slice_groups=ids)
    ref = GroupLasso(0.3, dim="in")
    for metrics in (None, ms):
        got = reg.prox_multi(zs, 1.0, metrics)
        want = ref.prox_multi(zs, 1.0, metrics)
        for g, w in zip(got, want):
            assert torch.equal(g == 0, w == 0)
            torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)
    assert any(bool((g == 0).any()) for g in got)


def test_value_multi_and_spec_round_trip():
    ids = _coupling(4)
    zs = [torch.randn(s, dtype=torch.float64) for s in SHAPES]
    reg = _reg(0.3, ids)
    want = sum(
        math.sqrt(sum(int(k.sum()) for k in gm)) * float(torch.cat([z[k] for z, k in zip(zs, gm)]).norm())
        for gm in _masks(ids)
    )
    assert float(reg.value_multi(zs)) == pytest.approx(0.3 * want, rel=1e-12)
    buf = io.BytesIO()
    torch.save(reg.spec(), buf)
    buf.seek(0)
    assert from_spec(torch.load(buf, weights_only=True), lam=0.3) == reg
    with pytest.raises(ValueError, match="value_multi"):
        reg.value(zs[0])


def test_non_finite_inputs():
    reg = CoupledGroupLasso(1.0, names=("a", "b"), dims=(1, 1), slice_groups=((0, 1), (1, 0)))
    a = torch.tensor([[float("nan"), 0.01]])
    b = torch.tensor([[0.01, 0.02]])  # column 1 of b is in a's NaN group
    for metrics in (None, [torch.ones(1, 2), torch.full((1, 2), 2.0)]):
        xa, xb = reg.prox_multi([a, b], 1.0, metrics)
        assert bool(xa[0, 0].isnan()) and bool(xb[0, 1].isnan())  # the whole NaN group is NaN
        assert xa[0, 1] == 0 and xb[0, 0] == 0  # the small group is zero
    inf = torch.tensor([[float("inf"), 0.01]])
    for metrics in (None, [torch.ones(1, 2), torch.full((1, 2), 2.0)]):
        xa, xb = reg.prox_multi([inf, b], 1.0, metrics)
        assert xa[0, 0] == float("inf") and xb[0, 1] == b[0, 1]  # unshrunk
    pin = [torch.tensor([[1.0, float("inf")]]), torch.ones(1, 2)]
    xa, xb = reg.prox_multi([torch.tensor([[0.1, 0.3]]), b], 1.0, pin)
    assert xa[0, 1] == 0.3  # the pinned coordinate is kept; the rest of its group: ½(x − z)² + w‖(0.3, x)‖
    x = float(xb[0, 0])
    assert x == pytest.approx(0.01 / (1 + math.sqrt(2) / math.hypot(0.3, x)), rel=1e-5)
    with pytest.raises(ValueError, match="metric must be strictly positive"):
        reg.prox_multi([a, b], 1.0, [torch.zeros(1, 2), torch.ones(1, 2)])


def test_refusals():
    reg = CoupledGroupLasso(1.0, names=("a", "b"), dims=(1, 1), slice_groups=((0, 1), (1, 0)))
    with pytest.raises(ValueError, match="needs all of them in one call"):
        reg.prox_multi([torch.ones(1, 2)], 1.0)
    with pytest.raises(ValueError, match="'b' must have 2 slices along dim 1"):
        reg.prox_multi([torch.ones(1, 2), torch.ones(2, 3)], 1.0)
    with pytest.raises(ValueError, match="no coupling yet"):
        CoupledGroupLasso(1.0).prox_multi([torch.ones(2, 2)], 1.0)
    with pytest.raises(ValueError, match="one entry per tensor"):
        CoupledGroupLasso(1.0, names=("a",), dims=(1, 1), slice_groups=((0,),))
    with pytest.raises(ValueError, match="dims must be 0 or 1"):
        CoupledGroupLasso(1.0, names=("a",), dims=(2,), slice_groups=((0,),))
    with pytest.raises(ValueError, match="weighting"):
        CoupledGroupLasso(1.0, names=("a",), dims=(1,), slice_groups=((0,),), weighting="x")


class _Res(nn.Module):
    """A residual MLP: the stream width 6 is read by b1, b2 and the head (coupled groups of 3 slices)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(4, 6)
        self.b1, self.b2, self.head = nn.Linear(6, 6), nn.Linear(6, 6), nn.Linear(6, 3)

    def forward(self, x):
        h = self.stem(x)
        h = h + torch.relu(self.b1(h))
        h = h + torch.relu(self.b2(h))
        return self.head(h)


def _manual_coupling(lam):
    ids = tuple(range(6))
    return CoupledGroupLasso(lam, names=("b1.weight", "b2.weight", "head.weight"), dims=(1, 1, 1),
                             slice_groups=(ids, ids, ids))  # fmt: skip


OPTIMIZERS = [  # (optimizer, λ that zeroes some channels in 8 steps)
    (lambda groups: ProxSGD(groups, lr=0.05, momentum=0.9), 0.5),
    (lambda groups: ProxGen(groups, lr=0.02), 1.0),
    (lambda groups: RMDA(groups, lr=0.05, momentum=1.0), 0.7),
    (lambda groups: RAMDA(groups, lr=0.05, momentum=1.0, implementation="eager"), 0.03),
]


def _batches(n):
    g = torch.Generator().manual_seed(7)
    return [(torch.randn(16, 4, generator=g), torch.randn(16, 3, generator=g)) for _ in range(n)]


def _train(net, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        nn.functional.mse_loss(net(x), y).backward()
        opt.step()


def _groups(net, reg):
    coupled = reg.param_group(net)
    rest = [(n, p) for n, p in net.named_parameters() if n not in reg.names]
    return [coupled, {"params": [p for _, p in rest], "param_names": [n for n, _ in rest]}]


@pytest.mark.parametrize(("make", "lam"), OPTIMIZERS, ids=["ProxSGD", "ProxGen", "RMDA", "RAMDA"])
def test_optimizers_zero_whole_groups_and_resume_bit_exact(make, lam):
    torch.manual_seed(0)
    net = _Res()
    opt = make(_groups(net, _manual_coupling(lam)))
    batches = _batches(8)
    _train(net, opt, batches[:4])
    buf = io.BytesIO()
    torch.save({"model": net.state_dict(), "opt": opt.state_dict()}, buf)
    _train(net, opt, batches[4:])
    # channel k of the stream: is each reader's column (b1, b2, head) entirely zero?
    readers = torch.stack([(w[:, :] == 0).all(0) for w in (net.b1.weight, net.b2.weight, net.head.weight)], 1)
    assert bool(readers.all(1).any())  # some channels removable...
    assert torch.equal(readers.any(1), readers.all(1))  # ...as whole coupled groups, never one reader only
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    torch.manual_seed(0)
    net2 = _Res()
    net2.load_state_dict(saved["model"])
    opt2 = make(_groups(net2, _manual_coupling(lam)))
    opt2.load_state_dict(saved["opt"])
    _train(net2, opt2, batches[4:])
    for a, b in zip(net.parameters(), net2.parameters()):
        assert torch.equal(a, b)


def test_proxsgd_step_is_the_prox_of_the_gradient_step():
    torch.manual_seed(1)
    net = _Res()
    reg = _manual_coupling(2.0)
    opt = ProxSGD(_groups(net, reg), lr=0.1)
    x, y = _batches(1)[0]
    nn.functional.mse_loss(net(x), y).backward()
    ws = [torch.add(p.detach(), p.grad, alpha=-0.1) for p in reg.param_group(net)["params"]]
    want = reg.prox_multi(ws, 0.1)
    opt.step()
    for p, w in zip(reg.param_group(net)["params"], want):
        assert torch.equal(p.detach(), w)
    assert 0 < int((net.head.weight == 0).all(0).sum()) < 6  # some channels zeroed, not all


def test_per_tensor_reference_loop_is_refused_at_construction():
    net = _Res()
    with pytest.raises(ValueError, match="param group 0: CoupledGroupLasso's groups span .* foreach=False"):
        RMDA(_groups(net, _manual_coupling(0.3)), lr=0.05, foreach=False)


def test_a_tensor_without_gradient_is_refused_before_any_change():
    net = _Res()
    opt = ProxSGD(_groups(net, _manual_coupling(0.3)), lr=0.05, momentum=0.9)
    x, y = _batches(1)[0]
    nn.functional.mse_loss(net(x), y).backward()
    opt.step()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    state = {
        id(p): {k: v.clone() for k, v in st.items() if isinstance(v, torch.Tensor)}
        for p, st in opt.state.items()
    }
    net.zero_grad(set_to_none=True)
    nn.functional.mse_loss(net(x), y).backward()
    net.head.weight.grad = None  # one tensor of the coupled group takes no part in this step
    with pytest.raises(ValueError, match="couples every tensor of param group 0.*no gradient at this step"):
        opt.step()
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())
    for p, st in opt.state.items():
        assert all(torch.equal(v, st[k]) for k, v in state[id(p)].items())


def test_from_model_couples_the_residual_stream():
    pytest.importorskip("torch_pruning")
    net = _Res()
    reg = CoupledGroupLasso.from_model(net, torch.zeros(1, 4), 0.1)
    assert reg.names == ("b1.weight", "b2.weight", "head.weight")
    assert reg.slice_groups[0] == reg.slice_groups[1] == reg.slice_groups[2]
    assert reg.num_groups == 6  # b1's and b2's outputs are added into the stream: its 6 channels
