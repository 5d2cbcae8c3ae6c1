"""Sparsity dashboards: exact-zero, group, weighted-group, low-rank sparsity and active units, through the
Trainer's loggers.

Counting is done by pure functions (``tensor_stats`` and ``sparsity_ratios`` of
:mod:`lightning_prox.structure`, stacked by ``callbacks/_counting.py``); this callback only decides when
to count and where to write (STYLE.md principles 10 and 12). Definitions: DESIGN.md §5, weighted group
sparsity digest 003 §3.2, active units digest 004.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from ..structure import UnitPair, group_norms, param_layouts, unit_pairs
from ._counting import GLOBAL_KEYS, Monitored, count, monitored_pairs, monitored_tensors, sparsity_metrics
from ._dashboard import custom_scalars_layout, history_image, sparsity_table

__all__ = ["SparsityMonitor"]


class SparsityMonitor(Callback):
    r"""Log the sparsity of the regularized tensors, globally and per layer.

    Monitored tensors are those of param groups with a ``group["regularizer"]`` (every optimizer of the
    Trainer); when no group is regularized, every parameter with ``ndim >= 2``. Groups follow each
    tensor's regularizer: a spec with ``"dim"`` (``GroupLasso``) groups by that dim, ``NuclearNorm``
    counts the rank; elementwise regularizers count exact zeros only unless ``group_dim`` is given.
    With additive counts summed over tensors (DESIGN.md §5, digest 003 §3.2):

    .. math::

        \text{unstructured} = \frac{\sum \#\{x_i = 0\}}{\sum \text{numel}}, \quad
        \text{group} = \frac{\sum \#\{g: x_g = 0\}}{\sum \#g}, \quad
        \text{group\_weighted} = \frac{\sum_{g: x_g = 0} |g|}{\sum_g |g|}, \quad
        \text{low\_rank} = 1 - \frac{\sum \operatorname{rank}}{\sum \min(m, n)}, \quad
        \text{active\_units} = \frac{\#\{k: \lVert w_k \rVert \, \lVert v_k \rVert > 0\}}{\#k}.

    Active units (digest 004) are the hidden units between two consecutive linear/conv weights
    (:func:`~lightning_prox.structure.unit_pairs`, found once at the start of training by tracing the
    model; residual streams have none) of which at least one is monitored: unit ``k`` has input weights
    ``w_k`` (filter/row ``k`` of the first) and output weights ``v_k`` (input slice ``k`` of the next),
    and is active unless one of them is all exactly zero. Note the direction: ``active_units`` is the
    *active* fraction (1 = dense), as PathProx reports it; the other ratios are zero fractions.

    Metrics ``sparsity/unstructured``, ``sparsity/group``, ``sparsity/group_weighted``,
    ``sparsity/low_rank``, ``sparsity/active_units`` (those that apply) and per tensor
    ``sparsity/layer/<param name>`` (exact zeros), ``sparsity/layer/<param name>/group`` and
    ``.../low_rank``, per unit pair ``sparsity/layer/<first weight's name>/active_units`` are written with
    ``logger.log_metrics`` every ``every_n_steps`` optimizer steps (default: the Trainer's
    ``log_every_n_steps``; ``logging_interval="epoch"``: at each epoch end), at the start and at the end
    of training. Steps that are not logged cost one integer comparison: no tensor work, no host sync.
    On a logged step the counts of all tensors are stacked and read back once. Under DDP the weights
    are replicated, so global rank 0 counts (exactly what a single process counts) and the loggers
    write once.

    With a :class:`~lightning.pytorch.loggers.TensorBoardLogger` it also writes, on rank 0, a
    custom-scalars layout (a "Sparsity" dashboard with the global and per-layer curves, λ and the
    quantization error), at every epoch end histograms ``group_norms/<param name>`` of the group norms
    (the regularizer's grouping, else filters/neurons ``"out"``) and an image
    ``sparsity/layer_history`` (rows: tensors, columns: logged points, colour: group sparsity, or
    exact-zero sparsity for ungrouped tensors). At the end of fit a rich table per layer is printed.

    Args:
        logging_interval: ``"step"`` or ``"epoch"``.
        every_n_steps: steps between logs with ``logging_interval="step"``; ``None`` = the Trainer's
            ``log_every_n_steps``.
        per_layer: also log ``sparsity/layer/...``.
        group_dim: grouping (``"in"``/``"out"``) for tensors whose regularizer has none; ``None``: none.
        histograms: write group-norm histograms (TensorBoard).
        image: write the per-layer history image (TensorBoard).
        table: print the per-layer table at the end of fit.
        active_units: trace the model for unit pairs and log ``active_units``.

    Example:
        >>> SparsityMonitor(every_n_steps=10).every_n_steps
        10
    """

    def __init__(
        self,
        logging_interval: Literal["step", "epoch"] = "step",
        every_n_steps: int | None = None,
        per_layer: bool = True,
        group_dim: Literal["in", "out"] | None = None,
        histograms: bool = True,
        image: bool = True,
        table: bool = True,
        active_units: bool = True,
    ) -> None:
        if logging_interval not in ("step", "epoch"):
            raise ValueError(f"logging_interval must be 'step' or 'epoch', got {logging_interval!r}")
        if every_n_steps is not None and (
            isinstance(every_n_steps, bool) or not isinstance(every_n_steps, int) or every_n_steps < 1
        ):
            raise ValueError(
                f"every_n_steps must be an int >= 1 or None (Trainer's default), got {every_n_steps!r}"
            )
        if group_dim not in (None, "in", "out"):
            raise ValueError(f"group_dim must be 'in', 'out' or None, got {group_dim!r}")
        self.logging_interval = logging_interval
        self.every_n_steps = every_n_steps
        self.per_layer = per_layer
        self.group_dim = group_dim
        self.histograms = histograms
        self.image = image
        self.table = table
        self.active_units = active_units
        self.history: list[list[float]] = []  # per logged point, one value per monitored tensor
        self.history_names: list[str] = []
        self._last_step = -1
        self._entries: list[Monitored] = []
        self._pairs: list[UnitPair] = []

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(
            logging_interval=self.logging_interval, every_n_steps=self.every_n_steps
        )

    # -- what is monitored ------------------------------------------------------------------------
    def _collect(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[Monitored]:
        groups = [g for opt in trainer.optimizers for g in opt.param_groups]
        layouts = param_layouts(pl_module) if self.group_dim is not None else None
        return monitored_tensors(groups, pl_module.named_parameters(), self.group_dim, layouts)

    def _every(self, trainer: pl.Trainer) -> int:
        return (
            self.every_n_steps if self.every_n_steps is not None else max(1, int(trainer.log_every_n_steps))
        )

    # -- counting ---------------------------------------------------------------------------------
    def compute(self) -> tuple[dict[str, float], list[dict[str, Any]]]:
        """(global ratios, rows: per tensor, then per unit pair) of what is monitored; one host read."""
        return count(self._entries, self._pairs)

    def metrics(self, totals: dict[str, float], rows: list[dict[str, Any]]) -> dict[str, float]:
        """The logged ``sparsity/...`` dict from :meth:`compute`'s output."""
        return sparsity_metrics(totals, rows, per_layer=self.per_layer)

    def _log(self, trainer: pl.Trainer) -> None:
        step = trainer.global_step
        if step == self._last_step or trainer.sanity_checking:
            return
        self._last_step = step
        if not trainer.is_global_zero or not self._entries:
            return
        totals, rows = self.compute()
        for logger in trainer.loggers:
            logger.log_metrics(self.metrics(totals, rows), step=step)
        rows = [r for r in rows if "unstructured" in r]
        names = [r["name"] for r in rows]
        if names != self.history_names:
            self.history, self.history_names = [], names
        self.history.append([r.get("group", r["unstructured"]) for r in rows])
        if len(self.history) > 1024:  # keep the image bounded: drop every other column
            self.history = self.history[::2]

    # -- hooks ------------------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._entries = self._collect(trainer, pl_module)
        self._pairs = monitored_pairs(unit_pairs(pl_module), self._entries) if self.active_units else []
        self._last_step = -1
        if trainer.is_global_zero:
            tags = [f"sparsity/{k}" for k in GLOBAL_KEYS]
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_custom_scalars(custom_scalars_layout(tags))
        self._log(trainer)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.logging_interval == "step" and trainer.global_step % self._every(trainer) == 0:
            self._log(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.logging_interval == "epoch":
            self._log(trainer)
        if trainer.is_global_zero and (self.histograms or self.image):
            self._write_tensorboard(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer)
        if self.table:
            self._print_table()

    @rank_zero_only
    def _print_table(self) -> None:
        from rich.console import Console

        totals, rows = self.compute()
        rows = [r for r in rows if "unstructured" in r]
        if rows:
            Console().print(sparsity_table(rows, totals))

    @torch.no_grad()
    def _write_tensorboard(self, trainer: pl.Trainer) -> None:
        tbs = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not tbs:
            return
        step = trainer.global_step
        for tb in tbs:
            writer = tb.experiment
            if self.histograms:
                for e in self._entries:
                    x = e.param.detach()
                    dim = e.dim if e.dim is not None else ("out" if x.ndim >= 2 else None)
                    if dim is None:
                        continue
                    norms = group_norms(x.float(), dim, e.layout if e.dim is not None else None)
                    writer.add_histogram(f"group_norms/{e.name}", norms.cpu(), step)
            if self.image and self.history:
                writer.add_image(
                    "sparsity/layer_history", history_image(self.history), step, dataformats="HWC"
                )

    # -- checkpointing ----------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"history": [list(h) for h in self.history], "history_names": list(self.history_names)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [[float(v) for v in h] for h in state_dict.get("history", [])]
        self.history_names = [str(n) for n in state_dict.get("history_names", [])]
