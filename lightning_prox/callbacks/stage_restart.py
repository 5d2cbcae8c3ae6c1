"""Stage-wise schedule of RMDA/RAMDA: lr drops, restarts and the final-stage momentum ramp."""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

__all__ = ["StageRestart", "final_stage_momentum", "stage_index"]


def stage_index(counter: int, milestones: Sequence[int]) -> int:
    """Number of milestones ≤ ``counter``: the stage (0-based) that epoch/step ``counter`` belongs to.

    Example:
        >>> [stage_index(e, [2, 4]) for e in range(6)]
        [0, 0, 1, 1, 2, 2]
    """
    return bisect.bisect_right(list(milestones), counter)


def final_stage_momentum(c0: float, i: int) -> float:
    """c = min(c0·√i, 1) for the i-th training step (i ≥ 1) of the final stage.

    Example:
        >>> [final_stage_momentum(0.1, i) for i in (1, 4, 100, 200)]
        [0.1, 0.2, 1.0, 1.0]
    """
    return min(c0 * math.sqrt(i), 1.0)


def _has_restart(opt: Any) -> bool:
    return callable(getattr(opt, "restart", None))


class StageRestart(Callback):
    r"""Stage-wise training for RMDA/RAMDA (and a plain step lr schedule for every other optimizer).

    With milestones m_1 < … < m_K (epochs, or optimizer steps when ``interval="step"``) and k(e) =
    #{j : m_j ≤ e} the stage of counter e:

    .. math::

        \eta(e) = \eta_0 \cdot \text{gamma}^{k(e)}, \qquad
        c_i = \min(c_0 \sqrt{i},\ 1) \ \text{for the } i\text{-th step of the final stage } (k = K),

    and on entering each stage every optimizer with a ``restart`` method (:class:`~lightning_prox.optim.RMDA`,
    :class:`~lightning_prox.optim.RAMDA`) is restarted with ``restart(eps_factor=eps_gamma)``:
    t → 0, W_0 ← W, V, U, α ← 0, ε ← ε·eps_gamma (Huang, Chen & Lee, ICLR 2022, and the RAMDA paper, Huang & Lee, 2024, Appendix A.1; the authors' ``Core/scheduler.py``). η_0 and c_0 are every
    param group's ``lr`` and ``momentum`` when training starts; c is written only for optimizers with a
    ``restart`` method. The lr and c are pure functions of the counters (plus the step at which the
    final stage began, kept in :meth:`state_dict`), so resuming from a checkpoint continues exactly.

    .. note::
        This callback owns ``group["lr"]``: do not combine it with an LR scheduler. The authors' code
        starts the c ramp one epoch before the last restart (the authors' ``Core/scheduler.py``); this follows the paper and
        starts it with the final stage.

    Args:
        milestones: strictly increasing positive epochs (or steps) at which a new stage begins.
        gamma: lr factor per stage, in (0, 1].
        eps_gamma: ε factor per restart (RAMDA), > 0.
        interval: ``"epoch"`` or ``"step"`` (milestones counted in optimizer steps, as for Transformer-XL).

    Example:
        >>> cb = StageRestart(milestones=[100, 200, 300, 400], gamma=0.1)
        >>> cb.state_key
        "StageRestart{'milestones': [100, 200, 300, 400], 'gamma': 0.1, 'eps_gamma': 0.1, 'interval': 'epoch'}"
    """

    def __init__(
        self,
        milestones: list[int],
        gamma: float = 0.1,
        eps_gamma: float = 0.1,
        interval: Literal["epoch", "step"] = "epoch",
    ) -> None:
        ms = list(milestones)
        if not ms or any(isinstance(m, bool) or not isinstance(m, int) or m <= 0 for m in ms):
            raise ValueError(f"milestones must be a non-empty list of positive ints, got {milestones!r}")
        if any(b <= a for a, b in zip(ms, ms[1:])):
            raise ValueError(f"milestones must be strictly increasing, got {milestones!r}")
        for name, v, hi in (("gamma", gamma, 1.0), ("eps_gamma", eps_gamma, math.inf)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (0 < v <= hi):
                raise ValueError(f"{name} must be a number in (0, {hi}], got {v!r}")
        if interval not in ("epoch", "step"):
            raise ValueError(f"interval must be 'epoch' or 'step', got {interval!r}")
        self.milestones = ms
        self.gamma = float(gamma)
        self.eps_gamma = float(eps_gamma)
        self.interval = interval
        self.base_lrs: list[list[float]] | None = None
        self.base_momenta: list[list[float | None]] | None = None
        self.stages_done = 0
        self.final_stage_start_step: int | None = None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            milestones=self.milestones, gamma=self.gamma, eps_gamma=self.eps_gamma, interval=self.interval
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "base_lrs": self.base_lrs,
            "base_momenta": self.base_momenta,
            "stages_done": self.stages_done,
            "final_stage_start_step": self.final_stage_start_step,
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_lrs = state_dict["base_lrs"]
        self.base_momenta = state_dict["base_momenta"]
        self.stages_done = int(state_dict["stages_done"])
        self.final_stage_start_step = state_dict["final_stage_start_step"]

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.optimizers:
            raise ValueError("StageRestart needs an optimizer; configure_optimizers returned none")
        if self.base_lrs is None:
            self.base_lrs = [[float(g["lr"]) for g in opt.param_groups] for opt in trainer.optimizers]
            self.base_momenta = [
                [
                    float(g["momentum"]) if _has_restart(opt) and "momentum" in g else None
                    for g in opt.param_groups
                ]
                for opt in trainer.optimizers
            ]
        shapes = [len(opt.param_groups) for opt in trainer.optimizers]
        if shapes != [len(b) for b in self.base_lrs]:
            raise ValueError(
                f"StageRestart: the optimizers have {shapes} param groups but the restored state has "
                f"{[len(b) for b in self.base_lrs]}; resume with the same optimizer configuration"
            )

    def _advance(self, trainer: pl.Trainer, counter: int) -> None:
        """Enter every stage up to the one ``counter`` belongs to, and set lr for it."""
        stage = stage_index(counter, self.milestones)
        while self.stages_done < stage:
            for opt in trainer.optimizers:
                if _has_restart(opt):
                    opt.restart(eps_factor=self.eps_gamma)
            self.stages_done += 1
            if self.stages_done == len(self.milestones):
                self.final_stage_start_step = trainer.global_step
        assert self.base_lrs is not None
        for opt, lrs in zip(trainer.optimizers, self.base_lrs):
            for g, lr0 in zip(opt.param_groups, lrs):
                g["lr"] = lr0 * self.gamma**stage

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.interval == "epoch":
            self._advance(trainer, trainer.current_epoch)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.interval == "step":
            self._advance(trainer, trainer.global_step)
        assert self.base_momenta is not None
        final = self.final_stage_start_step
        for opt, cs in zip(trainer.optimizers, self.base_momenta):
            for g, c0 in zip(opt.param_groups, cs):
                if c0 is not None:
                    g["momentum"] = (
                        c0 if final is None else final_stage_momentum(c0, trainer.global_step - final + 1)
                    )
