"""Run a command and print the peak resident memory of any process it started, itself included.

    python tools/peak_rss.py .venv/bin/python -m pytest -q     # what .ci/run does

Linux reports, for waited-for descendants, the RSS of the largest one
(getrusage RUSAGE_CHILDREN; a grandchild counts once its parent waited for it),
which is what "the suite's peak memory" means: the worst single process, not a
sum. The same figure /usr/bin/time -v prints, without needing that package.
"""

from __future__ import annotations

import resource
import subprocess
import sys

LIMIT_MIB = 2048  # the suite's budget: CI machines have 2 cores and little memory to spare


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    code = subprocess.call(argv)
    peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux reports KiB
    verdict = "within" if peak_mib <= LIMIT_MIB else "OVER"
    print(f"peak RSS of any process: {peak_mib:,.0f} MiB ({verdict} the {LIMIT_MIB:,} MiB budget)", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
