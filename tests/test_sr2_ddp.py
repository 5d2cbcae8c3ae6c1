"""SR2 under 2-process CPU DDP (gloo): both ranks take the same decisions, equal to one process.

The DDP run is a subprocess (``tests/helpers/ddp_fit_sr2.py``) that Lightning's own launcher re-executes
for rank 1; the test kills the whole process group on timeout.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers.ddp_fit_sr2 import fit
from helpers.ddp_launch import run_ddp

SCRIPT = Path(__file__).parent / "helpers" / "ddp_fit_sr2.py"

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
]


def test_sr2_ddp_ranks_agree_and_match_one_process(tmp_path):
    run_ddp(SCRIPT, str(tmp_path), "2", "16")
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    steps = 2 * 256 // 32
    assert r0["world_size"] == 2 and r0["global_step"] == r1["global_step"] == steps
    # one float64 all-reduce of the decision vector per step
    assert r0["reduces"] == r1["reduces"] == [("torch.float64", 7)] * steps

    single = tmp_path / "single"
    single.mkdir()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        fit(str(single), 1, 32)  # the same global batch: 2 ranks x 16 = 32
    finally:
        torch.set_num_threads(threads)
    ref = torch.load(single / "rank0.pt", weights_only=True)
    assert ref["reduces"] == []  # one process: no collective

    for name, p in ref["params"].items():
        assert torch.equal(r0["params"][name], r1["params"][name]), f"ranks differ in {name}"
        torch.testing.assert_close(r0["params"][name], p, rtol=0, atol=1e-5, msg=f"DDP vs 1 process: {name}")
    assert r0["sr2"].keys() == r1["sr2"].keys()
    for k, v in r0["sr2"].items():  # bit-identical on both ranks (rho is nan after a null step)
        assert v == r1["sr2"][k] or (math.isnan(v) and math.isnan(r1["sr2"][k])), k
    for k in ("steps", "accepted_steps", "rejected_steps", "null_steps", "consecutive_rejections"):
        assert r0["sr2"][k] == ref["sr2"][k], k
    assert r0["sr2"]["rejected_steps"] > 0
    assert r0["sr2"]["sigma"] == pytest.approx(ref["sr2"]["sigma"], rel=1e-9)
