"""Time the direct depthwise path against im2col and PyTorch, each in its own process.

    .venv/bin/python scripts/depthwise_speed.py              # every configuration
    .venv/bin/python scripts/depthwise_speed.py --only depthwise --rounds 5

One worker process per (contender, configuration); rounds alternate; the median of each
worker's repeats is reported, then the median over rounds. ``direct`` is this module's three
passes (forward, input gradient, weight gradient, chunks of about 4 MiB of
scratch, the fastest measured;
forward keeps its loaded input for the weight gradient);
``direct1`` is the same in one thread (``ib.thread_limit(1)``: the layout copies not split
into channel slabs), to compare; ``ours`` is ``conv_forward`` + ``conv_backward`` with the
engine's default; ``torch`` is
``torch.nn.functional.convNd`` forward + ``backward()`` with 2 threads.
Forward + backward means y, dx and dw (no bias in any contender). Serialise runs on a shared
machine:
``flock /work/notes/bench.lock .venv/bin/python scripts/depthwise_speed.py``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

#: name: (input shape, weight shape, keyword arguments)
CONFIGS = {
    "depthwise": ((8, 128, 28, 28), (128, 1, 3, 3), dict(padding=1, groups=128)),
    "dw_mult2": ((8, 64, 28, 28), (128, 1, 3, 3), dict(padding=1, groups=64)),
    "dw_s2": ((8, 128, 28, 28), (128, 1, 3, 3), dict(padding=1, stride=2, groups=128)),
    "dw_56": ((8, 64, 56, 56), (64, 1, 3, 3), dict(padding=1, groups=64)),
    "dw_112": ((4, 32, 112, 112), (32, 1, 3, 3), dict(padding=1, groups=32)),
    "dw_14": ((8, 256, 14, 14), (256, 1, 3, 3), dict(padding=1, groups=256)),
    "dw_7": ((8, 512, 7, 7), (512, 1, 3, 3), dict(padding=1, groups=512)),
    "dw_5x5": ((8, 128, 28, 28), (128, 1, 5, 5), dict(padding=2, groups=128)),
    "dw_1d": ((8, 64, 4000), (64, 1, 9), dict(padding=4, groups=64)),
}

WORKER = r'''
import json, sys, time
import numpy as np
contender, name, repeats = sys.argv[1], sys.argv[2], int(sys.argv[3])
xs, ws, kw = json.loads(sys.argv[4])
kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in kw.items()}
rng = np.random.default_rng(0)
x = rng.standard_normal(xs, dtype=np.float32)
w = rng.standard_normal(ws, dtype=np.float32)
if contender == "torch":
    import torch
    torch.set_num_threads(2)
    f = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}[len(xs) - 2]
    xt = torch.from_numpy(x).requires_grad_(True); wt = torch.from_numpy(w).requires_grad_(True)
    with torch.no_grad():
        dyt = torch.from_numpy(rng.standard_normal(f(xt, wt, **kw).shape, dtype=np.float32))
    def run():
        xt.grad = wt.grad = None
        f(xt, wt, **kw).backward(dyt)
else:
    from threadpoolctl import threadpool_limits
    threadpool_limits(2)
    from im2colbp import depthwise as dwm
    from im2colbp import plan as pl, engine as en
    from im2colbp.geometry import conv_geometry
    from im2colbp.workspace import samples_per_chunk
    g = conv_geometry(xs, ws, **kw)
    if contender == "direct1":
        import im2colbp as ib
        ib.set_thread_limit(1)
    if contender in ("direct", "direct1"):
        chunk = samples_per_chunk(g.batch, dwm.depthwise_sample_bytes(g, 4), 4 * 2**20)
        def run():
            y, kept = dwm.depthwise_forward(g, x, w, dtype=np.float32,
                                            samples_per_chunk=chunk, keep=True)
            dwm.depthwise_input_gradient(g, w, y, dtype=np.float32, samples_per_chunk=chunk)
            dwm.depthwise_weight_gradient(g, x, y, dtype=np.float32, samples_per_chunk=chunk,
                                          kept=kept)
    else:
        import im2colbp as ib
        def run():
            y, ctx = ib.conv_forward(x, w, **kw)
            ib.conv_backward(y, ctx)
for _ in range(max(5, repeats // 2)):  # warm up (PyTorch's thread pool, the scratch pool)
    run()
times = []
for _ in range(repeats):
    t = time.perf_counter(); run(); times.append(time.perf_counter() - t)
times.sort()
print(json.dumps(1e3 * times[len(times) // 2]))
'''


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", default=list(CONFIGS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--contenders", nargs="*", default=["direct", "ours", "torch"])
    args = parser.parse_args()
    results = {name: {c: [] for c in args.contenders} for name in args.only}
    for _ in range(args.rounds):
        for name in args.only:
            for contender in args.contenders:
                spec = json.dumps(CONFIGS[name])
                out = subprocess.run([sys.executable, "-c", WORKER, contender, name,
                                      str(args.repeats), spec],
                                     capture_output=True, text=True, check=True)
                results[name][contender].append(json.loads(out.stdout))
    ratios = "".join(f"  {c}/torch" for c in args.contenders if c != "torch")
    if "direct" in args.contenders and "ours" in args.contenders:
        ratios += "  direct/ours"
    print(f"{'config':<10}" + "".join(f"{c:>10}" for c in args.contenders) + "  (ms, f+b)"
          + (ratios if "torch" in args.contenders else "  direct/ours"))
    for name, row in results.items():
        med = {c: statistics.median(v) for c, v in row.items()}
        line = f"{name:<10}" + "".join(f"{med[c]:>10.2f}" for c in args.contenders)
        if "torch" in med:
            line += "".join(f"  {med[c] / med['torch']:>8.2f}" for c in args.contenders
                            if c != "torch")
        if "direct" in med and "ours" in med:
            line += f"  {med['direct'] / med['ours']:>8.2f}"
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
