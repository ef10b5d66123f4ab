"""Whole-process times of the quick commands, each beside the baseline it is judged against.

    python tools/startup_times.py --model runs/bench-cache/conv7_e10.pt

Encodes the given trained checkpoint (permcodec train's model.pt) to a .pc file
and writes its weights as .safetensors, then times, as separate processes,
the median of --runs runs after one untimed warm-up run (so numba's on-disk
cache and the OS file cache are warm, "second run onward"):

| command                                   | baseline                                       | limit   |
| permcodec --help                          | (absolute)                                     | 0.3 s   |
| permcodec info model.pc                   | python -c "import torch"                       | 1.2 x   |
| permcodec decode model.pc -o x.safetensors| python: import torch; safetensors load_file    | 1.5 x   |

and which of torch and numba each command imported (python -X importtime).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PYTHON = sys.executable
def median_seconds(command: list[str], runs: int) -> float:
    """The median wall time of ``runs`` runs of ``command``, after one untimed warm-up run."""
    subprocess.run(command, check=True, capture_output=True)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def heavy_imports(arguments: list[str]) -> list[str]:
    """Which of torch and numba ``permcodec ARGUMENTS`` imports (python -X importtime)."""
    done = subprocess.run([PYTHON, "-X", "importtime", "-m", "permcodec", *arguments], capture_output=True,
                          text=True, check=True)
    names = {line.split("|")[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    return sorted(name for name in names if name in ("torch", "numba"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a checkpoint written by permcodec train")
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="permcodec-startup-"))
    pc, weights, out = work / "model.pc", work / "weights.safetensors", work / "decoded.safetensors"
    subprocess.run([PYTHON, "-m", "permcodec", "encode", str(args.model), "-o", str(pc), "-q"], check=True)
    subprocess.run([PYTHON, "-c", "import sys, torch, safetensors.torch; c = torch.load(sys.argv[1], "
                    "weights_only=True); safetensors.torch.save_file(c['state_dict'], sys.argv[2])",
                    str(args.model), str(weights)], check=True)
    rows = [
        ("permcodec --help", [PYTHON, "-m", "permcodec", "--help"], None, None, 0.3),
        ("permcodec info model.pc", [PYTHON, "-m", "permcodec", "info", str(pc)],
         'python -c "import torch"', [PYTHON, "-c", "import torch"], 1.2),
        ("permcodec decode model.pc -o x.safetensors",
         [PYTHON, "-m", "permcodec", "decode", str(pc), "-o", str(out), "-f", "-q"],
         "python: import torch; safetensors load_file",
         [PYTHON, "-c", "import sys, torch, safetensors.torch; safetensors.torch.load_file(sys.argv[1])",
          str(weights)], 1.5),
    ]
    print(f"model {args.model} ({pc.stat().st_size:,}-byte .pc); median of {args.runs} runs after a warm-up\n")
    print("| command | seconds | baseline | baseline seconds | ratio | limit |")
    print("|---|---:|---|---:|---:|---:|")
    for name, command, base_name, base_command, limit in rows:
        seconds = median_seconds(command, args.runs)
        if base_command is None:
            print(f"| `{name}` | {seconds:.3f} | - | - | - | {limit} s |")
            continue
        base = median_seconds(base_command, args.runs)
        bound = "-" if limit is None else f"{limit} x"
        print(f"| `{name}` | {seconds:.3f} | `{base_name}` | {base:.3f} | {seconds / base:.2f} x | {bound} |")
    print()
    for arguments in (["--help"], ["info", str(pc)], ["decode", str(pc), "-o", str(out), "-f", "-q"]):
        heavy = heavy_imports(arguments)
        shown = " ".join(["permcodec", *arguments]).replace(str(work) + "/", "")
        print(f"`{shown}` imports: {', '.join(heavy) if heavy else 'neither torch nor numba'}")


if __name__ == "__main__":
    main()
