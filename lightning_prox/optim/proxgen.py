"""ProxGen: stochastic proximal gradient with a diagonal preconditioner (proximal Adam, RMSprop, AdaGrad).

Paper: Yun, Lozano and Yang (2021), "Adaptive Proximal Gradient Methods for Structured Neural
Networks", NeurIPS (Algorithms 1 and 2; the arXiv version is "A General Family of Stochastic
Proximal Gradient Methods for Deep Learning"). Reference implementation: ``abcdxyzpqrst/proxgen``
(``opt.py``), used only as a numerical cross-check.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor
from torch.optim import Optimizer

from ..regularizers import GroupLasso, _fused
from ..regularizers._base import Regularizer
from . import _group_kernels, _l1_kernels
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

__all__ = ["ProxAdam", "ProxGen", "proxgen"]

Preconditioner = Literal["adam", "rmsprop", "adagrad", "identity"]
ProxMetric = Literal["preconditioned", "euclidean"]

_PRECONDITIONERS = ("adam", "rmsprop", "adagrad", "identity")
_PROX_METRICS = ("preconditioned", "euclidean")
_HALF = (torch.float16, torch.bfloat16)
#: ``implementation="auto"`` runs the native Adam + prox pass (ℓ1, ℓ0, Lq, MCP, SCAD, Quantization) for a
#: (device, dtype) bucket of a regularized group from this many elements on (smaller models: the eager step costs little, and
#: nothing is built).
AUTO_NATIVE_NUMEL = 1 << 16


class ProxGen(ProxOptimizer):
    r"""ProxGen (proximal Adam / RMSprop / AdaGrad) with decoupled weight decay (ProxGenW).

    .. math::

        \begin{aligned}
        &\textbf{input: } \alpha \text{ (lr)},\ \rho, \beta \text{ (betas)},\ \delta \text{ (eps)},\
            \zeta \text{ (weight\_decay)},\ R_\lambda \text{ (regularizer, } \lambda = \text{lam)},\
            \kappa \text{ (threshold\_cap)} \\
        &\textbf{initialize: } m_0 = 0 \text{ (exp\_avg)},\ v_0 = 0 \text{ (exp\_avg\_sq)} \\
        &\textbf{for } t = 1, 2, \dots: \\
        &\quad g_t = \pm\nabla f(\theta_{t-1}) \quad (-\text{ with maximize}) \\
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
        &\quad \bar D_t = \max(D_t,\ D_{\min}),\ D_{\min} = \lambda\alpha\,(c/(\kappa\alpha))^{1/p}
            && \text{the prox metric (} \bar D_t = D_t \text{ when } \kappa = \text{None)} \\
        &\quad \theta_t = \operatorname{prox}^{\bar D_t}_{\alpha R_\lambda}(\hat\theta_t)
            = \operatorname{argmin}_x\ \alpha R_\lambda(x) + \tfrac12 \textstyle\sum_i
            \bar D_{t,i}(x_i - \hat\theta_{t,i})^2
        \end{aligned}

    With ``threshold_cap=None`` and the other defaults this is the update of the paper (Algorithm
    2); ``bias_correction=False`` uses the raw statistics (:math:`\hat m_t = m_t`, no
    :math:`1-\beta^t`). ``prox_metric="euclidean"`` replaces the metric by 1 in the prox only (the
    original ProxQuant update of Bai, Wang and Liberty, 2019, as in Table 2 of the ProxGen paper);
    ``"preconditioned"`` is ProxGen (with a ``Quantization`` regularizer: revised ProxQuant). For ℓ1
    the prox is soft thresholding at :math:`\alpha\lambda / \bar D_{t,i}` (paper Eq. 3).

    With ``regularizer=None`` (or ``lam = 0``) the update is exactly ``torch.optim.AdamW`` (adam),
    ``torch.optim.RMSprop`` (rmsprop with ``betas=(0, alpha)``, ``weight_decay=0``) and
    ``torch.optim.Adagrad`` (adagrad with ``betas[0]=0``, ``weight_decay=0``).

    **Coordinates with no or tiny gradient statistics (the metric floor).** Where :math:`v_t` is 0 or
    tiny, :math:`D_t \approx \delta = 10^{-8}` and the paper's ℓ1 threshold
    :math:`\alpha\lambda/D_t` is enormous: one step zeroes the coordinate. In a real network this
    happens in two ways. (1) *Zero for now*: a block behind a zero-initialized norm layer (timm
    ResNets' default ``zero_init_last=True``) gets exactly zero gradients at step 1 and tiny ones for
    a few steps after; the paper's update zeroes 98% of a timm ``resnet18``'s conv weights at step 1,
    for any λ, and they never recover. Single-sample statistics at t = 1 do the same to every
    coordinate whose first gradient happens to be small. (2) *Never any gradient*: at 32×32 input a
    timm ``resnet18``'s last stage runs at 1×1, so 8 of the 9 taps of its 3×3 convs only ever see
    zero padding; these weights do not change the loss at all.

    The default ``threshold_cap=1`` floors the prox metric at the :math:`D_{\min}` where the
    regularizer's zeroing threshold :math:`c\,(\alpha\lambda/D)^p` (its
    :attr:`~lightning_prox.regularizers.Regularizer.zero_threshold_law`) equals κ·α. For ℓ1, group
    lasso and the other soft thresholds (c = p = 1) that is λ/κ = λ: the soft threshold is
    :math:`\alpha \min(\lambda / D_{t,i}, \kappa)`; for ℓ0 (:math:`\sqrt{2\alpha\lambda/D}`) it is
    2λ/(κ²α), for Lq(½) and Lq(⅔) the same from their closed-form thresholds. So the prox never
    zeroes a coordinate farther than κ·α from zero in one step, the distance Adam's own step moves it
    (|m̂/D| ≲ 1). Coordinates with ordinary statistics (D > D_min) get exactly the paper's prox. A coordinate with no gradient history at all
    (:math:`v_t = 0`) gets the Euclidean prox (metric 1, threshold :math:`\alpha\lambda`). Kind (1)
    coordinates shrink by at most α per
    step until their gradient arrives and then follow the paper's update; kind (2) coordinates shrink
    by α per step and reach zero after |θ|/α steps: they are dead weights, and zeroing them costs no
    loss, but not in one step. ``threshold_cap=None`` is the paper-exact update (the floor only
    applies to the adam/rmsprop/adagrad preconditioners under ``prox_metric="preconditioned"``; the
    smooth step is never changed, so the reductions to the torch optimizers are exact either way).

    **Numerics.** float16/bfloat16 parameters keep float16/bfloat16 state (as ``torch.optim.Adam``)
    but the update, the metric, ε and the thresholds are computed in float32. A second moment that
    overflows (|g| ≳ 1e19 in float32, ≳ 2e4 in float16) gives an infinite metric, which pins the
    coordinate (zero step, zero threshold) instead of writing NaN. ``lr = 0`` is legal: the moments
    update (as the torch parents do) and the prox with step 0 is the identity.

    .. note::
        Departures from / choices left open by the paper: :math:`C_t` is the square root of the
        EMA (Appendix D) and δ sits outside the root as in Adam; AdaGrad has no 1/t factor
        (Section 2, not Appendix D); the first moment :math:`m_t` is used with every
        preconditioner (Algorithm 1), so rmsprop/adagrad reduce to their torch parents only with
        ``betas[0] = 0``; rmsprop never bias-corrects :math:`v_t` (that is what distinguishes it from
        adam); the identity preconditioner ignores ``eps``.

    Statistics: :meth:`prox_stats` returns, per param group, the mean effective threshold scale
    :math:`\alpha\lambda\,\mathrm{mean}_i(1/\bar D_{t,i})`, the exact-zero count and the number of
    inner iterations of an inexact prox; it is computed when called (after a step), not during it.

    Memory: the state is 8 bytes per parameter value (``exp_avg``, ``exp_avg_sq`` in float32 for
    float32 and half parameters; 4 with ``preconditioner="identity"``) plus a one-value ``step`` per tensor.

    Args:
        params: iterable of parameters or param-group dicts (a group may set its own
            ``regularizer``/``lam``, ``lr``, ``betas``, ``preconditioner``, ...).
        lr: step size α ≥ 0.
        betas: (ρ, β): the momentum of :math:`m_t` and the EMA factor of :math:`v_t`, each in [0, 1).
        eps: δ > 0 added to :math:`C_t`.
        weight_decay: decoupled weight decay ζ ≥ 0 (applied first, scaled by α).
        regularizer: default regularizer of every group (``None``: plain Adam/AdamW).
        preconditioner: ``"adam"``, ``"rmsprop"``, ``"adagrad"`` or ``"identity"``.
        bias_correction: divide by :math:`1-\rho^t` and :math:`1-\beta^t` (adam) as Adam does.
        prox_metric: ``"preconditioned"`` (ProxGen) or ``"euclidean"`` (original ProxQuant).
        threshold_cap: κ > 0, the cap of the metric floor described above (λ/κ for ℓ1) (default 1), or ``None`` for the
            paper's exact update.
        {check_finite}
        {implementation} Here the native kernel is the smooth step + the prox of ℓ1, ℓ0, Lq
            (q = 0, 1/2, 2/3), MCP, SCAD (exact) or Quantization (q = 1, at most 4 levels) (adam,
            rmsprop or adagrad preconditioner) as one C++ pass per tensor on
            CPU (float32/float64; the moments as the eager step's, the adam ones to the bit; the
            parameters to a few ulp, a coordinate within rounding of an ℓ0/Lq zeroing threshold on
            either side; built with the system compiler in a few seconds, once per machine);
            ``"auto"`` uses it for a regularized group's tensors from ``AUTO_NATIVE_NUMEL`` =
            2^16 elements on. Groups without a regularizer always run torch's Adam kernels.
            A :class:`~lightning_prox.regularizers.GroupLasso` group (exact solver, the tensors' own
            grouping) runs one native pass too: per tile of adjacent groups, the smooth step, the
            floored metric and the group's Newton solve in cache (the parameters to a few ulp of the
            eager step, with the same zero groups and solver statistics).
        {torch_flags} For ProxGen ``fused=None`` uses torch's fused AdamW kernel for the smooth
            part on CPU (adam with bias correction), ``fused=True`` also on CUDA,
            ``fused=False`` the multi-tensor ops.

    Raises:
        ValueError: for an invalid hyperparameter (naming the value) or a regularizer that does not
            fit a parameter (naming it), and from :meth:`step` for non-finite gradients
            (``check_finite=True``) or sparse gradients, before anything is changed.

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

    _setstate_defaults = {
        "preconditioner": "adam",
        "bias_correction": True,
        "prox_metric": "preconditioned",
        # checkpoints from before the floor existed resume with the update that wrote them
        "threshold_cap": None,
    }
    _torch_flags = frozenset({"maximize", "foreach", "fused"})

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
        threshold_cap: float | None = 1.0,
        *,
        check_finite: bool = True,
        implementation: Implementation = "auto",
        maximize: bool = False,
        foreach: bool | None = None,
        fused: bool | None = None,
        capturable: bool = False,
        differentiable: bool = False,
    ) -> None:
        self._scratch = _fused.Scratch()
        defaults = dict(
            lr=lr,
            betas=tuple(betas) if isinstance(betas, (tuple, list)) else betas,
            eps=eps,
            weight_decay=weight_decay,
            regularizer=regularizer,
            preconditioner=preconditioner,
            bias_correction=bool(bias_correction),
            prox_metric=prox_metric,
            threshold_cap=threshold_cap,
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

    def _native_libraries(self) -> list[tuple[str, Any]]:
        libs = []
        if _native_size_groups(self, _l1_kernels.covers, AUTO_NATIVE_NUMEL):
            libs.append(("_l1_kernels.cpp", _l1_kernels.KERNELS))
        if any(isinstance(group_regularizer(g), GroupLasso) for g in self.param_groups):
            libs.append(("_group_kernels.cpp", _group_kernels.KERNELS))  # any size
        return libs

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("_scratch", _fused.Scratch())

    def _check_group(self, group: dict[str, Any]) -> None:
        _check_hparams(
            group["betas"],
            group["eps"],
            group["weight_decay"],
            group["preconditioner"],
            group["prox_metric"],
            group["threshold_cap"],
        )
        check_fused_devices(group)

    def _init_group(self, group: dict[str, Any], params: list[Tensor]) -> tuple[list[Tensor], ...]:
        exp_avgs, exp_avg_sqs, steps = [], [], []
        needs_v = group["preconditioner"] != "identity"
        for p in params:  # checked before any state is created: an error leaves the state as it was
            state = self.state.get(p)
            if state and needs_v and "exp_avg_sq" not in state:
                raise ValueError(
                    f"preconditioner {group['preconditioner']!r} needs state 'exp_avg_sq' that a "
                    f"parameter of shape {tuple(p.shape)} lacks (its group was created with "
                    "preconditioner='identity'); start a new optimizer to change the preconditioner"
                )
        for p in params:
            state = self.state[p]
            if len(state) == 0:
                # half-precision parameters keep float32 moments: (1 − β2)·g² underflows float16 for
                # |g| < 1e-2, and a zero second moment turns the step into m/ε
                dtype = torch.float32 if p.dtype in (torch.float16, torch.bfloat16) else p.dtype
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
                state["exp_avg"] = torch.zeros_like(p, dtype=dtype, memory_format=torch.preserve_format)
                if needs_v:
                    state["exp_avg_sq"] = torch.zeros_like(
                        p, dtype=dtype, memory_format=torch.preserve_format
                    )
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"] if needs_v else None)
            steps.append(state["step"])
        return exp_avgs, exp_avg_sqs, steps

    def _hparams(self, group: dict[str, Any]) -> dict[str, Any]:
        beta1, beta2 = group["betas"]
        return dict(
            lr=group["lr"],
            beta1=beta1,
            beta2=beta2,
            eps=group["eps"],
            weight_decay=group["weight_decay"],
            regularizer=group_regularizer(group),
            preconditioner=group["preconditioner"],
            bias_correction=group["bias_correction"],
            prox_metric=group["prox_metric"],
            threshold_cap=group["threshold_cap"],
        )

    def _smooth_step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        state: tuple[list[Tensor], ...],
        info: dict[str, Any],
        *,
        fuse_prox: bool,
    ) -> list[_Bucket]:
        exp_avgs, exp_avg_sqs, steps = state
        return _smooth(
            params, grads, exp_avgs, exp_avg_sqs, steps, **self._hparams(group),
            implementation=self.implementation, foreach=group["foreach"], fused=group["fused"],
            fuse_prox=fuse_prox,
        )  # fmt: skip

    def _prox_step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        state: Any,
        ctx: list[_Bucket],
        info: dict[str, Any],
    ) -> None:
        _prox(ctx, **self._hparams(group), info=info, scratch=self._scratch)

    def denoms(self, group: dict[str, Any]) -> list[Tensor | None]:
        """The diagonal metric :math:`D_t` of each parameter of ``group`` at its last step (None if no state).

        The identity preconditioner gives a tensor of ones. Recomputed from the state (in float32
        for half-precision parameters), so it costs one pass per tensor; meant for callbacks and
        tests, not for the hot path. The prox uses :math:`\\max(D_t, \\lambda/\\kappa)` (see
        ``threshold_cap``).
        """
        out: list[Tensor | None] = []
        beta2 = group["betas"][1]
        for p in group["params"]:
            state = self.state.get(p)
            if not state:
                out.append(None)
                continue
            v = state.get("exp_avg_sq")
            out.append(
                _denom(
                    p,
                    None if v is None else _f32(v),
                    float(state["step"]),
                    beta2,
                    group["eps"],
                    group["preconditioner"],
                    group["bias_correction"],
                )
            )
        return out

    def _prox_metrics(self, group: dict[str, Any]) -> list[Tensor | None] | None:
        if group["prox_metric"] != "preconditioned":
            return None
        reg = group_regularizer(group)
        floor = _floor(
            reg, group["lr"], group["threshold_cap"], group["preconditioner"], group["prox_metric"]
        )
        out: list[Tensor | None] = []
        for p, d in zip(group["params"], self.denoms(group)):
            v = self.state[p].get("exp_avg_sq") if d is not None else None
            fill = _history_free_metric(reg, floor)
            out.append(d if d is None or v is None or floor == 0.0 else _floored([d], [v], floor, fill)[0])
        return out


ProxGen.__doc__ = (ProxGen.__doc__ or "").replace("{check_finite}", _check_finite_doc)
ProxGen.__doc__ = ProxGen.__doc__.replace("{implementation}", _implementation_doc)
ProxGen.__doc__ = ProxGen.__doc__.replace("{torch_flags}", _torch_flags_doc)

ProxAdam = ProxGen
"""Alias of :class:`ProxGen` (the paper's "proximal Adam")."""


def _native_size_groups(
    opt: ProxOptimizer, covered: Callable[[Regularizer | None], bool], min_numel: int
) -> bool:
    """Whether a param group whose regularizer is ``covered`` would run the native pass: any size
    under ``implementation="native"``, ``min_numel`` values or more under ``"auto"``."""
    return any(
        covered(group_regularizer(g))
        and (opt.implementation == "native" or sum(p.numel() for p in g["params"]) >= min_numel)
        for g in opt.param_groups
    )


def _check_hparams(
    betas: Any, eps: float, weight_decay: float, preconditioner: str, prox_metric: str, threshold_cap: Any
) -> None:
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (rho, beta), got {betas!r}")
    for name, b in zip(("betas[0]", "betas[1]"), betas):
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0.0 <= b < 1.0:
            raise ValueError(f"{name} must be in [0, 1), got {b!r}")
    if not isinstance(eps, (int, float)) or not (eps > 0) or math.isinf(eps):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if not isinstance(weight_decay, (int, float)) or not (weight_decay >= 0) or math.isinf(weight_decay):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if preconditioner not in _PRECONDITIONERS:
        raise ValueError(f"preconditioner must be one of {_PRECONDITIONERS}, got {preconditioner!r}")
    if prox_metric not in _PROX_METRICS:
        raise ValueError(f"prox_metric must be one of {_PROX_METRICS}, got {prox_metric!r}")
    if threshold_cap is not None and (
        isinstance(threshold_cap, bool)
        or not isinstance(threshold_cap, (int, float))
        or not threshold_cap > 0
        or math.isinf(threshold_cap)
    ):
        raise ValueError(
            f"threshold_cap must be a finite number > 0 or None (the paper's exact update), got {threshold_cap!r}"
        )


def _floor(
    regularizer: Regularizer | None,
    step: float,
    threshold_cap: float | None,
    preconditioner: str,
    prox_metric: str,
) -> float:
    """The prox metric floor (0: none): the smallest D at which the zeroing threshold
    c·(step·λ/D)^p of the regularizer's :attr:`~Regularizer.zero_threshold_law` is at most κ·step;
    λ/κ for soft thresholding (p = 1, c = 1), 2λ/(κ²·step) for ℓ0."""
    if (
        regularizer is None
        or threshold_cap is None
        or preconditioner == "identity"
        or prox_metric != "preconditioned"
    ):
        return 0.0
    lam = regularizer.lam
    c, p = regularizer.zero_threshold_law
    if p == 1.0:
        return lam * c / threshold_cap  # step-free (and λ/κ to the bit for c = 1)
    if step <= 0:
        return 0.0  # no prox at step 0
    return lam * step * (c / (threshold_cap * step)) ** (1.0 / p)


def _f32(t: Tensor) -> Tensor:
    return t.float() if t.dtype in _HALF else t


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


@dataclass
class _Bucket:
    """One (device, dtype) bucket between the smooth step and the prox."""

    params: list[Tensor]
    exp_avg_sqs: list[Tensor | None]
    steps: list[float]
    bc2_sqrts: list[float]
    done: bool = False  # the native kernel applied the prox already
    finish: Callable[[dict[str, Any] | None], None] | None = None  # its statistics, where the prox runs
    denoms: list[Tensor] | None = field(default=None)  # the reference loop's D (float32 for half)


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
    threshold_cap: float | None = None,
    implementation: str = "auto",
    foreach: bool | None = None,
    fused: bool | None = None,
    info: dict[str, Any] | None = None,
    scratch: _fused.Scratch | None = None,
) -> None:
    """Functional ProxGen step (see :class:`ProxGen` for the math); updates tensors in place.

    ``implementation`` is ``"auto"``, ``"eager"`` or ``"native"``; ``foreach=False`` runs the
    per-tensor reference loop. ``threshold_cap=None`` (the default here) is the paper's update.
    """
    if not params:
        return
    hp = dict(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, regularizer=regularizer,
        preconditioner=preconditioner, bias_correction=bias_correction, prox_metric=prox_metric,
        threshold_cap=threshold_cap,
    )  # fmt: skip
    buckets = _smooth(
        params, grads, exp_avgs, exp_avg_sqs, state_steps, **hp, implementation=implementation,
        foreach=foreach, fused=fused, fuse_prox=True,
    )  # fmt: skip
    _prox(buckets, **hp, info=info, scratch=scratch if scratch is not None else _fused.Scratch())


def _smooth(
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
    threshold_cap: float | None,
    implementation: str,
    foreach: bool | None,
    fused: bool | None,
    fuse_prox: bool,
) -> list[_Bucket]:
    """The smooth half (moments and preconditioned step) per (device, dtype) bucket, dispatched like
    torch's ``adam``: the reference loop (``foreach=False``), the native Adam + prox pass (which also
    applies the prox; only with ``fuse_prox``), torch's fused AdamW kernel, or multi-tensor ops."""
    hp = dict(
        lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        preconditioner=preconditioner, bias_correction=bias_correction,
    )  # fmt: skip
    if foreach is False:
        return [_single_tensor_smooth(params, grads, exp_avgs, exp_avg_sqs, state_steps, **hp)]
    do_prox = regularizer is not None and regularizer.lam > 0 and lr > 0
    floor = _floor(regularizer, lr, threshold_cap, preconditioner, prox_metric)
    grouped = Optimizer._group_tensors_by_device_and_dtype(
        [params, grads, exp_avgs, exp_avg_sqs, state_steps]  # type: ignore[list-item]
    )
    buckets = []
    for (device, dtype), ((d_params, d_grads, d_m, d_v, d_steps), _) in grouped.items():
        d_params = list(d_params)
        torch._foreach_add_(d_steps, 1)
        steps = [float(s) for s in d_steps]  # CPU counters: no device sync
        bc2_sqrts = [
            (1 - beta2**s) ** 0.5 if preconditioner == "adam" and bias_correction else 1.0 for s in steps
        ]
        bucket = _Bucket(d_params, list(d_v), steps, bc2_sqrts)
        buckets.append(bucket)
        if dtype in _HALF:  # metric, eps and the step in float32 (eps = 1e-8 underflows in float16)
            p32, g32, m32 = (
                [p.float() for p in d_params],
                [g.float() for g in d_grads],
                [m.float() for m in d_m],
            )
            v32 = [None if v is None else v.float() for v in d_v]
            _foreach_smooth(p32, g32, m32, v32, steps, **hp)
            torch._foreach_copy_(d_params, p32)
            torch._foreach_copy_(list(d_m), m32)
            if preconditioner != "identity":
                torch._foreach_copy_(list(d_v), v32)  # type: ignore[arg-type]
            continue
        # the smooth step and the prox in one native pass: what the passes share, then each its own
        native_pass = (
            fuse_prox
            and do_prox
            and implementation in ("native", "auto")
            and device.type == "cpu"
            and preconditioner != "identity"
            and prox_metric == "preconditioned"
            and fused is not False
            and (implementation == "native" or sum(p.numel() for p in d_params) >= AUTO_NATIVE_NUMEL)
            and all(t.is_contiguous() for t in (*d_params, *d_grads, *d_m, *d_v))
        )
        if native_pass and _group_kernels.fuses(regularizer) and _group_kernels.native_available():
            bucket.finish = _group_kernels.adam_group_lasso_(
                d_params, list(d_grads), list(d_m), list(d_v), steps, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                weight_decay=weight_decay, regularizer=regularizer, bc2_sqrts=bc2_sqrts, floor=floor,  # type: ignore[arg-type]
                fill=_history_free_metric(regularizer, floor), preconditioner=preconditioner,
                bias_correction=bias_correction,
            )  # fmt: skip
            bucket.done = True
            continue
        native_l1 = _fused.supports(regularizer, d_params)
        if native_pass and _l1_kernels.covers(regularizer) and _l1_kernels.native_available():
            kw = dict(
                lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, bc2_sqrts=bc2_sqrts,
                floor=floor, preconditioner=preconditioner, bias_correction=bias_correction,
            )  # fmt: skip
            if native_l1:
                _l1_kernels.adam_l1_(
                    d_params,
                    list(d_grads),
                    list(d_m),
                    list(d_v),
                    steps,
                    c=lr * regularizer.lam,
                    **kw,  # type: ignore[union-attr]
                )
            else:
                _l1_kernels.adam_prox_(
                    d_params, list(d_grads), list(d_m), list(d_v), steps, regularizer=regularizer,  # type: ignore[arg-type]
                    fill=_history_free_metric(regularizer, floor), **kw,
                )  # fmt: skip
            bucket.done = True
            continue
        use_fused = device.type == "cpu" if fused is None else (fused and device.type in ("cpu", "cuda"))
        if preconditioner == "adam" and bias_correction and use_fused:
            torch._fused_adamw_(
                d_params, d_grads, d_m, d_v, [], d_steps, amsgrad=False, lr=lr, beta1=beta1, beta2=beta2,
                weight_decay=weight_decay, eps=eps, maximize=False, grad_scale=None, found_inf=None,
            )  # fmt: skip
        else:
            _foreach_smooth(d_params, list(d_grads), list(d_m), list(d_v), steps, **hp)
    return buckets


def _foreach_smooth(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor | None],
    steps: list[float],
    *,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    preconditioner: str,
    bias_correction: bool,
) -> None:
    """Multi-tensor smooth step of one bucket whose step counters are already incremented."""
    if weight_decay != 0:
        torch._foreach_mul_(params, 1 - lr * weight_decay)
    torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
    vs: list[Tensor] = exp_avg_sqs  # type: ignore[assignment]
    if preconditioner in ("adam", "rmsprop"):
        torch._foreach_mul_(vs, beta2)
        torch._foreach_addcmul_(vs, grads, grads, 1 - beta2)
    elif preconditioner == "adagrad":
        torch._foreach_addcmul_(vs, grads, grads, 1)
    step_sizes = [-lr / (1 - beta1**s if bias_correction else 1.0) for s in steps]
    if preconditioner == "identity":
        if len(set(step_sizes)) == 1:
            torch._foreach_add_(params, exp_avgs, alpha=step_sizes[0])
        else:
            for p, m, a in zip(params, exp_avgs, step_sizes):
                p.add_(m, alpha=a)
    else:
        denoms = _foreach_denoms(vs, steps, beta2, eps, preconditioner, bias_correction)
        torch._foreach_addcdiv_(params, exp_avgs, denoms, step_sizes)


def _single_tensor_smooth(
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
    preconditioner: str,
    bias_correction: bool,
    unit_step: bool = False,
) -> _Bucket:
    """The readable reference, one tensor at a time (float32 arithmetic for half-precision tensors);
    keeps each tensor's D for the prox. ``unit_step``: the step is m̂/D without α (two-stage Prox-SGD)."""
    steps, bc2s, denoms = [], [], []
    for i, param in enumerate(params):
        grad, exp_avg, exp_avg_sq, step_t = grads[i], exp_avgs[i], exp_avg_sqs[i], state_steps[i]
        step_t += 1
        step = float(step_t)  # a CPU tensor: no device sync
        p, g, m = _f32(param), _f32(grad), _f32(exp_avg)
        v = None if exp_avg_sq is None else _f32(exp_avg_sq)
        if weight_decay != 0:
            p.mul_(1 - lr * weight_decay)
        m.lerp_(g, 1 - beta1)
        if preconditioner in ("adam", "rmsprop"):
            v.mul_(beta2).addcmul_(g, g, value=1 - beta2)  # type: ignore[union-attr]
        elif preconditioner == "adagrad":
            v.addcmul_(g, g, value=1)  # type: ignore[union-attr]
        bias_correction1 = 1 - beta1**step if bias_correction else 1.0
        step_size = (1.0 if unit_step else lr) / bias_correction1
        denom = _denom(p, v, step, beta2, eps, preconditioner, bias_correction)
        if preconditioner == "identity":
            p.add_(m, alpha=-step_size)
        else:
            p.addcdiv_(m, denom, value=-step_size)
        for dst, src in ((param, p), (exp_avg, m), (exp_avg_sq, v)):
            if dst is not None and src is not dst:
                dst.copy_(src)
        steps.append(step)
        bc2s.append((1 - beta2**step) ** 0.5 if preconditioner == "adam" and bias_correction else 1.0)
        denoms.append(denom)
    return _Bucket(list(params), list(exp_avg_sqs), steps, bc2s, denoms=denoms)


def _prox(
    buckets: list[_Bucket],
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
    threshold_cap: float | None,
    info: dict[str, Any] | None,
    scratch: _fused.Scratch,
    step: float | None = None,
) -> None:
    """The prox half: θ ← prox^{D̄}_{step·R}(θ̂) per bucket (``step`` defaults to lr).

    ℓ1 under Adam's metric runs the chunked in-place kernel (rebuilding D from ``v``); every other
    regularizer gets the floored metric through ``prox_multi``; half-precision tensors go through
    float32 copies.
    """
    step = lr if step is None else step
    if regularizer is None or regularizer.lam == 0 or step == 0:
        return
    floor = _floor(regularizer, step, threshold_cap, preconditioner, prox_metric)
    fill = _history_free_metric(regularizer, floor)
    euclidean = prox_metric == "euclidean" or preconditioner == "identity"
    for b in buckets:
        if b.finish is not None:
            b.finish(info)
        if b.done or not b.params:
            continue
        half = b.params[0].dtype in _HALF
        targets = [p.float() for p in b.params] if half else b.params
        if euclidean:
            prox_tensors_(regularizer, targets, step, None, info, fast=b.denoms is None)
        elif b.denoms is not None:  # the reference loop: its own D, the regularizer's prox per tensor
            for t, d, v in zip(targets, b.denoms, b.exp_avg_sqs):
                metric = _floored([d.clone()], [v], floor, fill)[0] if floor > 0 else d
                prox_tensors_(regularizer, [t], step, [metric], info, fast=False)
        elif not half and _fused.supports(regularizer, targets):
            _l1_kernels.soft_threshold_metric_(
                targets,
                b.exp_avg_sqs,
                step * regularizer.lam,
                b.bc2_sqrts,
                eps,
                floor,
                scratch,  # type: ignore[arg-type]
            )
        else:
            vs = [_f32(v) for v in b.exp_avg_sqs]  # type: ignore[arg-type]
            reuse = scratch if targets[0].device.type == "cpu" else None  # GPU allocators cache blocks
            metrics = _foreach_denoms(vs, b.steps, beta2, eps, preconditioner, bias_correction, reuse)
            if floor > 0:
                _floored(metrics, b.exp_avg_sqs, floor, fill)  # type: ignore[arg-type]
            prox_tensors_(regularizer, targets, step, metrics, info)
        if half:
            torch._foreach_copy_(b.params, targets)


def _floored(
    metrics: list[Tensor], exp_avg_sqs: list[Tensor], floor: float, fill: float = 1.0
) -> list[Tensor]:
    """D̄ = max(D, floor), and ``fill`` where v = 0 (no gradient history), in place."""
    torch._foreach_clamp_min_(metrics, floor)
    for d, v in zip(metrics, exp_avg_sqs):
        d.masked_fill_(v == 0, fill)
    return metrics


def _history_free_metric(regularizer: Regularizer | None, floor: float) -> float:
    """The metric of a coordinate without gradient history: Euclidean (1), raised to the floor for a
    hard threshold (ℓ0, Lq) whose Euclidean threshold would exceed the cap (soft thresholds keep 1:
    their Euclidean threshold lr·λ is within κ·lr for λ ≤ κ)."""
    if regularizer is None or regularizer.zero_threshold_law == (1.0, 1.0):
        return 1.0
    return max(1.0, floor)


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
