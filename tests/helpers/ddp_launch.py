"""Run a DDP fit script as a subprocess (Lightning's launcher re-executes it for rank 1); kill the whole
process group on timeout. Shared by the 2-process CPU DDP tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

TIMEOUT_S = 420


def run_ddp(script: Path, *args: str, timeout: int = TIMEOUT_S) -> None:
    """``python script *args`` with a clean rendezvous environment; fails the test with the log tail."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(script.parent.parent), os.environ.get("PYTHONPATH", "")]),
    }
    for key in ("LOCAL_RANK", "RANK", "WORLD_SIZE", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)  # Lightning picks a free port; never inherit another run's rendezvous
    proc = subprocess.Popen(
        [sys.executable, str(script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        pytest.fail(f"DDP fit did not finish in {timeout}s:\n{log.decode()[-3000:]}")
    assert proc.returncode == 0, log.decode()[-3000:]
