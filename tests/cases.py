"""The shared table of optimizer cases driving the generic tests.

``OPTIMIZER_CASES`` holds ``(optimizer class, constructor kwargs, description)``: every entry runs
through ``tests/test_optim_generic.py`` (objective goes down, exact resume through a
``weights_only`` checkpoint, param groups behave like separate optimizers, fast path == for-loop
where :data:`CAPABILITIES` declares a reference loop). ``OPTIMIZER_ERROR_CASES`` holds
``(class, kwargs, regex the ValueError must match)``. Append entries for new optimizers; kwargs
must not contain ``params``. Helpers for small deterministic training problems live here too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from lightning_prox.optim import RAMDA, RMDA, ProxGen, ProxSGD, TwoStageProxSGD
from lightning_prox.regularizers import L1, GroupLasso, Lq, NuclearNorm, Quantization

OPTIMIZER_CASES: list[tuple[type[torch.optim.Optimizer], dict[str, Any], str]] = [
    (ProxSGD, dict(lr=0.05), "plain"),
    (ProxSGD, dict(lr=0.05, regularizer=L1(1e-2)), "l1"),
    (ProxSGD, dict(lr=0.05, momentum=0.9, weight_decay=1e-3, regularizer=L1(1e-2)), "l1-momentum-wd"),
    (ProxSGD, dict(lr=0.02, momentum=0.9, nesterov=True, regularizer=L1(1e-2)), "l1-nesterov"),
    (ProxSGD, dict(lr=0.05, momentum=0.5, dampening=0.3, regularizer=L1(1e-2)), "l1-dampening"),
    (ProxGen, dict(lr=1e-2), "adam-plain"),
    (ProxGen, dict(lr=1e-2, regularizer=L1(1e-3)), "adam-l1"),
    (ProxGen, dict(lr=1e-2, weight_decay=0.1, regularizer=L1(1e-3)), "adamw-l1"),
    (ProxGen, dict(lr=1e-2, regularizer=L1(1e-3), bias_correction=False), "adam-l1-raw"),
    (ProxGen, dict(lr=1e-2, regularizer=L1(1e-3), prox_metric="euclidean"), "adam-l1-euclidean"),
    (ProxGen, dict(lr=1e-2, regularizer=L1(1e-3), preconditioner="rmsprop"), "rmsprop-l1"),
    (ProxGen, dict(lr=5e-2, regularizer=L1(1e-3), preconditioner="adagrad"), "adagrad-l1"),
    (ProxGen, dict(lr=5e-2, regularizer=L1(1e-2), preconditioner="identity"), "identity-l1"),
    (ProxGen, dict(lr=1e-2, regularizer=Lq(1e-3, q=0.5)), "adam-lq-half"),
    (ProxGen, dict(lr=1e-2, regularizer=GroupLasso(1e-3, max_iters=10)), "adam-grouplasso-inexact"),
    (ProxGen, dict(lr=1e-2, regularizer=NuclearNorm(1e-3, max_iters=10)), "adam-nuclear-inexact"),
    (ProxGen, dict(lr=1e-2, regularizer=Quantization(1e-4)), "adam-quant-revised"),
    (ProxGen, dict(lr=1e-2, regularizer=Quantization(1e-4), prox_metric="euclidean"), "adam-quant-original"),
    (ProxSGD, dict(lr=0.05, momentum=0.9, regularizer=GroupLasso(1e-2, dim="out")), "grouplasso-out"),
    (TwoStageProxSGD, dict(lr=0.1, regularizer=L1(1e-3)), "yang-adam-l1"),
    (RMDA, dict(lr=0.1, momentum=0.5, regularizer=L1(1e-3)), "rmda-l1"),
    (RAMDA, dict(lr=5e-2, momentum=0.5, regularizer=GroupLasso(1e-3, max_iters=10)), "ramda-grouplasso"),
]

OPTIMIZER_ERROR_CASES: list[tuple[type[torch.optim.Optimizer], dict[str, Any], str]] = [
    (ProxSGD, dict(lr=-0.1), r"lr must be .*-0\.1"),
    (ProxSGD, dict(lr=0.1, momentum=-0.5), r"momentum .*-0\.5"),
    (ProxSGD, dict(lr=0.1, nesterov=True), r"nesterov=True needs momentum > 0"),
    (ProxSGD, dict(lr=0.1, weight_decay=-1.0), r"weight_decay .*-1\.0"),
    (ProxSGD, dict(lr=0.1, implementation="cuda"), r"implementation .*'cuda'"),
    (ProxSGD, dict(lr=0.1, regularizer="L1"), r"regularizer must be"),
    (ProxGen, dict(lr=-1e-3), r"lr must be .*-0\.001"),
    (ProxGen, dict(lr=float("nan")), r"lr must be .*nan"),
    (ProxGen, dict(threshold_cap=0.0), r"threshold_cap must be .*0\.0"),
    (ProxGen, dict(betas=(0.9, 1.0)), r"betas\[1\] must be in \[0, 1\), got 1\.0"),
    (ProxGen, dict(betas=(-0.1, 0.9)), r"betas\[0\] .*-0\.1"),
    (ProxGen, dict(eps=0.0), r"eps must be .*0\.0"),
    (ProxGen, dict(preconditioner="adamw"), r"preconditioner must be one of .*'adamw'"),
    (ProxGen, dict(prox_metric="l2"), r"prox_metric must be one of .*'l2'"),
    (TwoStageProxSGD, dict(lr=1.5), r"lr must be in \[0, 1\] .*1\.5"),
    (ProxGen, dict(regularizer=GroupLasso(0.1)), r"param group 0, tensor 0 \(shape \(2,\)\).*GroupLasso"),
]


#: What each optimizer supports, declared (not guessed from signatures): ``reference_loop`` (a
#: ``foreach=False`` per-tensor reference the fast path must match), ``native`` (kernels behind
#: ``implementation="native"``), ``fused`` (``fused=True`` honoured), ``maximize`` (honoured),
#: ``lr_zero_identity`` (``lr = 0`` leaves the parameters unchanged), ``metric_from_grads`` (the prox
#: metric comes from gradient statistics).
CAPABILITIES: dict[type[torch.optim.Optimizer], dict[str, bool]] = {
    ProxSGD: dict(reference_loop=True, native=True, fused=True, maximize=True, lr_zero_identity=True,
                  metric_from_grads=False),
    ProxGen: dict(reference_loop=True, native=True, fused=True, maximize=True, lr_zero_identity=True,
                  metric_from_grads=True),
    TwoStageProxSGD: dict(reference_loop=False, native=False, fused=False, maximize=True,
                          lr_zero_identity=True, metric_from_grads=True),
    # RMDA/RAMDA are not on ProxOptimizer yet: their foreach/for-loop agreement is tested in
    # tests/test_rmda.py and tests/test_ramda.py with their own switches
    RMDA: dict(reference_loop=False, native=False, fused=False, maximize=False, lr_zero_identity=False,
               metric_from_grads=False),
    RAMDA: dict(reference_loop=False, native=True, fused=False, maximize=False, lr_zero_identity=False,
                metric_from_grads=True),
}  # fmt: skip


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> Iterator[None]:
    """Run a test module with one intra-op thread (restored afterwards).

    These problems are tiny: a second OpenMP thread buys nothing, and on a loaded 2-core machine an
    oversubscribed parallel region made a 100-step CNN run ~25x slower. Import it into a test module
    (``from tests.cases import single_thread``) to activate it there.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def case_id(case: tuple[type, dict[str, Any], str]) -> str:
    return f"{case[0].__name__}-{case[2]}"


class SmallCNN(nn.Module):
    """A tiny conv net (conv → relu → conv → relu → linear) on 1×8×8 inputs, 10 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3)
        self.conv2 = nn.Conv2d(4, 6, 3)
        self.fc = nn.Linear(6 * 4 * 4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv1(x))
        x = torch.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def make_cnn(seed: int = 0, dtype: torch.dtype = torch.float32) -> SmallCNN:
    torch.manual_seed(seed)
    return SmallCNN().to(dtype)


def batch(step: int, n: int = 16, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """The deterministic minibatch number ``step`` (independent of any global RNG state)."""
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(n, 1, 8, 8, generator=g, dtype=dtype)
    y = torch.randint(0, 10, (n,), generator=g)
    return x, y


def train(model: nn.Module, opt: torch.optim.Optimizer, steps: range) -> None:
    """Cross-entropy steps on :func:`batch` ``i`` for ``i`` in ``steps`` (a closure is passed)."""
    for i in steps:
        x, y = batch(i, dtype=next(model.parameters()).dtype)

        def closure(x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            opt.zero_grad()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            return loss

        opt.step(closure)


def weight_groups(model: nn.Module, **extra: Any) -> list[dict[str, Any]]:
    """Two groups: weights (with ``extra``, e.g. a regularizer) and biases (no regularizer)."""
    weights = [p for n, p in model.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in model.named_parameters() if not n.endswith("weight")]
    return [dict(params=weights, **extra), dict(params=biases, regularizer=None)]


def quickstart_cnn(optimizer: Any, regularizer: Any) -> Any:
    """The quickstart's CNN on 8×8 digits with its two inner layers regularized (``exclude_ends``: the
    first conv's single input group would end the model), seeded; for the callback tests."""
    import lightning.pytorch as pl

    from lightning_prox.models import ImageClassifier

    pl.seed_everything(0)
    return ImageClassifier(
        backbone="lenet",
        num_classes=10,
        in_chans=1,
        img_size=8,
        channels=[16, 32],
        hidden=[64],
        optimizer=optimizer,
        regularizer=regularizer,
        exclude_ends=True,
        sparsity_table=False,
    )


def quiet_trainer(epochs: int, callbacks: list[Any], **kw: Any) -> Any:
    """A deterministic CPU Trainer without logger, progress bar, summary or (unless asked) checkpoints."""
    import lightning.pytorch as pl

    kw.setdefault("enable_checkpointing", False)
    return pl.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=True,
        callbacks=callbacks,
        **kw,
    )
