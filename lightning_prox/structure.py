"""How a tensor splits into groups, parameter selection, and sparsity statistics (torch only).

Group convention (DESIGN.md §3): for a weight shaped ``[out, in, *k]`` (conv), ``[out, in]``
(linear, LSTM), ``dim="in"`` makes one group per input channel/feature, the slice ``x[:, j, ...]``,
and ``dim="out"`` one group per filter/neuron, the slice ``x[j, ...]``.

Group reductions never copy: they reduce over :func:`group_reduce_dims` with ``keepdim=True`` so the
result broadcasts back against the tensor.
"""

from __future__ import annotations

from typing import Literal

from torch import Tensor

__all__ = ["GroupDim", "check_groupable", "group_reduce_dims", "group_size", "num_groups"]

GroupDim = Literal["in", "out"]


def check_groupable(x: Tensor | tuple[int, ...], dim: str) -> None:
    """Raise ``ValueError`` when ``dim`` is not a grouping or ``x`` cannot be split by it."""
    shape = tuple(x.shape) if isinstance(x, Tensor) else tuple(x)
    if dim not in ("in", "out"):
        raise ValueError(f"group dim must be 'in' or 'out', got {dim!r}")
    need = 2 if dim == "in" else 1
    if len(shape) < need:
        raise ValueError(
            f"grouping dim={dim!r} needs a tensor with at least {need} dimensions "
            f"([out, in, *k] for conv, [out, in] for linear/LSTM), got shape {shape}; "
            "exclude this parameter from the regularized set or use an elementwise regularizer"
        )


def group_reduce_dims(ndim: int, dim: str) -> tuple[int, ...]:
    """Dimensions to reduce over (keepdim=True) to get one value per group."""
    if dim == "out":
        return tuple(range(1, ndim))
    return (0, *range(2, ndim))


def num_groups(x: Tensor, dim: str) -> int:
    """Number of groups of ``x`` under grouping ``dim``."""
    check_groupable(x, dim)
    return x.shape[0] if dim == "out" else x.shape[1]


def group_size(x: Tensor, dim: str) -> int:
    """Number of entries in each group of ``x`` under grouping ``dim``."""
    n = num_groups(x, dim)
    return x.numel() // n if n else 0
