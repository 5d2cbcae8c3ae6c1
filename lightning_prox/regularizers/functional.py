"""Pure thresholding maps: the one place where proximal arithmetic lives.

Every function solves a scalar problem elementwise, takes the point ``z`` first and the scale(s)
after it (floats or tensors broadcastable to ``z``), returns a new tensor and never mutates its input:

* ``prox_<penalty>(z, mu)`` = argmin_x ½(x − z)² + mu·|x|^q for the l_q family (mu ≥ 0);
* ``prox_mcp/prox_scad(z, s, lam, b|a)`` = argmin_x ½(x − z)² + s·ρ_lam(x) (s ≥ 0), exact, and
  ``*_paper`` variants with the ProxGen paper's printed formulas (Yun, Lozano & Yang, 2020, Appendix C, Eqs. 23 and 29).

Regularizer classes turn (λ, step, metric) into these arguments (mu = step·λ/metric); optimizers call
the regularizers, never this module's math of their own (one place for each formula). Computation happens
in float32 for half-precision inputs and the result is cast back. Every map is NaN-free for finite
inputs, including mu = +inf and z = 0: branches are evaluated on clamped inputs and selected with
``torch.where``. Ties at a threshold go to 0 (the smaller magnitude), see each function.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._base import threshold_dtype

__all__ = [
    "prox_l0",
    "prox_l1",
    "prox_lhalf",
    "prox_lq",
    "prox_ltwothirds",
    "prox_mcp",
    "prox_mcp_paper",
    "prox_scad",
    "prox_scad_paper",
]

#: zeroing thresholds of prox_lq in units of mu (Yun, Lozano & Yang, 2020, Appendix C, with λ̃ = 2mu), for q = 1/2 and 2/3
_C_HALF = 54.0 ** (1.0 / 3.0) / 4.0  # |z| > _C_HALF · λ̃^{2/3}
_C_TWOTHIRDS = (2.0 / 3.0) * 3.0**0.25  # |z| > _C_TWOTHIRDS · λ̃^{3/4}
_U_MAX = 1e15  # beyond |z|/λ̃^{3/4} = _U_MAX the l_{2/3} shrinkage is below float64 resolution


def _f(z: Tensor, *scales: Tensor | float) -> tuple[Tensor, ...]:
    dt = threshold_dtype(z)
    return (z.to(dt), *(s.to(dt) if isinstance(s, Tensor) else s for s in scales))


def prox_l1(z: Tensor, thr: Tensor | float) -> Tensor:
    """Soft thresholding: z − clamp(z, −thr, thr) = sign(z)·max(|z| − thr, 0) = argmin_x ½(x − z)² + thr·|x|.

    ``thr`` ≥ 0 (a float or a tensor broadcastable to ``z``, may be +inf). Entries with ``|z| ≤ thr``
    (ties included) become exactly ``+0``.

    Example:
        >>> import torch
        >>> prox_l1(torch.tensor([-2.0, 0.5, 3.0]), 1.0)
        tensor([-1.,  0.,  2.])
    """
    zf, t = _f(z, thr)
    neg = -t
    return (zf - torch.clamp(zf, neg, t)).to(z.dtype)


def prox_l0(z: Tensor, mu: Tensor | float) -> Tensor:
    """Hard thresholding: argmin_x ½(x − z)² + mu·[x ≠ 0] keeps z where |z| > sqrt(2·mu), else 0 (ties → 0).

    Example:
        >>> import torch
        >>> prox_l0(torch.tensor([-2.0, 0.5, 1.0]), 0.5)
        tensor([-2.,  0.,  0.])
    """
    zf, m = _f(z, mu)
    thr = (m**0.5 if isinstance(m, Tensor) else math.sqrt(m)) * math.sqrt(2.0)  # no overflow of 2·mu
    return torch.where(zf.abs() > thr, zf, 0.0).to(z.dtype)


def prox_lhalf(z: Tensor, mu: Tensor | float) -> Tensor:
    """Half thresholding (Cao et al. 2013 with λ̃ = 2·mu): argmin_x ½(x − z)² + mu·|x|^{1/2}.

    .. math::

        x = \\tfrac23 z\\,\\big(1 + \\cos(\\tfrac{2\\pi}{3} - \\tfrac23 \\varphi)\\big),\\quad
        \\varphi = \\arccos\\big(\\tfrac{\\tilde\\lambda}{8} (|z|/3)^{-3/2}\\big)
        \\quad\\text{if } |z| > \\tfrac{\\sqrt[3]{54}}{4}\\tilde\\lambda^{2/3}, \\text{ else } 0 \\text{ (ties → 0)}.

    Example:
        >>> import torch
        >>> prox_lhalf(torch.tensor([0.5, 2.0]), 0.5)
        tensor([0.0000, 1.8144])
    """
    zf, m = _f(z, mu)
    s = (m ** (2.0 / 3.0) if isinstance(m, Tensor) else m ** (2.0 / 3.0)) * 2.0 ** (2.0 / 3.0)  # λ̃^{2/3}
    az = zf.abs()
    thr = _C_HALF * s
    u = torch.clamp(
        az
        / torch.clamp(torch.as_tensor(s, dtype=zf.dtype, device=zf.device), min=torch.finfo(zf.dtype).tiny),
        min=_C_HALF,
    )
    arg = (3.0**1.5 / 8.0) * u.pow(-1.5)  # = (λ̃/8)(|z|/3)^{-3/2} ∈ [0, 1/√2]
    phi = torch.arccos(arg)
    x = (2.0 / 3.0) * zf * (1.0 + torch.cos(2.0 * math.pi / 3.0 - (2.0 / 3.0) * phi))
    return torch.where(az > thr, x, 0.0).to(z.dtype)


#: w(h) ≈ C4·h⁴ + … + C0 on h ∈ [−_H_STAR, 0], the largest root of w³ − w − 2h = 0 to 5.8e-5 (Chebyshev
#: least squares); one Newton step then reaches 8e-9, two reach float64 rounding.
_W_POLY = (
    -79.46190006920315,
    -7.149998672776421,
    -2.1478113682582736,
    0.9876593307885589,
    0.9999636322984188,
)
_H_STAR = 0.5 * math.sqrt(2.0 / 27.0)  # −h at the zeroing threshold: ε* = 2/√54 (jump to x = (2/3)·z)


def lhalf_kernel(a: Tensor | float, dtype: torch.dtype, device: torch.device):
    """The ℓ_{1/2} prox with a = step·λ under a diagonal metric, as a :func:`chunked_map` kernel (5 buffers).

    Same minimizer as :func:`prox_lhalf` with mu = a/metric, without its arccos/cos/pow: writing
    x = z·w² with w ∈ [√(2/3), 1], the stationarity condition of ½m(x − z)² + a|x|^{1/2} for x ≠ 0
    reads w³ − w + ε = 0 with ε = a/(2m|z|^{3/2}), and the prox is non-zero iff ε < ε* = 2/√54
    (the threshold of :func:`prox_lhalf`; ties → 0). The largest root w is a degree-4 polynomial in
    h = −ε/2 refined by Newton steps w ← (w³ + h)/(1.5w² − 0.5) (one in float32, three in float64;
    the derivative 3w² − 1 ≥ 1 on the branch, so each step squares the error). About 19 elementwise
    passes on cached chunks, none of them transcendental except one square root.
    """
    tiny, big = torch.finfo(dtype).tiny, torch.finfo(dtype).max
    if isinstance(a, Tensor):
        at = a.to(dtype=dtype, device=device).clamp(tiny, big)
    else:
        at = torch.tensor(min(max(a, tiny), big), dtype=dtype, device=device)
    neg_quarter_a = at * -0.25
    c4, c3, c2, c1, c0 = (torch.tensor(c, dtype=dtype, device=device) for c in _W_POLY)
    minus_half = torch.tensor(-0.5, dtype=dtype, device=device)
    newton = 1 if dtype in (torch.float32, torch.float16, torch.bfloat16) else 3
    c4f = float(c4)

    def kernel(z: Tensor, m: Tensor | None, out: Tensor, bufs: list[Tensor]) -> None:
        az, t, h, g, num = bufs  # out may alias z: it is written last
        torch.abs(z, out=az)
        torch.sqrt(az, out=t)
        if m is not None:
            t.mul_(m)
        t.mul_(az)  # m·|z|^{3/2} (0 at z = 0; may overflow to inf, then ε = 0 and x = z)
        torch.div(neg_quarter_a, t, out=h)  # h = −ε/2 = −a/(4m|z|^{3/2}) ∈ [−inf, 0]
        h.clamp_min_(-_H_STAR)
        torch.add(h, _H_STAR, out=g)
        g.sign_()  # 1 where ε < ε* (x ≠ 0), 0 at and beyond the threshold (ties → 0)
        torch.add(c3, h, alpha=c4f, out=az)  # Horner: w0 = (((c4 h + c3) h + c2) h + c1) h + c0
        torch.addcmul(c2, az, h, out=t)
        torch.addcmul(c1, t, h, out=az)
        torch.addcmul(c0, az, h, out=t)
        for _ in range(newton):
            torch.mul(t, t, out=az)
            torch.addcmul(h, az, t, out=num)  # w³ − ε/2
            torch.add(minus_half, az, alpha=1.5, out=az)  # 1.5w² − 0.5 ≥ 0.5
            torch.div(num, az, out=t)
        t.mul_(g)
        torch.mul(t, t, out=az)
        torch.mul(z, az, out=out)

    return kernel


#: w(h) ≈ Σ_k C_k h^k on h = −ε ∈ [−_E23_STAR, 0], the largest root of w⁴ − w + ε = 0 to 3.8e-5
#: (Chebyshev least squares, degree 6); one Newton step then reaches 5e-9, two reach float64 rounding.
_W23_POLY = (
    -37.886118459841235,
    -33.40825731064251,
    -12.397697544719076,
    -1.7566838361892594,
    -0.37296335686730875,
    0.32920721874639625,
    0.9999819271079357,
)
_E23_STAR = 2.0 ** (-4.0 / 3.0)  # ε at the zeroing threshold (jump to x = z/2, w = 2^{-1/3})


def ltwothirds_kernel(a: Tensor | float, dtype: torch.dtype, device: torch.device):
    """The ℓ_{2/3} prox with a = step·λ under a diagonal metric, as a :func:`chunked_map` kernel (5 buffers).

    Same minimizer as :func:`prox_ltwothirds` with mu = a/metric, without arccosh/cosh: writing
    x = z·w³ with w ∈ [2^{-1/3}, 1], the stationarity condition of ½m(x − z)² + a|x|^{2/3} for x ≠ 0
    reads w⁴ − w + ε = 0 with ε = (2/3)·a/(m|z|^{4/3}) (|z|^{1/3} = exp(log|z|/3)), and the prox is
    non-zero iff ε < ε* = 2^{-4/3} (the threshold of :func:`prox_ltwothirds`; ties → 0). The largest
    root is a degree-6 polynomial in ε refined by Newton steps w ← (3w⁴ − ε)/(4w³ − 1) (one in
    float32, three in float64; 4w³ − 1 ≥ 1 on the branch).
    """
    tiny, big = torch.finfo(dtype).tiny, torch.finfo(dtype).max
    if isinstance(a, Tensor):
        at = a.to(dtype=dtype, device=device).clamp(tiny, big)
    else:
        at = torch.tensor(min(max(a, tiny), big), dtype=dtype, device=device)
    neg_a = at * (-2.0 / 3.0)
    cs = [torch.tensor(c, dtype=dtype, device=device) for c in _W23_POLY]
    minus_one = torch.tensor(-1.0, dtype=dtype, device=device)
    newton = 1 if dtype in (torch.float32, torch.float16, torch.bfloat16) else 3
    lead = float(cs[0])

    def kernel(z: Tensor, m: Tensor | None, out: Tensor, bufs: list[Tensor]) -> None:
        az, t, h, g, w = bufs  # out may alias z: it is written last
        torch.abs(z, out=az)
        torch.log(az, out=t)
        t.mul_(1.0 / 3.0).exp_()  # |z|^{1/3} (0 at z = 0)
        t.mul_(az)
        if m is not None:
            t.mul_(m)  # m·|z|^{4/3} (may overflow to inf: then ε = 0 and x = z)
        torch.div(neg_a, t, out=h)  # h = −ε ∈ [−inf, 0]
        h.clamp_min_(-_E23_STAR)
        torch.add(h, _E23_STAR, out=g)
        g.sign_()  # 1 where ε < ε* (x ≠ 0), 0 at and beyond the threshold (ties → 0)
        torch.add(cs[1], h, alpha=lead, out=w)  # Horner
        for c in cs[2:]:
            torch.addcmul(c, w, h, out=t)
            w, t = t, w
        for _ in range(newton):
            torch.mul(w, w, out=az)
            az.mul_(w)  # w³
            torch.addcmul(h, az, w, value=3.0, out=t)  # 3w⁴ − ε
            torch.add(minus_one, az, alpha=4.0, out=az)  # 4w³ − 1 ≥ 1
            torch.div(t, az, out=w)
        w.mul_(g)
        torch.mul(w, w, out=az)
        az.mul_(w)
        torch.mul(z, az, out=out)

    return kernel


def prox_ltwothirds(z: Tensor, mu: Tensor | float) -> Tensor:
    """Two-thirds thresholding (Cao et al. 2013 with λ̃ = 2·mu): argmin_x ½(x − z)² + mu·|x|^{2/3}.

    .. math::

        x = \\operatorname{sign}(z)\\Big(\\frac{|A| + \\sqrt{2|z|/|A| - |A|^2}}{2}\\Big)^3,\\quad
        |A| = \\tfrac{2}{\\sqrt3}\\tilde\\lambda^{1/4}\\cosh(\\varphi/3)^{1/2},\\quad
        \\varphi = \\operatorname{arccosh}\\big(\\tfrac{27 z^2}{16}\\tilde\\lambda^{-3/2}\\big)

    if :math:`|z| > \\tfrac23 (3\\tilde\\lambda^3)^{1/4}`, else 0 (ties → 0). Evaluated in the
    dimensionless variable u = |z|/λ̃^{3/4} so that no intermediate overflows.

    Example:
        >>> import torch
        >>> prox_ltwothirds(torch.tensor([0.5, 2.0]), 0.5)
        tensor([0.0000, 1.7219])
    """
    zf, m = _f(z, mu)
    s = (m**0.75 if isinstance(m, Tensor) else m**0.75) * 2.0**0.75  # λ̃^{3/4}
    az = zf.abs()
    thr = _C_TWOTHIRDS * s
    st = torch.as_tensor(s, dtype=zf.dtype, device=zf.device)
    u_raw = az / torch.clamp(st, min=torch.finfo(zf.dtype).tiny)
    u = torch.clamp(u_raw, min=_C_TWOTHIRDS, max=_U_MAX)
    phi = torch.arccosh((27.0 / 16.0) * u * u)
    a = (2.0 / math.sqrt(3.0)) * torch.sqrt(torch.cosh(phi / 3.0))
    g = ((a + torch.sqrt(torch.clamp_min(2.0 * u / a - a * a, 0.0))) * 0.5) ** 3
    x = torch.where(u_raw > _U_MAX, zf, torch.sign(zf) * (st * g))
    return torch.where(az > thr, x, 0.0).to(z.dtype)


def prox_lq(z: Tensor, mu: Tensor | float, q: float) -> Tensor:
    """argmin_x ½(x − z)² + mu·|x|^q for q ∈ {0, 1/2, 2/3, 1} (|x|^0 := [x ≠ 0]).

    Example:
        >>> import torch
        >>> prox_lq(torch.tensor([2.0]), 0.5, q=1.0)
        tensor([1.5000])
    """
    if q == 1.0:
        return prox_l1(z, mu)
    if q == 0.0:
        return prox_l0(z, mu)
    if q == 0.5:
        return prox_lhalf(z, mu)
    if abs(q - 2.0 / 3.0) < 1e-9:
        return prox_ltwothirds(z, mu)
    raise ValueError(f"q must be one of 0, 1/2, 2/3, 1, got {q!r}")


def lq_penalty(x: Tensor, q: float) -> Tensor:
    """|x|^q elementwise with |x|^0 := [x ≠ 0] (float, same dtype as ``x``)."""
    if q == 0.0:
        return (x != 0).to(x.dtype)
    if q == 1.0:
        return x.abs()
    return x.abs().pow(q)


# -- MCP and SCAD ---------------------------------------------------------------------------------
def _k(v: float, like: Tensor) -> float:
    """A non-negative Python constant capped at ``like``'s largest finite value (torch refuses overflow)."""
    return min(v, torch.finfo(like.dtype).max)


def _mcp_rho(ax: Tensor, lam: float, b: float) -> Tensor:
    return torch.where(ax <= _k(b * lam, ax), lam * ax - ax * ax / (2.0 * b), _k(0.5 * b * lam * lam, ax))


def _scad_rho(ax: Tensor, lam: float, a: float) -> Tensor:
    mid = (2.0 * a * lam * ax - ax * ax - lam * lam) / (2.0 * (a - 1.0))
    flat = _k(0.5 * (a + 1.0) * lam * lam, ax)
    return torch.where(ax <= _k(lam, ax), lam * ax, torch.where(ax <= _k(a * lam, ax), mid, flat))


def _best_of(az: Tensor, s: Tensor | float, cands: list[tuple[Tensor, Tensor | float]]) -> Tensor:
    """The candidate magnitude with the least ½(x − |z|)² + s·ρ(x); ties keep the earlier (smaller) one.

    ``cands`` holds (x, ρ(x)) pairs, ρ evaluated by the formula of the piece x lies on (cheap);
    x = 0 (ρ = 0) is always a candidate. ``s`` is finite, so s·ρ is never inf·0.
    """
    best = torch.zeros_like(az)
    best_val = 0.5 * az * az
    for c, pen in cands:
        val = 0.5 * (c - az) ** 2 + s * pen
        better = val < best_val
        best = torch.where(better, c, best)
        best_val = torch.where(better, val, best_val)
    return best


def prox_mcp(z: Tensor, s: Tensor | float, lam: float, b: float) -> Tensor:
    """Exact argmin_x ½(x − z)² + s·ρ(x) for MCP ρ(x) = λ|x| − x²/(2b) (|x| ≤ bλ), bλ²/2 (beyond).

    s·ρ_{λ,b} is MCP with λ' = sλ and b' = b/s. The minimizer is the best of:
    0, the stationary point of the inner piece clipped to [0, bλ] (when b' > 1, i.e. s < b), and
    max(|z|, bλ) on the flat piece. Ties keep the smaller magnitude (0 first).

    Example:
        >>> import torch
        >>> prox_mcp(torch.tensor([0.5, 2.0, 5.0]), 1.0, lam=1.0, b=3.0)
        tensor([0.0000, 1.5000, 5.0000])
    """
    zf, sf = _f(z, s)
    az = zf.abs()
    st = torch.as_tensor(sf, dtype=zf.dtype, device=zf.device)
    st = torch.clamp(st, max=torch.finfo(zf.dtype).max)
    inner = b * (az - st * lam) / torch.clamp_min(b - st, torch.finfo(zf.dtype).tiny)
    inner = torch.where(st < b, torch.clamp(inner, min=0.0, max=_k(b * lam, zf)), 0.0)
    flat = torch.clamp_min(az, _k(b * lam, zf))
    inner_pen = inner * (lam - inner / (2.0 * b))  # inner ∈ [0, bλ]
    best = _best_of(az, st, [(inner, inner_pen), (flat, _k(0.5 * b * lam * lam, zf))])
    return (torch.sign(zf) * best).to(z.dtype)


def prox_scad(z: Tensor, s: Tensor | float, lam: float, a: float) -> Tensor:
    """Exact argmin_x ½(x − z)² + s·ρ(x) for SCAD with parameters λ, a > 2 (the exact prox; Eq. 29 of the ProxGen paper only rescales λ).

    Per piece of ρ (|x| ≤ λ: λ|x|; λ < |x| ≤ aλ: −(x² − 2aλ|x| + λ²)/(2(a−1)); beyond: (a+1)λ²/2) the
    candidates are clamp(|z| − sλ, 0, λ), the middle piece's stationary point
    ((a−1)|z| − saλ)/(a−1−s) clipped to [λ, aλ] when it is convex (s < a − 1), and max(|z|, aλ); the
    minimizer is the best of 0 and these (ties keep the smaller magnitude).

    Example:
        >>> import torch
        >>> prox_scad(torch.tensor([0.5, 3.0, 5.0]), 1.0, lam=1.0, a=3.7)
        tensor([0.0000, 2.5882, 5.0000])
    """
    zf, sf = _f(z, s)
    az = zf.abs()
    st = torch.as_tensor(sf, dtype=zf.dtype, device=zf.device)
    st = torch.clamp(st, max=torch.finfo(zf.dtype).max)
    lam_k, alam_k = _k(lam, zf), _k(a * lam, zf)
    c1 = torch.clamp(az - st * lam, min=0.0, max=lam_k)
    mid = ((a - 1.0) * az - st * (a * lam)) / torch.clamp_min((a - 1.0) - st, torch.finfo(zf.dtype).tiny)
    c2 = torch.where(st < a - 1.0, torch.clamp(mid, min=lam_k, max=alam_k), lam_k)
    c3 = torch.clamp_min(az, alam_k)
    pen2 = (c2 * (2.0 * a * lam - c2) - lam * lam) / (2.0 * (a - 1.0))  # c2 ∈ [λ, aλ]
    best = _best_of(az, st, [(c1, lam * c1), (c2, pen2), (c3, _k(0.5 * (a + 1.0) * lam * lam, zf))])
    return (torch.sign(zf) * best).to(z.dtype)


def prox_mcp_paper(z: Tensor, s: Tensor | float, lam: float, b: float) -> Tensor:
    """ProxGen Eq. 23 as printed: sign(z)·min(b·max(|z| − sλ, 0)/(b − 1), |z|), b > 1 (not exact, P7).

    Example:
        >>> import torch
        >>> prox_mcp_paper(torch.tensor([0.5, 2.0, 5.0]), 1.0, lam=1.0, b=3.0)
        tensor([0.0000, 1.5000, 5.0000])
    """
    zf, sf = _f(z, s)
    az = zf.abs()
    li = sf * lam
    x = torch.minimum(b * torch.clamp_min(az - li, 0.0) / (b - 1.0), az)
    return (torch.sign(zf) * x).to(z.dtype)


def prox_scad_paper(z: Tensor, s: Tensor | float, lam: float, a: float) -> Tensor:
    """ProxGen Eq. 29 as printed: the unit SCAD prox with λ_i = sλ and ``a`` unchanged (not exact, P7).

    Example:
        >>> import torch
        >>> prox_scad_paper(torch.tensor([0.5, 3.0, 5.0]), 1.0, lam=1.0, a=3.7)
        tensor([0.0000, 2.5882, 5.0000])
    """
    zf, sf = _f(z, s)
    az = zf.abs()
    li = sf * lam
    soft = torch.clamp_min(az - li, 0.0)
    mid = ((a - 1.0) * az - a * li) / (a - 2.0)
    x = torch.where(az <= 2.0 * li, soft, torch.where(az <= a * li, mid, az))
    return (torch.sign(zf) * x).to(z.dtype)


# -- chunk kernels of the exact MCP/SCAD proxes (bit-identical to prox_mcp / prox_scad) --------------
def _scale_into(s_buf: Tensor, m: Tensor | None, step: float) -> Tensor:
    """s = step/metric capped at the largest finite value, exactly as ``finite_scale`` rounds it
    (``step / m`` is ``reciprocal(m) * step`` in PyTorch); without a metric, the rounded step."""
    big = torch.finfo(s_buf.dtype).max
    step = min(step, big) if math.isfinite(step) else big  # an infinite metric then gives 0, not NaN
    if m is None:
        return s_buf.fill_(step)
    torch.reciprocal(m, out=s_buf)
    return s_buf.mul_(step).clamp_max_(big)


def mcp_kernel(step: float, lam: float, b: float, dtype: torch.dtype):
    """:func:`prox_mcp` with s = step/metric as a ``chunked_map`` kernel (9 buffers, ~24 passes in cache).

    The same operations as :func:`prox_mcp` in the same order, with the boolean ``torch.where`` selects
    (slow on CPU) replaced by exact float-mask arithmetic: candidates are finite and non-negative and
    come in increasing order (inner ≤ bλ ≤ flat), so "candidate if better else best" is
    ``max(candidate·mask, best)``, and the running best value is ``min(value, best value)``.
    """
    probe = torch.empty(0, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    bl, flat_pen = _k(b * lam, probe), _k(0.5 * b * lam * lam, probe)

    # without a metric, s is prox_mcp's 0-dim tensor and the s-only operations run once
    st = torch.tensor(min(step, torch.finfo(dtype).max), dtype=dtype)
    st_lam, st_d, st_flat = st * lam, torch.clamp_min(b - st, tiny), st * flat_pen
    st_inner = bool(st < b)

    def kernel(z: Tensor, m: Tensor | None, out: Tensor, bufs: list[Tensor]) -> None:
        az, s, inner, d, flat, pen, bv, v, best = bufs  # out may alias z: written last
        torch.abs(z, out=az)
        if m is None:
            s = st
            torch.sub(az, st_lam, out=inner)
            inner.mul_(b).div_(st_d).clamp_(0.0, bl)
            if not st_inner:
                inner.zero_()
        else:
            _scale_into(s, m, step)
            torch.mul(s, lam, out=inner)
            torch.sub(az, inner, out=inner)
            inner.mul_(b)
            torch.neg(s, out=d).add_(b)
            d.clamp_min_(tiny)
            inner.div_(d)
            inner.clamp_(0.0, bl)
            torch.lt(s, b, out=d)  # the inner piece is a candidate only where s < b
            inner.mul_(d)
        torch.clamp_min(az, bl, out=flat)
        torch.div(inner, 2.0 * b, out=pen)
        torch.neg(pen, out=pen).add_(lam)
        pen.mul_(inner)  # ρ(inner) = inner·(λ − inner/(2b))
        torch.mul(az, 0.5, out=bv)
        bv.mul_(az)  # value of x = 0
        # candidate inner (best so far is 0)
        torch.sub(inner, az, out=v)
        v.mul_(v).mul_(0.5)
        pen.mul_(s)
        v.add_(pen)
        torch.lt(v, bv, out=d)
        torch.mul(inner, d, out=best)
        torch.minimum(v, bv, out=bv)
        # candidate flat
        torch.sub(flat, az, out=v)
        v.mul_(v).mul_(0.5)
        if m is None:
            v.add_(st_flat)
        else:
            torch.mul(s, flat_pen, out=pen)
            v.add_(pen)
        torch.lt(v, bv, out=d)
        flat.mul_(d)
        torch.maximum(flat, best, out=best)
        torch.sign(z, out=az)
        torch.mul(az, best, out=out)

    return kernel


def scad_kernel(step: float, lam: float, a: float, dtype: torch.dtype):
    """:func:`prox_scad` with s = step/metric as a ``chunked_map`` kernel (9 buffers, ~40 passes in cache).

    The same operations as :func:`prox_scad` in the same order; selects as in :func:`mcp_kernel`
    (candidates c1 ≤ λ ≤ c2 ≤ aλ ≤ c3 are finite, non-negative and increasing).
    """
    probe = torch.empty(0, dtype=dtype)
    tiny = torch.finfo(dtype).tiny
    lam_k, alam_k = _k(lam, probe), _k(a * lam, probe)
    flat_pen = _k(0.5 * (a + 1.0) * lam * lam, probe)

    # without a metric, s is prox_scad's 0-dim tensor and the s-only operations run once
    st = torch.tensor(min(step, torch.finfo(dtype).max), dtype=dtype)
    st_lam, st_alam, st_flat = st * lam, st * (a * lam), st * flat_pen
    st_d = torch.clamp_min((a - 1.0) - st, tiny)
    st_mid = bool(st < a - 1.0)

    def kernel(z: Tensor, m: Tensor | None, out: Tensor, bufs: list[Tensor]) -> None:
        az, s, c, d, x, pen, bv, v, best = bufs  # out may alias z: written last
        if m is None:
            s = st
        else:
            _scale_into(s, m, step)
        torch.abs(z, out=az)
        torch.mul(az, 0.5, out=bv)
        bv.mul_(az)  # value of x = 0
        # c1 = clamp(|z| − sλ, 0, λ), ρ = λ·c1
        if m is None:
            torch.sub(az, st_lam, out=c)
        else:
            torch.mul(s, lam, out=c)
            torch.sub(az, c, out=c)
        c.clamp_(0.0, lam_k)
        torch.sub(c, az, out=v)
        v.mul_(v).mul_(0.5)
        torch.mul(c, lam, out=pen)
        pen.mul_(s)
        v.add_(pen)
        torch.lt(v, bv, out=d)
        torch.mul(c, d, out=best)
        torch.minimum(v, bv, out=bv)
        # c2: the middle piece's stationary point clipped to [λ, aλ] where s < a − 1, else λ
        torch.mul(az, a - 1.0, out=x)
        if m is None:
            x.sub_(st_alam).div_(st_d).clamp_(lam_k, alam_k)
            if not st_mid:
                x.fill_(lam_k)
        else:
            torch.mul(s, a * lam, out=c)
            x.sub_(c)
            torch.neg(s, out=d).add_(a - 1.0)
            d.clamp_min_(tiny)
            x.div_(d)
            x.clamp_(lam_k, alam_k)
            torch.lt(s, a - 1.0, out=d)
            x.mul_(d).clamp_min_(lam_k)
        torch.neg(x, out=pen).add_(2.0 * a * lam)
        pen.mul_(x).sub_(lam * lam).div_(2.0 * (a - 1.0))
        torch.sub(x, az, out=v)
        v.mul_(v).mul_(0.5)
        pen.mul_(s)
        v.add_(pen)
        torch.lt(v, bv, out=d)
        x.mul_(d)
        torch.maximum(x, best, out=best)
        torch.minimum(v, bv, out=bv)
        # c3 = max(|z|, aλ) on the flat piece
        torch.clamp_min(az, alam_k, out=x)
        torch.sub(x, az, out=v)
        v.mul_(v).mul_(0.5)
        if m is None:
            v.add_(st_flat)
        else:
            torch.mul(s, flat_pen, out=pen)
            v.add_(pen)
        torch.lt(v, bv, out=d)
        x.mul_(d)
        torch.maximum(x, best, out=best)
        torch.sign(z, out=az)
        torch.mul(az, best, out=out)

    return kernel
