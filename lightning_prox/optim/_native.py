"""The library's native CPU kernels: C++ sources next to this file, built with the system compiler and
registered as ``torch.library`` operators checked against one signature table.

A kernel source is plain C++ with a C ABI (no torch headers): it compiles in a couple of seconds with
the system C++ compiler and is called through :mod:`ctypes` (which releases the GIL during the call).
Each entry point is declared once, in Python, as a :class:`Kernel` (its arguments: per-parameter tensor
lists, single arrays, scalars; which of them it writes). From that one table:

* the C prototypes are generated and force-included into the build (``-include``), so a C++ definition
  that disagrees with the table is a compile error, never a memory corruption at run time;
* an operator ``torch.ops.lightning_prox.<name>`` is defined with the matching schema (written tensors
  marked ``(a!)``, as torch's own in-place ops), whose implementation checks every argument (device,
  dtype, contiguity, the shape of the parameter it goes with, the kernel's own consistency rule)
  and raises a ``ValueError`` naming it before anything reaches C++, then bumps the autograd
  version counters of the written tensors, as an in-place torch op does.

Builds are cached on disk by a hash of the source, the generated prototypes, the compiler and its flags
(``$LIGHTNING_PROX_CACHE_DIR``, else ``$XDG_CACHE_HOME/lightning_prox`` or ``~/.cache/lightning_prox``;
when that is not writable, a directory of the temporary one that only this user can write), so a build is
paid once per machine and announced by one log line; concurrent builds (DDP ranks) each write a private
file and rename it into place. A source that guards its exports with ``LP_WANT(f32)`` / ``LP_WANT(f64)``
is built as two libraries, one per dtype, compiled at the same time (half the wall time of a first build
on two cores). :func:`prefetch` starts a first build in a background thread, which optimizers do at
construction.

The instruction set follows torch's own CPU dispatch (``torch.backends.cpu.get_cpu_capability()``), so
a cache shared by machines of different CPUs keeps one library per instruction set; ``LP_FMA`` is
defined where torch's vectorized kernels use fused multiply-adds, so that kernels can round as they do.
Floating-point contraction is off: every other operation rounds as written. OpenMP is
used when the compiler has it. When no compiler works, :func:`kernels` returns ``None`` after one
warning (one per process when there is no compiler at all) and the callers run their eager paths.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import functools
import logging
import os
import platform
import re
import shlex
import shutil
import subprocess
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.graph import increment_version

__all__ = ["Arg", "Kernel", "kernels", "prefetch"]

_log = logging.getLogger(__name__)

_BASE_FLAGS = (
    "-O3", "-std=c++17", "-shared", "-fPIC", "-ffp-contract=off", "-fno-trapping-math", "-fno-math-errno",
)  # fmt: skip
# -fno-trapping-math lets the compiler if-convert (and so vectorize) selects around floating-point ops;
# results are IEEE as without it (no -ffast-math: inf and NaN keep their meaning, no reassociation);
# -ffp-contract=off: a*b + c rounds twice, as torch's vectorized kernels do (std::fma where they fuse)
_ISA_FLAGS = {
    "AVX2": ("-mavx2", "-mfma", "-DLP_FMA=1"),
    "AVX512": ("-mavx2", "-mfma", "-mavx512f", "-mavx512dq", "-mavx512vl", "-mavx512bw", "-DLP_FMA=1"),
}
_SUFFIX = {torch.float32: ("f32", "float"), torch.float64: ("f64", "double")}
# a Kernel with bits=True: the tensors' bit patterns, as the unsigned integer of their width
_BITS = {
    torch.float16: ("f16", "uint16_t"), torch.bfloat16: ("bf16", "uint16_t"),
    torch.float32: ("f32", "uint32_t"), torch.float64: ("f64", "uint64_t"),
}  # fmt: skip
_C_ARRAY = {torch.float64: "double", torch.int64: "int64_t"}
_LIB = torch.library.Library("lightning_prox", "FRAGMENT")
_IMPLS: dict[str, Any] = {}  # op name -> the ctypes functions by dtype of the latest load


@dataclass(frozen=True)
class Arg:
    """One argument of a :class:`Kernel`, in C order.

    ``kind``: ``"tensors"``, one tensor per parameter (a list, the C side gets an array of pointers;
    each tensor is contiguous, of the parameters' dtype ``T`` and of the shape of the kernel's first
    ``"tensors"`` argument); ``"array"``, one contiguous tensor of ``dtype`` (float64 or int64);
    ``"float"`` (C ``double``) or ``"int"`` (C ``int64_t``). ``out``: the kernel writes it.
    ``optional`` (``"tensors"``): an empty list is allowed and arrives in C as a null pointer.
    """

    name: str
    kind: Literal["tensors", "array", "float", "int"]
    out: bool = False
    dtype: torch.dtype | None = None
    optional: bool = False


@dataclass(frozen=True)
class Kernel:
    """One native entry point: ``torch.ops.lightning_prox.<name>(*args)``, the C function
    ``lp_<name without trailing _>_<f32|f64>(int64_t n, const int64_t* numel, <args>, int nthreads)``
    (``n`` tensors per list, ``numel`` their sizes, ``nthreads`` = ``torch.get_num_threads()``).
    ``check(values)`` (optional) raises ``ValueError`` on a rule the table cannot state (e.g. a layout
    array that must match the tensors' shapes); it gets the arguments by name. ``bits``: the kernel
    reads the tensors' bit patterns (``T`` an unsigned integer of their width), one variant per floating
    dtype, ``_<f16|bf16|f32|f64>``."""

    name: str
    args: tuple[Arg, ...]
    check: Callable[[dict[str, Any]], None] | None = None
    bits: bool = False

    @property
    def variants(self) -> dict[torch.dtype, tuple[str, str]]:
        """dtype -> (C suffix, C element type) of the variants this kernel has."""
        return _BITS if self.bits else _SUFFIX

    @property
    def symbol(self) -> str:
        return "lp_" + self.name.rstrip("_")

    def prototypes(self) -> str:
        """The C declarations of every dtype variant (what the source must define)."""
        out = []
        for suffix, ctype in self.variants.values():
            params = ["int64_t n", "const int64_t* numel"]
            for a in self.args:
                const = "" if a.out else "const "
                if a.kind == "tensors":
                    params.append(f"{const}{ctype}* const* {a.name}")
                elif a.kind == "array":
                    params.append(f"{const}{_C_ARRAY[a.dtype]}* {a.name}")  # type: ignore[index]
                else:
                    params.append(f"{'double' if a.kind == 'float' else 'int64_t'} {a.name}")
            out.append(f'extern "C" void {self.symbol}_{suffix}({", ".join([*params, "int nthreads"])});')
        return "\n".join(out)

    def schema(self) -> str:
        alias = iter("abcdefghijklmnopqrstuvwxyz")
        parts = []
        for a in self.args:
            if a.kind in ("tensors", "array"):
                t = f"Tensor({next(alias)}!)" if a.out else "Tensor"
                parts.append(f"{t}{'[]' if a.kind == 'tensors' else ''} {a.name}")
            else:
                parts.append(f"{a.kind} {a.name}")
        return f"{self.name}({', '.join(parts)}) -> ()"

    def argtypes(self) -> list[Any]:
        types: list[Any] = [ctypes.c_int64, ctypes.POINTER(ctypes.c_int64)]
        kinds = {"tensors": ctypes.POINTER(ctypes.c_void_p), "array": ctypes.c_void_p,
                 "float": ctypes.c_double, "int": ctypes.c_int64}  # fmt: skip
        return [*types, *(kinds[a.kind] for a in self.args), ctypes.c_int]

    def validate(self, values: dict[str, Any]) -> tuple[int, list[Tensor], torch.dtype]:
        """Check ``values`` against the table; returns (n, the first list, T). Raises ``ValueError``."""
        op = f"lightning_prox::{self.name}"
        lists = [a for a in self.args if a.kind == "tensors"]
        ref = list(values[lists[0].name])
        n = len(ref)
        dtype = ref[0].dtype if ref else torch.float32
        if dtype not in self.variants:
            expected = " or ".join(str(d).removeprefix("torch.") for d in self.variants)
            raise ValueError(f"{op}: {lists[0].name}[0] has dtype {dtype}; expected {expected}")
        for a in self.args:
            v = values[a.name]
            if a.kind == "tensors":
                if a.optional and len(v) == 0:
                    continue
                if len(v) != n:
                    raise ValueError(f"{op}: {a.name} has {len(v)} tensors, {lists[0].name} has {n}")
                for i, (t, r) in enumerate(zip(v, ref)):
                    _check_tensor(op, f"{a.name}[{i}]", t, dtype, f"the dtype of {lists[0].name}[0]")
                    if t is not r and t.shape != r.shape:
                        raise ValueError(
                            f"{op}: {a.name}[{i}] has shape {tuple(t.shape)}; it must have the shape of "
                            f"{lists[0].name}[{i}], {tuple(r.shape)}"
                        )
            elif a.kind == "array":
                _check_tensor(op, a.name, v, a.dtype, "its declared dtype")  # type: ignore[arg-type]
        if self.check is not None:
            self.check(values)
        return n, ref, dtype


def _check_tensor(op: str, name: str, t: Any, dtype: torch.dtype, why: str) -> None:
    if not isinstance(t, Tensor):
        raise ValueError(f"{op}: {name} must be a tensor, got {type(t).__name__}")
    if not t.is_cpu:  # cheaper than t.device, which builds an object per tensor
        raise ValueError(f"{op}: {name} is on {t.device}; the native kernels run on CPU tensors only")
    if t.dtype != dtype:
        raise ValueError(f"{op}: {name} has dtype {t.dtype}; expected {dtype} ({why})")
    if not t.is_contiguous():
        raise ValueError(
            f"{op}: {name} is not contiguous (strides {t.stride()}); pass a contiguous tensor "
            "(the kernel walks memory in row-major order)"
        )


def _define(kernel: Kernel) -> None:
    """Define ``torch.ops.lightning_prox.<name>`` once per process; its implementation calls the ctypes
    function of the latest successful load (:data:`_IMPLS`)."""
    if kernel.name in _IMPLS:
        return
    names = [a.name for a in kernel.args]
    written = [a.name for a in kernel.args if a.out]

    def impl(*args: Any) -> None:
        values = dict(zip(names, args))
        n, ref, dtype = kernel.validate(values)
        c_args: list[Any] = [n, (ctypes.c_int64 * max(n, 1))(*(t.numel() for t in ref))]
        for a in kernel.args:
            v = values[a.name]
            if a.kind == "tensors":
                c_args.append((ctypes.c_void_p * len(v))(*(t.data_ptr() for t in v)) if len(v) else None)
            elif a.kind == "array":
                c_args.append(v.data_ptr())
            else:
                c_args.append(v)
        _IMPLS[kernel.name][dtype](*c_args, torch.get_num_threads())
        # the kernel wrote through raw pointers: tell autograd, as an in-place torch op does (a graph
        # that saved a written tensor for backward then fails loudly instead of using the new values)
        for w in written:
            v = values[w]
            if len(v) if isinstance(v, (list, tuple)) else True:
                increment_version(v)

    _LIB.define(kernel.schema())
    # every backend key: a tensor on another device reaches the check above and gets its clear error
    _LIB.impl(kernel.name, impl, "CompositeExplicitAutograd")
    _IMPLS[kernel.name] = {}


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


#: the halves a source that guards its exports with ``LP_WANT(f32)`` / ``LP_WANT(f64)`` is built in, as
#: two libraries compiled at the same time: each instantiates its templates for one dtype, so a first
#: build takes about half the wall time on two cores
_PARTS = ("f32", "f64")


def _part_headers(text: str, header: str) -> list[str]:
    if "LP_WANT(" not in text:
        return [header]
    return [
        header
        + "\n#define LP_WANT(s) LP_WANT_##s\n"
        + "".join(f"#define LP_WANT_{q} {int(q == p)}\n" for q in _PARTS)
        for p in _PARTS
    ]


def _target(
    src: Path, text: str, header: str, cxx: str, version: str, flags: tuple[str, ...], out_dir: Path
) -> Path:
    # a SHA-1 name-based UUID of everything the library depends on: a stable, collision-safe file name
    key = uuid.uuid5(
        uuid.NAMESPACE_URL, "\0".join((text, header, cxx, version, " ".join(flags), platform.machine()))
    ).hex[:20]
    return out_dir / f"{src.stem}-{key}.so"


def _compile(cmd: list[str], src: Path, header: str, flags: tuple[str, ...], target: Path) -> None:
    """Compile ``src`` with the prototypes ``header`` force-included into ``target``; raises on failure."""
    out_dir = target.parent
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out_dir)
    os.close(fd)
    hfd, htmp = tempfile.mkstemp(suffix=".h", dir=out_dir)
    with os.fdopen(hfd, "w") as f:
        f.write("#pragma once\n#include <cstdint>\n" + header + "\n")
    try:
        res = subprocess.run(
            [*cmd, *flags, "-include", htmp, str(src), "-o", tmp], capture_output=True, text=True, timeout=600
        )
        if res.returncode != 0:
            raise RuntimeError(f"{cmd[0]} exited with {res.returncode}: {res.stderr.strip()[-2000:]}")
        os.replace(tmp, target)  # atomic: a concurrent build of the same key writes the same bytes
    finally:
        for path in (tmp, htmp):
            if os.path.exists(path):
                os.unlink(path)


def _with_local_headers(src: Path) -> str:
    """The text of ``src`` and of the local headers it includes (``#include "x.h"`` next to it), so
    that a changed shared header changes the cache key of every library that includes it."""
    text = src.read_text()
    parts = [text]
    for name in re.findall(r'^\s*#\s*include\s+"([^"]+)"', text, flags=re.M):
        header = src.with_name(name)
        if header.is_file():
            parts.append(header.read_text())
    return "\0".join(parts)


def _build(cxx: str, src: Path, header: str, flags: tuple[str, ...], out_dir: Path) -> list[Path]:
    """The libraries of ``src`` (one, or its dtype halves) in ``out_dir``, compiled where missing (cached
    by source, prototypes, compiler and flags; the halves in parallel); raises on failure."""
    cmd = shlex.split(cxx)  # CXX may carry a launcher or flags, e.g. "ccache g++"
    version = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60).stdout
    text = _with_local_headers(src)
    headers = _part_headers(text, header)
    targets = [_target(src, text, h, cxx, version, flags, out_dir) for h in headers]
    missing = [(h, t) for h, t in zip(headers, targets) if not t.exists()]
    if missing:
        _log.warning(
            "building the native kernels %s once for this machine (a few seconds; cached in %s)",
            src.name,
            out_dir,
        )
        with concurrent.futures.ThreadPoolExecutor(len(missing)) as pool:
            for job in [pool.submit(_compile, cmd, src, h, flags, t) for h, t in missing]:
                job.result()
    return targets


def _load(source: str, header: str) -> list[ctypes.CDLL]:
    """Build (or find in the cache) and load ``source``; raises ``RuntimeError`` with the reasons."""
    src = Path(__file__).with_name(source)
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler found (set CXX)")
    flags = (*_BASE_FLAGS, *_isa_flags())
    errors = []
    try:
        out_dir = _out_dir()
        for extra in (("-fopenmp",), ()):  # without OpenMP (e.g. Apple clang) the passes run on one thread
            try:
                return [ctypes.CDLL(str(t)) for t in _build(cxx, src, header, (*flags, *extra), out_dir)]
            except (OSError, RuntimeError, subprocess.SubprocessError) as err:
                errors.append(repr(err))
    except (OSError, RuntimeError) as err:
        errors.append(repr(err))
    raise RuntimeError("; ".join(errors)[-3000:])


def _symbol(libs: list[ctypes.CDLL], name: str) -> Any:
    for lib in libs:
        if hasattr(lib, name):
            return getattr(lib, name)
    raise AttributeError(f"no symbol {name} in the built library")


_NO_COMPILER_WARNED: list[str] = []
#: source -> the thread building it in the background (see :func:`prefetch`)
_PREFETCH: dict[str, threading.Thread] = {}
_PREFETCH_LOCK = threading.Lock()


def _header(table: Sequence[Kernel]) -> str:
    return "\n".join(k.prototypes() for k in table)


def prefetch(source: str, table: Sequence[Kernel]) -> None:
    """Start building ``source`` into the on-disk cache in a background thread (once per process),
    so that a first build overlaps with the work before the first step (data loading, the first
    forward and backward) instead of stalling it. :func:`kernels` waits for it; a failed build is
    silent here and reported by :func:`kernels`. The compiler runs in a subprocess, so the Python
    thread only waits (the GIL is free).

    Example:
        >>> from lightning_prox.optim._ramda_kernels import KERNELS
        >>> prefetch("_ramda_kernels.cpp", KERNELS)
        >>> ops = kernels("_ramda_kernels.cpp", KERNELS)  # waits for the build, then loads it
    """
    with _PREFETCH_LOCK:
        if source in _PREFETCH:
            return
        thread = threading.Thread(
            target=_try_load,
            args=(source, _header(table)),
            name=f"lightning_prox-build-{source}",
            daemon=True,
        )
        _PREFETCH[source] = thread
    thread.start()


def _try_load(source: str, header: str) -> None:
    try:
        _load(source, header)
    except Exception:  # kernels() builds again and reports why
        _log.debug("background build of %s failed", source, exc_info=True)


@functools.cache
def kernels(source: str, table: Sequence[Kernel]) -> SimpleNamespace | None:
    """The operators of the C++ file ``source`` (next to this module) declared by ``table``, as
    attributes by kernel name, or ``None`` (with one warning) when it cannot be built or loaded here.
    Cached per process (``kernels.cache_clear()`` forgets the loaded library).

    Example:
        >>> from lightning_prox.optim._ramda_kernels import KERNELS
        >>> ops = kernels("_ramda_kernels.cpp", KERNELS)  # built once per machine, then loaded from cache
        >>> ops is None or ops.ramda_cbrt_ is torch.ops.lightning_prox.ramda_cbrt_
        True
    """
    pending = _PREFETCH.get(source)
    if pending is not None and pending is not threading.current_thread():
        pending.join()  # a background build of the same library: wait for it rather than build twice
    header = _header(table)
    try:
        libs = _load(source, header)
        # a declared entry point the source does not define: refused here, never called
        funcs = {
            (k.name, d): _symbol(libs, f"{k.symbol}_{suffix}")
            for k in table
            for d, (suffix, _) in k.variants.items()
        }
    except (RuntimeError, AttributeError) as err:
        if _compiler() is None:  # one warning per process, not one per library
            if not _NO_COMPILER_WARNED:
                _NO_COMPILER_WARNED.append(source)
                warnings.warn(
                    "no C++ compiler found (install g++ or set CXX): the native kernels are off and every "
                    "optimizer runs its eager path",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return None
        warnings.warn(f"building {source} failed ({err}); using the eager path", RuntimeWarning, stacklevel=2)
        return None
    ops = SimpleNamespace()
    for k in table:
        _define(k)
        for dtype in k.variants:
            fn = funcs[k.name, dtype]
            fn.argtypes, fn.restype = k.argtypes(), None
            _IMPLS[k.name][dtype] = fn
        setattr(ops, k.name, getattr(torch.ops.lightning_prox, k.name))
    return ops
