"""Per-call overhead: a 1×1×8×8 convolution with a 1×1×3×3 kernel, ours against PyTorch.

Contenders: ``ours:auto`` and ``ours:im2col`` (the functions, ``method=``), ``ours:layer``
(``Conv2d``: forward under ``no_grad``; forward + backward), ``torch`` (``conv2d``).

The arithmetic is 324 multiply-adds, so the time is the cost of a call: argument handling,
planning (cached after the first call of a geometry), dispatch. Each contender runs in its own
process (their thread pools would otherwise spin against each other), alternating rounds;
medians of the per-round medians, in µs per call.

    .venv/bin/python scripts/call_overhead.py [--rounds 7] [--calls 2000]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import timeit
from typing import Dict, List


def _worker(contender: str, calls: int) -> Dict[str, float]:
    import numpy as np

    if contender == "torch":
        import torch

        torch.set_num_threads(2)
        x = torch.ones((1, 1, 8, 8), requires_grad=True)
        w = torch.ones((1, 1, 3, 3), requires_grad=True)
        dy = torch.ones((1, 1, 6, 6))

        def forward() -> None:
            with torch.no_grad():
                torch.nn.functional.conv2d(x, w)

        def forward_backward() -> None:
            x.grad = w.grad = None
            torch.nn.functional.conv2d(x, w).backward(dy)
    elif contender == "ours:layer":
        import im2colbp as ib
        from im2colbp.layer import no_grad

        x, dy = np.ones((1, 1, 8, 8), np.float32), np.ones((1, 1, 6, 6), np.float32)
        layer = ib.Conv2d(1, 1, 3, bias=False, dtype=np.float32)
        layer.weight = np.ones((1, 1, 3, 3), np.float32)

        def forward() -> None:
            with no_grad():
                layer(x)

        def forward_backward() -> None:
            layer.forward(x)
            layer.backward(dy)
    else:
        import im2colbp as ib

        x, w = np.ones((1, 1, 8, 8), np.float32), np.ones((1, 1, 3, 3), np.float32)
        dy = np.ones((1, 1, 6, 6), np.float32)
        method = contender.split(":")[1]

        def forward() -> None:
            ib.conv(x, w, method=method)

        def forward_backward() -> None:
            ib.conv_backward(dy, ib.conv_forward(x, w, method=method)[1])

    result = {}
    for name, function in (("forward", forward), ("forward+backward", forward_backward)):
        function()
        result[name] = 1e6 * min(timeit.repeat(function, number=calls, repeat=3)) / calls
    return result


def main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(_worker(args.worker, args.calls)))
        return 0
    contenders = ["ours:auto", "ours:im2col", "ours:layer"]
    try:
        import importlib.util
        if importlib.util.find_spec("torch") is not None:
            contenders.append("torch")
    except ImportError:
        pass
    samples: Dict[str, Dict[str, List[float]]] = {c: {} for c in contenders}
    for round_ in range(args.rounds):
        for contender in contenders[round_ % len(contenders):] + \
                contenders[:round_ % len(contenders)]:
            out = subprocess.run([sys.executable, __file__, "--worker", contender, "--calls",
                                  str(args.calls)], capture_output=True, text=True, check=True)
            for name, value in json.loads(out.stdout).items():
                samples[contender].setdefault(name, []).append(value)
    print("| contender | forward µs/call | forward+backward µs/call |")
    print("| --- | ---: | ---: |")
    for contender, values in samples.items():
        print(f"| {contender} | {statistics.median(values['forward']):.1f} | "
              f"{statistics.median(values['forward+backward']):.1f} |")
    print(f"\n1×1×8×8 input, 1×1×3×3 kernel, float32; each contender in its own process, "
          f"{args.rounds} rounds alternated, best of 3 × {args.calls} calls per round, "
          "median over rounds.")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
