"""An InitSpec applied to a torch module: ``init_`` draws a model's weights, refuses tied ones, attaches the spec.

Split from ``initspec`` so that the spec records (which the decoder reads) need no torch.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
from torch import nn

from ..errors import SpecError
from ..rows import DEFAULT_BLOCK_LAYOUT, BlockLayout
from . import distributions
from .initspec import InitSpec, TensorInit
from .philox import check_seed

INIT_ATTRIBUTE = "_permcodec_init"
WEIGHTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def init_targets(module: nn.Module, bias: bool) -> list[tuple[str, torch.Tensor]]:
    """The (name, parameter) pairs ``init_`` draws: Conv/Linear weights, and their biases if asked.

    Every name is listed, so a layer registered twice appears twice (and is then refused as tied).
    """
    targets = []
    for prefix, layer in module.named_modules(remove_duplicate=False):
        if not isinstance(layer, WEIGHTED_LAYERS):
            continue
        dot = f"{prefix}." if prefix else ""
        targets.append((f"{dot}weight", layer.weight))
        if bias and layer.bias is not None:
            targets.append((f"{dot}bias", layer.bias))
    return targets


# ---------------------------------------------------------------- tied and aliased tensors

def _memory_span(tensor: torch.Tensor):
    """(storage key, first byte, end byte) of the memory ``tensor`` can read; None where none is visible.

    Meta, empty and non-strided tensors have no span; they alias only themselves.
    """
    if tensor.layout != torch.strided or tensor.device.type == "meta" or tensor.numel() == 0:
        return None
    size = tensor.element_size()
    extent = 1 + sum((n - 1) * s for n, s in zip(tensor.shape, tensor.stride()))
    start = tensor.storage_offset() * size
    return (tensor.device, tensor.untyped_storage().data_ptr()), start, start + extent * size


def aliased_pairs(named_tensors: Iterable[tuple[str, torch.Tensor]]) -> Iterator[tuple[str, str]]:
    """Every pair of names (earlier, later) whose tensors are one object or overlap in one storage.

    Overlap is judged by byte ranges, so two interleaved views count as aliased. Non-tensor values are skipped.
    """
    earlier: dict = {}
    for name, tensor in named_tensors:
        if not isinstance(tensor, torch.Tensor):
            continue
        span = _memory_span(tensor)
        bucket = earlier.setdefault(span[0] if span else ("object", id(tensor)), [])
        for other_name, other, other_span in bucket:
            if other is tensor or (span and other_span[1] < span[2] and span[1] < other_span[2]):
                yield other_name, name
        bucket.append((name, tensor, span))


def refuse_aliased(named_tensors: Iterable[tuple[str, torch.Tensor]], names=None) -> None:
    """Raise ``SpecError`` on the first aliased pair (only pairs with a member in ``names``, if given)."""
    names = None if names is None else set(names)
    for a, b in aliased_pairs(named_tensors):
        if names is None or a in names or b in names:
            raise SpecError(f"parameters {a!r} and {b!r} are the same tensor (tied or aliased); permcodec stores "
                            f"each permuted tensor once and cannot store tied weights: untie them or leave one "
                            f"out of init_")


def refuse_tied_targets(module: nn.Module, targets: list[tuple[str, torch.Tensor]]) -> None:
    """Raise ``SpecError`` if a target shares memory with another target or any parameter or buffer of ``module``."""
    names = {name for name, _ in targets}
    others = [(name, t) for name, t in module.named_parameters(remove_duplicate=False) if name not in names]
    others += [(name, t) for name, t in module.named_buffers(remove_duplicate=False) if name not in names]
    refuse_aliased(targets + others, names)


def init_(module: nn.Module, seed: int, dist: str = "he_uniform", *, bias: bool = False,
          block: int | None = None, block_layout: str = DEFAULT_BLOCK_LAYOUT, **params) -> InitSpec:
    """Draw every Conv/Linear weight of ``module`` (and bias, if ``bias``) from ``dist``; returns the spec.

    ``dist`` and its keyword parameters (specs/rng.md Section 6 defines each draw):

    - ``"he_uniform"`` (default), ``"glorot_uniform"``: U(-bound, bound), the bound from the tensor's fans;
      no parameters.
    - ``"he_normal"``, ``"glorot_normal"``: N(0, std), std from the fans; no parameters.
    - ``"uniform"``: U(low, high); ``low=0.0``, ``high=1.0``.
    - ``"normal"``: N(mean, std); ``mean=0.0``, ``std=1.0``.
    - ``"sparse"``: each value kept with probability ``density`` (required, in (0, 1]) and drawn from
      ``base`` (default ``"he_uniform"``; any of the six above, with its own parameters), else 0.0.
    - ``"shared"``: each value is ``value`` (required, non-zero) with probability ``density`` (required),
      else 0.0.
    - ``"levels"``: each row holds ``num_levels`` (required, K) fixed values, the quantile midpoints
      (2k+1)/2K of ``base`` (default ``"he_uniform"``, with its own parameters), n // K copies each and
      one more for the first n mod K, in a Philox-drawn order. Stored at about log2 K bits per weight.

    ``block=b`` makes the permutations block-local: each row's positions are grouped into blocks of
    about b (``block_layout``: ``"shuffled"``, the default, ``"strided"`` or ``"contiguous"``; see
    ``permcodec.rows.BlockLayout``), and LaPerm permutes within each block, so a block costs log2(b!) bits.

    Parameters are stored as float32. Streams are numbered 0, 1, 2, ... in
    module order. The spec is attached to the module, where ``LaPerm`` and
    ``save`` find it. torch's RNG is not used. Tied or aliased targets are
    refused before any value changes.
    """
    seed = check_seed(seed)
    layout = None if block is None else BlockLayout(block_layout, block)
    targets = init_targets(module, bias)
    refuse_tied_targets(module, targets)
    records = []
    for stream, (name, tensor) in enumerate(targets):
        if tensor.dtype != torch.float32:
            raise SpecError(f"tensor {name!r} has dtype {tensor.dtype}; permcodec pools are float32")
        record_params = distributions.make_params(dist, tensor.shape, **params)
        records.append(TensorInit(name, tuple(tensor.shape), seed, stream, dist, record_params, layout))
    if not records:
        raise SpecError(f"module {type(module).__name__} has no Conv/Linear layer to initialize")
    spec = InitSpec(records)
    with torch.no_grad():
        for (_, tensor), record in zip(targets, records):
            tensor.copy_(record.regenerate(device=tensor.device))
    attach_spec(module, spec)
    return spec


def attach_spec(module: nn.Module, spec: InitSpec) -> None:
    """Attach ``spec`` to ``module``, where ``LaPerm`` and ``save`` find it (``init_`` and ``load_into`` do this)."""
    setattr(module, INIT_ATTRIBUTE, spec)


def attached_spec(module: nn.Module) -> InitSpec | None:
    """The spec ``init_`` attached to ``module``, or None."""
    return getattr(module, INIT_ATTRIBUTE, None)
