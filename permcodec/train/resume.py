"""Continue a run: the Resume record, and reading one from the trainer's checkpoint (the synced view of a
mid-run checkpoint's weights is ``perm.synced_state_dict``, shared with the codec).

    state = train(config, resume=resume_from_checkpoint("model.pt"))   # as if the run had never stopped
    state = train(config, resume=Resume(state_dict=weights, spec=spec)) # weights only: a fresh optimizer
    weights = permcodec.perm.synced_state_dict(ckpt["state_dict"], InitSpec.from_dict(ckpt["init"]))  # unsynced

A checkpoint written by ``loop.save_checkpoint`` is the model.pt dict
(``state_dict``, ``init``, ``config``, ``metrics``) plus:

- ``synced``: whether ``state_dict`` is what a sync leaves, an exact per-row permutation
  of the init (always so at the end of a LaPerm run; mid-run, only right after a sync);
- ``resume``: ``{"state_dict"`` (the live weights, the same tensors as the top-level
  ``state_dict`` unless keep="best"), ``"optimizer"`` (``LaPerm.state_dict()``, or the inner
  optimizer's in a baseline run), ``"generators"`` (``run.generator_states``), ``"epoch"``
  and ``"step"`` (completed so far)``}``.

It holds only tensors, dicts, lists, tuples, str, int, float, bool and None, so it is
read with ``torch.load(weights_only=True)``: no pickled code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import FormatError, SpecError
from ..init.initspec import InitSpec
from ..weightsonly import load_weights_only
from .config import TrainConfig

# What a resumed run must share with the run that wrote its checkpoint when it restores the optimizer;
# epochs, steps, save_every, device and data_dir may change (another device gives other bits).
MUST_MATCH = ("model", "data", "seed", "dist", "dist_params", "block", "block_layout", "batch_size", "optimizer",
              "lr", "baseline", "augment", "reset_bn", "k", "k_schedule", "k_rule", "keep")
RESUME_KEYS = {"state_dict", "optimizer", "generators", "epoch", "step"}


@dataclass
class Resume:
    """Where a run starts again. Only ``state_dict`` and ``spec`` are needed: without the rest the
    run goes on from those weights with a fresh optimizer and fresh random streams, and says so."""

    state_dict: dict[str, torch.Tensor]           # the live weights and buffers to continue from
    spec: InitSpec                                # their init spec (the run checks it is the one its config draws)
    optimizer: dict | None = None                 # LaPerm.state_dict() (baseline: the inner one's); None: fresh
    generators: dict | None = None                # run.generator_states(); None: fresh streams from the seed
    epoch: int = 0                                # epochs completed; the run goes on with epoch + 1
    step: int = 0                                 # optimizer steps taken
    metrics: list = field(default_factory=list)   # the records so far (a "final" one is dropped)
    best_state_dict: dict | None = None           # keep="best": the best synced weights so far
    config: dict | None = None                    # the writing run's config; checked against MUST_MATCH

    @property
    def restores_optimizer(self) -> bool:
        return self.optimizer is not None


def progress_of(metrics: list) -> tuple[int, int]:
    """(epochs, steps) completed according to the last epoch record of ``metrics``; (0, 0) if none."""
    epochs = [record for record in metrics if isinstance(record, dict) and "epoch" in record]
    return (epochs[-1]["epoch"], epochs[-1]["step"]) if epochs else (0, 0)


def checked_metrics(metrics, where: str) -> list:
    """A run's metrics records as a list; FormatError unless each epoch record's epoch and step are whole
    numbers (they decide where a resumed run starts, and a file may carry anything)."""
    if metrics is None:
        return []
    if not isinstance(metrics, list) or not all(isinstance(record, dict) for record in metrics):
        raise FormatError(f"{where}: metrics must be a list of records, found {type(metrics).__name__}")
    for record in metrics:
        if "epoch" in record and not all(isinstance(record.get(key), int) and not isinstance(record.get(key), bool)
                                         and record[key] >= 0 for key in ("epoch", "step")):
            raise FormatError(f"{where}: an epoch record needs whole-number epoch and step, found {record!r}")
    return list(metrics)


def weights_only_resume(state_dict: dict, spec: InitSpec, metrics: list | None = None,
                        config: dict | None = None) -> Resume:
    """A Resume from weights alone (a decoded .pc file), counting on from the epochs its ``metrics`` record."""
    metrics = checked_metrics(metrics, "the stored metrics")
    epoch, step = progress_of(metrics)
    return Resume(state_dict=state_dict, spec=spec, epoch=epoch, step=step, metrics=metrics, config=config)


def resume_from_checkpoint(path) -> Resume:
    """The Resume that ``save_checkpoint`` recorded in ``path`` (model.pt, final or mid-run).

    A checkpoint without a "resume" record (written before there was one) gives a weights-only Resume.
    """
    path = Path(path)
    ckpt = load_weights_only(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict) or ckpt.get("init") is None:
        raise FormatError(f"{path} is not a permcodec training checkpoint: expected a dict with 'state_dict' "
                          f"and 'init' entries")
    spec, metrics = InitSpec.from_dict(ckpt["init"]), checked_metrics(ckpt.get("metrics"), str(path))
    record = ckpt.get("resume")
    if record is None:
        return weights_only_resume(ckpt["state_dict"], spec, metrics, ckpt.get("config"))
    _check_resume_record(path, record)
    best = ckpt["state_dict"] if (ckpt.get("config") or {}).get("keep") == "best" else None
    return Resume(state_dict=record["state_dict"], spec=spec, optimizer=record["optimizer"],
                  generators=record["generators"], epoch=record["epoch"], step=record["step"], metrics=metrics,
                  best_state_dict=best, config=ckpt.get("config"))


def _check_resume_record(path, record) -> None:
    if not isinstance(record, dict) or set(record) != RESUME_KEYS:
        found = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise FormatError(f"{path}: 'resume' must be a dict with keys {sorted(RESUME_KEYS)}, found {found}")
    for key in ("epoch", "step"):
        if not isinstance(record[key], int) or isinstance(record[key], bool) or record[key] < 0:
            raise FormatError(f"{path}: resume {key} must be a non-negative integer, found {record[key]!r}")
    if not isinstance(record["state_dict"], dict):
        raise FormatError(f"{path}: resume state_dict must be a dict of tensors")


def check_resume(config: TrainConfig, resume: Resume) -> None:
    """Refuse a Resume this config cannot continue: no epochs left, or settings that must match differ."""
    if resume.epoch >= config.epochs or (config.steps is not None and resume.step >= config.steps):
        raise SpecError(f"--resume: the checkpoint is at epoch {resume.epoch} (step {resume.step}), this run asks "
                        f"for epochs={config.epochs} steps={config.steps}: ask for more epochs or steps to continue")
    if resume.restores_optimizer and resume.config is not None:
        differ = [f"{name}={resume.config.get(name)!r}, this run {name}={getattr(config, name)!r}"
                  for name in MUST_MATCH if resume.config.get(name) != getattr(config, name)]
        if differ:
            raise SpecError(f"--resume: the checkpoint was trained with {'; '.join(differ)}: continue with the "
                            f"checkpoint's settings (only epochs, steps, save_every, device, data_dir may change)")


def spec_difference(found: InitSpec, expected: InitSpec) -> str | None:
    """How ``found`` differs from ``expected`` (the first differing tensor), or None if they are equal."""
    if found == expected:
        return None
    if found.names() != expected.names():
        return f"tensors {found.names()} vs {expected.names()}"
    for a, b in zip(found, expected):
        if a != b:
            return f"tensor {a.name!r}: seed {a.seed} dist {a.dist} vs seed {b.seed} dist {b.dist}"
    return "records differ"
