"""Benchmark suite of the lowering (same as ``im2colbp bench``); see ``--help``.

Every contender (ours with method auto and im2col, the GEMM floor, PyTorch and JAX when
installed, the direct reference on small configurations) runs in its own worker process;
rounds alternate; the report gives medians, ratios, the fraction of the GEMM peak, peak memory,
and names the CPU, SIMD level, BLAS kernel and thread counts.

    .venv/bin/python scripts/bench.py                # every configuration, 11 rounds
    .venv/bin/python scripts/bench.py --quick        # the small ones, 3 rounds
    .venv/bin/python scripts/bench.py --markdown --json bench-results/latest.json \\
        --plot docs/_static/benchmarks.png           # the table for docs/benchmarks.md

Needs ``pip install '.[bench]'`` for thread pinning, the BLAS report and ``--plot``; PyTorch
(``pip install torch==2.13.0``) and JAX (``pip install '.[jax]'``) are optional contenders.
For a fair GEMM, unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE for the run if your environment
sets them (``env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE ...``); the header prints both.
"""

import sys

from im2colbp.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
