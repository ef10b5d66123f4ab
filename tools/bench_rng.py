"""Throughput of the Philox generator and every distribution, next to torch.rand in the same run.

    python tools/bench_rng.py                 # CPU, and CUDA when present
    python tools/bench_rng.py --size 4194304 --repeat 3
    python tools/bench_rng.py --size 763931 --repeat 20     # ResNet-50's element count (tools/bench_codec.py)
"""

from __future__ import annotations

import argparse

import torch
from benchutil import best_seconds

from permcodec.init import distributions as D
from permcodec.init import philox, rng

DIST_ARGS = {
    "uniform": {}, "normal": {}, "he_uniform": {}, "glorot_uniform": {}, "he_normal": {},
    "glorot_normal": {}, "sparse": dict(density=0.3), "shared": dict(value=0.5, density=0.08),
}


def on_one_thread(fn):
    """``fn()`` with torch limited to one CPU thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(threads)


def rows_for(device: str, size: int, repeat: int):
    blocks = size // 4
    yield "philox words (torch int64)", size / best_seconds(
        lambda: rng.philox_blocks(1, 2, 0, 0, blocks, device), repeat, device)
    if device == "cpu":
        yield "philox words (numpy reference)", size / best_seconds(
            lambda: philox.philox_blocks_numpy(1, 2, 0, 0, blocks), repeat, device)
    for dist, kwargs in DIST_ARGS.items():
        params = D.make_params(dist, (1024, 1024), **kwargs)
        yield dist, size / best_seconds(lambda: D.sample(dist, params, 1, 2, 0, size, device), repeat, device)
    yield "baseline: torch.rand (float32)", size / best_seconds(
        lambda: torch.rand(size, device=device), repeat, device)
    if device == "cpu":  # the same speed on one thread: the CPU torch.rand runs on one, however many torch has
        yield "baseline: torch.rand, 1 thread", size / on_one_thread(
            lambda: best_seconds(lambda: torch.rand(size), repeat, device))
    yield "baseline: torch.randn (float32)", size / best_seconds(
        lambda: torch.randn(size, device=device), repeat, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=1 << 22, help="values per measurement (default 4,194,304)")
    parser.add_argument("--repeat", type=int, default=3, help="timed repeats; the best is reported")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {args.size:,} values, "
          f"best of {args.repeat}")
    print(f"| {'what':<32} | {'device':<6} | {'M values/s':>10} |")
    print(f"|{'-' * 34}|{'-' * 8}|{'-' * 12}|")
    for device in devices:
        for what, rate in rows_for(device, args.size, args.repeat):
            print(f"| {what:<32} | {device:<6} | {rate / 1e6:>10.1f} |", flush=True)


if __name__ == "__main__":
    main()
