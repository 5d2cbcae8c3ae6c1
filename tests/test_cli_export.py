"""``lightning-prox export``: a CLI checkpoint in, a smaller model with the same outputs out; mistakes exit 2."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torch_pruning")

from lightning_prox.cli import ProxCLI, main
from lightning_prox.models import ImageClassifier

QUICKSTART = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quickstart checkpoint written by the CLI, with exact zero groups (a large λ, a short run)."""
    root = tmp_path_factory.mktemp("run")
    ProxCLI(
        [
            "fit",
            "--config",
            str(QUICKSTART),
            "--trainer.max_epochs=2",
            "--data.init_args.max_samples=400",
            "--trainer.enable_progress_bar=false",
            f"--trainer.logger.init_args.save_dir={root}",
            "--model.init_args.regularizer.init_args.lam=2e-3",
        ]
    )
    (path,) = sorted(root.rglob("01-*.ckpt"))
    return path


def _errors(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[str], str]:
    with pytest.raises(SystemExit) as exc:
        main(["export", *args])
    err = capsys.readouterr().err
    return exc.value.code, [line for line in err.splitlines() if line.startswith("error:")], err


def test_export_writes_a_smaller_model_with_the_same_outputs(ckpt, tmp_path, capsys):
    out, onnx_path, report = tmp_path / "small.pt", tmp_path / "small.onnx", tmp_path / "report.json"
    main(
        [
            "export",
            "--ckpt_path",
            str(ckpt),
            "--output",
            str(out),
            "--onnx",
            str(onnx_path),
            "--report",
            str(report),
        ]
    )
    printed = capsys.readouterr().out
    assert "parameters" in printed and "compact model:" in printed

    net = ImageClassifier.load_from_checkpoint(ckpt, map_location="cpu").net.eval()
    compact = torch.load(out, weights_only=False).eval()
    n_before = sum(p.numel() for p in net.parameters())
    n_after = sum(p.numel() for p in compact.parameters())
    # the quickstart's zero input channels of features.3 / input features of classifier.3 are gone
    zero_in = int((net.classifier[3].weight.abs().sum(0) == 0).sum())
    assert zero_in > 0 and n_after < n_before
    assert compact.classifier[3].in_features == net.classifier[3].in_features - zero_in
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(compact(x), net(x), rtol=1e-5, atol=1e-5)

    data = json.loads(report.read_text())
    assert data["params"] == [n_before, n_after]
    assert {"macs", "file_bytes", "latency_ms", "layers"} <= data.keys()
    assert data["onnx"]["max_rel_diff"] <= 1e-5
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    torch.testing.assert_close(torch.from_numpy(y), net(x).detach(), rtol=1e-4, atol=1e-5)


def test_export_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--help"])
    assert exc.value.code == 0
    assert "--ckpt_path" in capsys.readouterr().out


def test_top_level_help_mentions_export(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    assert "lightning-prox export" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("extra", "option", "words"),
    [
        (["--input_shape", "3,x"], "--input_shape", "comma-separated"),
        (["--input_shape", "3,32,32"], "--input_shape", "cannot run on inputs"),
        (["--model_class", "torch.nn.Linear"], "--model_class", "not a LightningModule"),
        (["--model_class", "no_such_package.Model"], "--model_class", "cannot import"),
        (["--batch", "0"], "--batch", "positive"),
        (["--rtol", "2"], "--rtol", "[0, 1)"),
    ],
    ids=["shape-syntax", "shape-misfit", "not-a-module", "no-module", "batch", "rtol"],
)
def test_every_mistake_exits_2_with_one_line(ckpt, tmp_path, capsys, extra, option, words):
    out = tmp_path / "small.pt"
    code, lines, err = _errors(capsys, "--ckpt_path", str(ckpt), "--output", str(out), *extra)
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith(f"error: {option}: ") and words in lines[0], err
    assert "Traceback" not in err and not out.exists()


def test_missing_and_broken_checkpoints(tmp_path, capsys):
    code, lines, _ = _errors(capsys, "--ckpt_path", str(tmp_path / "none.ckpt"), "--output", "x.pt")
    assert code == 2 and lines == [f"error: --ckpt_path: no such file: {tmp_path / 'none.ckpt'}"]
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint")
    code, lines, _ = _errors(capsys, "--ckpt_path", str(bad), "--output", "x.pt")
    assert code == 2 and len(lines) == 1 and "not a loadable checkpoint" in lines[0]


def test_a_class_outside_lightning_prox_is_imported_only_when_named(ckpt, tmp_path, capsys, monkeypatch):
    # a user's own module: a subclass of ImageClassifier in a package of theirs
    (tmp_path / "my_models_for_export.py").write_text(
        "from lightning_prox.models import ImageClassifier\n\nclass MyClassifier(ImageClassifier):\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    state = torch.load(ckpt, weights_only=True)
    state["hyper_parameters"]["_class_path"] = "my_models_for_export.MyClassifier"
    mine = tmp_path / "mine.ckpt"
    torch.save(state, mine)
    code, lines, _ = _errors(capsys, "--ckpt_path", str(mine), "--output", str(tmp_path / "a.pt"))
    assert code == 2 and len(lines) == 1
    assert lines[0].startswith(
        "error: --model_class: the checkpoint names 'my_models_for_export.MyClassifier'"
    )
    assert "my_models_for_export" not in sys.modules  # nothing was imported behind the user's back
    out = tmp_path / "b.pt"
    main(
        [
            "export",
            "--ckpt_path",
            str(mine),
            "--output",
            str(out),
            "--model_class",
            "my_models_for_export.MyClassifier",
        ]
    )
    assert out.is_file()
    monkeypatch.delitem(sys.modules, "my_models_for_export")
