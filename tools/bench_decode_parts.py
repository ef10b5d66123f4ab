"""What two parts of a CPU decode cost, as ratios measured in one process: the SHA-256 check, and one record
per small raw tensor.

    python tools/bench_decode_parts.py --cache runs/bench-cache      # about 4 minutes on 2 cores
    python tools/bench_decode_parts.py --cases resnet50 --rounds 25

Each case (tools/bench_codec.py's) is encoded at level default and decoded with the check on and off,
interleaved: --rounds rounds of 3 decodes each, in a shuffled order, the medians compared. For resnet50 the same
weights are also encoded with every small raw tensor (at most raw_decoding.SMALL_RAW_MAX elements: its BatchNorm
weights and statistics) concatenated into one float32 tensor of as many elements, decoded interleaved with the
file as it is: a bound on what storing those tensors as one record could gain. Such a record would still be split
into its tensors, each hashed: the row "as one, split and hashed" adds that work (a view, a SHA-256 and a torch
tensor for each, and the dict in file order) to the joined file's decode. Baselines in the same process:
torch.rand of each case's element count, and SHA-256 and CRC-32 of 64 MB.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import random
import statistics
import time
import zlib
from pathlib import Path

import numpy as np
import torch
from bench_codec import CASES, load_case

from permcodec import codec, decoder

TARGET_CASES = ["conv13", "resnet50", "conv4_sparse70", "conv7_e1"]


def interleaved_medians(decodes: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each callable of ``decodes``, timed in rounds of 3 calls each, in a new order each round."""
    times: dict[str, list[float]] = {label: [] for label in decodes}
    labels = list(decodes)
    for _ in range(rounds):
        random.shuffle(labels)
        for label in labels:
            for _ in range(3):
                start = time.perf_counter()
                decodes[label]()
                times[label].append(time.perf_counter() - start)
    return {label: statistics.median(seconds) for label, seconds in times.items()}


def small_raw_as_one(data: bytes) -> tuple[bytes, int, list[tuple[str, list[int]]], list[str]]:
    """(file, records, (name, shape) of each small raw tensor joined, ``data``'s tensor names in file order):
    ``data``'s weights with its small raw tensors as one float32."""
    f = decoder.PCFile(io.BytesIO(data))
    state, spec = codec.decode(data), f.init_spec()
    small = [(name, f.record(name)["shape"]) for name in f.keys() if f._small_raw(name)]
    joined = {name: tensor for name, tensor in state.items() if name not in dict(small)}
    joined["small_raw_tensors"] = torch.cat([state[name].reshape(-1).double() for name, _ in small]).float()
    return codec.encode(joined, spec), len(joined), small, f.keys()


def split_and_hashed(joined: bytes, small: list[tuple[str, list[int]]], order: list[str]) -> dict:
    """The decode of ``joined`` with its joined tensor split again into the small tensors (a view of each, its
    SHA-256 computed as a decoder must, a torch tensor made of it) and the dict in the file's order: what a
    format storing them as one record would still do beyond ``joined``'s decode."""
    decoded = codec.decode(joined)
    values, at, tensors = decoded.pop("small_raw_tensors").numpy(), 0, {}
    for name, shape in small:
        count = math.prod(shape)
        view = values[at:at + count]
        hashlib.sha256(view).digest()
        tensors[name] = torch.from_numpy(view.reshape(shape))
        at += count
    tensors.update(decoded)
    return {name: tensors[name] for name in order}


def rate(function, nbytes: int, repeat: int = 5) -> float:
    """GB/s of ``function`` over ``nbytes``, its median of ``repeat``."""
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        seconds.append(time.perf_counter() - start)
    return nbytes / statistics.median(seconds) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=TARGET_CASES, metavar="CASE",
                        help=f"which cases (default: {' '.join(TARGET_CASES)})")
    parser.add_argument("--cache", default="runs/bench", help="where trained Conv7 checkpoints are kept")
    parser.add_argument("--rounds", type=int, default=15, help="interleaved rounds of 3 decodes each")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads; medians of {3 * args.rounds} "
          f"interleaved decodes, ms")
    buffer = np.random.default_rng(0).integers(0, 256, 64 << 20, dtype=np.uint8)
    print(f"SHA-256 {rate(lambda: hashlib.sha256(buffer).digest(), buffer.nbytes):.2f} GB/s, "
          f"CRC-32 {rate(lambda: zlib.crc32(buffer), buffer.nbytes):.2f} GB/s (64 MB, one thread)\n")
    print(f"| {'case':<34} | {'records':>7} | {'elements':>10} | {'decode ms':>9} | {'ratio':>6} | "
          f"{'torch.rand ms':>13} |")
    print(f"|{'-' * 36}|{'-' * 9}|{'-' * 12}|{'-' * 11}|{'-' * 8}|{'-' * 15}|")
    for case in args.cases:
        state, spec = load_case(case, Path(args.cache))
        data = codec.encode(state, spec, level="default")
        elements, records = sum(t.numel() for t in state.values()), len(decoder.PCFile(io.BytesIO(data)).keys())
        decodes = {"check on": lambda: codec.decode(data), "check off": lambda: codec.decode(data, verify=False),
                   "torch.rand": lambda: torch.rand(elements)}
        if case == "resnet50":
            joined, joined_records, small, order = small_raw_as_one(data)
            decodes["one record"] = lambda: codec.decode(joined)
            decodes["one record, split"] = lambda: split_and_hashed(joined, small, order)
        for decode in decodes.values():
            decode()
        medians = interleaved_medians(decodes, args.rounds)
        rand_ms = 1e3 * medians["torch.rand"]

        def row(label, count, key, ratio_to="check on"):
            print(f"| {label:<34} | {count:>7} | {elements:>10,} | {1e3 * medians[key]:>9.2f} | "
                  f"{medians[key] / medians[ratio_to]:>6.3f} | {rand_ms:>13.2f} |", flush=True)

        row(f"{case}, check on", records, "check on")
        row(f"{case}, check off", records, "check off")
        if case == "resnet50":
            row(f"{case}, {len(small)} small raw as one", joined_records, "one record")
            row(f"{case}, as one, split and hashed", joined_records, "one record, split")


if __name__ == "__main__":
    main()
