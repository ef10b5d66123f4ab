"""Figure 1: stored bits per weight of each tensor beside its bound, with fp16 and zstd-19 references."""

from __future__ import annotations

import torch
import zstandard

from ..bits import tensor_bytes
from .canvas import label_tensors, new_figure

ZSTD_LEVEL = 19
FP16_BITS = 16.0


def permuted_records(info: dict) -> list[dict]:
    """describe()'s permuted tensors that have a bits per weight (an empty tensor has none)."""
    return [t for t in info["tensors"] if t["kind"] == "permuted" and t["bits_per_weight"] is not None]


def raw_records(info: dict) -> list[dict]:
    """describe()'s raw tensors of records of their own that have a bits per element, then one bar's entry per
    group record (its members have no bytes of their own)."""
    own = [t for t in info["tensors"] if t["kind"] != "permuted" and t["bits_per_weight"] is not None]
    return own + [{"name": f"group {number} ({len(group['names'])} tensors)",
                   "bits_per_weight": group["bits_per_element"]}
                  for number, group in enumerate(info.get("groups", [])) if group["bits_per_element"] is not None]


def zstd_bits_per_weight(tensors: list[torch.Tensor], dtype: torch.dtype) -> float | None:
    """Bits per weight of zstd level 19 over each tensor's bytes in ``dtype``, summed over the tensors."""
    weights = sum(t.numel() for t in tensors)
    if not weights:
        return None
    compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
    compressed = sum(len(compressor.compress(tensor_bytes(t.to(dtype)))) for t in tensors)
    return 8 * compressed / weights


def zstd_references(info: dict, decoded: dict) -> dict[str, float]:
    """{"zstd-19 of bf16": bits/weight, "zstd-19 of fp32": ...} over the decoded permuted tensors."""
    tensors = [decoded[t["name"]] for t in permuted_records(info)]
    found = {f"zstd-{ZSTD_LEVEL} of bf16": zstd_bits_per_weight(tensors, torch.bfloat16),
             f"zstd-{ZSTD_LEVEL} of fp32": zstd_bits_per_weight(tensors, torch.float32)}
    return {name: value for name, value in found.items() if value is not None}


def bits_figure(info: dict, references: dict[str, float], headline: str):
    """Bars of stored and bound bits/weight per permuted tensor (axes 0), raw tensors apart (axes 1)."""
    figure = new_figure(8.0, 4.5)
    permuted, raw = permuted_records(info), raw_records(info)
    widths = [max(len(permuted), 1), max(len(raw), 1) * 0.6] if raw else [1]
    grid = figure.add_gridspec(1, len(widths), width_ratios=widths)
    axes = figure.add_subplot(grid[0, 0])
    positions = list(range(len(permuted)))
    axes.bar([p - 0.2 for p in positions], [t["bits_per_weight"] for t in permuted], 0.4, label="stored")
    axes.bar([p + 0.2 for p in positions], [t["bound_bits_per_weight"] for t in permuted], 0.4,
             label="bound log2(n!/∏m!)")
    axes.axhline(FP16_BITS, color="C2", linestyle="--", label="fp16 / bf16 (16)")
    for colour, (name, value) in zip(("C3", "C4"), references.items()):
        axes.axhline(value, color=colour, linestyle=":", label=f"{name} ({value:.2f})")
    label_tensors(axes, [t["name"] for t in permuted])
    axes.set_ylabel("bits per weight")
    axes.set_title("permuted tensors")
    axes.legend(loc="upper left", fontsize=9)
    if raw:
        add_raw_axes(figure.add_subplot(grid[0, 1]), raw)
    figure.suptitle(f"Bits per weight by layer\n{headline}")
    return figure


def add_raw_axes(axes, raw: list[dict]) -> None:
    axes.bar(range(len(raw)), [t["bits_per_weight"] for t in raw], 0.6, color="C5", hatch="//",
             label="raw (lossless)")
    label_tensors(axes, [t["name"] for t in raw])
    axes.set_ylabel("bits per element")
    axes.set_title("raw tensors")
    axes.legend(loc="upper left", fontsize=9)
