"""Train a model of the paper by LaPerm (or, with ``baseline``, by its inner optimizer alone).

    permcodec train --model conv7 --epochs 10 --k 20 --seed 0 -o model.pt
    torchrun --standalone --nproc_per_node=2 -m permcodec train --model mlp --steps 50 -o model.pt

The saved ``model.pt`` is a plain dict readable with ``torch.load(path, weights_only=True)``:
``{"state_dict", "init" (InitSpec.to_dict()), "config", "metrics"}``. A LaPerm run
always ends on a sync, and the "best" weights are taken only from synced states,
so every saved model is an exact per-row permutation of its init.

The loop (`_train`): `start_run` sets up; each epoch `train_epoch` steps through this
rank's shuffled shard and `epoch_record` tests the synced weights; the run ends on a
sync (`end_on_sync`), and `final_summary` checks that every rank holds the same bits.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..atomicfile import atomic_write
from ..init.initspec import InitSpec, init_
from . import data as datasets
from .augment import AUGMENTATIONS, augment
from .config import DEFAULT_LR, TrainConfig, check_config
from .distributed import (
    Ranks,
    data_parallel,
    rank_device,
    ranks_agree,
    shard,
    start_distributed,
)
from .laperm import LaPerm
from .models import build_model


@dataclass
class RunState:
    """What a run produced: the model, its spec, its metrics and the weights to save."""

    model: nn.Module
    spec: InitSpec
    config: TrainConfig
    metrics: list = field(default_factory=list)
    saved_state: dict | None = None


def learning_rate(config: TrainConfig) -> float:
    return config.lr if config.lr is not None else DEFAULT_LR[(config.optimizer, config.baseline)]


# ---------------------------------------------------------------- the model and its optimizer

def initialized_model(config: TrainConfig, dataset: datasets.Dataset,
                      device: torch.device) -> tuple[nn.Module, InitSpec]:
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


def inner_optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    lr = learning_rate(config)
    if config.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)


def training_optimizer(config: TrainConfig, model: nn.Module, spec: InitSpec) -> LaPerm | torch.optim.Optimizer:
    """What the loop steps: LaPerm around the inner optimizer, or the inner one alone in a baseline run."""
    inner = inner_optimizer(config, model)
    return inner if config.baseline else LaPerm(model, inner, k=config.k, init=spec, reset_bn=config.reset_bn)


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


def cpu_state(model: nn.Module, synced: dict | None = None) -> dict:
    """A CPU copy of the model's state dict, with the ``synced`` weights in place of the trained ones."""
    state = {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}
    state.update({name: w.cpu().clone() for name, w in (synced or {}).items()})
    return state


# ---------------------------------------------------------------- the run

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


@dataclass
class EpochStats:
    """Running totals over one epoch's training batches."""

    steps: int = 0
    seen: int = 0
    loss_sum: float = 0.0
    correct: int = 0

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        self.steps += 1
        self.seen += len(labels)
        self.loss_sum += loss.item() * len(labels)
        self.correct += (logits.argmax(1) == labels).sum().item()

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.seen, 1)

    @property
    def accuracy(self) -> float:
        return self.correct / max(self.seen, 1)


def train(config: TrainConfig, *, progress: bool = True, log=None) -> RunState:
    """Run one training job; ``log(dict)`` receives each metrics record (default: JSON lines on stdout)."""
    check_config(config)
    ranks = start_distributed(config.device)
    try:
        return _train(config, ranks, progress=progress and ranks.is_main, log=log or print_json)
    finally:
        if ranks.world > 1:
            torch.distributed.destroy_process_group()


def print_json(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _train(config: TrainConfig, ranks: Ranks, *, progress: bool, log) -> RunState:
    run = start_run(config, ranks)
    state = RunState(run.model, run.spec, config)
    step, best_acc, started = 0, -1.0, time.perf_counter()
    bar = progress_bar(config, run.total_steps, enabled=progress)
    for epoch in range(1, config.epochs + 1):
        stats = train_epoch(run, epoch, run.total_steps - step, bar)
        step += stats.steps
        last = step >= run.total_steps or epoch == config.epochs
        if last:
            end_on_sync(run)
        synced = None if config.baseline or last else run.optimizer.synced_weights()  # last: synced for real
        record = epoch_record(run, epoch, step, stats, synced, started)
        publish(state, record, ranks, log)
        if config.keep == "best" and record["test_acc"] > best_acc:
            best_acc, state.saved_state = record["test_acc"], cpu_state(run.model, synced)
        if last:
            break
    bar.close()
    if config.keep == "last":
        state.saved_state = cpu_state(run.model)
    summary = final_summary(run, state, step, started)
    publish(state, summary, ranks, log)
    if not summary["ranks_identical"]:
        raise RuntimeError("ranks hold different weights after training; this is a bug")
    return state


def start_run(config: TrainConfig, ranks: Ranks) -> Run:
    device = rank_device(config.device, ranks)
    dataset = datasets.get_dataset(config.data, config.data_dir)
    torch.manual_seed(config.seed)  # dropout; the init itself never touches torch's RNG
    model, spec = initialized_model(config, dataset, device)
    net = data_parallel(model, ranks, device)
    optimizer = training_optimizer(config, model, spec)
    train_x, train_y = shard(dataset.train_x, dataset.train_y, ranks)
    local_batch = max(1, config.batch_size // ranks.world)
    return Run(config, ranks, device, dataset, model, spec, net, optimizer, train_x, train_y, local_batch,
               total_steps=total_steps(config, len(train_y), local_batch),
               shuffle_rng=torch.Generator(device="cpu").manual_seed(config.seed),
               augment_rng=torch.Generator(device=device).manual_seed(config.seed + 1 + ranks.rank))


def total_steps(config: TrainConfig, shard_size: int, local_batch: int) -> int:
    """Every batch of every epoch, or config.steps if that is fewer."""
    planned = math.ceil(shard_size / local_batch) * config.epochs
    return planned if config.steps is None else min(config.steps, planned)


def progress_bar(config: TrainConfig, total: int, *, enabled: bool):
    from tqdm import tqdm

    kind = "baseline" if config.baseline else "laperm"
    return tqdm(total=total, disable=not enabled, desc=f"{config.model} {kind}", unit="step", file=sys.stderr,
                dynamic_ncols=True)


def train_epoch(run: Run, epoch: int, steps_left: int, bar) -> EpochStats:
    """One pass over this rank's shard in a fresh order, stopping early after ``steps_left`` steps."""
    run.model.train()
    stats = EpochStats()
    for images, labels in datasets.iterate_batches(run.train_x, run.train_y, run.local_batch, shuffle=True,
                                                   generator=run.shuffle_rng, device=run.device):
        if stats.steps >= steps_left:
            break
        if run.config.augment:
            images = augment(images, generator=run.augment_rng, **AUGMENTATIONS[run.config.data])
        loss, logits = train_step(run, images, labels)
        stats.add(loss, logits, labels)
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{stats.loss:.3f}", acc=f"{stats.accuracy:.3f}")
    return stats


def train_step(run: Run, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step on a batch; (loss, logits)."""
    run.optimizer.zero_grad()
    logits = run.net(images)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    run.optimizer.step()
    return loss, logits


def end_on_sync(run: Run) -> None:
    """Sync after the last step, so that every saved model is an exact permutation of its init."""
    if not run.config.baseline and run.optimizer.steps_since_sync:
        run.optimizer.sync()


def epoch_record(run: Run, epoch: int, step: int, stats: EpochStats, synced: dict | None, started: float) -> dict:
    """The epoch's metrics: its training totals, and the test set run with ``synced`` in place of the weights."""
    test_loss, test_acc = evaluate(run.model, run.dataset.test_x, run.dataset.test_y, run.device, synced)
    return {"epoch": epoch, "step": step, "train_loss": stats.loss, "train_acc": stats.accuracy,
            "test_loss": test_loss, "test_acc": test_acc, "seconds": round(time.perf_counter() - started, 3)}


def final_summary(run: Run, state: RunState, step: int, started: float) -> dict:
    """The run's last record; ``ranks_agree`` is a collective, so every rank must make it."""
    return {"final": True, "steps": step, "syncs": 0 if run.config.baseline else run.optimizer.syncs,
            "ranks": run.ranks.world, "ranks_identical": ranks_agree(run.model, run.ranks),
            "test_acc": state.metrics[-1]["test_acc"], "seconds": round(time.perf_counter() - started, 3)}


def publish(state: RunState, record: dict, ranks: Ranks, log) -> None:
    """Keep the record in the run's metrics; only the main rank logs it."""
    state.metrics.append(record)
    if ranks.is_main:
        log(record)


def checkpoint(state: RunState) -> dict:
    """The model.pt dict: only tensors, dicts, lists, str, int, float, bool and None."""
    return {"state_dict": state.saved_state, "init": state.spec.to_dict(), "config": asdict(state.config),
            "metrics": state.metrics}


def save_checkpoint(state: RunState, path) -> None:
    """Write model.pt atomically: a temp file beside the target, then rename."""
    atomic_write(path, lambda temp: torch.save(checkpoint(state), temp))
