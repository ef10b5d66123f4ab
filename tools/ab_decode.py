"""Decode time of .pc files by whichever permcodec is imported: one side of an A/B between two versions.

    git worktree add /tmp/before HEAD~1
    for round in 1 2 3; do
        PYTHONPATH=/tmp/before python tools/ab_decode.py model.pc     # the previous commit
        python tools/ab_decode.py model.pc                            # this checkout
    done
    taskset -c 0 python tools/ab_decode.py model.pc                  # one core

Each file is decoded --repeat times after five warm-up decodes, in this process; the line gives the median in
ms and the first digits of ``bits.state_digest`` of the decoded tensors, which must agree between the two
versions.
Run the versions alternately, in separate processes, in both orders: on a shared machine the second of two
back-to-back processes can run several percent slower, which a one-way A/B reads as the change's cost.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import permcodec
from permcodec.bits import state_digest


def decode_ms(data: bytes, repeat: int) -> float:
    """The median of ``repeat`` timed decodes of ``data``, after five untimed ones."""
    for _ in range(5):
        permcodec.decode(data)
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        permcodec.decode(data)
        seconds.append(time.perf_counter() - start)
    return 1e3 * statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", type=Path, metavar="FILE", help=".pc files to decode")
    parser.add_argument("--repeat", type=int, default=40, help="timed decodes per file (default 40)")
    args = parser.parse_args()
    print(f"permcodec from {Path(permcodec.__file__).parent}")
    for path in args.files:
        data = path.read_bytes()
        digest = state_digest(permcodec.decode(data))[:12]
        print(f"{path.name}: {decode_ms(data, args.repeat):.2f} ms, tensors {digest}", flush=True)


if __name__ == "__main__":
    main()
