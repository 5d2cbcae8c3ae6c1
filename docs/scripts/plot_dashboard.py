"""Render the "Sparsity" dashboard's curves from a TensorBoard event directory to a PNG.

    lightning-prox fit --config recipes/quickstart.yaml
    python docs/scripts/plot_dashboard.py lightning_logs/quickstart/version_0 docs/img/dashboard.png

Panels: global sparsity (unstructured, group, weighted group), per-layer sparsity (group sparsity for
grouped tensors, exact zeros otherwise), and validation accuracy / λ when they were logged.
"""

from __future__ import annotations

import argparse
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def load(log_dir: str) -> dict[str, tuple[list[int], list[float]]]:
    ea = EventAccumulator(log_dir, size_guidance={"scalars": 0})
    ea.Reload()
    out = {}
    for tag in ea.Tags()["scalars"]:
        ev = ea.Scalars(tag)
        out[tag] = ([e.step for e in ev], [e.value for e in ev])
    if not out:
        raise SystemExit(f"no scalars in {log_dir}; pass the run's version_N directory")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("log_dir")
    ap.add_argument("out")
    args = ap.parse_args()
    s = load(args.log_dir)
    extra = [t for t in ("val/acc", "prox/lambda") if t in s]
    fig, axes = plt.subplots(1, 2 + bool(extra), figsize=(5 * (2 + bool(extra)), 3.6))

    ax = axes[0]
    for tag, lab in (
        ("sparsity/unstructured", "unstructured (exact zeros)"),
        ("sparsity/group", "groups"),
        ("sparsity/group_weighted", "weighted group"),
        ("sparsity/low_rank", "low rank"),
    ):
        if tag in s:
            ax.plot(*s[tag], label=lab)
    ax.set_title("sparsity (global)")
    ax.set_xlabel("step")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)

    ax = axes[1]
    layers = sorted(t for t in s if re.fullmatch(r"sparsity/layer/[^/]+", t))
    for tag in layers:
        name = tag.removeprefix("sparsity/layer/")
        grouped = f"{tag}/group"
        ax.plot(*s[grouped if grouped in s else tag], label=name + (" (groups)" if grouped in s else ""))
    ax.set_title("sparsity per layer")
    ax.set_xlabel("step")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)

    if extra:
        ax = axes[2]
        for i, tag in enumerate(extra):
            target = ax if i == 0 else ax.twinx()
            target.plot(*s[tag], color=f"C{3 + i}", label=tag, marker="." if tag == "val/acc" else None)
            target.set_ylabel(tag)
        ax.set_title(" and ".join(extra))
        ax.set_xlabel("step")
    fig.tight_layout()
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
