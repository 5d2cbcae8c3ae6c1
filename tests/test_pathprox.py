"""PathProx (Yang et al., 2022): layer pairs, the optimizer step, layer-wise balancing and its callback."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lightning_prox.structure import PathProxPair, pathprox_pairs


# -- models of the authors' architectures (tiny) ---------------------------------------------------
def mlp6(d: int = 5, h: int = 7, out: int = 3) -> nn.Sequential:
    """MLP-6: 6 linear layers, ReLU between (pairs (1,2), (3,4), (5,fc))."""
    layers: list[nn.Module] = []
    for i in range(5):
        layers += [nn.Linear(d if i == 0 else h, h), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(h, out))


def factorized_mlp(d: int = 5, h: int = 6, out: int = 3) -> nn.Sequential:
    """First layer, then two factorized layers (bias-free first factor, no activation inside), fc."""
    return nn.Sequential(
        nn.Linear(d, h), nn.ReLU(),
        nn.Linear(h, h, bias=False), nn.Linear(h, h), nn.ReLU(),
        nn.Linear(h, h, bias=False), nn.Linear(h, h), nn.ReLU(),
        nn.Linear(h, out),
    )  # fmt: skip


def vgg_nobn(c: int = 3) -> nn.Sequential:
    """A BN-free VGG-style net: two blocks of two convs, pooling, flatten, one linear (an "other" layer)."""
    return nn.Sequential(
        nn.Conv2d(c, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(6 * 2 * 2, 3),
    )  # fmt: skip


def conv_flatten_linear() -> nn.Sequential:
    """Three convs and a linear: the second pair is conv → flatten → linear (block columns)."""
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 5, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(5, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Dropout(0.0), nn.Linear(3 * 2 * 2, 4),
    )  # fmt: skip


def prelu_avgpool() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1), nn.PReLU(), nn.AvgPool1d(2), nn.Conv1d(4, 5, 3, padding=1),
        nn.LeakyReLU(0.2), nn.Conv1d(5, 3, 1), nn.PReLU(3), nn.AdaptiveAvgPool1d(1), nn.Flatten(),
        nn.Linear(3, 2),
    )  # fmt: skip


class Block(nn.Module):
    """y = relu(x + c4(relu(c3(relu(c2(relu(c1(x)))))))): two pairs inside, the skip outside."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(c, 5, 3, padding=1), nn.Conv2d(5, 4, 3, padding=1)
        self.c3, self.c4 = nn.Conv2d(4, 6, 3, padding=1), nn.Conv2d(6, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c4(F.relu(self.c3(F.relu(self.c2(F.relu(self.c1(x)))))))
        return F.relu(x + y)


class ResNetNoNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 3, 3, padding=1)
        self.b1, self.b2 = Block(3), Block(3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.b2(self.b1(F.relu(self.stem(x))))
        return self.head(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def names(pairs: list[PathProxPair]) -> list[tuple[str, str, int, int]]:
    return [(p.w_name, p.v_name, p.block, p.chain) for p in pairs]


# -- 1. pairs -----------------------------------------------------------------------------------------
def test_pairs_mlp6_like_the_authors() -> None:
    assert names(pathprox_pairs(mlp6())) == [("0", "2", 1, 0), ("4", "6", 1, 0), ("8", "10", 1, 0)]


def test_pairs_factorized_mlp() -> None:
    # units between the second factor of a layer and the first factor of the next one
    assert names(pathprox_pairs(factorized_mlp())) == [("0", "2", 1, 0), ("3", "5", 1, 0), ("6", "8", 1, 0)]


def test_pairs_vgg_within_blocks_and_fc_left_out() -> None:
    net = vgg_nobn()
    pairs = pathprox_pairs(net)
    assert names(pairs) == [("0", "2", 1, 0), ("5", "7", 1, 0)]
    p = pairs[0]
    assert (
        p.w is net[0].weight and p.v is net[2].weight and p.w_bias is net[0].bias and p.v_bias is net[2].bias
    )


def test_pairs_conv_flatten_linear_block() -> None:
    assert names(pathprox_pairs(conv_flatten_linear())) == [("0", "2", 1, 0), ("5", "9", 4, 0)]


def test_pairs_prelu_avgpool_leaky() -> None:
    assert names(pathprox_pairs(prelu_avgpool())) == [("0", "3", 1, 0), ("5", "9", 1, 0)]


def test_pairs_residual_net_per_block_chains() -> None:
    # the stem and the last conv of each block feed a residual add: no pair crosses it
    got = names(pathprox_pairs(ResNetNoNorm()))
    assert got == [
        ("b1.c1", "b1.c2", 1, 0),
        ("b1.c3", "b1.c4", 1, 0),
        ("b2.c1", "b2.c2", 1, 1),
        ("b2.c3", "b2.c4", 1, 1),
    ]


@pytest.mark.parametrize(
    "op, label",
    [(nn.BatchNorm1d(6), "'1' (BatchNorm1d)"), (nn.GELU(), "'1' (GELU)"), (nn.ReLU6(), "'1' (ReLU6)"),
     (nn.LayerNorm(6), "'1' (LayerNorm)"), (nn.Tanh(), "'1' (Tanh)"), (nn.SiLU(), "'1' (SiLU)")],
)  # fmt: skip
def test_refused_op_inside_a_pair_is_named(op: nn.Module, label: str) -> None:
    net = nn.Sequential(nn.Linear(4, 6), op, nn.Linear(6, 3))
    with pytest.raises(
        ValueError, match=re.escape(label) + r" sits between '0' and '2'.*positively homogeneous"
    ):
        pathprox_pairs(net)


def test_refused_functional_gelu_is_named() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.gelu(self.a(x)))

    with pytest.raises(ValueError, match=r"'gelu' \(gelu\) sits between 'a' and 'b'"):
        pathprox_pairs(Net())


def test_bn_at_a_junction_is_allowed_and_splits_the_balancing_chain() -> None:
    net = nn.Sequential(
        nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(),
        nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2),
    )  # fmt: skip
    assert names(pathprox_pairs(net)) == [("0", "2", 1, 0), ("5", "7", 1, 1)]


def test_strict_false_pairs_around_refused_ops_and_warns() -> None:
    net = nn.Sequential(
        nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)
    )
    with pytest.raises(ValueError, match="'1' \\(GELU\\)"):
        pathprox_pairs(net)
    with pytest.warns(UserWarning, match="'1' \\(GELU\\)"):
        got = names(pathprox_pairs(net, strict=False))
    assert got == [("2", "4", 1, 0)]  # 0 is cut off; (2, 4) paired, 6 left over


def test_chain_enders_layer_called_twice_and_concat() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.shared, self.b = nn.Linear(3, 4), nn.Linear(4, 4), nn.Linear(8, 4)
            self.c, self.d = nn.Linear(4, 4), nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = self.shared(self.shared(F.relu(self.a(x))))  # called twice: no link through it
            h = self.b(torch.cat([h, h], 1))  # concatenation ends the chain
            return self.d(F.relu(self.c(F.relu(h))))

    assert names(pathprox_pairs(Net())) == [("b", "c", 1, 0)]


def test_grouped_and_transposed_convs_end_chains() -> None:
    grouped = nn.Sequential(
        nn.Conv2d(2, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 1, groups=2), nn.ReLU(), nn.Conv2d(4, 4, 1),
        nn.ReLU(), nn.Conv2d(4, 2, 1),
    )  # fmt: skip
    assert names(pathprox_pairs(grouped)) == [("4", "6", 1, 0)]
    transposed = nn.Sequential(
        nn.Conv2d(2, 4, 1), nn.ReLU(), nn.ConvTranspose2d(4, 4, 1), nn.ReLU(), nn.Conv2d(4, 3, 1),
        nn.ReLU(), nn.Conv2d(3, 2, 1),
    )  # fmt: skip
    assert names(pathprox_pairs(transposed)) == [("4", "6", 1, 0)]


def test_manual_pairs_validated_like_traced_ones() -> None:
    net = mlp6()
    assert names(pathprox_pairs(net, pairs=[("4", "6")])) == [("4", "6", 1, 0)]
    assert names(pathprox_pairs(net, pairs=[("8", "10"), ("2", "4")])) == [
        ("2", "4", 1, 0),
        ("8", "10", 1, 1),
    ]
    with pytest.raises(ValueError, match=r"\('0', '4'\) is not a PathProx pair"):
        pathprox_pairs(net, pairs=[("0", "4")])
    with pytest.raises(ValueError, match="disjoint: '2' is in two pairs"):
        pathprox_pairs(net, pairs=[("0", "2"), ("2", "4")])
    bn = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.Linear(6, 3))
    with pytest.raises(ValueError, match=r"'1' \(BatchNorm1d\) sits between '0' and '2'"):
        pathprox_pairs(bn, pairs=[("0", "2")])
    with pytest.raises(ValueError, match="must hold"):
        pathprox_pairs(net, pairs=["0"])  # type: ignore[list-item]


def test_no_pair_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="found no disjoint layer pairs in Linear"):
        pathprox_pairs(nn.Linear(3, 2))
    with (
        pytest.raises(ValueError, match="found no disjoint layer pairs in Sequential"),
        pytest.warns(UserWarning),
    ):
        pathprox_pairs(nn.Sequential(nn.Linear(3, 4), nn.Sigmoid(), nn.Linear(4, 2)), strict=False)


def test_untraceable_model_traces_children() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = mlp6()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow: torch.fx cannot trace this module
                return self.body(x)
            return -self.body(x)

    assert names(pathprox_pairs(Net()))[0] == ("body.0", "body.2", 1, 0)


# -- 2. the optimizer -----------------------------------------------------------------------------------
from lightning_prox.optim import PathProx  # noqa: E402
from lightning_prox.optim.pathprox import layerwise_balance_, normalize_and_prox_, path_norms  # noqa: E402


def mlp5() -> nn.Sequential:
    """5 linear layers: pairs (0,2), (4,6) and an "other" last layer with plain weight decay."""
    return nn.Sequential(
        nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 7), nn.ReLU(),
        nn.Linear(7, 4), nn.ReLU(), nn.Linear(4, 3),
    )  # fmt: skip


_INPUTS = {"mlp5": (4,), "mlp6": (5,), "factorized": (5,), "vgg": (3, 8, 8), "conv_linear": (2, 4, 4)}
_MODELS = {
    "mlp5": mlp5,
    "mlp6": mlp6,
    "factorized": factorized_mlp,
    "vgg": vgg_nobn,
    "conv_linear": conv_flatten_linear,
}


def _batch(name: str, seed: int, n: int = 6, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, *_INPUTS[name], generator=g, dtype=dtype)


def _reference_step(model, pairs, bufs, *, lr, lam, momentum, wd, nesterov=False):
    """An independent PathProx step written from the paper, unit by unit, on ``model``'s tensors."""
    named = dict(model.named_parameters())
    paired = {id(p.w) for p in pairs} | {id(p.v) for p in pairs}
    with torch.no_grad():
        for n, p in named.items():
            g = p.grad.clone()
            if p.ndim >= 2 and id(p) not in paired:
                g = g + wd * p
            if momentum:
                if n not in bufs:
                    bufs[n] = g.clone()
                else:
                    bufs[n] = momentum * bufs[n] + g
                g = g + momentum * bufs[n] if nesterov else bufs[n]
            p -= lr * g
        tau = lam * lr
        for pair in pairs:
            W, b, V = pair.w, pair.w_bias, pair.v
            for k in range(W.shape[0]):
                n_k = W[k].norm()
                if n_k > 0:
                    W[k] /= n_k
                    if b is not None:
                        b[k] /= n_k
                if V.ndim == 2:
                    cols = V[:, k * pair.block : (k + 1) * pair.block]
                else:
                    cols = V[:, k]
                m = cols.norm()
                if m <= tau:
                    cols.zero_()
                else:
                    cols *= 1 - tau / m


@pytest.mark.parametrize("arch", list(_MODELS))
@pytest.mark.parametrize("momentum, nesterov", [(0.0, False), (0.9, False), (0.9, True)])
def test_steps_equal_an_independent_reference(arch: str, momentum: float, nesterov: bool) -> None:
    torch.manual_seed(1)
    model = _MODELS[arch]().double()
    ref = _MODELS[arch]().double()
    ref.load_state_dict(model.state_dict())
    lr, wd = 0.3, 0.05
    cols = torch.cat(
        [
            torch.linalg.vector_norm(p.v.reshape(p.v.shape[0], p.w.shape[0], -1), dim=(0, 2))
            for p in pathprox_pairs(model)
        ]
    ).detach()
    lam = float(cols.median()) / lr  # τ = λ·γ at the median unit: both branches of the prox are taken
    opt = PathProx(
        model.parameters(),
        lr=lr,
        lam=lam,
        momentum=momentum,
        nesterov=nesterov,
        pairs=model,
        other_weight_decay=wd,
    )
    ref_pairs, bufs = pathprox_pairs(ref), {}
    zeroed = 0
    for step in range(3):
        x = _batch(arch, step)
        for net in (model, ref):
            net.zero_grad()
            net(x).square().mean().backward()
        opt.step()
        _reference_step(ref, ref_pairs, bufs, lr=lr, lam=lam, momentum=momentum, wd=wd, nesterov=nesterov)
        for (n, a), b in zip(model.named_parameters(), ref.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14, msg=f"{arch} step {step}: {n}")
        zeroed += sum(
            int((p.v.reshape(p.v.shape[0], p.w.shape[0], -1) == 0).all(2).all(0).sum()) for p in opt.pairs
        )
    assert zeroed > 0, "the threshold branch must be exercised"


def test_units_at_or_below_the_threshold_are_exactly_zero() -> None:
    net = nn.Sequential(nn.Linear(2, 4), nn.ReLU(), nn.Linear(4, 2))
    lr, lam = 0.5, 0.25  # τ = 0.125, exact in binary
    with torch.no_grad():
        net[2].weight.copy_(torch.tensor([[0.05, 0.125, 0.3, -0.0], [0.05, 0.0, -0.4, 1e-9]]))
    opt = PathProx(net.parameters(), lr=lr, lam=lam, pairs=net)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    v = net[2].weight.detach()
    assert (v[:, [0, 1, 3]] == 0).all()  # ‖v_k‖ = 0.0707, 0.125 (= τ), 1e-9
    torch.testing.assert_close(v[:, 2], torch.tensor([0.3, -0.4]) * (1 - 0.125 / 0.5))
    torch.testing.assert_close(torch.linalg.vector_norm(net[0].weight.detach(), dim=1), torch.ones(4))


def test_zero_norm_unit_left_alone_and_nan_stays_nan() -> None:
    net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    with torch.no_grad():
        net[0].weight[1] = 0.0
        net[0].bias.copy_(torch.tensor([0.5, 0.7, -0.2]))
        net[2].weight.copy_(torch.tensor([[1.0, 2.0, float("nan")], [1.0, 2.0, 3.0]]))
    opt = PathProx(net.parameters(), lr=0.1, lam=0.1, pairs=net, check_finite=False)
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert (net[0].weight[1] == 0).all() and net[0].bias[1].item() == pytest.approx(0.7)
    assert torch.isnan(net[2].weight[0, 2]) and torch.isnan(net[2].weight[1, 2])  # never an exact zero
    assert torch.isfinite(net[2].weight[:, :2]).all()


def test_order_sgd_then_hooks_then_normalize_and_prox() -> None:
    torch.manual_seed(0)
    net, twin = mlp5(), mlp5()
    twin.load_state_dict(net.state_dict())
    opt = PathProx(net.parameters(), lr=0.1, lam=0.5, pairs=net)
    seen = []
    opt.register_pre_prox_hook(lambda o: seen.append([p.detach().clone() for p in net.parameters()]))
    x = torch.randn(5, 4)
    for m in (net, twin):
        m(x).sum().backward()
    opt.step()
    sgd = torch.optim.SGD(twin.parameters(), lr=0.1)
    twin[8].weight.grad += 0.5 * twin[8].weight  # the other weight's decay (ζ = λ)
    sgd.step()
    for a, b in zip(seen[0], twin.parameters()):
        torch.testing.assert_close(a, b)  # the hook saw the SGD step and no prox yet
    normalize_and_prox_(pathprox_pairs(twin), [0.05, 0.05])
    for a, b in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b)


def test_balancing_flag_balances_before_the_prox() -> None:
    torch.manual_seed(0)
    net, twin = mlp6().double(), mlp6().double()
    twin.load_state_dict(net.state_dict())
    opt = PathProx(net.parameters(), lr=0.1, lam=0.3, pairs=net, balancing=True)
    x = _batch("mlp6", 0)
    for m in (net, twin):
        m(x).square().mean().backward()
    opt.step()
    pairs = pathprox_pairs(twin)
    with torch.no_grad():
        for p in twin.parameters():
            p -= 0.1 * p.grad
    layerwise_balance_(pairs)
    normalize_and_prox_(pairs, [0.03] * 3)
    for a, b in zip(net.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_path_norms_and_penalty() -> None:
    torch.manual_seed(0)
    net = mlp5()
    opt = PathProx(net.parameters(), lr=0.1, lam=0.2, pairs=net, other_weight_decay=0.3)
    expected = [
        (net[i].weight.double().norm(dim=1) * net[j].weight.double().norm(dim=0)).sum()
        for i, j in ((0, 2), (4, 6))
    ]
    got = opt.path_norms()
    torch.testing.assert_close(torch.stack(got), torch.stack(expected))
    pen = 0.2 * sum(expected) + 0.15 * net[8].weight.double().square().sum()
    torch.testing.assert_close(opt.penalty(), pen.detach())


def _train(model, opt, steps, start=0, arch="mlp5"):
    for s in range(start, start + steps):
        opt.zero_grad()
        model(_batch(arch, s, dtype=torch.float32)).square().mean().backward()
        opt.step()


def test_resume_is_bit_exact_through_weights_only_state_dicts(tmp_path) -> None:
    def make():
        torch.manual_seed(3)
        m = mlp5()
        return m, PathProx(m.parameters(), lr=0.05, lam=0.1, momentum=0.9, pairs=m, balancing=True)

    straight, opt = make()
    _train(straight, opt, 8)
    model, opt = make()
    _train(model, opt, 4)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, tmp_path / "ckpt.pt")
    ckpt = torch.load(tmp_path / "ckpt.pt", weights_only=True)
    resumed, opt2 = make()
    resumed.load_state_dict(ckpt["model"])
    opt2.load_state_dict(ckpt["opt"])
    _train(resumed, opt2, 4, start=4)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)
    assert opt2.param_groups[0]["regularizer"] == {"name": "PathNorm"}


def test_groups_carry_plain_markers_and_scheduled_lam_is_read() -> None:
    net = mlp5()
    opt = PathProx(net.parameters(), lr=0.5, lam=0.1, pairs=net)
    g = opt.param_groups[0]
    assert g["regularizer"] == {"name": "PathNorm"} and g["lam"] == 0.1
    g["lam"] = 0.0  # a scheduler switches the prox off: SGD (and ζ = λ = 0) only
    before = [p.detach().clone() for p in net.parameters()]
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    for a, b in zip(before, net.parameters()):
        torch.testing.assert_close(a - 0.5, b.detach())
    assert opt.prox_stats()[0]["regularizer"] == "PathNorm"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(lam=-1.0), "lam must be a finite number >= 0, got -1.0"),
        (dict(lam=float("inf")), "lam must be a finite number >= 0"),
        (dict(lr=-0.1), "lr must be a finite number >= 0, got -0.1"),
        (dict(momentum=-0.5), "momentum must be a finite number >= 0, got -0.5"),
        (dict(nesterov=True), "nesterov=True needs momentum > 0"),
        (dict(other_weight_decay=-1.0), "other_weight_decay must be None .* got -1.0"),
        (dict(pairs=None), "PathProx needs pairs="),
        (dict(pairs=[("0", "2")]), "pairs must be an nn.Module or a non-empty list of"),
        (dict(balancing=1), "balancing must be True or False"),
    ],
)
def test_bad_hyperparameters_raise(kwargs, match) -> None:
    net = mlp5()
    args = dict(lr=0.1, lam=0.1, pairs=net)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        PathProx(net.parameters(), **args)


def test_pair_tensors_must_be_params_and_pairs_disjoint() -> None:
    net = mlp5()
    with pytest.raises(ValueError, match=r"the v tensor of the pair \('4', '6'\) is not among"):
        PathProx([p for n, p in net.named_parameters() if not n.startswith("6.")], lr=0.1, lam=0.1, pairs=net)
    pairs = pathprox_pairs(net)
    with pytest.raises(ValueError, match="disjoint"):
        PathProx(net.parameters(), lr=0.1, lam=0.1, pairs=[pairs[0], pairs[0]])
    from lightning_prox.regularizers import L1

    with pytest.raises(ValueError, match="PathProx's penalty is the path norm; set lam on PathProx"):
        PathProx([{"params": list(net.parameters()), "regularizer": L1(0.1)}], lr=0.1, lam=0.1, pairs=net)


# -- 3. layer-wise balancing --------------------------------------------------------------------------
_BAL_INPUTS = {**_INPUTS, "prelu": (2, 8), "resnet": (2, 4, 4)}
_BAL_MODELS = {**_MODELS, "prelu": prelu_avgpool, "resnet": ResNetNoNorm}


def _unbalanced(arch: str, dtype: torch.dtype) -> nn.Module:
    """The model with every layer's weights and biases scaled by a random factor in [0.2, 5]."""
    torch.manual_seed(7)
    net = _BAL_MODELS[arch]().to(dtype)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                s = float(torch.empty(()).uniform_(-1.6, 1.6, generator=g).exp())
                m.weight.mul_(s)
                if m.bias is not None:
                    m.bias.uniform_(-0.5, 0.5, generator=g)
    return net


@pytest.mark.parametrize("arch", list(_BAL_MODELS))
@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-12), (torch.float32, 2e-6)])
def test_balancing_preserves_the_function_and_equalizes_each_chain(arch, dtype, rtol) -> None:
    net = _unbalanced(arch, dtype).eval()
    pairs = pathprox_pairs(net)
    x = torch.randn(7, *_BAL_INPUTS[arch], generator=torch.Generator().manual_seed(0), dtype=dtype)
    before = [float(p) for p in path_norms(pairs)]
    w_before = [p.w.detach().clone() for p in pairs]
    with torch.no_grad():
        y = net(x)
    scales = layerwise_balance_(pairs)
    with torch.no_grad():
        y2 = net(x)
    err = float((y2 - y).abs().max() / y.abs().max())
    assert err <= rtol, f"{arch}: output changed by {err:.2e} relative"
    after = [float(p) for p in path_norms(pairs)]
    for chain in {p.chain for p in pairs}:
        idx = [i for i, p in enumerate(pairs) if p.chain == chain]
        target = torch.tensor([before[i] for i in idx], dtype=torch.float64).log().mean().exp()
        for i in idx:
            assert after[i] == pytest.approx(float(target), rel=10 * rtol)
        assert scales[idx[-1]] == 1.0  # the chain's output layer is untouched exactly
    for p, w in zip(pairs, w_before):
        assert torch.equal(p.w, w)  # unit norms of the w layers are kept
    if arch != "resnet":
        assert max(abs(s - 1.0) for s in scales) > 1e-3  # the balancing had work to do


def test_residual_net_balances_per_chain_not_globally() -> None:
    net = _unbalanced("resnet", torch.float64)
    pairs = pathprox_pairs(net)
    assert [p.chain for p in pairs] == [0, 0, 1, 1]
    x = torch.randn(3, 2, 4, 4, dtype=torch.float64)
    y = net(x)
    layerwise_balance_(pairs)
    torch.testing.assert_close(net(x), y, rtol=1e-12, atol=1e-12)
    # a single chain over the residual add (the authors' global mean) changes the function
    net2 = _unbalanced("resnet", torch.float64)
    glued = [p._replace(chain=0) for p in pathprox_pairs(net2)]
    with torch.no_grad():
        y2 = net2(x)
        layerwise_balance_(glued)
        assert float((net2(x) - y2).abs().max() / y2.abs().max()) > 1e-3


def test_balancing_bias_free_layers_and_dead_chains() -> None:
    net = nn.Sequential(
        nn.Linear(3, 4, bias=False), nn.ReLU(), nn.Linear(4, 4, bias=False), nn.ReLU(),
        nn.Linear(4, 4, bias=False), nn.ReLU(), nn.Linear(4, 2),
    ).double()  # fmt: skip
    with torch.no_grad():
        net[0].weight.mul_(5.0)
    pairs = pathprox_pairs(net)
    x = torch.randn(5, 3, dtype=torch.float64)
    y = net(x)
    layerwise_balance_(pairs)  # nothing to compensate in a missing bias: still exact
    torch.testing.assert_close(net(x), y, rtol=1e-12, atol=1e-13)
    a, b = path_norms(pairs)
    assert float(a) == pytest.approx(float(b), rel=1e-12)
    with torch.no_grad():
        net[2].weight.zero_()  # P_1 = 0: the chain is skipped, nothing changes (no division by 0)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert layerwise_balance_(pairs) == [1.0, 1.0]
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k])


# -- 3b. the callback ---------------------------------------------------------------------------------
import lightning.pytorch as pl  # noqa: E402
from torch.utils.data import DataLoader, TensorDataset  # noqa: E402

from lightning_prox.callbacks import PathProxBalancing  # noqa: E402


class Regression(pl.LightningModule):
    def __init__(
        self, momentum: float = 0.0, regularize_bias: bool = False, optimizer: str = "pathprox"
    ) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.net = mlp5()
        self.momentum, self.regularize_bias, self.optimizer = momentum, regularize_bias, optimizer

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = F.mse_loss(self.net(x), y)
        return loss

    def configure_optimizers(self):
        if self.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=0.05)
        return PathProx(
            self.parameters(), lr=0.05, lam=0.05, momentum=self.momentum, pairs=self.net,
            regularize_bias=self.regularize_bias,
        )  # fmt: skip


def _data(n: int = 48) -> DataLoader:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(n, 4, generator=g)
    return DataLoader(TensorDataset(x, torch.randn(n, 3, generator=g)), batch_size=8)


def _trainer(tmp_path, cb, epochs, **kw) -> pl.Trainer:
    return pl.Trainer(
        default_root_dir=tmp_path, max_epochs=epochs, callbacks=[cb], accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, **kw,
    )  # fmt: skip


def test_callback_fit_equals_the_manual_loop_with_the_schedule(tmp_path) -> None:
    cb = PathProxBalancing(every_n_steps=2, start_step=1)
    model = Regression(momentum=0.9)
    _trainer(tmp_path, cb, 2, enable_checkpointing=False).fit(model, _data())
    assert cb.last_scale_max is not None and cb.last_scale_max >= 0
    manual = Regression(momentum=0.9)
    opt = manual.configure_optimizers()
    step = 0
    for _ in range(2):
        for x, y in _data():
            opt.zero_grad()
            F.mse_loss(manual.net(x), y).backward()
            opt.balancing = cb.active(step)
            opt.step()
            step += 1
    for a, b in zip(model.parameters(), manual.parameters()):
        assert torch.equal(a, b)
    unbalanced = Regression(momentum=0.9)
    opt = unbalanced.configure_optimizers()
    for _ in range(2):
        for x, y in _data():
            opt.zero_grad()
            F.mse_loss(unbalanced.net(x), y).backward()
            opt.step()
    assert not all(torch.equal(a, b) for a, b in zip(model.parameters(), unbalanced.parameters()))


def test_callback_resume_is_bit_exact(tmp_path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    straight = Regression(momentum=0.9)
    _trainer(tmp_path / "a", PathProxBalancing(every_n_steps=3), 4, enable_checkpointing=False).fit(
        straight, _data()
    )
    first = Regression(momentum=0.9)
    ck = ModelCheckpoint(dirpath=tmp_path / "ck", save_last=True)
    trainer = pl.Trainer(
        default_root_dir=tmp_path / "b", max_epochs=2, callbacks=[PathProxBalancing(every_n_steps=3), ck],
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(first, _data())
    ckpt = torch.load(tmp_path / "ck" / "last.ckpt", weights_only=True)
    assert any("PathProxBalancing" in k for k in ckpt["callbacks"])
    resumed = Regression(momentum=0.9)
    _trainer(tmp_path / "c", PathProxBalancing(every_n_steps=3), 4, enable_checkpointing=False).fit(
        resumed, _data(), ckpt_path=str(tmp_path / "ck" / "last.ckpt")
    )
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_callback_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="every_n_steps must be an int >= 1, got 0"):
        PathProxBalancing(every_n_steps=0)
    with pytest.raises(ValueError, match="start_step must be an int >= 0, got -1"):
        PathProxBalancing(start_step=-1)
    with pytest.raises(
        ValueError, match=r"needs a lightning_prox.optim.PathProx optimizer; the Trainer has \['SGD'\]"
    ):
        _trainer(tmp_path, PathProxBalancing(), 1, enable_checkpointing=False).fit(
            Regression(optimizer="sgd"), _data()
        )
    with pytest.raises(
        ValueError, match="regularize_bias=True; balancing would change the biases' weight decay"
    ):
        _trainer(tmp_path, PathProxBalancing(), 1, enable_checkpointing=False).fit(
            Regression(regularize_bias=True), _data()
        )


# -- 4. metrics: SparsityMonitor, RegularizationScheduler, PathNormMonitor ------------------------------
def test_sparsity_monitor_counts_pathprox_units_and_scheduler_writes_lam(tmp_path) -> None:
    from lightning_prox.callbacks import RegularizationScheduler, SparsityMonitor
    from lightning_prox.structure import unit_stats

    class Strong(Regression):
        def configure_optimizers(self):
            return PathProx(self.parameters(), lr=0.1, lam=1.5, pairs=self.net)

    model = Strong()
    mon = SparsityMonitor(table=False, histograms=False, image=False, every_n_steps=1)
    sched = RegularizationScheduler("step", interval="epoch", milestones=[1], gamma=0.5)
    trainer = pl.Trainer(
        default_root_dir=tmp_path, max_epochs=2, callbacks=[mon, sched], accelerator="cpu", logger=False,
        enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
    )  # fmt: skip
    trainer.fit(model, _data())
    opt = trainer.optimizers[0]
    assert opt.param_groups[0]["lam"] == pytest.approx(0.75)  # λ₀·0.5 after the milestone
    assert [(p.name, p.next_name) for p in mon._pairs] == [
        ("net.0.weight", "net.2.weight"),
        ("net.4.weight", "net.6.weight"),
    ]
    totals, _ = mon.compute()
    units = sum(int(unit_stats(p.w, p.v)["units"]) for p in opt.pairs)
    active = sum(int(unit_stats(p.w, p.v)["active_units"]) for p in opt.pairs)
    assert units == 13 and active < units  # λ·γ = 0.15 prunes units of the two pairs
    assert totals["active_units"] == pytest.approx(active / units)
    assert float(trainer.callback_metrics["sparsity/active_units"]) == pytest.approx(active / units)


def test_path_norm_monitor_pathprox_and_weight_decay_baseline(tmp_path) -> None:
    from lightning_prox.callbacks import PathNormMonitor

    model = Regression()
    mon = PathNormMonitor(every_n_steps=1)
    _trainer(tmp_path, mon, 1, enable_checkpointing=False).fit(model, _data())
    opt = model.trainer.optimizers[0]
    m = model.trainer.callback_metrics
    assert float(m["pathprox/path_norm"]) == pytest.approx(float(sum(opt.path_norms())), rel=1e-6)
    loss = float(mon.compute(0.0)["pathprox/wd_objective"])
    assert loss == pytest.approx(float(opt.penalty()), rel=1e-6)

    sgd = Regression(optimizer="sgd")
    mon = PathNormMonitor(lam=0.1, every_n_steps=1)
    _trainer(tmp_path, mon, 1, enable_checkpointing=False).fit(sgd, _data())
    got = mon.compute(0.0)
    net = sgd.net
    pn = sum(
        float((net[i].weight.double().norm(dim=1) * net[j].weight.double().norm(dim=0)).sum())
        for i, j in ((0, 2), (4, 6))
    )
    assert got["pathprox/path_norm"] == pytest.approx(pn, rel=1e-9)
    sq = {i: float(net[i].weight.double().square().sum()) for i in (0, 2, 4, 6, 8)}
    assert got["pathprox/wd_objective"] == pytest.approx(0.1 * pn + 0.05 * sq[8], rel=1e-9)
    assert got["pathprox/wd_objective_raw"] == pytest.approx(0.05 * sum(sq.values()), rel=1e-9)
    assert got["pathprox/wd_objective"] < got["pathprox/wd_objective_raw"]  # AM-GM: rebalancing lowers it
    with pytest.raises(ValueError, match="give lam="):
        _trainer(tmp_path, PathNormMonitor(), 1, enable_checkpointing=False).fit(
            Regression(optimizer="sgd"), _data()
        )


def test_functional_view_flatten_and_pooling_over_features() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.fc, self.out = (
                nn.Conv2d(2, 3, 3, padding=1),
                nn.Linear(3 * 4 * 4, 5),
                nn.Linear(5, 2),
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = F.relu(self.conv(x))
            h = self.fc(h.view(h.size(0), -1))
            return self.out(h)

    assert names(pathprox_pairs(Net())) == [("conv", "fc", 16, 0)]
    # a pooling layer on a linear layer's output pools over features: no unit survives it
    pooled = nn.Sequential(
        nn.Linear(3, 8), nn.ReLU(), nn.AdaptiveMaxPool1d(8), nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)
    )
    assert names(pathprox_pairs(pooled)) == [("3", "5", 1, 0)]
    with pytest.raises(ValueError, match="no disjoint layer pairs"):  # flatten(x, 0) is not channel-major
        pathprox_pairs(nn.Sequential(nn.Conv2d(1, 2, 1), nn.ReLU(), nn.Flatten(0), nn.Linear(2, 1)))


# -- 5. the paper's models -------------------------------------------------------------------------------
def test_paper_models_pairs() -> None:
    from lightning_prox.models import FactorizedMLP, VGG19NoBN

    net = FactorizedMLP(64, 10, hidden=12, depth=3)
    assert names(pathprox_pairs(net)) == [
        ("net.1", "net.3", 1, 0),
        ("net.4", "net.6", 1, 0),
        ("net.7", "net.9", 1, 0),
    ]
    vgg = VGG19NoBN()
    convs = [n for n, m in vgg.named_modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 16
    got = names(pathprox_pairs(vgg))
    assert got == [
        (convs[i], convs[i + 1], 1, 0) for i in range(0, 16, 2)
    ]  # within blocks; the FC is "other"
    assert sum(p.numel() for p in vgg.parameters()) == 20_024_384 + 5_130  # VGG19 convs + Linear(512, 10)


def test_groups_without_regularizer_get_the_marker_and_their_own_lam() -> None:
    net = mlp5()
    weights = [p for p in net.parameters() if p.ndim >= 2]
    biases = [p for p in net.parameters() if p.ndim < 2]
    opt = PathProx(
        [{"params": weights, "regularizer": None, "lam": 0.2}, {"params": biases}],
        lr=0.1,
        lam=0.05,
        pairs=net,
    )
    assert [(g["regularizer"], g["lam"]) for g in opt.param_groups] == [
        ({"name": "PathNorm"}, 0.2),
        ({"name": "PathNorm"}, 0.05),
    ]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    v = net[2].weight.detach().clone()
    opt.step()
    # τ = λ·γ of the group holding v: 0.2·0.1
    norms = torch.linalg.vector_norm(v, dim=0)
    expected = v * (1 - 0.02 / norms).clamp_min(0)
    torch.testing.assert_close(net[2].weight.detach(), expected)


def test_balancing_skips_chains_whose_scales_overflow_the_dtype() -> None:
    net = mlp6()
    with torch.no_grad():
        net[2].weight.mul_(1e-30)  # P = (~1e-30, ~1, ~1): c_1 = P̄/P_1 ~ 1e20, past float32's sqrt(max)
        net[2].weight[:, 0] = 0.0  # a dead unit: 0·inf must not appear
    pairs = pathprox_pairs(net)
    assert 0 < float(path_norms(pairs)[0]) < 1e-28  # float64 norms: no underflow to 0
    state = {k: v.clone() for k, v in net.state_dict().items()}
    assert layerwise_balance_(pairs) == [1.0, 1.0, 1.0]
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k])
    net = net.double()
    x = torch.randn(4, 5, dtype=torch.float64)
    y = net(x).detach()
    pairs = pathprox_pairs(net)
    layerwise_balance_(pairs)  # float64 has the range: balanced, function kept
    torch.testing.assert_close(net(x).detach(), y, rtol=1e-10, atol=1e-12)
    p = [float(t) for t in path_norms(pairs)]
    assert p[0] == pytest.approx(p[1], rel=1e-9) and p[1] == pytest.approx(p[2], rel=1e-9)


def test_proxmixin_passes_the_model_as_pairs_and_refuses_a_regularizer(tmp_path) -> None:
    import functools

    from lightning_prox.data import DigitsDataModule
    from lightning_prox.models import ImageClassifier
    from lightning_prox.regularizers import L1

    model = ImageClassifier(
        "mlp", num_classes=10, in_chans=1, img_size=8, hidden=(16, 16, 16),
        optimizer=functools.partial(PathProx, lr=0.1, lam=0.05), sparsity_table=False,
    )  # fmt: skip
    dm = DigitsDataModule(batch_size=64, max_samples=256)
    trainer = pl.Trainer(
        max_epochs=1, callbacks=[PathProxBalancing()], accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, dm)
    opt = trainer.optimizers[0]
    assert [(p.w_name, p.v_name) for p in opt.pairs] == [
        ("net.net.1", "net.net.3"),
        ("net.net.5", "net.net.7"),
    ]
    torch.testing.assert_close(torch.linalg.vector_norm(opt.pairs[0].w.detach(), dim=1), torch.ones(16))
    with pytest.raises(ValueError, match=r"PathProx .*regularizer L1\(lam=0.001\) would be ignored"):
        ImageClassifier(
            "mlp", num_classes=10, in_chans=1, img_size=8, hidden=(16,),
            optimizer=functools.partial(PathProx, lr=0.1, lam=0.05), regularizer=L1(1e-3),
        )  # fmt: skip


def test_channels_last_weights_are_updated_in_place() -> None:
    torch.manual_seed(0)
    net, ref = conv_flatten_linear().double(), conv_flatten_linear().double()
    ref.load_state_dict(net.state_dict())
    net = net.to(memory_format=torch.channels_last)
    assert not net[2].weight.is_contiguous()
    opt = PathProx(net.parameters(), lr=0.3, lam=0.5, pairs=net)
    ref_opt = PathProx(ref.parameters(), lr=0.3, lam=0.5, pairs=ref)
    x = _batch("conv_linear", 0)
    for m, o in ((net, opt), (ref, ref_opt)):
        m(x).square().mean().backward()
        o.step()
    for a, b in zip(net.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(
        torch.linalg.vector_norm(net[0].weight.detach().reshape(4, -1), dim=1),
        torch.ones(4, dtype=torch.float64),
    )


def test_functional_batch_norm_with_buffers_is_refused_by_name() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 2)
            self.register_buffer("mean", torch.zeros(4))
            self.register_buffer("var", torch.ones(4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.b(F.relu(F.batch_norm(self.a(x), self.mean, self.var)))

    with pytest.raises(ValueError, match=r"'batch_norm' \(batch_norm\) sits between 'a' and 'b'"):
        pathprox_pairs(Net())


# -- 6. the weight-decay baseline: SquaredL2 -------------------------------------------------------------
def test_squared_l2_prox_is_the_argmin_and_value_is_half_lam_norm_squared() -> None:
    from lightning_prox.regularizers import SquaredL2, from_spec

    reg = SquaredL2(0.7)
    z = torch.tensor([1.5, -0.3, 0.0, 2.0], dtype=torch.float64)
    metric = torch.tensor([1.0, 2.0, 0.5, float("inf")], dtype=torch.float64)
    step = 0.4
    got = reg.prox(z, step, metric)
    grid = torch.linspace(-3, 3, 600001, dtype=torch.float64)
    for i in range(4):
        if torch.isinf(metric[i]):
            assert got[i] == z[i]  # an infinite metric pins the coordinate
            continue
        obj = step * 0.35 * grid**2 + 0.5 * metric[i] * (grid - z[i]) ** 2
        assert float(got[i]) == pytest.approx(float(grid[obj.argmin()]), abs=2e-5)
    torch.testing.assert_close(reg.prox(z, step), z / (1 + step * 0.7))
    assert float(reg.value(z)) == pytest.approx(0.35 * float(z.square().sum()))
    assert (
        from_spec(reg.spec(), 0.7) == reg and torch.isnan(reg.prox(torch.tensor([float("nan")]), 1.0)).all()
    )


def test_squared_l2_subgradient_mode_is_the_authors_weight_decay_loss_term(tmp_path) -> None:
    import functools

    from lightning_prox.data import DigitsDataModule
    from lightning_prox.models import ImageClassifier
    from lightning_prox.regularizers import SquaredL2

    lam, lr = 0.01, 0.1

    def make():
        torch.manual_seed(0)
        return ImageClassifier(
            "mlp", num_classes=10, in_chans=1, img_size=8, hidden=(8, 8, 8), sparsity_table=False,
            optimizer=functools.partial(torch.optim.SGD, lr=lr), regularizer=SquaredL2(lam),
            penalty_mode="subgradient",
        )  # fmt: skip

    model, ref = make(), make()
    dm = DigitsDataModule(batch_size=32, max_samples=64, shuffle=False, val_fraction=0.0, test_fraction=0.0)
    trainer = pl.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, dm)
    dm.setup("fit")
    weights = [p for n, p in ref.named_parameters() if n.endswith("weight")]
    assert len(weights) == 4
    sgd = torch.optim.SGD(ref.parameters(), lr=lr)
    for x, y in dm.train_dataloader():
        sgd.zero_grad()
        loss = F.cross_entropy(ref(x), y) + 0.5 * lam * sum(
            w.square().sum() for w in weights
        )  # biases excluded
        loss.backward()
        sgd.step()
    for (n, a), b in zip(model.named_parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6, msg=n)


def test_mixin_with_pathprox_and_a_regularizer_says_pathprox_takes_none():
    import functools

    from lightning_prox.models import ImageClassifier
    from lightning_prox.optim import PathProx
    from lightning_prox.regularizers import L1

    with pytest.raises(
        ValueError,
        match=r"PathProx applies its own path-norm prox .* set the strength as PathProx\(lam=\.\.\.\)",
    ):
        ImageClassifier(
            "mlp", hidden=(16,), optimizer=functools.partial(PathProx, lr=0.1, lam=1e-3), regularizer=L1(1e-3)
        )


# -- the multi-tensor prox --------------------------------------------------------------------------
def _mixed_mlp() -> nn.Sequential:
    """mlp5 with its first pair in float64 and the rest in float32 (two dtype buckets)."""
    net = mlp5()
    net[0].double()
    net[2].double()
    return net


_PROX_MODELS = {
    "mlp": (mlp6, torch.float32),
    "conv": (vgg_nobn, torch.float32),
    "conv_linear": (conv_flatten_linear, torch.float32),
    "conv_linear64": (conv_flatten_linear, torch.float64),
    "mixed32_64": (_mixed_mlp, None),
    "float16": (conv_flatten_linear, torch.float16),
    "bfloat16": (mlp6, torch.bfloat16),
}


def _random_pairs(arch: str, seed: int) -> tuple[nn.Module, list[PathProxPair], float]:
    """A model of ``arch`` with random weights and biases, its pairs, and τ between two unit norms.

    One column of every pair's v is set to ‖v_k‖ = τ exactly (must become exactly zero) and one
    row of w to zero (must be left alone)."""
    build, dtype = _PROX_MODELS[arch]
    torch.manual_seed(seed)
    net = build() if dtype is None else build().to(dtype)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, dtype=torch.float64) * 0.7)
    pairs = pathprox_pairs(net)
    norms = torch.cat([_ref_unit_norms(p)[1] for p in pairs]).sort().values
    mid = len(norms) // 2
    tau = float((norms[mid] + norms[mid + 1]) / 2)
    tau = float(torch.tensor(tau, dtype=torch.float16))  # exact in every dtype
    with torch.no_grad():
        for p in pairs:
            col = _ref_units(p, p.v)[1]
            col.zero_()
            col[(0,) * col.ndim] = tau
            p.w[0].zero_()
    return net, pairs, tau


def _ref_units(p: PathProxPair, t: torch.Tensor) -> list[torch.Tensor]:
    """Unit k's slice of ``t`` (``w``: row/filter k; ``v``: its input column(s)), as views."""
    if t is p.w:
        return list(t.unbind(0))
    if t.ndim == 2:
        return [t[:, k * p.block : (k + 1) * p.block] for k in range(p.w.shape[0])]
    return [t[:, k] for k in range(p.w.shape[0])]


def _ref_unit_norms(p: PathProxPair) -> tuple[torch.Tensor, torch.Tensor]:
    return (
        torch.stack([u.double().norm() for u in _ref_units(p, p.w)]).detach(),
        torch.stack([u.double().norm() for u in _ref_units(p, p.v)]).detach(),
    )


def _reference_prox(
    pairs: list[PathProxPair], tau: float
) -> tuple[list[list[torch.Tensor | None]], list[torch.Tensor]]:
    """Expected (w, w_bias, v, v_bias) of every pair in float64, unit by unit from Lemma 4.3, and
    the expected exact-zero columns."""
    out, zeros = [], []
    for p in pairs:
        w, v = p.w.detach().double().clone(), p.v.detach().double().clone()
        b = None if p.w_bias is None else p.w_bias.detach().double().clone()
        q = p._replace(w=w, v=v, w_bias=b)
        for k, (wk, vk) in enumerate(zip(_ref_units(q, w), _ref_units(q, v))):
            n = wk.norm()
            if n > 0:
                wk /= n
                if b is not None:
                    b[k] /= n
            m = vk.norm()
            vk *= max(0.0, 1.0 - tau / float(m)) if m > 0 else 0.0
        zeros.append(torch.stack([(vk == 0).all() for vk in _ref_units(q, v)]))
        out.append([w, b, v])
    return out, zeros


_ULP = {torch.float16: 2.0**-10, torch.bfloat16: 2.0**-7, torch.float32: 2.0**-23, torch.float64: 2.0**-52}


def _tolerance(dtype: torch.dtype, cond: float) -> float:
    """One rounding to ``dtype`` plus 4 ulp of the unit norm (float32, or float64 for float64
    weights), amplified by ``cond`` = max m/(m − τ) (the shrink factor's conditioning)."""
    return _ULP[dtype] + 4 * cond * _ULP[torch.promote_types(dtype, torch.float32)]


@pytest.mark.parametrize("foreach", [None, False])
@pytest.mark.parametrize("arch", list(_PROX_MODELS))
def test_prox_equals_a_float64_reference_and_zeros_exactly(arch: str, foreach: bool | None) -> None:
    net, pairs, tau = _random_pairs(arch, seed=len(arch))
    m = torch.cat([_ref_unit_norms(p)[1] for p in pairs])
    cond = float((m / (m - tau))[m > tau].max())
    expected, zeros = _reference_prox(pairs, tau)
    normalize_and_prox_(pairs, [tau] * len(pairs), foreach=foreach)
    for p, (w, b, v), z in zip(pairs, expected, zeros):
        for got, want, c in ((p.w, w, 1.0), (p.w_bias, b, 1.0), (p.v, v, cond)):
            if got is not None:
                tol = _tolerance(got.dtype, c)
                torch.testing.assert_close(got.detach().double(), want, rtol=tol, atol=tol * 1e-3)
        dead = torch.stack([(vk == 0).all() for vk in _ref_units(p, p.v)])
        assert torch.equal(dead, z), f"{arch}: exact zeros at ‖v_k‖ ≤ τ only"
        assert (p.w[0] == 0).all()  # the zero-norm unit is left alone
    dead = torch.cat(zeros)
    assert 0 < int(dead.sum()) < len(dead)  # both branches of the prox are taken
    assert len({p.w.dtype for p in pairs}) == (2 if arch == "mixed32_64" else 1)


@pytest.mark.parametrize("arch", ["conv_linear", "mixed32_64", "float16"])
@pytest.mark.parametrize("regularize_bias", [False, True])
def test_foreach_and_per_pair_prox_are_bit_identical(arch: str, regularize_bias: bool) -> None:
    a, pa, tau = _random_pairs(arch, seed=5)
    b, pb, _ = _random_pairs(arch, seed=5)
    taus = [tau * (i + 1) for i in range(len(pa))]  # one threshold per pair
    normalize_and_prox_(pa, taus, regularize_bias)
    normalize_and_prox_(pb, taus, regularize_bias, foreach=False)
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


@pytest.mark.parametrize("arch", ["conv_linear", "mlp5"])
def test_optimizer_foreach_false_equals_the_multi_tensor_step(arch: str) -> None:
    """Momentum, balancing and other-weight decay: the two paths of PathProx give the same bits."""
    runs = []
    for foreach in (None, False):
        torch.manual_seed(4)
        m = _MODELS[arch]()
        opt = PathProx(
            m.parameters(), lr=0.05, lam=0.4, momentum=0.9, pairs=m, balancing=True, foreach=foreach
        )
        _train(m, opt, 4, arch=arch)
        runs.append(m)
    for x, y in zip(*(r.parameters() for r in runs)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_step_is_torch_sgd_then_the_float64_prox_rounded_once(dtype: torch.dtype) -> None:
    torch.manual_seed(2)
    net = mlp6().to(dtype)
    twin = mlp6().to(dtype)
    twin.load_state_dict(net.state_dict())
    opt = PathProx(net.parameters(), lr=0.1, lam=2.0, pairs=net, momentum=0.9, other_weight_decay=0.0)
    sgd = torch.optim.SGD(twin.parameters(), lr=0.1, momentum=0.9)
    pairs = pathprox_pairs(twin)
    for step in range(2):
        for m in (net, twin):
            m.zero_grad()
            m(_batch("mlp6", step, dtype=dtype)).float().square().mean().backward()
        opt.step()
        sgd.step()
        expected, _ = _reference_prox(pairs, 0.1 * 2.0)
        with torch.no_grad():
            for p, (w, b, v) in zip(pairs, expected):
                for t, e in ((p.w, w), (p.w_bias, b), (p.v, v)):
                    t.copy_(e)
        for (name, x), y in zip(net.named_parameters(), twin.parameters()):
            tol = _tolerance(dtype, 1.0)
            torch.testing.assert_close(x, y, rtol=tol, atol=1e-6, msg=f"step {step}: {name}")
    assert any(bool((p.v == 0).any()) for p in opt.pairs)


@pytest.mark.parametrize("arch, foreach", [("conv_linear", None), ("conv_linear", False)])
def test_resume_is_bit_exact_for_block_pairs_on_both_paths(tmp_path, arch: str, foreach) -> None:
    def make():
        torch.manual_seed(3)
        m = _MODELS[arch]()
        return m, PathProx(m.parameters(), lr=0.05, lam=0.3, momentum=0.9, pairs=m, foreach=foreach)

    straight, opt = make()
    handle = opt.register_pre_prox_hook(lambda o: o.balance_())
    _train(straight, opt, 6, arch=arch)
    handle.remove()
    model, opt = make()
    opt.register_pre_prox_hook(lambda o: o.balance_())
    _train(model, opt, 3, arch=arch)
    torch.save(opt.state_dict(), tmp_path / "opt.pt")
    resumed, opt2 = make()
    resumed.load_state_dict(model.state_dict())
    opt2.load_state_dict(torch.load(tmp_path / "opt.pt", weights_only=True))
    opt2.register_pre_prox_hook(lambda o: o.balance_())
    _train(resumed, opt2, 3, start=3, arch=arch)
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("foreach", [None, False])
def test_units_with_norm_exactly_tau_are_zero_for_any_tau(foreach: bool | None) -> None:
    """‖v_k‖ = τ exactly (one nonzero per column): 1 − τ·(1/‖v_k‖) would round above 0 for ~1 in 7 τ."""
    net = nn.Sequential(nn.Linear(3, 64), nn.ReLU(), nn.Linear(64, 1))
    pairs = pathprox_pairs(net)
    taus = torch.rand(100, generator=torch.Generator().manual_seed(0)) + 0.01
    with torch.no_grad():
        for tau in taus.tolist():
            net[2].weight.fill_(tau)
            normalize_and_prox_(pairs, [tau], foreach=foreach)
            assert (net[2].weight == 0).all(), tau


def test_path_norms_in_row_chunks_equal_the_whole_tensor_reduction(monkeypatch):
    """float64 path norms of float32 weights are reduced in row chunks (no float64 copy of a whole
    weight): the same bits as one reduction of the whole tensor, conv and linear pairs alike."""
    import lightning_prox.optim.pathprox as pp

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 37, 3), nn.ReLU(), nn.Conv2d(37, 5, 3), nn.Flatten(), nn.Linear(5 * 4 * 4, 3)
    )
    net(torch.randn(1, 3, 8, 8))
    pairs = pathprox_pairs(net)
    whole = path_norms(pairs)
    monkeypatch.setattr(pp, "_CHUNK", 50)  # a few rows per chunk, with a shorter last one
    for p in pairs:
        ref = torch.linalg.vector_norm(p.w, dim=tuple(range(1, p.w.ndim)), dtype=torch.float64)
        assert torch.equal(pp._w_norms(p, torch.float64), ref)
    assert all(torch.equal(a, b) for a, b in zip(path_norms(pairs), whole))
