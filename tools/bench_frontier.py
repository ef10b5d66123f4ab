"""Test accuracy against stored bits per weight, on the embedded digits: exact LaPerm settings beside quantizers.

    python tools/bench_frontier.py --part blocks          # runs one part, appends raw lines under tools/results/
    python tools/bench_frontier.py --table                # the frontier table of every recorded run
    python tools/bench_frontier.py --smoke                # the MLP, 1 epoch, 1 seed, a few settings (a minute)

Each LaPerm setting trains Conv7 for 4 epochs: first an lr sweep on seed 0, then seeds 1 and 2 at the best lr
(the one with the highest seed-0 test accuracy). Its bits are those of the .pc file at level ``max``, counted
over the tensors the init spec names (Conv7: every Conv/Linear weight and bias); every codec below stores that
same set, and BatchNorm is stored alike by all of them.

The Adam model (``--baseline``) gets the same sweep, and each of its runs is also stored as fp16 and by
per-channel round-to-nearest (RTN) at 2-8 bits + zstd-19: each output channel's min and step (two float32),
its codes as bytes, zstd-19 over the tensor; biases (1-D) stay float32. NNCodec rows appear where NNCodec is installed
(``PERMCODEC_NNCODEC_PYTHON``, tools/README.md); without it they are skipped.

Every finished run is one JSON line in tools/results/frontier-<model>-<part>.jsonl, written as soon as the run
ends; a rerun skips the runs already recorded, so an interrupted part picks up where it stopped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
import zstandard

import permcodec
from permcodec import perm
from permcodec.train.config import TrainConfig
from permcodec.train.data import get_dataset
from permcodec.train.evaluate import evaluate
from permcodec.train.loop import train

RESULTS = Path(__file__).resolve().parent / "results"
LRS = (1e-3, 3e-3, 1e-2)
SEEDS = (0, 1, 2)
RTN_BITS = (2, 3, 4, 5, 6, 7, 8)


@dataclass(frozen=True)
class Setting:
    name: str
    part: str
    overrides: dict = field(default_factory=dict)  # TrainConfig fields
    baseline: bool = False                          # the Adam model and the quantizers applied to it


def settings() -> list[Setting]:
    rows = [Setting("laperm full row", "rows")]
    rows += [Setting(f"laperm block {b}", "blocks", {"block": b}) for b in (4, 8, 16, 32, 64, 256)]
    rows += [Setting(f"laperm block 16 {layout}", "layouts", {"block": 16, "block_layout": layout})
             for layout in ("strided", "contiguous")]
    rows += [Setting(f"laperm block {b} contiguous", "contiguous", {"block": b, "block_layout": "contiguous"})
             for b in (4, 8, 32, 64, 256)]
    rows += [Setting(f"levels K={k}", "levels", {"dist": "levels", "dist_params": {"num_levels": k}})
             for k in (4, 8, 16)]
    rows += [Setting(f"sparse density {d}", "sparse", {"dist": "sparse", "dist_params": {"density": d}})
             for d in (0.5, 0.3)]
    rows += [Setting("adam", "adam", baseline=True)]
    return rows


SMOKE = ("laperm full row", "laperm block 16", "levels K=8", "sparse density 0.5", "adam")


# ---------------------------------------------------------------- measuring one run

def pc_bits(state, spec) -> tuple[float, float]:
    """(stored bits, bound bits) of the permuted tensors: their sections of a .pc file at level max."""
    data = permcodec.encode({"state_dict": state, "init": spec.to_dict()}, level="max")
    with permcodec.PCFile(data) as f:
        stored = sum(8 * f.record(name)["length"] for name in spec.names())
    bound = sum(perm.pools_of(record).bound_bits() for record in spec)
    return stored, bound


def rtn(weight: torch.Tensor, bits: int) -> tuple[torch.Tensor, int]:
    """Per-output-channel round-to-nearest on a grid of 2^bits levels from the row's min to its max:
    (the dequantized weight, bytes stored: zstd-19 of the codes + two float32 per channel). A 1-D tensor
    (a bias) is kept in float32, as quantizers usually keep biases (NNCodec codes them near-losslessly)."""
    if weight.dim() == 1:
        return weight.clone(), 4 * weight.numel()
    rows = weight.reshape(weight.shape[0], -1).double()
    low, high = rows.min(dim=1, keepdim=True).values, rows.max(dim=1, keepdim=True).values
    levels = (1 << bits) - 1
    step = torch.where(high > low, (high - low) / levels, torch.ones_like(high))
    codes = torch.round((rows - low) / step).clamp(0, levels)
    step32, low32 = step.float(), low.float()
    restored = (low32 + codes.float() * step32).reshape(weight.shape)
    stored = len(zstandard.ZstdCompressor(level=19).compress(codes.to(torch.uint8).numpy().tobytes()))
    return restored, stored + 8 * rows.shape[0]


def quantizer_rows(state, names, model, dataset) -> list[dict]:
    """fp16 and RTN 2-8 bits of a trained Adam model: each one's test accuracy and stored bits."""
    weights = sum(state[name].numel() for name in names)
    found = [("adam fp16", {name: state[name].half().float() for name in names}, 16 * weights)]
    for bits in RTN_BITS:
        quantized = {name: rtn(state[name], bits) for name in names}
        found.append((f"adam rtn {bits}-bit + zstd", {n: q[0] for n, q in quantized.items()},
                      8 * sum(q[1] for q in quantized.values())))
    found += nncodec_rows(state, names)
    rows = []
    for name, replaced, stored in found:
        accuracy = evaluate(model, dataset.test_x, dataset.test_y, "cpu", weights=replaced)[1]
        rows.append({"setting": name, "test_acc": accuracy, "bits_per_weight": stored / weights})
    return rows


def nncodec_rows(state, names) -> list:
    """NNCodec rows where NNCodec is installed (tools/README.md: PERMCODEC_NNCODEC_PYTHON); none otherwise."""
    from frontier_nncodec import nncodec_rows as rows

    return rows(state, names)


def run_one(setting: Setting, config: TrainConfig, dataset) -> list[dict]:
    started = time.perf_counter()
    state = train(config, progress=False, log=lambda record: None)
    final = state.metrics[-1] if state.metrics else {}
    names = state.spec.names()  # the Conv/Linear weights, permuted or not
    weights = sum(state.saved_state[name].numel() for name in names)
    base = {"model": config.model, "epochs": config.epochs, "seed": config.seed, "lr": config.lr,
            "weights": weights}
    if setting.baseline:
        accuracy = evaluate(state.model, dataset.test_x, dataset.test_y, "cpu",
                            weights={n: state.saved_state[n] for n in names})[1]
        rows = [{"setting": "adam fp32", "test_acc": accuracy, "bits_per_weight": 32.0}]
        rows += quantizer_rows(state.saved_state, names, state.model, dataset)
    else:
        stored, bound = pc_bits(state.saved_state, state.spec)
        rows = [{"setting": setting.name, "test_acc": final.get("test_acc"), "bits_per_weight": stored / weights,
                 "bound_bits_per_weight": bound / weights}]
    seconds = time.perf_counter() - started
    return [{**base, **row, "run": setting.name, "seconds": round(seconds, 1)} for row in rows]


# ---------------------------------------------------------------- a part: sweep, then seeds

def results_file(model: str, part: str, out: Path) -> Path:
    return out / f"frontier-{model}-{part}.jsonl"


def recorded(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_key(row: dict) -> tuple:
    return row["run"], row["seed"], row["lr"]


def best_lr(rows: list[dict], setting: Setting) -> float:
    """The lr with the highest seed-0 test accuracy (for the Adam runs: of fp32)."""
    sweep = [r for r in rows if r["setting"] == headline(setting.name) and r["seed"] == SEEDS[0]]
    return max(sweep, key=lambda r: (r["test_acc"], -r["lr"]))["lr"]


def run_setting(setting: Setting, base: TrainConfig, lrs, seeds, path: Path, dataset) -> None:
    done = {run_key(r) for r in recorded(path)}
    for index in range(len(lrs) + len(seeds) - 1):
        if index < len(lrs):
            seed, lr = seeds[0], lrs[index]
        else:  # the sweep is recorded by now
            seed, lr = seeds[index - len(lrs) + 1], best_lr(recorded(path), setting)
        if (setting.name, seed, lr) in done:
            continue
        config = replace(base, seed=seed, lr=lr, baseline=setting.baseline, **setting.overrides)
        print(f"{setting.name}: seed {seed}, lr {lr:g} ...", file=sys.stderr, flush=True)
        new = run_one(setting, config, dataset)
        with path.open("a") as f:
            for row in new:
                f.write(json.dumps(row) + "\n")
        done.add((setting.name, seed, lr))
        print("   " + ", ".join(f"{r['setting']}: {r['test_acc']:.3f} at {r['bits_per_weight']:.2f} bits"
                                 for r in new[:3]), file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the table

def headline(run: str) -> str:
    """The setting whose seed-0 accuracy picks a run's lr: the run's own, or fp32 for the Adam model (its
    fp16, RTN and NNCodec rows are the quantizers applied to that one model, at that lr)."""
    return "adam fp32" if run == "adam" else run


def frontier(rows: list[dict]) -> list[dict]:
    """Per setting: its run's best lr (seed-0 sweep) and mean +- std over the seeds run at that lr."""
    table = []
    for name in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == name]
        chooser = headline(mine[0].get("run", name))
        sweep = [r for r in rows if r["setting"] == chooser and r["seed"] == SEEDS[0]]
        lr = max(sweep, key=lambda r: (r["test_acc"], -r["lr"]))["lr"]
        at_lr = [r for r in mine if r["lr"] == lr]
        accs = [r["test_acc"] for r in at_lr]
        bits = [r["bits_per_weight"] for r in at_lr]
        bound = [r["bound_bits_per_weight"] for r in at_lr if "bound_bits_per_weight" in r]
        table.append({"setting": name, "lr": lr, "seeds": len(at_lr), "mean": statistics.fmean(accs),
                      "std": statistics.stdev(accs) if len(accs) > 1 else 0.0, "bits": statistics.fmean(bits),
                      "bound": statistics.fmean(bound) if bound else None})
    return sorted(table, key=lambda row: row["bits"])


def print_table(table: list[dict]) -> None:
    print("| setting | bits/weight | bound | best lr | seeds | test accuracy (mean ± std) |")
    print("|---|---:|---:|---:|---:|---:|")
    for row in table:
        bound = f"{row['bound']:.2f}" if row["bound"] is not None else "-"
        print(f"| {row['setting']} | {row['bits']:.2f} | {bound} | {row['lr']:g} | {row['seeds']} | "
              f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f} % |")


def plot(table: list[dict], path: Path) -> None:
    from permcodec.plots.canvas import house_style, new_figure, png_bytes

    groups = {"exact LaPerm (.pc): blocks, levels, sparse, full rows": lambda n: not n.startswith("adam"),
              "Adam + per-channel RTN + zstd": lambda n: "rtn" in n,
              "Adam + NNCodec 2.1.3": lambda n: "nncodec" in n,
              "Adam fp16": lambda n: n == "adam fp16"}
    with house_style():
        figure = new_figure()
        axes = figure.add_subplot()
        for label, belongs in groups.items():
            points = sorted((row for row in table if belongs(row["setting"])), key=lambda row: row["bits"])
            if points:
                axes.errorbar([p["bits"] for p in points], [100 * p["mean"] for p in points],
                              yerr=[100 * p["std"] for p in points], fmt="o", capsize=3, label=label)
        fp32 = next((row for row in table if row["setting"] == "adam fp32"), None)
        if fp32 is not None:
            axes.axhline(100 * fp32["mean"], color="grey", linestyle=":", label="Adam fp32 (mean)")
        axes.set_xscale("log", base=2)
        axes.set_ylim(bottom=75)
        axes.set_xlabel("stored bits per weight (log scale)")
        axes.set_ylabel("test accuracy, % (mean ± std, 3 seeds)")
        axes.set_title("Conv7 on the embedded digits, 4 epochs: accuracy against size")
        axes.legend(loc="lower right", fontsize=8)
        path.write_bytes(png_bytes(figure))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", action="append", help="run the settings of this part (repeatable): "
                        + ", ".join(dict.fromkeys(s.part for s in settings())))
    parser.add_argument("--table", action="store_true", help="print the frontier of every recorded run")
    parser.add_argument("--plot", type=Path, help="with --table: write the frontier plot (PNG) here")
    parser.add_argument("--smoke", action="store_true", help="MLP, 1 epoch, seed 0, default lr, a few settings")
    parser.add_argument("--out", type=Path, help=f"where the JSON lines go (default {RESULTS}; --smoke: a "
                                                 "temporary directory)")
    args = parser.parse_args(argv)
    dataset = get_dataset("mnist5k")
    if args.smoke:
        import tempfile

        out = args.out or Path(tempfile.mkdtemp(prefix="frontier-smoke-"))
        base = TrainConfig(model="mlp", epochs=1)
        chosen = [s for s in settings() if s.name in SMOKE]
        lrs, seeds = (3e-3,), (0,)
    else:
        out = args.out or RESULTS
        base = TrainConfig(model="conv7", epochs=4)
        chosen = [s for s in settings() if s.part in (args.part or ())]
        lrs, seeds = LRS, SEEDS
    out.mkdir(parents=True, exist_ok=True)
    for setting in chosen:
        run_setting(setting, base, lrs, seeds, results_file(base.model, setting.part, out), dataset)
    if args.table or args.smoke:
        rows = [row for path in sorted(out.glob(f"frontier-{base.model}-*.jsonl")) for row in recorded(path)]
        table = frontier(rows)
        print_table(table)
        if args.plot:
            plot(table, args.plot)
    if not (chosen or args.table):
        parser.error("nothing to do: give --part, --table or --smoke")
    return 0


if __name__ == "__main__":
    sys.exit(main())
