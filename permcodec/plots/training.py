"""Figure 4: train and test loss and accuracy per epoch, from a ``permcodec train`` log or the file's metadata.

The trainer measures ``test_acc`` and ``test_loss`` with synced weights at each epoch end (the evaluation
``--keep best`` chooses by); ``train_*`` are its means over the epoch's steps. Syncs are drawn only where
the config makes them derivable (a constant k) and the count agrees with the log's final record.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import SpecError
from .canvas import new_figure

EPOCH_KEYS = ("epoch", "step", "train_loss", "train_acc", "test_loss", "test_acc")


def read_log(log) -> list[dict]:
    """The JSON objects of a ``permcodec train`` log, one per line (blank and non-JSON lines skipped; a byte that
    is not UTF-8 reads as U+FFFD, so a binary file given by mistake has no records instead of a decode error)."""
    records = []
    for line in Path(log).read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, a number past int's digit limit, or nested too deep
            continue
        if isinstance(value, dict):
            records.append(value)
    return records


def metrics_of(metadata: dict[str, str], log=None) -> tuple[list[dict], str]:
    """(the run's records, where they came from): the log where given, else "permcodec.metrics"."""
    if log is not None:
        records = read_log(log)
        if not epoch_records(records):
            raise SpecError(f"log {log} has no epoch records (JSON lines with keys {', '.join(EPOCH_KEYS)})")
        return records, f"log {Path(log).name}"
    try:
        stored = json.loads(metadata.get("permcodec.metrics", "null"))
    except json.JSONDecodeError:
        stored = None
    records = [m for m in stored if isinstance(m, dict)] if isinstance(stored, list) else []
    return records, "file metadata permcodec.metrics"


MAX_SYNC_TICKS = 10_000  # a tick per sync; more would be a grey bar, and the file's step counts are untrusted


def epoch_records(records: list[dict]) -> list[dict]:
    """The epoch records: every EPOCH_KEYS value a number, epoch and step whole numbers (the file may lie)."""
    return [r for r in records if isinstance(r, dict)
            and all(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) for key in EPOCH_KEYS)
            and all(isinstance(r.get(key), int) and r[key] >= 0 for key in ("epoch", "step"))]


def sync_steps(records: list[dict], config) -> list[int] | None:
    """The optimizer steps at which the run synced, where a constant k makes them derivable and the final
    record's sync count (if any) agrees: multiples of k, and the last step (the run ends on a sync)."""
    epochs = epoch_records(records)
    k = config.get("k") if isinstance(config, dict) else None
    if not epochs or not isinstance(k, int) or k < 1 or config.get("k_schedule") or config.get("baseline"):
        return None
    last = max(r["step"] for r in epochs)
    if last // k > MAX_SYNC_TICKS:  # too many to draw, or a file claiming absurd step counts
        return None
    steps = sorted(set(range(k, last + 1, k)) | {last})
    final = next((r for r in records if r.get("final") is True), None)
    if final is not None and final.get("syncs") not in (None, len(steps)):
        return None
    return steps


def epoch_position(step: int, epochs: list[dict]) -> float:
    """Where optimizer ``step`` falls on the epoch axis: epoch e ends at its record's step, epoch 0 at 0."""
    previous_step, previous_epoch = 0, 0
    for record in epochs:
        if step <= record["step"]:
            span = record["step"] - previous_step
            return previous_epoch + (step - previous_step) / span * (record["epoch"] - previous_epoch) if span \
                else record["epoch"]
        previous_step, previous_epoch = record["step"], record["epoch"]
    return previous_epoch


def training_figure(records: list[dict], config, stored_acc: float | None, source: str):
    """Loss (axes 0) and accuracy (axes 1) per epoch; syncs and the stored weights' accuracy marked."""
    epochs = epoch_records(records)
    figure = new_figure(8.0, 4.5)
    loss, accuracy = figure.subplots(1, 2)
    x = [r["epoch"] for r in epochs]
    baseline = isinstance(config, dict) and config.get("baseline")
    test_label = "test (epoch end)" if baseline else "test, synced weights (epoch end)"
    for axes, key, unit in ((loss, "loss", "cross-entropy (nats)"), (accuracy, "acc", "accuracy (fraction)")):
        axes.plot(x, [r[f"train_{key}"] for r in epochs], color="C0", label="train (mean over the epoch)")
        axes.plot(x, [r[f"test_{key}"] for r in epochs], color="C1", marker="o",
                  label=test_label)
        axes.set_xlabel("epoch")
        axes.set_ylabel(unit)
        mark_syncs(axes, sync_steps(records, config), epochs, config)
    if stored_acc is not None:
        keep = config.get("keep", "last") if isinstance(config, dict) else "last"
        best = next((r for r in reversed(epochs) if r["test_acc"] == stored_acc), None)
        if best is not None:
            accuracy.plot([best["epoch"]], [stored_acc], linestyle="none", marker="*", markersize=14,
                          color="C3", label=f"stored weights (keep={keep}): {stored_acc:.4f}")
    loss.set_title("loss")
    accuracy.set_title("accuracy")
    figure.legend(*accuracy.get_legend_handles_labels(), loc="outside lower center", ncols=2, fontsize=9)
    figure.suptitle(f"Training curves per epoch ({source})")
    return figure


def mark_syncs(axes, steps: list[int] | None, epochs: list[dict], config) -> None:
    if not steps:
        return
    positions = [epoch_position(step, epochs) for step in steps]
    axes.plot(positions, [0.0] * len(positions), linestyle="none", marker="|", markersize=10, color="C2",
              transform=axes.get_xaxis_transform(), clip_on=False,
              label=f"sync (every k={config['k']} steps, from the config; derived)")
