"""Suite-wide settings: one torch CPU thread per test process.

The models in these tests are tiny, so torch's intra-op threads only add synchronization, and on a
loaded machine (other jobs on the same cores) two threads made the suite many times slower. The
count is set once, in ``pytest_configure``, so it covers every test of the run, the doctests under
``lightning_prox/`` included, and the processes they fork (``ddp_fork`` inherits it). The DDP
subprocess of ``test_ddp.py`` sets it itself (``OMP_NUM_THREADS=1`` and ``torch.set_num_threads(1)``
in ``helpers/ddp_fit.py``).

``LIGHTNING_PROX_TEST_THREADS=N`` runs the suite with N threads instead (``0``: torch's default), to
check that nothing depends on running single-threaded. A test that changes the count (the CLI's
``--torch_num_threads``) gets it reset afterwards, so it cannot leak into the next test.
"""

from __future__ import annotations

import os

import pytest
import torch

_THREADS: int | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _THREADS
    value = os.environ.get("LIGHTNING_PROX_TEST_THREADS", "1")
    try:
        threads = int(value)
    except ValueError:
        raise pytest.UsageError(
            f"LIGHTNING_PROX_TEST_THREADS must be an integer >= 0, got {value!r}"
        ) from None
    if threads < 0:
        raise pytest.UsageError(f"LIGHTNING_PROX_TEST_THREADS must be an integer >= 0, got {value!r}")
    if threads > 0:
        torch.set_num_threads(threads)
    _THREADS = torch.get_num_threads()


def pytest_report_header(config: pytest.Config) -> str:
    return f"torch {torch.__version__}: {torch.get_num_threads()} CPU thread(s) (LIGHTNING_PROX_TEST_THREADS)"


@pytest.fixture(autouse=True)
def _reset_torch_threads():
    yield
    if _THREADS is not None and torch.get_num_threads() != _THREADS:
        torch.set_num_threads(_THREADS)
