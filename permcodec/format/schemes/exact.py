"""Scheme ``exact`` (specs/format.md Section 10): each row's permutation as swap-code digits in rANS.

pi with trained[j] = initial[pi[j]] costs log2(n!) bits per row plus rounding.
The decoder needs no sort and no search: one swap per position.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ... import arrays
from .. import rans
from .base import LanesScheme, RowsToEncode, lanes_for

if TYPE_CHECKING:
    import torch

    from .levels import Level


class Exact(LanesScheme):
    id = "exact"

    def encode(self, tensor: RowsToEncode, level: "Level") -> tuple[dict, bytes]:
        lanes = lanes_for(tensor.exact_bits, tensor.initial.rows.shape[0], level)
        return {"lanes": lanes}, rans.encode_permutations(tensor.sources.numpy(), lanes)

    def decode(self, params: dict, initial: "torch.Tensor", section: bytes, what: str) -> "torch.Tensor":
        rows, n = initial.shape
        xp = arrays.of(initial)
        if xp is arrays.NUMPY:  # on the CPU, the swaps move the values themselves
            return rans.decode_onto(section, initial, params["lanes"], what)
        pi = rans.decode_permutations(section, rows, n, params["lanes"], what)
        return xp.take_rows(initial, xp.from_numpy(pi))


EXACT = Exact()
