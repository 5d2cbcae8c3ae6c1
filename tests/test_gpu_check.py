"""benchmarks/gpu_check.py stays runnable: its code paths on CPU (``--device cpu --quick``) pass."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.mark.slow
def test_gpu_check_runs_on_cpu():
    out = subprocess.run(
        [sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--steps", "5"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "all checks passed" in out.stdout
    for section in ("1. agreement", "2. float16 / bfloat16", "3. Lightning fit"):
        assert section in out.stdout
