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
loadable with ``torch.load(weights_only=True)`` and prints a per-layer sparsity table
when ``fit`` ends.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch import Tensor, nn

from .layer_rules import LayerRule, _import, _takes_regularizer, param_groups_from_rules, resolve_regularizer
from .regularizers import Regularizer, as_regularizer

__all__ = ["ProxMixin"]

PenaltyMode = Literal["prox", "subgradient"]


def _resolve_regularizer(reg: Any) -> Regularizer | None:
    """A Regularizer, ``None``, a spec dict (``{"name": ..., "lam": ...}``) or a class_path dict."""
    return resolve_regularizer(reg, "regularizer")


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
    """Mixin for a ``LightningModule``: proximal optimizer, per-layer regularized param groups, LR scheduler.

    Put it before ``LightningModule`` in the bases and pass the arguments to ``super().__init__``.
    ``configure_optimizers`` then returns ``optimizer(param_groups)`` (and the scheduler), where the
    selected weights carry their regularizer and every other parameter none.

    Which weights get which regularizer: ``rules`` (an ordered list, first match wins, see
    :class:`~lightning_prox.layer_rules.LayerRule`), then ``regularizer`` on the default selection
    (conv, linear and RNN weights, adjusted by ``include_types``/``include``/``exclude``); everything
    else is trained plainly. ``exclude_ends=True`` leaves the first conv and the classifier dense.

    **Your own** ``configure_optimizers``: define it in your class and build the optimizer from
    :meth:`prox_param_groups` (the groups above) with a ``lightning_prox.optim`` optimizer, e.g.
    ``ProxGen(self.prox_param_groups(), lr=1e-3)`` plus any scheduler, or with
    :func:`~lightning_prox.layer_rules.create_prox_optimizer`. An optimizer whose param groups carry no
    regularizer while one is configured raises at fit start (the regularizer would be ignored), and a
    ``configure_optimizers`` of a base class that ProxMixin would override raises at construction;
    both messages say what to do.

    With ``penalty_mode="subgradient"`` (the papers' subgradient baselines, e.g. "Sub-Adam"), the
    optimizer gets no regularizer and :math:`R(\\theta)` — each group's regularizer value summed over its
    weights at the current ``group["lam"]`` — is added to the loss returned by ``training_step`` (and
    logged as ``train/penalty``); at exact zeros the subgradient used is 0. Any torch optimizer works
    then, your own included. With manual optimization, add :meth:`prox_penalty` yourself.

    Checkpoints stay loadable with ``torch.load(weights_only=True)``: objects in the saved
    hyperparameters are written as ``class_path``/``init_args`` dicts, and the RNG states (torch,
    CUDA, Python, NumPy) are stored as plain data. They are restored only when a fit resumes
    (``Trainer.fit(ckpt_path=...)``), so that the resumed run continues exactly; an inference load
    (``load_from_checkpoint``, ``Trainer.validate/test(ckpt_path=...)``) leaves the caller's RNGs as
    they were.

    Args:
        optimizer: callable ``params -> Optimizer``: an optimizer class, a ``functools.partial`` of one,
            or, from YAML, ``class_path``/``init_args``. ``None`` (the default) means
            ``ProxGen(lr=1e-3)``, proximal Adam (a message says so when training starts). In
            ``"prox"`` mode it must take ``regularizer`` (a ``lightning_prox.optim`` class) whenever
            a regularizer is given. A ``regularizer`` given to the optimizer itself (e.g. YAML
            ``optimizer.init_args.regularizer``) is used as ``regularizer`` when that is not set.
        regularizer: the regularizer of the default selection (``None``: none).
        lr_scheduler: callable ``optimizer -> LRScheduler`` (e.g. ``MultiStepLR`` from YAML);
            stepped every epoch, ``ReduceLROnPlateau`` monitors ``val/loss``.
        include_types: module class names whose weights ``regularizer`` takes (default: conv, linear,
            LSTM/GRU/RNN, see :data:`lightning_prox.structure.DEFAULT_REGULARIZED_TYPES`).
        include: regexes of parameter names ``regularizer`` takes in addition (e.g. ``"bias$"``).
        exclude: regexes of parameter names never to regularize (e.g. ``"^net\\.fc\\."``).
        penalty_mode: ``"prox"`` (proximal step inside the optimizer) or ``"subgradient"``.
        sparsity_table: print the per-layer sparsity of the regularized weights when ``fit`` ends
            (only when no :class:`~lightning_prox.callbacks.SparsityMonitor` prints its own).
        rules: per-layer rules, dicts (YAML) or ``LayerRule`` objects with ``params`` (name regexes),
            ``types`` (module class names), ``regularizer``, ``lam``, ``lr``, ``weight_decay``.
        exclude_ends: leave the first conv and the classifier unregularized (timm's
            ``pretrained_cfg`` or the network's ``prox_ends`` names them).

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
        rules: Sequence[LayerRule | Mapping[str, Any]] | None = None,
        exclude_ends: bool = False,
        **kwargs: Any,
    ) -> None:
        _check_shadowed_configure_optimizers(type(self))
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
            rules=rules,
            exclude_ends=exclude_ends,
        )

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        _check_base_order(cls)
        step = cls.__dict__.get("training_step")
        if step is not None and not getattr(step, "_prox_wrapped", False):
            cls.training_step = _with_penalty(step)  # type: ignore[method-assign]
        configure = cls.__dict__.get("configure_optimizers")
        if configure is not None and not getattr(configure, "_prox_wrapped", False):
            cls.configure_optimizers = _with_optimizer_check(configure)  # type: ignore[method-assign]

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
        rules: Sequence[LayerRule | Mapping[str, Any]] | None = None,
        exclude_ends: bool = False,
    ) -> None:
        """(Re)set the proximal configuration; validated here, before any training."""
        if penalty_mode not in ("prox", "subgradient"):
            raise ValueError(f"penalty_mode must be 'prox' or 'subgradient', got {penalty_mode!r}")
        reg = _resolve_regularizer(regularizer)
        factory = _resolve_callable(optimizer, "optimizer")
        factory, reg = _take_optimizer_regularizer(factory, reg)
        parsed = [LayerRule.from_config(r, i) for i, r in enumerate(rules or ())]
        regs = [r for r in [reg, *(rule.regularizer for rule in parsed)] if r is not None]
        if penalty_mode == "subgradient":
            for r in regs:
                probe = torch.linspace(-1.0, 1.0, 12).reshape(3, 4).requires_grad_()
                if not r.with_lam(max(r.lam, 1.0)).value(probe).requires_grad:
                    raise ValueError(
                        f"regularizer {r!r} has no useful subgradient (its value is piecewise constant), "
                        "so penalty_mode='subgradient' cannot train it; use penalty_mode='prox'"
                    )
        elif regs and factory is not None and not _takes_regularizer(factory):
            cls = _optimizer_class(factory)
            from .optim import PathProx

            if isinstance(cls, type) and issubclass(cls, PathProx):
                raise ValueError(
                    f"PathProx applies its own path-norm prox to the model's layer pairs and takes no "
                    f"regularizer: the regularizer {regs[0]!r} would be ignored; drop regularizer= and set "
                    "the strength as PathProx(lam=...)"
                )
            raise ValueError(
                f"optimizer {getattr(cls, '__qualname__', cls)} does not apply a proximal step, so the "
                f"regularizer {regs[0]!r} would be ignored; use a lightning_prox.optim optimizer "
                "(ProxGen, ProxSGD, RMDA, RAMDA, SR2) or penalty_mode='subgradient'"
            )
        self._prox_optimizer = factory
        self._prox_regularizer = reg
        self._prox_rules = parsed
        self._prox_lr_scheduler = _resolve_callable(lr_scheduler, "lr_scheduler")
        self._prox_selection = {
            "include_types": None if include_types is None else list(include_types),
            "include": include,
            "exclude": exclude,
            "exclude_ends": bool(exclude_ends),
        }
        self._prox_penalty_mode = penalty_mode
        self._prox_sparsity_table = bool(sparsity_table)

    @property
    def regularizer(self) -> Regularizer | None:
        """The regularizer of the default selection (its ``lam`` is the initial strength)."""
        return self._prox_regularizer

    @regularizer.setter
    def regularizer(self, value: Any) -> None:
        self._prox_regularizer = _resolve_regularizer(value)

    @property
    def penalty_mode(self) -> PenaltyMode:
        """``"prox"`` or ``"subgradient"``."""
        return self._prox_penalty_mode

    def prox_param_groups(self) -> list[dict[str, Any]]:
        """Param groups: one per matching rule, the default selection with ``regularizer``, the rest plain.

        Each group has ``"params"``, ``"param_names"`` and ``"regularizer"`` (a ``Regularizer`` or
        ``None``; a rule's ``lam`` already applied), plus a rule's ``"lr"``/``"weight_decay"``. Build
        your optimizer from them in your own ``configure_optimizers``. Raises ``ValueError`` naming
        the parameter when a regularizer cannot apply to it (e.g. a group lasso on a 1-d tensor
        selected by ``include``), or the rule that matches nothing.
        """
        try:
            return param_groups_from_rules(
                self,  # type: ignore[arg-type]
                self._prox_rules,
                regularizer=self._prox_regularizer,
                **self._prox_selection,
            )
        except ValueError as err:
            msg = str(err)
            if msg.startswith(("rules[", "include", "exclude", "regularizer")):
                raise
            raise ValueError(
                f"regularizer {self._prox_regularizer!r}: {err} (model parameter selection: "
                f"{self._prox_selection})"
            ) from None

    def regularized_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """(name, parameter) pairs that a regularizer applies to."""
        return [(n, p) for n, p, _ in self._regularized_with_regularizer()]

    def _regularized_with_regularizer(self) -> list[tuple[str, nn.Parameter, Regularizer]]:
        out = []
        for g in self.prox_param_groups():
            if g["regularizer"] is not None:
                out += [(n, p, g["regularizer"]) for n, p in zip(g["param_names"], g["params"])]
        return out

    def _prox_has_regularizer(self) -> bool:
        return self._prox_regularizer is not None or any(r.regularizer is not None for r in self._prox_rules)

    def configure_optimizers(self) -> Any:
        """``optimizer(param_groups)`` and, when given, the LR scheduler (stepped each epoch)."""
        groups = self.prox_param_groups()
        if self._prox_penalty_mode == "subgradient":
            for g in groups:
                if g["regularizer"] is not None:
                    g["lam"] = g["regularizer"].lam
                g["penalty"] = None if g["regularizer"] is None else g["regularizer"].spec()
                del g["regularizer"]
        factory = self._prox_optimizer
        if factory is None:
            from lightning.pytorch.utilities import rank_zero_info

            from .optim import ProxGen  # type: ignore[attr-defined]

            rank_zero_info("ProxMixin: optimizer=None, training with ProxGen(lr=1e-3) (proximal Adam)")
            factory = functools.partial(ProxGen, lr=1e-3)
        if self._prox_penalty_mode == "prox" and not any(g["regularizer"] is not None for g in groups):
            if not _takes_regularizer(factory):
                for g in groups:  # plain torch optimizer, nothing to regularize: keep groups clean
                    g.pop("regularizer", None)
        optimizer = factory(groups, **_pathprox_kwargs(self, factory))
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ValueError(f"optimizer callable returned {type(optimizer).__name__}, not a torch Optimizer")
        _check_optimizers(self, [optimizer], "the optimizer argument")
        if self._prox_lr_scheduler is None:
            _check_sr2_setup(self, optimizer)
            return optimizer
        scheduler = self._prox_lr_scheduler(optimizer)
        config: dict[str, Any] = {"scheduler": scheduler, "interval": "epoch"}
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            config["monitor"] = "val/loss"
        out = {"optimizer": optimizer, "lr_scheduler": config}
        _check_sr2_setup(self, out)
        return out

    # -- SR2: the trial closure (one extra forward on the same batch) --------------------------------
    def optimizer_step(
        self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None
    ) -> None:
        """``optimizer.step(closure=...)``; for :class:`~lightning_prox.optim.SR2` also the trial closure.

        SR2 evaluates the loss once more at its trial point on the same batch (forward only). The
        closure given here re-runs ``training_step`` on the batch of this step (SR2 calls it under
        ``no_grad``) in the Trainer's autocast context, with the random-number state recorded when
        the step began (the same dropout masks), BatchNorm running statistics, every other module
        buffer and the torchmetrics states left as they were, and ``self.log`` suppressed. After the step the ρ test's metrics are logged: ``sr2/sigma``,
        ``sr2/accept_rate``, ``sr2/rho``, ``sr2/rejected_steps``, ``sr2/step_norm``.

        With manual optimization call it yourself, e.g.
        ``opt.step(closure, trial_closure=lambda: self.loss(batch))``.
        """
        from .optim import SR2

        inner = getattr(optimizer, "optimizer", optimizer)  # LightningOptimizer wraps the optimizer
        if not isinstance(inner, SR2):
            super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)  # type: ignore[misc]
            return
        optimizer.step(closure=optimizer_closure, trial_closure=self._prox_trial_closure)
        st = inner.sr2_stats()
        log = functools.partial(self.log, on_step=True, on_epoch=False)  # type: ignore[attr-defined]
        log("sr2/sigma", st["sigma"])
        log("sr2/accept_rate", st["accept_rate"])
        log("sr2/rho", st["rho"])
        log("sr2/rejected_steps", float(st["rejected_steps"]))
        log("sr2/step_norm", st["step_norm_sq"] ** 0.5)

    def _prox_trial_closure(self) -> Any:
        """training_step on this step's batch at the current parameters, without side effects."""
        recorded = getattr(self, "_prox_step_inputs", None)
        if recorded is None:
            raise ValueError(
                "SR2's trial closure found no recorded training_step call: define training_step in your "
                "ProxMixin subclass (the mixin records its batch there), or call "
                "optimizer.step(closure, trial_closure=...) yourself"
            )
        args, kwargs, rng = recorded
        after = _torch_rng_state()
        saved = _side_effect_state(self)  # type: ignore[arg-type]
        trainer = getattr(self, "_trainer", None)
        context = (
            trainer.precision_plugin.train_step_context() if trainer is not None else contextlib.nullcontext()
        )
        # BatchNorm in train mode normalizes by batch statistics either way; not tracking them for the
        # trial forward leaves the running statistics untouched (no in-place write, so a graph built
        # by sigma="hessian" through this forward stays valid)
        bns = [m for m in self.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]  # type: ignore[attr-defined]
        bns = [m for m in bns if m.training and m.track_running_stats]
        self._prox_in_trial = True
        for m in bns:
            m.track_running_stats = False
        try:
            _set_torch_rng_state(rng)
            with context:  # SR2 calls this under no_grad (with grad only for sigma="hessian")
                out = self.training_step(*args, **kwargs)  # type: ignore[attr-defined]
        finally:
            self._prox_in_trial = False
            for m in bns:
                m.track_running_stats = True
            _restore_side_effect_state(saved)
            _set_torch_rng_state(after)
        if isinstance(out, Mapping):
            out = out.get("loss")
        return out

    def log(self, *args: Any, **kwargs: Any) -> None:
        """``LightningModule.log``, silent during SR2's trial forward (the step is logged once)."""
        if getattr(self, "_prox_in_trial", False):
            return
        super().log(*args, **kwargs)  # type: ignore[misc]

    def log_dict(self, *args: Any, **kwargs: Any) -> None:
        """``LightningModule.log_dict``, silent during SR2's trial forward."""
        if getattr(self, "_prox_in_trial", False):
            return
        super().log_dict(*args, **kwargs)  # type: ignore[misc]

    # -- subgradient baseline ---------------------------------------------------------------------
    def prox_penalty(self) -> Tensor:
        """R(θ): every group's regularizer summed over its weights at the optimizer's ``group["lam"]``.

        Reads the Trainer's optimizer groups (``"penalty"`` specs and ``"lam"``); when none carries a
        regularizer (your own ``configure_optimizers`` over ``self.parameters()``), the configured
        selection and rules at their initial strengths.
        """
        trainer = getattr(self, "_trainer", None)
        opts = trainer.optimizers if trainer is not None else []
        terms: list[Tensor] = []
        for opt in opts:
            for g in opt.param_groups:
                spec = g.get("penalty", g.get("regularizer"))
                if spec is None:
                    continue
                r = spec if isinstance(spec, Regularizer) else as_regularizer({**spec, "lam": 0.0})
                assert r is not None
                r = r.with_lam(float(g.get("lam", r.lam)))
                terms += [r.value(_zero_subgradient_at_zero(p)) for p in g["params"]]
        if not terms:
            terms = [
                r.value(_zero_subgradient_at_zero(p)) for _, p, r in self._regularized_with_regularizer()
            ]
        if not terms:
            return torch.zeros((), device=self.device)  # type: ignore[attr-defined]
        return torch.stack(terms).sum()

    # -- checkpoints: plain data only, exact resume -------------------------------------------------
    @classmethod
    def load_from_checkpoint(cls, *args: Any, **kwargs: Any) -> Any:
        """``LightningModule.load_from_checkpoint`` that leaves the caller's RNGs as they were.

        Building the model draws its initial weights from torch's global RNG before the checkpoint's
        weights replace them; those draws are undone, so loading a model for inference does not
        change the random numbers the caller draws next (torch, CUDA, Python, NumPy).
        """
        state = _rng_state()
        try:
            return super().load_from_checkpoint(*args, **kwargs)  # type: ignore[misc]
        finally:
            _set_rng_state(state)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "hyper_parameters" in checkpoint:
            checkpoint["hyper_parameters"] = _to_config(dict(checkpoint["hyper_parameters"]))
        checkpoint["prox_rng_state"] = _rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("prox_rng_state")
        if not state or not self.prox_restore_rng_state or not _resuming_fit(self):
            return  # an inference load (load_from_checkpoint, validate/test) leaves the caller's RNGs alone
        _set_rng_state(state)

    # -- report ---------------------------------------------------------------------------------
    def _prox_spec_groups(self) -> list[dict[str, Any]]:
        """Param groups with plain-data specs: the live optimizer's when training, else the configured ones."""
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and trainer.optimizers:
            return [g for opt in trainer.optimizers for g in opt.param_groups]
        groups = []
        for g in self.prox_param_groups():
            reg = g["regularizer"]
            spec = None if reg is None else reg.spec()
            groups.append(
                {"params": g["params"], "regularizer": spec, "lam": None if reg is None else reg.lam}
            )
        return groups

    def sparsity_rows(self) -> list[dict[str, Any]]:
        """One row per regularized weight, as :class:`~lightning_prox.callbacks.SparsityMonitor` counts it:
        ``name``, ``shape``, ``regularizer`` (its name and λ), ``groups``/``zero_groups`` (``None`` when
        ungrouped), ``unstructured`` (exact-zero fraction) and ``group``."""
        from .callbacks._counting import count, monitored_tensors

        entries = monitored_tensors(self._prox_spec_groups(), self.named_parameters())  # type: ignore[attr-defined]
        entries = [e for e in entries if e.regularizer != "none"]
        return count(entries)[1] if entries else []

    def on_fit_end(self) -> None:
        if not self._prox_sparsity_table or not self._prox_has_regularizer():
            return
        trainer = getattr(self, "_trainer", None)
        if trainer is not None and any(getattr(cb, "prints_table", False) for cb in trainer.callbacks):
            return  # a SparsityMonitor prints the one end-of-fit table
        _print_table(self._prox_spec_groups(), self.named_parameters())  # type: ignore[attr-defined]


def _take_optimizer_regularizer(factory: Any, reg: Regularizer | None) -> tuple[Any, Regularizer | None]:
    """Move a ``regularizer`` given to the optimizer (``functools.partial`` keyword) to the mixin.

    The mixin's param groups each carry their own ``"regularizer"`` (``None`` for plain ones), which
    overrides an optimizer-wide default, so an optimizer-level regularizer would silently do nothing.
    """
    if not isinstance(factory, functools.partial) or factory.keywords.get("regularizer") is None:
        return factory, reg
    opt_reg = _resolve_regularizer(factory.keywords["regularizer"])
    if reg is not None and opt_reg != reg:
        raise ValueError(
            f"the regularizer is given twice, to the model ({reg!r}) and to the optimizer ({opt_reg!r}); "
            "give it once, as the model's regularizer (YAML: model.init_args.regularizer)"
        )
    keywords = {k: v for k, v in factory.keywords.items() if k != "regularizer"}
    return functools.partial(factory.func, *factory.args, **keywords), opt_reg


def _is_lightning_class(cls: type) -> bool:
    return cls.__module__.split(".")[0] in ("lightning", "pytorch_lightning", "lightning_prox")


def _check_base_order(cls: type) -> None:
    """Refuse ProxMixin after ``nn.Module`` in the MRO: its ``__init__`` and hooks would never run there
    (``LightningModule`` defines every hook, so the mixin's configure_optimizers, checkpoint and
    end-of-fit hooks would be silently shadowed)."""
    mro = cls.__mro__
    if nn.Module not in mro or mro.index(ProxMixin) < mro.index(nn.Module):
        return
    first = next(c for c in cls.__bases__ if issubclass(c, nn.Module))
    bases = ", ".join(c.__name__ for c in cls.__bases__)
    fixed = ", ".join(["ProxMixin", *(c.__name__ for c in cls.__bases__ if c is not ProxMixin)])
    raise TypeError(
        f"class {cls.__name__}({bases}): ProxMixin comes after {first.__name__}, so its __init__ "
        "and hooks (configure_optimizers, checkpoints, the end-of-fit table) would never run and the "
        f"regularizer would be ignored; put ProxMixin first: class {cls.__name__}({fixed})"
    )


def _check_shadowed_configure_optimizers(cls: type) -> None:
    """Refuse a ``configure_optimizers`` of a base class after ProxMixin that the mixin would override."""
    mro = cls.__mro__
    owner = next((c for c in mro if "configure_optimizers" in c.__dict__), None)
    if owner is not ProxMixin:
        return  # the class (or a subclass of the mixin) defines its own: that one runs
    after = mro[mro.index(ProxMixin) + 1 :]
    user = next(
        (c for c in after if "configure_optimizers" in c.__dict__ and not _is_lightning_class(c)), None
    )
    if user is None:
        return
    raise TypeError(
        f"{cls.__qualname__}: ProxMixin's configure_optimizers would silently replace "
        f"{user.__qualname__}.configure_optimizers (its optimizer and scheduler). Say which one runs by "
        f"defining configure_optimizers in {cls.__qualname__}: to keep yours with the regularizer, build "
        "the optimizer from self.prox_param_groups() with a lightning_prox.optim optimizer (e.g. "
        "`ProxGen(self.prox_param_groups(), lr=1e-3)`, or lightning_prox.layer_rules.create_prox_optimizer"
        "(self, ...)) and return it with your scheduler; to use the mixin's optimizer= and lr_scheduler= "
        "arguments, `return ProxMixin.configure_optimizers(self)`"
    )


def _optimizers_of(out: Any) -> list[torch.optim.Optimizer]:
    """The optimizers in any return value of ``configure_optimizers``."""
    if isinstance(out, torch.optim.Optimizer):
        return [out]
    if isinstance(out, Mapping):
        return _optimizers_of(out.get("optimizer"))
    if isinstance(out, (list, tuple)):
        return [o for item in out for o in _optimizers_of(item)]
    return []


def _check_optimizers(module: ProxMixin, optimizers: Sequence[torch.optim.Optimizer], where: str) -> None:
    """Raise when a configured regularizer would not be applied by ``optimizers``."""
    for opt in optimizers:
        for g in opt.param_groups:
            if isinstance(g.get("regularizer"), Regularizer):
                raise ValueError(
                    f"{where}: {type(opt).__name__} does not apply a proximal step (it left the regularizer "
                    f"{g['regularizer']!r} in its param groups); use a lightning_prox.optim optimizer "
                    "(ProxGen, ProxSGD, RMDA, RAMDA, SR2) or penalty_mode='subgradient'"
                )
    if module._prox_penalty_mode != "prox" or not module._prox_has_regularizer() or not optimizers:
        return
    if not any(g.get("regularizer") is not None for opt in optimizers for g in opt.param_groups):
        names = ", ".join(type(o).__name__ for o in optimizers)
        raise ValueError(
            f"{where} returned {names} with no regularized param group, so the configured regularizer "
            f"{module._prox_regularizer or module._prox_rules[0].regularizer!r} would be ignored; build the "
            "optimizer from self.prox_param_groups() with a lightning_prox.optim optimizer (e.g. "
            "`ProxGen(self.prox_param_groups(), lr=1e-3)`), or use penalty_mode='subgradient' to keep a "
            "plain torch optimizer, or drop the regularizer"
        )


def _with_optimizer_check(configure: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(configure)
    def configure_optimizers(self: ProxMixin) -> Any:
        out = configure(self)
        _check_optimizers(self, _optimizers_of(out), f"{type(self).__qualname__}.configure_optimizers")
        _check_sr2_setup(self, out)
        return out

    configure_optimizers._prox_wrapped = True  # type: ignore[attr-defined]
    return configure_optimizers


def _rng_state() -> dict[str, Any]:
    """The global RNG states (torch, CUDA when initialized, Python, NumPy) as plain data."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    py = random.getstate()
    state["python"] = [py[0], list(py[1]), py[2]]
    npst = np.random.get_state()  # noqa: NPY002  (the global state that seed_everything seeds)
    state["numpy"] = [npst[0], npst[1].tolist(), int(npst[2]), int(npst[3]), float(npst[4])]
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npst = state["numpy"]
    np.random.set_state((npst[0], np.asarray(npst[1], dtype=np.uint32), *npst[2:]))  # noqa: NPY002


def _torch_rng_state() -> tuple[Tensor, list[Tensor] | None]:
    cuda = (
        torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    )
    return torch.get_rng_state(), cuda


def _set_torch_rng_state(state: tuple[Tensor, list[Tensor] | None]) -> None:
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state_all(state[1])


def _side_effect_state(module: nn.Module) -> list[Any]:
    """Copies of what a forward in train mode changes: buffers (BN running stats) and torchmetrics states."""
    saved: list[Any] = [("buffers", [(b, b.detach().clone()) for b in module.buffers()])]
    try:
        from torchmetrics import Metric
    except ImportError:  # pragma: no cover - torchmetrics ships with lightning
        return saved
    for m in module.modules():
        if isinstance(m, Metric):
            states = {k: _clone_state(getattr(m, k)) for k in m._defaults}
            extra = {k: getattr(m, k, None) for k in ("_update_count", "_computed", "_forward_cache")}
            saved.append(("metric", m, states, extra))
    return saved


def _clone_state(v: Any) -> Any:
    if isinstance(v, Tensor):
        return v.detach().clone()
    if isinstance(v, list):
        return [_clone_state(x) for x in v]
    return v


def _restore_side_effect_state(saved: list[Any]) -> None:
    with torch.no_grad():
        for entry in saved:
            if entry[0] == "buffers":
                for b, copy in entry[1]:
                    if not torch.equal(b, copy):  # only what changed (no version bump otherwise)
                        b.copy_(copy)
            else:
                _, m, states, extra = entry
                for k, v in states.items():
                    setattr(m, k, v)
                for k, v in extra.items():
                    setattr(m, k, v)


def _check_sr2_setup(module: Any, out: Any) -> None:
    """At fit start: the Trainer settings SR2's ρ test cannot work with raise, each saying why and what to do."""
    from .optim import SR2

    if not any(isinstance(o, SR2) for o in _optimizers_of(out)):
        return
    trainer = getattr(module, "_trainer", None)
    if getattr(module, "_prox_penalty_mode", "prox") == "subgradient":
        raise ValueError(
            "SR2 with penalty_mode='subgradient': SR2 applies the regularizer through its exact prox and "
            "its rho test, so a penalty in the loss would count it twice; use penalty_mode='prox'"
        )
    if _has_scheduler(out):
        raise ValueError(
            "SR2 with an lr_scheduler: SR2 has no lr; sigma (the inverse step) is adapted by the rho "
            "test; remove the lr_scheduler"
        )
    if trainer is None or not getattr(module, "automatic_optimization", True):
        return
    if trainer.accumulate_grad_batches > 1:
        k = trainer.accumulate_grad_batches
        raise ValueError(
            f"SR2 with accumulate_grad_batches={k}: g_t would span {k} batches but the trial loss only the "
            f"last; use accumulate_grad_batches=1 and a {k}x batch_size"
        )
    if str(trainer.precision) == "16-mixed" or getattr(trainer.precision_plugin, "scaler", None) is not None:
        raise ValueError(
            "SR2 with precision='16-mixed': the GradScaler calls step() without a closure and skips "
            "steps, which breaks the rho test; use precision='bf16-mixed' or '32-true'"
        )
    if str(trainer.precision) in ("16-true", "bf16-true"):
        import warnings

        warnings.warn(
            f"SR2 with precision={trainer.precision!r}: the losses in the rho test carry half-precision "
            "rounding (about 1e-3 relative), so steps near a solution are accepted or rejected by noise; "
            "prefer 'bf16-mixed' or '32-true'",
            stacklevel=2,
        )
    if trainer.gradient_clip_val is not None and trainer.gradient_clip_val > 0:
        raise ValueError(
            f"SR2 with gradient_clip_val={trainer.gradient_clip_val}: SR2 controls the step through sigma; "
            "a clipped g_t is not the gradient of the model psi that rho compares against; remove "
            "gradient_clip_val"
        )


def _has_scheduler(out: Any) -> bool:
    if isinstance(out, Mapping):
        return out.get("lr_scheduler") is not None
    if isinstance(out, (list, tuple)):
        if len(out) == 2 and isinstance(out[0], (list, tuple)) and out[1]:
            return True
        return any(_has_scheduler(o) for o in out if isinstance(o, Mapping))
    return False


def _resuming_fit(module: Any) -> bool:
    """Whether ``module`` is being restored by ``Trainer.fit(ckpt_path=...)`` (not an inference load)."""
    trainer = getattr(module, "_trainer", None)
    if trainer is None:
        return False
    from lightning.pytorch.trainer.states import TrainerFn

    return trainer.state.fn == TrainerFn.FITTING


def _enable_regularizer_subclasses() -> None:
    """Let jsonargparse accept any ``Regularizer`` subclass by ``class_path``.

    LightningCLI checkpoints store an instantiator that rebuilds the model through jsonargparse, so
    ``load_from_checkpoint`` in a fresh process needs this setting as much as the CLI does.
    """
    try:
        from jsonargparse import set_parsing_settings
    except ImportError:  # pragma: no cover - jsonargparse is optional outside the CLI
        return
    set_parsing_settings(subclasses_enabled=[Regularizer])


_enable_regularizer_subclasses()


def _zero_subgradient_at_zero(p: Tensor) -> Tensor:
    """``p`` with exact zeros detached: same value, and autograd's (sub)gradient there is 0 instead of
    the NaN/inf that penalties like |x|^q (q < 1) produce at 0."""
    return torch.where(p == 0, p.detach(), p)


def _with_penalty(step: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(step)
    def training_step(self: ProxMixin, *args: Any, **kwargs: Any) -> Any:
        if getattr(self, "_prox_in_trial", False):  # SR2's trial forward: the plain loss
            return step(self, *args, **kwargs)
        if not getattr(self, "_prox_in_step", False):  # the batch and RNG state for SR2's trial forward
            self._prox_step_inputs = (args, kwargs, _torch_rng_state())
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
def _print_table(groups: list[dict[str, Any]], named_parameters: Any) -> None:
    from rich.console import Console

    from .callbacks._counting import count, label_with_lam, monitored_tensors
    from .callbacks._dashboard import sparsity_table

    entries = [e for e in monitored_tensors(groups, named_parameters) if e.regularizer != "none"]
    label_with_lam(entries, groups)
    if entries:
        totals, rows = count(entries)
        Console().print(sparsity_table(rows, totals))


def _pathprox_kwargs(module: nn.Module, factory: Any) -> dict[str, Any]:
    """PathProx needs the layer pairs of the model: ``pairs=module`` (traced), unless already given."""
    from .optim import PathProx  # type: ignore[attr-defined]

    cls = _optimizer_class(factory)
    given = (getattr(factory, "keywords", None) or {}).get("pairs")
    return {"pairs": module} if cls is not None and issubclass(cls, PathProx) and given is None else {}
