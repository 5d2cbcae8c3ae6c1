"""The cost of the first training steps of a torchvision ResNet-18 on CPU with an empty native-kernel
cache (a new machine) and with a warm one (every later process).

Run: ``python benchmarks/first_step.py [--threads 1] [--regularizer L1|GroupLasso|none]``

Each case runs in a fresh subprocess: build the model and ``ProxGen`` (which starts the kernel build in
the background), then per step a forward and backward pass on a random batch of 8×3×32×32 and
``optimizer.step()``. Printed: the wall time of each of the first steps (forward + backward + step) and
the time ``step()`` itself took, so the first step's extra cost is what the build adds beyond the work
it overlapped with.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

CHILD = r"""
import json, sys, time
import torch, torchvision
from lightning_prox.optim import ProxGen
from lightning_prox.regularizers import L1, GroupLasso
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=10)
reg = {"L1": L1(1e-4), "GroupLasso": GroupLasso(1e-4), "none": None}[sys.argv[2]]
weights = [p for p in model.parameters() if p.dim() > 1]
rest = [p for p in model.parameters() if p.dim() <= 1]
opt = ProxGen([{"params": weights, "regularizer": reg}, {"params": rest}], lr=1e-3)
x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
rows = []
for _ in range(4):
    a = time.perf_counter()
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    b = time.perf_counter()
    opt.step()
    c = time.perf_counter()
    rows.append((c - a, c - b))
print(json.dumps({"rows": rows}))
"""


def _run(threads: int, reg: str, cache: str) -> dict:
    env = dict(os.environ, LIGHTNING_PROX_CACHE_DIR=cache)
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(threads), reg], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--regularizer", default="L1", choices=["L1", "GroupLasso", "none"])
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        for label in ("empty cache (first process on a machine)", "warm cache (every later process)"):
            res = _run(args.threads, args.regularizer, cache)
            steps = ", ".join(f"{total:.3f} s (step {step:.3f} s)" for total, step in res["rows"])
            print(f"ProxGen + {args.regularizer}, {args.threads} thread(s), {label}: {steps}")


if __name__ == "__main__":
    main()
