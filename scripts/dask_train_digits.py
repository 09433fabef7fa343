#!/usr/bin/env python3
"""A data-parallel training step: the digits CNN's batch sharded across Dask workers.

The network and the optimiser are those of :mod:`im2colbp.digits`. The batch is a
Dask array chunked along N (one shard per chunk); the forward and backward passes are
written with ``im2colbp.dask`` on it, so every convolution block, every ReLU and the
linear layer run on the worker holding its shard, and each parameter gradient is a tree
reduction over the shards (``conv_grad_weight``, ``conv_grad_bias``, and the linear
layer's ``δᵀ·h`` contracted over N). Nothing but the parameters travels to the workers;
only the summed gradients come back.

The step is checked against the single-process step of ``im2colbp.digits.DigitsCNN``:
the gradients and the parameters after one Adam update agree (float64: to ~1e-12).

Usage::

    pip install "im2colbp[dask,examples]"
    python scripts/dask_train_digits.py [--batch 256] [--shards 4] [--workers 2] [--steps 3]
    python scripts/dask_train_digits.py --scheduler tcp://host:8786
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

try:
    import dask.array as da
    import distributed
except ImportError:  # pragma: no cover - depends on the environment
    raise SystemExit("this example needs the dask extra: pip install 'im2colbp[dask]'") from None

import im2colbp.dask as ibd


def load_train_digits() -> Any:
    """:mod:`im2colbp.digits` (the network, Adam, the data), from the package or the checkout."""
    try:
        import im2colbp.digits as module
    except ImportError:  # not installed: use the checkout this script is in
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        import im2colbp.digits as module
    return module


def data_parallel_gradients(model: Any, x: da.Array, labels: np.ndarray
                            ) -> Tuple[Any, Dict[str, Any]]:
    """Lazy ``(loss, {name: gradient})`` of the mean cross-entropy over the whole batch.

    ``x`` (N, 1, 8, 8) is chunked along N; every gradient is a sum over the shards.
    The formulas are those of ``DigitsCNN.forward`` / ``backward``, on Dask arrays.
    """
    n = x.shape[0]
    conv1, conv2, fc = model.conv1, model.conv2, model.fc
    onehot = da.from_array(np.eye(10, dtype=x.dtype)[labels], chunks=(x.chunks[0], 10))

    # forward, shard by shard
    h1 = ibd.conv(x, conv1.weight, conv1.bias, padding=1)                 # (N, 32, 8, 8)
    mask1 = h1 > 0
    a1 = h1 * mask1
    h2 = ibd.conv(a1, conv2.weight, conv2.bias, stride=2, padding=1)     # (N, 64, 4, 4)
    mask2 = h2 > 0
    flat = (h2 * mask2).reshape(n, -1)                                   # (N, 1024)
    logits = flat @ fc.weight.T + fc.bias                                # (N, 10)
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_p = shifted - da.log(da.exp(shifted).sum(axis=1, keepdims=True))
    loss = -(log_p * onehot).sum() / n
    dlogits = ((da.exp(log_p) - onehot) / n).astype(x.dtype)             # (N, 10)

    # backward: the gradients are sums over N, reduced as trees
    grads: Dict[str, Any] = {
        "fc.weight": dlogits.T @ flat,                                   # (10, N) @ (N, 1024)
        "fc.bias": dlogits.sum(axis=0),
    }
    dh2 = (dlogits @ fc.weight).reshape(h2.shape) * mask2
    grads["conv2.weight"] = ibd.conv_grad_weight(dh2, a1, conv2.weight.shape, stride=2,
                                                 padding=1)
    grads["conv2.bias"] = ibd.conv_grad_bias(dh2)
    dh1 = ibd.conv_grad_input(dh2, conv2.weight, a1.shape, stride=2, padding=1) * mask1
    grads["conv1.weight"] = ibd.conv_grad_weight(dh1, x, conv1.weight.shape, padding=1)
    grads["conv1.bias"] = ibd.conv_grad_bias(dh1)
    return loss, grads


def step(model: Any, optimiser: Any, x: np.ndarray, labels: np.ndarray, shards: int,
         client: Optional[Any] = None) -> float:
    """One data-parallel step: gradients on the shards, summed, then ``optimiser.step()``."""
    chunk = -(-len(x) // shards)
    loss, grads = data_parallel_gradients(model, da.from_array(x, chunks=(chunk, 1, 8, 8)),
                                          labels)
    names = list(grads)
    if client is None:
        values = da.compute(loss, *[grads[name] for name in names], scheduler="sync")
    else:
        values = client.compute([loss] + [grads[name] for name in names], sync=True)
    by_name = dict(zip(names, values[1:]))
    for name, _, grad in model.parameters():
        grad[...] = by_name[name]
    optimiser.step()
    return float(values[0])


def compare(steps: int = 3, batch: int = 256, shards: int = 4, client: Optional[Any] = None,
            dtype: Any = np.float64, seed: int = 0, log: Any = print) -> List[dict]:
    """Run ``steps`` data-parallel steps beside single-process ones from the same start;
    return, per step, the loss of each and the largest relative parameter difference."""
    td = load_train_digits()
    x_train, y_train, _, _ = td.load_data(seed, dtype=dtype)
    parallel, single = td.DigitsCNN(seed, dtype=dtype), td.DigitsCNN(seed, dtype=dtype)
    opt_parallel = td.Adam(list(parallel.parameters()), lr=3e-3)
    opt_single = td.Adam(list(single.parameters()), lr=3e-3)
    order = np.random.default_rng(seed + 1).permutation(len(x_train))
    rows = []
    for number in range(steps):
        index = order[number * batch:(number + 1) * batch]
        xb, yb = x_train[index], y_train[index]
        start = time.perf_counter()
        loss_parallel = step(parallel, opt_parallel, xb, yb, shards, client)
        seconds = time.perf_counter() - start
        loss_single, _ = single.loss_and_backward(xb, yb)
        grad_gap = max(
            float(np.abs(gp - gs).max() / max(np.abs(gs).max(), 1e-30))
            for (_, _, gp), (_, _, gs) in zip(parallel.parameters(), single.parameters()))
        opt_single.step()
        param_gap = max(
            float(np.abs(vp - vs).max() / max(np.abs(vs).max(), 1e-30))
            for (_, vp, _), (_, vs, _) in zip(parallel.parameters(), single.parameters()))
        rows.append(dict(step=number + 1, loss_parallel=loss_parallel, loss_single=loss_single,
                         grad_gap=grad_gap, param_gap=param_gap, seconds=seconds))
        if log:
            log(f"step {number + 1}: loss {loss_parallel:.6f} (sharded) vs {loss_single:.6f} "
                f"(one process); gradients differ by {grad_gap:.1e}, parameters after Adam by "
                f"{param_gap:.1e} (relative); {seconds:.2f} s")
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="images per step (256)")
    parser.add_argument("--shards", type=int, default=4, help="chunks of the batch (4)")
    parser.add_argument("--workers", type=int, default=2, help="local worker processes (2)")
    parser.add_argument("--steps", type=int, default=3, help="steps to compare (3)")
    parser.add_argument("--scheduler", default=None, help="address of an existing scheduler")
    args = parser.parse_args(argv)
    if min(args.batch, args.shards, args.workers, args.steps) < 1:
        parser.error("--batch, --shards, --workers and --steps must be positive")
    if args.scheduler:
        client = distributed.Client(args.scheduler)
        cluster = None
    else:
        cluster = distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1,
                                           processes=True, dashboard_address=":0")
        client = distributed.Client(cluster)
    try:
        print(f"batch {args.batch} in {args.shards} shards on "
              f"{len(client.scheduler_info()['workers'])} workers, float64")
        rows = compare(args.steps, args.batch, args.shards, client)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    ok = all(row["param_gap"] < 1e-10 and row["grad_gap"] < 1e-10 for row in rows)
    print("the sharded steps equal the single-process steps" if ok else "MISMATCH")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
