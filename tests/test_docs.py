"""The documentation is tested: every Python example runs, every command names files that exist,
every page is reachable, and the site (with the API reference generated from the docstrings) builds
with ``mkdocs build --strict``.

Conventions the pages follow (other authors rely on them):

- Every fenced ```` ```python ```` block of ``README.md`` and ``docs/*.md`` is executed. The blocks of one
  page run in order in one namespace (a later block may use names of an earlier one), in a fresh
  temporary working directory that holds a link to the repository's ``recipes/`` (so examples may name
  ``recipes/quickstart.yaml`` as they would from the repository root).
- A block that cannot run here (it needs a download, a GPU, or it is not code but a signature list) is
  preceded by the line ``<!-- docs-test: skip (reason) -->``, with a non-empty reason.
- ```` ```bash ```` blocks are not executed, but every ``lightning-prox ... --config FILE`` must name an
  existing file, and so must ``python FILE.py``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
SKIP_RE = re.compile(r"^<!--\s*docs-test:\s*skip\s*(?:\((?P<reason>[^)]*)\))?\s*-->\s*$")
FENCE_RE = re.compile(r"^(?P<indent> *)```(?P<lang>[\w+-]*)\s*$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    skip: str | None  # the skip reason, or None when the block runs


def _blocks(page: Path) -> list[Block]:
    lines = page.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    pending_skip: str | None = None
    while i < len(lines):
        line = lines[i]
        skip = SKIP_RE.match(line.strip())
        if skip:
            reason = (skip.group("reason") or "").strip()
            if not reason:
                raise AssertionError(f"{page.name}:{i + 1}: a docs-test skip marker needs a reason: {line!r}")
            pending_skip = reason
            i += 1
            continue
        fence = FENCE_RE.match(line)
        if fence:
            indent = len(fence.group("indent"))
            start = i
            body: list[str] = []
            i += 1
            while i < len(lines) and not re.match(r"^ *```\s*$", lines[i]):
                body.append(lines[i][indent:] if lines[i][:indent].strip() == "" else lines[i])
                i += 1
            if i == len(lines):
                raise AssertionError(f"{page.name}:{start + 1}: unclosed code block")
            blocks.append(Block(page, start + 1, fence.group("lang"), "\n".join(body) + "\n", pending_skip))
            pending_skip = None
            i += 1
            continue
        if pending_skip is not None and line.strip():
            raise AssertionError(
                f"{page.name}:{i + 1}: a docs-test skip marker must come right before a code block"
            )
        i += 1
    if pending_skip is not None:
        raise AssertionError(f"{page.name}: a docs-test skip marker at the end of the page skips nothing")
    return blocks


def _rel(page: Path) -> str:
    return str(page.relative_to(ROOT))


@pytest.mark.parametrize("page", PAGES, ids=_rel)
def test_python_blocks_run(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = [b for b in _blocks(page) if b.lang == "python"]
    runnable = [b for b in blocks if b.skip is None]
    if not runnable:
        pytest.skip(f"{_rel(page)} has no runnable Python block")
    (tmp_path / "recipes").symlink_to(ROOT / "recipes", target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # A real module in sys.modules: dataclasses and pickling look a class's module up by name.
    module = types.ModuleType("__docs__")
    monkeypatch.setitem(sys.modules, "__docs__", module)
    namespace = module.__dict__
    for block in runnable:
        code = compile(block.code, f"{_rel(page)}:{block.line}", "exec")
        try:
            exec(code, namespace)
        except Exception as err:  # name the block: the traceback's file name is page:line as well
            raise AssertionError(f"the Python block at {_rel(page)}:{block.line} failed: {err!r}") from err


def test_skip_markers_have_reasons_and_precede_a_block(tmp_path: Path) -> None:
    # _blocks raises on a marker without a reason or one that is not followed by a block; this also
    # checks the parser against a page written for the purpose.
    for page in PAGES:
        _blocks(page)
    good = "<!-- docs-test: skip (needs the CIFAR-10 download) -->\n```python\nraise SystemExit\n```\n"
    bad_reason = "<!-- docs-test: skip -->\n```python\npass\n```\n"
    dangling = "<!-- docs-test: skip (why) -->\nsome prose\n```python\npass\n```\n"
    tmp = tmp_path / "page.md"
    tmp.write_text(good)
    (block,) = _blocks(tmp)
    assert block.skip == "needs the CIFAR-10 download" and block.lang == "python"
    for text in (bad_reason, dangling):
        tmp.write_text(text)
        with pytest.raises(AssertionError, match="skip marker"):
            _blocks(tmp)


def _named_files(line: str) -> list[str]:
    """Files a shell command line names: ``--config FILE`` of ``lightning-prox`` and ``python FILE.py``."""
    files: list[str] = []
    words = line.split("#", 1)[0].split()
    if "lightning-prox" in words:
        for k, word in enumerate(words):
            if word == "--config" and k + 1 < len(words):
                files.append(words[k + 1])
            elif word.startswith("--config="):
                files.append(word.split("=", 1)[1])
    for k, word in enumerate(words[:-1]):
        if word == "python" and words[k + 1].endswith(".py"):
            files.append(words[k + 1])
    return files


def test_bash_blocks_name_existing_files() -> None:
    checked = 0
    for page in PAGES:
        for block in _blocks(page):
            if block.lang not in ("bash", "sh", "console"):
                continue
            for line in block.code.splitlines():
                for name in _named_files(line.removeprefix("$ ")):
                    checked += 1
                    assert (ROOT / name).is_file(), (
                        f"{_rel(page)}:{block.line}: the command {line.strip()!r} names {name}, which does not exist"
                    )
    assert checked >= 10  # the quickstart, the paper recipes and the benchmark scripts are all named


def test_named_files_parser() -> None:
    assert _named_files("lightning-prox fit --config recipes/a.yaml --print_config  # x") == [
        "recipes/a.yaml"
    ]
    assert _named_files("lightning-prox fit --config=recipes/b.yaml") == ["recipes/b.yaml"]
    assert _named_files("python benchmarks/x.py --plot docs/img/y.png") == ["benchmarks/x.py"]
    assert _named_files("tensorboard --logdir lightning_logs") == []


def _links(page: Path) -> set[str]:
    text = page.read_text(encoding="utf-8")
    return {m.split("#", 1)[0] for m in re.findall(r"\]\(([^)\s]+)\)", text)}


def test_every_page_is_linked_from_readme_and_getting_started() -> None:
    pages = sorted(p.name for p in DOCS.glob("*.md"))
    readme = _links(ROOT / "README.md")
    start = _links(DOCS / "getting_started.md")
    missing_readme = [p for p in pages if f"docs/{p}" not in readme]
    missing_start = [p for p in pages if p != "getting_started.md" and p not in start]
    assert not missing_readme, (
        f"README.md links no page {missing_readme}: add them to its Documentation table"
    )
    assert not missing_start, (
        f"docs/getting_started.md links no page {missing_start}: add them to 'Where to go next'"
    )


def test_every_page_is_in_the_mkdocs_nav() -> None:
    nav = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s*-\s*[^:\n]+:\s*(\S+\.md)\s*$", nav, re.M))
    missing = sorted(p.name for p in DOCS.glob("*.md") if p.name not in listed)
    assert not missing, f"mkdocs.yml's nav lists no page {missing}: add them"
    assert all((DOCS / p).is_file() for p in listed), f"mkdocs.yml lists pages that do not exist: {listed}"


INTERNAL = re.compile(r"(?<!hex)digest|DESIGN\.md|STYLE\.md|shared/|seed_(?!everything)|lab note", re.I)


def test_user_documents_cite_no_internal_notes() -> None:
    files = [
        ROOT / "README.md",
        ROOT / "mkdocs.yml",
        *(ROOT / "lightning_prox").rglob("*.py"),  # docstrings are the API reference
        *DOCS.rglob("*.md"),
        *DOCS.rglob("*.py"),
        *(ROOT / "recipes").glob("*.yaml"),
        *(ROOT / "benchmarks").glob("*.py"),
        *(ROOT / "benchmarks").glob("*.md"),
    ]
    hits = []
    for f in files:
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1):
            if INTERNAL.search(line):
                hits.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()[:100]}")
    assert not hits, (
        "user documents cite internal notes; cite the paper or the public code instead:\n" + "\n".join(hits)
    )


def test_pyproject_description_lists_only_existing_methods() -> None:
    import lightning_prox.optim as optim

    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (description,) = re.findall(r'^description = "(.*)"$', text, re.M)
    for name in ("SR2", "PathProx"):
        if name in description:
            assert hasattr(optim, name), (
                f"pyproject's description names {name}, which lightning_prox.optim lacks"
            )


@pytest.mark.slow
def test_mkdocs_build_strict(tmp_path: Path) -> None:
    if shutil.which("mkdocs") is None and not _has_module("mkdocs"):
        pytest.fail('mkdocs is not installed: pip install -e ".[dev]" (or ".[docs]")')
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("MKDOCS_CONFIG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    api = (tmp_path / "site" / "api" / "index.html").read_text(encoding="utf-8")
    for name in ("ProxGen", "ProxSGD", "RAMDA", "GroupLasso", "SparsityMonitor", "ProxMixin"):
        assert name in api, f"the API reference does not document {name}"


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
