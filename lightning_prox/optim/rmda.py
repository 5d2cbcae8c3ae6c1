"""RMDA: regularized momentum dual averaging (Huang, Chen & Lee, ICLR 2022; digest 003 §4, supplement C).

The non-adaptive member of the RMDA/RAMDA family: a scalar preconditioner β_t = √t, so the dual-averaging
subproblem is solved exactly by the regularizer's proximal operator. Without a regularizer it is MDA
(Jelassi & Defazio, 2020). Stage-wise training (digest 003 §1.1) restarts it with :meth:`RMDA.restart`,
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
from ._common import check_finite_grads, group_regularizer, init_regularizer_groups

__all__ = ["RMDA", "rmda"]


def _check_number(name: str, value: Any, low: float, high: float = math.inf, low_open: bool = True) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        bound = f"> {low}" if low_open else f">= {low}"
        if high < math.inf:
            bound += f" and <= {high}"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")


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


def _prox_list(reg: Regularizer | None, zs: list[Tensor], step: float) -> list[Tensor]:
    """Euclidean prox of every tensor of ``zs`` with one step (multi-tensor when the regularizer offers it)."""
    if reg is None or reg.lam == 0.0:
        return zs
    prox_multi = getattr(reg, "prox_multi", None)
    if prox_multi is not None:
        return list(prox_multi(zs, step))
    return [reg.prox(z, step) for z in zs]


def _single_tensor_rmda(
    params: list[Tensor],
    grads: list[Tensor],
    initial_points: list[Tensor],
    grad_sums: list[Tensor],
    prox_points: list[Tensor],
    *,
    s: float,
    alpha: float,
    beta: float,
    c: float,
    regularizer: Regularizer | None,
) -> None:
    """Reference for-loop implementation of one RMDA step (all tensors share ``s``, ``alpha``, ``beta``)."""
    for p, g, w0, v, w_hat in zip(params, grads, initial_points, grad_sums, prox_points):
        v.add_(g, alpha=s)
        z = w0 - v / beta
        if regularizer is not None and regularizer.lam != 0.0:
            z = regularizer.prox(z, alpha / beta)
        w_hat.copy_(z)
        if c == 1.0:
            p.copy_(w_hat)
        else:
            p.lerp_(w_hat, c)


def _multi_tensor_rmda(
    params: list[Tensor],
    grads: list[Tensor],
    initial_points: list[Tensor],
    grad_sums: list[Tensor],
    prox_points: list[Tensor],
    *,
    s: float,
    alpha: float,
    beta: float,
    c: float,
    regularizer: Regularizer | None,
) -> None:
    """Multi-tensor (``torch._foreach_*``) RMDA step; same arguments as :func:`_single_tensor_rmda`."""
    torch._foreach_add_(grad_sums, grads, alpha=s)
    zs = torch._foreach_add(initial_points, grad_sums, alpha=-1.0 / beta)
    torch._foreach_copy_(prox_points, _prox_list(regularizer, zs, alpha / beta))
    if c == 1.0:
        torch._foreach_copy_(params, prox_points)
    else:
        torch._foreach_lerp_(params, prox_points, c)


def rmda(
    params: list[Tensor],
    grads: list[Tensor],
    initial_points: list[Tensor],
    grad_sums: list[Tensor],
    prox_points: list[Tensor],
    *,
    step: int,
    alpha: float,
    lr: float,
    momentum: float,
    regularizer: Regularizer | None = None,
    foreach: bool = True,
) -> float:
    """Functional RMDA: one step for tensors that share the step counter ``step`` (already incremented).

    Updates ``params``, ``grad_sums`` (V) and ``prox_points`` (Ŵ) in place and returns the new
    α_t = ``alpha`` + s_t. See :class:`RMDA` for the math.
    """
    s = lr * math.sqrt(step)
    alpha = alpha + s
    beta = math.sqrt(step)
    fn = _multi_tensor_rmda if foreach else _single_tensor_rmda
    with torch.no_grad():
        fn(
            params,
            grads,
            initial_points,
            grad_sums,
            prox_points,
            s=s,
            alpha=alpha,
            beta=beta,
            c=momentum,
            regularizer=regularizer,
        )
    return alpha


class RMDA(torch.optim.Optimizer):
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
    ``momentum=1`` means no averaging, digest 003 pitfall 9), λ = ``group["lam"]``; per parameter
    ``state["step"]`` = t (int), ``state["alpha"]`` = α_t (float), ``state["initial_point"]`` = W_0,
    ``state["grad_sum"]`` = V_t and ``state["prox_point"]`` = Ŵ_t. With ψ = 0, Ŵ_t = W_0 − V_t/β_t
    and the update is MDA.

    **The last proximal solution Ŵ_t.** ``state["prox_point"]`` (also :meth:`prox_points`) is the exact
    prox output. It carries the regularizer's exact structure (exact zero groups) at every step, while
    the averaged iterate W_t has exact zeros only where Ŵ has been zero long enough or once c = 1
    (digest 003 §6): log sparsity of Ŵ to watch the structure that W_t will take once
    :class:`~lightning_prox.callbacks.StageRestart` has raised c to 1.

    **Stages.** :meth:`restart` starts a new stage (digest 003 §1.1, supplement D): t → 0, W_0 ← W,
    V, α ← 0; ``lr`` and ``momentum`` are left to the caller's schedules.

    .. note::
        RMDA's paper writes the step weights as s_t = η_t β_t with β_t = √t, as the authors' code does
        (supplement C). The prox uses the Euclidean metric, so every regularizer is exact here.

    Args:
        params: tensors or param-group dicts; a group may carry its own ``"regularizer"`` and ``"lam"``.
        lr: η > 0.
        momentum: c ∈ (0, 1], the weight of the new point Ŵ_t.
        regularizer: default regularizer of every group (``None``: plain MDA).
        check_finite: raise ``ValueError`` before updating anything when a gradient holds NaN/inf (one
            host read per step; switch off when a GradScaler already handles overflow).
        foreach: multi-tensor implementation (``False``: the reference for-loop).

    Example:
        >>> import torch
        >>> from lightning_prox.regularizers import L1
        >>> w = torch.nn.Parameter(torch.tensor([1.0, -0.05]))
        >>> opt = RMDA([w], lr=0.1, momentum=1.0, regularizer=L1(0.5))
        >>> w.grad = torch.tensor([1.0, 0.0])
        >>> opt.step()
        >>> w.data  # prox_{0.1·0.5}([1 - 0.1, -0.05]) = [0.85, 0]
        tensor([0.8500, 0.0000])
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        momentum: float = 0.1,
        regularizer: Regularizer | None = None,
        *,
        check_finite: bool = True,
        foreach: bool = True,
    ) -> None:
        _check_number("lr", lr, 0.0)
        _check_number("momentum", momentum, 0.0, 1.0)
        defaults = {"lr": lr, "momentum": momentum, "regularizer": regularizer, "foreach": foreach}
        super().__init__(params, defaults)
        self.check_finite = check_finite
        init_regularizer_groups(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", True)
            group.setdefault("regularizer", None)
            group.setdefault("lam", 0.0)

    def _init_state(self, p: Tensor) -> dict[str, Any]:
        st = self.state[p]
        if not st:
            st["step"] = 0
            st["alpha"] = 0.0
            st["initial_point"] = p.detach().clone(memory_format=torch.preserve_format)
            st["grad_sum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            st["prox_point"] = p.detach().clone(memory_format=torch.preserve_format)
        return st

    def _gather(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[dict[str, Any]]]:
        params, grads, states = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError(f"{type(self).__name__} does not support sparse gradients")
            params.append(p)
            grads.append(p.grad)
            states.append(self._init_state(p))
        return params, grads, states

    def _check_groups(self) -> None:
        for i, group in enumerate(self.param_groups):
            _check_number(f"param group {i}: lr", group["lr"], 0.0)
            _check_number(f"param group {i}: momentum", group["momentum"], 0.0, 1.0)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One RMDA step for every group. ``closure`` (optional) re-evaluates the loss with grad enabled."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._check_groups()
        gathered = [self._gather(g) for g in self.param_groups]
        if self.check_finite:
            check_finite_grads([g for _, grads, _ in gathered for g in grads], optimizer=self)
        for group, (params, grads, states) in zip(self.param_groups, gathered):
            reg = group_regularizer(group)
            for (_, _, step, alpha), idx in _bucket_by_counters(params, states).items():
                sts = [states[i] for i in idx]
                new_alpha = rmda(
                    [params[i] for i in idx],
                    [grads[i] for i in idx],
                    [st["initial_point"] for st in sts],
                    [st["grad_sum"] for st in sts],
                    [st["prox_point"] for st in sts],
                    step=step + 1,
                    alpha=alpha,
                    lr=group["lr"],
                    momentum=group["momentum"],
                    regularizer=reg,
                    foreach=group["foreach"],
                )
                for st in sts:
                    st["step"] = step + 1
                    st["alpha"] = new_alpha
        return loss

    @torch.no_grad()
    def restart(self, eps_factor: float = 1.0) -> None:
        """Start a new stage (digest 003 §1.1): t → 0, W_0 ← W, V ← 0, α ← 0 for every parameter.

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
