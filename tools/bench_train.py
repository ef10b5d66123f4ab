"""LaPerm against its inner optimizer: accuracy, sync overhead in training, whole-model sync time.

    python tools/bench_train.py                  # Conv7 on mnist5k, 3 seeds x 10 epochs (~10 min on 2 CPU cores)
    python tools/bench_train.py --quick          # 1 epoch, 2 seeds, fewer timed steps: a smoke check
    python tools/bench_train.py --seeds 5 --epochs 20 --device cuda

Prints three markdown tables: final test accuracy (LaPerm vs baseline=True, TrainConfig
defaults otherwise), the share of training time spent in LaPerm.sync() at several k, and
the time of one sync of every permuted tensor of Conv13 and ResNet-50.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from benchutil import best_seconds, wait

from permcodec.init.modules import init_
from permcodec.models import build_model
from permcodec.train.laperm import LaPerm
from permcodec.train.config import TrainConfig
from permcodec.train.distributed import Ranks, rank_device
from permcodec.train.loop import train

SYNC_KS = (20, 100, 1000)
SYNC_MODELS = (("conv13", (3, 32, 32)), ("resnet50", (3, 32, 32)))


def progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- 1. accuracy

def final_accuracy(seed: int, baseline: bool, epochs: int, device: str) -> float:
    config = TrainConfig(seed=seed, baseline=baseline, epochs=epochs, device=device)
    name = "baseline" if baseline else "laperm"
    state = train(config, progress=False, log=lambda r: progress(f"  {name} seed {seed}: {json.dumps(r)}"))
    return state.metrics[-1]["test_acc"]


def mean_std(values: list[float]) -> str:
    std = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{100 * statistics.mean(values):.2f} ± {100 * std:.2f}"


def accuracy_table(seeds: int, epochs: int, device: str) -> None:
    accs = {run: [final_accuracy(s, run == "baseline", epochs, device) for s in range(seeds)]
            for run in ("laperm", "baseline")}
    print(f"\n### 1. Accuracy: Conv7 on mnist5k, {epochs} epochs, seeds 0..{seeds - 1}, "
          f"TrainConfig defaults (final test accuracy, %, mean ± sample std)\n")
    print("| run | mean ± std | per seed |")
    print("|---|---:|---|")
    for run, values in accs.items():
        print(f"| {run} | {mean_std(values)} | {', '.join(f'{100 * v:.1f}' for v in values)} |")
    diff = 100 * (statistics.mean(accs["laperm"]) - statistics.mean(accs["baseline"]))
    print(f"| laperm − baseline | {diff:+.2f} pt | goal ≥ −0.50 pt: {'met' if diff >= -0.5 else 'NOT met'} |")


# ---------------------------------------------------------------- 2. sync overhead

def conv7_laperm(k: int, device: torch.device) -> LaPerm:
    model = build_model("conv7", (1, 28, 28), 10)
    spec = init_(model, 0, bias=model.permute_bias)
    model.to(device)
    return LaPerm(model, torch.optim.Adam(model.parameters(), lr=3e-3), k=k, init=spec)


def timed_sync(laperm: LaPerm, device: torch.device) -> list[float]:
    """Replace laperm.sync by a wrapper that records each call's seconds in the returned list."""
    times, sync = [], laperm.sync

    def wrapper():
        wait(device)
        start = time.perf_counter()
        sync()
        wait(device)
        times.append(time.perf_counter() - start)

    laperm.sync = wrapper
    return times


def train_steps(laperm: LaPerm, steps: int, device: torch.device) -> list[float]:
    """Seconds of each of ``steps`` full steps (forward, backward, Adam, LaPerm's syncs) on random data."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(128, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 10, (128,), generator=gen).to(device)
    times = []
    for _ in range(steps):
        wait(device)
        start = time.perf_counter()
        laperm.zero_grad()
        F.cross_entropy(laperm.model(x), y).backward()
        laperm.step()
        wait(device)
        times.append(time.perf_counter() - start)
    return times


def step_and_sync_seconds(steps: int, device: torch.device) -> tuple[float, float, float]:
    """(median seconds per step excluding sync, median seconds per sync, measured share in sync) at k=20."""
    k = SYNC_KS[0]
    laperm = conv7_laperm(k, device)
    train_steps(laperm, 5, device)  # warm-up
    laperm.steps_since_sync = 0
    syncs = timed_sync(laperm, device)
    step_times = train_steps(laperm, steps, device)
    plain = [t for i, t in enumerate(step_times) if (i + 1) % k]  # the steps that did not sync
    return statistics.median(plain), statistics.median(syncs), sum(syncs) / sum(step_times)


def overhead_table(steps: int, device: torch.device) -> None:
    k0 = SYNC_KS[0]
    progress(f"  sync overhead: {steps} steps at k={k0}")
    step_s, sync_s, measured = step_and_sync_seconds(steps, device)
    print(f"\n### 2. Sync overhead: Conv7, batch (128,1,28,28) random data, Adam, {device}\n")
    print(f"Method: one loop of {steps} full training steps (forward, backward, Adam, LaPerm.step) at k={k0}, "
          f"each step timed, sync() wrapped to time each call. t = median step without sync = "
          f"{1e3 * step_s:.1f} ms; s = median sync = {1e3 * sync_s:.2f} ms ({steps // k0} syncs). "
          f"Share = s / (k·t + s). Measured directly at k={k0} (sum of syncs / sum of steps): "
          f"{100 * measured:.3f} %.\n")
    print("| k | share in sync | goal ≤ 2 % (k ≥ 100) |")
    print("|---:|---:|---|")
    for k in SYNC_KS:
        share = sync_s / (k * step_s + sync_s)
        print(f"| {k} | {100 * share:.3f} % | {'—' if k < 100 else 'met' if share <= 0.02 else 'NOT met'} |")


# ---------------------------------------------------------------- 3. whole-model sync

def sync_time_row(name: str, shape, device: torch.device, repeat: int) -> str:
    model = build_model(name, shape, 10)
    spec = init_(model, 0)
    laperm = LaPerm(model.to(device), torch.optim.SGD(model.parameters(), lr=0.1), init=spec)
    weights = sum(t.numel() for _, t in laperm.targets)
    seconds = best_seconds(laperm.sync, repeat, device)
    return f"| {name} | {device.type} | {len(laperm.targets)} | {weights:,} | {1e3 * seconds:.1f} |"


def sync_time_table(devices: list[torch.device], repeat: int) -> None:
    print(f"\n### 3. One LaPerm.sync() of the whole model (init_ seed 0, he_uniform), best of {repeat}\n")
    print("| model | device | permuted tensors | permuted weights | ms |")
    print("|---|---|---:|---:|---:|")
    for device in devices:
        for name, shape in SYNC_MODELS:
            progress(f"  whole-model sync {name} on {device}")
            print(sync_time_row(name, shape, device, repeat), flush=True)


# ---------------------------------------------------------------- main

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per accuracy run (default 10; --quick 1)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per run kind (default 3; --quick 2)")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 2 seeds, 40 timed steps, 2 sync repeats")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="device for training and overhead; table 3 adds CUDA when present unless cpu")
    args = parser.parse_args()
    epochs = args.epochs or (1 if args.quick else 10)
    seeds = args.seeds or (2 if args.quick else 3)
    timed_steps, repeat = (40, 2) if args.quick else (300, 5)
    device = rank_device(args.device, Ranks())
    sync_devices = [torch.device("cpu")] + (
        [torch.device("cuda")] if torch.cuda.is_available() and args.device != "cpu" else [])
    command = shlex.join(["python", "tools/bench_train.py", *sys.argv[1:]])
    gpu = f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    print(f"`{command}` — torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}{gpu}")
    accuracy_table(seeds, epochs, args.device)
    overhead_table(timed_steps, device)
    sync_time_table(sync_devices, repeat)


if __name__ == "__main__":
    main()
