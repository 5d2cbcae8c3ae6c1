"""Build and load the library's C++ CPU kernels (``*.cpp`` next to this file) with the system compiler.

A kernel source is plain C++ with a C ABI (no torch headers): it compiles in a couple of seconds with
the compiler that ``torch.compile``'s CPU backend needs anyway, and is called through :mod:`ctypes`
with the data pointers of contiguous tensors (ctypes releases the GIL during the call). Builds are
cached on disk by a hash of the source, the compiler and its flags (``$LIGHTNING_PROX_CACHE_DIR``, else
``$XDG_CACHE_HOME/lightning_prox`` or ``~/.cache/lightning_prox``; when that is not writable, a
directory of the temporary one that only this user can write), so a build is paid once per machine; concurrent builds (DDP ranks) each write a private file and rename it into place.

The instruction set follows torch's own CPU dispatch (``torch.backends.cpu.get_cpu_capability()``), so
a cache shared by machines of different CPUs keeps one library per instruction set. OpenMP is used when
the compiler has it. When no compiler works, :func:`load` returns ``None`` after one warning and the
callers run their eager paths.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
import uuid
import warnings
from pathlib import Path

import torch

__all__ = ["load"]

_BASE_FLAGS = ("-O3", "-std=c++17", "-shared", "-fPIC", "-fno-trapping-math", "-fno-math-errno")
# -fno-trapping-math lets the compiler if-convert (and so vectorize) selects around floating-point ops;
# results are IEEE as without it (no -ffast-math: inf and NaN keep their meaning, no reassociation)
_ISA_FLAGS = {
    "AVX2": ("-mavx2", "-mfma"),
    "AVX512": ("-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw"),
}


def _compiler() -> str | None:
    cxx = os.environ.get("CXX")
    if cxx:
        return cxx
    for name in ("g++", "c++", "clang++"):
        path = shutil.which(name)
        if path:
            return path
    return None


def _cache_dir() -> Path:
    root = os.environ.get("LIGHTNING_PROX_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "lightning_prox"


def _out_dir() -> Path:
    """The cache directory (created), or the private temporary one when it is not writable."""
    path = _cache_dir() / "native"
    try:
        path.mkdir(parents=True, exist_ok=True)
        if os.access(path, os.W_OK):
            return path
    except OSError:
        pass
    return _private_tmp_dir()


def _private_tmp_dir() -> Path:
    """The fallback cache in the shared temporary directory: ours alone (created 0700, owned by this
    user, not group/world-writable), since a library found there is loaded and run."""
    path = Path(tempfile.gettempdir()) / f"lightning_prox-{getattr(os, 'getuid', lambda: 0)()}"
    path.mkdir(mode=0o700, exist_ok=True)
    st = path.stat()
    if hasattr(os, "getuid") and (st.st_uid != os.getuid() or st.st_mode & 0o022):
        raise RuntimeError(f"{path} is not private to this user; not loading code from it")
    return path


def _isa_flags() -> tuple[str, ...]:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return ()
    return _ISA_FLAGS.get(torch.backends.cpu.get_cpu_capability(), ())


def _build(cxx: str, src: Path, flags: tuple[str, ...], out_dir: Path) -> Path:
    """Compile ``src`` into ``out_dir`` (cached by source, compiler and flags); raises on failure."""
    cmd = shlex.split(cxx)  # CXX may carry a launcher or flags, e.g. "ccache g++"
    version = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60).stdout
    # a SHA-1 name-based UUID of everything the library depends on: a stable, collision-safe file name
    key = uuid.uuid5(
        uuid.NAMESPACE_URL, "\0".join((src.read_text(), cxx, version, " ".join(flags), platform.machine()))
    ).hex[:20]
    target = out_dir / f"{src.stem}-{key}.so"
    if target.exists():
        return target
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        res = subprocess.run([*cmd, *flags, str(src), "-o", tmp], capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise RuntimeError(f"{cxx} exited with {res.returncode}: {res.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


@functools.cache
def load(source: str) -> ctypes.CDLL | None:
    """The compiled library of the C++ file ``source`` (next to this module), or ``None`` (with one
    warning) when it cannot be built or loaded here. Cached per process.

    Example:
        >>> lib = load("_ramda_kernels.cpp")  # builds once per machine (about 3 s), then loads from cache
        >>> lib is None or hasattr(lib, "lp_ramda_cbrt_f32")
        True
    """
    src = Path(__file__).with_name(source)
    cxx = _compiler()
    if cxx is None:
        warnings.warn(
            f"no C++ compiler found (set CXX) for {source}; using the eager path",
            RuntimeWarning,
            stacklevel=2,
        )
        return None
    flags = (*_BASE_FLAGS, *_isa_flags())
    errors = []
    try:
        out_dir = _out_dir()
        for extra in (("-fopenmp",), ()):  # without OpenMP (e.g. Apple clang) the passes run on one thread
            try:
                return ctypes.CDLL(str(_build(cxx, src, (*flags, *extra), out_dir)))
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                errors.append(repr(err))
    except (OSError, RuntimeError) as err:
        errors.append(repr(err))
    warnings.warn(
        f"building {source} failed ({'; '.join(errors)[-3000:]}); using the eager path",
        RuntimeWarning,
        stacklevel=2,
    )
    return None
