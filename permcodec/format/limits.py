"""The decoder's caps on what a file may declare (specs/format.md Section 15)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Decoder caps; a file beyond any of them raises LimitError before allocating."""

    max_header_bytes: int = 64 << 20
    max_tensors: int = 100_000
    max_dims: int = 8
    max_dim: int = 2**31 - 1
    max_tensor_elements: int = 2**31 - 1
    max_total_elements: int = 2**36


DEFAULT_LIMITS = Limits()


def limits_or_default(limits: Limits | None) -> Limits:
    """``limits``, or DEFAULT_LIMITS as it is at call time (a fuzzer may lower it process-wide)."""
    return DEFAULT_LIMITS if limits is None else limits
