"""Overhead of ``SparsityMonitor`` on epoch time (prints a table; nothing is asserted).

A CIFAR-sized CNN (3×32×32 inputs, ~36 k parameters, group lasso on every conv/linear weight) is
trained by ProxSGD (closed-form group prox) with a TensorBoard logger, with and without the monitor. Runs of the configurations
are interleaved (A B C A B C ...) so that load drift on a shared machine hits all of them alike; the
first epoch of every run is dropped (warm-up) and the median epoch time is reported. The time spent
inside the monitor's own hooks is also accumulated and reported as a share of the epoch time: that
number does not suffer from load drift between runs.

    python benchmarks/bench_monitor.py                 # default: 3 rounds × 4 epochs × 60 steps, 1 thread
    python benchmarks/bench_monitor.py --rounds 5 --steps 100 --threads 2
    python benchmarks/bench_monitor.py --pieces        # the pieces alone: train step, count, trace

The monitor runs with its defaults, active units included (the model is traced once at the start of
training, and its 5 unit pairs, 4 conv→conv and 1 conv→linear, are counted on every logged step).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from lightning_prox.callbacks import SparsityMonitor
from lightning_prox.optim import ProxSGD
from lightning_prox.regularizers import GroupLasso
from lightning_prox.structure import param_groups_regularized


class Net(pl.LightningModule):
    def __init__(self, width: int = 16):
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(),
            nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False), nn.BatchNorm2d(2 * w), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1, bias=False), nn.BatchNorm2d(4 * w), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, 10),
        )  # fmt: skip

    def forward(self, x):
        return self.body(x)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return ProxSGD(param_groups_regularized(self, GroupLasso(1e-4, dim="in")), lr=0.05, momentum=0.9)


class TimedMonitor(SparsityMonitor):
    """SparsityMonitor that accumulates the wall time spent in its own hooks (a direct, drift-free measure)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.hook_time = 0.0

    def _timed(name):
        def hook(self, *args, **kwargs):
            t = time.perf_counter()
            getattr(SparsityMonitor, name)(self, *args, **kwargs)
            self.hook_time += time.perf_counter() - t

        return hook

    on_train_start = _timed("on_train_start")
    on_train_batch_end = _timed("on_train_batch_end")
    on_train_epoch_end = _timed("on_train_epoch_end")
    on_train_end = _timed("on_train_end")  # the final log (outside the epochs: counted conservatively)


class EpochTimer(Callback):
    def __init__(self):
        self.times: list[float] = []

    def on_train_epoch_start(self, trainer, pl_module):
        self._t = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        self.times.append(time.perf_counter() - self._t)


def run(config: str, steps: int, epochs: int, batch: int) -> list[float]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(steps * batch, 3, 32, 32, generator=g)
    y = torch.randint(0, 10, (steps * batch,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)
    timer = EpochTimer()
    callbacks: list[Callback] = [timer]
    monitor = None
    if config == "monitor (default: every log_every_n_steps=50)":
        monitor = TimedMonitor(table=False)
    elif config == "monitor every step":
        monitor = TimedMonitor(every_n_steps=1, table=False)
    if monitor is not None:
        callbacks.append(monitor)
    pl.seed_everything(0, verbose=False)
    with tempfile.TemporaryDirectory() as d:
        trainer = pl.Trainer(
            default_root_dir=d,
            logger=TensorBoardLogger(d, name="tb"),
            max_epochs=epochs,
            callbacks=callbacks,
            accelerator="cpu",
            devices=1,
            enable_progress_bar=False,
            enable_model_summary=False,
            enable_checkpointing=False,
        )
        trainer.fit(Net(), loader)
    hook = 0.0 if monitor is None else monitor.hook_time
    return timer.times[1:], hook / sum(timer.times)  # drop the warm-up epoch; hook share of all epochs


def pieces(batch: int) -> None:
    """Median times of a training step, one count (without/with the unit pairs) and the trace."""
    from lightning_prox.callbacks._counting import count, monitored_pairs, monitored_tensors
    from lightning_prox.structure import unit_pairs

    def median_ms(f, n: int) -> float:
        f()
        times = []
        for _ in range(n):
            t = time.perf_counter()
            f()
            times.append(time.perf_counter() - t)
        return 1e3 * statistics.median(times)

    net = Net()
    opt = net.configure_optimizers()
    tensors = monitored_tensors(opt.param_groups, net.named_parameters())
    pairs = monitored_pairs(unit_pairs(net), tensors)
    x, y = torch.randn(batch, 3, 32, 32), torch.randint(0, 10, (batch,))

    def step():
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, batch {batch}")
    print(f"training step                      {median_ms(step, 30):8.2f} ms")
    print(f"count, {len(tensors)} tensors                  {median_ms(lambda: count(tensors), 200):8.2f} ms")
    print(
        f"count, {len(tensors)} tensors + {len(pairs)} unit pairs    {median_ms(lambda: count(tensors, pairs), 200):8.2f} ms"
    )
    print(f"unit_pairs (trace, once per fit)   {median_ms(lambda: unit_pairs(net), 20):8.2f} ms")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--pieces", action="store_true", help="time the pieces alone instead")
    args = ap.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.pieces:
        pieces(args.batch)
        return
    configs = ["no monitor", "monitor (default: every log_every_n_steps=50)", "monitor every step"]
    times: dict[str, list[float]] = {c: [] for c in configs}
    share: dict[str, list[float]] = {c: [] for c in configs}
    for _ in range(args.rounds):
        for c in configs:
            t, h = run(c, args.steps, args.epochs, args.batch)
            times[c] += t
            share[c].append(h)
    base = statistics.median(times["no monitor"])
    print(
        f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps/epoch, batch {args.batch}"
    )
    print(
        f"{'configuration':<48} {'epochs':>6} {'median epoch [s]':>17} {'vs none':>8} {'in monitor hooks':>17}"
    )
    for c in configs:
        med = statistics.median(times[c])
        print(
            f"{c:<48} {len(times[c]):>6} {med:>17.3f} {100 * (med / base - 1):>+7.1f}% "
            f"{100 * statistics.mean(share[c]):>16.2f}%"
        )


if __name__ == "__main__":
    main()
