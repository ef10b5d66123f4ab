"""One command for a lent GPU: the CUDA tests and the CUDA timings, printed as one table.

    python tools/gpu_check.py                  # on a machine with CUDA: about 2-4 minutes
    python tools/gpu_check.py --device cpu     # the same steps on the CPU, to check the script (no CUDA claim)

Steps, each a row group of the table:
  1. ``pytest tests/test_cuda.py``: CPU-vs-CUDA bits of Philox, every distribution, level pools, block sync,
     ranks and the codec on every golden file (skipped, and said so, without CUDA).
  2. ``tools/bench_rng.py``'s rows on the device: Philox words and every distribution beside ``torch.rand``.
  3. Decode: ``permcodec.load(path, device=...)`` against ``safetensors.torch.load_file(path, device=...)``
     for the same weights (Conv13 shapes, he_uniform pools, random row permutations, level ``default``;
     15 M weights), the median of 3 after one warm-up, with the SHA-256 check on and off.
  4. ``LaPerm.sync()`` of Conv13 on the device (the paper's largest sync), median of 3.

On the lent machine (Python 3.12, torch 2.11, no zstandard and no numba): build cp312 wheels here with
``pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 -d wheels
zstandard msgpack safetensors tqdm numba`` into an ignored folder, carry it, and run
``pip install --no-index wheels/*.whl && pip install --no-deps -e . && python tools/gpu_check.py``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import safetensors.torch
import torch
from bench_rng import rows_for
from benchutil import median_seconds

import permcodec
from permcodec import perm
from permcodec.models import build_model

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ((3, 32, 32), 10)


def cuda_tests() -> list[tuple]:
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_cuda.py"],
                          cwd=ROOT, capture_output=True, text=True)
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else done.stderr.strip()[-200:]
    return [("tests/test_cuda.py", summary, "", "exit 0" if done.returncode == 0 else f"exit {done.returncode}")]


def rng_rows(device: str, size: int) -> list[tuple]:
    rows = list(rows_for(device, size, repeat=3))
    rand = next(rate for name, rate in rows if name.startswith("baseline: torch.rand"))
    return [(f"sample {name}", f"{rate / 1e6:,.0f} M/s", f"torch.rand {rand / 1e6:,.0f} M/s", f"{rate / rand:.3g} x")
            for name, rate in rows if not name.startswith("baseline")]


def conv13(seed: int = 0) -> tuple[torch.nn.Module, permcodec.InitSpec]:
    """Conv13 with its pools in uniformly random row orders: what a trained model costs to decode."""
    model = build_model("conv13", *CIFAR)
    spec = permcodec.init_(model, seed=seed)
    params = dict(model.named_parameters())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for record in spec:
            params[record.name].copy_(perm.pools_of(record).sync(torch.rand(record.shape, generator=generator)))
    return model, spec


def decode_rows(device: str, folder: Path) -> list[tuple]:
    model, _ = conv13()
    state = {name: tensor.contiguous() for name, tensor in model.state_dict().items()}
    weights = sum(t.numel() for t in state.values())
    pc, st = folder / "conv13.pc", folder / "conv13.safetensors"
    permcodec.save(model, pc)
    safetensors.torch.save_file(state, str(st))
    baseline = median_seconds(lambda: safetensors.torch.load_file(str(st), device=device), 3, device)
    rows = []
    for verify in (True, False):
        seconds = median_seconds(lambda: permcodec.load(pc, device=device, verify=verify), 3, device)
        rows.append((f"load Conv13 .pc ({weights / 1e6:.1f} M weights, SHA-256 {'on' if verify else 'off'})",
                     f"{weights / seconds / 1e6:,.0f} M/s", f"safetensors {weights / baseline / 1e6:,.0f} M/s",
                     f"{baseline / seconds:.3g} x"))
    return rows


def sync_rows(device: str) -> list[tuple]:
    model, _ = conv13()
    model = model.to(device)
    laperm = permcodec.LaPerm(model, torch.optim.Adam(model.parameters(), lr=1e-3))
    seconds = median_seconds(laperm.sync, 3, device)
    weights = sum(p.numel() for _, p in laperm.targets)
    return [("LaPerm.sync() of Conv13", f"{seconds * 1e3:,.1f} ms", f"{weights / 1e6:.1f} M weights",
             f"{weights / seconds / 1e6:,.0f} M/s")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu, to check the script itself")
    parser.add_argument("--size", type=int, default=1 << 24, help="values per sampling measurement")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: run with --device cpu to check the script, or on a GPU machine", file=sys.stderr)
        return 2
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"# gpu_check on {where}, torch {torch.__version__}, permcodec {permcodec.__version__}\n")
    rows = cuda_tests()
    rows += rng_rows(args.device, args.size)
    with tempfile.TemporaryDirectory() as folder:
        rows += decode_rows(args.device, Path(folder))
    rows += sync_rows(args.device)
    print("| step | figure | baseline | ratio |")
    print("|---|---:|---:|---:|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
