"""What one training job works with, set up once by `start_run`: fresh from the seed, or from a Resume.

    run = start_run(config, Ranks(), resume=None)
    states = generator_states(run)   # every random stream the run draws from, for a resume checkpoint

Reproducible runs: for a given seed, device and thread count a run gives the same
bits. The init comes from the Philox spec; torch's default generators (the model's
constructors, then dropout) are seeded with ``config.seed`` inside `reproducible`;
the data order has its own CPU generator seeded with ``config.seed``, the
augmentation one per rank (``seed + 1 + rank``) on the device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SpecError
from ..init.initspec import InitSpec
from ..init.modules import init_
from . import data as datasets
from .config import DEFAULT_LR, TrainConfig
from .distributed import Ranks, data_parallel, gather_from_ranks, rank_device, shard
from .laperm import LaPerm
from .models import build_model
from .resume import Resume, spec_difference


@dataclass
class Run:
    """What one training job works with, set up once by `start_run`."""

    config: TrainConfig
    ranks: Ranks
    device: torch.device
    dataset: datasets.Dataset
    model: nn.Module
    spec: InitSpec
    net: nn.Module                  # what a step calls: the model, or DDP around it under torchrun
    optimizer: LaPerm | torch.optim.Optimizer
    train_x: torch.Tensor           # this rank's shard of the training set
    train_y: torch.Tensor
    local_batch: int                # this rank's share of the global batch
    total_steps: int                # optimizer steps of the whole run
    shuffle_rng: torch.Generator    # each epoch's order (CPU)
    augment_rng: torch.Generator    # the augmentation draws, on the device, one stream per rank
    epoch: int = 0                  # epochs completed before this run started (a resume)
    step: int = 0                   # steps taken before this run started


def learning_rate(config: TrainConfig) -> float:
    return config.lr if config.lr is not None else DEFAULT_LR[(config.optimizer, config.baseline)]


def initialized_model(config: TrainConfig, dataset: datasets.Dataset,
                      device: torch.device) -> tuple[nn.Module, InitSpec]:
    """The model, drawn by init_; biases that are not permuted start at zero as in Keras."""
    model = build_model(config.model, dataset.input_shape, dataset.num_classes)
    spec = init_(model, config.seed, config.dist, bias=model.permute_bias, block=config.block,
                 block_layout=config.block_layout, **(config.dist_params or {}))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") and name not in spec and not _is_norm_param(model, name):
                param.zero_()
    return model.to(device), spec


def _is_norm_param(model: nn.Module, name: str) -> bool:
    owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return isinstance(owner, nn.modules.batchnorm._BatchNorm)


def inner_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    lr = learning_rate(config)
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def training_optimizer(config: TrainConfig, model: nn.Module, spec: InitSpec) -> LaPerm | torch.optim.Optimizer:
    """What the loop steps: LaPerm around the inner optimizer, or the inner one alone in a baseline run."""
    inner = inner_optimizer(config, model)
    if config.baseline:
        return inner
    return LaPerm(model, inner, k=config.k, init=spec, reset_bn=config.reset_bn, k_rule=config.k_rule)


def total_steps(config: TrainConfig, shard_size: int, local_batch: int) -> int:
    """Every batch of every epoch, or config.steps if that is fewer."""
    planned = math.ceil(shard_size / local_batch) * config.epochs
    return planned if config.steps is None else min(config.steps, planned)


def start_run(config: TrainConfig, ranks: Ranks, resume: Resume | None = None) -> Run:
    """Everything the loop needs; call inside `reproducible`, which has seeded torch's default generators."""
    device = rank_device(config.device, ranks)
    dataset = datasets.get_dataset(config.data, config.data_dir)
    model, spec = initialized_model(config, dataset, device)  # the constructors draw from the default generator
    if resume is not None:
        load_weights(model, spec, resume)
    net = data_parallel(model, ranks, device)
    optimizer = training_optimizer(config, model, spec)
    train_x, train_y = shard(dataset.train_x, dataset.train_y, ranks)
    local_batch = max(1, config.batch_size // ranks.world)
    run = Run(config, ranks, device, dataset, model, spec, net, optimizer, train_x, train_y, local_batch,
              total_steps=total_steps(config, len(train_y), local_batch),
              shuffle_rng=torch.Generator(device="cpu").manual_seed(config.seed),
              augment_rng=torch.Generator(device=device).manual_seed(config.seed + 1 + ranks.rank))
    if resume is not None:
        resume_counters(run, resume)
    return run


def load_weights(model: nn.Module, spec: InitSpec, resume: Resume) -> None:
    """Put the resumed weights in the model, once sure they come from the init this config draws."""
    difference = spec_difference(resume.spec, spec)
    if difference is not None:
        raise SpecError(f"--resume: the checkpoint's init spec is not the one this run draws ({difference}): "
                        f"resume with the checkpoint's model, seed and dist")
    try:
        model.load_state_dict(resume.state_dict)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines() if line.strip())
        raise SpecError(f"--resume: the checkpoint's weights do not fit the model: {detail}") from None


def resume_counters(run: Run, resume: Resume) -> None:
    """The optimizer, the random streams and the counters where the Resume left them.

    Without optimizer state: a fresh optimizer (LaPerm counting steps on from ``resume.step``)
    and fresh streams, the data order moved on by the epochs already run.
    """
    run.epoch, run.step = resume.epoch, resume.step
    if resume.optimizer is not None:
        run.optimizer.load_state_dict(resume.optimizer)
    elif isinstance(run.optimizer, LaPerm):
        run.optimizer.steps = resume.step
    if resume.generators is not None:
        restore_generators(run, resume.generators)
    else:
        for _ in range(resume.epoch):  # what iterate_batches draws at the start of each epoch
            torch.randperm(len(run.train_y), generator=run.shuffle_rng, device=run.shuffle_rng.device)


def generator_states(run: Run) -> dict:
    """The state of every random stream the run draws from; a collective under torchrun (augment is per rank)."""
    states = {"torch_cpu": torch.get_rng_state(), "shuffle": run.shuffle_rng.get_state(),
              "augment": gather_from_ranks(run.augment_rng.get_state(), run.ranks, run.device)}
    if run.device.type == "cuda":
        states["torch_cuda"] = torch.cuda.get_rng_state(run.device)
    return states


def restore_generators(run: Run, states: dict) -> None:
    if len(states["augment"]) != run.ranks.world:
        raise SpecError(f"--resume: the checkpoint holds the random streams of {len(states['augment'])} "
                        f"rank(s), this run has {run.ranks.world}: resume with the same number of processes")
    if (run.device.type == "cuda") != ("torch_cuda" in states):
        raise SpecError(f"--resume: the checkpoint's random streams are not of this run's device type "
                        f"({run.device.type}): resume on the device type it was trained on")
    torch.set_rng_state(states["torch_cpu"])
    run.shuffle_rng.set_state(states["shuffle"])
    run.augment_rng.set_state(states["augment"][run.ranks.rank])
    if run.device.type == "cuda":
        torch.cuda.set_rng_state(states["torch_cuda"], run.device)
