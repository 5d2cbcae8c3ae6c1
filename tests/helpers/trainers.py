"""The Trainers of the Lightning-spine tests: on CPU, without a progress bar or a model summary.

Each test passes what it is about (``max_epochs``, callbacks, ``devices``, a strategy...); a keyword
given by the test replaces the default here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.loggers import CSVLogger


def quiet_trainer(**kwargs: Any) -> pl.Trainer:
    """A CPU Trainer that writes nothing: no logger, no checkpoints, no progress bar, no model summary."""
    options: dict[str, Any] = {
        "accelerator": "cpu",
        "logger": False,
        "enable_checkpointing": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
    }
    return pl.Trainer(**{**options, **kwargs})


def csv_trainer(root: str | Path, callbacks: list[Any], max_epochs: int, **kwargs: Any) -> pl.Trainer:
    """A 1-device CPU Trainer in ``root`` that logs every step to ``CSVLogger(root, name="csv")``.

    ``logger=...`` replaces the CSV logger (which is then not created).
    """
    options: dict[str, Any] = {
        "default_root_dir": root,
        "max_epochs": max_epochs,
        "callbacks": callbacks,
        "accelerator": "cpu",
        "devices": 1,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "log_every_n_steps": 1,
        **kwargs,
    }
    if "logger" not in options:
        options["logger"] = CSVLogger(root, name="csv")
    return pl.Trainer(**options)
