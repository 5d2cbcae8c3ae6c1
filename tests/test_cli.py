"""The ``lightning-prox`` CLI and the recipes: --print_config, instantiation, fast_dev_run, errors."""

from __future__ import annotations

import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest
import torch

from lightning_prox.cli import ProxCLI, main

RECIPES = sorted((Path(__file__).resolve().parent.parent / "recipes").glob("*.yaml"))
QUICKSTART = RECIPES[0].parent / "quickstart.yaml"
#: recipes whose data ship with an installed package (no download)
OFFLINE = [r for r in RECIPES if "DigitsDataModule" in r.read_text()]


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # lightning_logs/ and data/ land in the temporary directory
    # the thread count is the suite's (tests/conftest.py), reset after each test


def test_torch_num_threads_option_sets_the_thread_count():
    """The suite runs single-threaded (conftest.py); the CLI option still has to take effect."""
    want = 3 if torch.get_num_threads() != 3 else 2
    assert main(["--config", str(QUICKSTART), f"--torch_num_threads={want}"], run=False) is None
    assert torch.get_num_threads() == want


def test_recipes_exist():
    assert QUICKSTART in RECIPES and QUICKSTART in OFFLINE and len(RECIPES) >= 9


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_print_config(recipe, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(recipe), "--print_config"])
    assert exc.value.code in (0, None)
    out = capsys.readouterr().out
    assert "class_path: lightning_prox" in out and "seed_everything:" in out


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_instantiates_model_and_optimizer(recipe):
    """Every class in the recipe is built and the optimizer's param groups are checked (no data needed)."""
    cli = ProxCLI(["--config", str(recipe)], run=False)
    opt = cli.model.configure_optimizers()
    opt = opt["optimizer"] if isinstance(opt, dict) else opt
    regularized = [g for g in opt.param_groups if g.get("regularizer") or g.get("penalty")]
    assert regularized and all(len(g["params"]) > 0 for g in regularized)
    comments = [line for line in recipe.read_text().splitlines() if line.startswith("#")]
    assert comments and f"recipes/{recipe.name}" in "\n".join(comments)  # each recipe says how to run it


@pytest.mark.parametrize("recipe", OFFLINE, ids=lambda p: p.stem)
def test_offline_recipe_fast_dev_run(recipe, capsys):
    cli = ProxCLI(["fit", "--config", str(recipe), "--trainer.fast_dev_run=true"])
    assert cli.trainer.global_step == 1
    assert "sparsity per layer" in capsys.readouterr().out


def test_console_script_exits_zero_and_prints_no_object(monkeypatch, capsys):
    """The installed ``lightning-prox`` entry point, run the way its wrapper runs it: ``sys.exit(main())``.

    A non-None return value would be printed by ``sys.exit`` (``<lightning_prox.cli.ProxCLI object at
    0x...>``) and make the exit status 1.
    """
    (ep,) = entry_points(group="console_scripts", name="lightning-prox")
    argv = ["fit", "--config", str(QUICKSTART), "--trainer.fast_dev_run=true", "--torch_num_threads=1"]
    monkeypatch.setattr(sys, "argv", ["lightning-prox", *argv])
    with pytest.raises(SystemExit) as exc:
        sys.exit(ep.load()())
    assert exc.value.code is None  # exit status 0, nothing printed by sys.exit
    captured = capsys.readouterr()
    assert "sparsity per layer" in captured.out  # it did run
    assert "ProxCLI object" not in captured.out + captured.err


def test_quickstart_logs_and_keeps_few_checkpoints(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cli = ProxCLI(
        [
            "fit",
            "--config",
            str(QUICKSTART),
            "--trainer.max_epochs=5",
            "--data.init_args.max_samples=200",
            "--trainer.enable_progress_bar=false",
        ]
    )
    run_dir = Path(cli.trainer.log_dir).resolve()
    assert run_dir.is_relative_to(tmp_path / "lightning_logs" / "quickstart")
    ckpts = sorted(c.name for c in (run_dir / "checkpoints").glob("*.ckpt"))
    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    acc = [e.value for e in ea.Scalars("val/acc")]
    assert len(acc) == 5
    # three of the best epochs and last.ckpt, not one file per epoch
    assert len(ckpts) == 4 and ckpts[-1] == "last.ckpt"
    kept = sorted(float(name.split("-")[1].removesuffix(".ckpt")) for name in ckpts[:3])
    assert kept == pytest.approx(sorted(acc)[-3:], abs=6e-4)
    state = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert (
        state["epoch"] == 4
        and state["optimizer_states"][0]["param_groups"][0]["regularizer"]["name"] == "GroupLasso"
    )
    assert list(run_dir.glob("events.out.tfevents.*")) and (run_dir / "config.yaml").is_file()


@pytest.mark.parametrize("subcommand", ["validate", "test"])
def test_validate_and_test_subcommands(subcommand):
    cli = ProxCLI(
        [
            subcommand,
            "--config",
            str(QUICKSTART),
            "--seed_everything=3",
            f"--trainer.limit_{'val' if subcommand == 'validate' else 'test'}_batches=2",
        ]
    )
    prefix = "val" if subcommand == "validate" else "test"
    assert f"{prefix}/acc" in cli.trainer.callback_metrics
    assert cli.config[subcommand]["seed_everything"] == 3


def _write(tmp_path, old, new):
    text = QUICKSTART.read_text()
    assert old in text
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace(old, new))
    return str(path)


@pytest.mark.parametrize(
    ("old", "new", "named"),
    [
        ("    regularizer:", "    regularizr:", "regularizr"),
        ("  max_epochs:", "  max_epoch:", "max_epoch"),
        ("lightning_prox.optim.ProxGen", "lightning_prox.optim.ProxGenn", "ProxGenn"),
        ("lightning_prox.regularizers.GroupLasso", "lightning_prox.regularizers.GroupLaso", "GroupLaso"),
        ("        dim: in", "        dim: sideways", "sideways"),
    ],
    ids=["model-key-typo", "trainer-key-typo", "unknown-optimizer", "unknown-regularizer", "bad-value"],
)
def test_bad_recipe_fails_before_training_naming_the_key(tmp_path, capsys, old, new, named):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", _write(tmp_path, old, new)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert named in line and "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_regularizer_that_cannot_apply_fails_before_training(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(QUICKSTART), "--model.init_args.include=[features\\.0\\.bias]"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "model.init_args.regularizer" in err and "net.features.0.bias" in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_bad_selection_regex_names_its_key(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(QUICKSTART), "--model.init_args.exclude=[(]"])
    assert exc.value.code == 2
    assert "model.init_args.exclude" in capsys.readouterr().err


# -- every mistake: exit 2 and one line naming the key ---------------------------------------------
def _run_err(capsys, *args):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(QUICKSTART), "--trainer.logger=false", *args])
    err = capsys.readouterr().err
    return exc.value.code, [line for line in err.splitlines() if line.startswith("error:")], err


@pytest.mark.parametrize(
    ("arg", "key", "words"),
    [
        (
            "--model.init_args.regularizer.init_args.lam=-1",
            "model.init_args.regularizer.init_args.lam",
            "lam must",
        ),
        ("--model.init_args.backbone=resnet1800", "model.init_args.backbone", "resnet1800"),
        ("--model.init_args.optimizer=torch.optim.Adam", "model.init_args.optimizer", "Adam does not apply"),
        ("--data.init_args.batch_size=0", "data.init_args.batch_size", "batch_size must"),
        (
            "--model.init_args.optimizer.init_args.regularizer=lightning_prox.regularizers.L1",
            "model.init_args.regularizer",
            "given twice",
        ),
        (
            "--model.init_args.rules=[{params: nope, regularizer: null}]",
            "model.init_args.rules",
            "matches no",
        ),
        ("--trainer.enable_checkpointing=false", "trainer", "ModelCheckpoint"),
        (
            "--trainer.callbacks+=lightning_prox.callbacks.SparsityMonitor",  # the recipe has one already
            "trainer.callbacks",
            "more than one stateful callback of type `SparsityMonitor`",
        ),
        # type errors found by the parser: the nested key, not jsonargparse's 15-line report
        (
            "--model.init_args.regularizer.init_args.dim=sideways",
            "model.init_args.regularizer.init_args.dim",
            "Got value: sideways",
        ),
        ("--model.init_args.penalty_mode=sub", "model.init_args.penalty_mode", "Got value: sub"),
        ("--data.init_args.batch_size=abc", "data.init_args.batch_size", "Expected a <class 'int'>"),
        ("--model.init_args.lr_scheduler=StepLR", "model.init_args.lr_scheduler", "required: step_size"),
        (
            "--trainer.callbacks.SparsityMonitor.logging_interval=batch",
            "trainer.callbacks.SparsityMonitor.logging_interval",
            "Got value: batch",
        ),
        ("--trainer.max_epochz=3", "trainer.max_epochz", "unrecognized arguments"),
    ],
    ids=[
        "negative-lam",
        "backbone-typo",
        "adam-with-regularizer",
        "batch-size",
        "reg-twice",
        "rule",
        "trainer",
        "duplicate-callback",
        "nested-type",
        "literal",
        "data-type",
        "scheduler-args",
        "callback-override",
        "unknown-option",
    ],
)
def test_every_mistake_exits_2_with_one_error_line_naming_the_key(tmp_path, capsys, arg, key, words):
    code, lines, err = _run_err(capsys, arg)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"error: {key}: ") and words in lines[0], err
    assert "Traceback" not in err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_optimizer_level_regularizer_is_applied():
    cli = ProxCLI(
        [
            "--config",
            str(QUICKSTART),
            "--model.init_args.regularizer=null",
            "--model.init_args.optimizer.init_args.regularizer=lightning_prox.regularizers.L1",
            "--model.init_args.optimizer.init_args.regularizer.init_args.lam=0.01",
            "--trainer.logger=false",
        ],
        run=False,
    )
    from lightning_prox.regularizers import L1

    assert cli.model.regularizer == L1(0.01)
    opt = cli.model.configure_optimizers()
    assert opt.param_groups[0]["regularizer"]["name"] == "L1" and opt.param_groups[0]["lam"] == 0.01
    assert opt.defaults["regularizer"] is None


def test_offline_download_says_where_to_put_the_files(tmp_path, capsys, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network (test)")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    recipe = RECIPES[0].parent / "proxgen_cifar10_vgg16_l1.yaml"
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(recipe), "--trainer.fast_dev_run=true", "--trainer.accelerator=cpu"])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert exc.value.code == 2 and len(lines) == 1, err
    assert lines[0].startswith("error: data.init_args.data_dir: CIFAR10DataModule")
    assert "cifar-10-python.tar.gz" in lines[0] and str(tmp_path / "data") in lines[0]


def test_short_class_names_in_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--model.optimizer.help", "ProxGen"])
    out = capsys.readouterr().out
    assert exc.value.code == 0 and "--optimizer.lr" in out and "--optimizer.preconditioner" in out


@pytest.mark.parametrize("args", [["--help"], ["fit", "--help"]])
def test_help_shows_an_example_and_the_recipes(capsys, args):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr().out
    assert exc.value.code == 0
    assert "lightning-prox fit --config recipes/quickstart.yaml" in out
    assert all(f"recipes/{r.name}" in out for r in RECIPES)


def test_a_listed_callbacks_argument_can_be_overridden_from_the_command_line(capsys):
    recipe = str(RECIPES[0].parent / "proxquant_revised.yaml")
    cli = ProxCLI(
        ["--config", recipe, "--trainer.callbacks.HardQuantization.epoch=3", "--trainer.logger=false"],
        run=False,
    )
    (hq,) = [c for c in cli.trainer.callbacks if type(c).__name__ == "HardQuantization"]
    assert hq.epoch == 3
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(QUICKSTART), "--trainer.callbacks.HardQuantization.epoch=3"])
    assert exc.value.code == 2
    assert "error: trainer.callbacks.HardQuantization.epoch: no HardQuantization" in capsys.readouterr().err


# -- the console script in a fresh process: exit status and what reaches the terminal -------------
def _console_script(tmp_path, *args, **env):
    """``lightning-prox ARGS`` as its installed wrapper runs it (``sys.exit(main())``), in ``tmp_path``."""
    import os
    import subprocess

    (ep,) = entry_points(group="console_scripts", name="lightning-prox")
    module, _, func = ep.value.partition(":")
    code = f"import sys; from {module} import {func}; sys.exit({func}())"
    root = str(QUICKSTART.parent.parent)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]), **env}
    env.pop("COLUMNS", None)
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )


@pytest.mark.slow  # two fresh interpreters importing torch and Lightning (about 10 s each)
def test_console_script_exit_status_and_output_in_a_fresh_process(tmp_path):
    ok = _console_script(tmp_path, "fit", "--config", str(QUICKSTART), "--trainer.fast_dev_run=true")
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "sparsity per layer" in ok.stdout
    noise = [line for line in (ok.stdout + ok.stderr).splitlines() if "Tip" in line or "Warning" in line]
    assert noise == []  # Lightning's tips and warnings users cannot act on are filtered

    # no network: a proxy that refuses every connection, so the download fails the same way everywhere
    refused = {"http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9", "no_proxy": ""}
    recipe = str(QUICKSTART.parent / "proxgen_cifar10_vgg16_l1.yaml")
    bad = _console_script(
        tmp_path,
        "fit",
        "--config",
        recipe,
        "--trainer.fast_dev_run=true",
        "--trainer.accelerator=cpu",
        **refused,
    )
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error:")]
    assert bad.returncode == 2 and len(errors) == 1, bad.stderr[-3000:]
    assert errors[0].startswith("error: data.init_args.data_dir: CIFAR10DataModule")
    assert "cifar-10-python.tar.gz" in errors[0] and str(tmp_path / "data") in errors[0]
    assert "Traceback" not in bad.stderr
