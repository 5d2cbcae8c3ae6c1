"""RMDA: regularized momentum dual averaging (Huang, Chen & Lee, ICLR 2022).

The non-adaptive member of the RMDA/RAMDA family: a scalar preconditioner β_t = √t, so the dual-averaging
subproblem is solved exactly by the regularizer's proximal operator. Without a regularizer it is MDA
(Jelassi & Defazio, 2020). Stage-wise training (Huang & Lee, NeurIPS 2024, Appendix A.1) restarts it with :meth:`RMDA.restart`,
which :class:`lightning_prox.callbacks.StageRestart` calls at epoch milestones.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from ..regularizers._base import Regularizer
from . import _rmda_kernels
from ._base import ProxOptimizer, _check_finite_doc, _implementation_doc, _torch_flags_doc, group_regularizer
from ._prox import prox_tensors_
from .proxgen import AUTO_NATIVE_NUMEL

__all__ = ["RMDA"]


def _check_number(name: str, value: Any, low: float, high: float = math.inf, low_open: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        if high < math.inf:
            bound += f" and <= {high}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


_HALF = (torch.float16, torch.bfloat16)


def state_dtype(p: Tensor) -> torch.dtype:
    """The dtype of the dual-averaging state of ``p``: float32 for half-precision parameters (sums of
    s·g and s·g² lose their small terms, or underflow, in float16), else the parameter's own."""
    return torch.float32 if p.dtype in _HALF else p.dtype


def average_(params: list[Tensor], points: list[Tensor], c: float) -> None:
    """W ← (1 − c)·W + c·Ŵ in place (``points`` may be float32 for half-precision ``params``)."""
    if c == 1.0:
        torch._foreach_copy_(params, points)
    elif all(p.dtype == w.dtype for p, w in zip(params, points)):
        torch._foreach_lerp_(params, points, c)
    else:
        for p, w in zip(params, points):
            p.copy_(torch.lerp(p.to(w.dtype), w, c))


def _bucket_by_counters(
    params: list[Tensor], states: list[dict[str, Any]]
) -> dict[tuple[Any, ...], list[int]]:
    """Indices of ``params`` grouped by (device, dtype, step, alpha): one multi-tensor call per bucket.

    Parameters of one group normally share their counters; they differ only when some received no
    gradient on some steps (they are then skipped, as in ``torch.optim``).
    """
    buckets: dict[tuple[Any, ...], list[int]] = defaultdict(list)
    for i, (p, st) in enumerate(zip(params, states)):
        buckets[(p.device, p.dtype, st["step"], st["alpha"])].append(i)
    return buckets


class RMDA(ProxOptimizer):
    r"""Regularized momentum dual averaging (RMDA; MDA when no regularizer).

    .. math::

        \begin{aligned}
        &\textbf{input: } W_0 \text{ (the parameters at the first step or the last restart)},\
            \eta \text{ (lr)},\ c \text{ (momentum)},\ \psi \text{ (regularizer, strength } \lambda
            \text{ = lam)} \\
        &\textbf{initialize: } V_0 \leftarrow 0,\ \alpha_0 \leftarrow 0 \\
        &\textbf{for } t = 1, 2, \dots: \\
        &\quad g_t \leftarrow \nabla f(W_{t-1}) \\
        &\quad s_t \leftarrow \eta \sqrt{t},\quad \beta_t \leftarrow \sqrt{t},\quad
            \alpha_t \leftarrow \alpha_{t-1} + s_t \\
        &\quad V_t \leftarrow V_{t-1} + s_t g_t \\
        &\quad \hat W_t \leftarrow \operatorname{argmin}_W\ \langle V_t, W\rangle
            + \tfrac{\beta_t}{2}\lVert W - W_0\rVert^2 + \alpha_t \psi(W)
            = \operatorname{prox}_{(\alpha_t/\beta_t)\psi}\big(W_0 - V_t/\beta_t\big) \\
        &\quad W_t \leftarrow (1 - c)\, W_{t-1} + c\, \hat W_t
        \end{aligned}

    Symbols and code: η = ``group["lr"]``, c = ``group["momentum"]`` (the weight of the *new* point:
    ``momentum=1`` means no averaging, as in the authors' code), λ = ``group["lam"]``; per parameter
    ``state["step"]`` = t (int), ``state["alpha"]`` = α_t (float), ``state["initial_point"]`` = W_0,
    ``state["grad_sum"]`` = V_t and ``state["prox_point"]`` = Ŵ_t. With ψ = 0, Ŵ_t = W_0 − V_t/β_t
    and the update is MDA.

    **The last proximal solution Ŵ_t.** ``state["prox_point"]`` (also :meth:`prox_points`) is the exact
    prox output. It carries the regularizer's exact structure (exact zero groups) at every step, while
    the averaged iterate W_t has exact zeros only where Ŵ has been zero long enough or once c = 1
    (Huang & Lee, 2024, Theorem 3: manifold identification): log sparsity of Ŵ to watch the structure that W_t will take once
    :class:`~lightning_prox.callbacks.StageRestart` has raised c to 1.

    **Stages.** :meth:`restart` starts a new stage (Huang & Lee, 2024, Appendix A.1): t → 0, W_0 ← W,
    V, α ← 0; ``lr`` and ``momentum`` are left to the caller's schedules.

    .. note::
        RMDA's paper writes the step weights as s_t = η_t β_t with β_t = √t, as the authors' code does
        (ismoptgroup/ramda_exp). The prox uses the Euclidean metric, so every regularizer is exact here.

    **Order within a step** (the base's skeleton): the smooth half updates t, α, V and writes
    z = W_0 − V_t/β_t into Ŵ; pre-prox hooks (:meth:`register_pre_prox_hook`) see that point; the
    prox half turns Ŵ into the prox and averages W. ``lr = 0`` adds nothing to V and α: with α = 0 the
    prox is the identity and nothing moves.

    Memory: the state is 12 bytes per parameter value (W_0, V and Ŵ in float32 for float32 and half
    parameters).

    Args:
        params: tensors, ``(name, tensor)`` pairs or param-group dicts; a group may carry its own
            ``"regularizer"`` and ``"lam"``.
        lr: η ≥ 0.
        momentum: c ∈ (0, 1], the weight of the new point Ŵ_t.
        regularizer: default regularizer of every group (``None``: plain MDA).
        {check_finite}
        {implementation} Here the native kernel is the whole step in one walk over each tensor
            (V, Ŵ, the prox and the averaging: 28 bytes moved per float32 value, as a fused Adam
            step; 32 for ``GroupLasso(dim="in")``, whose groups span all rows) for no regularizer
            or λ = 0, ``L1`` and ``GroupLasso`` (module layouts included, except grouped convs
            with several filters per group), on contiguous CPU float32/float64 tensors; ``"auto"`` uses it for a bucket from ``AUTO_NATIVE_NUMEL`` =
            65536 values on. It gives the eager bits without a regularizer and with ``L1`` (up to
            the sign of a zero); with ``GroupLasso`` the group norms sum in another order, so Ŵ and
            W agree to a few ulp, with the same zero groups except groups within rounding of the
            threshold. Other regularizers, half precision, CUDA, pre-prox hooks and
            ``foreach=False`` run the torch ops.
        {torch_flags}

    Example:
        >>> import torch
        >>> from lightning_prox.regularizers import L1
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 0.05]))
        >>> opt = RMDA([w], lr=0.1, momentum=1.0, regularizer=L1(0.5))
        >>> w.grad = torch.tensor([1.0, 0.0])
        >>> opt.step()
        >>> w.data  # prox_{0.1·0.5}([1 - 0.1, 0.05]) = [0.85, 0]
        tensor([0.8500, 0.0000])
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]],
        lr: float = 0.1,
        momentum: float = 0.1,
        regularizer: Regularizer | None = None,
        *,
        check_finite: bool = True,
        implementation: str = "auto",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        super().__init__(
            params,
            {"lr": lr, "momentum": momentum, "regularizer": regularizer},
            check_finite=check_finite,
            implementation=implementation,
            maximize=maximize,
            foreach=foreach,
            fused=fused,
            capturable=capturable,
            differentiable=differentiable,
        )

    def _native_libraries(self) -> list[tuple[str, Any]]:
        native = self.implementation == "native" or any(
            sum(p.numel() for p in g["params"]) >= AUTO_NATIVE_NUMEL for g in self.param_groups
        )
        return [("_rmda_kernels.cpp", _rmda_kernels.KERNELS)] if native else []

    def _check_group(self, group: dict[str, Any]) -> None:
        _check_number("momentum", group["momentum"], 0.0, 1.0)

    def _init_state(self, p: Tensor) -> dict[str, Any]:
        st = self.state[p]
        if not st:
            st["step"] = 0
            st["alpha"] = 0.0
            dt = state_dtype(p)
            st["initial_point"] = p.detach().to(dt, copy=True, memory_format=torch.preserve_format)
            st["grad_sum"] = torch.zeros_like(p, dtype=dt, memory_format=torch.preserve_format)
            st["prox_point"] = p.detach().to(dt, copy=True, memory_format=torch.preserve_format)
        return st

    def _init_group(self, group: dict[str, Any], params: list[Tensor]) -> list[dict[str, Any]]:
        return [self._init_state(p) for p in params]

    def _smooth_step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        state: list[dict[str, Any]],
        info: dict[str, Any],
        *,
        fuse_prox: bool,
    ) -> list[tuple[list[int], float, bool]]:
        """V += s·g and Ŵ ← W_0 − V/β per bucket of equal counters; returns (indices, α/β, done) per
        bucket, done when the native kernel has also applied the prox and the averaging."""
        buckets = []
        reg = group_regularizer(group)
        for (_, _, step, alpha), idx in _bucket_by_counters(params, state).items():
            t = step + 1
            s, beta = group["lr"] * math.sqrt(t), math.sqrt(t)
            sts = [state[i] for i in idx]
            ps, gs = [params[i] for i in idx], [grads[i] for i in idx]
            done = fuse_prox and self._use_native(group, reg, ps, gs, sts)
            if done:
                _rmda_kernels.rmda_step_(
                    ps,
                    gs,
                    sts,
                    s=s,
                    beta=beta,
                    step=(alpha + s) / beta,
                    c=group["momentum"],
                    reg=reg,
                    info=info,
                )
            else:
                grad_sums, prox_points = [st["grad_sum"] for st in sts], [st["prox_point"] for st in sts]
                torch._foreach_add_(grad_sums, gs, alpha=s)
                # Ŵ = W_0 − V/β in one pass per tensor (a copy and then an add would be two)
                for w_hat, st in zip(prox_points, sts):
                    torch.add(st["initial_point"], st["grad_sum"], alpha=-1.0 / beta, out=w_hat)
            for st in sts:
                st["step"], st["alpha"] = t, alpha + s
            buckets.append((idx, (alpha + s) / beta, done))
        return buckets

    def _use_native(
        self,
        group: dict[str, Any],
        reg: Regularizer | None,
        params: list[Tensor],
        grads: list[Tensor],
        states: list[dict[str, Any]],
    ) -> bool:
        """The native step runs this bucket: ``implementation`` asks for it (``"auto"``: from
        ``AUTO_NATIVE_NUMEL`` values on), the kernel covers the regularizer and the tensors, and it builds."""
        if self.implementation == "eager" or group["foreach"] is False:
            return False
        if self.implementation == "auto" and sum(p.numel() for p in params) < AUTO_NATIVE_NUMEL:
            return False
        return (
            all(g.is_contiguous() and g.dtype == p.dtype for p, g in zip(params, grads))
            and _rmda_kernels.supports(reg, params, states)
            and _rmda_kernels.native_available()
        )

    def _prox_step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        state: list[dict[str, Any]],
        ctx: list[tuple[list[int], float, bool]],
        info: dict[str, Any],
    ) -> None:
        """Ŵ ← prox_{(α/β)ψ}(Ŵ), then W ← (1 − c)·W + c·Ŵ (buckets the native step has not done)."""
        reg, c = group_regularizer(group), group["momentum"]
        per_tensor = group["foreach"] is False
        for idx, step, done in ctx:
            if done:
                continue
            prox_points = [state[i]["prox_point"] for i in idx]
            ps = [params[i] for i in idx]
            if per_tensor:  # the readable reference: one tensor at a time, the regularizer's own prox
                for p, w_hat in zip(ps, prox_points):
                    prox_tensors_(reg, [w_hat], step, fast=False)
                    average_([p], [w_hat], c)
                continue
            prox_tensors_(reg, prox_points, step, info=info)
            average_(ps, prox_points, c)

    @torch.no_grad()
    def restart(self, eps_factor: float = 1.0) -> None:
        """Start a new stage (Huang & Lee, 2024, Appendix A.1): t → 0, W_0 ← W, V ← 0, α ← 0 for every parameter.

        The learning rate and c are not touched (a stage schedule such as
        :class:`~lightning_prox.callbacks.StageRestart` sets them). Ŵ keeps its last value.

        Args:
            eps_factor: accepted so that RMDA and :class:`RAMDA` share one interface; RMDA has no ε,
                so it must be a number > 0 and has no effect.
        """
        _check_number("eps_factor", eps_factor, 0.0)
        for group in self.param_groups:
            for p in group["params"]:
                st = self.state.get(p)
                if not st:
                    continue
                st["step"] = 0
                st["alpha"] = 0.0
                st["initial_point"].copy_(p)
                st["grad_sum"].zero_()

    def prox_points(self) -> dict[Tensor, Tensor]:
        """The last proximal solution Ŵ_t of every parameter that has taken a step (parameter → tensor).

        Ŵ_t has the regularizer's exact structure; the iterate W_t reaches it once c = 1.
        """
        return {p: st["prox_point"] for p, st in self.state.items() if "prox_point" in st}


RMDA.__doc__ = (RMDA.__doc__ or "").replace("{check_finite}", _check_finite_doc)
RMDA.__doc__ = RMDA.__doc__.replace("{implementation}", _implementation_doc)
RMDA.__doc__ = RMDA.__doc__.replace("{torch_flags}", _torch_flags_doc)
