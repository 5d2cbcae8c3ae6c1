"""λ schedules as pure functions of the step/epoch counter (used by ``RegularizationScheduler``).

Every schedule returns a *factor* f(t) ≥ 0 that multiplies a base strength λ₀, so the strength in use
at counter ``t`` is λ_t = λ₀·f(t). Being a pure function of ``t`` (``trainer.current_epoch`` or
``trainer.global_step``) is what makes resume exact: nothing but ``t`` has to be restored.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal

__all__ = ["SCHEDULES", "LamSchedule", "Schedule", "lam_factor"]

Schedule = Literal["constant", "linear", "step", "cosine", "warmup"]
SCHEDULES: tuple[str, ...] = ("constant", "linear", "step", "cosine", "warmup")


@dataclasses.dataclass(frozen=True)
class LamSchedule:
    """A λ schedule: its name and the arguments its factor f(t) reads (see :meth:`factor`).

    The single definition of the schedule arguments and their defaults: ``RegularizationScheduler``
    checks its arguments through :meth:`check` and computes f(t) through :meth:`factor`.
    """

    schedule: str = "constant"
    offset: int = 0
    milestones: Sequence[int] = ()
    gamma: float = 0.1
    total: int | None = None
    start_factor: float = 1.0
    final_factor: float = 0.0
    warmup: int = 0

    def check(self) -> None:
        """Raise ``ValueError`` naming the offending value when the arguments are inconsistent."""
        if self.schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if isinstance(self.offset, bool) or not isinstance(self.offset, int):
            raise ValueError(
                f"offset must be an int (0: λ_t = λ0·t from t = 0, 1: 1-based), got {self.offset!r}"
            )
        if self.schedule == "linear" and self.offset < 0:
            raise ValueError(
                f"linear schedule needs offset >= 0 (a negative λ is invalid), got {self.offset}"
            )
        ms = list(self.milestones)
        if any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in ms) or ms != sorted(ms):
            raise ValueError(f"milestones must be increasing ints >= 0, got {self.milestones!r}")
        if self.schedule == "step" and not ms:
            raise ValueError("schedule='step' needs milestones, e.g. milestones=[30, 60]")
        if not (
            isinstance(self.gamma, (int, float)) and not isinstance(self.gamma, bool) and self.gamma >= 0
        ):
            raise ValueError(f"gamma must be a number >= 0, got {self.gamma!r}")
        if self.total is not None and (
            isinstance(self.total, bool) or not isinstance(self.total, int) or self.total < 1
        ):
            raise ValueError(
                f"total must be an int >= 1 or None (= the length of training), got {self.total!r}"
            )
        for name, v in (("start_factor", self.start_factor), ("final_factor", self.final_factor)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ValueError(f"warmup must be an int >= 0, got {self.warmup!r}")
        if self.schedule == "warmup" and self.warmup == 0:
            raise ValueError("schedule='warmup' needs warmup >= 1 (the number of epochs/steps to ramp up)")

    def factor(self, t: int) -> float:
        r"""The factor f(t) of λ_t = λ₀·f(t) at counter ``t`` (0-based epoch or step).

        .. math::

            f_\text{constant} = 1, \quad
            f_\text{linear} = t + \text{offset}, \quad
            f_\text{step} = \text{gamma}^{\#\{m \in \text{milestones}:\ m \le t\}},

            f_\text{cosine} = \text{final} + (\text{start} - \text{final})\,
                \tfrac12\big(1 + \cos(\pi \min(t, T)/T)\big), \quad T = \text{total},

        and with ``warmup`` = W > 0 every schedule is multiplied by min(1, t/W) (``"warmup"`` is the
        constant schedule with this ramp). ``linear`` with ``offset=0`` is ProxQuant's homotopy
        λ_epoch = λ·epoch with a 0-based epoch (λ = 0 during the first epoch, as in the original code).

        Example:
            >>> [LamSchedule("linear").factor(t) for t in range(3)]
            [0.0, 1.0, 2.0]
            >>> LamSchedule("step", milestones=[2, 4], gamma=0.5).factor(5)
            0.25
            >>> LamSchedule("cosine", total=10).factor(5)
            0.5
        """
        if t < 0:
            raise ValueError(f"schedule counter t must be >= 0, got {t}")
        if self.schedule in ("constant", "warmup"):
            f = 1.0
        elif self.schedule == "linear":
            f = float(t + self.offset)
        elif self.schedule == "step":
            f = float(self.gamma) ** sum(1 for m in self.milestones if m <= t)
        elif self.schedule == "cosine":
            if self.total is None:
                raise ValueError("schedule='cosine' needs total (its period in epochs/steps)")
            frac = min(t, self.total) / self.total
            f = self.final_factor + (self.start_factor - self.final_factor) * 0.5 * (
                1.0 + math.cos(math.pi * frac)
            )
        else:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}")
        if self.warmup > 0:
            f *= min(1.0, t / self.warmup)
        return f


def lam_factor(schedule: str, t: int, **kwargs: Any) -> float:
    """``LamSchedule(schedule, **kwargs).factor(t)``: f(t) at counter ``t`` (the arguments are not checked).

    Example:
        >>> lam_factor("linear", 2, offset=1)
        3.0
    """
    return LamSchedule(schedule, **kwargs).factor(t)
