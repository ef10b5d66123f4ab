"""The one exact-key check of a map read from a file or a caller (header, records, init specs, parameters)."""

from __future__ import annotations


def key_mismatch(obj, expected) -> str | None:
    """None if ``obj`` is a map with exactly the keys ``expected``; else what was found, for a message."""
    if not isinstance(obj, dict):
        return type(obj).__name__
    if obj.keys() != (expected if isinstance(expected, (set, frozenset)) else set(expected)):
        return str(sorted(map(str, obj)))
    return None
