"""2-process CPU DDP (gloo): identical parameters on both ranks, equal to a 1-process fit.

The DDP run is a subprocess (``tests/helpers/ddp_fit.py``) that Lightning's own launcher re-executes
for rank 1; the test kills the whole process group on timeout.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers.ddp_fit import fit
from helpers.ddp_launch import run_ddp

SCRIPT = Path(__file__).parent / "helpers" / "ddp_fit.py"

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
]


def _run_ddp(out: Path, optimizer: str) -> None:
    run_ddp(SCRIPT, str(out), "2", "16", optimizer)


@pytest.mark.parametrize("optimizer", ["ProxGen", "ProxSGD", "RAMDA"])
def test_ddp_two_ranks_match_each_other_and_single_process(tmp_path, optimizer):
    _run_ddp(tmp_path, optimizer)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world_size"] == 2 and r0["global_step"] == r1["global_step"] == 2 * 256 // 32

    single = tmp_path / "single"
    single.mkdir()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        fit(str(single), 1, 32, optimizer)  # same global batch: 2 ranks x 16 = 32
    finally:
        torch.set_num_threads(threads)
    ref = torch.load(single / "rank0.pt", weights_only=True)
    assert ref["global_step"] == r0["global_step"]

    zeros = 0
    for name, p in ref["params"].items():
        assert torch.equal(r0["params"][name], r1["params"][name]), f"ranks differ in {name}"
        torch.testing.assert_close(r0["params"][name], p, rtol=0, atol=1e-5, msg=f"DDP vs 1 process: {name}")
        zeros += int((p == 0).sum()) if name.endswith("weight") else 0
    assert zeros > 0  # the prox produced exact zeros, so the comparison covers the thresholding too
    if optimizer == "RAMDA":  # the native kernels ran (only they keep the group norms of Ŵ) on both ranks
        for r in (r0, r1):
            assert any(s.get("prox_point_norms", torch.empty(0)).numel() for s in r["opt_state"].values())
    for k, s in ref["opt_state"].items():
        for n, t in s.items():
            assert torch.equal(r0["opt_state"][k][n], r1["opt_state"][k][n])
            torch.testing.assert_close(r0["opt_state"][k][n], t, rtol=1e-4, atol=1e-6)


def test_ddp_sparsity_target_takes_the_same_decisions_on_both_ranks(tmp_path):
    _run_ddp(tmp_path, "ProxGen+target")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world_size"] == 2
    assert r0["target_u"] == r1["target_u"] and r0["target_u"] != 0.0  # the controller moved λ
    assert r0["lams"] == r1["lams"]
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), f"ranks differ in {name}"
