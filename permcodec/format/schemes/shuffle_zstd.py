"""Raw codec ``shuffle-zstd`` (specs/format.md Section 13): a tensor's bytes, byte-shuffled by element, in zstd.

Stores any tensor losslessly (raw records: buffers, biases that are not
permuted, tensors that are not a permutation of their init).
"""

from __future__ import annotations

import numpy as np

from ...errors import FormatError
from .. import zstdframe


def shuffle_bytes(data: bytes, itemsize: int) -> bytes:
    """Byte shuffle: byte j of every item together, for j = 0 .. itemsize-1."""
    if itemsize == 1:
        return bytes(data)
    return np.ascontiguousarray(np.frombuffer(data, dtype=np.uint8).reshape(-1, itemsize).T).tobytes()


def unshuffle_bytes(data: bytes, itemsize: int) -> bytearray:
    """The inverse of ``shuffle_bytes``, in a new bytearray (which its caller may keep and write): plane j
    goes to every itemsize-th byte from j, one strided copy each (a 4 MB tensor in 0.37x the time of numpy's
    transposed copy; a 1 KB one in about the same)."""
    if itemsize == 1 or len(data) == itemsize:  # one byte plane, or one element: shuffling moved nothing
        return bytearray(data)
    out = bytearray(len(data))
    planes, count = memoryview(data), len(data) // itemsize
    for j in range(itemsize):
        out[j::itemsize] = planes[j * count:(j + 1) * count]
    return out


def unshuffle_many(planes: list[bytes], itemsize: int, count: int) -> np.ndarray:
    """``unshuffle_bytes`` of many tensors of ``count`` elements of ``itemsize`` bytes, as the rows of one new
    uint8 array: one transposed copy for all, where one tensor at a time cost about 3 us each (a ResNet's
    BatchNorm tensors, 64 floats each)."""
    stacked = np.frombuffer(b"".join(planes), dtype=np.uint8).reshape(len(planes), itemsize, count)
    elements = np.empty((len(planes), count, itemsize), dtype=np.uint8)  # always a copy: the caller may write it
    elements[...] = stacked.transpose(0, 2, 1)
    return elements.reshape(len(planes), count * itemsize)


class ShuffleZstd:
    id = "shuffle-zstd"

    def encode(self, data: bytes, itemsize: int, zstd_level: int) -> bytes:
        return zstdframe.compress(shuffle_bytes(data, itemsize), zstd_level)

    def decode(self, section: bytes, itemsize: int, count: int, what: str) -> bytearray:
        return unshuffle_bytes(zstdframe.decompress_exact(section, count * itemsize, what), itemsize)

    def decode_many(self, sections: list[tuple[bytes, int, int, str]]) -> list[np.ndarray | None]:
        decoded: list[np.ndarray | None] = [None] * len(sections)
        planes_of: dict[tuple[int, int], tuple[list[int], list[bytes]]] = {}  # tensors of one shape together
        for index, (section, itemsize, count, what) in enumerate(sections):
            try:
                planes = zstdframe.decompress_exact(section, count * itemsize, what)
            except FormatError:
                continue
            members, their_planes = planes_of.setdefault((itemsize, count), ([], []))
            members.append(index)
            their_planes.append(planes)
        for (itemsize, count), (members, their_planes) in planes_of.items():
            for index, row in zip(members, unshuffle_many(their_planes, itemsize, count)):
                decoded[index] = row
        return decoded


SHUFFLE_ZSTD = ShuffleZstd()
