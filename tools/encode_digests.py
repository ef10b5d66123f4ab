"""SHA-256 of the .pc bytes every encoder level writes for the benchmark models: proof that a refactor kept the bytes.

    python tools/encode_digests.py --out before.json      # on the old code
    python tools/encode_digests.py --out after.json       # on the new code, then compare the two files

The models are those of tools/bench_codec.py: Conv7 trained 1 and 10 epochs on
the embedded data (trained once into --cache, deterministic for a seed on one
machine; delete the cache to retrain) and the synthetic CIFAR-shaped models with
random row permutations. The digest of each model's state_dict is recorded too,
so a retrained checkpoint that differs shows up as such, not as a codec change.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from bench_codec import CASES, load_case

from permcodec import bits, codec
from permcodec.format import schemes


def state_digest(state: dict) -> str:
    """The digest of the state dict with its names sorted, whatever order the checkpoint kept."""
    return bits.state_digest({name: state[name] for name in sorted(state)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cases", nargs="*", default=CASES, choices=CASES)
    parser.add_argument("--cache", type=Path, default=Path("runs/bench-cache"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    result = {}
    for case in args.cases:
        state, spec = load_case(case, args.cache)
        entry = {"state": state_digest(state)}
        for level in schemes.LEVELS:
            started = time.perf_counter()
            entry[level] = hashlib.sha256(codec.encode(state, init=spec, level=level)).hexdigest()
            print(f"{case:<16} {level:<8} {entry[level][:16]}  ({time.perf_counter() - started:.1f} s)", flush=True)
        result[case] = entry
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
