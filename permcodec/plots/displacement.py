"""Figure 3: how far training moved each weight within its row: |trained rank - initial rank| / n."""

from __future__ import annotations

import torch

from ..perm import as_rows, row_ranks
from .canvas import label_tensors, new_figure
from .profiles import largest

BINS = 40
RANDOM_MEAN = 1 / 3  # E|U - V| for independent uniform ranks: what a random permutation gives, for large n


def rank_displacement(trained: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """Flat float64 |rank of each weight in its trained row - its rank in the initial row| / row length."""
    trained_rows, initial_rows = as_rows(trained.float()), as_rows(initial.float())
    moved = (row_ranks(trained_rows) - row_ranks(initial_rows)).abs().reshape(-1)
    return moved.to(torch.float64) / max(trained_rows.shape[1], 1)


def displacements(records: list[dict], decoded: dict, spec) -> dict[str, torch.Tensor]:
    """{name: rank displacement} for every permuted tensor with elements, initial values regenerated."""
    return {t["name"]: rank_displacement(decoded[t["name"]], spec[t["name"]].regenerate())
            for t in records if decoded[t["name"]].numel()}


def displacement_figure(records: list[dict], moved: dict[str, torch.Tensor]):
    """Histograms of the largest layers (axes 0) and the mean displacement of every layer (axes 1)."""
    figure = new_figure(8.0, 4.5)
    histogram, means = figure.subplots(1, 2, width_ratios=[3, 2])
    for record in largest([t for t in records if t["name"] in moved]):
        histogram.hist(moved[record["name"]].numpy(), bins=BINS, range=(0, 1), density=True, histtype="step",
                       linewidth=1.4, label=record["name"])
    histogram.set_xlabel("|trained rank − initial rank| / n")
    histogram.set_ylabel("density (per unit of rank / n)")
    histogram.set_title("distribution per layer")
    if moved:
        histogram.legend(fontsize=8)
    names = list(moved)
    means.bar(range(len(names)), [float(moved[name].mean()) for name in names], 0.6, label="mean")
    means.axhline(RANDOM_MEAN, color="C1", linestyle="--", label="random permutation (1/3)")
    label_tensors(means, names)
    means.set_ylabel("mean |Δ rank| / n")
    means.set_title("mean per layer")
    means.legend(fontsize=8)
    figure.suptitle("Rank displacement of each weight within its row, trained vs. initial")
    return figure
