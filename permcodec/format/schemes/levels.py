"""Encoder levels (specs/format.md Section 12, informative): which index schemes the encoder tries, how hard."""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import SpecError


@dataclass(frozen=True)
class Level:
    """How hard the encoder works on a tensor."""

    name: str
    zstd_level: int      # zstd level of delta sections and raw tensors
    bits_per_lane: int   # information bits per rANS lane: more lanes decode more in parallel, each costs ~16 bytes
    try_delta: bool      # whether delta competes with the arrangement schemes
    multiset_gain: float  # try multiset (or sparse) where repeated values save more than this share of exact's bits
    delta_floor: float | None  # skip delta where this share of its codes' order-0 entropy exceeds the best
    #                            arrangement section (delta cannot win there); None: always try it
    summary: str         # one line for --help and the spec


LEVELS = {
    "fast": Level("fast", 3, 1 << 12, False, 0.01, None,
                  "exact only (multiset or sparse instead where repeated values save more than 1%), many rANS "
                  "lanes: 3-5x faster encode, files up to 2% larger"),
    "default": Level("default", 19, 1 << 16, True, 0.01, 0.9,
                     "exact, multiset or sparse where repeated values save more than 1%, and delta at zstd 19 "
                     "where its codes' entropy says it can win; keeps the smallest: within 0.2% of the bound, the "
                     "level to use"),
    "max": Level("max", 22, 1 << 20, True, 0.001, None,
                 "as default, but multiset or sparse where repeated values save more than 0.1%, delta always "
                 "tried, zstd 22 and few lanes: about 0.1% smaller, slower to encode"),
}
DEFAULT_LEVEL = "default"


def level_named(name) -> Level:
    if isinstance(name, Level):
        return name
    if name not in LEVELS:
        raise SpecError(f"unknown level {name!r}; choose one of {', '.join(LEVELS)}")
    return LEVELS[name]
