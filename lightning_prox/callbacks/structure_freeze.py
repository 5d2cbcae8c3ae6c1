"""``StructureFreeze``: once the zero pattern has settled, keep it and fine-tune the rest without the prox."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from typing_extensions import override

from ..structure import group_blocks, param_layouts
from ._counting import Monitored, monitored_tensors
from ._groups import group_spec

__all__ = ["StructureFreeze"]


@torch.no_grad()
def _zero_pattern(entry: Monitored) -> Tensor:
    """The zero pattern a regularizer makes: zero groups ``[G, B]`` for a grouping, exact zeros else."""
    x = entry.param.detach()
    if entry.dim is None:
        return x == 0
    G, A, B, K = group_blocks(x, entry.dim, entry.layout)
    return (x != 0).reshape(G, A, B, K).sum(dim=(1, 3)) == 0


def _element_mask(entry: Monitored, pattern: Tensor) -> Tensor:
    """The pattern as a mask of the parameter's entries (a zero group covers its entries)."""
    if entry.dim is None:
        return pattern
    G, A, B, K = group_blocks(entry.param, entry.dim, entry.layout)
    return pattern[:, None, :, None].expand(G, A, B, K).reshape(entry.param.shape)


class StructureFreeze(Callback):
    r"""Freeze the zero structure once it has stopped changing, then fine-tune without the penalty.

    At the end of every training epoch it compares the zero pattern of each regularized tensor with
    the previous epoch's: zero groups for a group regularizer (counted as :class:`SparsityMonitor`
    counts them), exact zeros for an elementwise one, and logs the number of groups or entries that
    changed as ``structure/changes``. When the pattern has not changed for ``patience`` epochs in a
    row (or at the end of epoch ``epoch``, when given), it freezes it:

    - the zeros of the pattern stay **exactly zero** for the rest of training: their gradients are
      set to zero before every optimizer step, every optimizer-state tensor of the parameter's shape
      (momentum, moments, dual-averaging sums, W₀ and Ŵ of RMDA/RAMDA) is zeroed there once, and the
      entries are set to zero again after every step (no drift through weight decay or momentum);
    - an optimizer with a ``restart`` method (RMDA, RAMDA) starts a new stage at the freeze
      (W_0 ← W, sums ← 0), so that dual averaging without the penalty continues from the current
      weights instead of jumping to the unshrunk dual-averaging point;
    - every regularized group's ``lam`` is set to 0 before every step, so the prox is the identity and
      the optimizer runs as its smooth parent (ProxGen → Adam, ProxSGD → SGD, RAMDA → MADGRAD), a
      fine-tuning of the remaining weights without the penalty's bias.

    Dual-averaging methods identify the optimal structure after finitely many steps (Huang & Lee,
    NeurIPS 2024, Theorem 3), which is when freezing it costs nothing; for other methods it is a
    common "prune, then fine-tune" step without a separate pruning pass.

    The masks, the freeze step and the per-epoch changes are in :meth:`state_dict`, so a fit resumed
    after the freeze keeps the same zeros. Logged: ``structure/changes``, ``structure/frozen`` (0 or
    1) and, at the freeze, ``structure/freeze_step``. It writes ``group["lam"]`` after the freeze,
    so it overrides a ``RegularizationScheduler`` or ``SparsityTarget`` from then on.

    Args:
        patience: epochs without a change of the pattern before it freezes (≥ 1).
        epoch: freeze at the end of this epoch (0-based) whatever the changes; ``None``: by patience.
        min_epoch: never freeze before the end of this epoch (e.g. after a sparsity ramp).
        restart_momentum: for an optimizer with a ``restart`` method (RMDA, RAMDA), the momentum c of
            the new stage (``None``: unchanged). At c = 1 (no averaging) the first steps of a new stage
            are large (MADGRAD's first step moves each weight by about lr^(2/3)·|g|^(1/3)) and can undo
            the accuracy; with the zeros masked, c < 1 (e.g. 0.01) fine-tunes smoothly.

    Example:
        >>> cb = StructureFreeze(patience=3)
        >>> cb.frozen, cb.freeze_step
        (False, None)
    """

    def __init__(
        self,
        patience: int = 3,
        epoch: int | None = None,
        min_epoch: int = 0,
        restart_momentum: float | None = None,
    ) -> None:
        for name, value, low in (("patience", patience, 1), ("min_epoch", min_epoch, 0)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"StructureFreeze: {name} must be an int >= {low}, got {value!r}")
        if epoch is not None and (isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0):
            raise ValueError(f"StructureFreeze: epoch must be an int >= 0 or None, got {epoch!r}")
        if restart_momentum is not None and not (
            isinstance(restart_momentum, (int, float))
            and not isinstance(restart_momentum, bool)
            and 0 < restart_momentum <= 1
        ):
            raise ValueError(
                f"StructureFreeze: restart_momentum must be in (0, 1] or None, got {restart_momentum!r}"
            )
        self.patience, self.epoch, self.min_epoch = patience, epoch, min_epoch
        self.restart_momentum = None if restart_momentum is None else float(restart_momentum)
        self.freeze_step: int | None = None
        self.stable_epochs = 0
        self.changes: list[int] = []
        self._masks: dict[str, Tensor] = {}
        self._entries: list[Monitored] = []
        self._previous: list[Tensor] | None = None
        self._state_zeroed = False

    @property
    def frozen(self) -> bool:
        """Whether the structure is frozen."""
        return self.freeze_step is not None

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(patience=self.patience, epoch=self.epoch)

    # -- hooks ----------------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        groups = [g for opt in trainer.optimizers for g in opt.param_groups]
        if not any(group_spec(g) is not None for g in groups):
            raise ValueError(
                "StructureFreeze found no param group with a regularizer in trainer.optimizers: there is "
                "no structure to freeze; give the model a regularizer"
            )
        self._entries = monitored_tensors(
            groups, pl_module.named_parameters(), None, param_layouts(pl_module)
        )
        names = {e.name for e in self._entries}
        missing = set(self._masks) - names
        if missing:
            raise ValueError(
                f"StructureFreeze: the checkpoint freezes {sorted(missing)}, which this model's regularized "
                "parameters do not include; resume with the same model and regularizer selection"
            )
        device = {e.name: e.param.device for e in self._entries}
        self._masks = {k: v.to(device[k]) for k, v in self._masks.items()}
        if self.frozen:  # resumed after the freeze: the restored state already has the zeros
            self._state_zeroed = True
        if self._previous is None or len(self._previous) != len(self._entries):
            self._previous = [_zero_pattern(e) for e in self._entries]
        else:
            self._previous = [p.to(e.param.device) for p, e in zip(self._previous, self._entries)]

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.frozen:
            return
        for g in optimizer.param_groups:
            if group_spec(g) is not None:
                g["lam"] = 0.0
        for e in self._entries:
            mask = self._masks.get(e.name)
            if mask is not None and e.param.grad is not None:
                e.param.grad.masked_fill_(mask, 0.0)
        if not self._state_zeroed:
            self._zero_state(trainer)
            self._state_zeroed = True

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.frozen:
            with torch.no_grad():
                for e in self._entries:
                    mask = self._masks.get(e.name)
                    if mask is not None:
                        e.param.masked_fill_(mask, 0.0)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.frozen:
            pl_module.log_dict({"structure/changes": 0.0, "structure/frozen": 1.0}, on_epoch=True)
            return
        patterns = [_zero_pattern(e) for e in self._entries]
        previous = self._previous or patterns
        changed = int(sum(int((a != b).sum()) for a, b in zip(patterns, previous)))
        self._previous = patterns
        self.changes.append(changed)
        self.stable_epochs = self.stable_epochs + 1 if changed == 0 else 0
        epoch = trainer.current_epoch
        due = epoch == self.epoch if self.epoch is not None else self.stable_epochs >= self.patience
        if due and epoch >= self.min_epoch:
            self._masks = {e.name: _element_mask(e, p).clone() for e, p in zip(self._entries, patterns)}
            self.freeze_step = trainer.global_step
            self._state_zeroed = False
            pl_module.log("structure/freeze_step", float(self.freeze_step), on_epoch=True)
        pl_module.log_dict(
            {"structure/changes": float(changed), "structure/frozen": float(self.frozen)}, on_epoch=True
        )

    # -- internals ------------------------------------------------------------------------------
    @torch.no_grad()
    def _zero_state(self, trainer: pl.Trainer) -> None:
        by_param = {id(e.param): self._masks[e.name] for e in self._entries if e.name in self._masks}
        for opt in trainer.optimizers:
            # dual averaging (RMDA/RAMDA) anchors its iterate at W_0 − V/β: with λ = 0 from now on it
            # would jump to that unshrunk point; a new stage starts from the current weights instead
            restart = getattr(opt, "restart", None)
            if callable(restart):
                restart()
                if self.restart_momentum is not None:
                    for g in opt.param_groups:
                        g["momentum"] = self.restart_momentum
            for p, st in opt.state.items():
                mask = by_param.get(id(p))
                if mask is None:
                    continue
                for v in st.values():
                    if isinstance(v, Tensor) and v.shape == p.shape:
                        v.masked_fill_(mask, 0.0)

    # -- state ----------------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "freeze_step": self.freeze_step,
            "stable_epochs": self.stable_epochs,
            "changes": list(self.changes),
            "masks": {k: v.cpu() for k, v in self._masks.items()},
            "previous": None if self._previous is None else [p.cpu() for p in self._previous],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.freeze_step = state_dict.get("freeze_step")
        self.stable_epochs = int(state_dict.get("stable_epochs", 0))
        self.changes = [int(c) for c in state_dict.get("changes", [])]
        self._masks = dict(state_dict.get("masks", {}))
        prev = state_dict.get("previous")
        self._previous = None if prev is None else list(prev)
