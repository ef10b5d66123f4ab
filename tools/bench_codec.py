"""Size and speed of the .pc codec at every level, next to baselines measured in the same run.

    python tools/bench_codec.py                                 # every case (about 15 minutes on 2 cores)
    python tools/bench_codec.py --cases conv7_e1 conv2 --repeat 3

Cases:
  conv7_e1, conv7_e10       Conv7 trained for 1 / 10 epochs on the embedded mnist5k (trained once, cached)
  conv2 conv4 conv13 resnet50
                            the paper's CIFAR-10 shapes, he_uniform pools, uniformly random row permutations
  conv4_sparse70            Conv4 shapes, sparse pools (70% zeros), random permutations
  conv4_shared08            Conv4 shapes, shared-value pools (density 0.08), random permutations

Per case and level: the schemes chosen, bits per permuted weight, the ratio to
the information bound (sum over rows of log2(n!/prod m_v!)), and encode and
decode speed in M stored elements/s, CPU and (when present) CUDA. Baselines in
the same run: safetensors fp32 (size, load to the device), zstd-19 of the fp32
bytes (size, decompression), and torch.rand of as many values. Decode speeds
include the SHA-256 check of every tensor; encode runs once (it is slow at
default and max, after a warm-up encode at fast), decode is the median of --repeat after one warm-up decode;
"x rand" is decode's speed over torch.rand's for the same count, timed alike in the same process.
"cores" (CPU only) is the process's CPU time over the wall time of those timed calls: torch.rand draws on one
thread at any count (about 1), decode on every core (parallel.WORKERS), so a run in which a busy neighbour left
decode one core shows it there, and its "x rand" falls with it while torch.rand's speed does not.
"""

from __future__ import annotations

import argparse
import io
import time
from collections import Counter
from pathlib import Path

import safetensors.torch
import torch
import zstandard
from benchutil import median_seconds_and_cores

from permcodec import codec, init_, perm
from permcodec.checkpoints import read_model
from permcodec.format import schemes
from permcodec.inspection import bound_bits
from permcodec.models import build_model
from permcodec.train.loop import TrainConfig, save_checkpoint, train

CIFAR = ((3, 32, 32), 10)
SYNTHETIC = {
    "conv2": ("conv2", {}), "conv4": ("conv4", {}), "conv13": ("conv13", {}), "resnet50": ("resnet50", {}),
    "conv4_sparse70": ("conv4", {"dist": "sparse", "density": 0.3}),
    "conv4_shared08": ("conv4", {"dist": "shared", "value": 0.05, "density": 0.08}),
}
CASES = ["conv7_e1", "conv7_e10", *SYNTHETIC]


def trained_conv7(epochs: int, cache: Path):
    path = cache / f"conv7_e{epochs}.pt"
    if not path.exists():
        print(f"training conv7 for {epochs} epochs -> {path}", flush=True)
        state = train(TrainConfig(model="conv7", epochs=epochs, seed=0), progress=False, log=lambda r: None)
        cache.mkdir(parents=True, exist_ok=True)
        save_checkpoint(state, path)
    state, spec, _ = read_model(path)
    return state, spec


def random_permutations(model_name: str, init_args: dict, seed: int = 0):
    """A model of the paper's shapes whose every permuted row is a uniformly random permutation of its init."""
    torch.manual_seed(seed)
    model = build_model(model_name, *CIFAR)
    spec = init_(model, seed, **init_args)
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in spec.names():
            rows = perm.as_rows(params[name].detach())
            order = torch.argsort(torch.rand(rows.shape, generator=generator), dim=1)
            params[name].copy_(torch.gather(rows, 1, order).reshape(params[name].shape))
    return model.state_dict(), spec


def load_case(case: str, cache: Path):
    if case.startswith("conv7_e"):
        return trained_conv7(int(case.removeprefix("conv7_e")), cache)
    return random_permutations(*SYNTHETIC[case])


def permuted_bound_bits(data: bytes) -> tuple[int, float]:
    """(permuted weights, their information bound in bits) of an encoded file."""
    f = codec.PCFile(io.BytesIO(data))
    records = [f.record(name) for name in f.keys() if f.record(name)["kind"] == "permuted"]
    return sum(int(torch.tensor(r["shape"]).prod()) for r in records), sum(bound_bits(r) for r in records)


def level_row(state, spec, level: str, devices, repeat: int, bound: float, weights: int, elements: int) -> dict:
    start = time.perf_counter()
    data = codec.encode(state, spec, level=level)
    encode_seconds = time.perf_counter() - start
    f = codec.PCFile(io.BytesIO(data))
    permuted = [f.record(name) for name in f.keys() if f.record(name)["kind"] == "permuted"]
    used = Counter(r["scheme"] for r in permuted)
    permuted_bytes = sum(r["length"] for r in permuted)
    row = {"level": level, "schemes": " ".join(f"{s}:{k}" for s, k in sorted(used.items())),
           "bits": 8 * permuted_bytes / weights, "ratio": 8 * permuted_bytes / bound,
           "file_bytes": len(data), "encode": elements / encode_seconds / 1e6}
    for device in devices:
        seconds, row[f"cores_{device}"] = median_seconds_and_cores(lambda: codec.decode(data, device=device),
                                                                   repeat, device)
        row[f"decode_{device}"] = elements / seconds / 1e6
    return row


def baseline_rows(state, devices, repeat: int, weights: int, elements: int) -> list[dict]:
    fp32 = safetensors.torch.save(state)
    raw = b"".join(codec.tensor_bytes(t) for t in state.values())
    zstd_fp32 = zstandard.ZstdCompressor(level=19).compress(raw)
    rows = [{"level": "safetensors fp32", "bits": 8 * len(fp32) / elements, "file_bytes": len(fp32)},
            {"level": "zstd-19 of fp32", "bits": 8 * len(zstd_fp32) / elements, "file_bytes": len(zstd_fp32)},
            {"level": "torch.rand"}]
    decompressor = zstandard.ZstdDecompressor()
    for device in devices:
        def load_fp32():
            return {k: v.to(device) for k, v in safetensors.torch.load(fp32).items()}

        def load_zstd():
            return torch.frombuffer(bytearray(decompressor.decompress(zstd_fp32)), dtype=torch.float32).to(device)
        loads = [load_fp32, load_zstd, lambda: torch.rand(elements, device=device)]
        for row, load in zip(rows, loads):
            seconds, row[f"cores_{device}"] = median_seconds_and_cores(load, repeat, device)
            row[f"decode_{device}"] = elements / seconds / 1e6
    return rows


def decode_columns(device: str) -> list[tuple[str, str, int, str]]:
    """(heading, row key, width, format) of each decode column of ``device``: cores only on the CPU, where other
    threads compete for them."""
    columns = [(f"decode {device}", f"decode_{device}", 12, ".2f"), ("x rand", f"rand_{device}", 6, ".3f")]
    return columns + ([("cores", "cores_cpu", 5, ".2f")] if device == "cpu" else [])


def print_table(rows: list[dict], devices) -> None:
    columns = [column for device in devices for column in decode_columns(device)]
    decode_heads = "".join(f" {heading:>{width}} |" for heading, _, width, _ in columns)
    print(f"| {'level / baseline':<17} | {'schemes':<30} | {'bits/weight':>11} | {'x bound':>7} | "
          f"{'file bytes':>11} | {'encode':>7} |{decode_heads}")
    print(f"|{'-' * 19}|{'-' * 32}|{'-' * 13}|{'-' * 9}|{'-' * 13}|{'-' * 9}|" +
          "".join(f"{'-' * (width + 2)}|" for _, _, width, _ in columns))
    for row in rows:
        def cell(key, fmt, width):
            return f"{row[key]:{width}{fmt}}" if key in row else " " * width
        decodes = "".join(f" {cell(key, fmt, width)} |" for _, key, width, fmt in columns)
        print(f"| {row['level']:<17} | {row.get('schemes', ''):<30} | {cell('bits', '.3f', 11)} | "
              f"{cell('ratio', '.4f', 7)} | {cell('file_bytes', ',', 11)} | {cell('encode', '.2f', 7)} |{decodes}",
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="+", choices=CASES, default=CASES, metavar="CASE",
                        help=f"which cases (default: all of {', '.join(CASES)})")
    parser.add_argument("--levels", nargs="+", choices=list(schemes.LEVELS), default=list(schemes.LEVELS))
    parser.add_argument("--cache", default="runs/bench", help="where trained Conv7 checkpoints are kept")
    parser.add_argument("--repeat", type=int, default=3, help="timed decode repeats; the median is reported")
    args = parser.parse_args()
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    from permcodec.format import rans
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, devices: {', '.join(devices)}, "
          f"integer kernels: {rans.default_backend()}")
    print("speeds in M stored elements/s (decode includes the SHA-256 check); bits/weight and x bound "
          "count the permuted weights only")
    for case in args.cases:
        state, spec = load_case(case, Path(args.cache))
        elements = sum(t.numel() for t in state.values())
        probe = codec.encode(state, spec, level="fast")
        weights, bound = permuted_bound_bits(probe)
        print(f"\n### {case}: {weights:,} permuted weights of {elements:,} stored elements; "
              f"bound {bound / weights:.3f} bits/weight\n")
        rows = [level_row(state, spec, level, devices, args.repeat, bound, weights, elements)
                for level in args.levels]
        baselines = baseline_rows(state, devices, args.repeat, weights, elements)
        for row in rows + baselines:
            for device in devices:
                row[f"rand_{device}"] = row[f"decode_{device}"] / baselines[-1][f"decode_{device}"]
        print_table(rows + baselines, devices)


if __name__ == "__main__":
    main()
