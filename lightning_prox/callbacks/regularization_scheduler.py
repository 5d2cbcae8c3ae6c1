"""λ schedules (ProxQuant homotopy, step, cosine, warmup) that write ``group["lam"]``.

The regularizer objects stay fixed; only the plain number ``group["lam"]`` of each
regularized param group changes, the way LR schedulers write ``group["lr"]``. Homotopy: Bai et al.,
"ProxQuant" (ICLR 2019) (λ_epoch = λ·epoch).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from ._groups import group_spec
from ._schedules import LamSchedule, Schedule

__all__ = ["RegularizationScheduler"]


class RegularizationScheduler(Callback):
    r"""Set the regularization strength of every regularized param group from a schedule.

    At counter ``t`` (``trainer.current_epoch`` with ``interval="epoch"``, ``trainer.global_step``
    with ``interval="step"``), before the optimizer step of that epoch/step, every param group whose
    ``group["regularizer"]`` is not ``None`` gets

    .. math::

        \text{group["lam"]} = \lambda_0 \cdot f(t),

    with f from :meth:`~lightning_prox.callbacks._schedules.LamSchedule.factor` (``constant``, ``linear``
    homotopy λ₀·(t + offset), ``step`` decay by ``gamma`` at ``milestones``, ``cosine`` from
    ``start_factor`` to ``final_factor`` over ``total``, ``warmup``). λ₀ is ``lam`` when given, else the
    group's own strength when the scheduler first saw it, kept in the group as
    ``group["initial_lam"]`` (as torch LR schedulers keep ``initial_lr``) so it travels with the
    optimizer checkpoint. The value is a pure function of ``t``, so resuming is exact. The first
    regularized group's λ is logged as ``prox/lambda`` (each group as ``prox/lambda/group<i>`` when
    several are regularized) through the Trainer's loggers, once per epoch or every
    ``trainer.log_every_n_steps`` steps; loggers write on global rank 0 only.

    Args:
        schedule: ``"constant"``, ``"linear"``, ``"step"``, ``"cosine"`` or ``"warmup"``.
        interval: ``"epoch"`` (ProxQuant's homotopy) or ``"step"``.
        lam: λ₀ for every regularized group; ``None`` keeps each group's own strength.
        offset: added to ``t`` by ``linear`` (0: λ = 0 in the first epoch, as the original ProxQuant code;
            1: the first epoch already uses λ₀).
        milestones: counters at which ``step`` multiplies λ by ``gamma``.
        gamma: the ``step`` decay factor.
        total: period T of ``cosine``; ``None`` = ``max_epochs`` (epoch) or the number of optimizer steps.
        start_factor: f(0) of ``cosine``.
        final_factor: f(T) of ``cosine``.
        warmup: ramp every schedule by min(1, t/warmup) (0 = off).

    Example:
        >>> cb = RegularizationScheduler("linear", interval="epoch")  # λ_epoch = λ·epoch
        >>> cb.factor(3)
        3.0
    """

    def __init__(
        self,
        schedule: Schedule = "constant",
        interval: Literal["epoch", "step"] = "epoch",
        lam: float | None = None,
        offset: int = 0,
        milestones: Sequence[int] = (),
        gamma: float = 0.1,
        total: int | None = None,
        start_factor: float = 1.0,
        final_factor: float = 0.0,
        warmup: int = 0,
    ) -> None:
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval must be 'epoch' or 'step', got {interval!r}")
        if lam is not None and (isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0):
            raise ValueError(f"lam must be a number >= 0 or None (keep each group's λ), got {lam!r}")
        LamSchedule(
            schedule,
            offset=offset,
            milestones=milestones,
            gamma=gamma,
            total=total,
            start_factor=start_factor,
            final_factor=final_factor,
            warmup=warmup,
        ).check()
        self.schedule = schedule
        self.interval = interval
        self.lam = None if lam is None else float(lam)
        self.offset = offset
        self.milestones = [int(m) for m in milestones]
        self.gamma = float(gamma)
        self.total = total
        self.start_factor = float(start_factor)
        self.final_factor = float(final_factor)
        self.warmup = warmup
        self._total: int | None = total
        self.last_lams: list[float] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(schedule=self.schedule, interval=self.interval)

    def factor(self, t: int) -> float:
        """f(t): the multiplier of λ₀ at counter ``t``."""
        return LamSchedule(
            self.schedule,
            offset=self.offset,
            milestones=self.milestones,
            gamma=self.gamma,
            total=self._total,
            start_factor=self.start_factor,
            final_factor=self.final_factor,
            warmup=self.warmup,
        ).factor(t)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.schedule == "cosine" and self.total is None:
            if self.interval == "epoch":
                if trainer.max_epochs is None or trainer.max_epochs < 1:
                    raise ValueError("cosine λ schedule per epoch needs Trainer(max_epochs=...) or total=...")
                self._total = int(trainer.max_epochs)
            else:
                steps = trainer.estimated_stepping_batches
                if steps == float("inf"):
                    raise ValueError("cosine λ schedule per step needs a finite training length or total=...")
                self._total = max(1, int(steps))
        if not self._groups(trainer):
            raise ValueError(
                "RegularizationScheduler found no param group with a regularizer in trainer.optimizers; "
                "give the optimizer a regularizer (e.g. ProxGen(..., regularizer=L1(1e-4)))"
            )

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "epoch":
            self._apply(trainer, trainer.current_epoch, log=True)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.interval == "step":
            step = trainer.global_step
            self._apply(trainer, step, log=step % max(1, trainer.log_every_n_steps) == 0)

    # -- internals ------------------------------------------------------------------------------
    @staticmethod
    def _groups(trainer: pl.Trainer) -> list[dict[str, Any]]:
        return [g for opt in trainer.optimizers for g in opt.param_groups if group_spec(g) is not None]

    def _apply(self, trainer: pl.Trainer, t: int, log: bool) -> None:
        f = self.factor(t)
        groups = self._groups(trainer)
        lams = []
        for g in groups:
            base = g.setdefault("initial_lam", float(g.get("lam", 0.0)))
            lam0 = base if self.lam is None else self.lam
            g["lam"] = lam0 * f
            lams.append(g["lam"])
        self.last_lams = lams
        if log and lams and trainer.loggers and not trainer.sanity_checking:
            metrics = {"prox/lambda": lams[0]}
            if len(lams) > 1:
                metrics.update({f"prox/lambda/group{i}": v for i, v in enumerate(lams)})
            for logger in trainer.loggers:
                logger.log_metrics(metrics, step=trainer.global_step)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule, "interval": self.interval, "last_lams": list(self.last_lams)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("schedule") != self.schedule or state_dict.get("interval") != self.interval:
            raise ValueError(
                f"checkpoint holds a RegularizationScheduler({state_dict.get('schedule')!r}, "
                f"interval={state_dict.get('interval')!r}), this one is ({self.schedule!r}, "
                f"interval={self.interval!r}); resume with the same schedule"
            )
        self.last_lams = [float(v) for v in state_dict.get("last_lams", [])]
