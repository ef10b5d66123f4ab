"""The README's results table: per trained checkpoint, accuracy and the sizes a user compares.

    python tools/results_table.py runs/bench-cache/conv7_e10.pt runs/results/conv7_sparse30.pt ...

Each checkpoint (written by permcodec train) is encoded at the default level
into a temporary .pc file; the row shows the model, its init distribution,
the test accuracy of the stored weights, fp32 / fp16 / .pc sizes of the whole
state_dict, bits per permuted weight and the ratio to the information bound.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from permcodec.inspection import describe


def row(checkpoint: Path, work: Path) -> str:
    pc = work / f"{checkpoint.stem}.pc"
    subprocess.run([sys.executable, "-m", "permcodec", "encode", str(checkpoint), "-o", str(pc), "-q", "-f"],
                   check=True, capture_output=True)
    info = describe(pc)
    totals, config = info["totals"], info["config"] or {}
    dist = config.get("dist", "?") + "".join(f" {k}={v}" for k, v in (config.get("dist_params") or {}).items())
    elements = totals["elements"]
    return (f"| {config.get('model', '?')}, {config.get('epochs', '?')} epoch{'' if config.get('epochs') == 1 else 's'} | {dist} | "
            f"{100 * info['test_acc']:.1f} % | {4 * elements / 1e6:.2f} MB | {2 * elements / 1e6:.2f} MB | "
            f"{info['file_bytes'] / 1e6:.3f} MB | {totals['permuted_bits_per_weight']:.2f} | "
            f"{totals['ratio_to_bound']:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoints", nargs="+", type=Path)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="permcodec-results-"))
    print("| model | init | test accuracy | fp32 | fp16 | .pc | bits/weight | x bound |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for checkpoint in args.checkpoints:
        print(row(checkpoint, work))


if __name__ == "__main__":
    main()
