"""Layer-wise balancing for PathProx (Yang et al., 2022, Section 4 and Appendix B), inside the optimizer step.

The balancing itself is the pure function :func:`lightning_prox.optim.pathprox.layerwise_balance_`; this
callback only decides on which steps it runs and registers it between the SGD step and the prox
through :meth:`~lightning_prox.optim.ProxOptimizer.register_pre_prox_hook`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.hooks import RemovableHandle
from typing_extensions import override

from ..optim.pathprox import PathProx

__all__ = ["PathProxBalancing"]


class PathProxBalancing(Callback):
    r"""Balance PathProx's layer pairs in every chosen step, after the SGD step and before the prox.

    On the optimizer steps with ``global_step ≥ start_step`` and
    ``(global_step − start_step) % every_n_steps == 0``, every
    :class:`~lightning_prox.optim.PathProx` optimizer of the Trainer rescales each balancing chain of
    its :attr:`~lightning_prox.optim.PathProx.pairs` so that every pair's path norm
    :math:`P_g = \sum_k \lVert w_k\rVert\lVert v_k\rVert` equals the chain's geometric mean, without
    changing the network function (:func:`~lightning_prox.optim.pathprox.layerwise_balance_`: closed
    form, last scale exactly 1, ``v`` weights and biases and the next ``w`` bias rescaled, chains with a
    zero path norm skipped). This is the balancing of the authors' code (``Leiay/PathProx``,
    ``layerwise_balance``), which runs between ``optimizer.step()`` and the prox, per chain instead of
    across residual adds. Whether a step balances is a function of ``global_step`` only, so a resumed
    fit balances exactly as an uninterrupted one. Logs ``pathprox/balance_scale_max``
    (:math:`\max_g |\log c_g|` of the last balancing) on the steps it balances.

    Without Lightning, ``PathProx(..., balancing=True)`` balances in every step.

    Args:
        every_n_steps: balance every this many optimizer steps (≥ 1).
        start_step: first optimizer step that balances (≥ 0).

    Raises:
        ValueError: for invalid arguments; at the start of training when the Trainer has no PathProx
            optimizer or one has ``regularize_bias=True`` (balancing would change the biases' weight
            decay; the authors disable it too).

    Example:
        >>> cb = PathProxBalancing(every_n_steps=10, start_step=100)
        >>> [cb.active(s) for s in (99, 100, 105, 110)]
        [False, True, False, True]
    """

    def __init__(self, every_n_steps: int = 1, start_step: int = 0) -> None:
        for name, value, low in (("every_n_steps", every_n_steps, 1), ("start_step", start_step, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        self.every_n_steps = every_n_steps
        self.start_step = start_step
        self.last_scale_max: float | None = None
        self._handles: list[RemovableHandle] = []
        self._balanced_at = -1

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(every_n_steps=self.every_n_steps, start_step=self.start_step)

    def active(self, step: int) -> bool:
        """Whether optimizer step ``step`` (0-based, ``trainer.global_step`` during the step) balances."""
        return step >= self.start_step and (step - self.start_step) % self.every_n_steps == 0

    def _hook(self, trainer: pl.Trainer, optimizer: PathProx) -> None:
        step = trainer.global_step
        if not self.active(step):
            return
        scales = optimizer.balance_()
        worst = max((abs(math.log(c)) for c in scales if c > 0), default=0.0)
        if self._balanced_at != step:
            self.last_scale_max = worst
        else:  # several PathProx optimizers: the largest over all
            self.last_scale_max = max(self.last_scale_max or 0.0, worst)
        self._balanced_at = step

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        opts = [o for o in trainer.optimizers if isinstance(o, PathProx)]
        if not opts:
            kinds = [type(o).__name__ for o in trainer.optimizers]
            raise ValueError(
                f"PathProxBalancing needs a lightning_prox.optim.PathProx optimizer; the Trainer has {kinds}. "
                "Return PathProx(...) from configure_optimizers or remove the callback."
            )
        for o in opts:
            if o.regularize_bias:
                raise ValueError(
                    "PathProxBalancing: the PathProx optimizer has regularize_bias=True; balancing would "
                    "change the biases' weight decay (the authors disable it too). Use regularize_bias=False "
                    "or remove the callback."
                )
        self._remove()
        self._handles = [o.register_pre_prox_hook(functools.partial(self._hook, trainer)) for o in opts]

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._balanced_at == trainer.global_step - 1 and self.last_scale_max is not None:
            pl_module.log(
                "pathprox/balance_scale_max",
                torch.tensor(self.last_scale_max),
                on_step=True,
                on_epoch=False,
                batch_size=1,
            )

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove()

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._remove()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"every_n_steps": self.every_n_steps, "start_step": self.start_step}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # the schedule is a function of global_step: nothing to restore beyond the two settings
        self.every_n_steps = int(state_dict.get("every_n_steps", self.every_n_steps))
        self.start_step = int(state_dict.get("start_step", self.start_step))
