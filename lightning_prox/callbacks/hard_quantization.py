"""Hard quantization at a set epoch (ProxQuant's "freeze epoch"), then training of the rest.

Bai et al., "ProxQuant: Quantized Neural Networks via Proximal Operators" (ICLR 2019) and the revised
ProxQuant of Yun et al., "A General Family of Stochastic Proximal Gradient Methods for Deep Learning" (ProxGen, 2020): after ``epoch`` epochs every quantization-regularized
tensor is projected onto its nearest levels and frozen; batch norms, biases and unquantized layers keep
training. The reference code (``allenbai01/ProxQuant``, ``main_binary_reg.py``) does the same with
``p.sign()`` and ``requires_grad = False`` when ``epoch + 1 == freeze_epoch``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from ..regularizers import from_spec
from ._groups import group_spec
from ._quantize import check_levels, nearest_level, quantization_sq_error

__all__ = ["HardQuantization"]


class HardQuantization(Callback):
    r"""Project quantization-regularized tensors onto their levels at the end of epoch ``epoch``, then freeze.

    A tensor is *quantized* when its param group's ``group["regularizer"]`` is a ``Quantization`` spec
    (its ``levels`` are used) or, with ``regularizer_names``, any listed regularizer (then ``levels``
    must be given). At the end of the training epoch with 0-based index ``epoch − 1`` (i.e. after
    ``epoch`` epochs, as ``epoch + 1 == freeze_epoch`` in the original code), each such tensor x becomes

    .. math::

        x_i \leftarrow \operatorname{argmin}_{\ell \in \text{levels}} |x_i - \ell|
        \quad (\text{a tie goes to the larger level}),

    and from then on it is *frozen*: right before every optimizer step its ``.grad`` is set to
    ``None``, so the optimizer skips it entirely (no smooth step, no prox, no weight decay, no moment
    update; torch optimizers and this package's all skip parameters without a gradient). Gradients are
    still computed and all-reduced, so DDP needs no ``find_unused_parameters``. Parameters of other groups
    (batch norms, biases, unquantized layers) keep training, and validation/testing from then on
    evaluate the quantized model.

    Before the freeze, ``quant/error`` = Σ(x − Q(x))² / Σ numel over the quantized tensors (mean squared
    distance to the nearest level) is logged at the end of every epoch, the last time right before the
    projection. The phase (``frozen``) is in :meth:`state_dict`; the tensors themselves are already
    quantized in the checkpoint, so resuming after the freeze keeps them frozen and quantized, and
    resuming from a checkpoint written before the freeze (even one written during the freeze epoch)
    freezes at the same point.

    With a weight-averaging callback (Lightning's ``EMAWeightAveraging`` / ``WeightAveraging``), the
    averaged copies of the quantized tensors are set to the frozen values at the freeze, so the
    averaged model that ends training holds only level values as well. A freeze (or a later step)
    that finds no quantization group in the live optimizer raises instead of reporting success, and
    at the end of fit tensors found off their levels are projected again, with a warning.

    Args:
        epoch: number of training epochs after which to quantize and freeze (≥ 1).
        levels: override the levels (sorted, distinct); ``None`` takes each group's ``Quantization`` levels.
        regularizer_names: registry names of the regularizers whose tensors are quantized.

    Example:
        >>> HardQuantization(epoch=200).state_key
        "HardQuantization{'epoch': 200}"
    """

    def __init__(
        self,
        epoch: int,
        levels: Sequence[float] | None = None,
        regularizer_names: Sequence[str] = ("Quantization",),
    ) -> None:
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise ValueError(f"epoch must be an int >= 1 (quantize after that many epochs), got {epoch!r}")
        names = [regularizer_names] if isinstance(regularizer_names, str) else list(regularizer_names)
        if not names or not all(isinstance(n, str) for n in names):
            raise ValueError(
                f"regularizer_names must be a non-empty list of names, got {regularizer_names!r}"
            )
        if levels is None and names != ["Quantization"]:
            raise ValueError(f"regularizer_names={names} needs explicit levels=[...]")
        self.epoch = epoch
        self.levels = None if levels is None else check_levels(levels)
        self.regularizer_names = names
        self.frozen = False
        self.last_error: float | None = None
        self._frozen_ids: set[int] | None = None  # ids of the frozen tensors, rebuilt in every fit

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(epoch=self.epoch)

    # -- which tensors ----------------------------------------------------------------------------
    def quantized_params(self, trainer: pl.Trainer) -> list[tuple[Tensor, tuple[float, ...]]]:
        """(parameter, levels) for every tensor this callback quantizes, in optimizer/group order."""
        out: list[tuple[Tensor, tuple[float, ...]]] = []
        seen: set[int] = set()
        for opt in trainer.optimizers:
            for group in opt.param_groups:
                spec = group_spec(group)
                # a regularizer that declares quantization levels is quantized, and so is any listed one
                declared = from_spec(spec).quant_levels if spec is not None else None
                if spec is None or (spec.get("name") not in self.regularizer_names and declared is None):
                    continue
                levels = self.levels if self.levels is not None else check_levels(declared or (-1, 1))
                for p in group["params"]:
                    if id(p) not in seen:
                        seen.add(id(p))
                        out.append((p, levels))
        return out

    def quantization_error(self, trainer: pl.Trainer) -> Tensor | None:
        """Mean squared distance of the quantized tensors to their nearest levels (a 0-dim tensor)."""
        params = self.quantized_params(trainer)
        if not params:
            return None
        err = torch.stack([quantization_sq_error(p.detach(), lv) for p, lv in params]).sum()
        return err / sum(p.numel() for p, _ in params)

    # -- hooks ------------------------------------------------------------------------------------
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._frozen_ids = None
        if not self.quantized_params(trainer):
            raise ValueError(
                f"HardQuantization(epoch={self.epoch}) found no param group whose regularizer is one of "
                f"{self.regularizer_names}; give the weights a Quantization regularizer"
            )
        # resumed from a checkpoint written after the freeze epoch's training but before this callback ran
        if not self.frozen and trainer.current_epoch >= self.epoch:
            self._freeze(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.frozen:
            return
        error = self.quantization_error(trainer)
        if error is not None:
            self.last_error = float(error)  # once per epoch: a host read is fine here
            if trainer.loggers:
                for logger in trainer.loggers:
                    logger.log_metrics({"quant/error": self.last_error}, step=trainer.global_step)
        if trainer.current_epoch + 1 >= self.epoch:
            self._freeze(trainer)

    @override
    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        if not self.frozen:
            return
        if self._frozen_ids is None:
            self._frozen_ids = {id(p) for p, _ in self.quantized_params(trainer)}
        frozen = self._frozen_ids
        if not frozen:
            raise RuntimeError(
                f"HardQuantization(epoch={self.epoch}) is frozen but the live optimizer "
                f"{type(optimizer).__name__} has no param group whose regularizer is one of "
                f"{self.regularizer_names}, so nothing would stay quantized; keep the Quantization groups "
                "in the optimizer (e.g. when swapping optimizers) or drop this callback"
            )
        for group in optimizer.param_groups:
            for p in group["params"]:
                if id(p) in frozen:
                    p.grad = None

    def _freeze(self, trainer: pl.Trainer) -> None:
        params = self.quantized_params(trainer)
        if not params:
            raise RuntimeError(
                f"HardQuantization(epoch={self.epoch}): at the freeze the live optimizer(s) "
                f"{[type(o).__name__ for o in trainer.optimizers]} have no param group whose regularizer is "
                f"one of {self.regularizer_names}; nothing was quantized. Keep the Quantization groups in "
                "the optimizer or drop this callback"
            )
        with torch.no_grad():
            for p, levels in params:
                p.copy_(nearest_level(p, levels))
            self._sync_averaged(trainer, [p for p, _ in params])
        self.frozen = True
        self._frozen_ids = None

    @staticmethod
    def _averaged_models(trainer: pl.Trainer) -> list[torch.nn.Module]:
        """The averaged copies of the model kept by weight-averaging callbacks (EMA, SWA)."""
        out = []
        for cb in trainer.callbacks:  # type: ignore[attr-defined]
            avg = getattr(cb, "_average_model", None)  # lightning.pytorch.callbacks.WeightAveraging
            module = getattr(avg, "module", None)
            if isinstance(module, torch.nn.Module):
                out.append(module)
        return out

    def _sync_averaged(self, trainer: pl.Trainer, params: list[Tensor]) -> None:
        """Set the averaged copies of the quantized tensors to their frozen values.

        From then on every average update mixes a frozen tensor with itself (``lerp(a, a, w) = a``
        exactly), so the averaged model, which weight averaging copies into the model when training
        ends, keeps exactly the level values.
        """
        models = self._averaged_models(trainer)
        if not models:
            return
        names = {id(p): n for n, p in trainer.lightning_module.named_parameters()}
        for module in models:
            avg = dict(module.named_parameters())
            for p in params:
                name = names.get(id(p))
                if name is None or name not in avg:
                    raise RuntimeError(
                        f"HardQuantization: the averaged model of a weight-averaging callback has no "
                        f"parameter {name!r}; it cannot be kept quantized"
                    )
                avg[name].copy_(p.detach().to(avg[name].device, avg[name].dtype))

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """After weight averaging copied its average in: the quantized tensors must still be on their levels."""
        if not self.frozen:
            return
        off = []
        with torch.no_grad():
            for p, levels in self.quantized_params(trainer):
                q = nearest_level(p, levels)
                if not torch.equal(q, p):
                    off.append(int((q != p).sum()))
                    p.copy_(q)
        if off:
            rank_zero_warn(
                f"HardQuantization: {sum(off)} quantized weights were off their levels at the end of fit "
                "(another callback changed them after the freeze); they were projected again"
            )

    def table_notes(self, trainer: pl.Trainer) -> dict[str, str]:
        """Per quantized tensor name: its levels, the share of weights on them and the freeze state."""
        names = {id(p): n for n, p in trainer.lightning_module.named_parameters()}
        notes = {}
        for p, levels in self.quantized_params(trainer):
            on = float((nearest_level(p.detach(), levels) == p.detach()).float().mean())
            lv = ",".join(f"{v:g}" for v in levels)
            state = "frozen" if self.frozen else f"freeze@{self.epoch}"
            notes[names.get(id(p), "?")] = f"{100 * on:.0f}% on {{{lv}}} {state}"
        return notes

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "frozen": self.frozen, "last_error": self.last_error}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.frozen = bool(state_dict.get("frozen", False))
        err = state_dict.get("last_error")
        self.last_error = None if err is None else float(err)
