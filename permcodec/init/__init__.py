"""How initial values are drawn: Philox4x32-10, exact float math, the distributions, init specs.

The bottom layer: it imports neither ``permcodec.format`` nor ``permcodec.train``.
See specs/rng.md.
"""
