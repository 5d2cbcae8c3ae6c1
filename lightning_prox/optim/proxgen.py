"""ProxGen: stochastic proximal gradient with a diagonal preconditioner (proximal Adam, RMSprop, AdaGrad).

Paper: "A Unified Framework for Proximal Methods" (ICLR 2021 submission, Algorithms 1 and 2; arXiv
"A General Family of Stochastic Proximal Gradient Methods for Deep Learning"), digest
``shared/research/seed_proxgen.md``. Reference implementation of the later version:
``abcdxyzpqrst/proxgen`` (``opt.py``), used only as a numerical cross-check.
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

__all__ = ["ProxAdam", "ProxGen", "proxgen"]

Preconditioner = Literal["adam", "rmsprop", "adagrad", "identity"]
ProxMetric = Literal["preconditioned", "euclidean"]
Implementation = Literal["auto", "fast", "forloop", "compiled"]

_PRECONDITIONERS = ("adam", "rmsprop", "adagrad", "identity")
_PROX_METRICS = ("preconditioned", "euclidean")
_IMPLEMENTATIONS = ("auto", "fast", "forloop", "compiled")
#: ``implementation="auto"`` compiles the Adam + ℓ1 pass for a (device, dtype) bucket of a
#: regularized group from this many elements on: there one fused pass saves ~40% of the step
#: (docs/proxgen.md), while small models would only pay the seconds of compiling.
AUTO_COMPILE_NUMEL = 1 << 20


class ProxGen(Optimizer):
    r"""ProxGen (proximal Adam / RMSprop / AdaGrad) with decoupled weight decay (ProxGenW).

    .. math::

        \begin{aligned}
        &\textbf{input: } \alpha \text{ (lr)},\ \rho, \beta \text{ (betas)},\ \delta \text{ (eps)},\
            \zeta \text{ (weight\_decay)},\ R_\lambda \text{ (regularizer, } \lambda = \text{lam)} \\
        &\textbf{initialize: } m_0 = 0 \text{ (exp\_avg)},\ v_0 = 0 \text{ (exp\_avg\_sq)} \\
        &\textbf{for } t = 1, 2, \dots: \\
        &\quad g_t = \nabla f(\theta_{t-1}) \\
        &\quad \tilde\theta_t = (1 - \alpha\zeta)\,\theta_{t-1}
            && \text{decoupled weight decay first (Alg. 2)} \\
        &\quad m_t = \rho\, m_{t-1} + (1-\rho)\, g_t, \qquad \hat m_t = m_t / (1-\rho^t) \\
        &\quad C_t = \begin{cases}
            \sqrt{v_t / (1-\beta^t)},\ v_t = \beta v_{t-1} + (1-\beta) g_t^2 & \text{adam} \\
            \sqrt{v_t},\ v_t = \beta v_{t-1} + (1-\beta) g_t^2 & \text{rmsprop} \\
            \sqrt{v_t},\ v_t = v_{t-1} + g_t^2 & \text{adagrad} \\
            1 - \delta & \text{identity (metric} = 1)
            \end{cases} \\
        &\quad D_t = C_t + \delta \text{ (denom)}, \qquad
            \hat\theta_t = \tilde\theta_t - \alpha\, \hat m_t / D_t \\
        &\quad \theta_t = \operatorname{prox}^{D_t}_{\alpha R_\lambda}(\hat\theta_t)
            = \operatorname{argmin}_x\ \alpha R_\lambda(x) + \tfrac12 \textstyle\sum_i D_{t,i}(x_i - \hat\theta_{t,i})^2
        \end{aligned}

    With ``bias_correction=False`` the paper's raw statistics are used (:math:`\hat m_t = m_t`, no
    :math:`1-\beta^t`; digest P1). ``prox_metric="euclidean"`` replaces :math:`D_t` by 1 in the prox
    only (the original ProxQuant update, paper Table 2); ``"preconditioned"`` is ProxGen (with a
    ``Quantization`` regularizer: revised ProxQuant). For ℓ1 the prox is soft thresholding at
    :math:`\alpha\lambda / D_{t,i}` (paper Eq. 3).

    With ``regularizer=None`` (or ``lam = 0``) the update is exactly ``torch.optim.AdamW`` (adam),
    ``torch.optim.RMSprop`` (rmsprop with ``betas=(0, alpha)``, ``weight_decay=0``) and
    ``torch.optim.Adagrad`` (adagrad with ``betas[0]=0``, ``weight_decay=0``).

    .. note::
        Departures from / choices left open by the paper: :math:`C_t` is the square root of the
        EMA (Appendix D, digest P2) and δ sits outside the root as in Adam; AdaGrad has no 1/t
        factor (Section 2, not Appendix D); the first moment :math:`m_t` is used with every
        preconditioner (Algorithm 1), so rmsprop/adagrad reduce to their torch parents only with
        ``betas[0] = 0``; rmsprop never bias-corrects :math:`v_t` (that is what distinguishes it from
        adam); the identity preconditioner ignores ``eps``.

    Statistics: :meth:`prox_stats` returns, per param group, the mean effective threshold scale
    :math:`\alpha\lambda\,\mathrm{mean}_i(1/D_{t,i})`, the exact-zero count and the number of
    inner iterations of an inexact prox; it is computed when called (after a step), not during it.

    Args:
        params: iterable of parameters or param-group dicts (a group may set its own
            ``regularizer``/``lam``, ``lr``, ``betas``, ``preconditioner``, ...).
        lr: step size α > 0.
        betas: (ρ, β): the momentum of :math:`m_t` and the EMA factor of :math:`v_t`, each in [0, 1).
        eps: δ > 0 added to :math:`C_t`.
        weight_decay: decoupled weight decay ζ ≥ 0 (applied first, scaled by α).
        regularizer: default regularizer of every group (``None``: plain Adam/AdamW).
        preconditioner: ``"adam"``, ``"rmsprop"``, ``"adagrad"`` or ``"identity"``.
        bias_correction: divide by :math:`1-\rho^t` and :math:`1-\beta^t` (adam) as Adam does.
        prox_metric: ``"preconditioned"`` (ProxGen) or ``"euclidean"`` (original ProxQuant).
        check_finite: raise ``ValueError`` naming the parameter, before any update, when a
            gradient holds NaN/inf. This costs one ``sum`` per gradient (one read of the gradients,
            0.25–0.35× of a fused Adam step on one CPU thread) and one host read per step; pass
            False to skip it (e.g. with a GradScaler).
        implementation: ``"auto"`` (default: ``"compiled"`` for a regularized group's ℓ1 tensors
            on CPU from ``AUTO_COMPILE_NUMEL`` = 2^20 elements on, ``"fast"`` otherwise),
            ``"fast"`` (torch's fused Adam kernel on CPU / multi-tensor ops elsewhere, then an
            in-place prox pass), ``"forloop"`` (the readable per-tensor reference) or
            ``"compiled"`` (Adam + ℓ1 as one ``torch.compile``\ d pass per tensor on CPU for every
            ℓ1 group, whatever its size; the first step compiles for seconds, once per process and
            dtype; anything it does not cover, or a failed compile, runs ``"fast"``). Groups without
            a regularizer always run torch's fused Adam. All agree to rounding (1e-6 in the tests).

    Raises:
        ValueError: for an invalid hyperparameter (naming the value), and from :meth:`step` for
            non-finite gradients (``check_finite=True``) or sparse gradients.

    Example:
        >>> import torch
        >>> from lightning_prox.regularizers import L1
        >>> w = torch.nn.Parameter(torch.tensor([1.0, 0.13, 0.5]))
        >>> opt = ProxGen([w], lr=0.1, regularizer=L1(0.05))
        >>> w.grad = torch.tensor([0.1, 0.1, -0.5])
        >>> _ = opt.step()  # step 1: θ̂ = θ - α·sign(g) = (0.9, 0.03, 0.6); thresholds αλ/D = αλ/|g|
        >>> w.data
        tensor([0.8500, 0.0000, 0.5900])
    """

    #: True in :class:`~lightning_prox.optim.TwoStageProxSGD` (Yang et al.'s two-stage update).
    _two_stage: bool = False

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        regularizer: Regularizer | None = None,
        preconditioner: Preconditioner = "adam",
        bias_correction: bool = True,
        prox_metric: ProxMetric = "preconditioned",
        *,
        check_finite: bool = True,
        implementation: Implementation = "auto",
    ) -> None:
        _check_hparams(lr, betas, eps, weight_decay, preconditioner, prox_metric)
        if implementation not in _IMPLEMENTATIONS:
            raise ValueError(f"implementation must be one of {_IMPLEMENTATIONS}, got {implementation!r}")
        defaults = dict(
            lr=lr,
            betas=tuple(betas),
            eps=eps,
            weight_decay=weight_decay,
            regularizer=regularizer,
            preconditioner=preconditioner,
            bias_correction=bool(bias_correction),
            prox_metric=prox_metric,
        )
        super().__init__(params, defaults)
        for i, group in enumerate(self.param_groups):
            try:
                _check_hparams(
                    group["lr"],
                    group["betas"],
                    group["eps"],
                    group["weight_decay"],
                    group["preconditioner"],
                    group["prox_metric"],
                )
            except ValueError as err:
                raise ValueError(f"param group {i}: {err}") from None
        self.check_finite = bool(check_finite)
        self.implementation = implementation
        self._scratch = _fused.Scratch()
        self._last_info: list[dict[str, Any]] = [{} for _ in self.param_groups]
        init_regularizer_groups(self)
        check_group_params(self)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("preconditioner", "adam")
            group.setdefault("bias_correction", True)
            group.setdefault("prox_metric", "preconditioned")
            group.setdefault("regularizer", None)
            group.setdefault("lam", 0.0)
        self.__dict__.setdefault("check_finite", True)
        self.__dict__.setdefault("implementation", "auto")
        self.__dict__.setdefault("_scratch", _fused.Scratch())
        self.__dict__.setdefault("_last_info", [{} for _ in self.param_groups])

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        super().add_param_group(param_group)
        if hasattr(self, "_last_info"):  # after __init__: normalize the new group's regularizer
            self._last_info.append({})
            init_regularizer_groups(self)
            check_group_params(self)

    def _init_group(self, group: dict[str, Any]) -> tuple[list[Tensor], ...]:
        params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
        needs_v = group["preconditioner"] != "identity"
        for p in group["params"]:
            if p.grad is None:
                continue
            if p.grad.is_sparse:
                raise ValueError("ProxGen does not support sparse gradients; use dense gradients")
            if torch.is_complex(p):
                raise ValueError("ProxGen does not support complex parameters")
            state = self.state[p]
            if len(state) == 0:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if needs_v:
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            if needs_v and "exp_avg_sq" not in state:
                raise ValueError(
                    f"preconditioner {group['preconditioner']!r} needs state 'exp_avg_sq' that this "
                    "parameter lacks (the group was created with preconditioner='identity'); "
                    "start a new optimizer to change the preconditioner"
                )
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"] if needs_v else None)
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_avg_sqs, steps

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """One ProxGen step on every param group; ``closure`` re-evaluates the loss (optional)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        gathered = [self._init_group(group) for group in self.param_groups]
        if self.check_finite:
            check_finite_grads([g for gs in gathered for g in gs[1]], optimizer=self)
        for i, (group, (params, grads, exp_avgs, exp_avg_sqs, steps)) in enumerate(
            zip(self.param_groups, gathered)
        ):
            info: dict[str, Any] = {}
            beta1, beta2 = group["betas"]
            proxgen(
                params,
                grads,
                exp_avgs,
                exp_avg_sqs,
                steps,
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                regularizer=group_regularizer(group),
                preconditioner=group["preconditioner"],
                bias_correction=group["bias_correction"],
                prox_metric=group["prox_metric"],
                implementation=self.implementation,
                info=info,
                two_stage=self._two_stage,
                scratch=self._scratch,
            )
            if i < len(self._last_info):
                self._last_info[i] = info
        return loss

    def denoms(self, group: dict[str, Any]) -> list[Tensor | None]:
        """The diagonal metric :math:`D_t` of each parameter of ``group`` at its last step (None if no state).

        The identity preconditioner gives a tensor of ones. Recomputed from the state, so it costs one
        pass per tensor; meant for callbacks and tests, not for the hot path.
        """
        out: list[Tensor | None] = []
        beta2 = group["betas"][1]
        for p in group["params"]:
            state = self.state.get(p)
            if not state:
                out.append(None)
                continue
            step = float(state["step"])
            out.append(
                _denom(
                    p,
                    state.get("exp_avg_sq"),
                    step,
                    beta2,
                    group["eps"],
                    group["preconditioner"],
                    group["bias_correction"],
                )
            )
        return out

    def prox_stats(self) -> list[dict[str, Any]]:
        """Per-group statistics of the last step, for a callback to log (computed on call).

        Returns:
            One dict per param group with ``lr``, ``lam``, ``regularizer`` (its name or None),
            ``mean_threshold`` (α·λ·mean(1/D) over the group's elements, the ℓ1 soft-threshold
            averaged; a 0-dim tensor, 0 without regularizer), ``zeros`` and ``numel`` (exact zeros
            among the group's parameters; 0-dim tensors, no host read) and, when the prox was
            inexact, ``inner_iters`` from the solver.
        """
        out = []
        for i, group in enumerate(self.param_groups):
            metric_fn = self.denoms if group["prox_metric"] == "preconditioned" else None
            info = self._last_info[i] if i < len(self._last_info) else {}
            out.append(group_stats(self, group, metric_fn, info))
        return out


ProxAdam = ProxGen
"""Alias of :class:`ProxGen` (the paper's "proximal Adam")."""


def _check_hparams(
    lr: float, betas: Any, eps: float, weight_decay: float, preconditioner: str, prox_metric: str
) -> None:
    if isinstance(lr, Tensor):
        raise ValueError("lr must be a float (a tensor lr is not supported); got a Tensor")
    if not isinstance(lr, (int, float)) or not (lr > 0) or math.isinf(lr):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (rho, beta), got {betas!r}")
    for name, b in zip(("betas[0]", "betas[1]"), betas):
        if not isinstance(b, (int, float)) or not 0.0 <= b < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {b!r}")
    if not isinstance(eps, (int, float)) or not (eps > 0) or math.isinf(eps):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if not isinstance(weight_decay, (int, float)) or not (weight_decay >= 0) or math.isinf(weight_decay):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if preconditioner not in _PRECONDITIONERS:
        raise ValueError(f"preconditioner must be one of {_PRECONDITIONERS}, got {preconditioner!r}")
    if prox_metric not in _PROX_METRICS:
        raise ValueError(f"prox_metric must be one of {_PROX_METRICS}, got {prox_metric!r}")


def _denom(
    p: Tensor,
    v: Tensor | None,
    step: float,
    beta2: float,
    eps: float,
    preconditioner: str,
    bias_correction: bool,
) -> Tensor:
    """D = C + δ for one tensor (the same arithmetic as torch's Adam/RMSprop/Adagrad)."""
    if preconditioner == "identity" or v is None:
        return torch.ones_like(p)
    if preconditioner == "adam" and bias_correction:
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        return (v.sqrt() / bias_correction2_sqrt).add_(eps)
    return v.sqrt().add_(eps)


def proxgen(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor | None],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    regularizer: Regularizer | None,
    preconditioner: str,
    bias_correction: bool,
    prox_metric: str,
    implementation: str = "auto",
    info: dict[str, Any] | None = None,
    two_stage: bool = False,
    scratch: _fused.Scratch | None = None,
) -> None:
    """Functional ProxGen step (see :class:`ProxGen` for the math); updates tensors in place.

    ``two_stage=True`` is the two-stage Prox-SGD of Yang et al. (see
    :class:`~lightning_prox.optim.TwoStageProxSGD`); it always runs the per-tensor loop.
    """
    if not params:
        return
    if two_stage:
        _single_tensor_proxgen(
            params, grads, exp_avgs, exp_avg_sqs, state_steps, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
            weight_decay=weight_decay, regularizer=regularizer, preconditioner=preconditioner,
            bias_correction=bias_correction, prox_metric=prox_metric, info=info, two_stage=True,
        )  # fmt: skip
        return
    kwargs: dict[str, Any] = dict(
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        regularizer=regularizer,
        preconditioner=preconditioner,
        bias_correction=bias_correction,
        prox_metric=prox_metric,
        info=info,
    )
    if implementation == "forloop":
        _single_tensor_proxgen(params, grads, exp_avgs, exp_avg_sqs, state_steps, **kwargs)
    else:
        _multi_tensor_proxgen(
            params, grads, exp_avgs, exp_avg_sqs, state_steps, **kwargs,
            scratch=scratch, implementation=implementation,
        )  # fmt: skip


def _single_tensor_proxgen(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor | None],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    regularizer: Regularizer | None,
    preconditioner: str,
    bias_correction: bool,
    prox_metric: str,
    info: dict[str, Any] | None,
    two_stage: bool = False,
) -> None:
    """The readable reference: one tensor at a time, the prox through ``regularizer.prox``."""
    do_prox = regularizer is not None and regularizer.lam > 0
    for i, param in enumerate(params):
        grad, exp_avg, exp_avg_sq, step_t = grads[i], exp_avgs[i], exp_avg_sqs[i], state_steps[i]
        step_t += 1
        step = float(step_t)  # a CPU tensor: no device sync
        if weight_decay != 0:
            param.mul_(1 - lr * weight_decay)
        exp_avg.lerp_(grad, 1 - beta1)
        if preconditioner in ("adam", "rmsprop"):
            exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        elif preconditioner == "adagrad":
            exp_avg_sq.addcmul_(grad, grad, value=1)
        bias_correction1 = 1 - beta1**step if bias_correction else 1.0
        if two_stage:
            _two_stage_update(
                param, exp_avg, exp_avg_sq, step, lr, beta2, eps, preconditioner, bias_correction,
                bias_correction1, regularizer if do_prox else None, prox_metric, info,
            )  # fmt: skip
            continue
        step_size = lr / bias_correction1
        if preconditioner == "identity":
            denom = None
            param.add_(exp_avg, alpha=-step_size)
        else:
            denom = _denom(param, exp_avg_sq, step, beta2, eps, preconditioner, bias_correction)
            param.addcdiv_(exp_avg, denom, value=-step_size)
        if do_prox:
            metric = denom if prox_metric == "preconditioned" else None
            prox_tensors_(regularizer, [param], lr, None if metric is None else [metric], info, fast=False)


def _two_stage_update(
    param: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor | None,
    step: float,
    lr: float,
    beta2: float,
    eps: float,
    preconditioner: str,
    bias_correction: bool,
    bias_correction1: float,
    regularizer: Regularizer | None,
    prox_metric: str,
    info: dict[str, Any] | None,
) -> None:
    """Yang et al.: θ̃ = prox^D_{R}(θ − m̂/D) with unit step, then θ ← θ + α(θ̃ − θ)."""
    start = param.clone()
    if preconditioner == "identity":
        denom = None
        param.add_(exp_avg, alpha=-1.0 / bias_correction1)
    else:
        denom = _denom(param, exp_avg_sq, step, beta2, eps, preconditioner, bias_correction)
        param.addcdiv_(exp_avg, denom, value=-1.0 / bias_correction1)
    if regularizer is not None:
        metric = denom if prox_metric == "preconditioned" else None
        prox_tensors_(regularizer, [param], 1.0, None if metric is None else [metric], info, fast=False)
    param.copy_(start.lerp_(param, lr))


def _multi_tensor_proxgen(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor | None],
    state_steps: list[Tensor],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    regularizer: Regularizer | None,
    preconditioner: str,
    bias_correction: bool,
    prox_metric: str,
    info: dict[str, Any] | None,
    scratch: _fused.Scratch | None = None,
    implementation: str = "fast",
) -> None:
    """Fast path: torch's fused AdamW kernel (CPU) or multi-tensor ops for the smooth part, one prox pass.

    Tensors are grouped by (device, dtype); every per-tensor scalar comes from the CPU step counters,
    so nothing waits on the device. ℓ1 under Adam's metric runs the chunked in-place kernel of
    :mod:`lightning_prox.regularizers._fused`, rebuilding D from ``v``; ``"compiled"`` (and
    ``"auto"`` for a large regularized group) runs the whole Adam + ℓ1 update as one compiled pass
    per tensor where it applies (CPU, contiguous, Adam metric with bias correction).
    """
    do_prox = regularizer is not None and regularizer.lam > 0
    scratch = scratch if scratch is not None else _fused.Scratch()
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_sqs, state_steps]  # type: ignore[list-item]
    )
    for (device, dtype), ((d_params, d_grads, d_m, d_v, d_steps), _) in grouped.items():
        d_params = list(d_params)
        torch._foreach_add_(d_steps, 1)
        steps = [float(s) for s in d_steps]  # CPU counters: no device sync
        l1_fast = do_prox and _fused.supports(regularizer, d_params)
        bc2_sqrts = [
            (1 - beta2**s) ** 0.5 if preconditioner == "adam" and bias_correction else 1.0 for s in steps
        ]
        if (
            implementation in ("compiled", "auto")
            and device.type == "cpu"
            and preconditioner == "adam"
            and bias_correction
            and prox_metric == "preconditioned"
            and l1_fast  # plain groups: torch's fused kernel is faster than per-tensor calls, and exact
            and dtype in (torch.float32, torch.float64)
            and (implementation == "compiled" or sum(p.numel() for p in d_params) >= AUTO_COMPILE_NUMEL)
            and _fused.compiled_available()
            and all(t.is_contiguous() for t in (*d_params, *d_grads, *d_m, *d_v))
        ):
            c = lr * regularizer.lam
            # scalars in the parameters' dtype: float64 scalars would make the float32 loop
            # compute in float64 (~25% slower); torch's fused Adam also rounds them to float32
            scalars = [
                torch.tensor(
                    [1 - lr * weight_decay, 1 - beta1, beta2, 1 - beta2, lr / (1 - beta1**s), b, eps, c],
                    dtype=dtype,
                )
                for s, b in zip(steps, bc2_sqrts)
            ]
            if _fused.compiled_adam_l1_(d_params, list(d_grads), list(d_m), list(d_v), scalars):
                continue
        if preconditioner == "adam" and bias_correction and device.type == "cpu":
            torch._fused_adamw_(
                d_params, d_grads, d_m, d_v, [], d_steps, amsgrad=False, lr=lr, beta1=beta1, beta2=beta2,
                weight_decay=weight_decay, eps=eps, maximize=False, grad_scale=None, found_inf=None,
            )  # fmt: skip
        else:
            if weight_decay != 0:
                torch._foreach_mul_(d_params, 1 - lr * weight_decay)
            torch._foreach_lerp_(d_m, d_grads, 1 - beta1)
            if preconditioner in ("adam", "rmsprop"):
                torch._foreach_mul_(d_v, beta2)
                torch._foreach_addcmul_(d_v, d_grads, d_grads, 1 - beta2)
            elif preconditioner == "adagrad":
                torch._foreach_addcmul_(d_v, d_grads, d_grads, 1)
            step_sizes = [-lr / (1 - beta1**s if bias_correction else 1.0) for s in steps]
            if preconditioner == "identity":
                if len(set(step_sizes)) == 1:
                    torch._foreach_add_(d_params, d_m, alpha=step_sizes[0])
                else:
                    for p, m, a in zip(d_params, d_m, step_sizes):
                        p.add_(m, alpha=a)
            else:
                denoms = _foreach_denoms(d_v, steps, beta2, eps, preconditioner, bias_correction)
                torch._foreach_addcdiv_(d_params, d_m, denoms, step_sizes)
        if not do_prox:
            continue
        if prox_metric == "euclidean" or preconditioner == "identity":
            prox_tensors_(regularizer, d_params, lr, None, info)
        elif l1_fast:
            _fused.soft_threshold_adam_metric_(
                d_params, list(d_v), lr * regularizer.lam, bc2_sqrts, eps, scratch
            )
        else:
            reuse = scratch if device.type == "cpu" else None  # GPU allocators cache blocks already
            metrics = _foreach_denoms(d_v, steps, beta2, eps, preconditioner, bias_correction, reuse)
            prox_tensors_(regularizer, d_params, lr, metrics, info)


def _foreach_denoms(
    vs: list[Tensor],
    steps: list[float],
    beta2: float,
    eps: float,
    preconditioner: str,
    bias_correction: bool,
    scratch: _fused.Scratch | None = None,
) -> list[Tensor]:
    """D = C + δ for a list of tensors, rounded exactly as :func:`_denom`.

    With ``scratch`` the result lives in its reused buffer (valid until the next call): no
    parameter-sized allocation per step.
    """
    if scratch is None:
        denoms = torch._foreach_sqrt(vs)
    else:
        denoms = scratch.views(vs)
        for i, v in enumerate(vs):
            if v.is_contiguous():
                torch.sqrt(v, out=denoms[i])
            else:  # keep v's layout (e.g. channels_last), as the allocating path does
                denoms[i] = v.sqrt()
    if preconditioner == "adam" and bias_correction:
        torch._foreach_div_(denoms, [(1 - beta2**s) ** 0.5 for s in steps])
    torch._foreach_add_(denoms, eps)
    return denoms
