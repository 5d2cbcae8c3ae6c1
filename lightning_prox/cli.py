"""The ``lightning-prox`` command: LightningCLI with ``fit``, ``validate`` and ``test``.

.. code-block:: bash

    lightning-prox fit --config recipes/quickstart.yaml
    lightning-prox fit --config recipes/quickstart.yaml --print_config
    lightning-prox fit --config recipes/quickstart.yaml --trainer.max_epochs=3 --seed_everything=1
    lightning-prox fit --model.optimizer.help ProxGen      # the arguments of an optimizer (short names work)

``model:`` and ``data:`` take ``class_path``/``init_args`` (default: ``ImageClassifier`` on
``DigitsDataModule``); inside the model, ``optimizer:``, ``regularizer:`` and ``rules:`` do too, e.g.
``lightning_prox.optim.ProxGen`` and ``lightning_prox.regularizers.GroupLasso``. Configuration errors
(an unknown class, a misspelt key, a bad value, a regularizer that does not fit a selected weight, a
torch optimizer given a regularizer, data that cannot be downloaded) stop the command before training
with exit status 2 and one line ``error: <key>: <message>``.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
import traceback
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NoReturn

import torch
from jsonargparse import DefaultHelpFormatter, Namespace, set_parsing_settings
from lightning.pytorch import Callback, LightningDataModule, LightningModule
from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from .regularizers import Regularizer

__all__ = ["ConfigError", "ProxCLI", "main"]

DEFAULT_MODEL = "lightning_prox.models.ImageClassifier"
DEFAULT_DATA = "lightning_prox.data.DigitsDataModule"
RECIPES = Path(__file__).resolve().parent.parent / "recipes"

#: packages whose class names may be given without their module (``--model.optimizer.help ProxGen``)
_SHORT_NAME_MODULES = (
    "lightning_prox.optim",
    "lightning_prox.regularizers",
    "lightning_prox.callbacks",
    "lightning_prox.models",
    "lightning_prox.data",
    "torch.optim",
    "torch.optim.lr_scheduler",
    "lightning.pytorch.callbacks",
    "lightning.pytorch.loggers",
)


class ConfigError(ValueError):
    """A configuration mistake found before training, with the config key it is about."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key, self.message = key, message


def _epilog() -> str:
    recipes = sorted(p.name for p in RECIPES.glob("*.yaml")) if RECIPES.is_dir() else []
    listed = (
        "\n".join(f"  recipes/{r}" for r in recipes) or "  (the recipes/ folder of the source repository)"
    )
    return (
        "example:\n"
        "  lightning-prox fit --config recipes/quickstart.yaml\n"
        "  lightning-prox fit --config recipes/quickstart.yaml --trainer.max_epochs=3 "
        "--model.init_args.regularizer.init_args.lam=1e-3\n"
        "  lightning-prox fit --config recipes/quickstart.yaml --print_config   # the full configuration\n"
        "  lightning-prox fit --model.optimizer.help ProxGen                   # an optimizer's arguments\n"
        "  lightning-prox fit --config recipes/proxquant_revised.yaml --trainer.callbacks.HardQuantization.epoch=3\n"
        "                                            # an argument of a callback the configuration lists\n\n"
        "  lightning-prox export --ckpt_path last.ckpt --output small.pt     # remove the zero channels\n"
        "  lightning-prox lam_find --config recipes/quickstart.yaml --target 0.5   # the λ range test\n\n"
        f"shipped recipes:\n{listed}\n\n"
        "Errors in the configuration stop before training with exit status 2 and one line "
        "'error: <key>: <message>'."
    )


def _expand_short_names(args: list[str]) -> list[str]:
    """``--x.help Name`` / ``--x.help=Name`` with a bare class name → its full import path."""
    out = list(args)
    for i, a in enumerate(out):
        if a.endswith(".help") and i + 1 < len(out) and "." not in out[i + 1]:
            out[i + 1] = _full_name(out[i + 1])
        elif ".help=" in a:
            key, _, name = a.partition("=")
            if "." not in name:
                out[i] = f"{key}={_full_name(name)}"
    return out


_CALLBACK_ARG = re.compile(r"^--trainer\.callbacks\.([A-Z]\w*)\.(?:init_args\.)?(\w+)(?:=(.*))?$", re.S)


def _take_callback_overrides(args: list[str]) -> tuple[list[str], list[tuple[str, str, str]]]:
    """Split off ``--trainer.callbacks.<ClassName>.<argument>=<value>`` (overrides of a callback that
    the configuration already lists; jsonargparse itself only reaches the last list entry)."""
    rest: list[str] = []
    overrides: list[tuple[str, str, str]] = []
    i = 0
    while i < len(args):
        m = _CALLBACK_ARG.match(args[i])
        if m is None:
            rest.append(args[i])
        elif m.group(3) is not None:
            overrides.append((m.group(1), m.group(2), m.group(3)))
        elif i + 1 < len(args):
            overrides.append((m.group(1), m.group(2), args[i + 1]))
            i += 1
        else:
            _fail(f"trainer.callbacks.{m.group(1)}.{m.group(2)}", "needs a value")
        i += 1
    return rest, overrides


def _apply_callback_overrides(config: Any, overrides: list[tuple[str, str, str]]) -> None:
    import yaml

    callbacks = config.get("trainer", {}).get("callbacks") or []
    callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
    for name, arg, value in overrides:
        key = f"trainer.callbacks.{name}.{arg}"
        hits = [c for c in callbacks if str(c.get("class_path", "")).rpartition(".")[2] == name]
        if not hits:
            present = [str(c.get("class_path", "")).rpartition(".")[2] for c in callbacks]
            _fail(key, f"no {name} in trainer.callbacks (the configuration lists {present})")
        for c in hits:
            if c.get("init_args") is None:
                c["init_args"] = Namespace()
            c["init_args"][arg] = yaml.safe_load(value)


def _full_name(name: str) -> str:
    for module in _SHORT_NAME_MODULES:
        try:
            obj = getattr(importlib.import_module(module), name, None)
        except ImportError:  # pragma: no cover
            continue
        if isinstance(obj, type):
            return f"{module}.{name}"
    return name


def _one_line(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _parser_error_message(err: BaseException) -> str:
    """The useful message inside a jsonargparse "does not validate" error (its first real sub-error)."""
    text = str(err)
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("- "):
            continue
        line = line[2:]
        if line.startswith("Expected a <class 'NoneType'>") or line.startswith(
            "Problem with given class_path"
        ):
            continue
        return line
    return text.splitlines()[0] if text else type(err).__name__


_STRUCTURE = (
    "Does not validate against any of the Union subtypes",
    "Subtypes:",
    "Errors:",
    "Given value type:",
    "Given value:",
    "Expected a <class 'NoneType'>",
    "Not a valid subclass of",
)
_CALLABLE_PREFIX = re.compile(r"^Type .* expects a function or a callable class: ")


def _nested_error(message: str) -> tuple[str, str]:
    """(key, message) of jsonargparse's nested "Parser key ... Does not validate" report: the keys
    along its first error branch (``model.init_args.regularizer.init_args.dim``) and that error."""
    keys: list[str] = []
    lines = message.splitlines()
    for i, raw in enumerate(lines):
        line = raw.strip()
        line = line[2:] if line.startswith("- ") else line
        m = re.match(r'^Parser key "([^"]+)":\s*(.*)$', line)
        if m:
            keys.append(m.group(1))
            if m.group(2):
                return ".".join(keys), m.group(2)
            continue
        if line.startswith("Problem with given class_path"):
            keys.append("init_args")
            continue
        if not line or line.startswith(_STRUCTURE):
            continue
        if keys and keys[-1] == "init_args":  # the class itself failed, not one of its arguments
            keys.pop()
        text = _CALLABLE_PREFIX.sub("", line)
        given = next((g.strip() for g in lines[i:] if g.strip().startswith("Given value:")), "")
        value = given.partition(":")[2].strip()
        if "Got value" not in text and value and value not in text and len(value) < 60:
            text += f" (given value: {value})"
        return ".".join(keys), text
    return "", message.strip().splitlines()[0] if message.strip() else message


class _OneLineErrorParser(LightningArgumentParser):
    """Parse errors as one line ``error: <key>: <message>`` (exit status 2), without the usage dump."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:
        if not self.exit_on_error:
            super().error(message, ex)
        key, text = _nested_error(message)
        unknown = re.match(r"^unrecognized arguments: --([\w.]+)", text, re.IGNORECASE)
        if not key and unknown:
            key = unknown.group(1)
        print(f"error: {key + ': ' if key else ''}{_one_line(text)}", file=sys.stderr)
        raise SystemExit(2)


def _key_for(message: str, config: Mapping[str, Any], root: str) -> str:
    """The init argument of ``config[root]`` the message is about (``backbone='x' is ...``, ``lam must``)."""
    node = config.get(root)
    init = node.get("init_args") if isinstance(node, Mapping) else None
    names = sorted(init.keys(), key=len, reverse=True) if isinstance(init, Mapping) else []
    hits = []
    for name in names:
        m = re.search(rf"(^{re.escape(name)}\b|(^|[\s(:]){re.escape(name)}(=|\s+must|\s+is|:))", message)
        if m:
            hits.append((m.start(), name))
    return f"{root}.init_args.{min(hits)[1]}" if hits else root


def _as_dict(obj: Any) -> Any:
    if isinstance(obj, Namespace):
        obj = obj.as_dict()
    if isinstance(obj, Mapping):
        return {k: _as_dict(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_as_dict(v) for v in obj]
    return obj


def _check_regularizers(node: Any, key: str) -> None:
    """Build every regularizer of the configuration alone, so that a bad value names its exact key."""
    if isinstance(node, list):
        for i, v in enumerate(node):
            _check_regularizers(v, f"{key}[{i}]")
        return
    if not isinstance(node, Mapping):
        return
    path = node.get("class_path")
    if isinstance(path, str):
        module, _, name = path.rpartition(".")
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            cls = None
        if isinstance(cls, type) and issubclass(cls, Regularizer):
            init = dict(node.get("init_args") or {})
            try:
                cls(**init)
            except (ValueError, TypeError) as err:
                msg = str(err)
                field = next(
                    (f for f in sorted(init, key=len, reverse=True) if re.search(rf"\b{f}\b", msg)), None
                )
                raise ConfigError(f"{key}.init_args.{field}" if field else key, msg) from None
            return
    for k, v in node.items():
        _check_regularizers(v, f"{key}.{k}" if key else str(k))


def _runtime_key(err: BaseException) -> str:
    """Which part of the configuration raised ``err`` at fit start, from where it was raised."""
    frames = [f.filename.replace(os.sep, "/") for f in traceback.extract_tb(err.__traceback__)]
    mine = [f for f in frames if "/lightning_prox/" in f]
    where = mine[-1] if mine else ""
    if "/lightning_prox/data/" in where:
        return "data"
    if "/lightning_prox/callbacks/" in where:
        return "trainer.callbacks"
    if "/lightning_prox/" in where:
        return "model.init_args.optimizer" if "optimizer" in str(err).split(":")[0] else "model"
    return "trainer"


class _TrainingStarted(Callback):
    """Marks the first training batch: errors before it are configuration errors."""

    started = False

    def on_train_batch_start(self, *args: Any) -> None:
        self.started = True


def _fail(key: str, message: str) -> None:
    print(f"error: {key}: {_one_line(message)}", file=sys.stderr)
    raise SystemExit(2)


class ProxCLI(LightningCLI):
    """LightningCLI for proximal training: subclass mode for model and data, no top-level optimizer.

    The optimizer and regularizer live inside the model's init arguments (``ProxMixin``), so
    LightningCLI's automatic top-level ``optimizer``/``lr_scheduler`` options are off: the param groups
    (regularized vs. not) are the model's business.

    Every configuration mistake (a bad value, an unknown class, a regularizer that does not fit, data
    that cannot be found or downloaded) stops the command before training: exit status 2 and one line
    ``error: <key>: <message>`` on stderr. Lightning's tips and deprecation warnings users cannot act
    on are filtered. Built from Python, it runs the same command as the console script on ``args``
    (``run`` as for ``LightningCLI``; other ``LightningCLI`` arguments override this command's
    defaults), and its ``model``, ``datamodule`` and ``trainer`` can then be inspected.

    Example:
        >>> cli = ProxCLI(["--model.init_args.backbone=mlp", "--trainer.logger=false"], run=False)
        >>> type(cli.model.net).__name__
        'MLP'
    """

    def __init__(self, args: ArgsType = None, run: bool = True, **kwargs: Any) -> None:
        set_parsing_settings(subclasses_enabled=[Regularizer])
        os.environ.setdefault("JSONARGPARSE_DEPRECATION_WARNINGS", "off")
        _quiet_lightning()
        if args is None:
            sys.argv[1:], self._callback_overrides = _take_callback_overrides(
                _expand_short_names(sys.argv[1:])
            )
        elif isinstance(args, list):
            args, self._callback_overrides = _take_callback_overrides(
                _expand_short_names([str(a) for a in args])
            )
        else:
            self._callback_overrides = []
        defaults: dict[str, Any] = {
            "model_class": LightningModule,
            "datamodule_class": LightningDataModule,
            "subclass_mode_model": True,
            "subclass_mode_data": True,
            "auto_configure_optimizers": False,
            "save_config_kwargs": {"overwrite": True},
            "parser_kwargs": {  # the example and the recipes under `--help` and `fit --help` alike
                key: {"epilog": _epilog(), "formatter_class": _RawEpilogFormatter}
                for key in ("fit", "validate", "test")
            }
            | {"epilog": _epilog(), "formatter_class": _RawEpilogFormatter},
            "parser_class": _OneLineErrorParser,
        }
        self._started = _TrainingStarted()
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
                _fail("torch_num_threads", f"must be >= 1, got {threads}")
            torch.set_num_threads(threads)
        _apply_callback_overrides(config, self._callback_overrides)
        try:
            _check_regularizers(_as_dict(config.get("model")), "model")
        except ConfigError as err:
            _fail(err.key, err.message)

    def instantiate_classes(self) -> None:
        config = _as_dict(self.config[self.subcommand] if self.subcommand else self.config)
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            message = _parser_error_message(err)
            text = str(err)
            if "callbacks.callback.Callback" in text:  # a callback's argument, e.g. a command-line override
                overridden = [
                    f"trainer.callbacks.{name}.{arg}"
                    for name, arg, value in self._callback_overrides
                    if f"Got value: {value}" in message or re.search(rf"\b{arg}\b", message)
                ]
                _fail(next(iter(overridden), "trainer.callbacks"), message)
            roots = [r for r in ("model", "data", "trainer") if f'"{r}' in text.split("\n")[0]]
            keys = [_key_for(message, config, r) for r in (roots or ["model", "data"])]
            _fail(next((k for k in keys if "." in k), keys[0]), message)
        except RuntimeError as err:  # e.g. the Trainer refusing two callbacks with the same state_key
            if "callback" not in str(err):
                raise
            _fail("trainer.callbacks", str(err))
        except Exception as err:  # Lightning's MisconfigurationException for Trainer arguments
            if type(err).__name__ != "MisconfigurationException":
                raise
            _fail("trainer", str(err))

    def after_instantiate_classes(self) -> None:
        # Build the param groups now (each regularizer is checked against every weight it takes) so
        # that a bad combination fails before the Trainer starts, naming the key.
        self.trainer.callbacks.append(self._started)
        prox_groups = getattr(self.model, "prox_param_groups", None)
        if callable(prox_groups):
            try:
                prox_groups()
            except ValueError as err:
                msg = str(err)
                key = "model.init_args." + next(
                    (
                        k
                        for k in ("rules", "exclude_ends", "include_types", "include", "exclude")
                        if msg.startswith(k)
                        or f"{k} pattern" in msg
                        or f"{k} entries" in msg
                        or f"{k}=" in msg
                    ),
                    "regularizer",
                )
                _fail(key, msg)

    def _run_subcommand(self, subcommand: str) -> None:
        try:
            super()._run_subcommand(subcommand)
        except (ValueError, TypeError, RuntimeError) as err:
            if self._started.started or isinstance(err, (KeyboardInterrupt,)):
                raise
            if isinstance(err, RuntimeError) and not getattr(err, "prox_config_error", False):
                raise
            if isinstance(err, ConfigError):
                _fail(err.key, err.message)
            _fail(getattr(err, "prox_key", None) or _runtime_key(err), str(err))


class _RawEpilogFormatter(DefaultHelpFormatter):
    """jsonargparse's help format, with the description and epilog lines kept as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return "".join(indent + line for line in text.splitlines(keepends=True))


def _quiet_lightning() -> None:
    """Filter what users cannot act on: Lightning's advertising tips and a deprecation inside Lightning."""
    import logging

    class _NoTips(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return "💡 Tip" not in record.getMessage()

    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _NoTips) for f in logger.filters):
            logger.addFilter(_NoTips())
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated")


def main(args: ArgsType = None, run: bool = True) -> None:
    """Entry point of the ``lightning-prox`` console script (``args`` and ``run`` as for ``LightningCLI``).

    It returns ``None``, so that the script's ``sys.exit(main())`` exits with status 0 and prints
    nothing (a returned object would be printed to stderr and make the exit status 1). To inspect the
    model, datamodule or trainer of a run from Python, build :class:`ProxCLI` with the same arguments.

    Two commands are not LightningCLI's: ``lightning-prox export ...`` turns a checkpoint into a
    physically smaller model (:func:`~lightning_prox.export.command.export_main`) and
    ``lightning-prox lam_find ...`` runs the λ range test (:func:`~lightning_prox.tuning.lam_find_main`).
    """
    argv = sys.argv[1:] if args is None else args
    if isinstance(argv, list) and argv[:1] == ["export"]:
        from .export.command import export_main

        export_main([str(a) for a in argv[1:]])
        return
    if isinstance(argv, list) and argv[:1] == ["lam_find"]:
        from .tuning import lam_find_main

        lam_find_main([str(a) for a in argv[1:]])
        return
    ProxCLI(args, run=run)


if __name__ == "__main__":  # pragma: no cover
    main()
