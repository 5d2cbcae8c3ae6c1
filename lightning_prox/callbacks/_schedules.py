"""λ schedules as pure functions of the step/epoch counter (used by ``RegularizationScheduler``).

Every schedule returns a *factor* f(t) ≥ 0 that multiplies a base strength λ₀, so the strength in use
at counter ``t`` is λ_t = λ₀·f(t). Being a pure function of ``t`` (``trainer.current_epoch`` or
``trainer.global_step``) is what makes resume exact: nothing but ``t`` has to be restored.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

__all__ = ["SCHEDULES", "Schedule", "check_schedule_args", "lam_factor"]

Schedule = Literal["constant", "linear", "step", "cosine", "warmup"]
SCHEDULES: tuple[str, ...] = ("constant", "linear", "step", "cosine", "warmup")


def check_schedule_args(
    schedule: str,
    *,
    offset: int = 0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    total: int | None = None,
    start_factor: float = 1.0,
    final_factor: float = 0.0,
    warmup: int = 0,
) -> None:
    """Raise ``ValueError`` naming the offending value when the schedule arguments are inconsistent."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if isinstance(offset, bool) or not isinstance(offset, int):
        raise ValueError(f"offset must be an int (0: λ_t = λ0·t from t = 0, 1: 1-based), got {offset!r}")
    if schedule == "linear" and offset < 0:
        raise ValueError(f"linear schedule needs offset >= 0 (a negative λ is invalid), got {offset}")
    ms = list(milestones)
    if any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in ms) or ms != sorted(ms):
        raise ValueError(f"milestones must be increasing ints >= 0, got {milestones!r}")
    if schedule == "step" and not ms:
        raise ValueError("schedule='step' needs milestones, e.g. milestones=[30, 60]")
    if not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and gamma >= 0):
        raise ValueError(f"gamma must be a number >= 0, got {gamma!r}")
    if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
        raise ValueError(f"total must be an int >= 1 or None (= the length of training), got {total!r}")
    for name, v in (("start_factor", start_factor), ("final_factor", final_factor)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    if schedule == "warmup" and warmup == 0:
        raise ValueError("schedule='warmup' needs warmup >= 1 (the number of epochs/steps to ramp up)")


def lam_factor(
    schedule: str,
    t: int,
    *,
    offset: int = 0,
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
    total: int | None = None,
    start_factor: float = 1.0,
    final_factor: float = 0.0,
    warmup: int = 0,
) -> float:
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
        >>> [lam_factor("linear", t) for t in range(3)]
        [0.0, 1.0, 2.0]
        >>> lam_factor("step", 5, milestones=[2, 4], gamma=0.5)
        0.25
        >>> lam_factor("cosine", 5, total=10)
        0.5
    """
    if t < 0:
        raise ValueError(f"schedule counter t must be >= 0, got {t}")
    if schedule in ("constant", "warmup"):
        f = 1.0
    elif schedule == "linear":
        f = float(t + offset)
    elif schedule == "step":
        f = float(gamma) ** sum(1 for m in milestones if m <= t)
    elif schedule == "cosine":
        if total is None:
            raise ValueError("schedule='cosine' needs total (its period in epochs/steps)")
        frac = min(t, total) / total
        f = final_factor + (start_factor - final_factor) * 0.5 * (1.0 + math.cos(math.pi * frac))
    else:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if warmup > 0:
        f *= min(1.0, t / warmup)
    return f
