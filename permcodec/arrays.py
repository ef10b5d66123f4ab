"""The array operations of the bit-exact path, on numpy or on torch, so each transform is written once.

Regeneration, the block views and the index schemes' decoders are written
against this small namespace. The CPU decoder runs them on numpy, so that
``permcodec decode`` to .safetensors never imports torch; a torch device
(CUDA, or the CPU on request) runs the very same code on torch tensors. Both
do IEEE-754 basic operations one at a time, so they give the same bits, and
the tests compare them.

Only what the path needs is here: dtypes, conversions, bit views, creation,
``where``/``stack``/``cat``/``sqrt``, and row-wise sort, gather and scatter.
Operators (``+ * >> & | ^ <``), ``reshape`` and slicing are shared by both.
"""

from __future__ import annotations

import numpy as np

from . import parallel


class NumpyArrays:
    """numpy arrays in host memory (the CPU decoder; no torch import)."""

    name = "numpy"
    bool = np.bool_
    int32 = np.int32
    int64 = np.int64
    float32 = np.float32
    float64 = np.float64

    def from_numpy(self, array: np.ndarray):
        return array

    def to_numpy(self, x) -> np.ndarray:
        return x

    def tensor(self, values, dtype):
        return np.asarray(values, dtype=dtype)

    def astype(self, x, dtype):
        return x.astype(dtype)

    def bits_as(self, x, dtype):
        """The same bytes read as ``dtype`` (of the same width)."""
        return (x if x.flags.c_contiguous else x.copy(order="C")).view(dtype)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def full(self, shape, value, dtype):
        return np.full(shape, value, dtype=dtype)

    def full_like(self, x, value):
        return np.full_like(x, value)

    def arange(self, n: int):
        return np.arange(n, dtype=np.int64)

    def where(self, condition, a, b):
        return np.where(condition, a, b)

    def stack(self, arrays, axis: int):
        return np.stack(arrays, axis=axis)

    def cat(self, arrays, axis: int):
        return np.concatenate(arrays, axis=axis)

    def sqrt(self, x):
        return np.sqrt(x)

    def cumsum(self, x, axis: int):
        return np.cumsum(x, axis=axis)

    def repeat(self, values, counts):
        return np.repeat(values, counts)

    def broadcast_rows(self, x, rows: int, n: int):
        """[n] or [rows, n] as [rows, n] (a view)."""
        return np.broadcast_to(x, (rows, n))

    def argsort_rows(self, x):
        """Each row's positions in ascending order of its values, ties by position (a stable sort)."""
        return by_row_ranges(_argsort_rows_into, np.empty(x.shape, dtype=np.int64), x)

    def sort_rows(self, x):
        """Each row sorted ascending. Ties may land in any order: this is for pools, whose equal values have
        equal bits (they hold no -0.0 or NaN), so numpy's unstable SIMD sort (10x the stable one) is exact."""
        return by_row_ranges(_sort_rows_into, np.empty(x.shape, dtype=x.dtype), x)

    def take_rows(self, x, index):
        """out[r, j] = x[r, index[r, j]]."""
        return by_row_ranges(_take_rows_into, np.empty(index.shape, dtype=x.dtype), x, index)

    def put_rows(self, index, values):
        """out with out[r, index[r, j]] = values[r, j], each row's ``index`` a permutation."""
        return by_row_ranges(_put_rows_into, np.empty(values.shape, dtype=values.dtype), index, values)

    def put_rows_into(self, out, index, values):
        """out[r, index[r, j]] = values[r, j] (``values`` may be a scalar), in place; returns ``out``."""
        np.put_along_axis(out, index, values, axis=1)
        return out

    def add_at_rows(self, shape, index, dtype):
        """Counts: out[r, k] = number of j with index[r, j] == k, for out of ``shape``."""
        rows, width = shape
        flat = (index + np.arange(rows, dtype=np.int64)[:, None] * width).reshape(-1)
        return np.bincount(flat, minlength=rows * width).astype(dtype).reshape(rows, width)

    def all_rows(self, x):
        return x.all(axis=1)


def by_row_ranges(fill, out, *inputs):
    """``fill(*inputs, out, lo, hi)`` over row ranges on the shared thread pool (numpy's sorts and gathers release
    the GIL), in one piece where the arrays are small; returns ``out``."""
    rows = out.shape[0]
    parallel.run_over(fill, rows, *inputs, out, work=out.size)
    return out


def _argsort_rows_into(x, out, lo, hi):
    rows = x[lo:hi]
    if rows.dtype == np.float32 and not np.isnan(rows).any():
        out[lo:hi] = _argsort_by_keys(rows)
    else:
        out[lo:hi] = np.argsort(rows, axis=1, kind="stable")


def _argsort_by_keys(rows):
    """The stable argsort of float32 rows without NaN, by an unstable sort of distinct uint64 keys: the value's
    order-preserving 32 bits above the position (3x faster than numpy's stable argsort of floats)."""
    bits = (rows + np.float32(0.0)).view(np.int32)  # + 0.0 turns -0.0 into +0.0, which compares equal to it
    ordered = (bits ^ ((bits >> 31) | np.int32(-2 ** 31))).view(np.uint32)  # negatives reversed, below positives
    keys = (ordered.astype(np.uint64) << np.uint64(32)) | np.arange(rows.shape[1], dtype=np.uint64)
    keys.sort(axis=1)
    return (keys & np.uint64(0xFFFFFFFF)).astype(np.int64)


def _sort_rows_into(x, out, lo, hi):
    out[lo:hi] = x[lo:hi]
    out[lo:hi].sort(axis=1)


def _take_rows_into(x, index, out, lo, hi):
    out[lo:hi] = np.take_along_axis(x[lo:hi], index[lo:hi], axis=1)


def _put_rows_into(index, values, out, lo, hi):
    np.put_along_axis(out[lo:hi], index[lo:hi], values[lo:hi], axis=1)


class TorchArrays:
    """torch tensors on one device (CUDA, or the CPU when asked for)."""

    name = "torch"

    def __init__(self, device="cpu"):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.bool, self.int32, self.int64 = torch.bool, torch.int32, torch.int64
        self.float32, self.float64 = torch.float32, torch.float64

    def from_numpy(self, array: np.ndarray):
        return self.torch.from_numpy(array).to(self.device)

    def to_numpy(self, x) -> np.ndarray:
        return x.cpu().numpy()

    def tensor(self, values, dtype):
        return self.torch.tensor(values, dtype=dtype, device=self.device)

    def astype(self, x, dtype):
        return x.to(dtype)

    def bits_as(self, x, dtype):
        return x.contiguous().view(dtype)

    def empty(self, shape, dtype):
        return self.torch.empty(shape, dtype=dtype, device=self.device)

    def zeros(self, shape, dtype):
        return self.torch.zeros(shape, dtype=dtype, device=self.device)

    def full(self, shape, value, dtype):
        return self.torch.full(shape, value, dtype=dtype, device=self.device)

    def full_like(self, x, value):
        return self.torch.full_like(x, value)

    def arange(self, n: int):
        return self.torch.arange(n, dtype=self.torch.int64, device=self.device)

    def where(self, condition, a, b):
        return self.torch.where(condition, a, b)

    def stack(self, arrays, axis: int):
        return self.torch.stack(arrays, dim=axis)

    def cat(self, arrays, axis: int):
        return self.torch.cat(arrays, dim=axis)

    def sqrt(self, x):
        return self.torch.sqrt(x)

    def cumsum(self, x, axis: int):
        return self.torch.cumsum(x, dim=axis)

    def repeat(self, values, counts):
        return self.torch.repeat_interleave(values, counts)

    def broadcast_rows(self, x, rows: int, n: int):
        return x.to(self.device).expand(rows, n)

    def argsort_rows(self, x):
        if x.numel() == 0:  # torch sizes its work by the row length even with no rows
            return self.torch.empty(x.shape, dtype=self.torch.int64, device=x.device)
        return self.torch.argsort(x, dim=1, stable=True)

    def sort_rows(self, x):
        return self.torch.sort(x, dim=1, stable=True).values

    def take_rows(self, x, index):
        return self.torch.gather(x, 1, index)

    def put_rows(self, index, values):
        return self.put_rows_into(self.torch.empty(values.shape, dtype=values.dtype, device=values.device),
                                  index, values)

    def put_rows_into(self, out, index, values):
        return out.scatter_(1, index, values)

    def add_at_rows(self, shape, index, dtype):
        out = self.torch.zeros(shape, dtype=dtype, device=index.device)
        return out.scatter_add_(1, index, self.torch.ones_like(index, dtype=dtype))

    def all_rows(self, x):
        return x.all(dim=1)


NUMPY = NumpyArrays()


def of(x):
    """The namespace of an array: numpy for an ndarray, torch on its device for a tensor."""
    if isinstance(x, np.ndarray):
        return NUMPY
    return TorchArrays(x.device)


def on(device):
    """The namespace that builds arrays for ``device``: an Arrays object as it is, else torch on that device."""
    if isinstance(device, (NumpyArrays, TorchArrays)):
        return device
    return TorchArrays(device)
