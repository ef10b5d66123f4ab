"""Training on several ranks under torchrun: who this process is, its device, its data, its DDP model.

One process per rank, each with bit-identical weights: DDP averages the
gradients, every rank draws the same init and syncs the same way, and
`ranks_agree` checks at the end that the weights are still the same bits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..bits import state_digest
from ..devices import checked_device


@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_distributed(device: str) -> Ranks:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    backend = "nccl" if rank_device(device, Ranks(0, world, 0)).type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend)
    return Ranks(torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def rank_device(device: str, ranks: Ranks) -> torch.device:
    """The device this rank trains on; plain cuda (or auto, with CUDA present) means the local rank's GPU."""
    chosen = checked_device(device, allow_auto=True)
    if chosen.type == "cuda" and chosen.index is None:
        return torch.device("cuda", ranks.local)
    return chosen


def shard(x, y, ranks: Ranks):
    """This rank's equal share of the training set (the tail that does not divide evenly is dropped)."""
    usable = len(y) - len(y) % ranks.world
    return x[ranks.rank:usable:ranks.world], y[ranks.rank:usable:ranks.world]


def data_parallel(model: nn.Module, ranks: Ranks, device: torch.device) -> nn.Module:
    """The module a training step calls: under torchrun, `model` wrapped by DDP to average gradients."""
    if ranks.world == 1:
        return model
    return nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def weights_digest(model: nn.Module) -> str:
    return state_digest(model.state_dict())


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (CPU for a model without any)."""
    return next(model.parameters(), torch.empty(0)).device


def ranks_agree(model: nn.Module, ranks: Ranks) -> bool:
    """Whether every rank holds bit-identical weights.

    The digest is gathered on the model's device: nccl accepts only CUDA tensors, gloo CPU ones.
    """
    if ranks.world == 1:
        return True
    digest = torch.tensor(list(bytes.fromhex(weights_digest(model))), dtype=torch.int64, device=model_device(model))
    gathered = [torch.empty_like(digest) for _ in range(ranks.world)]
    torch.distributed.all_gather(gathered, digest)
    return all(torch.equal(g, gathered[0]) for g in gathered)


def gather_from_ranks(tensor: torch.Tensor, ranks: Ranks, device: torch.device) -> list[torch.Tensor]:
    """Every rank's ``tensor`` (same shape and dtype on each), on the CPU, in rank order; a collective.

    The exchange goes through ``device``: nccl accepts only CUDA tensors, gloo CPU ones.
    """
    if ranks.world == 1:
        return [tensor.cpu()]
    local = tensor.to(device)
    gathered = [torch.empty_like(local) for _ in range(ranks.world)]
    torch.distributed.all_gather(gathered, local)
    return [t.cpu() for t in gathered]
