"""``ProxMixin``: proximal training for any ``LightningModule`` from two init arguments.

.. code-block:: python

    class MyNet(ProxMixin, pl.LightningModule):
        def __init__(self, optimizer=None, regularizer=None):
            super().__init__(optimizer=optimizer, regularizer=regularizer)
            self.layer = torch.nn.Linear(8, 2)

        def training_step(self, batch, batch_idx): ...

The mixin builds the param groups (:func:`lightning_prox.structure.param_groups_regularized`:
conv/linear/LSTM weights regularized by default; biases, norm layers and embeddings not, unless named by
``include``), instantiates the optimizer and LR scheduler in ``configure_optimizers``, keeps checkpoints
loadable with ``torch.load(weights_only=True)`` (DESIGN.md §4) and prints a per-layer sparsity table
when ``fit`` ends.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from .regularizers import Regularizer, as_regularizer, from_spec
from .structure import param_groups_regularized, select_parameters, tensor_stats

__all__ = ["ProxMixin"]

PenaltyMode = Literal["prox", "subgradient"]


def _import(class_path: str) -> Any:
    module, _, name = class_path.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        raise ValueError(f"cannot import {class_path!r}: no such module or class") from None


def _resolve_regularizer(reg: Any) -> Regularizer | None:
    """A Regularizer, ``None``, a spec dict (``{"name": ..., "lam": ...}``) or a class_path dict."""
    if isinstance(reg, Mapping) and "class_path" in reg:
        cls = _import(reg["class_path"])
        if not (isinstance(cls, type) and issubclass(cls, Regularizer)):
            raise ValueError(
                f"regularizer class_path {reg['class_path']!r} is not a lightning_prox.regularizers.Regularizer"
            )
        return cls(**dict(reg.get("init_args") or {}))
    try:
        return as_regularizer(reg)
    except ValueError as err:
        raise ValueError(f"regularizer: {err}") from None


def _optimizer_class(opt: Any) -> type | None:
    """The optimizer class behind a class, a ``functools.partial`` (LightningCLI's form) or a config dict."""
    if isinstance(opt, type):
        return opt
    if isinstance(opt, functools.partial):
        for a in (opt.func, *opt.args):
            if isinstance(a, type):
                return a
            if isinstance(a, functools.partial):
                return _optimizer_class(a)
    return None


def _resolve_callable(obj: Any, what: str) -> Callable[..., Any] | None:
    if obj is None:
        return None
    if isinstance(obj, Mapping) and "class_path" in obj:
        return functools.partial(_import(obj["class_path"]), **dict(obj.get("init_args") or {}))
    if callable(obj):
        return obj
    raise ValueError(
        f"{what} must be a callable (an optimizer class, functools.partial, or a LightningCLI "
        f"class_path/init_args entry), got {obj!r}"
    )


def _to_config(obj: Any) -> Any:
    """Plain-data (weights_only-safe) form of an init argument: class_path dicts for objects."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Mapping):
        return {str(k): _to_config(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_config(v) for v in obj]
    if isinstance(obj, Tensor):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        init = {f.name: _to_config(getattr(obj, f.name)) for f in dataclasses.fields(obj) if f.init}
        return {"class_path": f"{type(obj).__module__}.{type(obj).__qualname__}", "init_args": init}
    cls = _optimizer_class(obj)
    if cls is not None:
        kwargs = obj.keywords if isinstance(obj, functools.partial) else {}
        return {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": _to_config(dict(kwargs))}
    return repr(obj)


class ProxMixin:
    """Mixin for a ``LightningModule``: proximal optimizer, regularized param groups, LR scheduler.

    Put it before ``LightningModule`` in the bases and pass the arguments to ``super().__init__``.
    ``configure_optimizers`` then returns ``optimizer(param_groups)`` (and the scheduler), where the
    selected weights carry ``regularizer`` and every other parameter none.

    With ``penalty_mode="subgradient"`` (the papers' subgradient baselines, e.g. "Sub-Adam"), the
    optimizer gets no regularizer and :math:`R(\\theta)` — ``regularizer.value`` summed over the selected
    weights at the current ``group["lam"]`` — is added to the loss returned by ``training_step`` (and
    logged as ``train/penalty``); at exact zeros the subgradient used is 0. With manual optimization,
    add :meth:`prox_penalty` yourself.

    Checkpoints stay loadable with ``torch.load(weights_only=True)``: objects in the saved
    hyperparameters are written as ``class_path``/``init_args`` dicts, and the RNG states (torch,
    CUDA, Python, NumPy) are stored as plain data and restored, so that a resumed run continues exactly.

    Args:
        optimizer: callable ``params -> Optimizer``: an optimizer class, a ``functools.partial`` of one,
            or, from YAML, ``class_path``/``init_args``. ``None`` = ``ProxGen(lr=1e-3)``. In
            ``"prox"`` mode it must take ``regularizer`` (a ``lightning_prox.optim`` class) whenever
            a regularizer is given.
        regularizer: the regularizer of the selected weights (``None``: no regularization).
        lr_scheduler: callable ``optimizer -> LRScheduler`` (e.g. ``MultiStepLR`` from YAML);
            stepped every epoch, ``ReduceLROnPlateau`` monitors ``val/loss``.
        include_types: module class names whose weights are regularized (default: conv, linear,
            LSTM/GRU/RNN, see :data:`lightning_prox.structure.DEFAULT_REGULARIZED_TYPES`).
        include: regexes of parameter names to regularize in addition (e.g. ``"bias$"``).
        exclude: regexes of parameter names never to regularize (e.g. ``"^net\\.fc\\."``).
        penalty_mode: ``"prox"`` (proximal step inside the optimizer) or ``"subgradient"``.
        sparsity_table: print the per-layer sparsity of the regularized weights when ``fit`` ends.

    Example:
        >>> import lightning.pytorch as pl
        >>> from lightning_prox.regularizers import L1
        >>> class Net(ProxMixin, pl.LightningModule):
        ...     def __init__(self, optimizer=None, regularizer=None):
        ...         super().__init__(optimizer=optimizer, regularizer=regularizer)
        ...         self.fc = nn.Linear(4, 2)
        >>> net = Net(regularizer=L1(1e-3))
        >>> [(g["param_names"], g["regularizer"]) for g in net.prox_param_groups()]
        [(['fc.weight'], L1(lam=0.001)), (['fc.bias'], None)]
    """

    #: restore the RNG states saved in the checkpoint on resume (exact continuation of dropout etc.)
    prox_restore_rng_state: bool = True

    def __init__(
        self,
        *args: Any,
        optimizer: Any = None,
        regularizer: Regularizer | None = None,
        lr_scheduler: Any = None,
        include_types: Sequence[str] | None = None,
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        penalty_mode: PenaltyMode = "prox",
        sparsity_table: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.configure_prox(
            optimizer=optimizer,
            regularizer=regularizer,
            lr_scheduler=lr_scheduler,
            include_types=include_types,
            include=include,
            exclude=exclude,
            penalty_mode=penalty_mode,
            sparsity_table=sparsity_table,
        )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        step = cls.__dict__.get("training_step")
        if step is not None and not getattr(step, "_prox_wrapped", False):
            cls.training_step = _with_penalty(step)  # type: ignore[method-assign]

    # -- configuration ----------------------------------------------------------------------------
    def configure_prox(
        self,
        optimizer: Any = None,
        regularizer: Regularizer | None = None,
        lr_scheduler: Any = None,
        include_types: Sequence[str] | None = None,
        include: Sequence[str] | str | None = None,
        exclude: Sequence[str] | str | None = None,
        penalty_mode: PenaltyMode = "prox",
        sparsity_table: bool = True,
    ) -> None:
        """(Re)set the proximal configuration; validated here, before any training."""
        if penalty_mode not in ("prox", "subgradient"):
            raise ValueError(f"penalty_mode must be 'prox' or 'subgradient', got {penalty_mode!r}")
        reg = _resolve_regularizer(regularizer)
        if penalty_mode == "subgradient" and reg is not None:
            probe = torch.linspace(-1.0, 1.0, 12).reshape(3, 4).requires_grad_()
            if not reg.with_lam(max(reg.lam, 1.0)).value(probe).requires_grad:
                raise ValueError(
                    f"regularizer {reg!r} has no useful subgradient (its value is piecewise constant), "
                    "so penalty_mode='subgradient' cannot train it; use penalty_mode='prox'"
                )
        self._prox_optimizer = _resolve_callable(optimizer, "optimizer")
        self._prox_regularizer = reg
        self._prox_lr_scheduler = _resolve_callable(lr_scheduler, "lr_scheduler")
        self._prox_selection = {
            "include_types": None if include_types is None else list(include_types),
            "include": include,
            "exclude": exclude,
        }
        self._prox_penalty_mode = penalty_mode
        self._prox_sparsity_table = bool(sparsity_table)

    @property
    def regularizer(self) -> Regularizer | None:
        """The regularizer given at construction (its ``lam`` is the initial strength)."""
        return self._prox_regularizer

    @regularizer.setter
    def regularizer(self, value: Any) -> None:
        self._prox_regularizer = _resolve_regularizer(value)

    @property
    def penalty_mode(self) -> PenaltyMode:
        """``"prox"`` or ``"subgradient"``."""
        return self._prox_penalty_mode

    def prox_param_groups(self) -> list[dict[str, Any]]:
        """Param groups: the selected weights with the regularizer, then every other parameter.

        Raises ``ValueError`` naming the parameter when the regularizer cannot apply to it (e.g. a
        group lasso on a 1-d tensor selected by ``include``).
        """
        reg = self._prox_regularizer
        select_parameters(self, **self._prox_selection)  # type: ignore[arg-type]  # bad regex/type: as is
        try:
            groups = param_groups_regularized(self, reg, **self._prox_selection)  # type: ignore[arg-type]
        except ValueError as err:
            raise ValueError(
                f"regularizer {reg!r}: {err} (model parameter selection: {self._prox_selection})"
            ) from None
        return groups

    def regularized_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs that the regularizer applies to."""
        named = dict(self.named_parameters())  # type: ignore[attr-defined]
        out = []
        for g in self.prox_param_groups():
            if g["regularizer"] is not None:
                out += [(n, named[n]) for n in g["param_names"]]
        return out

    def configure_optimizers(self) -> Any:
        """``optimizer(param_groups)`` and, when given, the LR scheduler (stepped each epoch)."""
        groups = self.prox_param_groups()
        reg = self._prox_regularizer
        if self._prox_penalty_mode == "subgradient":
            for g in groups:
                if g["regularizer"] is not None:
                    g["lam"] = g["regularizer"].lam
                g["penalty"] = None if g["regularizer"] is None else g["regularizer"].spec()
                del g["regularizer"]
        factory = self._prox_optimizer
        if factory is None:
            from .optim import ProxGen  # type: ignore[attr-defined]

            factory = functools.partial(ProxGen, lr=1e-3)
        if self._prox_penalty_mode == "prox" and reg is None:
            cls = _optimizer_class(factory)
            if cls is not None and "regularizer" not in inspect.signature(cls).parameters:
                for g in groups:  # plain torch optimizer, nothing to regularize: keep groups clean
                    g.pop("regularizer", None)
        optimizer = factory(groups)
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer callable returned {type(optimizer).__name__}, not a torch Optimizer")
        for g in optimizer.param_groups:
            if isinstance(g.get("regularizer"), Regularizer):
                raise ValueError(
                    f"optimizer {type(optimizer).__name__} does not apply a proximal step (it left the "
                    f"regularizer {g['regularizer']!r} in its param groups); use a lightning_prox.optim "
                    "optimizer (ProxGen, ProxSGD, ...) or penalty_mode='subgradient'"
                )
        if self._prox_lr_scheduler is None:
            return optimizer
        scheduler = self._prox_lr_scheduler(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        return {"optimizer": optimizer, "lr_scheduler": config}

    # -- subgradient baseline ---------------------------------------------------------------------
    def prox_penalty(self) -> Tensor:
        """R(θ) summed over the regularized weights at the optimizer's current ``group["lam"]``."""
        reg = self._prox_regularizer
        named = dict(self.named_parameters())  # type: ignore[attr-defined]
        trainer = getattr(self, "_trainer", None)
        opts = trainer.optimizers if trainer is not None else []
        total: Tensor | None = None
        if opts:
            for g in opts[0].param_groups:
                spec = g.get("penalty", g.get("regularizer"))
                if spec is None or reg is None:
                    continue
                lam = float(g.get("lam", reg.lam))
                # the group's own spec: it carries the module layout of its weights (GroupLasso)
                r = from_spec(spec, lam) if isinstance(spec, dict) else reg.with_lam(lam)
                for p in g["params"]:
                    v = r.value(_zero_subgradient_at_zero(p))
                    total = v if total is None else total + v
        elif reg is not None:
            for g in self.prox_param_groups():
                for n in g["param_names"] if g["regularizer"] is not None else ():
                    v = g["regularizer"].value(_zero_subgradient_at_zero(named[n]))
                    total = v if total is None else total + v
        if total is None:
            return torch.zeros((), device=self.device)  # type: ignore[attr-defined]
        return total

    # -- checkpoints: plain data only, exact resume -------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = _to_config(dict(checkpoint["hyper_parameters"]))
        state: dict[str, Any] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        py = random.getstate()
        state["python"] = [py[0], list(py[1]), py[2]]
        npst = np.random.get_state()  # noqa: NPY002  (the global state that seed_everything seeds)
        state["numpy"] = [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])]
        checkpoint["prox_rng_state"] = state

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("prox_rng_state")
        if not state or not self.prox_restore_rng_state:
            return
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
        py = state["python"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        npst = state["numpy"]
        np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), *npst[2:]))  # noqa: NPY002

    # -- report ---------------------------------------------------------------------------------
    def sparsity_rows(self) -> list[dict[str, Any]]:
        """Per regularized weight: name, shape, exact zeros, and zero groups for grouped regularizers."""
        named = dict(self.named_parameters())  # type: ignore[attr-defined]
        rows = []
        for g in self.prox_param_groups():
            reg = g["regularizer"]
            if reg is None:
                continue
            dim, layout = getattr(reg, "dim", None), getattr(reg, "layout", None)  # as the prox groups
            for name in g["param_names"]:
                p = named[name]
                d = dim if dim in ("in", "out") and p.ndim >= (2 if dim == "in" else 1) else None
                s = {k: int(v) for k, v in tensor_stats(p.detach(), d, layout=layout).items()}
                rows.append({"name": name, "shape": tuple(p.shape), **s})
        return rows

    def on_fit_end(self) -> None:
        if self._prox_sparsity_table and self._prox_regularizer is not None:
            _print_table(self.sparsity_rows(), self._prox_regularizer)


def _zero_subgradient_at_zero(p: Tensor) -> Tensor:
    """``p`` with exact zeros detached: same value, and autograd's (sub)gradient there is 0 instead of
    the NaN/inf that penalties like |x|^q (q < 1) produce at 0."""
    return torch.where(p == 0, p.detach(), p)


def _with_penalty(step: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(step)
    def training_step(self: ProxMixin, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_prox_penalty_mode", "prox") != "subgradient" or getattr(
            self, "_prox_in_step", False
        ):
            return step(self, *args, **kwargs)
        self._prox_in_step = True
        try:
            out = step(self, *args, **kwargs)
        finally:
            self._prox_in_step = False
        if out is None:
            return out
        penalty = self.prox_penalty()
        self.log("train/penalty", penalty.detach())  # type: ignore[attr-defined]
        if isinstance(out, Tensor):
            return out + penalty
        if isinstance(out, Mapping) and "loss" in out:
            return {**out, "loss": out["loss"] + penalty}
        return out

    training_step._prox_wrapped = True  # type: ignore[attr-defined]
    return training_step


@rank_zero_only
def _print_table(rows: list[dict[str, Any]], reg: Regularizer) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"sparsity of the regularized weights ({reg!r})")
    for col in ("parameter", "shape", "zeros", "zero groups"):
        table.add_column(col, justify="left" if col == "parameter" else "right")
    zeros = numel = zg = ng = 0
    for r in rows:
        groups = f"{r['zero_groups']}/{r['groups']}" if "groups" in r else "-"
        table.add_row(
            r["name"], "x".join(map(str, r["shape"])), f"{100 * r['zeros'] / max(r['numel'], 1):.1f}%", groups
        )
        zeros, numel = zeros + r["zeros"], numel + r["numel"]
        zg, ng = zg + r.get("zero_groups", 0), ng + r.get("groups", 0)
    table.add_row("total", str(numel), f"{100 * zeros / max(numel, 1):.1f}%", f"{zg}/{ng}" if ng else "-")
    Console().print(table)
