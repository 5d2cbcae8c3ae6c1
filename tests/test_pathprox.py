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
