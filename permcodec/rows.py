"""What a row of a tensor is: the one definition, shared by the trainer, the codec and the header checks.

A row is one output unit's weight vector:
- 1-D tensor [n]            -> one row of n
- Linear [out, in]          -> out rows of in
- Conv [out, in, *kernel]   -> out rows of in * prod(kernel), in row-major order

Blocks (``BlockLayout``) narrow a row further: a block-local model permutes each block of a row on its
own, and the codec codes each block as a row. Plain integers only (no torch), so a header can be checked
before anything is decoded.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SpecError


def row_shape(shape) -> tuple[int, int]:
    """(rows, row length) of a tensor of this shape."""
    shape = tuple(shape)
    if len(shape) == 0:
        raise SpecError("a 0-D tensor has no row definition; rows need a tensor of dim >= 1")
    if len(shape) == 1:
        return 1, shape[0]
    length = 1
    for size in shape[1:]:
        length *= size
    return shape[0], length


# ---------------------------------------------------------------- block-local permutations

BLOCK_LAYOUTS = ("contiguous", "strided", "shuffled")
DEFAULT_BLOCK_LAYOUT = "shuffled"  # far better than contiguous at blocks of 4, within the noise at 8-256 (README)
MAX_BLOCK_SIZE = 2**31 - 1


@dataclass(frozen=True)
class BlockLayout:
    """How each row's positions are grouped into blocks that are permuted on their own (specs/format.md §7.1).

    - ``contiguous``: positions [0, b), [b, 2b), ...; every block b long except a shorter last one.
    - ``strided``: q = ceil(n / b) blocks; position j in block j mod q. Sizes differ by at most one.
    - ``shuffled``: as strided, over the row's positions in a per-row Philox order (substream 2).

    A row's *grouped order* lists its positions block by block (within a block ascending, or in Philox order);
    ``groups`` gives that order's blocks as runs of equal size, so each run is a [rows * count, size] matrix.
    """

    layout: str
    size: int

    def __post_init__(self):
        if self.layout not in BLOCK_LAYOUTS:
            raise SpecError(f"block layout must be one of {', '.join(BLOCK_LAYOUTS)}, found {self.layout!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, int) or not 1 <= self.size <= MAX_BLOCK_SIZE:
            raise SpecError(f"block size must be an integer in [1, 2^31 - 1], found {self.size!r}")

    def block_count(self, n: int) -> int:
        """Blocks per row of length n (one for an empty row)."""
        return max(1, -(-n // self.size))

    def groups(self, n: int) -> tuple[tuple[int, int], ...]:
        """(block count, block length) of each run of equal blocks in the grouped order of a row of length n."""
        if n <= self.size:
            return full_rows(n)
        q = self.block_count(n)
        if self.layout == "contiguous":
            full, rest = divmod(n, self.size)
            runs = ((full, self.size), (1, rest))
        else:
            short, longer = divmod(n, q)
            runs = ((longer, short + 1), (q - longer, short))
        return tuple(run for run in runs if run[0] and run[1])

    def to_dict(self) -> dict:
        return {"layout": self.layout, "size": self.size}

    @classmethod
    def from_dict(cls, d, where: str = "block") -> "BlockLayout":
        if not isinstance(d, dict) or set(d) != {"layout", "size"}:
            found = sorted(d) if isinstance(d, dict) else type(d).__name__
            raise SpecError(f"{where}: block must be a map with keys ['layout', 'size'], found {found}")
        try:
            return cls(d["layout"], d["size"])
        except SpecError as err:
            raise SpecError(f"{where}: {err}") from None


def full_rows(n: int) -> tuple[tuple[int, int], ...]:
    """The groups of a row without blocks: one block, the whole row."""
    return ((1, n),)
