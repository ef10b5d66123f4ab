"""What is inside a .pc file (``permcodec info``) and whether it decodes to what it should (``verify``).

``describe`` (``info``) needs no torch: its bounds come from pools regenerated on numpy arrays.
"""

from __future__ import annotations

import json
import math
import os
from typing import TYPE_CHECKING

from . import arrays, perm
from .bits import tensor_bytes
from .decoder import safe_open, tensor_init
from .errors import IntegrityError
from .format.container import Limits
from .format.records import elements, is_group, schemes_of
from .raw_decoding import memory_errors_named

if TYPE_CHECKING:
    import torch


def bound_bits(record: dict) -> float:
    """log2(b! / prod m_v!) summed over the rows (or blocks) of a permuted tensor's pool."""
    if math.prod(record["shape"]) == 0:
        return 0.0  # and nothing regenerated: an empty shape may have 2^31 - 1 rows or a row that long
    with memory_errors_named(record):
        return perm.pools_of(tensor_init(record), arrays.NUMPY).bound_bits()


def ratio(numerator: float | None, denominator: float) -> float | None:
    """numerator / denominator, or None where the denominator is 0 or the numerator is None (shown as '-')."""
    return numerator / denominator if denominator and numerator is not None else None


def describe(path, limits: Limits | None = None) -> dict:
    """What ``permcodec info --json`` prints for the .pc file at ``path``: per-tensor sizes, schemes, bits per
    weight and bounds; totals with ratios to the bound, fp32 and fp16; every metadata value, and the training
    config and final test accuracy where the file carries them."""
    with safe_open(path, limits=limits) as f:
        records = [f.record(name) for name in f.keys()]
        group_indexes = [index for index, record in enumerate(f.header["tensors"]) if is_group(record)]
        groups = [group_figures(f.header["tensors"][index]) for index in group_indexes]
        metadata = f.metadata()
    group_number = {index: number for number, index in enumerate(group_indexes)}
    tensors = [tensor_figures(record, group_number.get(record.get("group"))) for record in records]
    return {"file_bytes": os.path.getsize(path), "tensors": tensors, "groups": groups,
            "totals": totals(tensors, os.path.getsize(path)), "metadata": metadata,
            "config": json_value(metadata, "permcodec.config"), "test_acc": stored_test_accuracy(metadata)}


def tensor_figures(record: dict, group: int | None = None) -> dict:
    """A tensor's line of ``info``. A group member (``group``: its group's number, counting the file's group
    records from 0) has no bytes of its own: its group's are in ``group_figures``."""
    numel = math.prod(record["shape"])
    permuted = record["kind"] == "permuted"
    bound = bound_bits(record) if permuted else None
    stored = record.get("length")  # None for a group member
    bits = None if stored is None else 8 * stored
    return {
        "name": record["name"], "kind": record["kind"], "dtype": record["dtype"], "shape": record["shape"],
        "scheme": schemes_of(record) if permuted else record["codec"],
        "block": record.get("block"), "group": group,
        "bytes": stored, "bits_per_weight": ratio(bits, numel),
        "bound_bits": bound, "bound_bits_per_weight": ratio(bound, numel) if permuted else None,
        "ratio_to_bound": ratio(bits, bound) if permuted else None,
        "ratio_to_fp32": ratio(stored, 4 * numel), "ratio_to_fp16": ratio(stored, 2 * numel),
        "init": record.get("init"),
    }


def group_figures(group: dict) -> dict:
    """A group record's line of ``info``: its dtype, members, elements and bytes."""
    numel = elements(group)
    return {"dtype": group["dtype"], "names": group["names"], "elements": numel, "bytes": group["length"],
            "bits_per_element": ratio(8 * group["length"], numel)}


def totals(tensors: list[dict], file_bytes: int) -> dict:
    permuted = [t for t in tensors if t["kind"] == "permuted"]
    permuted_weights = sum(math.prod(t["shape"]) for t in permuted)
    permuted_bytes = sum(t["bytes"] for t in permuted)
    bound = sum(t["bound_bits"] for t in permuted)
    elements = sum(math.prod(t["shape"]) for t in tensors)
    return {
        "tensors": len(tensors), "permuted_tensors": len(permuted), "elements": elements,
        "permuted_weights": permuted_weights, "permuted_bytes": permuted_bytes,
        "permuted_bits_per_weight": ratio(8 * permuted_bytes, permuted_weights),
        "bound_bits_per_weight": ratio(bound, permuted_weights),
        "ratio_to_bound": ratio(8 * permuted_bytes, bound),
        "file_bits_per_element": ratio(8 * file_bytes, elements),
        "ratio_to_fp32": ratio(file_bytes, 4 * elements), "ratio_to_fp16": ratio(file_bytes, 2 * elements),
    }


def json_value(metadata: dict[str, str], key: str):
    """The JSON value the trainer stored under ``key``, or None where it is missing or not JSON."""
    try:
        return json.loads(metadata[key]) if key in metadata else None
    except json.JSONDecodeError:
        return None


def stored_test_accuracy(metadata: dict[str, str]) -> float | None:
    """The test accuracy of the stored weights, from the trainer's metrics: the last epoch's, or the best
    epoch's where the run kept its best weights (``--keep best``)."""
    metrics = json_value(metadata, "permcodec.metrics")
    epochs = [m for m in metrics if isinstance(m, dict) and "epoch" in m
              and isinstance(m.get("test_acc"), (int, float))] if isinstance(metrics, list) else []
    if not epochs:
        return None
    config = json_value(metadata, "permcodec.config")
    keep_best = isinstance(config, dict) and config.get("keep") == "best"
    return max(m["test_acc"] for m in epochs) if keep_best else epochs[-1]["test_acc"]


def verify(path, against=None, device="cpu", limits: Limits | None = None) -> dict:
    """Decode every tensor with checksum and hash checks; with ``against``, compare bits to a model file."""
    from . import codec
    from .checkpoints import read_tensors

    tensors = codec.load(path, device=device, verify=True, limits=limits)
    report = {"tensors": len(tensors), "hashes": "ok"}
    if against is not None:
        notes: list[str] = []
        expected = read_tensors(against, notes)
        if set(expected) != set(tensors):
            only_file = sorted(set(tensors) - set(expected))
            only_model = sorted(set(expected) - set(tensors))
            raise IntegrityError(f"tensor names differ: only in the .pc file {only_file}, only in "
                                 f"{against} {only_model}")
        for name, tensor in tensors.items():
            difference = bit_difference(tensor.cpu(), expected[name])
            if difference:
                raise IntegrityError(f"tensor {name!r} differs from {against}: {difference}")
        report["against"] = f"{against}'s synced view (it was written mid-run, between two syncs)" if notes \
            else str(against)
    return report


def bit_difference(decoded: "torch.Tensor", expected: "torch.Tensor") -> str | None:
    """None if the two tensors hold the same bits; else how they differ: dtype, shape, or how many elements
    differ and the index of the first."""
    import torch

    if decoded.dtype != expected.dtype:
        return f"dtype {decoded.dtype} in the .pc file, {expected.dtype} in the model"
    if decoded.shape != expected.shape:
        return f"shape {tuple(decoded.shape)} in the .pc file, {tuple(expected.shape)} in the model"
    if same_bits(decoded, expected):
        return None
    as_bytes = [torch.frombuffer(bytearray(tensor_bytes(t)), dtype=torch.uint8).reshape(-1, t.element_size())
                for t in (decoded, expected)]
    differs = (as_bytes[0] != as_bytes[1]).any(dim=1)
    first = int(differs.nonzero()[0])
    index = [int(i) for i in torch.unravel_index(torch.tensor(first), decoded.shape)] if decoded.dim() else []
    return (f"{int(differs.sum()):,} of {decoded.numel():,} elements differ in their bits, the first at index "
            f"{index} ({decoded.reshape(-1)[first].item()!r} in the .pc file, "
            f"{expected.reshape(-1)[first].item()!r} in the model)")


def same_bits(a: "torch.Tensor", b: "torch.Tensor") -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and tensor_bytes(a) == tensor_bytes(b)
