"""Prox-SGD: momentum SGD followed by a Euclidean prox, and Yang et al.'s two-stage Prox-SGD.

:class:`ProxSGD` is the plain stochastic proximal gradient method with ``torch.optim.SGD``'s
momentum convention (the baseline of digests 000 and 003). :class:`TwoStageProxSGD` is the
"Prox-SGD" of Yang et al. (2020) as the ProxGen paper runs it (digest 000 §1.4, P12): a prox
subproblem without learning rate followed by a convex-combination step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..regularizers import _fused
from ..regularizers._base import Regularizer
from ._common import check_finite_grads, group_regularizer, init_regularizer_groups
from ._prox import check_group_params, prox_tensors_
from ._stats import group_stats
from .proxgen import Preconditioner, ProxGen

__all__ = ["ProxSGD", "TwoStageProxSGD", "proxsgd"]

Implementation = Literal["auto", "fast", "forloop", "compiled"]
_IMPLEMENTATIONS = ("auto", "fast", "forloop", "compiled")
#: ``implementation="auto"`` compiles the SGD + ℓ1 pass for a (device, dtype) bucket of a
#: regularized group from this many elements on (small models would only pay the compile time).
AUTO_COMPILE_NUMEL = 1 << 20


class ProxSGD(Optimizer):
    r"""Stochastic proximal gradient with ``torch.optim.SGD`` semantics, then a Euclidean prox.

    .. math::

        \begin{aligned}
        &\textbf{input: } \gamma \text{ (lr)},\ \mu \text{ (momentum)},\ \tau \text{ (dampening)},\
            \zeta \text{ (weight\_decay)},\ \text{nesterov},\ R_\lambda \text{ (regularizer, }
            \lambda = \text{lam)} \\
        &\textbf{for } t = 1, 2, \dots: \\
        &\quad g_t = \nabla f(\theta_{t-1}) + \zeta\, \theta_{t-1} \\
        &\quad b_t = \begin{cases} g_t & t = 1 \\ \mu\, b_{t-1} + (1-\tau)\, g_t & t > 1
            \end{cases} \text{ (momentum\_buffer)}, \qquad
            d_t = \begin{cases} g_t + \mu\, b_t & \text{nesterov} \\ b_t & \text{otherwise}
            \end{cases} \\
        &\quad \hat\theta_t = \theta_{t-1} - \gamma\, d_t \\
        &\quad \theta_t = \operatorname{prox}_{\gamma R_\lambda}(\hat\theta_t)
            = \operatorname{argmin}_x\ \gamma R_\lambda(x) + \tfrac12 \|x - \hat\theta_t\|^2
        \end{aligned}

    With ``momentum=0`` this is the proximal (stochastic) gradient method; with
    ``regularizer=None`` (or ``lam = 0``) it is exactly ``torch.optim.SGD``. Weight decay is coupled
    (added to the gradient) as in torch's SGD; for ℓ1 the prox is soft thresholding at γλ.

    Statistics: :meth:`prox_stats` returns, per param group, ``mean_threshold`` = γλ, the
    exact-zero count and, for an inexact prox, its inner iterations (computed when called).

    Args:
        params: iterable of parameters or param-group dicts (a group may set its own
            ``regularizer``/``lam``, ``lr``, ``momentum``, ...).
        lr: learning rate γ > 0 (also the prox step).
        momentum: μ ≥ 0.
        dampening: τ for momentum.
        nesterov: Nesterov momentum (needs momentum > 0 and dampening = 0).
        weight_decay: ζ ≥ 0, L2 penalty added to the gradient.
        regularizer: default regularizer of every group (``None``: plain SGD).
        check_finite: raise ``ValueError`` naming the parameter, before any update, when a
            gradient holds NaN/inf (one ``sum`` per gradient and one host read per step; False
            skips it).
        implementation: ``"auto"`` (default: ``"compiled"`` for a regularized group's ℓ1 tensors
            on CPU from ``AUTO_COMPILE_NUMEL`` = 2^20 elements on, ``"fast"`` otherwise),
            ``"fast"`` (torch's fused SGD kernel, then an in-place prox pass), ``"forloop"`` (the
            per-tensor reference) or ``"compiled"`` (SGD + ℓ1 as one ``torch.compile``\ d pass per
            tensor on CPU from the second step on; compiles once per process; anything it does not
            cover, or a failed compile, runs ``"fast"``). All agree to rounding.

    Raises:
        ValueError: for an invalid hyperparameter (naming the value), and from :meth:`step` for
            non-finite gradients (``check_finite=True``) or sparse gradients.

    Example:
        >>> import torch
        >>> from lightning_prox.regularizers import L1
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 0.05, -2.0]))
        >>> opt = ProxSGD([w], lr=0.5, regularizer=L1(0.2))
        >>> w.grad = torch.tensor([0.2, 0.0, 0.0])
        >>> _ = opt.step()  # θ̂ = (0.9, 0.05, -2.0), then soft threshold at γλ = 0.1
        >>> w.data
        tensor([ 0.8000,  0.0000, -1.9000])
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float,
        momentum: float = 0.0,
        dampening: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        regularizer: Regularizer | None = None,
        *,
        check_finite: bool = True,
        implementation: Implementation = "auto",
    ) -> None:
        _check_hparams(lr, momentum, dampening, nesterov, weight_decay)
        if implementation not in _IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=bool(nesterov),
            weight_decay=weight_decay,
            regularizer=regularizer,
        )
        super().__init__(params, defaults)
        for i, group in enumerate(self.param_groups):
            try:
                _check_hparams(
                    group["lr"],
                    group["momentum"],
                    group["dampening"],
                    group["nesterov"],
                    group["weight_decay"],
                )
            except ValueError as err:
                raise ValueError(f"param group {i}: {err}") from None
        self.check_finite = bool(check_finite)
        self.implementation = implementation
        self._last_info: list[dict[str, Any]] = [{} for _ in self.param_groups]
        init_regularizer_groups(self)
        check_group_params(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("nesterov", False)
            group.setdefault("regularizer", None)
            group.setdefault("lam", 0.0)
        self.__dict__.setdefault("check_finite", True)
        self.__dict__.setdefault("implementation", "auto")
        self.__dict__.setdefault("_last_info", [{} for _ in self.param_groups])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_last_info"):
            self._last_info.append({})
            init_regularizer_groups(self)
            check_group_params(self)

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor], list[Tensor | None]]:
        params, grads, bufs = [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError("ProxSGD does not support sparse gradients; use dense gradients")
            params.append(p)
            grads.append(p.grad)
            bufs.append(self.state[p].get("momentum_buffer") if group["momentum"] != 0 else None)
        return params, grads, bufs

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One ProxSGD step on every param group; ``closure`` re-evaluates the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        gathered = [self._init_group(group) for group in self.param_groups]
        if self.check_finite:
            check_finite_grads([g for gs in gathered for g in gs[1]], optimizer=self)
        for i, (group, (params, grads, bufs)) in enumerate(zip(self.param_groups, gathered)):
            info: dict[str, Any] = {}
            proxsgd(
                params,
                grads,
                bufs,
                lr=group["lr"],
                momentum=group["momentum"],
                dampening=group["dampening"],
                nesterov=group["nesterov"],
                weight_decay=group["weight_decay"],
                regularizer=group_regularizer(group),
                implementation=self.implementation,
                info=info,
            )
            if group["momentum"] != 0:
                for p, buf in zip(params, bufs):
                    self.state[p]["momentum_buffer"] = buf
            if i < len(self._last_info):
                self._last_info[i] = info
        return loss

    def prox_stats(self) -> list[dict[str, Any]]:
        """Per-group statistics of the last step (see :func:`ProxGen.prox_stats`; here the
        threshold scale is γλ, the prox being Euclidean)."""
        return [
            group_stats(self, group, None, self._last_info[i] if i < len(self._last_info) else {})
            for i, group in enumerate(self.param_groups)
        ]


def _check_hparams(lr: float, momentum: float, dampening: float, nesterov: bool, weight_decay: float) -> None:
    if isinstance(lr, Tensor):
        raise ValueError("lr must be a float (a tensor lr is not supported); got a Tensor")
    if not isinstance(lr, (int, float)) or not (lr > 0) or math.isinf(lr):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not isinstance(momentum, (int, float)) or not (momentum >= 0) or math.isinf(momentum):
        raise ValueError(f"momentum must be a finite number >= 0, got {momentum!r}")
    if not isinstance(dampening, (int, float)) or math.isnan(dampening) or math.isinf(dampening):
        raise ValueError(f"dampening must be a finite number, got {dampening!r}")
    if not isinstance(weight_decay, (int, float)) or not (weight_decay >= 0) or math.isinf(weight_decay):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError(
            f"nesterov=True needs momentum > 0 and dampening = 0, got momentum={momentum!r}, "
            f"dampening={dampening!r}"
        )


def proxsgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffer_list: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    regularizer: Regularizer | None,
    implementation: str = "auto",
    info: dict[str, Any] | None = None,
) -> None:
    """Functional ProxSGD step (see :class:`ProxSGD`); fills ``momentum_buffer_list`` on the first step."""
    if not params:
        return
    kwargs: dict[str, Any] = dict(
        lr=lr,
        momentum=momentum,
        dampening=dampening,
        nesterov=nesterov,
        weight_decay=weight_decay,
        regularizer=regularizer,
        info=info,
    )
    if implementation == "forloop":
        _single_tensor_proxsgd(params, grads, momentum_buffer_list, **kwargs)
    else:
        _multi_tensor_proxsgd(params, grads, momentum_buffer_list, **kwargs, implementation=implementation)


def _single_tensor_proxsgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffer_list: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    regularizer: Regularizer | None,
    info: dict[str, Any] | None,
) -> None:
    """The readable reference: torch's ``_single_tensor_sgd`` then ``regularizer.prox`` per tensor."""
    do_prox = regularizer is not None and regularizer.lam > 0
    for i, param in enumerate(params):
        grad = grads[i]
        if weight_decay != 0:
            grad = grad.add(param, alpha=weight_decay)
        if momentum != 0:
            buf = momentum_buffer_list[i]
            if buf is None:
                buf = torch.clone(grad).detach()
                momentum_buffer_list[i] = buf
            else:
                buf.mul_(momentum).add_(grad, alpha=1 - dampening)
            grad = grad.add(buf, alpha=momentum) if nesterov else buf
        param.add_(grad, alpha=-lr)
        if do_prox:
            prox_tensors_(regularizer, [param], lr, None, info, fast=False)


def _multi_tensor_proxsgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffer_list: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    regularizer: Regularizer | None,
    info: dict[str, Any] | None,
    implementation: str = "fast",
) -> None:
    """Fast path: torch's fused SGD kernel (CPU/CUDA) for the smooth part, then one in-place prox pass.

    ``"compiled"`` (and ``"auto"`` for a large ℓ1 group) runs SGD + ℓ1 as one compiled pass per
    tensor on CPU once the momentum buffers exist (the first step goes through torch's kernel).
    """
    do_prox = regularizer is not None and regularizer.lam > 0
    first = [momentum != 0 and b is None for b in momentum_buffer_list]
    if any(first):
        if not all(first):  # mixed (a parameter joined late): torch's for-loop handles it exactly
            _single_tensor_proxsgd(
                params, grads, momentum_buffer_list, lr=lr, momentum=momentum, dampening=dampening,
                nesterov=nesterov, weight_decay=weight_decay, regularizer=regularizer, info=info,
            )  # fmt: skip
            return
        for i, g in enumerate(grads):
            momentum_buffer_list[i] = torch.empty_like(g)
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, momentum_buffer_list],  # type: ignore[list-item]
        with_indices=False,
    )
    for (device, dtype), ((d_params, d_grads, d_bufs), _) in grouped.items():
        d_params = list(d_params)
        if (
            implementation in ("compiled", "auto")
            and do_prox
            and not any(first)
            and device.type == "cpu"
            and _fused.supports(regularizer, d_params)
            and (implementation == "compiled" or sum(p.numel() for p in d_params) >= AUTO_COMPILE_NUMEL)
            and _fused.compiled_available()
            and all(t.is_contiguous() for t in (*d_params, *d_grads, *(d_bufs if momentum != 0 else ())))
        ):
            scalars = torch.tensor(
                [weight_decay, momentum, 1 - dampening, lr, lr * regularizer.lam], dtype=dtype
            )
            bufs = list(d_bufs) if momentum != 0 else None
            if _fused.compiled_sgd_l1_(d_params, list(d_grads), bufs, scalars, nesterov):
                continue
        if device.type in ("cpu", "cuda"):
            torch._fused_sgd_(
                d_params, d_grads, [] if momentum == 0 else d_bufs, weight_decay=weight_decay,
                momentum=momentum, lr=lr, dampening=dampening, nesterov=nesterov, maximize=False,
                is_first_step=any(first), grad_scale=None, found_inf=None,
            )  # fmt: skip
        else:
            _single_tensor_proxsgd(
                d_params, list(d_grads), list(d_bufs) if momentum != 0 else [None] * len(d_params), lr=lr,
                momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
                regularizer=None, info=None,
            )  # fmt: skip
        if do_prox:
            prox_tensors_(regularizer, d_params, lr, None, info)


class TwoStageProxSGD(ProxGen):
    r"""The two-stage Prox-SGD of Yang et al. (2020), the baseline of the ProxGen paper (digest 000 §1.4).

    .. math::

        \begin{aligned}
        &m_t = \rho\, m_{t-1} + (1-\rho) g_t,\quad D_t = C_t + \delta
            \quad\text{(exactly as in :class:`ProxGen`, weight decay } (1-\alpha\zeta)
            \text{ applied first)} \\
        &\tilde\theta_t = \operatorname{prox}^{D_t}_{R_\lambda}\big(\theta_{t-1} - \hat m_t / D_t\big)
            \quad\text{(stage 1: no learning rate; } \ell_1 \text{ threshold } \lambda / D_{t,i}) \\
        &\theta_t = \theta_{t-1} + \alpha\,(\tilde\theta_t - \theta_{t-1})
            \quad\text{(stage 2: convex combination with step } \alpha = \text{lr)}
        \end{aligned}

    Unlike :class:`ProxGen`, an iterate reaches an exact zero only when the previous one was zero
    (for α < 1), and from a zero initialization with an ℓ1 term large enough to zero stage 1 it
    never leaves zero: the two failure modes of Figure 4 of the ProxGen paper, reproduced by
    ``benchmarks/lasso_support_recovery.py``. The arguments are :class:`ProxGen`'s (the default
    preconditioner is Adam's, as in the paper's lasso study); this update always runs the
    per-tensor loop (it is a baseline, not a hot path).

    Example:
        >>> import torch
        >>> from lightning_prox.regularizers import L1
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 0.0]))
        >>> opt = TwoStageProxSGD([w], lr=0.5, regularizer=L1(1.0), preconditioner="identity", betas=(0.0, 0.999))
        >>> w.grad = torch.tensor([0.5, 0.5])
        >>> _ = opt.step()  # stage 1: prox(θ - g) = (0, 0) at threshold 1; stage 2: θ + 0.5·(θ̃ - θ)
        >>> w.data
        tensor([0.5000, 0.0000])
    """

    _two_stage = True

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 0.1,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        regularizer: Regularizer | None = None,
        preconditioner: Preconditioner = "adam",
        bias_correction: bool = True,
        *,
        check_finite: bool = True,
    ) -> None:
        if not isinstance(lr, (int, float)) or not 0 < lr <= 1:
            raise ValueError(f"lr must be in (0, 1] for the two-stage convex combination, got {lr!r}")
        super().__init__(
            params,
            lr=lr,
            betas=betas,
            eps=eps,
            weight_decay=weight_decay,
            regularizer=regularizer,
            preconditioner=preconditioner,
            bias_correction=bias_correction,
            prox_metric="preconditioned",
            check_finite=check_finite,
            implementation="forloop",
        )
