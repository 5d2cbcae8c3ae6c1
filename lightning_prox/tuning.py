"""The λ range test: raise λ exponentially over a short run and read off where the sparsity appears.

In the spirit of the learning-rate range test (Smith, 2017, "Cyclical Learning Rates for Training
Neural Networks", §3.3) and Lightning's ``Tuner.lr_find``: a copy of the model trains for
``num_steps`` optimizer steps while every regularized group's λ grows geometrically from ``lam_min``
to ``lam_max``; the sparsity of the regularized tensors and the training loss are recorded at every
step. The model, its optimizer and the global random number generators are left exactly as they were
(the run uses a deep copy and restores the RNG states).
"""

from __future__ import annotations

import copy
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch

from .callbacks._counting import count, monitored_tensors
from .callbacks._groups import group_spec
from .structure import param_layouts

__all__ = ["LamFinderResult", "lam_find", "lam_find_main"]

_METRICS = ("group", "group_weighted", "unstructured")


@dataclass
class LamFinderResult:
    """What :func:`lam_find` recorded, step by step.

    ``lams[i]`` is the multiplier-scaled λ of the first regularized group at step ``i``, with the
    sparsity ``sparsity[i]`` (of ``metric``) and the training loss ``loss[i]`` after that step.
    """

    metric: str
    lams: list[float] = field(default_factory=list)
    sparsity: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)

    def suggestion(self, target: float) -> float | None:
        """The smallest recorded λ at which the sparsity reached ``target`` (``None`` if it never did).

        It is a starting λ: in the range test λ rises faster than the zeros settle, so the same sparsity
        in a full run usually needs a somewhat smaller λ (or pass it to :class:`SparsityTarget` as
        the start).
        """
        if not 0.0 <= target <= 1.0:
            raise ValueError(f"target must be in [0, 1], got {target!r}")
        for lam, s in zip(self.lams, self.sparsity):
            if s >= target:
                return lam
        return None

    def loss_cliff(self, rise: float = 0.25, window: int = 5) -> float | None:
        """The λ at which the training loss, after its minimum, has climbed back ``rise`` of the way to
        its first value (moving average over ``window`` steps): past it the penalty, not the data,
        drives training. ``None`` when the loss never climbs that far.
        """
        if not 0 < rise < 1:
            raise ValueError(f"rise must be in (0, 1), got {rise!r}")
        loss = np.asarray(self.loss, dtype=np.float64)
        if loss.size < window or not np.isfinite(loss).all():
            return None
        smooth = np.convolve(loss, np.ones(window) / window, mode="valid")
        low = int(np.argmin(smooth))
        level = smooth[low] + rise * (smooth[0] - smooth[low])
        above = np.nonzero(smooth[low:] > level)[0]
        return None if above.size == 0 else self.lams[low + int(above[0]) + window // 2]

    def plot(self, path: str | Path | None = None, target: float | None = None) -> Any:
        """Sparsity and training loss against λ (log axis), optionally saved to ``path``; the figure."""
        import matplotlib

        if path is not None:
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 3.5))
        ax.semilogx(self.lams, self.sparsity, color="tab:blue", label=f"sparsity ({self.metric})")
        ax.set_xlabel("λ (first regularized group)")
        ax.set_ylabel(f"sparsity ({self.metric})", color="tab:blue")
        ax.set_ylim(0, 1)
        ax2 = ax.twinx()
        ax2.semilogx(self.lams, self.loss, color="tab:red", alpha=0.7, label="training loss")
        ax2.set_ylabel("training loss", color="tab:red")
        if target is not None and (lam := self.suggestion(target)) is not None:
            ax.axvline(lam, color="gray", ls="--")
            ax.annotate(
                f"{target:.0%} at λ={lam:.2g}",
                (lam, target),
                textcoords="offset points",
                xytext=(-5, 5),
                ha="right",
            )
        if (cliff := self.loss_cliff()) is not None:
            ax.axvline(cliff, color="tab:red", ls=":")
            ax.annotate(
                f"loss cliff λ={cliff:.2g}",
                (cliff, 0.9),
                textcoords="offset points",
                xytext=(-5, 0),
                ha="right",
            )
        ax.set_title("λ range test")
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
            plt.close(fig)
        return fig


class _Ramp(pl.Callback):
    def __init__(self, lam_min: float, lam_max: float, num_steps: int, metric: str, result: LamFinderResult):
        self.lam_min, self.lam_max, self.num_steps, self.metric, self.result = (
            lam_min,
            lam_max,
            num_steps,
            metric,
            result,
        )
        self.entries: list[Any] = []
        self.groups: list[dict[str, Any]] = []

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        all_groups = [g for opt in trainer.optimizers for g in opt.param_groups]
        self.groups = [g for g in all_groups if group_spec(g) is not None]
        if not self.groups:
            raise ValueError("lam_find: the model's optimizer has no param group with a regularizer")
        first = float(self.groups[0].get("lam", 0.0)) or 1.0
        # λ of every group relative to the first one's, so per-layer ratios are kept
        self.ratios = [float(g.get("lam", 0.0)) / first if first else 1.0 for g in self.groups]
        self.entries = monitored_tensors(
            all_groups, pl_module.named_parameters(), None, param_layouts(pl_module)
        )
        if self.metric != "unstructured" and not any(e.dim is not None for e in self.entries):
            raise ValueError(
                f"lam_find(metric={self.metric!r}): no regularized tensor has groups (an elementwise "
                "regularizer?); use metric='unstructured'"
            )

    def lam_at(self, step: int) -> float:
        x = step / max(self.num_steps - 1, 1)
        return self.lam_min * (self.lam_max / self.lam_min) ** x

    def on_before_optimizer_step(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, optimizer: Any
    ) -> None:
        lam = self.lam_at(trainer.global_step)
        for g, r in zip(self.groups, self.ratios):
            g["lam"] = lam * r

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.result.lams.append(float(self.groups[0]["lam"]))
        self.result.sparsity.append(count(self.entries)[0].get(self.metric, 0.0))
        self.result.loss.append(float(loss.detach()) if isinstance(loss, torch.Tensor) else float("nan"))


def lam_find(
    model: pl.LightningModule,
    datamodule: pl.LightningDataModule | None = None,
    *,
    train_dataloaders: Any = None,
    lam_min: float = 1e-6,
    lam_max: float = 1e-1,
    num_steps: int = 100,
    metric: str = "group",
    accelerator: str = "auto",
    devices: int | str = 1,
) -> LamFinderResult:
    """Run the λ range test on a copy of ``model``; the model and the global RNGs are left unchanged.

    Args:
        model: a LightningModule whose optimizer keeps regularizers in its param groups (e.g. one with
            :class:`~lightning_prox.ProxMixin`); it is deep-copied, never trained.
        datamodule: its data (or ``train_dataloaders``).
        train_dataloaders: the training data when there is no datamodule.
        lam_min: λ of the first step (> 0).
        lam_max: λ of the last step (> ``lam_min``); other regularized groups keep their ratio to the
            first one.
        num_steps: optimizer steps of the test (≥ 2); the data loader cycles if it is shorter.
        metric: ``"group"``, ``"group_weighted"`` or ``"unstructured"``.
        accelerator: as for ``Trainer``.
        devices: as for ``Trainer`` (one device: the test is short and its decisions are per step).

    Returns:
        A :class:`LamFinderResult` with ``suggestion(target)`` and ``plot()``.

    Example:
        >>> import functools, warnings
        >>> from lightning_prox.data import DigitsDataModule
        >>> from lightning_prox.models import ImageClassifier
        >>> from lightning_prox.optim import ProxGen
        >>> from lightning_prox.regularizers import GroupLasso
        >>> model = ImageClassifier("mlp", hidden=(32,), optimizer=functools.partial(ProxGen, lr=1e-2),
        ...                         regularizer=GroupLasso(1e-4, dim="in"), sparsity_table=False)
        >>> before = [p.detach().clone() for p in model.parameters()]
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     result = lam_find(model, DigitsDataModule(batch_size=64), num_steps=60, lam_max=1.0)
        >>> len(result.lams), result.sparsity[0] < result.sparsity[-1]
        (60, True)
        >>> all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        True
    """
    for name, value in (("lam_min", lam_min), ("lam_max", lam_max)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not (0 < value < math.inf):
            raise ValueError(f"lam_find: {name} must be a finite number > 0, got {value!r}")
    if not lam_max > lam_min:
        raise ValueError(f"lam_find: lam_max ({lam_max}) must exceed lam_min ({lam_min})")
    if isinstance(num_steps, bool) or not isinstance(num_steps, int) or num_steps < 2:
        raise ValueError(f"lam_find: num_steps must be an int >= 2, got {num_steps!r}")
    if metric not in _METRICS:
        raise ValueError(f"lam_find: metric must be one of {_METRICS}, got {metric!r}")
    if (datamodule is None) == (train_dataloaders is None):
        raise ValueError("lam_find: give the data as datamodule=... or train_dataloaders=... (one of them)")
    # the global states that user code and seed_everything use: left exactly as they were
    rng = (torch.get_rng_state(), np.random.get_state(), random.getstate())  # noqa: NPY002
    cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    result = LamFinderResult(metric)
    try:
        work = copy.deepcopy(model)
        ramp = _Ramp(float(lam_min), float(lam_max), num_steps, metric, result)
        trainer = pl.Trainer(
            max_steps=num_steps,
            max_epochs=-1,
            accelerator=accelerator,
            devices=devices,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            limit_val_batches=0,
            num_sanity_val_steps=0,
            callbacks=[ramp],
        )
        if datamodule is not None:
            trainer.fit(work, datamodule=datamodule)
        else:
            trainer.fit(work, train_dataloaders=train_dataloaders)
    finally:
        torch.set_rng_state(rng[0])
        np.random.set_state(rng[1])  # noqa: NPY002
        random.setstate(rng[2])
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
    return result


def lam_find_main(argv: list[str]) -> None:
    """``lightning-prox lam_find --config recipe.yaml [options]``: the λ range test from the command line.

    The recipe (and any ``--model...``/``--data...`` overrides) builds the model and data as
    ``lightning-prox fit`` would; the test then runs on a copy. Prints λ against sparsity and loss,
    the suggested starting λ for ``--target``, and saves the plot with ``--plot``. Mistakes exit 2 with
    one line ``error: <option>: <message>``.

    Example:
        >>> lam_find_main(["--num_steps", "1", "--config", "recipes/quickstart.yaml"])
        Traceback (most recent call last):
        SystemExit: 2
    """
    import argparse
    import sys

    p = argparse.ArgumentParser(
        prog="lightning-prox lam_find",
        description="λ range test: raise λ exponentially over a short run of the recipe's model and data, "
        "record sparsity and training loss, suggest a starting λ for a target sparsity.",
        epilog="example:\n  lightning-prox lam_find --config recipes/quickstart.yaml --target 0.5 --plot lam_find.png\n"
        "Other arguments (--config, --model..., --data..., --trainer.accelerator) are the recipe's, as for fit.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--lam_min", type=float, default=1e-6)
    p.add_argument("--lam_max", type=float, default=1e-1)
    p.add_argument("--num_steps", type=int, default=200)
    p.add_argument("--metric", default="group", choices=_METRICS)
    p.add_argument("--target", type=float, default=None, help="sparsity to suggest a λ for, in [0, 1]")
    p.add_argument("--plot", default=None, help="save the plot here (png)")
    args, rest = p.parse_known_args(argv)

    def fail(option: str, message: str) -> None:
        print(f"error: {option}: {' '.join(str(message).split())}", file=sys.stderr)
        raise SystemExit(2)

    if args.target is not None and not 0 <= args.target <= 1:
        fail("--target", f"must be in [0, 1], got {args.target}")
    # validate our own options before building anything (ProxCLI may take seconds)
    for opt, value in (("--lam_min", args.lam_min), ("--lam_max", args.lam_max)):
        if not (0 < value < math.inf):
            fail(opt, f"must be a finite number > 0, got {value}")
    if args.lam_max <= args.lam_min:
        fail("--lam_max", f"({args.lam_max}) must exceed --lam_min ({args.lam_min})")
    if args.num_steps < 2:
        fail("--num_steps", f"must be an int >= 2, got {args.num_steps}")
    from .cli import ProxCLI

    cli = ProxCLI([*rest, "--trainer.logger=false"], run=False)
    try:
        result = lam_find(
            cli.model,
            cli.datamodule,
            lam_min=args.lam_min,
            lam_max=args.lam_max,
            num_steps=args.num_steps,
            metric=args.metric,
        )
    except ValueError as err:
        fail("--model", str(err))
    print(f"{'λ':>10} {'sparsity':>9} {'loss':>8}")
    for i in range(0, len(result.lams), max(1, len(result.lams) // 20)):
        print(f"{result.lams[i]:10.3g} {result.sparsity[i]:9.3f} {result.loss[i]:8.3f}")
    cliff = result.loss_cliff()
    if cliff is not None:
        print(f"the training loss climbs back (penalty-driven) from λ ≈ {cliff:.3g}: stay below it")
    if args.target is not None:
        lam = result.suggestion(args.target)
        if lam is None:
            print(f"sparsity {args.target} not reached up to λ = {args.lam_max:g}: raise --lam_max")
        else:
            print(f"suggested starting λ for {args.metric} sparsity {args.target}: {lam:.3g}")
    if args.plot is not None:
        result.plot(args.plot, target=args.target)
        print(f"plot: {args.plot}")
