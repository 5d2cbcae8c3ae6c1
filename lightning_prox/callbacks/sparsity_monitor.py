"""Sparsity dashboards: exact-zero, group, weighted-group, low-rank sparsity and active units, through the
Trainer's loggers.

Counting is done by pure functions (``tensor_stats`` and ``sparsity_ratios`` of
:mod:`lightning_prox.structure`, stacked by ``callbacks/_counting.py``); this callback only decides when
to count and where to write. Weighted group sparsity as in the RAMDA paper (Huang et al.); active units as in PathProx (Yang et al.).
"""

from __future__ import annotations

import functools
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only, rank_zero_warn
from typing_extensions import override

from ..structure import UnitPair, group_norms, param_layouts, unit_pairs
from ._counting import (
    GLOBAL_KEYS,
    Monitored,
    count,
    label_with_lam,
    monitored_pairs,
    monitored_tensors,
    sparsity_metrics,
)
from ._dashboard import custom_scalars_layout, history_image, sparsity_table

__all__ = ["SparsityMonitor"]


class SparsityMonitor(Callback):
    r"""Log the sparsity of the regularized tensors, globally and per layer.

    Monitored tensors are those of param groups with a ``group["regularizer"]`` (every optimizer of the
    Trainer); when no group is regularized, every parameter with ``ndim >= 2``. Groups follow each
    tensor's regularizer: a spec with ``"dim"`` (``GroupLasso``) groups by that dim, ``NuclearNorm``
    counts the rank; elementwise regularizers count exact zeros only unless ``group_dim`` is given.
    With additive counts summed over tensors:

    .. math::

        \text{unstructured} = \frac{\sum \#\{x_i = 0\}}{\sum \text{numel}}, \quad
        \text{group} = \frac{\sum \#\{g: x_g = 0\}}{\sum \#g}, \quad
        \text{group\_weighted} = \frac{\sum_{g: x_g = 0} |g|}{\sum_g |g|}, \quad
        \text{low\_rank} = 1 - \frac{\sum \operatorname{rank}}{\sum \min(m, n)}, \quad
        \text{active\_units} = \frac{\#\{k: \lVert w_k \rVert \, \lVert v_k \rVert > 0\}}{\#k}.

    Active units are the hidden units between two consecutive linear/conv weights
    (:func:`~lightning_prox.structure.unit_pairs`, found once at the start of training by tracing the
    model; residual streams have none) of which at least one is monitored: unit ``k`` has input weights
    ``w_k`` (filter/row ``k`` of the first) and output weights ``v_k`` (input slice ``k`` of the next),
    and is active unless one of them is all exactly zero. Note the direction: ``active_units`` is the
    *active* fraction (1 = dense), as PathProx reports it; the other ratios are zero fractions. When an
    optimizer exposes its own layer pairs (``optimizer.pairs``, as
    :class:`~lightning_prox.optim.PathProx` does), the units are those of its disjoint pairs instead.

    Metrics ``sparsity/unstructured``, ``sparsity/group``, ``sparsity/group_weighted``,
    ``sparsity/low_rank``, ``sparsity/active_units`` (those that apply) and per tensor
    ``sparsity/layer/<param name>`` (exact zeros), ``sparsity/layer/<param name>/group`` and
    ``.../low_rank``, per unit pair ``sparsity/layer/<first weight's name>/active_units`` are written with
    ``logger.log_metrics`` every ``every_n_steps`` optimizer steps (default: the Trainer's
    ``log_every_n_steps``), after the last training batch of every epoch (before validation and
    checkpointing, so that a checkpoint holds it), at the start and at the end of training
    (``logging_interval="epoch"``: each epoch's last batch, start and end only). Steps that are not
    logged cost one integer comparison: no tensor work, no host sync. The global metrics also go into
    ``trainer.callback_metrics`` (so ``ModelCheckpoint(monitor="sparsity/group", mode="max")``,
    ``EarlyStopping`` and checkpoint filenames such as ``"{epoch}-{sparsity/group:.3f}"`` can use them),
    refreshed at every logged step and before every validation, on every rank; the headline one is
    shown in the progress bar. The history and the logged points are the same with and without a
    resume: the last logged step is part of :meth:`state_dict`, and a resumed fit logs no extra point.

    **Collapse guard**: when a monitored layer becomes entirely zero, or the whole model (every
    monitored weight zero, or no active unit left), a ``UserWarning`` names the layer, its λ and the
    step, once per layer, on rank 0.
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
        prog_bar: show ``sparsity/group`` (else ``sparsity/unstructured``) in the progress bar.
        tradeoff_metric: validation metric plotted against the global sparsity (TensorBoard
            ``tradeoff/...``; ``None``: off).

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
        prog_bar: bool = True,
        tradeoff_metric: str | None = "val/acc",
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
        self.prog_bar = prog_bar
        self.tradeoff_metric = tradeoff_metric
        self._last_step = -1
        self._collapsed: set[str] = set()
        self._lam_of: dict[str, Any] = {}
        self._entries: list[Monitored] = []
        self._pairs: list[UnitPair] = []

    @property
    def prints_table(self) -> bool:
        """Whether this callback prints the end-of-fit table (``ProxMixin`` then prints none)."""
        return bool(self.table)

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
        entries = monitored_tensors(groups, pl_module.named_parameters(), self.group_dim, layouts)
        label_with_lam(entries, groups)
        group_of = {id(p): g for g in groups for p in g["params"]}
        self._lam_of = {
            e.name: functools.partial(dict.get, group_of[id(e.param)], "lam", 0.0)
            for e in entries
            if id(e.param) in group_of and e.regularizer != "none"
        }
        return entries

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
        if not self._entries:
            return
        totals, rows = self.compute()
        self._publish(trainer, totals)
        if not trainer.is_global_zero:
            return
        self._guard(trainer, totals, rows)
        for logger in trainer.loggers:
            logger.log_metrics(self.metrics(totals, rows), step=step)
        rows = [r for r in rows if "unstructured" in r]
        names = [r["name"] for r in rows]
        if names != self.history_names:
            self.history, self.history_names = [], names
        self.history.append([r.get("group", r["unstructured"]) for r in rows])
        if len(self.history) > 1024:  # keep the image bounded: drop every other column
            self.history = self.history[::2]

    def _publish(self, trainer: pl.Trainer, totals: dict[str, float]) -> None:
        """Global metrics into ``trainer.callback_metrics`` (ModelCheckpoint, EarlyStopping, filenames)
        and the headline one into the progress bar, on every rank (the weights are replicated)."""
        metrics = {f"sparsity/{k}": v for k, v in totals.items() if k in GLOBAL_KEYS}
        trainer.callback_metrics.update({k: torch.tensor(v) for k, v in metrics.items()})
        if self.prog_bar:
            key = "sparsity/group" if "sparsity/group" in metrics else "sparsity/unstructured"
            if key in metrics:
                trainer.progress_bar_metrics[key] = metrics[key]

    def _guard(self, trainer: pl.Trainer, totals: dict[str, float], rows: list[dict[str, Any]]) -> None:
        """Warn once per layer (and once for the model) when the regularizer has removed everything."""
        step = trainer.global_step
        for r in rows:
            if "unstructured" not in r or r["unstructured"] < 1.0 or r["name"] in self._collapsed:
                continue
            self._collapsed.add(r["name"])
            lam = self._lam_of.get(r["name"])
            rank_zero_warn(
                f"SparsityMonitor: {r['name']} ({r['regularizer']}) is entirely zero at step {step}"
                f"{'' if lam is None else f' with lam={float(lam()):.3g}'}: the layer passes no signal on. "
                "Lower its lam (or start the λ schedule later) unless removing the layer is intended.",
                category=UserWarning,
            )
        dead = totals.get("unstructured", 0.0) >= 1.0 or totals.get("active_units", 1.0) <= 0.0
        if dead and "<model>" not in self._collapsed:
            self._collapsed.add("<model>")
            lams = sorted({round(float(f()), 12) for f in self._lam_of.values()})
            rank_zero_warn(
                f"SparsityMonitor: the model has collapsed at step {step} (exact-zero fraction "
                f"{totals.get('unstructured', 0.0):.3f}, active units {totals.get('active_units', 1.0):.3f}, "
                f"lam {lams}): its predictions no longer depend on the input. Lower lam.",
                category=UserWarning,
            )

    def _chart_kinds(self, trainer: pl.Trainer) -> list[str]:
        kinds = []
        if any(e.dim is not None for e in self._entries):
            kinds.append("groups")
        if any(e.rank for e in self._entries):
            kinds.append("low_rank")
        if self._pairs:
            kinds.append("active_units")
        if any(hasattr(cb, "last_lams") for cb in trainer.callbacks):
            kinds.append("lambda")
        if any(hasattr(cb, "table_notes") for cb in trainer.callbacks):
            kinds.append("quant")
        if self.tradeoff_metric is not None and trainer.enable_validation:  # else it would stay empty
            kinds.append("tradeoff")
        return kinds

    def _log_tradeoff(self, trainer: pl.Trainer) -> None:
        """``tradeoff/<metric>`` at x = sparsity × 10⁴: the accuracy-versus-sparsity view in TensorBoard."""
        metric = trainer.callback_metrics.get(self.tradeoff_metric) if self.tradeoff_metric else None
        if metric is None or not self._entries or not trainer.is_global_zero:
            return
        totals = self.compute()[0]
        x = totals.get("group", totals.get("unstructured"))
        if x is None:
            return
        tag = f"tradeoff/{self.tradeoff_metric.replace('/', '_')}_vs_sparsity"
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_scalar(tag, float(metric), round(1e4 * x))

    def _publish_now(self, trainer: pl.Trainer) -> None:
        if self._entries and not trainer.sanity_checking:
            self._publish(trainer, self.compute()[0])

    # -- hooks ------------------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._entries = self._collect(trainer, pl_module)
        own = _optimizer_unit_pairs(trainer, pl_module)  # PathProx: its own disjoint pairs
        if not self.active_units:
            self._pairs = []
        else:
            self._pairs = own if own else monitored_pairs(unit_pairs(pl_module), self._entries)
        if trainer.is_global_zero:
            tags = [f"sparsity/{k}" for k in GLOBAL_KEYS]
            for logger in trainer.loggers:
                if isinstance(logger, TensorBoardLogger):
                    logger.experiment.add_custom_scalars(
                        custom_scalars_layout(tags, self._chart_kinds(trainer))
                    )
        if trainer.global_step == 0:
            self._last_step, self._collapsed = -1, set()
            self._log(trainer)
        else:  # resumed: the point at this step is in the restored history already
            self._publish_now(trainer)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        # the epoch's last point is taken here, before validation and ModelCheckpoint run
        last = (
            batch_idx + 1 >= trainer.num_training_batches
            or trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        )
        if last or (self.logging_interval == "step" and trainer.global_step % self._every(trainer) == 0):
            self._log(trainer)

    @override
    def on_validation_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit":
            self._publish_now(trainer)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            self._log_tradeoff(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer)
        if trainer.is_global_zero and (self.histograms or self.image):
            self._write_tensorboard(trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._log(trainer)
        if self.table:
            self._print_table(trainer)

    @rank_zero_only
    def _print_table(self, trainer: pl.Trainer) -> None:
        from rich.console import Console

        totals, rows = self.compute()
        rows = [r for r in rows if "unstructured" in r]
        for r in rows:  # the strength at the end (a λ schedule or SparsityTarget moved it since the start)
            lam = self._lam_of.get(r["name"])
            if lam is not None:
                value = f"{float(lam()):.2g}"
                value = value if len(value) <= 6 else f"{float(lam()):.1e}".replace("e-0", "e-")  # 80 columns
                r["regularizer"] = f"{str(r['regularizer']).split(' λ=')[0]} λ={value}"
        notes: dict[str, str] = {}
        for cb in trainer.callbacks:
            describe = getattr(cb, "table_notes", None)
            if callable(describe):
                notes.update(describe(trainer))
        if rows:
            Console().print(sparsity_table(rows, totals, notes))

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
                    "sparsity/layer_history",
                    history_image(self.history, self.history_names),
                    step,
                    dataformats="HWC",
                )

    # -- checkpointing ----------------------------------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "history": [list(h) for h in self.history],
            "history_names": list(self.history_names),
            "last_step": self._last_step,
            "collapsed": sorted(self._collapsed),
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = [[float(v) for v in h] for h in state_dict.get("history", [])]
        self.history_names = [str(n) for n in state_dict.get("history_names", [])]
        self._last_step = int(state_dict.get("last_step", -1))
        self._collapsed = {str(n) for n in state_dict.get("collapsed", [])}


def _optimizer_unit_pairs(trainer: pl.Trainer, pl_module: pl.LightningModule) -> list[UnitPair]:
    """The layer pairs of optimizers that regularize units themselves (``opt.pairs``, e.g. PathProx)."""
    names = {id(p): n for n, p in pl_module.named_parameters()}
    out = []
    for opt in trainer.optimizers:
        for p in getattr(opt, "pairs", None) or []:
            w, v = getattr(p, "w", None), getattr(p, "v", None)
            if isinstance(w, torch.Tensor) and isinstance(v, torch.Tensor):
                out.append(
                    UnitPair(names.get(id(w), "w"), names.get(id(v), "v"), w, v, int(getattr(p, "block", 1)))
                )
    return out
