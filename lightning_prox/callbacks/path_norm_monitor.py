"""Path norm and the rebalanced weight-decay objective of PathProx (Yang et al., 2022), for any optimizer.

The numbers come from the pure functions :func:`lightning_prox.optim.pathprox.path_norms` and
:meth:`lightning_prox.optim.PathProx.penalty`; this callback only decides when to compute and logs.
"""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from typing_extensions import override

from ..optim.pathprox import PathProx, path_norms
from ..structure import PathProxPair, pathprox_pairs

__all__ = ["PathNormMonitor"]


class PathNormMonitor(Callback):
    r"""Log ``pathprox/path_norm`` and ``pathprox/wd_objective`` (and, without PathProx, ``.../wd_objective_raw``).

    With layer pairs :math:`g` (a :class:`~lightning_prox.optim.PathProx` optimizer's own, else
    :func:`~lightning_prox.structure.pathprox_pairs` of the module) and the step's training loss
    :math:`f`:

    .. math::

        \text{path\_norm} = \sum_g \sum_k \lVert w_k\rVert_2 \lVert v_k\rVert_2, \qquad
        \text{wd\_objective} = f + \lambda\,\text{path\_norm} + \tfrac\lambda2 \lVert\theta_{other}\rVert^2,

    the weight-decay objective after rebalancing every unit (Yang et al., 2022, Theorem 4.1: for a
    balanced unit :math:`\tfrac\lambda2(\lVert w_k\rVert^2 + \lVert v_k\rVert^2) = \lambda\lVert w_k\rVert
    \lVert v_k\rVert`), the quantity the authors plot for PathProx and weight decay alike; θ_other are
    the weights (``ndim ≥ 2``) in no pair, biases are excluded. For PathProx, λ is each group's
    current ``lam`` (:meth:`~lightning_prox.optim.PathProx.penalty`). For any other optimizer (the
    weight-decay baseline) give ``lam``; ``wd_objective_raw`` = :math:`f + \tfrac\lambda2\lVert\theta\rVert^2`
    over all weights is logged too (``wd_objective`` ≤ ``wd_objective_raw``, with equality at balance).
    ``f`` is the loss the training step returned (before the step), the penalty is taken after it.

    Args:
        lam: λ for a model trained without PathProx (``None`` with PathProx: its own λ).
        every_n_steps: steps between logs; ``None``: the Trainer's ``log_every_n_steps``.
        strict: passed to ``pathprox_pairs`` when the pairs are traced from the module.

    Example:
        >>> PathNormMonitor(lam=1e-4).lam
        0.0001
    """

    def __init__(
        self, lam: float | None = None, every_n_steps: int | None = None, strict: bool = False
    ) -> None:
        if lam is not None and (
            isinstance(lam, bool) or not isinstance(lam, (int, float)) or not lam >= 0 or math.isinf(lam)
        ):
            raise ValueError(f"lam must be None or a finite number >= 0, got {lam!r}")
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1
        ):
            raise ValueError(f"every_n_steps must be an int >= 1 or None, got {every_n_steps!r}")
        self.lam = None if lam is None else float(lam)
        self.every_n_steps = every_n_steps
        self.strict = strict
        self._opt: PathProx | None = None
        self._pairs: list[PathProxPair] = []
        self._others: list[torch.Tensor] = []
        self._weights: list[torch.Tensor] = []

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        opts = [o for o in trainer.optimizers if isinstance(o, PathProx)]
        self._opt = opts[0] if opts else None
        if self._opt is not None:
            self._pairs = self._opt.pairs
        else:
            if self.lam is None:
                raise ValueError(
                    "PathNormMonitor: the Trainer has no PathProx optimizer, so give lam= (the weight-decay "
                    "strength of the objective to report)"
                )
            self._pairs = pathprox_pairs(pl_module, strict=self.strict)
        paired = {id(t) for p in self._pairs for t in (p.w, p.v)}
        self._weights = [p for p in pl_module.parameters() if p.ndim >= 2]
        self._others = [p for p in self._weights if id(p) not in paired]

    @torch.no_grad()
    def compute(self, loss: float | torch.Tensor) -> dict[str, float]:
        """The logged values for a training loss ``loss`` at the current weights (one host read)."""
        pn = torch.stack([p.cpu() for p in path_norms(self._pairs)]).sum()
        f = torch.as_tensor(loss, dtype=torch.float64).detach().cpu()
        out = {"pathprox/path_norm": pn}
        if self._opt is not None:
            out["pathprox/wd_objective"] = f + self._opt.penalty().cpu()
        else:
            lam = float(self.lam or 0.0)
            sq_other = sum(
                (t.detach().double().square().sum().cpu() for t in self._others),
                torch.zeros((), dtype=torch.float64),
            )
            sq_all = sum(
                (t.detach().double().square().sum().cpu() for t in self._weights),
                torch.zeros((), dtype=torch.float64),
            )
            out["pathprox/wd_objective"] = f + lam * pn + 0.5 * lam * sq_other
            out["pathprox/wd_objective_raw"] = f + 0.5 * lam * sq_all
        return {k: float(v) for k, v in out.items()}

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        every = self.every_n_steps or max(1, int(trainer.log_every_n_steps))
        if not self._pairs or (trainer.global_step - 1) % every:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None:
            return
        for k, v in self.compute(loss).items():
            pl_module.log(k, v, on_step=True, on_epoch=False, batch_size=1)
