"""RMDA / RAMDA step time and memory on ResNet-18-sized parameters with group lasso, against fused Adam.

Run: ``python benchmarks/bench_ramda.py [--steps 8] [--threads 1 2] [--rows RAMDA ...] [--profile]``

Parameters have the 62 shapes of ResNet-18 (11.69M values; conv and linear weights regularized by
``GroupLasso(2e-4, dim="in")``, 1-D parameters unregularized). Gradients are synthetic,
g = μ + σ·ξ with a per-(out, in)-channel scale σ, so RAMDA's preconditioner P = ∛U + ε varies inside
every group as in a real network; three gradients are handed out in turn. Every row is stepped
interleaved with ``torch.optim.Adam(fused=True)`` (each on its own parameters, after 2 warm-up steps);
the ratio is the median of the paired per-step ratios. ``--threads`` runs the table once per thread count.

Rows "mid-stage" start from the state after 1000 steps of a stage, written directly into the
optimizer state from the gradient statistics (α = Σ η√k, V = α·μ + noise, U = α·E[g²]), so that the
subproblems have their mid-training scale. RAMDA runs with its default ``implementation="auto"``
(native kernels on CPU at this size, built or loaded on the first step) and with
``implementation="eager"``; the lines under the table give RAMDA's mean inner iterations and screened
groups per step, and the largest native-vs-eager parameter difference.

RMDA runs with its default ``implementation="auto"`` (the native one-pass step on CPU at this size)
and with ``implementation="eager"``; a line under the table gives their largest parameter difference.

The row "authors' RAMDA" is a reference for the authors' code (Huang & Lee, 2024, public repository
ismoptgroup/RAMDA), written here from the paper's Algorithm 1 and 2, not copied: a per-parameter loop
of plain torch operations, with the subproblem solved group by group in Python (screening, then
proximal gradient with step 1/max P_g from the previous iterate, stopped when the relative objective
decrease falls below 1e-8 or after 100 iterations). It is timed on its first step only, without warm-up
(it takes tens of seconds), and has no memory columns (tracing its millions of operator calls would
take more memory than the machine has).

Columns ``peak MB``, ``kept MB`` and ``state B/p`` as in ``bench_optim.py`` (see ``benchmarks/_bench.py``).
``--profile`` prints the per-operator (per-pass) CPU profile of one step of every selected row.
"""

from __future__ import annotations

import argparse
import math
import statistics

import torch
from _bench import (
    header,
    interleaved,
    kept_bytes,
    peak_extra_bytes,
    profile_table,
    resnet18_params,
    resnet18_shapes,
    row,
    select,
    split_groups,
    state_bytes,
)

from lightning_prox.optim import RAMDA, RMDA
from lightning_prox.regularizers import GroupLasso

LAM, T0 = 2e-4, 1000


def grad_stats(seed: int = 1) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-element gradient mean μ and scale σ (σ varies per (out, in) channel pair: non-uniform P)."""
    g = torch.Generator().manual_seed(seed)
    mus, sigmas = [], []
    for s in resnet18_shapes():
        sig = torch.rand(s[:2] if len(s) >= 2 else s, generator=g) * 2e-3 + 1e-4
        sig = sig.reshape(sig.shape + (1,) * (len(s) - sig.dim())).expand(s).contiguous()
        mus.append(0.3 * sig * torch.randn(s, generator=g))
        sigmas.append(sig)
    return mus, sigmas


MUS, SIGMAS = grad_stats()
_g = torch.Generator().manual_seed(2)
POOL = [[m + s * torch.randn(m.shape, generator=_g) for m, s in zip(MUS, SIGMAS)] for _ in range(3)]


def set_mid_state(opt, params, seed: int = 3):
    """Write the state of step T0 of a stage (statistics of T0 gradients) into ``opt``; returns it."""
    g = torch.Generator().manual_seed(seed)
    lr = opt.param_groups[0]["lr"]
    alpha = sum(lr * math.sqrt(k) for k in range(1, T0 + 1))
    s2 = math.sqrt(sum((lr * math.sqrt(k)) ** 2 for k in range(1, T0 + 1)))
    for p, m, s in zip(params, MUS, SIGMAS):
        st = opt._init_state(p)
        st["step"], st["alpha"] = T0, alpha
        st["grad_sum"].copy_(alpha * m + s2 * s * torch.randn(m.shape, generator=g))
        if "grad_sq_sum" in st:
            st["grad_sq_sum"].copy_(alpha * (m * m + s * s))
    return opt


class AuthorsRAMDA(torch.optim.Optimizer):
    """RAMDA with the group-lasso subproblem solved group by group in Python (the authors' code style)."""

    def __init__(self, params, lr=1e-2, momentum=1e-2, lam=LAM, eps=1e-6, max_iters=100, rtol=1e-8):
        super().__init__(params, {"lr": lr, "momentum": momentum, "lam": lam, "eps": eps})
        self.max_iters, self.rtol = max_iters, rtol

    def _subproblem(self, z, P, x, alpha, lam):
        """argmin_x α·λ Σ_j √|g_j| ‖x_{:,j}‖ + ½ Σ P (x − z)², one input channel j at a time."""
        out = torch.zeros_like(z)
        for j in range(z.shape[1]):
            zg, pg, xg = z[:, j], P[:, j], x[:, j].clone()
            thr = alpha * lam * math.sqrt(zg.numel())
            if torch.linalg.vector_norm(pg * zg) <= thr:  # the exact zero test
                continue
            eta = 1.0 / pg.max()
            q_prev = None
            for _ in range(self.max_iters):
                y = xg - eta * pg * (xg - zg)
                ny = torch.linalg.vector_norm(y)
                xg = torch.clamp(1 - eta * thr / ny, min=0.0) * y
                q = float(0.5 * (pg * (xg - zg) ** 2).sum() + thr * torch.linalg.vector_norm(xg))
                if q_prev is not None and (q_prev - q) / (abs(q) + 1.0) < self.rtol:
                    break
                q_prev = q
            out[:, j] = xg
        return out

    @torch.no_grad()
    def step(self) -> None:
        for group in self.param_groups:
            lr, c, eps, lam = group["lr"], group["momentum"], group["eps"], group["lam"]
            for p in group["params"]:
                st = self.state[p]
                if not st:
                    st.update(step=0, alpha=0.0, w0=p.clone(), v=torch.zeros_like(p), u=torch.zeros_like(p))
                st["step"] += 1
                s = lr * math.sqrt(st["step"])
                st["alpha"] += s
                st["v"] = st["v"] + s * p.grad
                st["u"] = st["u"] + s * p.grad * p.grad
                P = st["u"].pow(1.0 / 3.0) + eps
                z = st["w0"] - st["v"] / P
                x = self._subproblem(z, P, p, st["alpha"], lam) if p.ndim > 1 else z
                p.copy_((1 - c) * p + c * x)


def _ramda(ps, **kw):
    return RAMDA(split_groups(ps, GroupLasso(LAM)), lr=1e-2, momentum=1e-2, **kw)


def _rmda(ps, **kw):
    return RMDA(split_groups(ps, GroupLasso(LAM)), lr=0.1, momentum=0.1, **kw)


ROWS = {
    "RMDA + GroupLasso": _rmda,
    "RMDA + GroupLasso (eager)": lambda ps: _rmda(ps, implementation="eager"),
    "RAMDA + GroupLasso (default: native)": _ramda,
    "RAMDA + GroupLasso (eager)": lambda ps: _ramda(ps, implementation="eager"),
    "RMDA + GroupLasso, mid-stage": lambda ps: set_mid_state(_rmda(ps), ps),
    "RMDA + GroupLasso (eager), mid-stage": lambda ps: set_mid_state(_rmda(ps, implementation="eager"), ps),
    "RAMDA + GroupLasso (native), mid-stage": lambda ps: set_mid_state(_ramda(ps), ps),
    "RAMDA + GroupLasso (eager), mid-stage": lambda ps: set_mid_state(_ramda(ps, implementation="eager"), ps),
    "authors' RAMDA (per-group loop, from the math)": lambda ps: AuthorsRAMDA(split_groups(ps, None)),
}


def memory(make) -> tuple[int, int, float]:
    """As ``bench_optim.memory``, with this benchmark's gradients (a mid-stage row holds its state
    before the first step)."""
    params = resnet18_params()
    for p, g in zip(params, POOL[0]):
        p.grad = g
    opt = make(params)
    st0 = state_bytes(opt)
    kept = kept_bytes(opt.step)
    st = state_bytes(opt)
    opt.step()
    peak = peak_extra_bytes(opt.step)
    return peak, kept - (st - st0), st / sum(p.numel() for p in params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=8, help="timed steps per row (after 2 warm-up steps)")
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts to run")
    ap.add_argument("--rows", nargs="*", default=[], help="run only rows whose name contains one of these")
    ap.add_argument("--profile", action="store_true", help="print a per-operator profile of each row's step")
    args = ap.parse_args()
    names = select(list(ROWS), args.rows)
    mems = {}
    for threads in args.threads:
        torch.set_num_threads(threads)
        header(threads, args.steps, f" lam={LAM:g} dim=in")
        runs = {}
        for name in names:
            make, slow = ROWS[name], name.startswith("authors")
            if name not in mems:  # the authors' loop is not traced: millions of operator events
                mems[name] = None if slow else memory(make)
            params, ref_params = resnet18_params(), resnet18_params()
            opt, ref = make(params), torch.optim.Adam(ref_params, lr=1e-3, fused=True)

            def hand_out(i, params=params, ref_params=ref_params):
                for ps in (params, ref_params):
                    for p, g in zip(ps, POOL[i % len(POOL)]):
                        p.grad = g

            if not slow:
                interleaved([opt.step, ref.step], 2, hand_out)
            infos: list[dict] = []
            t, tp = interleaved(
                [
                    lambda opt=opt, infos=infos: (opt.step(), infos.extend(getattr(opt, "solver_info", []))),
                    ref.step,
                ],
                1 if slow else args.steps,
                hand_out,
            )
            row(name, t, "Adam fused", tp, mems[name])
            runs[name] = (params, infos)
        for name, (_params, infos) in runs.items():
            if infos:
                its = statistics.mean(int(i["inner_iters"]) for i in infos)
                scr = statistics.mean(int(i["screened"]) for i in infos)
                print(f"  {name}: mean inner iterations {its:.1f}, screened groups {scr:.0f} per solve")
        for state in ("", ", mid-stage"):
            a, b = f"RAMDA + GroupLasso (native){state}", f"RAMDA + GroupLasso (eager){state}"
            a = a if a in runs else "RAMDA + GroupLasso (default: native)" if not state else a
            if a in runs and b in runs:
                diff = max(float((x - y).detach().abs().max()) for x, y in zip(runs[a][0], runs[b][0]))
                print(f"  native vs eager RAMDA{state or ', fresh'}: max |parameter difference| {diff:.2e}")
        for state in ("", ", mid-stage"):
            a, b = f"RMDA + GroupLasso{state}", f"RMDA + GroupLasso (eager){state}"
            if a in runs and b in runs:
                diff = max(float((x - y).detach().abs().max()) for x, y in zip(runs[a][0], runs[b][0]))
                print(f"  native vs eager RMDA{state or ', fresh'}: max |parameter difference| {diff:.2e}")
        if args.profile:
            for name in names:
                params = resnet18_params()
                for p, g in zip(params, POOL[0]):
                    p.grad = g
                opt = ROWS[name](params)
                opt.step()
                print(f"\nprofile of one step: {name} (threads={threads})")
                print(profile_table(opt.step))


if __name__ == "__main__":
    main()
