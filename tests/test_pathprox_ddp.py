"""PathProx + PathProxBalancing under 2-process CPU DDP (gloo): identical ranks, equal to one process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers.ddp_launch import run_ddp
from helpers.ddp_pathprox_fit import fit

SCRIPT = Path(__file__).parent / "helpers" / "ddp_pathprox_fit.py"

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
]


def test_pathprox_ddp_ranks_identical_and_equal_to_one_process(tmp_path: Path) -> None:
    run_ddp(SCRIPT, str(tmp_path), "2", "16")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert r0["world_size"] == 2 and r0["global_step"] == r1["global_step"] == 2 * 256 // 32
    single = tmp_path / "single"
    single.mkdir()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        fit(str(single), 1, 32)  # the same global batch: 2 ranks x 16
    finally:
        torch.set_num_threads(threads)
    ref = torch.load(single / "rank0.pt", weights_only=True)
    zero_units = 0
    for name, p in ref["params"].items():
        assert torch.equal(r0["params"][name], r1["params"][name]), f"ranks differ in {name}"
        torch.testing.assert_close(r0["params"][name], p, rtol=0, atol=1e-5)
        if name in ("net.net.3.weight", "net.net.6.weight", "net.net.9.weight"):  # the v layers
            zero_units += int((p == 0).all(dim=0).sum())
    assert zero_units > 0  # the comparison covers units PathProx switched off exactly
