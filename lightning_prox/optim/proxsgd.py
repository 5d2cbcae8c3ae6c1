"""Prox-SGD: momentum SGD followed by a Euclidean prox, and Yang et al.'s two-stage Prox-SGD.

:class:`ProxSGD` is the plain stochastic proximal gradient method with ``torch.optim.SGD``'s
momentum convention. :class:`TwoStageProxSGD` is the "Prox-SGD" of Yang, Yuan, Lahlou, Latorre,
Klein and Pfister (2020, "ProxSGD: Training structured neural networks under regularization and
constraints", ICLR) as Yun, Lozano and Yang (2021, "Adaptive proximal gradient methods for
structured neural networks", NeurIPS, Section 4) run it as a baseline: a prox subproblem without
learning rate followed by a convex-combination step.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..regularizers import _fused
from ..regularizers._base import Regularizer
from . import _l1_kernels
from ._base import (
    Implementation,
    ProxOptimizer,
    _check_finite_doc,
    _implementation_doc,
    _torch_flags_doc,
    check_fused_devices,
)
from ._common import group_regularizer
from ._prox import prox_tensors_
from .proxgen import Preconditioner, ProxGen, _native_size_groups, _prox, _single_tensor_smooth

__all__ = ["ProxSGD", "TwoStageProxSGD", "proxsgd"]

#: ``implementation="auto"`` runs the native SGD + prox pass for a (device, dtype) bucket of a
#: regularized group from this many elements on (smaller models: nothing is built).
AUTO_NATIVE_NUMEL = 1 << 16


class ProxSGD(ProxOptimizer):
    r"""Stochastic proximal gradient with ``torch.optim.SGD`` semantics, then a Euclidean prox.

    .. math::

        \begin{aligned}
        &\textbf{input: } \gamma \text{ (lr)},\ \mu \text{ (momentum)},\ \tau \text{ (dampening)},\
            \zeta \text{ (weight\_decay)},\ \text{nesterov},\ R_\lambda \text{ (regularizer, }
            \lambda = \text{lam)} \\
        &\textbf{for } t = 1, 2, \dots: \\
        &\quad g_t = \pm\nabla f(\theta_{t-1}) + \zeta\, \theta_{t-1}
            \quad (-\text{ with maximize}) \\
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
    (added to the gradient) as in torch's SGD; for ℓ1 the prox is soft thresholding at γλ. With
    γ = 0 the prox is the identity (a warmup from 0 leaves the parameters where they are).

    Statistics: :meth:`prox_stats` returns, per param group, ``mean_threshold`` = γλ, the
    exact-zero count and, for an inexact prox, its inner iterations (computed when called).

    Memory: the state is 0 bytes per parameter value (4 with momentum: ``momentum_buffer`` in the
    parameter's dtype, for float32 parameters).

    Args:
        params: iterable of parameters or param-group dicts (a group may set its own
            ``regularizer``/``lam``, ``lr``, ``momentum``, ...).
        lr: learning rate γ ≥ 0 (also the prox step).
        momentum: μ ≥ 0.
        dampening: τ for momentum.
        nesterov: Nesterov momentum (needs momentum > 0 and dampening = 0).
        weight_decay: ζ ≥ 0, L2 penalty added to the gradient.
        regularizer: default regularizer of every group (``None``: plain SGD).
        {check_finite}
        {implementation} Here the native kernel is SGD + the prox of ℓ1, ℓ0, Lq (q = 0, 1/2, 2/3),
            MCP, SCAD (exact) or Quantization (q = 1, at most 4 levels) as one C++ pass per tensor on
            CPU (float32/float64; equal to the eager step to the bit, Lq with q = 1/2, 2/3 to a few ulp;
            built with the system compiler in a few seconds, once per machine); ``"auto"`` uses it
            for a regularized group's tensors from ``AUTO_NATIVE_NUMEL`` = 2^16 elements on.
        {torch_flags} For ProxSGD ``fused=None`` uses torch's fused SGD kernel for the smooth part on
            CPU and CUDA, ``fused=False`` the multi-tensor ops, ``fused=True`` requires the
            fused kernel (parameters on CPU or CUDA).

    Raises:
        ValueError: for an invalid hyperparameter (naming the value) or a regularizer that does not
            fit a parameter (naming it), and from :meth:`step` for non-finite gradients
            (``check_finite=True``) or sparse gradients, before anything is changed.

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

    _setstate_defaults = {"nesterov": False}
    _torch_flags = frozenset({"maximize", "foreach", "fused"})

    def _native_libraries(self) -> list[tuple[str, Any]]:
        native = _native_size_groups(self, _l1_kernels.covers, AUTO_NATIVE_NUMEL)
        return [("_l1_kernels.cpp", _l1_kernels.KERNELS)] if native else []

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
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            dampening=dampening,
            nesterov=bool(nesterov),
            weight_decay=weight_decay,
            regularizer=regularizer,
        )
        super().__init__(
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

    def _check_group(self, group: dict[str, Any]) -> None:
        _check_hparams(group["momentum"], group["dampening"], group["nesterov"], group["weight_decay"])
        check_fused_devices(group)

    def _init_group(self, group: dict[str, Any], params: list[Tensor]) -> list[Tensor | None]:
        if group["momentum"] == 0:
            return [None] * len(params)
        return [self.state[p].get("momentum_buffer") for p in params]

    def _smooth_step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        state: list[Tensor | None],
        info: dict[str, Any],
        *,
        fuse_prox: bool,
    ) -> list[Tensor]:
        done = _sgd_step(
            params,
            grads,
            state,
            lr=group["lr"],
            momentum=group["momentum"],
            dampening=group["dampening"],
            nesterov=group["nesterov"],
            weight_decay=group["weight_decay"],
            regularizer=group_regularizer(group) if fuse_prox else None,
            implementation=self.implementation,
            foreach=group["foreach"],
            fused=group["fused"],
        )
        if group["momentum"] != 0:
            for p, buf in zip(params, state):
                self.state[p]["momentum_buffer"] = buf
        return done

    def _prox_step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        state: Any,
        ctx: list[Tensor],
        info: dict[str, Any],
    ) -> None:
        done = {id(p) for p in ctx}
        todo = [p for p in params if id(p) not in done]
        prox_tensors_(
            group_regularizer(group), todo, group["lr"], None, info, fast=group["foreach"] is not False
        )


ProxSGD.__doc__ = (ProxSGD.__doc__ or "").replace("{check_finite}", _check_finite_doc)
ProxSGD.__doc__ = ProxSGD.__doc__.replace("{implementation}", _implementation_doc)
ProxSGD.__doc__ = ProxSGD.__doc__.replace("{torch_flags}", _torch_flags_doc)


def _check_hparams(momentum: float, dampening: float, nesterov: bool, weight_decay: float) -> None:
    if (
        isinstance(momentum, bool)
        or not isinstance(momentum, (int, float))
        or not (momentum >= 0)
        or math.isinf(momentum)
    ):
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
    foreach: bool | None = None,
    fused: bool | None = None,
    info: dict[str, Any] | None = None,
) -> None:
    """Functional ProxSGD step (see :class:`ProxSGD`); fills ``momentum_buffer_list`` on the first step.

    ``implementation`` is ``"auto"``, ``"eager"`` or ``"native"`` (as in :class:`ProxSGD`);
    ``foreach=False`` runs the per-tensor reference loop.
    """
    if not params:
        return
    done = _sgd_step(
        params, grads, momentum_buffer_list, lr=lr, momentum=momentum, dampening=dampening,
        nesterov=nesterov, weight_decay=weight_decay, regularizer=regularizer,
        implementation=implementation, foreach=foreach, fused=fused,
    )  # fmt: skip
    ids = {id(p) for p in done}
    prox_tensors_(
        regularizer, [p for p in params if id(p) not in ids], lr, None, info, fast=foreach is not False
    )


def _sgd_step(
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
    implementation: str,
    foreach: bool | None,
    fused: bool | None,
) -> list[Tensor]:
    """The smooth half of a ProxSGD step, dispatched like torch's ``sgd``; returns the tensors whose
    prox was already applied (the native SGD + ℓ1 kernel, only when ``regularizer`` is given)."""
    kwargs: dict[str, Any] = dict(
        lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay
    )
    if foreach is False:
        _single_tensor_sgd(params, grads, momentum_buffer_list, **kwargs)
        return []
    return _multi_tensor_sgd(
        params, grads, momentum_buffer_list, **kwargs, regularizer=regularizer,
        implementation=implementation, fused=fused,
    )  # fmt: skip


def _single_tensor_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    momentum_buffer_list: list[Tensor | None],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
) -> None:
    """The readable reference: torch's ``_single_tensor_sgd`` (the prox follows per tensor)."""
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


def _foreach_sgd(
    params: list[Tensor],
    grads: list[Tensor],
    bufs: list[Tensor],
    *,
    lr: float,
    momentum: float,
    dampening: float,
    nesterov: bool,
    weight_decay: float,
    first: bool,
) -> None:
    """torch's ``_multi_tensor_sgd`` for one (device, dtype) bucket (``bufs`` exist, empty when ``first``)."""
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum != 0:
        if first:
            torch._foreach_copy_(bufs, grads)
        else:
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, grads, alpha=1 - dampening)
        grads = torch._foreach_add(grads, bufs, alpha=momentum) if nesterov else bufs
    torch._foreach_add_(params, grads, alpha=-lr)


def _multi_tensor_sgd(
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
    implementation: str,
    fused: bool | None,
) -> list[Tensor]:
    """Per (device, dtype) bucket: the native SGD + ℓ1 pass where it applies, else torch's fused SGD
    kernel (CPU/CUDA, unless ``fused=False``), else the multi-tensor ops. Returns the tensors whose
    prox the native pass already applied."""
    do_prox = regularizer is not None and regularizer.lam > 0 and lr > 0
    first = [momentum != 0 and b is None for b in momentum_buffer_list]
    if any(first):
        if not all(first):  # mixed (a parameter joined late): the reference loop handles it exactly
            _single_tensor_sgd(
                params, grads, momentum_buffer_list, lr=lr, momentum=momentum, dampening=dampening,
                nesterov=nesterov, weight_decay=weight_decay,
            )  # fmt: skip
            return []
        for i, g in enumerate(grads):
            momentum_buffer_list[i] = torch.empty_like(g)
    is_first = any(first)
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, momentum_buffer_list],  # type: ignore[list-item]
        with_indices=False,
    )
    done: list[Tensor] = []
    for (device, _), ((d_params, d_grads, d_bufs), _) in grouped.items():
        d_params = list(d_params)
        native_l1 = _fused.supports(regularizer, d_params)
        if (
            implementation in ("native", "auto")
            and do_prox
            and device.type == "cpu"
            and fused is not False
            and (native_l1 or _l1_kernels.supports(regularizer, d_params))
            and (implementation == "native" or sum(p.numel() for p in d_params) >= AUTO_NATIVE_NUMEL)
            and all(t.is_contiguous() for t in (*d_params, *d_grads, *(d_bufs if momentum != 0 else ())))
            and _l1_kernels.native_available()
        ):
            kw = dict(
                lr=lr, momentum=momentum, dampening=dampening, nesterov=nesterov, weight_decay=weight_decay,
                first=is_first,
            )  # fmt: skip
            bufs = list(d_bufs) if momentum != 0 else None
            if native_l1:
                _l1_kernels.sgd_l1_(d_params, list(d_grads), bufs, c=lr * regularizer.lam, **kw)  # type: ignore[union-attr]
            else:
                _l1_kernels.sgd_prox_(d_params, list(d_grads), bufs, regularizer=regularizer, **kw)  # type: ignore[arg-type]
            done.extend(d_params)
            continue
        if fused is not False and device.type in ("cpu", "cuda"):
            torch._fused_sgd_(
                d_params, d_grads, [] if momentum == 0 else d_bufs, weight_decay=weight_decay,
                momentum=momentum, lr=lr, dampening=dampening, nesterov=nesterov, maximize=False,
                is_first_step=is_first, grad_scale=None, found_inf=None,
            )  # fmt: skip
        else:
            _foreach_sgd(
                d_params, list(d_grads), list(d_bufs) if momentum != 0 else [], lr=lr, momentum=momentum,
                dampening=dampening, nesterov=nesterov, weight_decay=weight_decay, first=is_first,
            )  # fmt: skip
    return done


class TwoStageProxSGD(ProxGen):
    r"""The two-stage Prox-SGD of Yang et al. (2020), the baseline of the ProxGen paper (Yun et al., 2021, Section 4).

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
    per-tensor loop (it is a baseline, not a hot path). ``threshold_cap`` defaults to ``None``
    (the method as published); ``lr = 0`` leaves the parameters where they are.

    Memory: as :class:`ProxGen`, 8 bytes per parameter value (``exp_avg``, ``exp_avg_sq``).

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
        threshold_cap: float | None = None,
        *,
        check_finite: bool = True,
        maximize: bool = False,
    ) -> None:
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
            threshold_cap=threshold_cap,
            check_finite=check_finite,
            implementation="eager",
            maximize=maximize,
            foreach=False,
        )

    def _check_group(self, group: dict[str, Any]) -> None:
        lr = group["lr"]
        if not 0 <= lr <= 1:
            raise ValueError(f"lr must be in [0, 1] for the two-stage convex combination, got {lr!r}")
        super()._check_group(group)

    def _smooth_step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        state: tuple[list[Tensor], ...],
        info: dict[str, Any],
        *,
        fuse_prox: bool,
    ) -> Any:
        exp_avgs, exp_avg_sqs, steps = state
        hp = self._hparams(group)
        if hp["weight_decay"] != 0:  # decay first, as in ProxGen; the combination starts after it
            torch._foreach_mul_(params, 1 - hp["lr"] * hp["weight_decay"])
        starts = [p.detach().clone() for p in params]
        bucket = _single_tensor_smooth(
            params, grads, exp_avgs, exp_avg_sqs, steps, lr=hp["lr"], beta1=hp["beta1"], beta2=hp["beta2"],
            eps=hp["eps"], weight_decay=0.0, preconditioner=hp["preconditioner"],
            bias_correction=hp["bias_correction"], unit_step=True,
        )  # fmt: skip
        return starts, bucket

    def _prox_step(
        self, group: dict[str, Any], params: list[Tensor], state: Any, ctx: Any, info: dict[str, Any]
    ) -> None:
        starts, bucket = ctx
        hp = self._hparams(group)
        if hp["lr"] != 0:  # stage 1: the prox with unit step; with lr = 0 stage 2 discards it
            _prox([bucket], **hp, info=info, scratch=self._scratch, step=1.0)
        for p, start in zip(params, starts):
            p.copy_(start.lerp_(p, hp["lr"]))  # stage 2
