"""export_compact: exact outputs, the parameter count the zero pattern implies, ONNX, refusals.

Expected shapes are written out per layer from the zero pattern (not from the exporter), and the
expected parameter count is computed from those shapes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

pytest.importorskip("torch_pruning")

from lightning_prox.export import ExportError, export_compact, export_onnx, measure_latency
from lightning_prox.models import MLP, CifarResNet, LeNet


def _params_from_shapes(model: nn.Module, shapes: dict[str, tuple[int, int]]) -> int:
    """Parameter count of ``model`` if each conv/linear named in ``shapes`` had (in, out) channels there,
    the norm layers following their producers' widths (given as ``shapes[bn] = (c, c)``)."""
    total = 0
    for name, m in model.named_modules():
        own = list(m.parameters(recurse=False))
        if not own:
            continue
        if isinstance(m, nn.modules.conv._ConvNd):
            cin, cout = shapes.get(name, (m.in_channels, m.out_channels))
            k = m.weight[0, 0].numel()
            total += cout * cin * k + (cout if m.bias is not None else 0)
        elif isinstance(m, nn.Linear):
            cin, cout = shapes.get(name, (m.in_features, m.out_features))
            total += cout * cin + (cout if m.bias is not None else 0)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = shapes.get(name, (m.num_features, m.num_features))[1]
            total += 2 * c
        else:
            total += sum(p.numel() for p in own)
    return total


def _check_shapes(compact: nn.Module, shapes: dict[str, tuple[int, int]]) -> None:
    mods = dict(compact.named_modules())
    for name, (cin, cout) in shapes.items():
        m = mods[name]
        if isinstance(m, nn.Linear):
            assert (m.in_features, m.out_features) == (cin, cout), name
        elif isinstance(m, nn.modules.conv._ConvNd):
            assert (m.in_channels, m.out_channels) == (cin, cout), name
        else:
            assert m.num_features == cout, name


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).abs().max() / a.double().abs().max())


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                m.weight.copy_(0.5 + torch.rand(c, generator=g))
                m.bias.copy_(0.2 * torch.randn(c, generator=g))
                m.running_mean.copy_(0.1 * torch.randn(c, generator=g))
                m.running_var.copy_(0.5 + torch.rand(c, generator=g))


def _export(model, x, **kw):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    compact, report = export_compact(model, x, latency_batches=(), **kw)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        ref, got = model.eval()(x), compact.eval()(x)
    assert ref.shape == got.shape
    assert _rel(ref, got) <= 1e-5
    assert report.max_rel_diff <= 1e-5
    assert report.params[1] == sum(p.numel() for p in compact.parameters())
    return compact, report


# -- LeNet (the quickstart model) -----------------------------------------------------------------
def _lenet() -> LeNet:
    torch.manual_seed(0)
    return LeNet(1, 10, img_size=8, channels=(16, 32), hidden=64)


def test_lenet_dim_in_zeros_flatten_aware():
    net = _lenet()
    a, b, c = [0, 3, 5], [1, 2, 30], [4, 7, 8, 60]
    with torch.no_grad():
        net.features[3].weight[:, a] = 0  # conv2's input channels a -> conv1's filters a go
        for k in b:  # fc1 reads 2x2 = 4 flattened columns per conv2 channel: zero whole blocks
            net.classifier[1].weight[:, 4 * k : 4 * k + 4] = 0
        net.classifier[1].weight[:, 4 * 9 : 4 * 9 + 3] = 0  # 3 of the 4 columns of channel 9: stays
        net.classifier[3].weight[:, c] = 0  # fc2's inputs c -> fc1's rows c go
    x = torch.randn(16, 1, 8, 8)
    compact, report = _export(net, x)
    shapes = {
        "features.0": (1, 16 - len(a)),
        "features.3": (16 - len(a), 32 - len(b)),
        "classifier.1": (4 * (32 - len(b)), 64 - len(c)),
        "classifier.3": (64 - len(c), 10),
    }
    _check_shapes(compact, shapes)
    assert report.params == (_params_from_shapes(net, {}), _params_from_shapes(net, shapes))
    assert report.removed_channels == len(a) + len(b) + len(c)
    assert report.macs[1] < report.macs[0]
    rows = {r.name: r for r in report.layers}
    assert (rows["features.3"].in_after, rows["features.3"].out_after) == shapes["features.3"]


def test_lenet_dim_out_zeros_constants_folded_or_kept():
    net = _lenet()
    d_neg, d_pos, e, f = [2, 6], [9], [0, 11], [3, 33]
    with torch.no_grad():
        conv1, conv2, fc1 = net.features[0], net.features[3], net.classifier[1]
        conv1.weight[d_neg + d_pos] = 0
        conv1.bias[d_neg] = -0.3  # relu(-0.3) = 0: a zero channel, removable
        conv1.bias[d_pos] = 0.4  # relu(0.4): a constant read by the zero-padded conv2: kept
        conv2.weight[e] = 0
        conv2.bias[e] = torch.tensor([0.5, 0.7])  # constant after relu/pool: folds into fc1's bias
        fc1.weight[f] = 0
        fc1.bias[f] = torch.tensor([0.25, -0.1])  # relu(0.25) folds into fc2, relu(-0.1) = 0
    x = torch.randn(16, 1, 8, 8)
    compact, report = _export(net, x)
    shapes = {
        "features.0": (1, 16 - len(d_neg)),
        "features.3": (16 - len(d_neg), 32 - len(e)),
        "classifier.1": (4 * (32 - len(e)), 64 - len(f)),
        "classifier.3": (64 - len(f), 10),
    }
    _check_shapes(compact, shapes)
    assert report.params[1] == _params_from_shapes(net, shapes)
    assert report.kept_constant_channels == len(d_pos)
    assert report.folded_channels == 3  # two conv2 filters into fc1, one fc1 unit into fc2
    assert any("features.3" in note and "channel 9" in note for note in report.notes)
    # the kept constant is right on other inputs too (not only on the example batch)
    y = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        assert _rel(net(y), compact(y)) <= 1e-5


def test_lenet_trained_with_proxgen_group_lasso():
    from lightning_prox.optim import ProxGen
    from lightning_prox.regularizers import GroupLasso
    from lightning_prox.structure import param_groups_regularized

    net = _lenet()
    torch.manual_seed(1)
    x, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    # the first conv has one input channel: its only "in" group is the whole layer, so it is left out
    groups = param_groups_regularized(net, GroupLasso(0.01, dim="in"), exclude=[r"features\.0\."])
    opt = ProxGen(groups, lr=0.02)
    for _ in range(40):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    w2, fc1, fc2 = net.features[3].weight, net.classifier[1].weight, net.classifier[3].weight
    dead_c1 = (w2 == 0).all(0).flatten(1).all(1)  # conv2's zero input channels
    dead_c2 = (fc1.reshape(64, 32, 4) == 0).all(0).all(1)  # whole 4-column blocks of fc1
    dead_f1 = (fc2 == 0).all(0)
    assert int(dead_c1.sum() + dead_c2.sum() + dead_f1.sum()) > 0, "training made no group zeros"
    # a layer keeps at least one channel, so that the network keeps its shape
    n1, n2, n3 = (
        max(1, 16 - int(dead_c1.sum())),
        max(1, 32 - int(dead_c2.sum())),
        max(1, 64 - int(dead_f1.sum())),
    )
    shapes = {
        "features.0": (1, n1),
        "features.3": (n1, n2),
        "classifier.1": (4 * n2, n3),
        "classifier.3": (n3, 10),
    }
    compact, report = _export(net, torch.randn(8, 1, 8, 8))
    _check_shapes(compact, shapes)
    assert report.params[1] == _params_from_shapes(net, shapes)


# -- MLP --------------------------------------------------------------------------------------------
def test_mlp_in_and_out_zeros():
    torch.manual_seed(0)
    net = MLP(64, 10, hidden=(32, 16))
    with torch.no_grad():
        net.net[3].weight[:, [1, 4, 9]] = 0  # dim="in" on the second layer: first layer's units go
        net.net[3].weight[[0, 5]] = 0  # dim="out" on the second layer: constant units, fold into the head
        net.net[3].bias[[0, 5]] = torch.tensor([0.3, -0.2])
        net.net[1].weight[:, :7] = 0  # zero input pixels: the model's input is never shrunk
    compact, report = _export(net, torch.randn(8, 1, 8, 8))
    shapes = {"net.1": (64, 29), "net.3": (29, 14), "net.5": (14, 10)}
    _check_shapes(compact, shapes)
    assert report.params[1] == _params_from_shapes(net, shapes)
    assert report.folded_channels == 1


# -- CIFAR ResNet-20: coupled groups across residual adds -------------------------------------------
def test_resnet20_coupled_stream_and_block_channels():
    torch.manual_seed(0)
    net = CifarResNet(20)
    _randomize_bn(net)
    stream, inner, lonely = [2, 7], [1, 4, 5], [11]
    with torch.no_grad():
        # stage-1 residual stream: removable only when every consumer's slice is zero
        for name in (
            "layer1.0.conv1",
            "layer1.1.conv1",
            "layer1.2.conv1",
            "layer2.0.conv1",
            "layer2.0.downsample.0",
        ):
            net.get_submodule(name).weight[:, stream] = 0
        net.get_submodule("layer1.0.conv1").weight[:, lonely] = 0  # one consumer of three: stays
        net.layer2[1].conv2.weight[:, inner] = 0  # inside a block: layer2.1.conv1's filters go
    x = torch.randn(4, 3, 32, 32)
    compact, report = _export(net, x)
    s, i = 16 - len(stream), 32 - len(inner)
    shapes = {"conv1": (3, s), "bn1": (s, s), "layer2.1.conv1": (32, i), "layer2.1.bn1": (i, i)}
    shapes["layer2.1.conv2"] = (i, 32)
    for j in range(3):
        shapes[f"layer1.{j}.conv1"] = (s, 16)
        shapes[f"layer1.{j}.conv2"] = (16, s)
        shapes[f"layer1.{j}.bn2"] = (s, s)
    shapes["layer2.0.conv1"] = (s, 32)
    shapes["layer2.0.downsample.0"] = (s, 32)
    _check_shapes(compact, shapes)
    assert report.params[1] == _params_from_shapes(net, shapes)
    assert report.removed_channels == len(stream) + len(inner)


def test_resnet20_zero_filters_with_bn_are_constants():
    torch.manual_seed(0)
    net = CifarResNet(20)
    _randomize_bn(net)
    with torch.no_grad():
        net.layer3[2].conv1.weight[[0, 1, 2]] = 0  # GroupLasso(dim="out") zeros, then BN + ReLU
        bn = net.layer3[2].bn1
        bn.bias[[0, 1]] = -1.0  # relu(negative constant) = 0: removable
        bn.bias[2] = 1.0  # positive constant into a zero-padded conv: kept
        bn.running_mean[[0, 1, 2]] = 0.0
    compact, report = _export(net, torch.randn(4, 3, 32, 32))
    shapes = {"layer3.2.conv1": (64, 62), "layer3.2.bn1": (62, 62), "layer3.2.conv2": (62, 64)}
    _check_shapes(compact, shapes)
    assert report.params[1] == _params_from_shapes(net, shapes)
    assert report.kept_constant_channels == 1


# -- timm ResNet-18 ------------------------------------------------------------------------------------
def test_timm_resnet18():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=10)
    _randomize_bn(net)
    inner, stream = [3, 8, 20], [5, 100]
    with torch.no_grad():
        net.layer1[0].conv2.weight[:, inner] = 0
        net.layer4[1].conv1.weight[:, stream] = 0
        net.fc.weight[:, stream] = 0
    x = torch.randn(2, 3, 64, 64)
    compact, report = _export(net, x)
    g, m = 64 - len(inner), 512 - len(stream)
    shapes = {
        "layer1.0.conv1": (64, g),
        "layer1.0.bn1": (g, g),
        "layer1.0.conv2": (g, 64),
        "layer4.0.conv2": (512, m),
        "layer4.0.bn2": (m, m),
        "layer4.0.downsample.0": (256, m),
        "layer4.0.downsample.1": (m, m),
        "layer4.1.conv1": (m, 512),
        "layer4.1.conv2": (512, m),
        "layer4.1.bn2": (m, m),
        "fc": (m, 10),
    }
    _check_shapes(compact, shapes)
    assert report.params[1] == _params_from_shapes(net, shapes)


def _timm_resnet18_expected(net: nn.Module) -> dict[str, tuple[int, int]]:
    """(in, out) channels per layer of a timm ResNet-18 once its zero pattern is removed, read off the
    architecture: a block-internal channel (conv1's output) goes when conv2's input slice is zero, or
    when conv1's filter is zero and the constant relu(BN(0)) it leaves is zero (conv2 zero-pads, so a
    nonzero constant stays); a residual-stream channel goes when every reader's input slice is zero
    (the stage's blocks without a downsample, the next stage's first block's conv1 and downsample, or
    the classifier). A layer keeps at least one channel."""

    def zero_in(w: torch.Tensor) -> torch.Tensor:
        return (w == 0).transpose(0, 1).flatten(1).all(1)

    def kept(dead: torch.Tensor) -> int:
        return max(1, len(dead) - int(dead.sum()))

    stages = [net.layer1, net.layer2, net.layer3, net.layer4]
    streams = []
    for s, stage in enumerate(stages):
        readers = [b.conv1.weight for b in stage if b.downsample is None]
        if s < 3:
            readers += [stages[s + 1][0].conv1.weight, stages[s + 1][0].downsample[0].weight]
        else:
            readers.append(net.fc.weight)
        streams.append(kept(torch.stack([zero_in(w) for w in readers]).all(0)))
    shapes = {"conv1": (3, streams[0]), "bn1": (streams[0],) * 2, "fc": (streams[3], net.fc.out_features)}
    for s, stage in enumerate(stages):
        for j, b in enumerate(stage):
            p, bn = f"layer{s + 1}.{j}", b.bn1
            const = torch.relu(bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps))
            dead_filter = (b.conv1.weight == 0).flatten(1).all(1) & (const == 0)
            inner = kept(zero_in(b.conv2.weight) | dead_filter)
            s_in = streams[s - 1] if b.downsample is not None else streams[s]
            shapes[f"{p}.conv1"], shapes[f"{p}.bn1"] = (s_in, inner), (inner, inner)
            shapes[f"{p}.conv2"], shapes[f"{p}.bn2"] = (inner, streams[s]), (streams[s], streams[s])
            if b.downsample is not None:
                shapes[f"{p}.downsample.0"] = (s_in, streams[s])
                shapes[f"{p}.downsample.1"] = (streams[s], streams[s])
    return shapes


@pytest.mark.slow  # three short ResNet-18 trainings and exports (about 5 s each on one CPU thread)
@pytest.mark.parametrize("kind", ["in", "out", "coupled"])
def test_timm_resnet18_trained_with_each_regularizer(kind, tmp_path):
    timm = pytest.importorskip("timm")
    from lightning_prox.optim import ProxSGD
    from lightning_prox.regularizers import CoupledGroupLasso, GroupLasso
    from lightning_prox.structure import coupled_channel_groups, param_groups_regularized

    torch.manual_seed(0)
    net = timm.create_model("resnet18", num_classes=10)  # timm's init, zero_init_last: bn2 weights 0
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # channels of unequal strength, as after training: some groups reach zero first
        for name, m in net.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and name != "conv1":
                d = 0 if kind == "out" else 1
                f = 10 ** (-1.5 * torch.rand(m.weight.shape[d], generator=g))
                m.weight.mul_(f.view([-1 if i == d else 1 for i in range(m.weight.ndim)]))
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    if kind == "coupled":
        reg = CoupledGroupLasso.from_model(net, x[:1], lam=0.02)
        rest = [(n, p) for n, p in net.named_parameters() if n not in reg.names]
        groups = [reg.param_group(net), {"params": [p for _, p in rest], "param_names": [n for n, _ in rest]}]
    elif kind == "in":  # every conv and linear weight but the stem's (it reads the image)
        groups = param_groups_regularized(
            net, GroupLasso(0.02, dim="in"), include_types=["Conv2d", "Linear"], exclude=[r"^conv1\."]
        )
    else:  # only the blocks' first convs: their zero filters leave constant channels behind BN
        groups = param_groups_regularized(
            net, GroupLasso(0.02, dim="out"), exclude=[r"^conv1\.", r"conv2\.", r"downsample", r"^fc\."]
        )
        assert all(n.startswith("layer") and ".conv1." in n for n in groups[0]["param_names"])
    opt = ProxSGD(groups, lr=0.1)
    for _ in range(3):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    shapes = _timm_resnet18_expected(net)
    compact, report = _export(net, x[:2])
    _check_shapes(compact, shapes)
    assert report.params[1] == _params_from_shapes(net, shapes)
    assert report.removed_channels > 0, "training made no removable channel"
    params = dict(net.named_parameters())
    zero = [
        [bool((params[n].index_select(d, torch.tensor(ix)) == 0).all()) for n, d, ix in grp]
        for grp in coupled_channel_groups(net, x[:1])
    ]
    stream_removed = sum(all(z) for z in zero if len(z) > 1)
    if kind == "out":  # zero filters whose constant relu(BN(0)) is positive feed a zero-padded conv: kept
        kept = 0
        for b in (b for stage in (net.layer1, net.layer2, net.layer3, net.layer4) for b in stage):
            bn = b.bn1
            const = torch.relu(bn.bias - bn.weight * bn.running_mean / torch.sqrt(bn.running_var + bn.eps))
            kept += int(((b.conv1.weight == 0).flatten(1).all(1) & (const > 0)).sum())
        assert report.kept_constant_channels == kept
    if kind == "coupled":
        assert all(all(z) or not any(z) for z in zero)  # a group is zero as a whole or not at all
        assert stream_removed > 0
        pytest.importorskip("onnx")
        ort = pytest.importorskip("onnxruntime")
        path = tmp_path / "resnet18.onnx"
        assert export_onnx(compact, x[:2], path) <= 1e-5
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"input": x[2:5].numpy()}
        )[0]
        with torch.no_grad():
            assert _rel(net(x[2:5]), torch.from_numpy(got)) <= 1e-5


# -- ONNX --------------------------------------------------------------------------------------------
def test_onnx_of_compact_model_runs_in_onnxruntime(tmp_path):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    net = _lenet()
    with torch.no_grad():
        net.features[3].weight[:, [0, 1]] = 0
        net.classifier[1].weight[:, :8] = 0
    compact, _ = export_compact(net, torch.randn(8, 1, 8, 8), latency_batches=())
    path = tmp_path / "compact.onnx"
    diff = export_onnx(compact, torch.randn(8, 1, 8, 8), path)
    assert diff is not None and diff <= 1e-5
    x = torch.randn(3, 1, 8, 8)  # another batch size: the batch dim is dynamic
    got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"input": x.numpy()})[
        0
    ]
    with torch.no_grad():
        assert _rel(net.eval()(x), torch.from_numpy(got)) <= 1e-5


# -- refusals ----------------------------------------------------------------------------------------
def test_channel_padding_shortcut_is_never_exported_wrong():
    # option-A shortcuts zero-pad the channels (F.pad), which the graph couples one-to-one with the
    # next stage: the export must either keep those channels or refuse, never be inexact
    torch.manual_seed(0)
    net = CifarResNet(20, shortcut="A")
    _randomize_bn(net)
    with torch.no_grad():
        for j in range(3):
            net.layer1[j].conv1.weight[:, [3]] = 0
        net.layer2[0].conv1.weight[:, [3]] = 0
    try:
        compact, report = export_compact(net, torch.randn(2, 3, 32, 32), latency_batches=())
    except ExportError as err:
        assert "layer2.0.pad" in str(err)
    else:
        assert report.max_rel_diff <= 1e-5 and compact.conv1.out_channels == 16


def test_refuses_layernorm_over_features_and_keep_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 6), nn.LayerNorm(6), nn.Linear(6, 2))
    with torch.no_grad():
        net[2].weight[:, [0, 1]] = 0
    with pytest.raises(ExportError, match=r"'1'|\b1\b.*know"):
        export_compact(net, torch.randn(4, 8), latency_batches=())
    compact, report = export_compact(net, torch.randn(4, 8), latency_batches=(), on_unknown="keep")
    assert compact[2].in_features == 6 and report.removed_channels == 0 and report.notes


class _Mix(nn.Module):
    """A custom channel-mixing layer with its own parameter (unknown to the exporter)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(c, c))

    def forward(self, x):
        return torch.einsum("oc,bchw->bohw", self.w, x)


def test_refuses_unknown_module_naming_it():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), _Mix(4), nn.Conv2d(4, 2, 3))
    with torch.no_grad():
        net[2].w[:, 1] = 0
        net[3].weight[:, 1] = 0
    with pytest.raises(ExportError, match=r"'2'"):
        export_compact(net, torch.randn(2, 1, 8, 8), latency_batches=())


def test_refuses_inexact_result_naming_the_layer(monkeypatch):
    import lightning_prox.export.compact as compact_mod

    net = _lenet()
    with torch.no_grad():
        net.features[3].weight[[0]] = 0
        net.features[3].bias[0] = 0.5  # a constant that must be folded into fc1
    monkeypatch.setattr(compact_mod, "_fold", lambda plan: None)  # a broken fold must be caught
    with pytest.raises(ExportError, match=r"classifier"):
        export_compact(net, torch.randn(4, 1, 8, 8), latency_batches=())


def test_bad_arguments_and_report_outputs():
    net = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(ValueError, match="rtol"):
        export_compact(net, torch.randn(2, 4), rtol=2.0)
    with pytest.raises(ValueError, match="on_unknown"):
        export_compact(net, torch.randn(2, 4), on_unknown="skip")
    with pytest.raises(TypeError, match="example_inputs"):
        export_compact(net, [1, 2])
    with pytest.raises(ValueError, match="clock"):
        measure_latency(net, torch.randn(2, 4), clock="cpu")
    assert measure_latency(net, torch.randn(2, 4), runs=3, clock="process") >= 0
    with torch.no_grad():
        net[2].weight[:, 0] = 0
    compact, report = export_compact(net, torch.randn(2, 4), latency_batches=(1, 4), latency_runs=3)
    d = report.to_dict()
    assert set(d["latency_ms"]) == {"1", "4"} and all(v[0] > 0 and v[1] > 0 for v in d["latency_ms"].values())
    assert d["params"] == [30, 23] and d["ratios"]["params"] == pytest.approx(30 / 23)
    text = str(report)
    assert "parameters" in text and "channels kept per layer" in text
    assert compact.training  # the mode of the caller's model
