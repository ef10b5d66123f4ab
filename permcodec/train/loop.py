"""Train a model of the paper by LaPerm (or, with ``baseline``, by its inner optimizer alone).

    permcodec train --model conv7 --epochs 10 --k 20 --seed 0 -o model.pt
    torchrun --standalone --nproc_per_node=2 -m permcodec train --model mlp --steps 50 -o model.pt

    state = train(TrainConfig(model="mlp", epochs=4, save_every=1), checkpoint_path="model.pt")
    state = train(TrainConfig(model="mlp", epochs=8), resume=resume_from_checkpoint("model.pt"))

The saved ``model.pt`` is a plain dict readable with ``torch.load(path, weights_only=True)``:
``{"state_dict", "init" (InitSpec.to_dict()), "config", "metrics", "synced", "resume"}``
(resume.py says what the last two hold). A LaPerm run always ends on a sync, and the
"best" weights are taken only from synced states, so every final model is an exact
per-row permutation of its init; a checkpoint written every ``save_every`` epochs holds
the live weights, synced or not ("synced" says which).

The loop (`_train`): `start_run` sets up (run.py), inside `reproducible`; each epoch
(`run_epoch`) `train_epoch` steps through this rank's shuffled shard and `epoch_record`
tests the synced weights; the run ends on a sync (`end_on_sync`), and `final_summary`
checks that every rank holds the same bits.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from dataclasses import asdict, dataclass, field, replace

import torch
import torch.nn.functional as F
from torch import nn

from ..atomicfile import atomic_write
from ..errors import SpecError
from ..init.initspec import InitSpec
from ..progress import progress
from . import data as datasets
from .augment import AUGMENTATIONS, augment
from .config import TrainConfig, check_config, k_for_epoch
from .distributed import Ranks, rank_device, ranks_agree, start_distributed
from .evaluate import evaluate
from .reproducible import reproducible
from .resume import Resume, check_resume
from .run import Run, generator_states, start_run


@dataclass
class RunState:
    """What a run produced: the model, its spec, its metrics, the weights to save and where to continue from."""

    model: nn.Module
    spec: InitSpec
    config: TrainConfig
    metrics: list = field(default_factory=list)
    saved_state: dict | None = None
    synced: bool = False            # whether saved_state is what a sync leaves (an exact permutation of the init)
    resume: Resume | None = None    # the live weights, optimizer, random streams and counters at the end
    resumed: dict | None = None     # the record logged when this run continued a Resume
    best_acc: float = -1.0          # keep="best": the test accuracy of saved_state


def cpu_state(model: nn.Module, synced: dict | None = None) -> dict:
    """A CPU copy of the model's state dict, with the ``synced`` weights in place of the trained ones."""
    state = {name: t.detach().cpu().clone() for name, t in model.state_dict().items()}
    state.update({name: w.cpu().clone() for name, w in (synced or {}).items()})
    return state


def cpu_copy(obj):
    """``obj`` with every tensor in it (through dicts, lists and tuples) copied to the CPU."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().clone()
    if isinstance(obj, dict):
        return {key: cpu_copy(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(cpu_copy(value) for value in obj)
    return obj


# ---------------------------------------------------------------- the run

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


def train(config: TrainConfig, *, progress: bool = True, log=None, resume: Resume | None = None,
          checkpoint_path=None) -> RunState:
    """Run one training job; ``log(dict)`` receives each metrics record (default: JSON lines on stdout).

    ``resume`` continues where a Resume left off (resume.py); ``checkpoint_path`` is where a
    resume checkpoint goes every ``config.save_every`` epochs (under torchrun, rank 0 writes it).
    """
    check_config(config)
    if config.save_every is not None and checkpoint_path is None:
        raise SpecError(f"save_every={config.save_every} needs a checkpoint_path to write to")
    if resume is not None:
        check_resume(config, resume)
    ranks = start_distributed(config.device)
    try:
        with reproducible(rank_device(config.device, ranks), config.seed):
            state = _train(config, ranks, progress=progress and ranks.is_main, log=log or print_json,
                           resume=resume, checkpoint_path=checkpoint_path)
        return state
    finally:
        if ranks.world > 1:
            # The DDP wrapper sits in reference cycles; left to the interpreter's exit, its reducer outlives the
            # process group and a rank can abort ("terminate called without an active exception").
            gc.collect()
            torch.distributed.destroy_process_group()


def print_json(record: dict) -> None:
    print(json.dumps(record), flush=True)


def _train(config: TrainConfig, ranks: Ranks, *, progress: bool, log, resume: Resume | None,
           checkpoint_path) -> RunState:
    run = start_run(config, ranks, resume)
    state = start_state(run, resume, log)
    started = time.perf_counter() - (state.metrics[-1].get("seconds", 0.0) if state.metrics else 0.0)
    step = run.step
    bar = progress_bar(config, run.total_steps, initial=step, enabled=progress)
    for epoch in range(run.epoch + 1, config.epochs + 1):
        step, last = run_epoch(run, state, epoch, step, bar, started, log)
        if last:
            break
        if config.save_every is not None and epoch % config.save_every == 0:
            save_resume_point(run, state, epoch, step, checkpoint_path)
    bar.close()
    if config.keep == "last":
        state.saved_state = cpu_state(run.model)
    state.synced = not config.baseline
    state.resume = resume_point(run, state, epoch, step, live=state.saved_state if config.keep == "last" else None)
    summary = final_summary(run, state, step, started)
    publish(state, summary, ranks, log)
    if not summary["ranks_identical"]:
        raise RuntimeError("ranks hold different weights after training; this is a bug")
    return state


def start_state(run: Run, resume: Resume | None, log) -> RunState:
    """A fresh RunState, or one holding the Resume's records and best weights; a resumed run says how it goes on."""
    state = RunState(run.model, run.spec, run.config)
    if resume is None:
        return state
    state.metrics = [record for record in resume.metrics if not record.get("final")]
    if resume.best_state_dict is not None:
        state.saved_state = resume.best_state_dict
        state.best_acc = max((r["test_acc"] for r in state.metrics if "epoch" in r), default=-1.0)
    restored = {True: "restored", False: "fresh"}
    state.resumed = {"resumed": True, "after_epoch": run.epoch, "at_step": run.step,
                     "optimizer": restored[resume.optimizer is not None],
                     "random_streams": restored[resume.generators is not None]}
    if run.ranks.is_main:
        log(state.resumed)
    return state


def run_epoch(run: Run, state: RunState, epoch: int, step: int, bar, started: float, log) -> tuple[int, bool]:
    """Train one epoch, test the synced weights and keep the record; (steps so far, whether the run ends here)."""
    if not run.config.baseline:
        run.optimizer.k = k_for_epoch(run.config, epoch)
    stats = train_epoch(run, epoch, run.total_steps - step, bar)
    step += stats.steps
    last = step >= run.total_steps or epoch == run.config.epochs
    if last:
        end_on_sync(run)
    synced = None if run.config.baseline or last else run.optimizer.synced_weights()  # last: synced for real
    record = epoch_record(run, epoch, step, stats, synced, started)
    publish(state, record, run.ranks, log)
    if run.config.keep == "best" and record["test_acc"] > state.best_acc:
        state.best_acc, state.saved_state = record["test_acc"], cpu_state(run.model, synced)
    return step, last


def progress_bar(config: TrainConfig, total: int, *, initial: int = 0, enabled: bool):
    """A bar on a terminal only: in a log, the epoch records on stdout are the progress."""
    kind = "baseline" if config.baseline else "laperm"
    bar = progress(total, f"{config.model} {kind}", "steps", enabled=enabled and sys.stderr.isatty())
    bar.update(initial)
    return bar


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


def resume_point(run: Run, state: RunState, epoch: int, step: int, live: dict | None = None) -> Resume:
    """Where the run stands after ``epoch``: a collective under torchrun (it gathers the ranks' streams)."""
    return Resume(state_dict=live if live is not None else cpu_state(run.model), spec=run.spec,
                  optimizer=cpu_copy(run.optimizer.state_dict()), generators=generator_states(run), epoch=epoch,
                  step=step, metrics=list(state.metrics), best_state_dict=state.saved_state, config=asdict(run.config))


def save_resume_point(run: Run, state: RunState, epoch: int, step: int, path) -> None:
    """Write a checkpoint to continue from after ``epoch``; every rank takes part, rank 0 writes."""
    point = resume_point(run, state, epoch, step)
    if run.config.keep == "best":  # the best weights so far, taken synced
        mid_run = replace(state, synced=not run.config.baseline, resume=point)
    else:  # the live weights, synced only right after a sync
        synced = not run.config.baseline and run.optimizer.steps_since_sync == 0
        mid_run = replace(state, saved_state=point.state_dict, synced=synced, resume=point)
    if run.ranks.is_main:
        save_checkpoint(mid_run, path)


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
    """The model.pt dict: only tensors, dicts, lists, tuples, str, int, float, bool and None."""
    ckpt = {"state_dict": state.saved_state, "init": state.spec.to_dict(), "config": asdict(state.config),
            "metrics": state.metrics, "synced": state.synced, "resume": None}
    if state.resume is not None:
        point = state.resume
        ckpt["resume"] = {"state_dict": point.state_dict, "optimizer": point.optimizer,
                          "generators": point.generators, "epoch": point.epoch, "step": point.step}
    return ckpt


def save_checkpoint(state: RunState, path) -> None:
    """Write model.pt atomically: a temp file beside the target, then rename."""
    atomic_write(path, lambda temp: torch.save(checkpoint(state), temp))
