import pytest
import torch

import lightning_prox
from lightning_prox.regularizers import L1, from_spec


def test_version():
    assert lightning_prox.__version__


def test_l1_spec_round_trip_and_prox():
    reg = L1(0.25)
    assert reg.spec() == {"name": "L1"}
    assert from_spec(reg.spec(), 0.25) == reg
    out = reg.prox(torch.tensor([1.0, -0.1, -2.0]), step=2.0)
    torch.testing.assert_close(out, torch.tensor([0.5, 0.0, -1.5]))


def test_negative_lam_names_value():
    with pytest.raises(ValueError, match=r"-0\.5"):
        L1(-0.5)
