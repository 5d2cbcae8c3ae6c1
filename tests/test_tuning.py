"""The λ range test: geometric λ, the model and RNGs untouched, suggestions, the CLI command."""

# ruff: noqa: NPY002  (the legacy global NumPy RNG is what the test must see left alone)

from __future__ import annotations

import functools
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from lightning_prox.cli import main
from lightning_prox.data import DigitsDataModule
from lightning_prox.models import ImageClassifier
from lightning_prox.optim import ProxGen
from lightning_prox.regularizers import L1, GroupLasso
from lightning_prox.tuning import LamFinderResult, lam_find

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


def _model(reg=None):
    torch.manual_seed(0)
    return ImageClassifier(
        backbone="lenet",
        num_classes=10,
        in_chans=1,
        img_size=8,
        channels=[8, 16],
        hidden=[32],
        optimizer=functools.partial(ProxGen, lr=1e-2),
        regularizer=reg if reg is not None else GroupLasso(1e-4, dim="in"),
        sparsity_table=False,
    )


def test_range_test_leaves_model_optimizer_and_rngs_alone():
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = lam_find(model, DigitsDataModule(batch_size=64), num_steps=80, lam_min=1e-5, lam_max=1.0)
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(3), expected[1])
    assert random.random() == expected[2]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert model._trainer is None  # never attached to the test's Trainer
    # λ is geometric from lam_min to lam_max; sparsity grows with it
    assert len(result.lams) == 80
    np.testing.assert_allclose(result.lams, np.geomspace(1e-5, 1.0, 80), rtol=1e-9)
    assert result.sparsity[0] == 0.0 and result.sparsity[-1] > 0.5
    lam = result.suggestion(0.5)
    i = result.lams.index(lam)
    assert result.sparsity[i] >= 0.5 and all(s < 0.5 for s in result.sparsity[:i])
    assert result.suggestion(1.0) is None or result.sparsity[-1] == 1.0
    cliff = result.loss_cliff()
    assert cliff is not None and 1e-5 < cliff <= 1.0


def test_suggestion_and_cliff_on_a_recorded_curve():
    r = LamFinderResult("group", lams=[1e-4, 1e-3, 1e-2, 1e-1, 1.0] * 1, sparsity=[0.0, 0.1, 0.4, 0.8, 1.0])
    r.loss = [2.0, 0.5, 0.2, 1.0, 2.0]
    assert r.suggestion(0.4) == 1e-2 and r.suggestion(0.9) == 1.0 and r.suggestion(0.0) == 1e-4
    assert r.loss_cliff(window=1) == 1e-1  # 0.2 + 0.25·(2.0 − 0.2) = 0.65 < 1.0
    with pytest.raises(ValueError, match="target must be in"):
        r.suggestion(1.5)


def test_plot_writes_a_png(tmp_path):
    r = LamFinderResult("group", lams=list(np.geomspace(1e-4, 1, 20)), sparsity=list(np.linspace(0, 1, 20)))
    r.loss = list(np.linspace(1, 0.1, 10)) + list(np.linspace(0.1, 2, 10))
    r.plot(tmp_path / "lam.png", target=0.5)
    assert (tmp_path / "lam.png").stat().st_size > 1000


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"lam_min": 0.0}, "lam_min must be a finite number > 0"),
        ({"lam_min": 1e-2, "lam_max": 1e-3}, "must exceed lam_min"),
        ({"num_steps": 1}, "num_steps must be an int >= 2"),
        ({"metric": "rank"}, "metric must be one of"),
    ],
)
def test_bad_arguments(kwargs, words):
    with pytest.raises(ValueError) as err:
        lam_find(_model(), DigitsDataModule(batch_size=64), **kwargs)
    assert words in str(err.value)


def test_group_metric_needs_groups():
    with pytest.raises(ValueError, match="use metric='unstructured'"):
        lam_find(_model(L1(1e-4)), DigitsDataModule(batch_size=64, max_samples=200), num_steps=2)


def test_cli_command(tmp_path, capsys):
    plot = tmp_path / "lam.png"
    main(
        [
            "lam_find",
            "--config",
            str(QUICKSTART),
            "--num_steps",
            "40",
            "--lam_max",
            "1.0",
            "--target",
            "0.3",
            "--plot",
            str(plot),
            "--data.init_args.max_samples=400",
        ]
    )
    out = capsys.readouterr().out
    assert "suggested starting λ for group sparsity 0.3" in out or "not reached" in out
    assert plot.is_file()


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--num_steps", "1"], "--num_steps"),
        (["--target", "2"], "--target"),
        (["--lam_min", "-1"], "--lam_min"),
    ],
)
def test_cli_mistakes_exit_2_with_one_line(args, option, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["lam_find", "--config", str(QUICKSTART), *args])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert exc.value.code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {option}: ")
