"""PathProx + PathProxBalancing under 2-process CPU DDP (gloo): identical ranks, equal to one process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers.ddp_pathprox_fit import fit

SCRIPT = Path(__file__).parent / "helpers" / "ddp_pathprox_fit.py"
TIMEOUT_S = 420

pytestmark = [
    pytest.mark.ddp,
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
]


def test_pathprox_ddp_ranks_identical_and_equal_to_one_process(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(SCRIPT.parent.parent), os.environ.get("PYTHONPATH", "")]),
    }
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), str(tmp_path), "2", "16"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        log, _ = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"DDP fit did not finish in {TIMEOUT_S}s:\n{log.decode()[-3000:]}")
    assert proc.returncode == 0, log.decode()[-3000:]
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
