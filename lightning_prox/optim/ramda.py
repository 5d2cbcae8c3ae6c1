"""RAMDA: regularized adaptive momentum dual averaging (Huang & Lee, NeurIPS 2024).

Algorithm 1 of the paper: MADGRAD's dual-averaged gradient V and cube-root preconditioner P, a
regularized subproblem solved by the regularizer's screening + iterative solver (``Regularizer.prox_multi``;
exact closed form for elementwise regularizers), and averaging with the
previous iterate. Stage-wise training (Huang & Lee, 2024, Appendix A.1) restarts it with :meth:`RAMDA.restart`, which
:class:`lightning_prox.callbacks.StageRestart` calls at epoch milestones. Reference implementation:
https://github.com/ismoptgroup/RAMDA (re-derived from the paper, not copied).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..regularizers._base import Regularizer, run_prox_multi
from ..regularizers._elementwise import ElementwiseRegularizer
from ..regularizers.group_lasso import GroupLasso
from . import _ramda_kernels
from ._base import (
    ProxOptimizer,
    _check_finite_doc,
    _resolve_implementation,
    _torch_flags_doc,
    group_regularizer,
)
from ._ramda_kernels import ramda_native_
from .rmda import RMDA, _bucket_by_counters, _check_number, average_, state_dtype

__all__ = ["RAMDA", "ramda"]

#: ``implementation="auto"`` runs the native step on CPU when the parameters stepped hold this many
#: values in all (the functional :func:`ramda` applies it per bucket): there it is several times faster
#: than eager; small models keep the eager path and never need a C++ compiler.
AUTO_NATIVE_NUMEL = 1 << 20


def __getattr__(name: str) -> Any:
    if name == "AUTO_COMPILE_NUMEL":  # the round-2 name
        warnings.warn(
            "AUTO_COMPILE_NUMEL is deprecated; use AUTO_NATIVE_NUMEL", DeprecationWarning, stacklevel=2
        )
        return AUTO_NATIVE_NUMEL
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _solve(
    reg: Regularizer | None,
    zs: list[Tensor],
    alpha: float,
    metrics: list[Tensor],
    x0s: list[Tensor],
    max_iters: int,
    rtol: float,
    info: dict[str, Any] | None,
    out: list[Tensor],
) -> None:
    """Ŵ = argmin_x α·ψ(x) + ½Σ P·(x − z)² for every tensor, through the library's multi-tensor solver,
    written into ``out`` (which may alias ``x0s``)."""
    if reg is None or reg.lam == 0.0:
        torch._foreach_copy_(out, zs)
        return
    if hasattr(reg, "_prox_multi"):
        # unchecked: P = ∛U + ε > 0 wherever the gradients were finite (a NaN one, possible only
        # without the finite check, gives NaN there instead of an error after V and U changed)
        run_prox_multi(reg, zs, alpha, metrics, x0s, max_iters=max_iters, rtol=rtol, info=info, out=out)
        return
    torch._foreach_copy_(out, [reg.prox(z, alpha, m) for z, m in zip(zs, metrics)])


#: elements per chunk of :func:`_precondition` on CPU (a few float32 buffers stay in cache)
_CHUNK = 1 << 16


def _cbrt_(y: Tensor, u: Tensor, t: Tensor) -> Tensor:
    """y ← ∛u for u ≥ 0 (in place into ``y``, ``t`` a scratch buffer): exp(log(u)/3), a third of the cost of
    ``pow(u, 1/3)`` on CPU, then one Newton step y ← (2y + u/y²)/3, which brings the few-ulp error of
    exp/log down to the rounding of the step itself (u = 0 gives exactly 0)."""
    torch.log(u, out=y)
    y.mul_(1.0 / 3.0).exp_()
    torch.mul(y, y, out=t)
    # [tiny, max]: u = 0 divides by tiny (0), u = +inf (an overflowed U) gives inf/max = inf, not inf/inf
    t.clamp_(torch.finfo(t.dtype).tiny, torch.finfo(t.dtype).max)
    torch.div(u, t, out=t)
    t.add_(y, alpha=2.0)
    return torch.mul(t, 1.0 / 3.0, out=y)


def _precondition(
    us: list[Tensor], vs: list[Tensor], w0s: list[Tensor], eps: float
) -> tuple[list[Tensor], list[Tensor]]:
    """P = ∛U + ε and z = W0 − V/P for every tensor, chunk by chunk on CPU (no full-size temporaries)."""
    ps, zs = [], []
    for u, v, w0 in zip(us, vs, w0s):
        p = torch.empty_like(u)
        z = torch.empty_like(w0)
        ps.append(p)
        zs.append(z)
        n = u.numel()
        if n == 0:
            continue
        contiguous = all(x.is_contiguous() for x in (u, v, w0))
        chunk = _CHUNK if u.device.type == "cpu" and contiguous else n
        t_all = torch.empty(min(chunk, n), dtype=u.dtype, device=u.device)
        uf, vf, wf = (x.view(-1) if contiguous else x for x in (u, v, w0))
        pf, zf = (x.view(-1) if contiguous else x for x in (p, z))
        for a in range(0, n, chunk):
            sl = slice(a, a + chunk)
            uc, vc, wc, pc, zc = (x[sl] if chunk < n else x for x in (uf, vf, wf, pf, zf))
            t = t_all[: uc.numel()].view(uc.shape)
            _cbrt_(pc, uc, t)
            pc.add_(eps)
            torch.div(vc, pc, out=zc)
            torch.sub(wc, zc, out=zc)  # z = W0 − V / P
    return ps, zs


def _like_sums(grads: list[Tensor], sums: list[Tensor]) -> list[Tensor]:
    """The gradients in the sums' dtype (float32 for half-precision parameters: g² in float16
    underflows for |g| < 2.4e-4), the others as they are."""
    return [g if g.dtype == u.dtype else g.to(u.dtype) for g, u in zip(grads, sums)]


def _warm_starts(reg: Regularizer | None, params: list[Tensor], prox_points: list[Tensor]) -> list[Tensor]:
    """Warm starts of the subproblem solver: W_{t−1} for proximal gradient (the authors' choice), the
    last solution Ŵ_{t−1} for an exact solver (``solver="newton"``), whose start only seeds the root
    search (c = τw/‖Ŵ_g‖ is nearly the new root when the subproblem moved little)."""
    return prox_points if getattr(reg, "warm_start", "iterate") == "solution" else params


def _single_tensor_ramda(
    params: list[Tensor],
    grads: list[Tensor],
    initial_points: list[Tensor],
    grad_sums: list[Tensor],
    grad_sq_sums: list[Tensor],
    prox_points: list[Tensor],
    *,
    s: float,
    alpha: float,
    c: float,
    eps: float,
    regularizer: Regularizer | None,
    max_inner_iters: int,
    inner_rtol: float,
    info: dict[str, Any] | None,
) -> None:
    """Reference for-loop implementation of one RAMDA step (the subproblem is solved tensor by tensor)."""
    for p, g, w0, v, u, w_hat in zip(params, grads, initial_points, grad_sums, grad_sq_sums, prox_points):
        v.add_(g, alpha=s)
        g = g.to(u.dtype)  # float32 sums for half-precision parameters: g² is formed in float32
        u.addcmul_(g, g, value=s)
        (P,), (z,) = _precondition([u], [v], [w0], eps)
        (x0,) = _warm_starts(regularizer, [p], [w_hat])
        _solve(regularizer, [z], alpha, [P], [x0], max_inner_iters, inner_rtol, info, [w_hat])
        average_([p], [w_hat], c)


def _multi_tensor_ramda(
    params: list[Tensor],
    grads: list[Tensor],
    initial_points: list[Tensor],
    grad_sums: list[Tensor],
    grad_sq_sums: list[Tensor],
    prox_points: list[Tensor],
    *,
    s: float,
    alpha: float,
    c: float,
    eps: float,
    regularizer: Regularizer | None,
    max_inner_iters: int,
    inner_rtol: float,
    info: dict[str, Any] | None,
    implementation: str = "eager",
    prox_point_norms: list[Tensor] | None = None,
) -> None:
    """Multi-tensor RAMDA step: foreach arithmetic and one solver call over all tensors of the bucket,
    or the native kernels of :mod:`._ramda_kernels` where they apply (``implementation``)."""
    if implementation in ("auto", "native") and all(p.device.type == "cpu" for p in params):
        big = implementation == "native" or sum(p.numel() for p in params) >= AUTO_NATIVE_NUMEL
        if big and ramda_native_(
            params, grads, initial_points, grad_sums, grad_sq_sums, prox_points,
            s=s, alpha=alpha, c=c, eps=eps, regularizer=regularizer, max_inner_iters=max_inner_iters,
            inner_rtol=inner_rtol, info=info, prox_point_norms=prox_point_norms,
        ):  # fmt: skip
            return
    for t in prox_point_norms or []:
        t.resize_(0)  # the native path's cached ‖Ŵ_g‖ go stale here: drop them
    _accumulate_(grads, grad_sums, grad_sq_sums, s)
    _solve_and_average_(
        params, initial_points, grad_sums, grad_sq_sums, prox_points,
        alpha=alpha, c=c, eps=eps, regularizer=regularizer, max_inner_iters=max_inner_iters,
        inner_rtol=inner_rtol, info=info,
    )  # fmt: skip


def _accumulate_(grads: list[Tensor], grad_sums: list[Tensor], grad_sq_sums: list[Tensor], s: float) -> None:
    """The first half of an eager RAMDA step: V += s·g, U += s·g² (g² in the sums' dtype)."""
    torch._foreach_add_(grad_sums, grads, alpha=s)
    grads = _like_sums(grads, grad_sq_sums)
    torch._foreach_addcmul_(grad_sq_sums, grads, grads, value=s)


def _solve_and_average_(
    params: list[Tensor],
    initial_points: list[Tensor],
    grad_sums: list[Tensor],
    grad_sq_sums: list[Tensor],
    prox_points: list[Tensor],
    *,
    alpha: float,
    c: float,
    eps: float,
    regularizer: Regularizer | None,
    max_inner_iters: int,
    inner_rtol: float,
    info: dict[str, Any] | None,
) -> None:
    """The second half: P = ∛U + ε, z = W_0 − V/P, Ŵ = prox^P_{αψ}(z) (into ``prox_points``), then
    W ← (1 − c)·W + c·Ŵ. P and z exist for one tensor at a time where the regularizer solves every
    tensor on its own (:func:`_solves_per_tensor`; the same results as one call over all), else for
    the whole bucket (a solver that couples the tensors gets them in one call)."""
    x0s = _warm_starts(regularizer, params, prox_points)
    n = len(params)
    for idx in [[i] for i in range(n)] if _solves_per_tensor(regularizer) else [list(range(n))]:
        ws, us, vs, w0s, xs, x0 = ([t[i] for i in idx] for t in (params, grad_sq_sums, grad_sums, initial_points,
                                                                 prox_points, x0s))  # fmt: skip
        P, zs = _precondition(us, vs, w0s, eps)
        part: dict[str, Any] | None = None if info is None else {}
        _solve(regularizer, zs, alpha, P, x0, max_inner_iters, inner_rtol, part, xs)
        del P, zs  # freed before the next tensor's
        average_(ws, xs, c)
        if part:  # the statistics of one call over all: iterations the max, screened groups the sum
            info["inner_iters"] = max(int(info.get("inner_iters", 0)), int(part.get("inner_iters", 0)))
            info["screened"] = int(info.get("screened", 0)) + int(part.get("screened", 0))


def _solves_per_tensor(reg: Regularizer | None) -> bool:
    """True when ``reg.prox_multi`` maps every tensor independently of the others (closed forms, the
    exact per-tensor Newton group solve), so that it can be called one tensor at a time."""
    return (
        reg is None
        or isinstance(reg, ElementwiseRegularizer)
        or (type(reg) is GroupLasso and reg.solver == "newton")
    )


def ramda(
    params: list[Tensor],
    grads: list[Tensor],
    initial_points: list[Tensor],
    grad_sums: list[Tensor],
    grad_sq_sums: list[Tensor],
    prox_points: list[Tensor],
    *,
    step: int,
    alpha: float,
    lr: float,
    momentum: float,
    eps: float,
    regularizer: Regularizer | None = None,
    max_inner_iters: int = 100,
    inner_rtol: float = 1e-8,
    foreach: bool = True,
    info: dict[str, Any] | None = None,
    implementation: str = "eager",
    scratch: Any = None,
    prox_point_norms: list[Tensor] | None = None,
) -> float:
    """Functional RAMDA: one step for tensors sharing the step counter ``step`` (already incremented).

    Updates ``params``, V, U and Ŵ in place and returns the new α_t. ``info`` (a dict) receives the
    solver's statistics (``inner_iters``, ``screened``). ``implementation`` (multi-tensor path only)
    is ``"eager"``, ``"native"`` or ``"auto"``, as in :class:`RAMDA` (the round-2 values ``"fast"`` and
    ``"compiled"`` still work and warn); the native group-lasso path keeps the group norms of Ŵ in
    ``prox_point_norms``. ``scratch`` is no longer used (the native step keeps no buffers between
    steps; passing one warns). See :class:`RAMDA` for the math.
    """
    implementation, foreach = _resolve_implementation(implementation, foreach)
    if scratch is not None:
        warnings.warn("ramda(scratch=...) is deprecated and ignored", DeprecationWarning, stacklevel=2)
    s = lr * math.sqrt(step)
    alpha = alpha + s
    extra = {"implementation": implementation, "prox_point_norms": prox_point_norms} if foreach else {}
    if not foreach:
        for t in prox_point_norms or []:
            t.resize_(0)  # the native path's cached ‖Ŵ_g‖ go stale here: drop them
    fn = _multi_tensor_ramda if foreach else _single_tensor_ramda
    with torch.no_grad():
        fn(
            params,
            grads,
            initial_points,
            grad_sums,
            grad_sq_sums,
            prox_points,
            s=s,
            alpha=alpha,
            c=momentum,
            eps=eps,
            regularizer=regularizer,
            max_inner_iters=max_inner_iters,
            inner_rtol=inner_rtol,
            info=info,
            **extra,
        )
    return alpha


class RAMDA(RMDA):
    r"""Regularized adaptive momentum dual averaging (RAMDA, Huang & Lee, 2024, Algorithm 1; MADGRAD without ψ).

    .. math::

        \begin{aligned}
        &\textbf{input: } W_0 \text{ (the parameters at the first step or the last restart)},\
            \eta \text{ (lr)},\ c \text{ (momentum)},\ \epsilon \text{ (eps)},\
            \psi \text{ (regularizer, } \lambda \text{ = lam)},\ T_2 \text{ (max\_inner\_iters)} \\
        &\textbf{initialize: } V_0 \leftarrow 0,\ U_0 \leftarrow 0,\ \alpha_0 \leftarrow 0 \\
        &\textbf{for } t = 1, 2, \dots: \\
        &\quad g_t \leftarrow \nabla f(W_{t-1}) \\
        &\quad s_t \leftarrow \eta \sqrt{t},\quad \alpha_t \leftarrow \alpha_{t-1} + s_t \\
        &\quad V_t \leftarrow V_{t-1} + s_t g_t,\quad U_t \leftarrow U_{t-1} + s_t\, g_t \odot g_t \\
        &\quad P_t \leftarrow \sqrt[3]{U_t} + \epsilon \\
        &\quad \hat W_t \approx \operatorname{argmin}_W\ \alpha_t \psi(W) + \langle V_t, W\rangle
            + \tfrac12 \langle W - W_0, P_t \odot (W - W_0)\rangle
            = \operatorname{prox}^{P_t}_{\alpha_t\psi}\big(z_t\big),\quad z_t = W_0 - V_t / P_t \\
        &\quad W_t \leftarrow (1 - c)\, W_{t-1} + c\, \hat W_t
        \end{aligned}

    The subproblem is ``regularizer.prox_multi(z, alpha, metrics=P, x0s=..., out=Ŵ)``: exact closed form
    for elementwise regularizers (L1, ...) and for a group-uniform P; for group lasso / nuclear norm under
    a non-uniform P, the library's exact zero-group screening (a group is zero iff
    ‖P_g ⊙ W0_g − V_g‖ ≤ α_t λ w_g) plus the regularizer's solver: for ``GroupLasso(solver="newton")``
    (the default) the exact per-group Newton root search, warm-started from the last solution Ŵ_{t−1}
    (usually 2–3 iterations); for ``solver="pg"`` and the nuclear norm the authors' inexact proximal
    gradient, warm-started at W_{t−1}, with per-group step sizes 1/max_{i∈g} P_i, stopped when the
    relative objective decrease falls below ``inner_rtol`` (at least 2 and at most ``max_inner_iters``
    iterations; Huang & Lee, 2024, Section 6 "Subproblem", and ``pgd_solver_glasso`` in the
    authors' ismoptgroup/ramda_exp code). One solver call covers all groups of all tensors of a
    param group. With ψ = 0,
    Ŵ_t = W_0 − V_t / P_t: the MADGRAD closed form.

    Symbols and code: η = ``group["lr"]``, c = ``group["momentum"]`` (weight of the new point), ε =
    ``group["eps"]``, λ = ``group["lam"]``; per parameter ``state["step"]`` = t, ``state["alpha"]`` =
    α_t, ``state["initial_point"]`` = W_0, ``state["grad_sum"]`` = V_t, ``state["grad_sq_sum"]`` = U_t,
    ``state["prox_point"]`` = Ŵ_t; the native group-lasso path also keeps ``state["prox_point_norms"]``,
    the group norms ‖Ŵ_{t,g}‖ that warm-start the next solve (empty otherwise).

    **The last proximal solution Ŵ_t** (``state["prox_point"]``, :meth:`prox_points`) carries the exact
    structure at every step; W_t reaches it once c = 1 (Huang & Lee, 2024, Theorem 3: manifold identification). Solver statistics of the last
    step: :attr:`solver_info` (``inner_iters``, ``screened`` per solver call, as the regularizer
    reports them).

    **Stages.** :meth:`restart` (Huang & Lee, 2024, Appendix A.1; the authors' ``Core/scheduler.py``): t → 0, W_0 ← W, V, U, α ← 0 and
    ε ← ε·``eps_factor``; η and c schedules are untouched.

    .. note::
        ε is added *outside* the cube root (Huang & Lee, 2024, Algorithm 1, as in the authors' code). The solver uses per-group step sizes
        and a relative-decrease stop, like the authors' code, not the paper's global step and
        subgradient test (condition (7) of Huang & Lee, 2024).

    Memory: the state is 16 bytes per parameter value (W_0, V, U and Ŵ in float32 for float32 and half
    parameters) plus one value per group of the native group-lasso path. The native step keeps no
    buffers between steps and allocates none of the parameters' size (its per-thread tile buffers
    hold a few hundred KB); the eager step builds P and z for one tensor at a time.

    Args:
        params: tensors, ``(name, tensor)`` pairs or param-group dicts; a group may carry its own
            ``"regularizer"`` and ``"lam"``.
        lr: η ≥ 0 (``lr = 0`` adds nothing to V, U and α; with α = 0 the prox is the identity).
        momentum: c ∈ (0, 1], the weight of the new point Ŵ_t.
        eps: ε > 0 in P_t.
        regularizer: default regularizer of every group (``None``: MADGRAD).
        max_inner_iters: cap T_2 on the inner proximal-gradient iterations (≥ 2).
        inner_rtol: relative objective decrease that stops the inner solver (> 0).
        {check_finite}
        implementation: ``"auto"`` (default: ``"native"`` when the CPU parameters stepped hold at
            least ``AUTO_NATIVE_NUMEL`` = 2^20 values in all, ``"eager"`` otherwise), ``"eager"``
            (multi-tensor torch ops and the regularizer's ``prox_multi``) or ``"native"`` (the step as
            one native C++ pass per tensor on CPU, for no regularizer, ``L1`` and
            ``GroupLasso(solver="newton")``; for group lasso it runs tile by tile, a tile being whole
            groups that fit in cache: V, U, P and P⊙z, screening, the Newton root search of the eager
            solver (same start, bracket and stop rule) on the cached tile, then Ŵ and W). The kernels build on first use with
            the system C++ compiler, about 3 s, cached on disk (``~/.cache/lightning_prox``); anything
            else, or a machine without a working compiler (one warning), runs eager). Both agree to
            rounding (within 1e-6 of the weights' scale in the tests) with the same zeros. While a
            pre-prox hook is registered the step runs eager, split at the hook. The round-1 values
            ``"fast"`` and ``"compiled"`` still work and warn.
        {torch_flags}

    Example:
        >>> import torch
        >>> from lightning_prox.regularizers import L1
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 0.5]))
        >>> opt = RAMDA([w], lr=0.1, momentum=1.0, eps=1e-6, regularizer=L1(0.2))
        >>> w.grad = torch.tensor([1.0, -0.001])
        >>> opt.step()
        >>> w.data  # P = ∛(0.1·g²) + ε, z = W0 − 0.1·g/P = [0.785, 0.522], threshold 0.1·λ/P = [0.043, 4.3]
        tensor([0.7415, 0.0000])
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]],
        lr: float = 1e-2,
        momentum: float = 1e-2,
        eps: float = 1e-6,
        regularizer: Regularizer | None = None,
        max_inner_iters: int = 100,
        inner_rtol: float = 1e-8,
        *,
        check_finite: bool = True,
        implementation: str = "auto",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        #: Solver statistics of the last :meth:`step`, one dict per solver call (``inner_iters``,
        #: ``screened`` as written by ``Regularizer.prox_multi``); empty without an iterative solver.
        self.solver_info: list[dict[str, Any]] = []
        self._step_impl = "eager"
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "eps": eps,
            "regularizer": regularizer,
            "max_inner_iters": max_inner_iters,
            "inner_rtol": inner_rtol,
        }
        ProxOptimizer.__init__(
            self,
            params,
            defaults,
            check_finite=check_finite,
            implementation=implementation,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            capturable=capturable,
            differentiable=differentiable,
        )

    _setstate_defaults: ClassVar[dict[str, Any]] = {"max_inner_iters": 100, "inner_rtol": 1e-8}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("solver_info", [])
        self.__dict__.setdefault("_step_impl", "eager")

    def _native_libraries(self) -> list[tuple[str, Any]]:
        numel = sum(p.numel() for g in self.param_groups for p in g["params"] if p.device.type == "cpu")
        native = self.implementation == "native" or numel >= AUTO_NATIVE_NUMEL
        return [("_ramda_kernels.cpp", _ramda_kernels.KERNELS)] if native else []

    def _check_group(self, group: dict[str, Any]) -> None:
        super()._check_group(group)
        _check_number("eps", group["eps"], 0.0)
        _check_number("inner_rtol", group["inner_rtol"], 0.0)
        m = group["max_inner_iters"]
        if isinstance(m, bool) or not isinstance(m, int) or m < 2:
            raise ValueError(
                f"max_inner_iters must be an int >= 2 (the solver runs at least 2 iterations), got {m!r}"
            )

    def _init_state(self, p: Tensor) -> dict[str, Any]:
        st = self.state[p]
        if not st:
            super()._init_state(p)
            st["grad_sq_sum"] = torch.zeros_like(p, dtype=state_dtype(p), memory_format=torch.preserve_format)
        return st

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One RAMDA step for every group. ``closure`` (optional) re-evaluates the loss with grad enabled."""
        impl = self.implementation
        if impl == "auto":  # decided for the whole model: once native, small groups gain too
            numel = sum(
                p.numel()
                for g in self.param_groups
                for p in g["params"]
                if p.grad is not None and p.device.type == "cpu"
            )
            impl = "native" if numel >= AUTO_NATIVE_NUMEL else "eager"
        self._step_impl = impl
        self.solver_info = []
        return super().step(closure)

    def _smooth_step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        state: list[dict[str, Any]],
        info: dict[str, Any],
        *,
        fuse_prox: bool,
    ) -> list[tuple[list[int], float]] | None:
        """The whole step per bucket when ``fuse_prox`` (``None`` returned: nothing left for the prox
        half); else V += s·g, U += s·g² per bucket, returning (indices, α_t) per bucket."""
        reg = group_regularizer(group)
        buckets = []
        for (_, _, step, alpha), idx in _bucket_by_counters(params, state).items():
            sts = [state[i] for i in idx]
            t = step + 1
            s = group["lr"] * math.sqrt(t)
            if fuse_prox:
                bucket_info: dict[str, Any] = {}
                ramda(
                    [params[i] for i in idx],
                    [grads[i] for i in idx],
                    [st["initial_point"] for st in sts],
                    [st["grad_sum"] for st in sts],
                    [st["grad_sq_sum"] for st in sts],
                    [st["prox_point"] for st in sts],
                    step=t,
                    alpha=alpha,
                    lr=group["lr"],
                    momentum=group["momentum"],
                    eps=group["eps"],
                    regularizer=reg if alpha + s > 0 else None,  # α = 0 (lr = 0): the identity
                    max_inner_iters=group["max_inner_iters"],
                    inner_rtol=group["inner_rtol"],
                    foreach=group["foreach"] is not False,
                    info=bucket_info,
                    implementation=self._step_impl,
                    prox_point_norms=[
                        st.setdefault("prox_point_norms", params[i].new_empty(0)) for i, st in zip(idx, sts)
                    ],
                )
                if bucket_info:
                    self.solver_info.append(bucket_info)
                    info.update(bucket_info)
            else:
                _accumulate_(
                    [grads[i] for i in idx],
                    [st["grad_sum"] for st in sts],
                    [st["grad_sq_sum"] for st in sts],
                    s,
                )
                for st in sts:
                    st.get("prox_point_norms", params[0].new_empty(0)).resize_(0)  # stale after this path
                buckets.append((idx, alpha + s))
            for st in sts:
                st["step"], st["alpha"] = t, alpha + s
        return None if fuse_prox else buckets

    def _prox_step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        state: list[dict[str, Any]],
        ctx: list[tuple[list[int], float]] | None,
        info: dict[str, Any],
    ) -> None:
        """P = ∛U + ε, z = W_0 − V/P, Ŵ = prox^P_{αψ}(z), W ← (1 − c)·W + c·Ŵ (after pre-prox hooks)."""
        if ctx is None:
            return
        reg, c = group_regularizer(group), group["momentum"]
        for idx, alpha in ctx:
            sts = [state[i] for i in idx]
            bucket_info: dict[str, Any] = {}
            _solve_and_average_(
                [params[i] for i in idx],
                [st["initial_point"] for st in sts],
                [st["grad_sum"] for st in sts],
                [st["grad_sq_sum"] for st in sts],
                [st["prox_point"] for st in sts],
                alpha=alpha,
                c=c,
                eps=group["eps"],
                regularizer=reg if alpha > 0 else None,  # α = 0 (lr = 0 so far): the identity
                max_inner_iters=group["max_inner_iters"],
                inner_rtol=group["inner_rtol"],
                info=bucket_info,
            )
            if bucket_info:
                self.solver_info.append(bucket_info)
                info.update(bucket_info)

    @torch.no_grad()
    def restart(self, eps_factor: float = 1.0) -> None:
        """Start a new stage (Huang & Lee, 2024, Appendix A.1): t → 0, W_0 ← W, V, U, α ← 0, ε ← ε·eps_factor.

        The learning rate and c are not touched (their schedules continue). Ŵ keeps its last value.

        Args:
            eps_factor: factor > 0 applied to every group's ε (the authors use the lr factor, 0.1).
        """
        super().restart(eps_factor)
        for group in self.param_groups:
            group["eps"] = group["eps"] * eps_factor
            for p in group["params"]:
                st = self.state.get(p)
                if st:
                    st["grad_sq_sum"].zero_()


RAMDA.__doc__ = (RAMDA.__doc__ or "").replace("{check_finite}", _check_finite_doc)
RAMDA.__doc__ = RAMDA.__doc__.replace("{torch_flags}", _torch_flags_doc)
