"""SR2: the stochastic proximal method with adaptive quadratic regularization of Lakhmiri, Orban and Lodi.

Lakhmiri, Orban and Lodi (2022, "A Stochastic Proximal Method for Nonsmooth Regularized Finite Sum
Optimization", arXiv 2206.06531, Algorithm 1). The method has no learning rate: a regularization
parameter σ (the inverse step) is adapted by an accept/reject test on the batch loss. The authors'
code is ``github.com/DouniaLakhmiri/SR2`` (``sr2_optim.py``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from ..regularizers._base import Regularizer
from ._base import ProxOptimizer, _check_finite_doc
from ._common import group_regularizer
from ._prox import prox_tensors_

__all__ = ["SR2"]

#: power iterations of ``sigma="hessian"`` (the authors use PyHessian's top eigenvalue)
HESSIAN_MAX_ITERS = 20
#: relative change of the eigenvalue estimate at which the power iteration stops early
HESSIAN_RTOL = 1e-4

_NO_CLOSURE = "SR2.step needs a closure that re-evaluates the loss with backward"
_NO_TRIAL = (
    "SR2 needs the loss at the trial point: pass trial_closure= (a forward on the same batch, no "
    "backward) or train through ProxMixin, which supplies it"
)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def _check_hparams(
    sigma: Any, sigma_min: Any, eta1: Any, eta2: Any, gamma1: Any, gamma2: Any, gamma3: Any
) -> tuple[float | None, float, float, float, float, float, float]:
    """Validate Algorithm 1's inputs (before anything is built); returns them as floats."""
    eta1, eta2 = _number("eta1", eta1), _number("eta2", eta2)
    if not 0 < eta1 <= eta2 < 1:
        raise ValueError(f"SR2 needs 0 < eta1 <= eta2 < 1, got eta1={eta1!r}, eta2={eta2!r}")
    g1, g2, g3 = _number("gamma1", gamma1), _number("gamma2", gamma2), _number("gamma3", gamma3)
    if not 0 < g3 <= 1 < g1 <= g2:
        raise ValueError(
            f"SR2 needs 0 < gamma3 <= 1 < gamma1 <= gamma2, got gamma1={g1!r}, gamma2={g2!r}, "
            f"gamma3={g3!r} (the paper's Table 1 lists gamma2=2.95 < gamma1, which Algorithm 1 forbids; "
            "leave gamma2 at its default, gamma1)"
        )
    smin = _number("sigma_min", sigma_min)
    if not smin > 0:
        raise ValueError(f"sigma_min must be > 0 (the theory needs a positive floor), got {sigma_min!r}")
    if isinstance(sigma, str):
        if sigma != "hessian":
            raise ValueError(f"sigma must be a number >= sigma_min or 'hessian', got {sigma!r}")
        return None, smin, eta1, eta2, g1, g2, g3
    s0 = _number("sigma", sigma)
    if not s0 >= smin:
        raise ValueError(
            f"SR2 needs sigma >= sigma_min > 0, got sigma={sigma!r}, sigma_min={sigma_min!r}; "
            "raise sigma or lower sigma_min"
        )
    return s0, smin, eta1, eta2, g1, g2, g3


def _f64(x: Any) -> float:
    """A loss (tensor, number, or a dict with ``"loss"``) as a Python float (nan when not a scalar)."""
    if isinstance(x, dict):
        x = x.get("loss")
    if x is None:
        return float("nan")
    if isinstance(x, Tensor):
        return float(x.detach().to(torch.float64).sum()) if x.numel() == 1 else float("nan")
    return float(x)


class SR2(ProxOptimizer):
    r"""SR2 (Lakhmiri, Orban & Lodi 2022, Algorithm 1): proximal steps of size 1/σ, σ set by a ρ test.

    One σ for the whole optimizer. At step t, with the batch ξ_t, the gradient
    :math:`g_t = \nabla f(x_t, \xi_t)` (from ``closure``) and
    :math:`R = \sum_{\text{groups}} R_\lambda` (each group's ``regularizer`` at ``lam``):

    .. math::

        \begin{aligned}
        &z_t = x_t - g_t / \sigma_t \qquad \text{(every tensor with a gradient)} \\
        &\hat x_t = \operatorname{prox}_{R/\sigma_t}(z_t) \text{ per regularized group, }
            \hat x_t = z_t \text{ elsewhere}, \qquad s_t = \hat x_t - x_t \\
        &\Delta\psi_t = R(x_t) - g_t^\top s_t - R(\hat x_t) \quad (\ge \tfrac12 \sigma_t \|s_t\|^2) \\
        &\Delta F_t = [f(x_t, \xi_t) + R(x_t)] - [f(\hat x_t, \xi_t) + R(\hat x_t)]
            \quad \text{(same batch: one extra forward, ``trial_closure``)} \\
        &\rho_t = \Delta F_t / \Delta\psi_t \\
        &\rho_t \ge \eta_1: x_{t+1} = \hat x_t; \qquad \text{else } x_{t+1} = x_t
            \text{ (bit-exact restore)},\ \sigma_{t+1} = \gamma_1 \sigma_t \\
        &\rho_t \ge \eta_2: \sigma_{t+1} = \max(\sigma_{\min}, \gamma_3 \sigma_t); \qquad
            \eta_1 \le \rho_t < \eta_2: \sigma_{t+1} = \sigma_t
        \end{aligned}

    The σ rule takes the left ends of Algorithm 1's intervals (the authors' code does the same) plus
    the σ_min floor that the paper's complexity analysis needs (Lemma 2) and the authors' code omits;
    γ2 only bounds the rejection interval [γ1σ, γ2σ] (checked γ1 ≤ γ2). Table 1 of the paper lists
    γ2 = 2.95 < γ1 = 5.56, which Algorithm 1 forbids, so ``gamma2`` defaults to ``gamma1``.

    * **Null step**: s_t = 0 exactly (a fixed point of the prox-gradient map, or 1/σ below the
      resolution of x): x and σ stay, no trial forward runs, and the step counts as ``null``,
      neither accepted nor rejected (without it ρ = 0/0 would reject forever and σ overflow).
    * **Guards**: Δψ ≤ 0 with s ≠ 0 (rounding) or a non-finite loss at either point gives ρ = −∞,
      a rejection (not an error). Non-finite gradients raise before any change
      (``check_finite``).
    * **Precision**: gᵀs, ‖s‖², R(x) − R(x̂) (per tensor) and the losses are accumulated in float64
      and the decision is taken on the host once per step.
    * **Distributed**: under ``torch.distributed`` (``distributed=None`` detects it) the float64
      vector [f(x), f(x̂), gᵀs, ‖s‖², R(x), R(x̂), R(x) − R(x̂)] is averaged across ranks with one
      all-reduce per step, so every rank takes the same decision and keeps the same σ.

    Only f is differentiated: R enters through the prox and ρ. Memory: one copy of the parameters
    (to restore a rejected step exactly), kept across steps. No momentum, weight decay or
    preconditioner (the paper's SR2 has none). ``group["lr"]`` mirrors 1/σ after every step (for
    LR monitors); it is not an input.

    ``sigma="hessian"``: σ_0 is the top eigenvalue of the Hessian of f on the first batch, estimated
    by at most 20 power iterations on Hessian-vector products (double backward through
    ``trial_closure`` run with gradients enabled, the model in its current mode; the authors'
    code calls PyHessian in eval mode), clamped to ≥ σ_min; a non-positive estimate falls back to
    1.0 with a warning. Under DDP the ranks' estimates are averaged. Until the first step ``lr`` is 0.

    Memory: the state is 0 bytes per parameter value (σ and counters only); a step keeps a copy of
    the parameters (4 bytes per float32 value) between steps, to undo a rejected step.

    Args:
        params: iterable of parameters or param-group dicts (a group may set its own
            ``regularizer``/``lam``; it may not set ``lr``: SR2 has none).
        regularizer: default regularizer of every group (any regularizer with an exact Euclidean
            prox: L1, L0, Lq, MCP, SCAD, GroupLasso, NuclearNorm, Quantization).
        sigma: σ_0 ≥ σ_min, or ``"hessian"``.
        sigma_min: σ_min > 0, the floor of σ.
        eta1: η1, the acceptance threshold on ρ.
        eta2: η2 ≥ η1, the "very successful" threshold (σ decreases).
        gamma1: γ1 > 1, the factor on σ after a rejection.
        gamma2: γ2 ≥ γ1, the upper end of the rejection interval (validated, not used).
        gamma3: γ3 in (0, 1], the factor on σ after a very successful step.
        {check_finite}
        distributed: average the decision vector across ranks (``None``: when ``torch.distributed``
            is initialized with more than one process).

    Raises:
        ValueError: for an invalid hyperparameter (naming it), from :meth:`step` without a closure
            or a trial closure, and for non-finite gradients, before anything is changed.

    Example:
        Full-batch least squares with an ℓ1 term, the trial closure a forward at the current point:

        >>> import torch
        >>> from lightning_prox.regularizers import L1
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> A, b = torch.randn(20, 5), torch.randn(20)
        >>> w = torch.nn.Parameter(torch.zeros(5))
        >>> opt = SR2([w], regularizer=L1(0.1), sigma=1.0)
        >>> def loss_fn():
        ...     return 0.5 * (A @ w - b).square().mean()
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = loss_fn()
        ...     loss.backward()
        ...     return loss
        >>> for _ in range(50):
        ...     _ = opt.step(closure, trial_closure=loss_fn)
        >>> stats = opt.sr2_stats()
        >>> stats["steps"] == stats["accepted_steps"] + stats["rejected_steps"] + stats["null_steps"]
        True
        >>> opt.param_groups[0]["lr"] == 1 / opt.sigma
        True
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict[str, Any]],
        regularizer: Regularizer | None = None,
        sigma: float | str = 1.0,
        sigma_min: float = 1e-6,
        eta1: float = 7.5e-4,
        eta2: float = 0.99,
        gamma1: float = 5.56,
        gamma2: float = 5.56,
        gamma3: float = 0.8,
        *,
        check_finite: bool = True,
        distributed: bool | None = None,
    ) -> None:
        s0, smin, e1, e2, g1, g2, g3 = _check_hparams(sigma, sigma_min, eta1, eta2, gamma1, gamma2, gamma3)
        if distributed is not None and not isinstance(distributed, bool):
            raise ValueError(f"distributed must be None, True or False, got {distributed!r}")
        self.sigma_min, self.eta1, self.eta2 = smin, e1, e2
        self.gamma1, self.gamma2, self.gamma3 = g1, g2, g3
        self.distributed = distributed
        self.trial_closure: Callable[[], Any] | None = None
        self._lr_mirror = 0.0 if s0 is None else 1.0 / s0
        self._backup: list[Tensor] = []
        super().__init__(params, dict(lr=self._lr_mirror, regularizer=regularizer), check_finite=check_finite)
        self.state["sr2"] = _initial_state(s0)

    # -- groups and state ---------------------------------------------------------------------------
    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a param group (``lr`` is SR2's mirror of 1/σ, so a group may not set it)."""
        if "lr" in param_group:
            raise ValueError(
                f"SR2 has no learning rate (the step is 1/sigma, adapted by the rho test), got a param "
                f"group with lr={param_group['lr']!r}; remove 'lr' from the group"
            )
        param_group = dict(param_group)
        param_group["lr"] = getattr(self, "_lr_mirror", 0.0)
        super().add_param_group(param_group)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        sr2 = self.state.get("sr2")
        # load_state_dict hands over the loaded dict itself: keep a private copy
        self.state["sr2"] = _initial_state(1.0) if sr2 is None else dict(sr2)
        self.__dict__.setdefault("_backup", [])
        self.__dict__.setdefault("trial_closure", None)

    @property
    def sigma(self) -> float:
        """σ of the next step (``nan`` before the first step with ``sigma="hessian"``); settable."""
        s = self.state["sr2"]["sigma"]
        return float("nan") if s is None else float(s)

    @sigma.setter
    def sigma(self, value: float) -> None:
        v = _number("sigma", value)
        if not v >= self.sigma_min:
            raise ValueError(f"sigma must be >= sigma_min={self.sigma_min!r}, got {value!r}")
        self.state["sr2"]["sigma"] = v
        self._mirror_lr()

    def _mirror_lr(self) -> None:
        s = self.state["sr2"]["sigma"]
        self._lr_mirror = 0.0 if s is None else 1.0 / s
        for group in self.param_groups:
            group["lr"] = self._lr_mirror

    def sr2_stats(self) -> dict[str, Any]:
        """The state of the ρ test after the last step, as plain floats and ints (no device sync).

        Returns:
            ``sigma`` (σ of the next step), ``rho`` (last ρ; −inf for a guarded rejection, nan for a
            null step), ``accepted`` (last step), ``accept_rate`` (accepted / (accepted + rejected)
            since construction, 0.0 before any), ``steps``, ``accepted_steps``, ``rejected_steps``,
            ``null_steps``, ``consecutive_rejections``, ``delta_F``, ``delta_psi``,
            ``step_norm_sq`` (‖s‖² of the last step).
        """
        st = self.state["sr2"]
        decided = st["accepted_steps"] + st["rejected_steps"]
        out = {k: st[k] for k in _STAT_KEYS}
        out["sigma"] = self.sigma
        out["accept_rate"] = st["accepted_steps"] / decided if decided else 0.0
        return out

    # -- the skeleton's two halves ------------------------------------------------------------------
    def _init_group(self, group: dict[str, Any], params: list[Tensor]) -> None:
        return None

    def _smooth_step(
        self,
        group: dict[str, Any],
        params: list[Tensor],
        grads: list[Tensor],
        state: Any,
        info: dict[str, Any],
        *,
        fuse_prox: bool,
    ) -> None:
        torch._foreach_add_(params, grads, alpha=-group["lr"])  # z = x − g/σ

    def _prox_step(
        self, group: dict[str, Any], params: list[Tensor], state: Any, ctx: Any, info: dict[str, Any]
    ) -> None:
        prox_tensors_(group_regularizer(group), params, group["lr"], None, info)  # x̂ = prox_{R/σ}(z)

    # -- the step -----------------------------------------------------------------------------------
    @torch.no_grad()
    def step(  # type: ignore[override]
        self, closure: Callable[[], Any] | None = None, trial_closure: Callable[[], Any] | None = None
    ) -> Tensor | None:
        """One SR2 iteration: gradient at x_t, trial point x̂_t, one forward there, accept or restore.

        Args:
            closure: zero_grad + forward + backward at x_t on the batch; returns f(x_t, ξ_t). Called
                once, with gradients enabled. A closure returning ``None`` skips the step.
            trial_closure: forward only on the same batch at the current parameters; returns the
                loss. Called once per non-null step under ``torch.no_grad()`` (and, with
                ``sigma="hessian"``, once more with gradients on the first step). ``None``: the
                ``trial_closure`` attribute (set by ``ProxMixin``).

        Returns:
            The closure's loss f(x_t, ξ_t).
        """
        if closure is None:
            raise ValueError(_NO_CLOSURE)
        trial = trial_closure if trial_closure is not None else self.trial_closure
        if trial is None:
            raise ValueError(_NO_TRIAL)
        with torch.enable_grad():
            loss = closure()
        if loss is None:
            return None
        gathered = self._gather()
        st = self.state["sr2"]
        if st["sigma"] is None:
            st["sigma"] = self._hessian_sigma(trial, [p for ps, _ in gathered for p in ps])
            self._mirror_lr()
        sigma = float(st["sigma"])
        params = [p for ps, _ in gathered for p in ps]
        if len(self._backup) != len(params) or any(
            b.shape != p.shape or b.dtype != p.dtype or b.device != p.device
            for b, p in zip(self._backup, params)
        ):
            self._backup = [torch.empty_like(p, memory_format=torch.preserve_format) for p in params]
        backup = self._backup
        if params:
            torch._foreach_copy_(backup, params)
        # smooth half and prox through the shared skeleton (pre-prox hooks see z); the step is
        # 1/σ whatever a group's lr mirror was set to, and an error restores x before it propagates
        self._mirror_lr()
        try:
            pending = []
            for i, (group, (ps, gs)) in enumerate(zip(self.param_groups, gathered)):
                info: dict[str, Any] = {}
                if ps:
                    self._smooth_step(group, ps, gs, None, info, fuse_prox=False)
                    pending.append((group, ps, info))
                self._last_info[i] = info
            for hook in list(self._pre_prox_hooks.values()):
                hook(self)
            for group, ps, info in pending:
                self._prox_step(group, ps, None, None, info)
        except BaseException:
            if params:
                torch._foreach_copy_(params, backup)
            raise
        # float64 sums: g^T s, ||s||^2, R(x), R(x̂), R(x) − R(x̂) (per tensor)
        dev = params[0].device if params else torch.device("cpu")
        acc = torch.zeros(5, dtype=torch.float64, device=dev)
        k = 0
        for group, (ps, gs) in zip(self.param_groups, gathered):
            reg = group_regularizer(group)
            active = reg is not None and reg.lam > 0
            for p, g in zip(ps, gs):
                x, xh = backup[k].to(torch.float64), p.to(torch.float64)
                s = xh - x
                acc[0] += (g.to(torch.float64) * s).sum()
                acc[1] += s.square().sum()
                if active:
                    rx, rxh = reg.value(x).to(torch.float64), reg.value(xh).to(torch.float64)
                    acc[2] += rx
                    acc[3] += rxh
                    acc[4] += rx - rxh
                k += 1
        f_x = _f64(loss)
        ss_local = float(acc[1])
        f_xh = f_x
        if ss_local > 0 or self._is_distributed():
            if ss_local > 0:
                f_xh = _f64(trial())
            vec = torch.tensor([f_x, f_xh], dtype=torch.float64, device=dev)
            vec = torch.cat([vec, acc[[0, 1, 2, 3, 4]]])
            if self._is_distributed():
                import torch.distributed as dist

                dist.all_reduce(vec, op=dist.ReduceOp.SUM)
                vec /= dist.get_world_size()
            f_x, f_xh, gts, ss, _rx, _rxh, d_r = vec.tolist()
        else:
            gts, ss, d_r = float(acc[0]), 0.0, float(acc[4])
        st["steps"] += 1
        st["step_norm_sq"] = ss
        if ss == 0.0:  # null step: the prox-gradient map has a fixed point here
            if params:
                torch._foreach_copy_(params, backup)
            st.update(
                null_steps=st["null_steps"] + 1, rho=float("nan"), accepted=False, delta_F=0.0, delta_psi=0.0
            )
            self._mirror_lr()
            return loss
        d_psi = d_r - gts
        d_f = (f_x - f_xh) + d_r
        if not (math.isfinite(f_x) and math.isfinite(f_xh) and math.isfinite(d_f)) or not d_psi > 0:
            rho = -math.inf
        else:
            rho = d_f / d_psi
        st.update(rho=rho, delta_F=d_f, delta_psi=d_psi)
        if rho >= self.eta1:
            st.update(accepted=True, accepted_steps=st["accepted_steps"] + 1, consecutive_rejections=0)
            if rho >= self.eta2:
                sigma = max(self.sigma_min, self.gamma3 * sigma)
        else:
            torch._foreach_copy_(params, backup)
            st.update(
                accepted=False,
                rejected_steps=st["rejected_steps"] + 1,
                consecutive_rejections=st["consecutive_rejections"] + 1,
            )
            sigma = self.gamma1 * sigma
        st["sigma"] = sigma
        self._mirror_lr()
        return loss

    def _is_distributed(self) -> bool:
        if self.distributed is False:
            return False
        import torch.distributed as dist

        on = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self.distributed and not on:
            raise ValueError("SR2(distributed=True) needs an initialized torch.distributed process group")
        return on

    def _hessian_sigma(self, trial: Callable[[], Any], params: list[Tensor]) -> float:
        """Top eigenvalue of ∇²f(x_0, ξ_0) by power iteration on Hessian-vector products."""
        if not params:
            return 1.0
        with torch.enable_grad():
            loss = trial()
            loss = loss["loss"] if isinstance(loss, dict) else loss
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            pairs = [(p, g) for p, g in zip(params, grads) if g is not None and g.requires_grad]
            gen = torch.Generator(device="cpu").manual_seed(0)  # the global RNG is left alone
            v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p, _ in pairs]
            eig = math.nan
            for _ in range(HESSIAN_MAX_ITERS):
                if not v:
                    break
                norm = torch.sqrt(
                    sum((x.double().square().sum() for x in v), torch.zeros((), dtype=torch.float64))
                )
                if not float(norm) > 0:
                    break
                v = [x / norm.to(x.dtype) for x in v]
                hv = torch.autograd.grad([g for _, g in pairs], [p for p, _ in pairs], v, retain_graph=True)
                new = float(sum((a.double() * b.double()).sum() for a, b in zip(v, hv)))
                v = [h.detach() for h in hv]
                done = math.isfinite(eig) and abs(new - eig) <= HESSIAN_RTOL * abs(new)
                eig = new
                if done:
                    break
        if self._is_distributed():  # every rank starts from the same σ0 (the mean of the ranks' estimates)
            import torch.distributed as dist

            t = torch.tensor([eig], dtype=torch.float64, device=params[0].device)
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
            eig = float(t) / dist.get_world_size()
        if not (math.isfinite(eig) and eig > 0):
            warnings.warn(
                f"SR2(sigma='hessian'): the top Hessian eigenvalue estimate is {eig!r} (not positive); "
                "starting from sigma=1.0",
                stacklevel=3,
            )
            return max(1.0, self.sigma_min)
        return max(eig, self.sigma_min)


SR2.__doc__ = (SR2.__doc__ or "").replace("{check_finite}", _check_finite_doc)

_STAT_KEYS = (
    "rho",
    "accepted",
    "steps",
    "accepted_steps",
    "rejected_steps",
    "null_steps",
    "consecutive_rejections",
    "delta_F",
    "delta_psi",
    "step_norm_sq",
)


def _initial_state(sigma: float | None) -> dict[str, Any]:
    return {
        "sigma": sigma,
        "rho": float("nan"),
        "accepted": False,
        "steps": 0,
        "accepted_steps": 0,
        "rejected_steps": 0,
        "null_steps": 0,
        "consecutive_rejections": 0,
        "delta_F": 0.0,
        "delta_psi": 0.0,
        "step_norm_sq": 0.0,
    }
