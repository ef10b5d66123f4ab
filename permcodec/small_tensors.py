"""Many small permuted tensors decoded in two compiled calls, on the CPU: ``decode_all``'s fast lane.

A ResNet's 3x3 convolutions hold a few thousand weights each. Decoded one at a
time (``decoder.decode_permuted``), such a tensor costs about 100 us of Python
around 30 us of kernels, and the Python holds the GIL, so a file of many of them
was bound by it. A batch takes the tensors of the commonest kinds (``exact``
or ``delta``, whole rows, a uniform-family pool) and draws and decodes them in
two ``_small_numba`` calls, one on the shared pool and one in the caller (a
``Pack`` each); Python only checks each section (and inflates a ``delta``
one) before, and each hash after. The pool's pack is built and started first,
so the caller builds its own while the pool decodes. A tensor whose section,
lanes or hash fails comes back as None, and the caller decodes it the
one-tensor way, which raises its error: so the errors, and which one a file
raises first, are those of one tensor at a time.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from . import backend, parallel
from .bits import sha256_of
from .errors import PermcodecError
from .format import container, rans
from .format.schemes import delta
from .init.distributions import UNIFORM_FAMILY, uniform_bounds
from .init.initspec import TensorInit
from .init.philox import MASK32
from .init.rng import compiled_kernel
from .rows import row_shape

# A tensor of fewer than TENSOR_LIMIT elements joins the batch: the one-tensor path would run its kernels on one
# thread too (``parallel.run_over`` splits from PARALLEL_MIN on), and in a thread of its own beside the caller the
# GIL kept it waiting for milliseconds between them. From 2^16 to 2^18: Conv7's decode 9.3 -> 6.9 ms.
TENSOR_LIMIT = parallel.PARALLEL_MIN
SCHEMES = ("exact", "delta")
# The pool's share of a batch's values. Beside the caller's other work (the file's other tensors) it takes more:
# ResNet-50 (CIFAR) decodes as fast from 0.45 to 0.75. With nothing else to decode the two halve it: Conv7's
# decode took 0.92x the time with 0.5 as with 0.6 (1 and 10 epochs, dealt by pool_first).
POOL_SHARE = 0.6
POOL_SHARE_ALONE = 0.5

_batch_calls = 0  # batches started in this process; tests read it through batch_calls()
_count_lock = threading.Lock()


def batch_calls() -> int:
    return _batch_calls


def batchable(record: dict, init: TensorInit | None) -> bool:
    """Whether a batch decodes this (checked) record: whole-row ``exact`` or ``delta`` over a uniform-family pool,
    with fewer than TENSOR_LIMIT elements, at least one row and rows of two or more (shorter ones have nothing
    coded)."""
    if init is None or "block" in record or record["scheme"] not in SCHEMES or init.dist not in UNIFORM_FAMILY:
        return False
    rows, n = row_shape(record["shape"])
    return rows >= 1 and n >= 2 and rows * n < TENSOR_LIMIT


def compiled_here(elements: int) -> bool:
    """Whether the batch kernel serves ``elements`` weights in this process: with the numba backend, where the
    one-tensor path would draw them compiled too (``rng.compiled_kernel``)."""
    return backend.chosen() == "numba" and compiled_kernel(elements // 2 + 1) is not None


class Pack:
    """Tensors ``slots`` of a batch's items packed for one ``_small_numba.decode_uniform`` call: their tables,
    rANS words, byte planes and one output buffer. A tensor whose section or lanes fail a check is left out
    (``members`` lists the others), for the one-tensor path to raise its error."""

    def __init__(self, items: list[tuple[dict, bytes, TensorInit]], slots: list[int]):
        self.members: list[int] = []  # the item index of each packed tensor
        self.spans: list[tuple[int, int]] = []  # its first value and value count in ``values``
        self.table: list[tuple[int, ...]] = []
        self.bounds: list[tuple[float, float]] = []
        self.word_bytes: list[memoryview] = []  # the exact tensors' rANS words
        self.lane_lengths: list[int] = []  # the word count of each of their lanes, tensor after tensor
        self.plane_bytes: list[bytes] = []  # the delta tensors' byte planes
        self.value_count = self.plane_count = 0
        self.values = self.kernel_args = None
        self.group_count = 0  # the kernel's stream groups, once ``prepare`` planned them
        self.passed: list[bool] = []  # whether each packed tensor passed its decoding and hash checks
        for index in slots:
            try:
                self._add(index, *items[index])
            except PermcodecError:
                pass  # left to the one-tensor path, which raises this error

    def _add(self, index: int, record: dict, section: bytes, init: TensorInit) -> None:
        """Tensor ``index``, once its section's CRC and layout pass (else a PermcodecError)."""
        from .format import _small_numba as kernel

        container.check_section(record, section)
        rows, n = row_shape(record["shape"])
        what = f"tensor {record['name']!r}"
        if record["scheme"] == "exact":
            lanes = record["scheme_params"]["lanes"]
            lengths = rans.lane_lengths(section, lanes, what)
            scheme, size, first = kernel.EXACT, lanes, len(self.lane_lengths)
            self.word_bytes.append(memoryview(section)[4 * lanes:])
            self.lane_lengths.extend(lengths)
        else:
            planes, width = delta.byte_planes(section, rows, n, what)
            self.plane_bytes.append(planes)
            scheme, size, first = kernel.DELTA, width, self.plane_count
            self.plane_count += rows * n * width
        low, high = uniform_bounds(init.dist, init.params)
        self.members.append(index)
        self.spans.append((self.value_count, rows * n))
        self.table.append((  # the columns of _small_numba.decode_uniform's table, in order
            init.seed & MASK32, init.seed >> 32, init.stream, rows, n, scheme, size, first, self.value_count))
        self.bounds.append((float(low), float(high) - float(low)))  # the scale in float64, as uniform_values
        self.value_count += rows * n

    def prepare(self) -> "Pack":
        """The kernel's arguments (once): the thread that starts the pool's pack builds them, so that the pool
        thread enters its kernel at once instead of waiting for the GIL while the caller runs Python."""
        from .format import _rans_numba, _small_numba

        if self.kernel_args is not None or not self.members:
            return self
        table = np.array(self.table, dtype=np.int64)
        streams, stream_tensor, stream_order, groups = _small_numba.plan_streams(
            np.array(self.lane_lengths, dtype=np.int64), table, _rans_numba.SIDE_BY_SIDE)
        words = np.frombuffer(b"".join(self.word_bytes), dtype="<u4")
        self.group_count = len(groups)
        self.values = np.empty(self.value_count, dtype=np.float32)
        self.kernel_args = (table, np.array(self.bounds, dtype=np.float64),
                            words if words.dtype.isnative else words.astype(np.uint32),
                            streams, stream_tensor, stream_order, groups,
                            np.frombuffer(b"".join(self.plane_bytes), dtype=np.uint8), self.values,
                            np.zeros(len(streams), dtype=np.int64),  # each stream's status
                            np.zeros(len(self.members), dtype=np.bool_))  # the kernel's verdict per tensor
        return self

    def decode(self, stored_hashes: list[bytes] | None) -> None:
        """Decode every packed tensor, then check it (``passed``): its kernel verdict and, given the stored
        SHA-256 of every item (``stored_hashes``, None: no hash check), its hash."""
        from .format import _small_numba

        if not self.members:
            return
        self.prepare()
        _small_numba.decode_uniform(*self.kernel_args, 0, len(self.members), 0, self.group_count)
        decoded_cleanly = self.kernel_args[-1]
        self.passed = [bool(decoded_cleanly[slot]) and not (
            stored_hashes is not None and sha256_of(self.values[first:first + count]) != stored_hashes[index])
            for slot, (index, (first, count)) in enumerate(zip(self.members, self.spans))]

    def arrays(self, items: list[tuple[dict, bytes, TensorInit]]):
        """(item index, its array) of each packed tensor that passed: views of ``values``, without overlap."""
        for index, (first, count), passed in zip(self.members, self.spans, self.passed):
            if passed:
                yield index, self.values[first:first + count].reshape(items[index][0]["shape"])


class Batch:
    """The batchable tensors of a file in two packs: ``start`` packs the pool's share and runs it on the shared
    pool, so that it decodes while the caller packs and decodes its own share (``decode_rest``); ``finish``
    waits and gives each tensor's array (a view of its pack's buffer, see ``finish``), or None."""

    def __init__(self, items: list[tuple[dict, bytes, TensorInit]], verify: bool):
        self.items, self.verify = items, verify
        self.pool_pack: Pack | None = None
        self.caller_slots: list[int] = []  # the items the caller packs and decodes, largest first
        self.caller_pack: Pack | None = None  # once decoded
        self.rest_taken = False  # whether ``decode_rest`` ran
        self.running = None

    def start(self, pool_share: float) -> "Batch":
        """Pack about ``pool_share`` of the values (``pool_first``) and start decoding them on the shared pool."""
        global _batch_calls
        if not self.items or self.pool_pack is not None:  # nothing to decode, or started already
            return self
        order, split = pool_first([math.prod(record["shape"]) for record, _, _ in self.items], pool_share)
        pack = Pack(self.items, order[:split]).prepare()
        self.pool_pack, self.caller_slots = pack, order[split:]
        # the piece is handed its pack, not self.pool_pack read when it runs
        self.running = parallel.start_over(lambda lo, hi: self._decode(pack), [(0, 1)] if pack.members else [])
        with _count_lock:
            _batch_calls += 1
        return self

    def _decode(self, pack: Pack) -> None:
        """``pack`` decoded and checked. The thread that decoded it hashes it too: the pool's thread while the
        caller is still in its own kernel call, so the two hash side by side."""
        pack.decode([record["sha256"] for record, _, _ in self.items] if self.verify else None)

    def decode_rest(self) -> None:
        """Pack and decode, in the caller, the tensors the pool was not given (once; ``finish`` does it if need
        be). Should that fail (out of memory), they stay undecoded: ``finish`` gives None for them, and each is
        decoded alone, whose error names it."""
        if self.running is not None and not self.rest_taken:
            self.rest_taken = True
            try:
                pack = Pack(self.items, self.caller_slots)
                self._decode(pack)
                self.caller_pack = pack
            except Exception:  # no memory, or anything else the kernel raised: their arrays stay None
                pass

    def finish(self) -> list[np.ndarray | None]:
        """Each tensor's float32 array, or None for one whose section, decoding or (if ``verify``) SHA-256 failed.
        The arrays are views of their pack's buffer, without overlap: torch and safetensors see each as a tensor
        of its own, but the buffer lives as long as any of them."""
        results: list[np.ndarray | None] = [None] * len(self.items)
        if self.running is None:
            return results
        try:
            self.decode_rest()
            self.running.wait()
            for pack in filter(None, (self.pool_pack, self.caller_pack)):
                for index, array in pack.arrays(self.items):
                    results[index] = array
        except Exception:  # the pool's share failed, or no memory for the views: each tensor alone, then,
            return [None] * len(self.items)  # whose error names it
        return results


def pool_first(counts: list[int], pool_share: float) -> tuple[list[int], int]:
    """(order, split): the tensors of ``counts`` values dealt largest first, each to the pool where its middle
    value lies within ``pool_share`` of the values dealt so far, else to the caller; ``order`` lists the pool's
    (its first ``split``), then the caller's. Dealt in file order instead, two large tensors side by side could
    only go together: Conv7's pool decoded for 4.0 ms while the caller's part took 2.4."""
    pool, caller, dealt, pool_values = [], [], 0, 0
    for slot in sorted(range(len(counts)), key=lambda slot: -counts[slot]):
        dealt += counts[slot]
        if pool_values + counts[slot] / 2 <= pool_share * dealt:
            pool.append(slot)
            pool_values += counts[slot]
        else:
            caller.append(slot)
    return pool + caller, len(pool)
