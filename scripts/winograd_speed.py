"""Time forward + backward: method="winograd" (F(2, 3), F(4, 3)), "im2col", and the floor.

Run under the shared lock, one configuration at a time (each run < 2 min), e.g.::

    flock /work/notes/bench.lock env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \\
        .venv/bin/python scripts/winograd_speed.py --config resnet3x3 --rounds 7

Every contender runs the benchmark suite's configuration
(``im2colbp.benchmark.CONFIGS``) as ``scripts/bench.py`` does: ``im2col`` and
``winograd F(m,3)`` are ``conv_forward`` + ``conv_backward`` (y, then dx, dw,
db; the Winograd tile forced through ``plan.WINOGRAD_TILES``), ``floor`` the
three bare GEMMs on pre-built matrices. Each contender and round is a fresh
process (so that no contender's BLAS threads or caches disturb another's),
which makes one untimed call, then ``--repeats`` timed ones; rounds alternate
the contenders in a rotated order. The table gives the median over rounds
of each round's median: wall clock and process CPU time (all threads), ms.
``--one-thread`` adds the Winograd tiles under ``IM2COLBP_THREADS=1``;
``--single-core`` runs every contender on one thread (BLAS too), which is
what to compare when the machine's other core is busy: BLAS's threaded GEMMs
then slow down by factors, its single-threaded ones do not.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

import numpy as np

from im2colbp.benchmark import CONFIGS


def _worker(contender: str, name: str, dtype: str, repeats: int) -> None:
    from im2colbp import benchmark, plan

    config = CONFIGS[name]
    kind = np.dtype(dtype)
    if contender == "floor":
        call = benchmark._setup_floor(config, kind)
    elif contender == "im2col":
        call = benchmark._setup_ours(config, kind, "im2col")
    else:  # "F2", "F4"
        plan.WINOGRAD_TILES[kind.itemsize] = int(contender[1])
        call = benchmark._setup_ours(config, kind, "winograd")
    call()  # untimed: caches, scratch, plan
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        call()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    print(json.dumps({"wall": float(np.median(wall)), "cpu": float(np.median(cpu))}))


LABELS = {"floor": "floor (3 bare GEMMs)", "im2col": "im2col", "F2": "winograd F(2,3)",
          "F4": "winograd F(4,3)"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="resnet3x3", choices=sorted(CONFIGS))
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--one-thread", action="store_true",
                        help="also time the Winograd tiles with IM2COLBP_THREADS=1")
    parser.add_argument("--no-floor", action="store_true")
    parser.add_argument("--single-core", action="store_true",
                        help="every contender on one thread (OPENBLAS_NUM_THREADS=1, "
                             "IM2COLBP_THREADS=1): robust on a busy machine")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        _worker(args.worker, args.config, args.dtype, args.repeats)
        return
    runs = [("im2col", {}), ("F2", {}), ("F4", {})]
    if not args.no_floor:
        runs.insert(0, ("floor", {}))
    if args.one_thread:
        runs += [("F2", {"IM2COLBP_THREADS": "1"}), ("F4", {"IM2COLBP_THREADS": "1"})]
    labels = [LABELS[c] + (" 1 thread" if env else "") for c, env in runs]
    if args.single_core:
        runs = [(c, {"OPENBLAS_NUM_THREADS": "1", "IM2COLBP_THREADS": "1"}) for c, _ in runs]
    walls: Dict[str, List[float]] = {label: [] for label in labels}
    cpus: Dict[str, List[float]] = {label: [] for label in labels}
    for round_ in range(args.rounds):
        shift = round_ % len(runs)
        for (contender, env), label in list(zip(runs, labels))[shift:] + list(
                zip(runs, labels))[:shift]:
            out = subprocess.run(
                [sys.executable, __file__, "--worker", contender, "--config", args.config,
                 "--dtype", args.dtype, "--repeats", str(args.repeats)],
                env={**os.environ, **env}, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            walls[label].append(result["wall"])
            cpus[label].append(result["cpu"])
    print(f"{args.config} ({CONFIGS[args.config].describe()}), {args.dtype}, forward + backward, "
          f"{'one thread everywhere' if args.single_core else 'default threads'}; "
          f"median over {args.rounds} rounds (fresh processes) of the median of {args.repeats} "
          f"calls; load average {os.getloadavg()[0]:.2f}")
    base = float(np.median(walls["im2col"]))
    floor = float(np.median(walls[labels[0]])) if not args.no_floor else float("nan")
    print(f"{'contender':24s} {'wall ms':>8s} {'cpu ms':>8s} {'vs im2col':>9s} {'vs floor':>9s}")
    for label in labels:
        wall = float(np.median(walls[label]))
        print(f"{label:24s} {1e3 * wall:8.2f} {1e3 * float(np.median(cpus[label])):8.2f} "
              f"{wall / base:8.2f}x {wall / floor:8.2f}x")


if __name__ == "__main__":
    main()
