"""The native finite-gradient scan (``lightning_prox.optim._finite_kernels``) behind ``check_finite``: it
agrees with ``torch.isfinite(g).all()`` on lists of random bit patterns with NaN/±inf planted at every
kind of position the kernel treats apart (first and last values, the vector tail, the borders of its
work items and of its interleaved read streams, 1-element tensors, lists with empty tensors), for
float16, bfloat16, float32 and float64 on 1 and 2 threads; a wrong argument raises before C++; an
optimizer still raises naming the parameter with parameters and state unchanged to the bit; without a
compiler one warning and the eager check.
"""

from __future__ import annotations

import pytest
import torch

from lightning_prox.optim import ProxGen, ProxSGD, _common, _finite_kernels, _native
from lightning_prox.regularizers import L1

DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64]
_INT = {2: torch.int16, 4: torch.int32, 8: torch.int64}
# the kernel's work item (1 MiB), read streams per item and block (256 bytes), as in the C++ source
_ITEM_BYTES, _STREAMS, _BLOCK_BYTES = 1 << 20, 8, 256
_BAD = [float("nan"), float("inf"), -float("inf")]


@pytest.fixture
def ops():
    ops = _finite_kernels._ops()
    if ops is None:
        pytest.skip("no working C++ compiler here: the eager check runs")
    return ops


def _finite_bits(n: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """n values of random bit patterns (sign, exponent and mantissa all drawn; subnormals, ±0, the
    largest finite values included), with the non-finite ones replaced by the largest finite value."""
    idt = _INT[torch.finfo(dtype).bits // 8]
    info = torch.iinfo(idt)
    bits = torch.randint(info.min, info.max, (n,), generator=g, dtype=torch.int64).to(idt)
    x = bits.view(dtype)
    return torch.where(torch.isfinite(x), x, torch.tensor(torch.finfo(dtype).max, dtype=dtype))


def _positions(n: int, dtype: torch.dtype) -> set[int]:
    """Every position class of a tensor of n values: first, last, the vector tail (64 bytes), each side
    of every work-item border, and of the read-stream parts and blocks of the first and last items."""
    size = torch.finfo(dtype).bits // 8
    item, block = _ITEM_BYTES // size, _BLOCK_BYTES // size
    pos = {0, n - 1, n - n % (64 // size), n - 1 - n % (64 // size)}
    starts = list(range(0, n, item))
    for lo in starts:
        pos |= {lo - 1, lo, lo + 1}
    for lo in {starts[0], starts[-1]} if n else ():
        m = min(item, n - lo)
        part = m // _STREAMS // block * block
        pos |= {lo + m - 1, lo + block - 1, lo + block}
        pos |= {lo + s * part + d for s in range(1, _STREAMS + 1) for d in (-1, 0, 1)}
    return {p for p in pos if 0 <= p < n}


def _reference(tensors: list[torch.Tensor]) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_native_scan_equals_isfinite_at_every_position(ops, dtype, threads):
    torch.set_num_threads(threads)  # the conftest fixture restores the suite's count
    g = torch.Generator().manual_seed(threads)
    item = _ITEM_BYTES // (torch.finfo(dtype).bits // 8)
    # > 4 items in all (the threaded split), a tensor of several items, one not a multiple of anything
    sizes = [1, 0, 2 * item + 517, 1, item + 1, 0, 4097, item - 1, 1]
    tensors = [_finite_bits(n, dtype, g) for n in sizes]
    assert _finite_kernels.all_finite(tensors) is True
    checked = 0
    for i, t in enumerate(tensors):
        for k, p in enumerate(sorted(_positions(t.numel(), dtype))):
            keep = t[p].clone()
            t[p] = _BAD[(i + k) % 3]
            # the rest of the list was checked finite above
            assert _finite_kernels.all_finite(tensors) is _reference([t]) is False, (i, p)
            t[p] = keep
            checked += 1
    assert checked > 100
    assert _finite_kernels.all_finite(tensors) is True


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_native_scan_equals_isfinite_on_random_lists(ops, dtype):
    g = torch.Generator().manual_seed(7)
    for trial in range(30):
        sizes = torch.randint(0, 3000, (int(torch.randint(1, 6, (1,), generator=g)),), generator=g).tolist()
        tensors = [_finite_bits(n, dtype, g) for n in sizes]
        for t in tensors:  # a few planted values, or none
            for _ in range(int(torch.randint(0, 2, (1,), generator=g))):
                if t.numel():
                    t[int(torch.randint(0, t.numel(), (1,), generator=g))] = _BAD[trial % 3]
        assert _finite_kernels.all_finite(tensors) is _reference(tensors), (trial, sizes)


@pytest.mark.parametrize(
    "x, bad, match",
    [
        (
            [torch.ones(3, dtype=torch.int32)],
            None,
            r"x\[0\] has dtype torch.int32; expected float16 or bfloat16",
        ),
        ([torch.ones(3), torch.ones(2, dtype=torch.float64)], None, r"x\[1\] has dtype torch.float64"),
        ([torch.ones(3), torch.ones(4, 2).t()], None, r"x\[1\] is not contiguous"),
        ([torch.ones(3), torch.ones(3, device="meta")], None, r"x\[1\] is on meta"),
        ([torch.ones(3)], torch.zeros(1), r"bad has dtype torch.float32; expected torch.int64"),
    ],
    ids=["int-dtype", "mixed-dtypes", "non-contiguous", "not-cpu", "flag-dtype"],
)
def test_a_wrong_argument_raises_before_the_kernel_runs(ops, x, bad, match):
    flag = torch.full((1,), 7, dtype=torch.int64) if bad is None else bad
    before = flag.clone()
    with pytest.raises(ValueError, match=match):
        ops.finite_scan(x, flag)
    assert torch.equal(flag, before)


def _state_bits(opt: torch.optim.Optimizer, params: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every parameter and state tensor as raw bytes (a bitwise comparison, NaN and −0 included)."""
    out = [p.detach().clone().view(torch.uint8) for p in params]
    for st in opt.state_dict()["state"].values():
        for v in st.values():
            out.append(torch.as_tensor(v).clone().reshape(-1).view(torch.uint8))
    return out


@pytest.mark.parametrize("where", [0, 1, 2], ids=["first", "middle", "last"])
@pytest.mark.parametrize("cls", [ProxGen, ProxSGD])
def test_the_optimizer_raises_naming_the_parameter_with_nothing_changed(ops, cls, where):
    g = torch.Generator().manual_seed(where)
    names = ["conv.weight", "fc.weight", "fc.bias"]
    shapes = [(64, 32, 3, 3), (700, 513), (1,)]  # numels beyond one work item and a single value
    params = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in shapes]
    kw = dict(lr=1e-2, momentum=0.9) if cls is ProxSGD else dict(lr=1e-2)
    opt = cls([{"params": list(zip(names, params)), "regularizer": L1(1e-3)}], **kw)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    opt.step()
    before = _state_bits(opt, params)
    for p in params:
        p.grad = torch.randn(p.shape, generator=g)
    params[where].grad.view(-1)[-1] = float("nan")
    with pytest.raises(ValueError, match=rf"non-finite gradient .* tensor {where} '{names[where]}'"):
        opt.step()
    after = _state_bits(opt, params)
    assert len(after) == len(before) and all(torch.equal(a, b) for a, b in zip(before, after))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_check_finite_grads_names_the_tensor_in_every_dtype(ops, dtype):
    grads = [torch.zeros(5, dtype=dtype), torch.zeros(0, dtype=dtype), torch.ones(3, 2, dtype=dtype)]
    _common.check_finite_grads(grads)
    grads[2][1, 0] = -float("inf")
    with pytest.raises(ValueError, match=r"tensor 1 of shape \(3, 2\)"):  # empty tensors are skipped
        _common.check_finite_grads(grads)


def test_check_finite_grads_on_mixed_lists(ops):
    """Lists the native scan takes only in part: several dtypes, complex, non-contiguous tensors."""
    grads = [
        torch.ones(4, dtype=torch.float64),
        torch.ones(3, 4).t(),  # non-contiguous: the eager sums
        torch.ones(6, dtype=torch.bfloat16),
        torch.ones(2, dtype=torch.complex64),
    ]
    _common.check_finite_grads(grads)
    for i, bad in enumerate([float("nan"), float("inf"), -float("inf"), complex(0, float("nan"))]):
        g = [t.clone() for t in grads]
        g[i][(1,) if g[i].dim() == 1 else (0, 1)] = bad
        with pytest.raises(ValueError, match=rf"tensor {i} of shape"):
            _common.check_finite_grads(g)


def test_without_a_compiler_one_warning_and_the_eager_check(monkeypatch, tmp_path):
    monkeypatch.setenv("CXX", str(tmp_path / "no-such-compiler"))
    monkeypatch.setenv("LIGHTNING_PROX_CACHE_DIR", str(tmp_path / "cache"))
    _native.kernels.cache_clear()
    try:
        with pytest.warns(RuntimeWarning, match="building _finite_kernels.cpp failed") as record:
            _common.check_finite_grads([torch.ones(3), torch.full((2,), 3e38)])  # overflowing sum, finite
            for bad in _BAD:
                with pytest.raises(ValueError, match=r"tensor 1 of shape \(2,\)"):
                    _common.check_finite_grads([torch.ones(3), torch.tensor([1.0, bad])])
    finally:
        _native.kernels.cache_clear()
    assert len([w for w in record if "_finite_kernels.cpp" in str(w.message)]) == 1


@pytest.mark.parametrize("implementation", ["auto", "eager"])
@pytest.mark.parametrize("cls", [ProxGen, ProxSGD])
def test_the_step_scans_natively_unless_eager(ops, cls, implementation, monkeypatch):
    calls = []
    monkeypatch.setattr(_finite_kernels, "_ops", lambda: calls.append(1) or ops)
    w = torch.nn.Parameter(torch.randn(5, 4))
    opt = cls([("w", w)], lr=1e-2, implementation=implementation)
    w.grad = torch.randn(5, 4)
    opt.step()
    before = w.detach().clone()
    w.grad[2, 3] = float("inf")
    with pytest.raises(ValueError, match=r"tensor 0 'w'"):
        opt.step()
    assert len(calls) == (2 if implementation == "auto" else 0)  # "eager" builds nothing
    assert torch.equal(w.detach(), before)
