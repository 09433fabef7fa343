"""Benchmark suite of the lowering (same as ``im2colbp bench``); see ``--help``.

    python scripts/bench.py                 # every configuration, 11 interleaved rounds
    python scripts/bench.py --quick         # the small ones, 3 rounds
    python scripts/bench.py --json bench-results/latest.json --plot docs/_static/bench.png

For a fair GEMM, unset both OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for the run (if your
environment sets them); the table records which BLAS kernel ran.
"""

import sys

from im2colbp.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
