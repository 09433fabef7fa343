"""Benchmark suite: every contender in its own process, rounds alternated, medians and ratios.

Contenders (forward + backward of one configuration: ``y``, then ``dx``, ``dw``, ``db``):

``ours``
    ``conv_forward`` + ``conv_backward`` with the engine's default (``method="auto"``).
``im2col``
    the same with ``method="im2col"``, the taught lowering (only when the engine has ``method=``).
``floor``
    the three bare GEMMs the lowering needs, ``Y = W·C``, ``dW = δ·Cᵀ``, ``dC = Wᵀ·δ``, on
    pre-built matrices in their best layout (the whole batch in one GEMM per group).
``torch``
    ``torch.nn.functional.convNd`` forward + ``backward()`` (when PyTorch is importable).
``jax``
    ``jax.lax.conv_general_dilated`` + ``jax.vjp``, jit-compiled, ``block_until_ready``
    (when JAX is importable).
``direct``
    :mod:`im2colbp.reference`, the clarity-first oracle, on the small configurations only.

How it measures, and why. Timing two libraries in one process distorts both: after each call
their thread pools keep spinning (OpenBLAS's and OpenMP's workers busy-wait before they sleep)
on the cores the other one needs; PyTorch's times grew up to 6x that way. So every contender
lives in its own long-lived worker process (``python -m im2colbp.benchmark --worker NAME``) with
its thread pools pinned to ``--threads``; the parent sends "run configuration X, k calls" over a
pipe and gets the timings back. Only one worker runs at a time, and before the next one starts
the parent waits until the previous worker's CPU time has stopped growing (its spinning threads
have gone to sleep). A long-lived worker measures the steady state a training loop sees
(compiled JAX functions, PyTorch's primitive caches and our scratch are reused, as in a loop);
before each batch of ``k`` timed calls it makes one untimed call, because the other contenders
have just evicted its data from the caches. Rounds alternate: in every round each contender runs
each configuration once, in an order rotated from round to round; a configuration's time is the
median over the rounds of each round's median, so a noisy neighbour that slows one round is
outvoted. Peak memory is measured in a fresh process per contender and configuration that runs
nothing else: the rise of the peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs``) during one forward + backward, above the resident set just before it.

Speed is never asserted in the tests; it lives here. Run ``python scripts/bench.py`` or
``im2colbp bench`` (``--help`` for the options).
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import math
import os
import platform
import resource
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, TextIO, Tuple, TypedDict

import numpy as np

__all__ = ["CONFIGS", "CONTENDERS", "Config", "Report", "run_suite", "format_report",
           "report_to_json", "format_ms", "simd_level", "peak_rss", "main", "add_arguments",
           "run"]


# --------------------------------------------------------------------------
# configurations
# --------------------------------------------------------------------------
class GeometryKeywords(TypedDict):
    """The geometry keywords of a configuration, per axis, as every contender takes them."""

    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    dilation: Tuple[int, ...]
    groups: int


@dataclass(frozen=True)
class Config:
    """One benchmark configuration: shapes (channels first) and the geometry keywords."""

    input_shape: Tuple[int, ...]
    weight_shape: Tuple[int, ...]
    kwargs: Dict[str, int] = field(default_factory=dict)
    gemm_bound: bool = True  # the GEMM-floor target applies

    @property
    def rank(self) -> int:
        return len(self.weight_shape) - 2

    def _per_axis(self, key: str, default: int) -> Tuple[int, ...]:
        value = self.kwargs.get(key, default)
        return tuple(value) if isinstance(value, (tuple, list)) else (int(value),) * self.rank

    @property
    def stride(self) -> Tuple[int, ...]:
        return self._per_axis("stride", 1)

    @property
    def padding(self) -> Tuple[int, ...]:
        return self._per_axis("padding", 0)

    @property
    def dilation(self) -> Tuple[int, ...]:
        return self._per_axis("dilation", 1)

    @property
    def groups(self) -> int:
        return int(self.kwargs.get("groups", 1))

    def geometry(self) -> GeometryKeywords:
        """``stride``, ``padding``, ``dilation`` and ``groups`` as keyword arguments."""
        return GeometryKeywords(stride=self.stride, padding=self.padding,
                                dilation=self.dilation, groups=self.groups)

    @property
    def out_size(self) -> Tuple[int, ...]:
        """``floor((I + 2P - D(K-1) - 1) / S) + 1`` per axis (symmetric integer padding)."""
        return tuple(
            (i + 2 * p - d * (k - 1) - 1) // s + 1
            for i, k, s, p, d in zip(self.input_shape[2:], self.weight_shape[2:], self.stride,
                                     self.padding, self.dilation)
        )

    @property
    def output_shape(self) -> Tuple[int, ...]:
        return (self.input_shape[0], self.weight_shape[0]) + self.out_size

    @property
    def flops(self) -> int:
        """Multiply-adds of the direct algorithm, times 2, for forward + dx + dw (3 alike)."""
        per_output = self.weight_shape[1] * math.prod(self.weight_shape[2:])  # C_in/G * prod(K)
        return 3 * 2 * math.prod(self.output_shape) * per_output

    def describe(self) -> str:
        """The shapes in words (K: filters, then the kernel size).

        Examples
        --------
        >>> CONFIGS["resnet_s2"].describe()
        'N8 C128 28×28 K256 3×3 s2 p1'
        """
        parts = [f"N{self.input_shape[0]}", f"C{self.input_shape[1]}",
                 "×".join(map(str, self.input_shape[2:])), f"K{self.weight_shape[0]}",
                 "×".join(map(str, self.weight_shape[2:]))]
        for key, letter, default in (("stride", "s", 1), ("padding", "p", 0),
                                     ("dilation", "d", 1), ("groups", "g", 1)):
            values = self._per_axis(key, default) if key != "groups" else (self.groups,)
            if key in self.kwargs and set(values) != {default}:
                shown = values[:1] if len(set(values)) == 1 else values
                parts.append(letter + "×".join(map(str, shown)))
        return " ".join(parts)

    def to_message(self) -> dict:
        return {"input_shape": list(self.input_shape), "weight_shape": list(self.weight_shape),
                "kwargs": dict(self.kwargs), "gemm_bound": self.gemm_bound}

    @classmethod
    def from_message(cls, message: dict) -> Config:
        return cls(tuple(message["input_shape"]), tuple(message["weight_shape"]),
                   dict(message["kwargs"]), bool(message["gemm_bound"]))


#: The suite (channels first). ``gemm_bound=False``: no GEMM-floor target (too small, or
#: depthwise, where every GEMM is a matrix-vector product).
CONFIGS: Dict[str, Config] = {
    "teach": Config((1, 3, 32, 32), (8, 3, 3, 3), dict(stride=1, padding=1), gemm_bound=False),
    "resnet3x3": Config((8, 64, 56, 56), (64, 64, 3, 3), dict(stride=1, padding=1)),
    "resnet_s2": Config((8, 128, 28, 28), (256, 128, 3, 3), dict(stride=2, padding=1)),
    "pointwise": Config((8, 256, 14, 14), (1024, 256, 1, 1)),
    "stem7x7": Config((4, 3, 224, 224), (64, 3, 7, 7), dict(stride=2, padding=3)),
    "depthwise": Config((8, 128, 28, 28), (128, 1, 3, 3), dict(stride=1, padding=1, groups=128),
                        gemm_bound=False),
    "dilated": Config((4, 64, 32, 32), (64, 64, 3, 3), dict(dilation=2, padding=2)),
    "conv1d": Config((8, 32, 16000), (32, 32, 9), dict(stride=2, padding=4)),
    "conv3d": Config((2, 16, 16, 32, 32), (32, 16, 3, 3, 3), dict(stride=1, padding=1)),
}

#: ``--quick``: the small configurations.
QUICK_CONFIGS = ("teach", "pointwise", "depthwise", "dilated")

#: Every contender, in table order.
CONTENDERS = ("ours", "im2col", "winograd", "floor", "torch", "jax", "direct")

#: The direct reference loops in Python over output positions: only up to this many (N·∏O).
DIRECT_MAX_POSITIONS = 1024

#: Contenders whose peak memory is measured.
MEMORY_CONTENDERS = ("ours", "torch")

_PEAK_GEMM_SIZE = 2048


def engine_has_method() -> bool:
    """Whether ``conv_forward`` takes ``method=`` (the ``im2col`` contender needs it)."""
    import im2colbp as ib

    return "method" in inspect.signature(ib.conv_forward).parameters


def _has_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def available_contenders() -> Dict[str, Optional[str]]:
    """Every contender mapped to ``None`` (it can run here) or why it cannot."""
    reasons: Dict[str, Optional[str]] = {name: None for name in CONTENDERS}
    if not engine_has_method():
        reasons["im2col"] = "this engine has no method= keyword"
        reasons["winograd"] = "this engine has no method= keyword"
    if not _has_module("torch"):
        reasons["torch"] = "PyTorch is not installed (pip install torch==2.13.0)"
    if not _has_module("jax"):
        reasons["jax"] = "JAX is not installed (pip install 'im2colbp[jax]')"
    return reasons


def winograd_applies(config: Config) -> bool:
    """Whether method='winograd' can serve ``config`` (3-tap kernels, stride 1, dilation 1)."""
    return (all(k == 3 for k in config.weight_shape[2:]) and set(config.stride) == {1}
            and set(config.dilation) == {1})


def direct_applies(config: Config) -> bool:
    return config.input_shape[0] * math.prod(config.out_size) <= DIRECT_MAX_POSITIONS


# --------------------------------------------------------------------------
# facts about the machine (plain text, never a Python repr)
# --------------------------------------------------------------------------
def _cpuinfo() -> Dict[str, str]:
    facts: Dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "flags") and key not in facts:
                    facts[key] = value.strip()
    except OSError:
        pass
    return facts


def cpu_model() -> str:
    return _cpuinfo().get("model name") or platform.processor() or platform.machine() or "unknown"


def simd_level(flags: Optional[str] = None) -> str:
    """The widest vector extension in the CPU flags (``/proc/cpuinfo`` when not given).

    Examples
    --------
    >>> simd_level("fpu sse2 avx avx2 fma")
    'AVX2 (avx2)'
    """
    present = set((flags if flags is not None else _cpuinfo().get("flags", "")).split())
    for flag, name in (("avx512f", "AVX-512"), ("avx2", "AVX2"), ("avx", "AVX"),
                       ("sse4_2", "SSE4.2"), ("sse2", "SSE2"), ("asimd", "NEON (ASIMD)")):
        if flag in present:
            return f"{name} ({flag})"
    return "unknown"


def env_value(name: str) -> str:
    value = os.environ.get(name)
    return "unset" if value is None else value


def _blas_description(infos: List[dict]) -> str:
    """threadpoolctl's BLAS entries as text: ``OpenBLAS 0.3.31 kernel SkylakeX, 2 threads``."""
    blas = [info for info in infos if info.get("user_api") == "blas"]
    if not blas:
        return "unknown (no BLAS seen by threadpoolctl)"
    parts = []
    for info in blas:
        api = str(info.get("internal_api", "unknown"))
        name = {"openblas": "OpenBLAS", "mkl": "MKL", "blis": "BLIS"}.get(api, api)
        where = os.path.basename(os.path.dirname(str(info.get("filepath", ""))))
        parts.append(f"{name} {info.get('version') or 'version unknown'} kernel "
                     f"{info.get('architecture') or 'unknown'}, "
                     f"{info.get('num_threads')} threads (internal_api {api}, from {where})")
    return "; ".join(parts)


# --------------------------------------------------------------------------
# the worker side: one contender per process
# --------------------------------------------------------------------------
def _arrays(config: Config, dtype: np.dtype) -> Tuple[np.ndarray, ...]:
    """The same x, w, b, δ in every process (seeded); no convolution runs here."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(config.input_shape).astype(dtype)
    w = (rng.standard_normal(config.weight_shape) * 0.1).astype(dtype)
    b = rng.standard_normal(config.weight_shape[0]).astype(dtype)
    dy = rng.standard_normal(config.output_shape).astype(dtype)
    return x, w, b, dy


def _setup_ours(config: Config, dtype: np.dtype, method: Optional[str]) -> Callable[[], Any]:
    import im2colbp as ib

    x, w, b, dy = _arrays(config, dtype)
    geometry = config.geometry()
    chosen = "auto" if method is None else method  # conv_forward's default method

    def forward_backward() -> Any:
        _, ctx = ib.conv_forward(x, w, b, **geometry, method=chosen)
        return ib.conv_backward(dy, ctx)

    return forward_backward


def _setup_floor(config: Config, dtype: np.dtype) -> Callable[[], Any]:
    """The three bare GEMMs of forward + backward on pre-built matrices laid out for
    the fastest formulation (the whole batch in one GEMM per group):
    Y = W·C, dW = δ·Cᵀ and dC = Wᵀ·δ, with C the (C_in/G·∏K, N·L) columns."""
    import im2colbp as ib

    x, w, _, dy = _arrays(config, dtype)
    groups, n = config.groups, config.input_shape[0]
    positions = math.prod(config.out_size)                        # L
    rows = config.weight_shape[1] * math.prod(config.weight_shape[2:])  # C_in/G * prod(K)
    filters = config.weight_shape[0] // groups                    # C_out/G
    cols: np.ndarray = ib.im2col(x, tuple(config.weight_shape[2:]), stride=config.stride,
                     padding=config.padding, dilation=config.dilation)
    cols = cols.reshape(n, groups, rows, positions)               # (n, g, rows, L)
    cols = np.ascontiguousarray(cols.transpose(1, 2, 0, 3)).reshape(groups, rows, n * positions)
    cols_t = np.ascontiguousarray(cols.transpose(0, 2, 1))        # (g, n·L, rows)
    w_g = np.ascontiguousarray(w.reshape(groups, filters, rows))  # (g, filters, rows)
    w_gt = np.ascontiguousarray(w_g.transpose(0, 2, 1))           # (g, rows, filters)
    delta: np.ndarray = dy.reshape(n, groups, filters, positions).transpose(1, 2, 0, 3)
    delta = np.ascontiguousarray(delta).reshape(groups, filters, n * positions)
    y = np.empty((groups, filters, n * positions), dtype=x.dtype)
    dw = np.empty((groups, filters, rows), dtype=x.dtype)
    dcols = np.empty_like(cols)

    def floor() -> None:
        np.matmul(w_g, cols, out=y)
        np.matmul(delta, cols_t, out=dw)
        np.matmul(w_gt, delta, out=dcols)

    return floor


def _setup_torch(config: Config, dtype: np.dtype) -> Callable[[], Any]:
    import torch

    function = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d,
                3: torch.nn.functional.conv3d}.get(config.rank)
    if function is None:
        raise ValueError(f"PyTorch has no {config.rank}-d convolution")
    x, w, b, dy = _arrays(config, dtype)
    xt = torch.from_numpy(x).requires_grad_(True)
    wt = torch.from_numpy(w).requires_grad_(True)
    bt = torch.from_numpy(b).requires_grad_(True)
    dyt = torch.from_numpy(dy)
    geometry = config.geometry()

    def forward_backward() -> None:
        xt.grad = wt.grad = bt.grad = None
        function(xt, wt, bt, **geometry).backward(dyt)

    return forward_backward


def _setup_jax(config: Config, dtype: np.dtype, compile_only: bool = False) -> Callable[[], Any]:
    import jax

    if dtype == np.float64:
        jax.config.update("jax_enable_x64", True)
    x, w, b, dy = _arrays(config, dtype)
    padding = [(p, p) for p in config.padding]
    bias_shape = (1, -1) + (1,) * config.rank

    def convolve(x: Any, w: Any, b: Any) -> Any:
        # dimension_numbers=None: (N, C, *spatial), (O, I, *kernel), (N, C, *spatial), any rank
        y = jax.lax.conv_general_dilated(x, w, config.stride, padding,
                                         rhs_dilation=config.dilation,
                                         feature_group_count=config.groups)
        return y + b.reshape(bias_shape)

    @jax.jit
    def forward_backward(x: Any, w: Any, b: Any, dy: Any) -> Any:
        y, pullback = jax.vjp(convolve, x, w, b)
        return y, pullback(dy)

    arguments = [jax.device_put(a) for a in (x, w, b, dy)]
    compiled = forward_backward.lower(*arguments).compile()  # compiled once, here

    def run() -> Any:
        return jax.block_until_ready(compiled(*arguments))

    return run


def _setup_direct(config: Config, dtype: np.dtype) -> Callable[[], Any]:
    from . import reference

    x, w, b, dy = _arrays(config, dtype)
    geometry = config.geometry()

    def forward_backward() -> None:
        reference.conv(x, w, b, **geometry)
        reference.conv_grad_input(dy, w, x.shape, **geometry)
        reference.conv_grad_weight(dy, x, w.shape, **geometry)
        reference.conv_grad_bias(dy)

    return forward_backward


def _setup(kind: str, config: Config, dtype: np.dtype) -> Callable[[], Any]:
    if kind == "ours":
        return _setup_ours(config, dtype, None)
    if kind == "im2col":
        if not engine_has_method():
            raise ValueError("this engine has no method= keyword")
        return _setup_ours(config, dtype, "im2col")
    if kind == "winograd":
        return _setup_ours(config, dtype, "winograd")
    if kind == "floor":
        return _setup_floor(config, dtype)
    if kind == "torch":
        return _setup_torch(config, dtype)
    if kind == "jax":
        return _setup_jax(config, dtype)
    if kind == "direct":
        return _setup_direct(config, dtype)
    raise ValueError(f"unknown contender {kind!r}")


def _worker_environment(threads: int) -> Dict[str, str]:
    """The environment of a worker: every thread pool sized before any library loads."""
    env = dict(os.environ)
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                 "BLIS_NUM_THREADS"):
        env[name] = str(threads)
    # XLA's CPU client sizes its intra-op pool from PJRT_NPROC (DefaultThreadPoolSize);
    # --xla_cpu_multi_thread_eigen=false alone does not limit it in current jaxlib.
    env["PJRT_NPROC"] = str(threads)
    env.setdefault("JAX_PLATFORMS", "cpu")
    if threads == 1:
        flags = env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen=false"
        env["XLA_FLAGS"] = flags.strip()
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return env


def _pin_threads(kind: str, threads: int) -> Dict[str, Any]:
    """Limit the thread pools this process has (or will have); report what was set."""
    facts: Dict[str, Any] = {"pid": os.getpid()}
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        threadpool_limits = None
    if kind == "torch":
        import torch

        torch.set_num_threads(threads)
        facts["torch_version"] = torch.__version__
        facts["torch_threads"] = torch.get_num_threads()
    if kind == "jax":
        import jax
        import jaxlib

        facts["jax_version"] = jax.__version__
        facts["jaxlib_version"] = getattr(jaxlib, "__version__", "unknown")
        facts["jax_threads"] = os.environ.get("PJRT_NPROC", "unset")
    if kind in ("ours", "im2col", "winograd", "direct"):
        import im2colbp  # noqa: F401  (loads SciPy's BLAS too, if the engine uses it)
    if threadpool_limits is not None:
        threadpool_limits(limits=threads)
        from threadpoolctl import threadpool_info

        facts["blas"] = _blas_description(threadpool_info())
    else:
        facts["blas"] = "unknown (threadpoolctl not installed: pip install 'im2colbp[bench]')"
    return facts


def _gemm_peak(dtype: np.dtype, n: int = _PEAK_GEMM_SIZE) -> float:
    """FLOP/s of the best of 5 square ``np.matmul`` of size n (after one warm-up)."""
    rng = np.random.default_rng(1)
    a = rng.standard_normal((n, n)).astype(dtype)
    c = np.empty_like(a)
    np.matmul(a, a, out=c)
    best = math.inf
    for _ in range(5):
        start = time.perf_counter()
        np.matmul(a, a, out=c)
        best = min(best, time.perf_counter() - start)
    return 2.0 * n**3 / best


def peak_rss(reset: bool = False) -> int:
    """Peak resident memory of this process, in bytes: Linux's ``VmHWM`` (which, unlike
    ``ru_maxrss``, is not inherited from the parent across exec); ``reset`` starts a new
    peak from the current size (``/proc/self/clear_refs``). Elsewhere: the rusage peak,
    never reset. (The Dask scripts run it on every worker.)

    Examples
    --------
    >>> peak_rss() > 0
    True
    """
    peak = _status_kib("VmHWM")
    if peak is None:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if reset:
        try:
            with open("/proc/self/clear_refs", "w") as clear:
                clear.write("5")
        except OSError:
            pass
    return peak * 1024


def _status_kib(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


def _warm_up_library(kind: str, config: Config, dtype: np.dtype) -> None:
    """Load the library's code paths on a tiny problem of the same rank (not measured)."""
    rank = config.rank
    tiny = Config((1, 2) + (6,) * rank, (2, 2) + (3,) * rank, dict(padding=1))
    _setup(kind, tiny, dtype)()
    if kind in ("ours", "im2col"):
        import im2colbp as ib

        release = getattr(ib, "release_scratch", None)
        if release is not None:
            release()


def _measure_memory(kind: str, config: Config, dtype: np.dtype) -> Dict[str, Any]:
    """Rise of the peak RSS during one forward + backward above the RSS just before it."""
    import gc

    _warm_up_library(kind, config, dtype)
    function = _setup(kind, config, dtype)  # arrays built, JAX compiled; nothing ran yet
    gc.collect()
    before = _status_kib("VmRSS")
    reset = False
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")  # resets VmHWM to the current RSS
        reset = True
    except OSError:
        pass
    if not reset or before is None:  # fall back on the whole life's peak (ru_maxrss)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    function()
    peak = _status_kib("VmHWM") if reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    peak = peak or 0
    return {"extra_bytes": max(0, peak - before) * 1024, "peak_rss_bytes": peak * 1024,
            "how": "VmHWM after clear_refs" if reset else "ru_maxrss"}


def _worker(kind: str, threads: int, dtype: np.dtype) -> int:
    """Answer requests, one JSON object per line on stdin, one reply per line."""
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # whatever a library prints goes to stderr, never into the replies
    sys.stdout = sys.stderr
    facts = _pin_threads(kind, threads)
    functions: Dict[str, Callable[[], Any]] = {}
    for line in sys.stdin:
        request = json.loads(line)
        try:
            op = request["op"]
            if op == "quit":
                break
            if op == "info":
                reply: Dict[str, Any] = {"facts": facts}
            elif op == "peak":
                reply = {"flops_per_second": _gemm_peak(dtype, int(request["size"]))}
            elif op == "memory":
                reply = _measure_memory(kind, Config.from_message(request["config"]), dtype)
            elif op == "time":
                key = json.dumps(request["config"], sort_keys=True)
                if key not in functions:
                    function = _setup(kind, Config.from_message(request["config"]), dtype)
                    function()  # warm-up: first-touch page faults, lazy initialisation
                    functions[key] = function
                function = functions[key]
                function()  # untimed: the other contenders have just evicted its caches
                seconds, cpu = [], []
                for _ in range(int(request["repeats"])):
                    start, start_cpu = time.perf_counter(), time.process_time()
                    function()
                    seconds.append(time.perf_counter() - start)
                    cpu.append(time.process_time() - start_cpu)
                reply = {"seconds": seconds, "cpu_seconds": cpu}
            else:
                raise ValueError(f"unknown request {op!r}")
            reply["ok"] = True
        except Exception as error:  # reported to the parent, which prints a dash and a note
            reply = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        replies.write(json.dumps(reply) + "\n")
        replies.flush()
    return 0


# --------------------------------------------------------------------------
# the parent side
# --------------------------------------------------------------------------
class WorkerError(RuntimeError):
    """A worker process died or answered with an error."""


#: Seconds a worker may take to answer one request before it is killed (a hung
#: library must not hang the whole run): far above any configuration's time.
REPLY_TIMEOUT = 600.0


class Worker:
    """One contender's process, spoken to over a pipe."""

    def __init__(self, kind: str, threads: int, dtype: str,
                 reply_timeout: float = REPLY_TIMEOUT) -> None:
        self.kind = kind
        self.reply_timeout = reply_timeout
        self._log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "im2colbp.benchmark", "--worker", kind,
             "--threads", str(threads), "--dtype", dtype],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True,
            env=_worker_environment(threads),
        )

    def request(self, **message: Any) -> dict:
        self.send(**message)
        return self.receive()

    def send(self, **message: Any) -> None:
        if self.process.stdin is None:
            raise WorkerError(f"the {self.kind} worker has no pipe")
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            pass  # receive() reports the dead worker

    def receive(self) -> dict:
        if self.process.stdout is None:
            raise WorkerError(f"the {self.kind} worker has no pipe")
        try:
            ready, _, _ = select.select([self.process.stdout], [], [], self.reply_timeout)
            if not ready:
                self.process.kill()
                self.process.wait()
                raise WorkerError(f"the {self.kind} worker gave no reply within "
                                  f"{self.reply_timeout:g} s and was stopped")
            line = self.process.stdout.readline()
        except OSError:
            line = ""
        if not line:
            self._log.seek(0)
            tail = " ".join(self._log.read().strip().splitlines()[-3:])
            raise WorkerError(f"the {self.kind} worker exited ({tail or 'no message'})")
        reply = json.loads(line)
        if not reply.pop("ok"):
            raise WorkerError(reply["error"])
        return reply

    def cpu_ticks(self) -> Optional[int]:
        """User + system CPU time of the whole process (all its threads), in clock ticks."""
        try:
            with open(f"/proc/{self.process.pid}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            return int(fields[11]) + int(fields[12])  # utime, stime
        except (OSError, IndexError, ValueError):
            return None

    def wait_quiet(self, timeout: float = 2.0) -> None:
        """Return once this process's CPU time stops growing (its pools have gone to sleep)."""
        deadline = time.monotonic() + timeout
        ticks = self.cpu_ticks()
        if ticks is None:
            time.sleep(0.05)
            return
        while time.monotonic() < deadline:
            time.sleep(0.03)  # 3 clock ticks: a spinning thread shows up
            now = self.cpu_ticks()
            if now is None or now == ticks:
                return
            ticks = now

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                if self.process.stdin is None:
                    raise OSError("no pipe")
                self.process.stdin.write(json.dumps({"op": "quit"}) + "\n")
                self.process.stdin.close()
                self.process.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()
        self._log.close()


@dataclass
class ConfigResult:
    """Every contender's times for one configuration (seconds)."""

    name: str
    config: Config
    rounds: Dict[str, List[float]] = field(default_factory=dict)   # per-round medians
    samples: Dict[str, List[float]] = field(default_factory=dict)  # every timed call
    cpu_samples: Dict[str, List[float]] = field(default_factory=dict)  # CPU time of each call
    memory: Dict[str, dict] = field(default_factory=dict)
    notes: Dict[str, str] = field(default_factory=dict)             # contender -> why no time

    def cpu_per_wall(self, contender: str) -> Optional[float]:
        """CPU time over wall time of the timed calls: how many threads were really busy."""
        wall = sum(self.samples.get(contender, ()))
        return sum(self.cpu_samples[contender]) / wall if wall else None

    def median_ms(self, contender: str) -> Optional[float]:
        values = self.rounds.get(contender)
        return float(np.median(values)) * 1e3 if values else None

    def ratio(self, numerator: str, denominator: str) -> Optional[float]:
        a, b = self.median_ms(numerator), self.median_ms(denominator)
        return None if a is None or b is None or b == 0 else a / b

    def peak_fraction(self, peak_flops: Optional[float]) -> Optional[float]:
        ours = self.median_ms("ours")
        if ours is None or not peak_flops:
            return None
        return self.config.flops / (ours / 1e3) / peak_flops

    def memory_mib(self, contender: str) -> Optional[float]:
        entry = self.memory.get(contender)
        return None if entry is None else entry["extra_bytes"] / 2**20


@dataclass
class Report:
    """A finished run: the machine, the settings, one result per configuration."""

    machine: Dict[str, str]
    settings: Dict[str, Any]
    results: List[ConfigResult]
    contenders: List[str]
    skipped: Dict[str, str]
    peak_flops: Optional[float]
    processes: Dict[str, int] = field(default_factory=dict)  # contender -> its worker's pid


def _load_average() -> str:
    """The 1-minute load average (a busy machine makes every number slower and noisier)."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except (AttributeError, OSError):
        return "unknown"


def _progress(stream: Optional[TextIO], text: str) -> None:
    if stream is not None:
        print(text, file=stream, flush=True)


def _seconds(value: float) -> str:
    return f"{value:.0f} s" if value < 120 else f"{value / 60:.1f} min"


def round_order(kinds: Sequence[str], index: int) -> List[str]:
    """Round ``index`` runs the contenders rotated by ``index``: none always follows another."""
    shift = index % len(kinds)
    return list(kinds[shift:]) + list(kinds[:shift])


def run_suite(configs: Dict[str, Config], *, rounds: int = 11, repeats: int = 3,
              dtype: str = "float32", threads: int = 2, contenders: Optional[Sequence[str]] = None,
              memory: bool = True, progress: Optional[TextIO] = None,
              peak_size: int = _PEAK_GEMM_SIZE) -> Report:
    """Run every contender in its own worker process; ``rounds`` alternated rounds of
    ``repeats`` timed calls each; then the peak memory in fresh processes. ``progress``:
    where a line per round goes (``run`` passes stderr), ``None`` for silence; ``peak_size``:
    the order of the square matmul that measures the GEMM peak."""
    reasons = available_contenders()
    wanted = list(CONTENDERS) if contenders is None else list(contenders)
    skipped = {name: reason for name, reason in reasons.items()
               if name in wanted and reason is not None}
    kinds = [name for name in CONTENDERS if name in wanted and name not in skipped]
    if "ours" not in kinds:
        kinds.insert(0, "ours")  # the ratios and the header need it
    started = time.monotonic()
    load_before = _load_average()
    workers = {kind: Worker(kind, threads, dtype) for kind in kinds}
    results = [ConfigResult(name, config) for name, config in configs.items()]
    try:
        facts: Dict[str, Dict[str, Any]] = {}
        for kind, worker in workers.items():
            facts[kind] = worker.request(op="info")["facts"]
        for worker in workers.values():
            worker.wait_quiet()
        peak = workers["ours"].request(op="peak", size=peak_size)["flops_per_second"]
        workers["ours"].wait_quiet()
        for index in range(rounds):
            round_started = time.monotonic()
            order = round_order(kinds, index)
            for result in results:
                for kind in order:
                    if kind == "direct" and not direct_applies(result.config):
                        result.notes.setdefault(kind, "too large for the direct reference")
                        continue
                    if kind == "winograd" and not winograd_applies(result.config):
                        result.notes.setdefault(kind, "not a 3-tap stride-1 kernel")
                        continue
                    if kind in result.notes:
                        continue
                    try:
                        reply = workers[kind].request(op="time", config=result.config.to_message(),
                                                      repeats=repeats)
                    except WorkerError as error:
                        result.notes[kind] = str(error)
                        if workers[kind].process.poll() is not None:  # it died: start another
                            workers[kind].close()
                            workers[kind] = Worker(kind, threads, dtype)
                        continue
                    workers[kind].wait_quiet()
                    result.rounds.setdefault(kind, []).append(float(np.median(reply["seconds"])))
                    result.samples.setdefault(kind, []).extend(reply["seconds"])
                    result.cpu_samples.setdefault(kind, []).extend(reply["cpu_seconds"])
            elapsed = time.monotonic() - started
            left = (time.monotonic() - round_started) * (rounds - index - 1)
            _progress(progress, f"bench: round {index + 1}/{rounds} done, {_seconds(elapsed)} "
                                f"elapsed, about {_seconds(left)} of rounds left")
    finally:
        for worker in workers.values():
            worker.close()
    if memory:  # a fresh process per contender and configuration; RSS is per process, so
        for number, result in enumerate(results, 1):  # those of one configuration run together
            fresh = {kind: Worker(kind, threads, dtype) for kind in MEMORY_CONTENDERS
                     if kind in kinds and kind not in result.notes}
            try:
                for worker in fresh.values():
                    worker.send(op="memory", config=result.config.to_message())
                for kind, worker in fresh.items():
                    try:
                        result.memory[kind] = worker.receive()
                    except WorkerError as error:
                        result.notes.setdefault(f"memory {kind}", str(error))
            finally:
                for worker in fresh.values():
                    worker.close()
            _progress(progress, f"bench: peak memory {number}/{len(results)} ({result.name}) "
                                f"measured, {_seconds(time.monotonic() - started)} elapsed")
    machine = _machine_facts(facts, peak, dtype, peak_size, threads)
    machine["load average"] = f"{load_before} before the run, {_load_average()} after it"
    settings = {"dtype": dtype, "threads": threads, "rounds": rounds, "repeats": repeats,
                "seconds": round(time.monotonic() - started, 1)}
    processes = {kind: int(facts[kind]["pid"]) for kind in facts}
    return Report(machine, settings, results, kinds, skipped, peak, processes)


def _machine_facts(facts: Dict[str, Dict[str, Any]], peak: float, dtype: str,
                   peak_size: int, threads: int) -> Dict[str, str]:
    """The header, as (label, text) pairs in print order."""
    import im2colbp

    ours = facts["ours"]
    machine = {
        "CPU": f"{cpu_model()}, {os.cpu_count()} logical CPUs, {platform.machine()}",
        "SIMD": simd_level(),
        "BLAS (ours process)": str(ours.get("blas")),
        "GEMM peak": f"{peak / 1e9:.1f} GFLOP/s ({dtype} np.matmul {peak_size}×{peak_size}, "
                     "best of 5, in the ours process)",
        "PyTorch": (f"{facts['torch']['torch_version']}, {facts['torch']['torch_threads']} threads"
                    if "torch" in facts else "not measured"),
        "JAX": (f"{facts['jax']['jax_version']} (jaxlib {facts['jax']['jaxlib_version']}), XLA "
                f"CPU pool PJRT_NPROC={facts['jax']['jax_threads']}" if "jax" in facts
                else "not measured"),
        "OPENBLAS_CORETYPE": env_value("OPENBLAS_CORETYPE"),
        "OPENBLAS_L2_SIZE": env_value("OPENBLAS_L2_SIZE"),
        "Python": platform.python_version(),
        "NumPy": np.__version__,
        "im2colbp": im2colbp.__version__,
        "threads": f"{threads} per contender (threadpoolctl, torch.set_num_threads, PJRT_NPROC)",
    }
    return machine


# --------------------------------------------------------------------------
# reporting
# --------------------------------------------------------------------------
_LABELS = {"ours": "ours", "im2col": "im2col", "winograd": "winograd", "floor": "floor",
           "torch": "torch", "jax": "jax", "direct": "direct"}


def format_ms(value: Optional[float]) -> str:
    """Milliseconds with at least 4 significant digits; ``-`` for no value.

    Examples
    --------
    >>> format_ms(0.0512345), format_ms(45.1234), format_ms(1234.4), format_ms(None)
    ('0.05123', '45.12', '1234', '-')
    """
    if value is None:
        return "-"
    decimals = max(0, 3 - math.floor(math.log10(value))) if value > 0 else 2
    return f"{value:.{decimals}f}"


def _ratio(value: Optional[float], flag: str = "") -> str:
    return "-" if value is None else f"{value:.2f}{flag}"


def _columns(report: Report) -> List[Tuple[str, Callable[[ConfigResult], str]]]:
    """(header, cell) per column; a contender that never ran has no column."""
    ran = [kind for kind in CONTENDERS
           if any(r.median_ms(kind) is not None for r in report.results)]
    Cell = Callable[[ConfigResult], str]
    columns: List[Tuple[str, Cell]] = [("config", lambda r: r.name)]

    def time_cell(kind: str) -> Cell:
        return lambda r: format_ms(r.median_ms(kind))

    for kind in ran:
        columns.append((f"{_LABELS[kind]} ms", time_cell(kind)))

    def ratio_cell(numerator: str, denominator: str) -> Cell:
        def cell(r: ConfigResult) -> str:
            flag = "*" if denominator == "floor" and not r.config.gemm_bound else ""
            return _ratio(r.ratio(numerator, denominator), flag)
        return cell

    for numerator, denominator in (("ours", "floor"), ("ours", "torch"), ("ours", "jax"),
                                   ("im2col", "floor"), ("winograd", "floor")):
        if numerator in ran and denominator in ran:
            columns.append((f"{numerator}/{denominator}", ratio_cell(numerator, denominator)))

    def peak_cell(r: ConfigResult) -> str:
        fraction = r.peak_fraction(report.peak_flops)
        return "-" if fraction is None else f"{100 * fraction:.1f}"

    if report.peak_flops:
        columns.append(("% peak", peak_cell))

    def memory_cell(kind: str) -> Cell:
        def cell(r: ConfigResult) -> str:
            mib = r.memory_mib(kind)
            return "-" if mib is None else f"{mib:.1f}"
        return cell

    for kind in MEMORY_CONTENDERS:
        if any(kind in r.memory for r in report.results):
            columns.append((f"MiB {kind}", memory_cell(kind)))
    return columns


def geometric_mean(values: Sequence[float]) -> float:
    return math.exp(sum(math.log(v) for v in values) / len(values))


def _summary(report: Report) -> List[str]:
    """Geometric mean and worst configuration of each ratio (floor ratios: GEMM-bound only)."""
    lines = []
    for numerator, denominator, gemm_only in (("ours", "torch", False), ("ours", "jax", False),
                                              ("ours", "floor", True), ("im2col", "floor", True)):
        candidates = [(r.ratio(numerator, denominator), r.name) for r in report.results
                      if r.config.gemm_bound or not gemm_only]
        values = [(v, name) for v, name in candidates if v is not None]
        if values:
            where = "GEMM-bound configurations" if gemm_only else "configurations"
            worst, name = max(values)
            lines.append(f"{numerator}/{denominator}: geometric mean "
                         f"{geometric_mean([v for v, _ in values]):.2f} over {len(values)} "
                         f"{where}, largest {worst:.2f} ({name})")
    return lines


_CONTENDER_TEXT = {
    "ours": "im2colbp conv_forward + conv_backward with the engine's default, method auto",
    "im2col": "im2colbp with method im2col: the taught lowering alone",
    "winograd": "im2colbp with method winograd: F(m, 3) minimal filtering (3-tap stride-1 "
                "configurations only)",
    "floor": "the three bare GEMMs the lowering needs (Y = W·C, dW = δ·Cᵀ, dC = Wᵀ·δ) on "
             "pre-built matrices, the whole batch in one GEMM per group",
    "torch": "torch.nn.functional.convNd forward + backward() (PyTorch CPU)",
    "jax": "jax.lax.conv_general_dilated + jax.vjp, jit-compiled, block_until_ready",
    "direct": "im2colbp.reference, the clarity-first oracle (small configurations only)",
}


def _legend(report: Report, headers: Sequence[str]) -> List[str]:
    """One line per column of the table, keyed by its exact header, then the marks."""
    settings = report.settings
    lines = []
    for header in headers:
        if header == "config":
            text = "the configuration (its shapes are listed below the table)"
        elif header.endswith(" ms"):
            kind = header[:-3]
            text = f"{_CONTENDER_TEXT[kind]}; its time (see times)"
        elif "/" in header:
            a, b = header.split("/")
            text = f"{a} ms / {b} ms of the same row; below 1 means {a} is faster"
            if b == "floor":
                text += " (*: not GEMM-bound, no floor target)"
        elif header == "% peak":
            text = ("the fraction of the GEMM peak in the header that ours reaches: the direct "
                    "algorithm's flops of forward + backward (3 × 2·N·C_out·∏O·C_in/G·∏K) / "
                    "ours ms / peak")
        elif header.startswith("MiB "):
            text = f"peak memory of {header[4:]} (see memory)"
        else:  # pragma: no cover - every column is listed above
            raise RuntimeError(f"column {header} has no legend")
        lines.append(f"{header}: {text}.")
    lines.append(f"times: forward + backward in ms, the median over "
                 f"{_plural(settings['rounds'], 'round')} of each round's median of "
                 f"{_plural(settings['repeats'], 'call')} (after one untimed call); every "
                 "contender in its own process, one at a time, rounds alternated.")
    if any(header.startswith("MiB ") for header in headers):
        lines.append("memory: the rise of the peak resident set (VmHWM) during one forward + "
                     "backward above the resident set just before it (inputs built, library "
                     "warmed up on a tiny problem), in a fresh process that runs only that "
                     "configuration, in MiB.")
    lines.append("-: not measured (not applicable, not installed, or failed: see the notes).")
    return lines


def _configuration_lines(report: Report) -> List[str]:
    return [f"{r.name}: {r.config.describe()}" for r in report.results]


def _notes(report: Report) -> List[str]:
    lines = [f"{name}: not measured: {reason}" for name, reason in report.skipped.items()]
    for result in report.results:
        for kind, note in result.notes.items():
            if note != "too large for the direct reference":
                lines.append(f"{result.name}, {kind}: {note}")
    return lines


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def format_report(report: Report, markdown: bool = False) -> str:
    """The header, the table, its summary and legend: plain text or Markdown."""
    columns = _columns(report)
    cells = [[cell(result) for _, cell in columns] for result in report.results]
    headers = [name for name, _ in columns]
    settings = report.settings
    header = dict(report.machine)
    header["run"] = (f"{settings['dtype']}, forward + backward, "
                     f"{_plural(settings['rounds'], 'round')} of "
                     f"{_plural(settings['repeats'], 'timed call')} each, {settings['seconds']} s")
    out: List[str] = []
    if markdown:
        out += [f"- **{key}**: {value}" for key, value in header.items()]
        out += ["", "| " + " | ".join(headers) + " |",
                "| " + " | ".join("---" if i == 0 else "---:" for i in range(len(headers))) + " |"]
        out += ["| " + " | ".join(row) + " |" for row in cells]
        out += [""] + _summary(report)
        out += ["", "Columns:", ""] + [f"- {line}" for line in _legend(report, headers)]
        out += ["", "Configurations (channels first; K: filters, then kernel size):", ""]
        out += [f"- {line}" for line in _configuration_lines(report)]
        notes = _notes(report)
        if notes:
            out += ["", "Notes:", ""] + [f"- {line}" for line in notes]
    else:
        width = max(len(key) for key in header)
        out += [f"{key + ':':<{width + 1}} {value}" for key, value in header.items()]
        widths = [max(len(h), *(len(row[i]) for row in cells)) for i, h in enumerate(headers)]
        def line(row: Sequence[str]) -> str:
            return "  ".join(row[0].ljust(widths[0]) if i == 0 else row[i].rjust(widths[i])
                             for i in range(len(row)))
        out += ["", line(headers), "  ".join("-" * w for w in widths)]
        out += [line(row) for row in cells]
        out += [""] + _summary(report)
        out += ["", "columns:"] + [f"  {line}" for line in _legend(report, headers)]
        out += ["", "configurations (channels first; K: filters, then kernel size):"]
        out += [f"  {line}" for line in _configuration_lines(report)]
        notes = _notes(report)
        if notes:
            out += ["", "notes:"] + [f"  {line}" for line in notes]
    return "\n".join(out)


def report_to_json(report: Report) -> dict:
    """Everything measured, as plain JSON data (medians in ms, raw samples in seconds)."""
    results = []
    for r in report.results:
        results.append({
            "config": r.name, "description": r.config.describe(), **r.config.to_message(),
            "flops": r.config.flops,
            "median_ms": {k: r.median_ms(k) for k in r.rounds},
            "round_medians_s": r.rounds, "samples_s": r.samples,
            "cpu_per_wall": {k: r.cpu_per_wall(k) for k in r.samples},
            "ratios": {f"{a}/{b}": r.ratio(a, b) for a, b in (
                ("ours", "floor"), ("ours", "torch"), ("ours", "jax"), ("im2col", "floor"),
                ("winograd", "floor"), ("ours", "direct")) if r.ratio(a, b) is not None},
            "peak_fraction": r.peak_fraction(report.peak_flops),
            "memory": r.memory, "notes": r.notes,
        })
    return {"machine": report.machine, "settings": report.settings,
            "contenders": report.contenders, "skipped": report.skipped,
            "processes": report.processes,
            "gemm_peak_flops": report.peak_flops, "summary": _summary(report), "results": results}


def _plot(report: Report, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pairs = [(a, b) for a, b in (("ours", "floor"), ("ours", "torch"), ("ours", "jax"),
                                 ("im2col", "floor"))
             if any(r.ratio(a, b) is not None for r in report.results)]
    names = [r.name for r in report.results]
    positions = np.arange(len(names))
    width = 0.8 / max(1, len(pairs))
    fig, ax = plt.subplots(figsize=(10, 4))
    for index, (a, b) in enumerate(pairs):
        values = [r.ratio(a, b) or float("nan") for r in report.results]
        offset = (index - (len(pairs) - 1) / 2) * width
        ax.bar(positions + offset, values, width, label=f"{a} / {b}")
    ax.set_yscale("log")  # ratios: 2x slower is as far from 1 as 2x faster
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(positions)
    ax.set_xticklabels(names, rotation=30)
    ax.set_ylabel("time ratio (forward + backward)")
    settings = report.settings
    ax.set_title(f"{report.machine['CPU']}, {settings['threads']} threads, {settings['dtype']}",
                 fontsize=9)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------
DESCRIPTION = (
    "Time forward + backward of im2colbp (method auto, and im2col), its bare GEMMs, PyTorch CPU\n"
    "and JAX (when installed): each contender in its own process, rounds alternated, medians\n"
    "and ratios, peak memory, and the header names the CPU, SIMD level, BLAS kernel, threads."
)
EPILOG = (
    "examples:\n  im2colbp bench --quick\n"
    "  im2colbp bench --configs resnet3x3 depthwise --rounds 9 --json bench.json --plot bench.png\n"
    "  im2colbp bench --markdown        # the table for docs/benchmarks.md"
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The benchmark's options (shared by ``scripts/bench.py`` and ``im2colbp bench``)."""
    parser.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=None,
                        metavar="NAME", help=f"subset of: {', '.join(CONFIGS)} (default all)")
    parser.add_argument("--contenders", nargs="+", choices=list(CONTENDERS), default=None,
                        metavar="NAME", help=f"subset of: {', '.join(CONTENDERS)} (default every "
                        "one installed; ours always runs)")
    parser.add_argument("--quick", action="store_true",
                        help=f"3 rounds of 2 calls, configs {', '.join(QUICK_CONFIGS)} "
                        "unless --configs is given")
    parser.add_argument("--rounds", type=_positive_int, default=None,
                        help="alternated rounds (default 11; --quick 3)")
    parser.add_argument("--repeats", type=_positive_int, default=None,
                        help="timed calls per contender and round (default 3; --quick 2)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--threads", type=_positive_int, default=2,
                        help="threads of every contender (default 2)")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--no-jax", action="store_true", help="skip JAX even if installed")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory processes")
    parser.add_argument("--markdown", action="store_true",
                        help="print the report as Markdown (for docs/benchmarks.md)")
    parser.add_argument("--json", metavar="PATH", help="also write everything measured as JSON")
    parser.add_argument("--plot", metavar="PNG", help="also draw the ratios (needs matplotlib: "
                        "pip install 'im2colbp[bench]')")


def _check_output_path(path: str, option: str) -> Optional[str]:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        return f"{option}: directory {directory} does not exist"
    if not os.access(directory, os.W_OK):
        return f"{option}: directory {directory} is not writable"
    return None


def run(args: argparse.Namespace) -> int:
    """Run the suite for parsed arguments; print the report; return 0 (2 on bad options)."""
    problems: List[Optional[str]] = []
    if args.plot:
        if not _has_module("matplotlib"):
            problems.append("--plot needs matplotlib, which is not installed: "
                            "pip install 'im2colbp[bench]'")
        problems.append(_check_output_path(args.plot, "--plot"))
    if args.json:
        problems.append(_check_output_path(args.json, "--json"))
    errors = [p for p in problems if p]
    if errors:  # before any work
        for problem in errors:
            print(f"bench: error: {problem}", file=sys.stderr)
        return 2
    names = args.configs or (list(QUICK_CONFIGS) if args.quick else list(CONFIGS))
    rounds = args.rounds or (3 if args.quick else 11)
    repeats = args.repeats or (2 if args.quick else 3)
    contenders = list(args.contenders or CONTENDERS)
    contenders = [c for c in contenders if not (c == "torch" and args.no_torch)
                  and not (c == "jax" and args.no_jax)]
    try:
        report = run_suite({name: CONFIGS[name] for name in names}, rounds=rounds,
                           repeats=repeats, dtype=args.dtype, threads=args.threads,
                           contenders=contenders, memory=not args.no_memory,
                           progress=sys.stderr)
    except WorkerError as error:  # the ours worker could not start or answer
        print(f"bench: error: {error}", file=sys.stderr)
        return 1
    try:
        print(format_report(report, markdown=args.markdown), flush=True)
    except BrokenPipeError:  # e.g. `| head`: the reader has what it wanted; not a failure
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report_to_json(report), handle, indent=2)
            handle.write("\n")
    if args.plot:
        _plot(report, args.plot)
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``scripts/bench.py``: parse the options and run."""
    parser = argparse.ArgumentParser(prog="bench.py", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:  # --help (0) or a usage error argparse has printed (2)
        return stop.code if isinstance(stop.code, int) else 2
    return run(args)


def _worker_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m im2colbp.benchmark --worker")
    parser.add_argument("--worker", choices=CONTENDERS, required=True)
    parser.add_argument("--threads", type=_positive_int, required=True)
    parser.add_argument("--dtype", choices=("float32", "float64"), required=True)
    args = parser.parse_args(argv)
    return _worker(args.worker, args.threads, np.dtype(args.dtype))


if __name__ == "__main__":  # pragma: no cover
    if "--worker" in sys.argv[1:]:
        sys.exit(_worker_main(sys.argv[1:]))
    sys.exit(main())
