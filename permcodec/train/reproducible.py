"""Runs that repeat bit for bit: deterministic kernels and seeded default generators, restored afterwards.

    with reproducible(torch.device("cpu"), seed=0):
        ...   # torch.use_deterministic_algorithms(True); torch's default generators seeded with 0

A run is reproducible for a given seed, device and thread count: float sums may
be split differently across another number of threads or another device.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

import torch

# cuBLAS needs a fixed workspace to be deterministic (CUDA >= 10.2); see torch's Reproducibility notes.
CUBLAS_WORKSPACE = ":4096:8"


@contextmanager
def reproducible(device: torch.device, seed: int):
    """Within: deterministic algorithms, and torch's default generators (CPU, and ``device`` if CUDA) seeded
    with ``seed`` for the model constructors and dropout. The caller's settings and generator states come back
    after, so a run leaves no trace on the process's global RNG."""
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda), deterministic_algorithms(device):
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(cuda[0]):
                torch.cuda.manual_seed(seed)
        yield


@contextmanager
def deterministic_algorithms(device: torch.device):
    """torch.use_deterministic_algorithms(True) within, the previous mode after.

    On the CPU an operation without a deterministic kernel raises; on CUDA it warns (``warn_only``),
    so that a long GPU run is not lost to an op torch cannot yet make deterministic.
    """
    previous = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    workspace = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if device.type == "cuda" and workspace is None:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    torch.use_deterministic_algorithms(True, warn_only=device.type != "cpu")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous[0], warn_only=previous[1])
        if device.type == "cuda" and workspace is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
