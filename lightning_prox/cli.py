"""The ``lightning-prox`` command: LightningCLI with ``fit``, ``validate`` and ``test``.

.. code-block:: bash

    lightning-prox fit --config recipes/quickstart.yaml
    lightning-prox fit --config recipes/quickstart.yaml --print_config
    lightning-prox fit --config recipes/quickstart.yaml --trainer.max_epochs=3 --seed_everything=1

``model:`` and ``data:`` take ``class_path``/``init_args`` (default: ``ImageClassifier`` on
``DigitsDataModule``); inside the model, ``optimizer:`` and ``regularizer:`` do too, e.g.
``lightning_prox.optim.ProxGen`` and ``lightning_prox.regularizers.GroupLasso``. Configuration errors
(an unknown class, a misspelt key, a regularizer that does not fit a selected weight) stop the command
before training, naming the key.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from jsonargparse import set_parsing_settings
from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from .regularizers import Regularizer

__all__ = ["ProxCLI", "main"]

DEFAULT_MODEL = "lightning_prox.models.ImageClassifier"
DEFAULT_DATA = "lightning_prox.data.DigitsDataModule"


class ProxCLI(LightningCLI):
    """LightningCLI for proximal training: subclass mode for model and data, no top-level optimizer.

    The optimizer and regularizer live inside the model's init arguments (``ProxMixin``), so
    LightningCLI's automatic top-level ``optimizer``/``lr_scheduler`` options are off: the param groups
    (regularized vs. not) are the model's business.

    Built from Python, it runs the same command as the console script on ``args`` (``run`` as for
    ``LightningCLI``; other ``LightningCLI`` arguments override this command's defaults), and its
    ``model``, ``datamodule`` and ``trainer`` can then be inspected.

    Example:
        >>> cli = ProxCLI(["--model.init_args.backbone=mlp", "--trainer.logger=false"], run=False)
        >>> type(cli.model.net).__name__
        'MLP'
    """

    def __init__(self, args: ArgsType = None, run: bool = True, **kwargs: Any) -> None:
        set_parsing_settings(subclasses_enabled=[Regularizer])
        os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
        defaults: dict[str, Any] = {
            "model_class": LightningModule,
            "datamodule_class": LightningDataModule,
            "subclass_mode_model": True,
            "subclass_mode_data": True,
            "auto_configure_optimizers": False,
            "save_config_kwargs": {"overwrite": True},
        }
        super().__init__(args=args, run=run, **{**defaults, **kwargs})

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        return {k: v for k, v in LightningCLI.subcommands().items() if k in ("fit", "validate", "test")}

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({"model": {"class_path": DEFAULT_MODEL}, "data": {"class_path": DEFAULT_DATA}})
        parser.add_argument(
            "--torch_num_threads",
            type=int | None,
            default=None,
            help="torch.set_num_threads for CPU runs (None: torch's default). Tiny models run fastest, "
            "and unaffected by other processes, with 1.",
        )

    def before_instantiate_classes(self) -> None:
        config = self.config[self.subcommand] if self.subcommand else self.config
        threads = config.get("torch_num_threads")
        if threads is not None:
            if threads < 1:
                print(f"error: torch_num_threads must be >= 1, got {threads}", file=sys.stderr)
                raise SystemExit(2)
            torch.set_num_threads(threads)

    def after_instantiate_classes(self) -> None:
        # Build the param groups now (the regularizer is checked against every selected weight) so
        # that a bad combination fails before the Trainer starts, naming the key.
        prox_groups = getattr(self.model, "prox_param_groups", None)
        if callable(prox_groups):
            try:
                prox_groups()
            except ValueError as err:
                msg = str(err)
                key = "model.init_args." + next(
                    (
                        k
                        for k in ("include_types", "include", "exclude")
                        if f"{k} pattern" in msg or f"{k} entries" in msg
                    ),
                    "regularizer",
                )
                print(f"error: {key}: {err}", file=sys.stderr)
                raise SystemExit(2) from None


def main(args: ArgsType = None, run: bool = True) -> None:
    """Entry point of the ``lightning-prox`` console script (``args`` and ``run`` as for ``LightningCLI``).

    It returns ``None``, so that the script's ``sys.exit(main())`` exits with status 0 and prints
    nothing (a returned object would be printed to stderr and make the exit status 1). To inspect the
    model, datamodule or trainer of a run from Python, build :class:`ProxCLI` with the same arguments.
    """
    ProxCLI(args, run=run)


if __name__ == "__main__":  # pragma: no cover
    main()
