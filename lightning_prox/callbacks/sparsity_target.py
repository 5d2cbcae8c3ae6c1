"""``SparsityTarget``: give how sparse, not λ; a feedback controller on log λ reaches it."""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from ..structure import param_layouts, unit_pairs
from ._counting import Monitored, count, monitored_pairs, monitored_tensors
from ._groups import group_spec

__all__ = ["SparsityTarget"]

Metric = Literal["group", "group_weighted", "unstructured", "active_units"]
Ramp = Literal["constant", "linear", "cubic"]
_METRICS = ("group", "group_weighted", "unstructured", "active_units")
_RAMPS = ("constant", "linear", "cubic")


def _number(name: str, value: Any, low: float, high: float, low_open: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        lo = f"> {low}" if low_open else f">= {low}"
        raise ValueError(f"SparsityTarget: {name} must be a number {lo} and <= {high}, got {value!r}")
    return float(value)


class SparsityTarget(Callback):
    r"""Reach a target sparsity by adjusting λ during training, instead of choosing λ by hand.

    Every ``interval`` optimizer steps it measures the sparsity ``metric`` of the regularized tensors
    (counted as :class:`SparsityMonitor` counts them) and moves the multiplier :math:`m = e^u` of every
    regularized group's strength, :math:`\lambda_i = \lambda_{i,0}\, m`, with a velocity-form PI
    controller in log λ (per-group ratios, e.g. from per-layer rules, are kept):

    .. math::

        e_k = s^\star(t_k) - s_k,\qquad
        \Delta u_k = \operatorname{clip}\big(k_p (e_k - e_{k-1}) + k_i e_k,\ \pm\,\delta_{\max}\big),
        \qquad u_{k+1} = \operatorname{clip}\big(u_k + \Delta u_k,\ [\log m_{\min}, \log m_{\max}]\big),

    with no change inside the dead band :math:`|e_k| \le` ``tolerance``. Working in log λ, with a
    bounded step ``max_step`` per update, keeps it stable on the λ cliff (sparsity that jumps from
    little to everything within a factor of 3 in λ); the velocity form has no integrator to wind up,
    and the clip to ``[lam_factor_min, lam_factor_max]`` bounds u. For ``metric="active_units"`` (a
    *dense* fraction) the target is the fraction of units that stay active and the sign is flipped.

    The target follows ``ramp`` from ``initial`` at ``start`` to ``target`` at ``end`` (fractions of
    training; ``by_epoch`` sets ``end`` in epochs): ``"constant"`` (the target all along),
    ``"linear"``, or the cubic schedule of Zhu & Gupta (2017, "To prune, or not to prune", Eq. 1),
    :math:`s_t = s_f + (s_0 - s_f)(1 - (t - t_0)/T)^3`. After ``end`` the target is held, so the last
    stretch of training settles on it.

    **Collapse guard.** When ``guard_metric`` (e.g. ``"val/acc"`` in ``trainer.callback_metrics``)
    falls below ``guard_min``, or every regularized weight is zero, λ is halved (u − log 2) and the
    error memory reset, with one warning naming λ and the step; the controller then approaches the
    target again from below.

    **DDP and resume.** The decision is taken on global rank 0 and broadcast, so every rank applies
    the same λ. λ lives in the optimizer's param groups (``group["lam"]``, the strength at start in
    ``group["initial_lam"]``) and the controller's u, e and last step in :meth:`state_dict`, so a
    resumed fit takes the same decisions as an uninterrupted one. It writes ``group["lam"]`` as
    :class:`RegularizationScheduler` does and refuses to run beside one.

    Logged (through ``pl_module.log``, so also in ``trainer.callback_metrics``):
    ``sparsity_target/target``, ``sparsity_target/measured``, ``sparsity_target/error`` and
    ``prox/lambda`` (the first regularized group's λ).

    Args:
        target: the sparsity to reach, in [0, 1) (``active_units``: the active fraction, in (0, 1]).
        metric: ``"group"`` (zero groups / groups), ``"group_weighted"``, ``"unstructured"`` (exact
            zeros) or ``"active_units"``.
        end: fraction of the training steps at which the target is reached (default 0.75).
        by_epoch: the epoch at whose start the target is reached (overrides ``end``).
        start: fraction of training at which the ramp starts (λ is not changed before).
        ramp: ``"constant"``, ``"linear"`` or ``"cubic"``.
        initial: s_0 of the ramp.
        interval: optimizer steps between two measurements.
        kp: proportional gain (on the change of the error, in log λ per unit of sparsity).
        ki: integral gain (on the error itself, in log λ per unit of sparsity and update).
        max_step: largest change of log λ per update.
        tolerance: dead band on the error.
        lam_factor_min: lower bound of the multiplier m.
        lam_factor_max: upper bound of the multiplier m.
        guard_metric: a key of ``trainer.callback_metrics`` (e.g. ``"val/acc"``) for the collapse
            guard; give ``guard_min`` with it.
        guard_min: the floor of ``guard_metric``.

    Example:
        >>> cb = SparsityTarget(0.7, ramp="cubic", start=0.0, end=0.5)
        >>> [round(cb.target_at(f), 3) for f in (0.0, 0.25, 0.5, 0.9)]
        [0.0, 0.612, 0.7, 0.7]
    """

    def __init__(
        self,
        target: float,
        metric: Metric = "group",
        *,
        end: float = 0.75,
        by_epoch: int | None = None,
        start: float = 0.0,
        ramp: Ramp = "cubic",
        initial: float = 0.0,
        interval: int = 10,
        kp: float = 1.0,
        ki: float = 2.0,
        max_step: float = 0.25,
        tolerance: float = 0.005,
        lam_factor_min: float = 1e-4,
        lam_factor_max: float = 1e4,
        guard_metric: str | None = None,
        guard_min: float | None = None,
    ) -> None:
        if metric not in _METRICS:
            raise ValueError(f"SparsityTarget: metric must be one of {_METRICS}, got {metric!r}")
        if ramp not in _RAMPS:
            raise ValueError(f"SparsityTarget: ramp must be one of {_RAMPS}, got {ramp!r}")
        if metric == "active_units":
            self.target = _number("target", target, 0.0, 1.0, low_open=True)
        else:
            self.target = _number("target", target, 0.0, 1.0)
            if self.target >= 1.0:
                raise ValueError("SparsityTarget: target must be < 1 (a target of 1 zeroes the whole model)")
        self.end = _number("end", end, 0.0, 1.0, low_open=True)
        self.start = _number("start", start, 0.0, 1.0)
        if self.start >= self.end:
            raise ValueError(f"SparsityTarget: start ({start}) must be before end ({end})")
        if by_epoch is not None and (
            isinstance(by_epoch, bool) or not isinstance(by_epoch, int) or by_epoch < 1
        ):
            raise ValueError(f"SparsityTarget: by_epoch must be an int >= 1 or None, got {by_epoch!r}")
        self.initial = _number("initial", initial, 0.0, 1.0)
        if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
            raise ValueError(f"SparsityTarget: interval must be an int >= 1, got {interval!r}")
        self.kp = _number("kp", kp, 0.0, 1e3)
        self.ki = _number("ki", ki, 0.0, 1e3, low_open=True)
        self.max_step = _number("max_step", max_step, 0.0, 10.0, low_open=True)
        self.tolerance = _number("tolerance", tolerance, 0.0, 0.5)
        self.lam_factor_min = _number("lam_factor_min", lam_factor_min, 0.0, 1.0, low_open=True)
        self.lam_factor_max = _number("lam_factor_max", lam_factor_max, 1.0, 1e12)
        if (guard_metric is None) != (guard_min is None):
            raise ValueError("SparsityTarget: give guard_metric and guard_min together (or neither)")
        self.guard_metric, self.guard_min = guard_metric, guard_min
        self.metric, self.ramp, self.by_epoch, self.interval = metric, ramp, by_epoch, interval
        # controller state (state_dict)
        self.u = 0.0
        self.e_prev: float | None = None
        self.last_step = -1
        self.backoffs = 0
        self._entries: list[Monitored] = []
        self._pairs: list[Any] = []
        self._total_steps = 1
        self._first_lam0 = 1.0

    # -- the target -----------------------------------------------------------------------------
    def target_at(self, fraction: float) -> float:
        """The target sparsity at ``fraction`` of training (the ramp, held after ``end``)."""
        if self.ramp == "constant":
            return self.target
        x = min(max((fraction - self.start) / (self.end - self.start), 0.0), 1.0)
        if self.ramp == "linear":
            return self.initial + (self.target - self.initial) * x
        return self.target + (self.initial - self.target) * (1.0 - x) ** 3

    # -- hooks ----------------------------------------------------------------------------------
    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(metric=self.metric)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        from .regularization_scheduler import RegularizationScheduler

        if any(isinstance(cb, RegularizationScheduler) for cb in trainer.callbacks):
            raise ValueError(
                "SparsityTarget and RegularizationScheduler both write group['lam']: use one of them "
                "(SparsityTarget already ramps its target; give it ramp=... instead of a λ schedule)"
            )

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        groups = self._groups(trainer)
        if not groups:
            raise ValueError(
                "SparsityTarget found no param group with a regularizer in trainer.optimizers; give the "
                "model a regularizer (e.g. GroupLasso(1e-4, dim='in'))"
            )
        for i, g in enumerate(groups):
            lam0 = float(g.setdefault("initial_lam", float(g.get("lam", 0.0))))
            if not lam0 > 0:
                raise ValueError(
                    f"SparsityTarget: regularized param group {i} starts at lam={lam0}; the controller "
                    "scales each group's starting λ, so give it a positive one (e.g. 1e-4)"
                )
        all_groups = [g for opt in trainer.optimizers for g in opt.param_groups]
        layouts = param_layouts(pl_module)
        self._entries = monitored_tensors(all_groups, pl_module.named_parameters(), None, layouts)
        if self.metric in ("group", "group_weighted") and not any(e.dim is not None for e in self._entries):
            raise ValueError(
                f"SparsityTarget(metric={self.metric!r}): no regularized tensor has groups (an elementwise "
                "regularizer such as L1?); use metric='unstructured'"
            )
        self._pairs = (
            monitored_pairs(unit_pairs(pl_module), self._entries) if self.metric == "active_units" else []
        )
        if self.metric == "active_units" and not self._pairs:
            raise ValueError("SparsityTarget(metric='active_units'): the model has no unit pairs to count")
        total = trainer.estimated_stepping_batches
        if not math.isfinite(total) or total < 1:
            raise ValueError(
                "SparsityTarget needs a finite training length (Trainer(max_epochs=...) or max_steps)"
            )
        self._total_steps = int(total)
        if self.by_epoch is not None:
            epochs = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else None
            if epochs is None:
                raise ValueError("SparsityTarget(by_epoch=...) needs Trainer(max_epochs=...)")
            self.end = min(self.by_epoch, epochs) / epochs
            if self.end <= self.start:
                raise ValueError(f"SparsityTarget: by_epoch={self.by_epoch} falls before start={self.start}")
        self._apply(trainer)  # λ = initial_lam · e^u (at step 0: the starting λ; resumed: the saved u)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        step = trainer.global_step
        if step == self.last_step or step % self.interval:
            return
        self.last_step = step
        fraction = step / self._total_steps
        target = self.target_at(fraction)
        decision = None
        if trainer.is_global_zero:  # decided once, on rank 0, and broadcast: every rank applies the same λ
            totals = count(self._entries, self._pairs)[0]  # one count (and host read) per decision
            measured = totals.get(self.metric, 0.0)
            all_zero = totals.get("unstructured", 0.0) >= 1.0
            decision = (*self._decide(trainer, target, measured, all_zero, fraction, step), measured)
        self.u, self.e_prev, self.backoffs, measured = trainer.strategy.broadcast(decision, src=0)
        self._apply(trainer)
        lam = self._groups(trainer)[0]["lam"]
        pl_module.log_dict(
            {
                "sparsity_target/target": target,
                "sparsity_target/measured": measured,
                "sparsity_target/error": target - measured,
                "prox/lambda": float(lam),
            },
            on_step=True,
            on_epoch=False,
        )

    # -- the controller -------------------------------------------------------------------------
    def _decide(
        self, trainer: pl.Trainer, target: float, measured: float, all_zero: bool, fraction: float, step: int
    ) -> tuple[float, float | None, int]:
        u, e_prev, backoffs = self.u, self.e_prev, self.backoffs
        if fraction < self.start:
            return u, e_prev, backoffs
        guard = None
        if self.guard_metric is not None:
            value = trainer.callback_metrics.get(self.guard_metric)
            if value is not None and float(value) < float(self.guard_min):  # type: ignore[arg-type]
                guard = f"{self.guard_metric} = {float(value):.4g} < {self.guard_min}"
        if guard is None and all_zero:
            guard = "every regularized weight is zero"
        if guard is not None:
            u = max(u - math.log(2.0), math.log(self.lam_factor_min))
            warnings.warn(
                f"SparsityTarget: {guard} at step {step}; halving λ (now {self._lam_now(u):.3g}) and "
                "approaching the target again",
                UserWarning,
                stacklevel=2,
            )
            return u, None, backoffs + 1
        e = target - measured
        if self.metric == "active_units":
            e = -e  # a dense fraction: more λ lowers it
        if abs(e) <= self.tolerance:
            return u, e, backoffs
        du = self.ki * e + (0.0 if e_prev is None else self.kp * (e - e_prev))
        du = min(max(du, -self.max_step), self.max_step)
        u = min(max(u + du, math.log(self.lam_factor_min)), math.log(self.lam_factor_max))
        return u, e, backoffs

    def _lam_now(self, u: float) -> float:
        return self._first_lam0 * math.exp(u)

    @staticmethod
    def _groups(trainer: pl.Trainer) -> list[dict[str, Any]]:
        return [g for opt in trainer.optimizers for g in opt.param_groups if group_spec(g) is not None]

    def _apply(self, trainer: pl.Trainer) -> None:
        factor = math.exp(self.u)
        groups = self._groups(trainer)
        for g in groups:
            g["lam"] = float(g["initial_lam"]) * factor
        if groups:
            self._first_lam0 = float(groups[0]["initial_lam"])

    @property
    def lam_factor(self) -> float:
        """The current multiplier m = e^u of every regularized group's starting λ."""
        return math.exp(self.u)

    # -- state ----------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "metric": self.metric,
            "u": self.u,
            "e_prev": self.e_prev,
            "last_step": self.last_step,
            "backoffs": self.backoffs,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("metric") != self.metric:
            raise ValueError(
                f"checkpoint holds a SparsityTarget on metric {state_dict.get('metric')!r}, this one is on "
                f"{self.metric!r}; resume with the same metric"
            )
        self.u = float(state_dict["u"])
        self.e_prev = None if state_dict.get("e_prev") is None else float(state_dict["e_prev"])
        self.last_step = int(state_dict.get("last_step", -1))
        self.backoffs = int(state_dict.get("backoffs", 0))
