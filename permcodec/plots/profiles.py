"""Figure 2: sorted weight profiles (Qiu & Suda, Fig. 1-2): a few rows of each layer sorted ascending,
with the 5/50/95 % quantiles over all rows at each rank drawn on top."""

from __future__ import annotations

import math

import torch

from ..perm import as_rows, sorted_pool
from .canvas import new_figure

MAX_LAYERS = 8
ROWS_SHOWN = 24  # a few dozen, as the paper draws; more make the PNG large without showing more
QUANTILES = (0.05, 0.5, 0.95)


def largest(records: list[dict], count: int = MAX_LAYERS) -> list[dict]:
    """The ``count`` largest tensors (by elements, first in file order on ties), kept in file order."""
    chosen = sorted(range(len(records)), key=lambda i: (-math.prod(records[i]["shape"]), i))[:count]
    return [records[i] for i in sorted(chosen)]


def spread_rows(count: int, shown: int = ROWS_SHOWN) -> torch.Tensor:
    """Up to ``shown`` row indices spread evenly over ``count`` rows, first and last included."""
    return torch.linspace(0, count - 1, min(shown, count)).round().long().unique()


def rank_fractions(length: int) -> torch.Tensor:
    """x of each sorted position: rank / n for rank 0..n-1."""
    return torch.arange(length, dtype=torch.float64) / length


def pool_quantiles(pool: torch.Tensor) -> dict[float, torch.Tensor]:
    """For each q of QUANTILES, the q-quantile over rows of each sorted position (nearest rank)."""
    by_position = torch.sort(pool, dim=0).values
    last = pool.shape[0] - 1
    return {q: by_position[round(q * last)] for q in QUANTILES}


def grid_shape(count: int) -> tuple[int, int]:
    columns = min(count, 4)
    return max(math.ceil(count / columns), 1), max(columns, 1)


def profiles_figure(records: list[dict], decoded: dict):
    """One subplot per layer (the largest MAX_LAYERS permuted tensors)."""
    layers = largest(records)
    rows, columns = grid_shape(len(layers))
    figure = new_figure(max(8.0, 3.2 * columns), max(4.5, 3.0 * rows))
    for index, record in enumerate(layers):
        axes = figure.add_subplot(rows, columns, index + 1)
        label = record["name"] + (" (raw)" if record["kind"] == "raw" else "")
        draw_profile(axes, label, sorted_pool(as_rows(decoded[record["name"]].float())))
        axes.set_xlabel("rank / n")
        if index % columns == 0:
            axes.set_ylabel("weight value")
    if layers:
        figure.axes[0].legend(loc="upper left", fontsize=8)
    figure.suptitle(f"Sorted weight profiles: up to {ROWS_SHOWN} rows per layer sorted ascending, "
                    "with 5/50/95 % quantiles over all rows")
    return figure


def draw_profile(axes, name: str, pool: torch.Tensor) -> None:
    x = rank_fractions(pool.shape[1]).numpy()
    for count, row in enumerate(spread_rows(pool.shape[0]).tolist()):
        axes.plot(x, pool[row].numpy(), color="C0", alpha=0.25, linewidth=0.8,
                  label="rows (sorted)" if count == 0 else None)
    for colour, (q, values) in zip(("C1", "C2", "C1"), pool_quantiles(pool).items()):
        axes.plot(x, values.numpy(), color=colour, linewidth=1.6, linestyle="-" if q == 0.5 else "--",
                  label="median" if q == 0.5 else "5 % and 95 % quantiles" if q == QUANTILES[0] else None)
    axes.set_title(f"{name} {tuple(pool.shape)}", fontsize=10)
