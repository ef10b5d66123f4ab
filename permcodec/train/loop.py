"""Train a model of the paper by LaPerm (or, with ``baseline``, by its inner optimizer alone).

    permcodec train --model conv7 --epochs 10 --k 20 --seed 0 -o model.pt
    torchrun --standalone --nproc_per_node=2 -m permcodec train --model mlp --steps 50 -o model.pt

The saved ``model.pt`` is a plain dict readable with ``torch.load(path, weights_only=True)``:
``{"state_dict", "init" (InitSpec.to_dict()), "config", "metrics"}``. A LaPerm run
always ends on a sync, and the "best" weights are taken only from synced states,
so every saved model is an exact per-row permutation of its init.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..bits import tensor_bytes
from ..errors import SpecError
from ..fileio import atomic_write
from ..init.initspec import InitSpec, init_
from . import data as datasets
from .laperm import LaPerm
from .models import MODELS, build_model

OPTIMIZERS = ("adam", "sgd")


@dataclass
class TrainConfig:
    model: str = "conv7"            # one of models.MODELS
    data: str = "mnist5k"           # mnist5k (embedded), mnist or cifar10 (need data_dir)
    data_dir: str | None = None     # directory of the dataset's files
    epochs: int = 10
    steps: int | None = None        # stop after this many optimizer steps (smoke runs)
    batch_size: int = 128           # global batch; split across ranks under torchrun
    optimizer: str = "adam"         # inner optimizer: adam or sgd (momentum 0.9)
    lr: float | None = None         # None: DEFAULT_LR of the run kind (see below)
    k: int = 20                     # sync every k inner steps
    seed: int = 0                   # Philox seed of the init; also seeds dropout and shuffling
    dist: str = "he_uniform"        # init distribution (init_), the paper's default
    baseline: bool = False          # train with the inner optimizer alone (no permutation)
    augment: bool = True            # the notebooks' on-device augmentation
    reset_bn: bool = False          # reset BN gamma/beta at each sync (the rebuttal's variant)
    keep: str = "last"              # which weights to save: last (final sync) or best (best synced test acc)
    device: str = "auto"            # auto (CUDA when present), cpu or cuda


# From a 4-epoch Conv7 sweep on mnist5k (README, "Learning rates"): LaPerm+Adam
# reached 0.940 / 0.963 / 0.887 test accuracy at lr 1e-3 / 3e-3 / 1e-2, Adam alone
# 0.942 / 0.948 / 0.100 (diverged). SGD rates are untested guesses, scaled 10x.
DEFAULT_LR = {("adam", False): 3e-3, ("adam", True): 3e-3, ("sgd", False): 3e-2, ("sgd", True): 1e-2}


@dataclass
class RunState:
    """What a run produced: the model, its spec, its metrics and the weights to save."""

    model: nn.Module
    spec: InitSpec
    config: TrainConfig
    metrics: list = field(default_factory=list)
    saved_state: dict | None = None


def check_config(config: TrainConfig) -> TrainConfig:
    if config.model not in MODELS:
        raise SpecError(f"unknown model {config.model!r}; known models: {', '.join(MODELS)}")
    if config.optimizer not in OPTIMIZERS:
        raise SpecError(f"unknown optimizer {config.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if config.k <= 0:
        raise SpecError(f"k must be a positive integer, found {config.k}")
    if config.epochs <= 0 or (config.steps is not None and config.steps <= 0):
        raise SpecError(f"epochs and steps must be positive, found epochs={config.epochs} steps={config.steps}")
    if config.batch_size <= 0:
        raise SpecError(f"batch_size must be positive, found {config.batch_size}")
    if config.lr is not None and not (math.isfinite(config.lr) and config.lr > 0):
        raise SpecError(f"lr must be a positive number, found {config.lr}")
    if config.keep not in ("last", "best"):
        raise SpecError(f"keep must be 'last' or 'best', found {config.keep!r}")
    if config.device not in ("auto", "cpu", "cuda"):
        raise SpecError(f"device must be auto, cpu or cuda, found {config.device!r}")
    if config.device == "cuda" and not torch.cuda.is_available():
        raise SpecError("device 'cuda' was asked for, but no CUDA device is available")
    return config


def learning_rate(config: TrainConfig) -> float:
    return config.lr if config.lr is not None else DEFAULT_LR[(config.optimizer, config.baseline)]


# ---------------------------------------------------------------- distributed

@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1
    local: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def start_distributed(config: TrainConfig) -> Ranks:
    """Join the torchrun process group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Ranks()
    backend = "nccl" if resolve_device(config, Ranks(0, world, 0)).type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend)
    return Ranks(torch.distributed.get_rank(), world, int(os.environ.get("LOCAL_RANK", "0")))


def resolve_device(config: TrainConfig, ranks: Ranks) -> torch.device:
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    return torch.device("cuda", ranks.local) if use_cuda else torch.device("cpu")


def weights_digest(model: nn.Module) -> str:
    h = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        h.update(name.encode())
        h.update(tensor_bytes(tensor))
    return h.hexdigest()


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


# ---------------------------------------------------------------- the run

def build(config: TrainConfig, dataset: datasets.Dataset, device: torch.device) -> tuple[nn.Module, InitSpec]:
    """The model, drawn by init_; biases that are not permuted start at zero as in Keras."""
    model = build_model(config.model, dataset.input_shape, dataset.num_classes)
    spec = init_(model, config.seed, config.dist, bias=model.permute_bias)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") and name not in spec and not _is_norm_param(model, name):
                param.zero_()
    return model.to(device), spec


def _is_norm_param(model: nn.Module, name: str) -> bool:
    owner = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
    return isinstance(owner, nn.modules.batchnorm._BatchNorm)


def make_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    lr = learning_rate(config)
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


@torch.no_grad()
def evaluate(model: nn.Module, x, y, device, weights: dict | None = None, batch_size: int = 1000):
    """(loss, accuracy) on (x, y); ``weights`` temporarily replace the named parameters."""
    params = dict(model.named_parameters())
    saved = {name: params[name].detach().clone() for name in (weights or {})}
    for name, value in (weights or {}).items():
        params[name].copy_(value)
    was_training = model.training
    model.eval()
    total_loss, correct = 0.0, 0
    for images, labels in datasets.iterate_batches(x, y, batch_size, shuffle=False, generator=None, device=device):
        logits = model(images)
        total_loss += F.cross_entropy(logits, labels, reduction="sum").item()
        correct += (logits.argmax(1) == labels).sum().item()
    model.train(was_training)
    for name, value in saved.items():
        params[name].copy_(value)
    return total_loss / len(y), correct / len(y)


def shard(x, y, ranks: Ranks):
    """This rank's equal share of the training set (the tail that does not divide evenly is dropped)."""
    usable = len(y) - len(y) % ranks.world
    return x[ranks.rank:usable:ranks.world], y[ranks.rank:usable:ranks.world]


def cpu_state(model: nn.Module) -> dict:
    return {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}


def train(config: TrainConfig, *, progress: bool = True, log=None) -> RunState:
    """Run one training job; ``log(dict)`` receives each metrics record (default: JSON lines on stdout)."""
    check_config(config)
    ranks = start_distributed(config)
    try:
        return _train(config, ranks, progress=progress and ranks.is_main, log=log or print_json)
    finally:
        if ranks.world > 1:
            torch.distributed.destroy_process_group()


def print_json(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _train(config: TrainConfig, ranks: Ranks, *, progress: bool, log) -> RunState:
    from tqdm import tqdm

    device = resolve_device(config, ranks)
    dataset = datasets.get_dataset(config.data, config.data_dir)
    torch.manual_seed(config.seed)  # dropout; the init itself never touches torch's RNG
    model, spec = build(config, dataset, device)
    net = model
    if ranks.world > 1:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    inner = make_optimizer(config, model)
    optimizer = inner if config.baseline else LaPerm(model, inner, k=config.k, init=spec, reset_bn=config.reset_bn)
    state = RunState(model, spec, config)
    train_x, train_y = shard(dataset.train_x, dataset.train_y, ranks)
    shuffle = torch.Generator(device="cpu").manual_seed(config.seed)
    augment_rng = torch.Generator(device=device).manual_seed(config.seed + 1 + ranks.rank)
    local_batch = max(1, config.batch_size // ranks.world)
    steps_per_epoch = math.ceil(len(train_y) / local_batch)
    total_steps = steps_per_epoch * config.epochs if config.steps is None else min(
        config.steps, steps_per_epoch * config.epochs)
    step, best_acc, started = 0, -1.0, time.perf_counter()
    bar = tqdm(total=total_steps, disable=not progress, desc=f"{config.model} {'baseline' if config.baseline else 'laperm'}",
               unit="step", file=sys.stderr, dynamic_ncols=True)
    for epoch in range(1, config.epochs + 1):
        model.train()
        seen, loss_sum, correct = 0, 0.0, 0
        for images, labels in datasets.iterate_batches(train_x, train_y, local_batch, shuffle=True,
                                                       generator=shuffle, device=device):
            if step >= total_steps:
                break
            if config.augment:
                images = datasets.augment(images, generator=augment_rng, **datasets.AUGMENTATIONS[config.data])
            optimizer.zero_grad()
            logits = net(images)
            loss = F.cross_entropy(logits, labels)
            loss.backward()
            optimizer.step()
            step += 1
            seen += len(labels)
            loss_sum += loss.item() * len(labels)
            correct += (logits.argmax(1) == labels).sum().item()
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss_sum / seen:.3f}", acc=f"{correct / seen:.3f}")
        last = step >= total_steps or epoch == config.epochs
        if last and not config.baseline and optimizer.steps_since_sync:
            optimizer.sync()  # every saved model is an exact permutation of its init
        synced = None if config.baseline or last else optimizer.synced_weights()
        test_loss, test_acc = evaluate(model, dataset.test_x, dataset.test_y, device, synced)
        record = {"epoch": epoch, "step": step, "train_loss": loss_sum / max(seen, 1),
                  "train_acc": correct / max(seen, 1), "test_loss": test_loss, "test_acc": test_acc,
                  "seconds": round(time.perf_counter() - started, 3)}
        state.metrics.append(record)
        if ranks.is_main:
            log(record)
        if config.keep == "best" and test_acc > best_acc:
            best_acc = test_acc
            state.saved_state = cpu_state(model)
            if synced:
                state.saved_state.update({name: w.cpu().clone() for name, w in synced.items()})
        if last:
            break
    bar.close()
    if config.keep == "last":
        state.saved_state = cpu_state(model)
    summary = {"final": True, "steps": step, "syncs": 0 if config.baseline else optimizer.syncs,
               "ranks": ranks.world, "ranks_identical": ranks_agree(model, ranks),
               "test_acc": state.metrics[-1]["test_acc"], "seconds": round(time.perf_counter() - started, 3)}
    state.metrics.append(summary)
    if ranks.is_main:
        log(summary)
    if not summary["ranks_identical"]:
        raise RuntimeError("ranks hold different weights after training; this is a bug")
    return state


def checkpoint(state: RunState) -> dict:
    """The model.pt dict: only tensors, dicts, lists, str, int, float, bool and None."""
    return {"state_dict": state.saved_state, "init": state.spec.to_dict(), "config": asdict(state.config),
            "metrics": state.metrics}


def save_checkpoint(state: RunState, path) -> None:
    """Write model.pt atomically: a temp file beside the target, then rename."""
    atomic_write(path, lambda temp: torch.save(checkpoint(state), temp))
