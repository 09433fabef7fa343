"""The plan: every decision the engine makes for one convolution, made up front.

:func:`plan_conv` is a pure function of the geometry, the dtype, the method
and the workspace limit in force. It returns a frozen :class:`ConvPlan` that
names, for each of the three operations (forward, input gradient, weight
gradient), the *route* (which algorithm), the *layout* of its columns, the
*chunk* of samples each GEMM covers, the scratch it needs, and whether
forward keeps its columns for backward — each with the reason it was chosen.
The passes in :mod:`im2colbp.engine` execute a plan and decide nothing; a
forward context carries its plan to backward.

In terms of the convolution ``y = conv(x, w)`` of geometry ``G`` there are
only three kinds of pass, and a transposed convolution uses the same three
with roles exchanged:

=================  ===========================  ==============================
pass               convolution                  transposed convolution
=================  ===========================  ==============================
product            forward ``W·X_col``          input gradient ``conv(δ, w)``
adjoint            input gradient               forward
weight gradient    ``δ·X_colᵀ`` (columns of x)  (columns of δ, "δ" = x)
=================  ===========================  ==============================

The adjoint (``dx = col2im(Wᵀ·δ)``) has two routes: ``col2im`` — the taught
scatter-add — and, at stride 1, ``transposition``: the same numbers as a
forward convolution of the padded δ with the channel-swapped, flipped kernel
(Aggarwal's §8.3), which moves less memory unless there are many more filters
than input channels.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Tuple

import numpy as np
from numpy.typing import DTypeLike

from .calls import geometry_kwargs
from .depthwise import depthwise_fixed_bytes, depthwise_reason_not, depthwise_sample_bytes
from .geometry import (
    ConvGeometry,
    IntOrTuple,
    Padding,
    ShapeLike,
    WindowGeometry,
    as_int,
    conv_geometry,
    conv_transpose_geometry,
)
from .parallel import get_thread_limit
from .wide_lowering import MAX_WASTE, WideLayout, wide_layout
from .winograd import winograd_fixed_bytes, winograd_reason_not, winograd_sample_bytes
from .workspace import get_workspace_limit, samples_per_chunk

__all__ = [
    "METHODS",
    "Decision",
    "PassPlan",
    "Step",
    "ConvPlan",
    "plan_conv",
    "make_plan",
    "forced",
]

#: The methods ``method=`` accepts. ``"im2col"`` is exactly the taught
#: lowering; ``"winograd"`` is Winograd's minimal filtering (3×3 kernels,
#: stride 1, dilation 1); ``"direct"`` is the columns-free depthwise path (one
#: input channel per group); ``"auto"`` may choose any route the library has.
METHODS = ("auto", "im2col", "winograd", "direct")

#: Winograd's tile per dtype: F(4, 3) at the points 0, ±1, 1/2, -2 keeps float32
#: within 1e-5 of the output's magnitude on every benchmark shape (measured at most
#: 7.1e-6, conv3d; 3.4e-6 on resnet3x3) and is the faster tile; float64 below 1e-13.
WINOGRAD_TILES = {4: 4, 8: 4}

#: Preferred bytes of one chunk's column buffer (capped by the workspace limit):
#: small enough that the columns im2col writes are still in cache when the GEMM
#: reads them, large enough to keep the GEMMs efficient. Measured on a 2-core
#: AVX-512 Xeon: 2, 4 and 8 MiB give the same forward + backward times on the
#: benchmark's GEMM-bound layers (within 2 %), 4 MiB holds less memory than 8.
PREFERRED_CHUNK_BYTES = 4 * 2**20

#: Forward keeps the whole batch's columns for backward up to this size (and the
#: workspace limit); above it, backward rebuilds them chunk by chunk. Measured:
#: keeping resnet_s2's 7.4 MiB or dilated's 10 MiB of columns saved no time
#: (17.2 against 17.5 ms, 7.6 against 7.6), but held them through backward; small
#: calls (teach's 108 KiB) skip a second im2col.
KEEP_COLUMNS_BYTES = 2 * 2**20

#: A block of one sample's columns spans at least this many window positions, so
#: that its GEMM stays wide enough for BLAS to run at speed.
MIN_BLOCK_POSITIONS = 256

_forced: ContextVar[Tuple[Tuple[str, str], ...]] = ContextVar("im2colbp_forced_choices",
                                                             default=())

_LAYOUTS = ("plain", "wide")
_ADJOINT_ROUTES = ("col2im", "transposition")


@contextmanager
def forced(*, layout: Optional[str] = None, adjoint: Optional[str] = None,
           block_positions: Optional[int] = None) -> Iterator[None]:
    """Force a layout or an input-gradient route in every plan made inside the block.

    For tests and experiments that must reach a path ``"auto"`` would not
    choose. ``layout``: ``'plain'`` or ``'wide'`` (the wide layout then ignores
    its waste bound); ``adjoint``: ``'col2im'`` or ``'transposition'`` (the
    latter only where it can serve: stride 1, paddings within ``D·(K-1)``);
    ``block_positions``: the smallest block of positions a sample's columns
    may be built in, instead of :data:`MIN_BLOCK_POSITIONS`.
    The plan says "forced" in its reasons.

    Examples
    --------
    >>> import im2colbp as ib
    >>> from im2colbp.plan import forced
    >>> with forced(layout="plain"):
    ...     print(ib.plan_conv((1, 1, 8, 8), (1, 1, 3, 3)).forward.passes[0].layout.choice)
    plain
    """
    choices = dict(_forced.get())  # (a tuple: ContextVar defaults must be immutable)
    if layout is not None:
        if layout not in _LAYOUTS:
            raise ValueError(f"layout must be one of {_LAYOUTS}, got {layout!r}")
        choices["layout"] = layout
    if adjoint is not None:
        if adjoint not in _ADJOINT_ROUTES:
            raise ValueError(f"adjoint must be one of {_ADJOINT_ROUTES}, got {adjoint!r}")
        choices["adjoint"] = adjoint
    if block_positions is not None:
        choices["block_positions"] = str(as_int(block_positions, "block_positions", 1))
    token = _forced.set(tuple(choices.items()))
    try:
        yield
    finally:
        _forced.reset(token)


# --------------------------------------------------------------------------
# the plan's parts
# --------------------------------------------------------------------------
@dataclass(frozen=True)
class Decision:
    """One choice of the plan and why it was made."""

    choice: Any
    reason: str

    def __str__(self) -> str:
        return f"{self.choice}: {self.reason}"


@dataclass(frozen=True, eq=False)
class PassPlan:
    """One pass over the batch in chunks: what it lowers and how.

    Attributes
    ----------
    kind : {'product', 'weight_gradient', 'col2im', 'winograd_forward', 'winograd_weight_gradient'}
        ``W·cols``, ``Σ δ·colsᵀ``, ``col2im(Wᵀ·δ)``, or Winograd's forward
        (also the input gradient, on the transposition geometry) and weight gradient.
    geometry : ConvGeometry
        The convolution whose columns the pass builds (for the transposition
        route: the stride-1 convolution of δ, not the forward one).
    layout : Decision
        ``'wide'`` (phase-split, widened columns: one contiguous run per
        kernel offset) or ``'plain'`` (strided slices).
    chunk : Decision
        Samples per chunk (an int).
    sample_bytes : int
        Scratch one sample of a chunk needs (columns and every other buffer).
    column_bytes : int
        The columns of one sample (part of ``sample_bytes``).
    fixed_bytes : int
        Scratch that does not grow with the chunk (a weight-sized buffer).
    fold : WindowGeometry or None
        The forward window whose padding the result is folded back through:
        the transposition route under a non-zero padding mode computes the
        gradient w.r.t. the *padded* input, and every border sample's share is
        added onto the sample it was copied from.
    wide : WideLayout or None
        The wide layout's index arithmetic when ``layout`` is ``'wide'``.
    tile : int
        For the ``winograd_forward`` / ``winograd_weight_gradient`` passes, m
        of F(m, 3) (per axis); 0 for the lowering's passes.
    block_positions : int
        0, or (wide layout, chunks of one sample) the window positions whose
        columns are built at a time: one sample's columns would exceed the
        chunk budget, and any run of consecutive wide positions is a slice of
        every kernel offset's run, so a sample's columns come block by block.
    """

    kind: str
    geometry: ConvGeometry
    layout: Decision
    chunk: Decision
    sample_bytes: int
    column_bytes: int
    fixed_bytes: int
    fold: Optional[WindowGeometry] = None
    wide: Optional[WideLayout] = None
    tile: int = 0  # Winograd's m for the winograd passes
    block_positions: int = 0

    @property
    def samples_per_chunk(self) -> int:
        return int(self.chunk.choice)

    @property
    def scratch_bytes(self) -> int:
        """Scratch of the pass: one chunk's working set plus the fixed part."""
        return self.samples_per_chunk * self.sample_bytes + self.fixed_bytes


@dataclass(frozen=True, eq=False)
class Step:
    """How one operation is computed: a route and the passes that run it."""

    operation: str
    route: Decision
    passes: Tuple[PassPlan, ...]
    #: the pass that runs instead when the route cannot serve the data (the
    #: transposition route falls back to col2im for a weight with inf/nan)
    fallback: Optional[PassPlan] = None

    @property
    def scratch_bytes(self) -> int:
        every = self.passes + ((self.fallback,) if self.fallback is not None else ())
        return max((p.scratch_bytes for p in every), default=0)


@dataclass(frozen=True, eq=False)
class ConvPlan:
    """Every decision for one (transposed) convolution and its gradients.

    Attributes
    ----------
    geometry : ConvGeometry
        The convolution (for ``transposed``, the forward convolution whose
        input gradient the transposed convolution is).
    dtype : numpy.dtype
        The compute and result dtype.
    transposed : bool
    has_bias : bool
    method : str
        The method asked for (``'auto'`` or ``'im2col'``).
    forward, input_gradient, weight_gradient : Step
        The three operations, in the caller's terms.
    keep_columns : Decision
        Whether forward keeps its columns for the weight gradient (a bool).
    workspace_limit : int
        The limit the chunks were sized for, in bytes.
    """

    geometry: ConvGeometry
    dtype: np.dtype
    transposed: bool
    has_bias: bool
    method: str
    forward: Step
    input_gradient: Step
    weight_gradient: Step
    keep_columns: Decision
    workspace_limit: int
    #: the :func:`forced` choices in force when the plan was made (a backward that
    #: re-plans for a wider δ replays them, so that its routes match the context's)
    forced_choices: Tuple[Tuple[str, str], ...] = ()

    @property
    def steps(self) -> Tuple[Step, Step, Step]:
        return (self.forward, self.input_gradient, self.weight_gradient)

    @property
    def scratch_bytes(self) -> int:
        """The most scratch any one pass holds (passes run one after another)."""
        return max(step.scratch_bytes for step in self.steps)

    @property
    def kept_bytes(self) -> int:
        """Bytes of the columns forward keeps for backward (0 when it keeps none)."""
        if not self.keep_columns.choice:
            return 0
        wgrad = self.weight_gradient.passes[0]
        return wgrad.geometry.batch * wgrad.column_bytes

    @property
    def result_bytes(self) -> Dict[str, int]:
        """Bytes of each result: the output, and the three gradients."""
        item = self.dtype.itemsize
        g = self.geometry
        x_elems = g.batch * g.in_channels * math.prod(g.window.in_size)
        y_elems = g.batch * g.out_channels * g.window.out_volume
        if self.transposed:
            x_elems, y_elems = y_elems, x_elems
        return {"output": y_elems * item, "input": x_elems * item,
                "weight": math.prod(g.weight_shape) * item,
                "bias": (g.out_channels if not self.transposed else g.in_channels) * item}

    def __str__(self) -> str:
        g, w = self.geometry, self.geometry.window
        kind = "conv_transpose" if self.transposed else "conv"
        lines = [
            f"{kind} plan, method={self.method!r}, {self.dtype}: "
            f"N={g.batch}, C_in={g.in_channels}, C_out={g.out_channels}, groups={g.groups}, "
            f"I={w.in_size}, K={w.kernel_size}, O={w.out_size}, S={w.stride}, "
            f"P={w.padding}, D={w.dilation}, padding_mode={w.padding_mode!r}"
            + (" (the forward convolution this transposes)" if self.transposed else ""),
        ]
        for step in self.steps:
            lines.append(f"  {step.operation:<16} {step.route}")
            for p in step.passes:
                lines.append(f"  {'':<16}   {p.kind} pass, layout {p.layout}")
                lines.append(f"  {'':<16}   {p.chunk.choice} of {p.geometry.batch} samples "
                             f"per chunk: {p.chunk.reason}")
                lines.append(f"  {'':<16}   scratch: {_bytes(p.scratch_bytes)}")
        lines.append(f"  {'keep columns':<16} {self.keep_columns}")
        results = ", ".join(f"{name} {_bytes(n)}" for name, n in self.result_bytes.items())
        lines.append(
            f"  {'memory':<16} scratch {_bytes(self.scratch_bytes)} at most at a time "
            f"(workspace limit {_bytes(self.workspace_limit)}); kept columns "
            f"{_bytes(self.kept_bytes)}; results: {results}"
        )
        return "\n".join(lines)


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


# --------------------------------------------------------------------------
# planning
# --------------------------------------------------------------------------
def _check_method(method: Any) -> str:
    if not isinstance(method, str) or method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(map(repr, METHODS))}, got {method!r}")
    return method


def _method_blocker(method: str, geometry: ConvGeometry) -> Optional[str]:
    """Why ``method`` cannot serve ``geometry``, or None."""
    if method == "winograd":
        return winograd_reason_not(geometry)
    if method == "direct":
        return depthwise_reason_not(geometry)
    return None


#: Scratch of one chunk of the direct depthwise path (with its fixed part): two
#: samples of the depthwise benchmark measured fastest (9.1 ms f+b against
#: 11.1 ms for 4 and 12.9 ms for 8).
DIRECT_CHUNK_BYTES = 8 * 2**20


def _auto_takes_direct(geometry: ConvGeometry) -> Optional[str]:
    """Why ``auto`` takes the direct depthwise path for ``geometry``, or None.

    The measured rule (float32 f+b, 2 threads, direct / im2col): 0.45 in 1-D,
    0.55-0.8 for 3×3 and 5×5 at 28..112 wide; about 1.0 at 14×14, 7×7 or with
    a stride; 1.5 with two filters per channel. So: one filter per channel,
    rank 1, or rank 2 with the last output axis at least 20 wide, stride 1.
    """
    window = geometry.window
    if depthwise_reason_not(geometry) is not None or geometry.in_channels == 0:
        return None
    if geometry.out_channels != geometry.in_channels:
        return None
    if window.rank > 2 or any(s != 1 for s in window.stride):
        return None
    if window.rank == 2 and window.out_size[-1] < 20:
        return None
    return ("depthwise, one filter per channel, stride 1, rank 1 or last output axis ≥ 20: "
            "banded GEMMs without columns, measured 0.45-0.8× the lowering's time")


def _check_serves(method: str, geometry: ConvGeometry) -> None:
    blocker = _method_blocker(method, geometry)
    if blocker is not None:
        serving = [m for m in METHODS if _method_blocker(m, geometry) is None]
        raise ValueError(f"method={method!r} cannot serve this geometry: {blocker}; the methods "
                         f"that can: {', '.join(map(repr, serving))}")


def _layout(window: WindowGeometry,
            identity: bool = True) -> Tuple[Decision, Optional[WideLayout]]:
    forced_layout = dict(_forced.get()).get("layout")
    if forced_layout == "plain":
        return Decision("plain", "forced"), None
    if forced_layout == "wide":
        return Decision("wide", "forced"), wide_layout(window, max_waste=float("inf"))
    positions = window.out_volume
    if (identity and window.kernel_volume == 1 and not window.is_padded
            and all(s == 1 for s in window.stride) and window.out_size == window.in_size):
        return Decision("identity", "a 1×1 kernel at stride 1 without padding: each sample's "
                                    "columns are the sample itself, no copy"), None
    if window.kernel_volume > positions:
        return Decision("plain", f"more kernel taps ({window.kernel_volume}) than window "
                                 f"positions ({positions}): per-tap runs would be short"), None
    layout = wide_layout(window)
    if layout is None:
        unbounded = wide_layout(window, max_waste=float("inf"))
        waste = 0.0 if unbounded is None else unbounded.wide_positions / positions - 1
        if waste > MAX_WASTE - 1:
            why = f"the wide layout would add {waste:.0%} GEMM columns (more than 25%)"
        else:
            why = "the stride is far larger than the input: the phase planes would be mostly empty"
        return Decision("plain", why), None
    waste = layout.wide_positions / positions - 1
    return Decision("wide", f"each of the {window.kernel_volume} kernel offsets copies one "
                            f"contiguous run; {waste:.1%} extra GEMM columns"), layout


def _pass(kind: str, geometry: ConvGeometry, itemsize: int, limit: int, *,
          fold: Optional[WindowGeometry] = None, whole_batch: bool = False) -> PassPlan:
    """Size one pass's scratch and chunks (see the engine for the buffers named here)."""
    window = geometry.window
    layout_decision, layout = _layout(window, identity=fold is None)  # a fold needs columns
    c_in, c_out = geometry.in_channels, geometry.out_channels
    positions = layout.wide_positions if layout is not None else window.out_volume
    columns = c_in * window.kernel_volume * positions
    gemm = c_out * positions  # the GEMM's y (product) or δ (weight gradient, col2im)
    if layout is not None:
        staging = c_in * layout.row_length  # the phase-split rows
        if math.prod(window.stride) > 1:
            staging += c_in * math.prod(layout.extended_size)  # the padded, extended input
    else:
        staging = c_in * math.prod(window.padded_size) if window.is_padded else 0
    if fold is not None:
        staging += c_out * window.out_volume  # the chunk's gradient w.r.t. the padded input
    if layout_decision.choice == "identity":
        # no columns; y and δ are the GEMM's operands as they are (a cast or a
        # non-contiguous operand is copied into scratch chunk by chunk)
        columns, gemm, staging = 0, c_out * positions, c_in * positions
    sample = (columns + gemm + staging) * itemsize
    fixed = math.prod(geometry.weight_shape) * itemsize if kind == "weight_gradient" else 0
    batch = geometry.batch
    if batch == 0 or c_in == 0 or c_out == 0:
        chunk = Decision(max(batch, 1), "nothing to lower (an empty batch or no channels)")
        return PassPlan(kind, geometry, layout_decision, chunk, 0, 0, 0, fold, layout)
    budget = min(limit, PREFERRED_CHUNK_BYTES)
    block = 0
    if whole_batch:
        chunk = Decision(batch, "the whole batch in one chunk, whose columns forward keeps")
    elif layout is not None and fold is None and positions > 1 and columns * itemsize > budget:
        smallest = int(dict(_forced.get()).get("block_positions", MIN_BLOCK_POSITIONS))
        block = max(smallest, positions * budget // (columns * itemsize))
        block = min(block, positions)
        sample = (c_in * window.kernel_volume * block + gemm + staging) * itemsize
        chunk = Decision(1, (
            f"one sample's columns ({_bytes(columns * itemsize)}) exceed "
            f"{_bytes(budget)}: they are built {block} of its {positions} positions at a time "
            f"({_bytes(c_in * window.kernel_volume * block * itemsize)})"))
    else:
        by_cache = samples_per_chunk(batch, columns * itemsize, budget)
        by_limit = samples_per_chunk(batch, sample, limit)
        count = min(by_cache, by_limit)
        if sample > limit:
            why = (f"one sample's working set ({_bytes(sample)}) exceeds the workspace "
                   f"limit ({_bytes(limit)}): a chunk of one runs anyway")
        elif count == by_cache and count < batch:
            why = (f"columns of {_bytes(columns * itemsize)} per sample, chunks of at most "
                   f"{_bytes(budget)} of columns stay in cache")
        elif count < batch:
            why = (f"a working set of {_bytes(sample)} per sample within the workspace "
                   f"limit {_bytes(limit)}")
        else:
            why = (f"the whole batch fits: {_bytes(batch * sample)} of scratch "
                   f"({_bytes(batch * columns * itemsize)} of columns)")
        chunk = Decision(count, why)
    return PassPlan(kind, geometry, layout_decision, chunk, sample, columns * itemsize, fixed,
                    fold, layout, block_positions=block)


def _winograd_pass(kind: str, geometry: ConvGeometry, itemsize: int, limit: int, *,
                   fold: Optional[WindowGeometry] = None) -> PassPlan:
    tile = WINOGRAD_TILES[itemsize]
    sample = winograd_sample_bytes(geometry, tile, itemsize)
    fixed = winograd_fixed_bytes(geometry, tile, itemsize,
                                 weight_gradient=kind == "winograd_weight_gradient")
    if fold is not None:
        sample += geometry.out_channels * geometry.window.out_volume * itemsize
    batch = geometry.batch
    count = samples_per_chunk(batch, sample, max(limit - fixed, 1))
    if sample + fixed > limit:
        why = (f"one sample's working set ({_bytes(sample + fixed)}) exceeds the workspace "
               f"limit ({_bytes(limit)}): a chunk of one runs anyway")
    else:
        why = f"a working set of {_bytes(sample)} per sample within the workspace limit"
    precision = ("float32: within 1e-5 of max conv(|x|, |w|) on the benchmark shapes "
                 "(measured at most 7.1e-6)"
                 if itemsize == 4 and tile == 4
                 else "float32: as accurate as the lowering" if tile == 2 else "float64")
    layout = Decision(f"F({tile}, 3)", (
        f"tiles of {tile} outputs from {tile + 2} inputs per axis ({precision}); "
        f"{(tile + 2) ** geometry.rank} GEMMs per group over the transformed tiles"))
    return PassPlan(kind, geometry, layout, Decision(count, why), sample, 0, fixed, fold,
                    None, tile)


def _transposition_blocker(geometry: ConvGeometry) -> Optional[str]:
    """Why the stride-1 transposition route cannot serve, or None."""
    window = geometry.window
    pairs = window.transposition_padding(padded_input=window.padding_mode != "zeros")
    if any(s != 1 for s in window.stride):
        return "stride > 1"
    if geometry.batch == 0 or geometry.in_channels == 0 or geometry.out_channels == 0:
        return "nothing to lower"
    if any(b < 0 or a < 0 for b, a in pairs):
        return "a padding larger than D·(K-1) would need a crop of δ"
    return None


def _transposition_geometry(geometry: ConvGeometry,
                            padded_input: Optional[bool] = None) -> ConvGeometry:
    """The stride-1 convolution of δ that gives dx (see :func:`_transposition_blocker`);
    with ``padded_input`` (default: for non-zero padding modes) the gradient w.r.t. the
    padded input, to be folded back through the forward padding."""
    window = geometry.window
    if padded_input is None:
        padded_input = window.padding_mode != "zeros"
    pairs = window.transposition_padding(padded_input=padded_input)
    kernel_shape = (geometry.in_channels, geometry.out_channels // geometry.groups)
    return conv_geometry(
        (geometry.batch, geometry.out_channels) + window.out_size,
        kernel_shape + window.kernel_size,
        stride=1, padding=pairs, dilation=window.dilation, groups=geometry.groups,
    )


def _adjoint_step(operation: str, geometry: ConvGeometry, method: str, itemsize: int,
                  limit: int) -> Step:
    window = geometry.window
    forced_route = dict(_forced.get()).get("adjoint")
    fold = window if window.padding_mode != "zeros" else None
    blocker = _transposition_blocker(geometry)
    # the transposition's columns have one row per (filter, tap) and one column per
    # (padded) input sample; col2im's one row per (input channel, tap) and one column
    # per window, and its scatter-add reads and writes them again
    reached = math.prod(window.padded_size if fold is not None else window.in_size)
    copied = geometry.out_channels * window.kernel_volume * reached
    written = geometry.in_channels * window.kernel_volume * window.out_volume
    fallback = " (col2im instead when the weight holds inf/nan: inf·0 at the padding is nan)"
    route: Optional[Decision] = None  # None: take the transposition route
    why_transposition = (
        "stride 1: dx is the stride-1 convolution of δ padded by {padding} with the "
        f"channel-swapped, flipped kernel; it copies {copied} entries of δ instead of "
        f"writing and scatter-adding {written}")
    if forced_route == "col2im":
        route = Decision("col2im", "forced")
    elif blocker is not None:
        route = Decision("col2im", f"col2im(Wᵀ·δ); the transposition route cannot serve: "
                                   f"{blocker}")
    elif forced_route == "transposition":
        why_transposition = "forced"
    elif method == "im2col":
        route = Decision("col2im", "method='im2col': the taught lowering, col2im(Wᵀ·δ)")
    elif copied >= 2 * written:
        route = Decision("col2im", (
            f"col2im(Wᵀ·δ): the transposition would copy {copied} entries of δ, at least "
            f"twice the {written} col2im writes and scatter-adds"))
    col2im = _pass("col2im", geometry, itemsize, limit)
    if route is not None:
        return Step(operation, route, (col2im,))
    backward = _transposition_geometry(geometry)
    route = Decision("transposition",
                     why_transposition.format(padding=backward.window.padding) + fallback)
    return Step(operation, route, (_pass("product", backward, itemsize, limit, fold=fold),),
                fallback=col2im)


def _winograd_adjoint_step(operation: str, geometry: ConvGeometry, itemsize: int,
                           limit: int) -> Step:
    """dx as Winograd's forward on the stride-1 convolution of δ: padded by 2 - P
    (zeros mode, P <= 2), else by 2 with the border folded back through the padding."""
    window = geometry.window
    direct = window.padding_mode == "zeros" and _transposition_blocker(geometry) is None
    backward = _transposition_geometry(geometry, padded_input=not direct)
    pairs = backward.window.padding
    route = Decision("winograd", (
        f"Winograd's forward on the stride-1 convolution of δ padded by {pairs} with the "
        "channel-swapped, flipped kernel" + ("" if direct else ", folded back through the "
                                             "forward padding")
        + " (col2im instead when an operand holds inf/nan: a tile mixes its inputs)"))
    return Step(operation, route,
                (_winograd_pass("winograd_forward", backward, itemsize, limit,
                                fold=None if direct else window),),
                fallback=_pass("col2im", geometry, itemsize, limit))


def _winograd_plan(geometry: ConvGeometry, dtype: np.dtype, transposed: bool,
                   has_bias: bool, limit: int) -> ConvPlan:
    item = dtype.itemsize
    forward_pass = _winograd_pass("winograd_forward", geometry, item, limit)
    nonfinite = " (im2col instead when an operand holds inf/nan: a tile mixes its inputs)"
    product = Step("forward", Decision("winograd", "method='winograd': y by F(m, 3) tiles"
                                       + nonfinite), (forward_pass,),
                   fallback=_pass("product", geometry, item, limit))
    adjoint = _winograd_adjoint_step("input gradient", geometry, item, limit)
    weight_gradient = Step("weight gradient", Decision(
        "winograd", "dW = Gᵀ [Σ_tiles (A δ Aᵀ) ⊙ (Bᵀ d B)] G, the transposed transforms"
        + nonfinite), (_winograd_pass("winograd_weight_gradient", geometry, item, limit),),
        fallback=_pass("weight_gradient", geometry, item, limit))
    keep = Decision(False, "Winograd builds no columns")
    if transposed:
        forward = Step("forward", adjoint.route, adjoint.passes, adjoint.fallback)
        input_gradient = Step("input gradient", product.route, product.passes, product.fallback)
        return ConvPlan(geometry, dtype, True, has_bias, "winograd", forward, input_gradient,
                        weight_gradient, keep, limit)
    return ConvPlan(geometry, dtype, False, has_bias, "winograd", product, adjoint,
                    weight_gradient, keep, limit)


def _direct_pass(kind: str, geometry: ConvGeometry, itemsize: int, limit: int) -> PassPlan:
    sample = depthwise_sample_bytes(geometry, itemsize)
    fixed = depthwise_fixed_bytes(geometry, itemsize)
    budget = max(min(limit, DIRECT_CHUNK_BYTES) - fixed, 1)
    count = samples_per_chunk(geometry.batch, sample, budget)
    if sample + fixed > limit:
        why = (f"one sample's working set ({_bytes(sample + fixed)}) exceeds the workspace "
               f"limit ({_bytes(limit)}): a chunk of one runs anyway")
    else:
        why = (f"{_bytes(sample)} per sample; chunks of about "
               f"{_bytes(min(limit, DIRECT_CHUNK_BYTES))} measured fastest")
    window = geometry.window
    banded = window.rank <= 2
    layout = Decision("banded" if banded else "taps", (
        "per channel, the kernel rows as one banded matrix; every output row's window is one "
        "contiguous run of the padded input, one GEMM batched over channels per phase"
        if banded else "one strided multiply-accumulate per kernel tap (rank 3 and above)"))
    loaded = geometry.in_channels * math.prod(window.padded_size) * itemsize
    return PassPlan(kind, geometry, layout, Decision(count, why), sample, loaded, fixed)


def _direct_plan(geometry: ConvGeometry, dtype: np.dtype, method: str, transposed: bool,
                 has_bias: bool, limit: int, keep_for_backward: bool, why: str) -> ConvPlan:
    item = dtype.itemsize
    product = Step("forward", Decision("direct", why),
                   (_direct_pass("direct_forward", geometry, item, limit),))
    adjoint = Step("input gradient", Decision("direct", (
        "the banded product transposed, added back onto the runs (at stride 1 with one "
        "filter per channel: the forward path on the padded δ with the flipped kernel)")),
        (_direct_pass("direct_input_gradient", geometry, item, limit),))
    wgrad_pass = _direct_pass("direct_weight_gradient", geometry, item, limit)
    weight_gradient = Step("weight gradient", Decision(
        "direct", "the banded GEMM transposed, summed along the bands"), (wgrad_pass,))
    loaded = geometry.batch * wgrad_pass.column_bytes
    if transposed:
        keep = Decision(False, "the forward pass (the adjoint) loads no copy of x")
        forward = Step("forward", adjoint.route, adjoint.passes)
        input_gradient = Step("input gradient", product.route, product.passes)
        return ConvPlan(geometry, dtype, True, has_bias, method, forward, input_gradient,
                        weight_gradient, keep, limit)
    if not keep_for_backward:
        keep = Decision(False, "no backward will follow (conv)")
    elif geometry.window.rank > 2 or loaded == 0:
        keep = Decision(False, "the tap loop loads no copy of x")
    elif loaded > min(limit, KEEP_COLUMNS_BYTES):
        keep = Decision(False, f"the loaded input ({_bytes(loaded)}) exceeds the "
                               f"{_bytes(min(limit, KEEP_COLUMNS_BYTES))} cap and limit")
    else:
        keep = Decision(True, f"the padded input as the banded GEMMs read it ({_bytes(loaded)}, "
                              "about x's size): the weight gradient does not load it again")
    return ConvPlan(geometry, dtype, False, has_bias, method, product, adjoint,
                    weight_gradient, keep, limit)


def make_plan(geometry: ConvGeometry, dtype: np.dtype, *, method: str = "auto",
              transposed: bool = False, has_bias: bool = True,
              keep_for_backward: bool = True) -> ConvPlan:
    """The plan for a validated geometry (the engine's entry; see :func:`plan_conv`).

    ``keep_for_backward=False`` plans a forward whose context is not needed
    (``conv``), so no columns are kept. Plans are pure functions of their
    arguments, the workspace limit and :func:`forced`, so the last
    ``PLAN_CACHE_SIZE`` are cached: a layer calling with the same shapes every
    step plans once.
    """
    method = _check_method(method)
    return _cached_plan(geometry, np.dtype(dtype), method, bool(transposed), bool(has_bias),
                        bool(keep_for_backward), get_workspace_limit(),
                        (_forced.get(), get_thread_limit()))


def replan(plan: ConvPlan, dtype: DTypeLike) -> ConvPlan:
    """``plan``'s decisions for another compute dtype (a backward whose δ is wider).

    The plan is made again under the :func:`forced` choices that were in force for
    ``plan`` (not those in force now), with nothing kept, so that its routes and
    layouts read what ``plan``'s forward kept.
    """
    token = _forced.set(plan.forced_choices)
    try:
        return make_plan(plan.geometry, np.dtype(dtype), method=plan.method,
                         transposed=plan.transposed,
                         has_bias=plan.has_bias, keep_for_backward=False)
    finally:
        _forced.reset(token)


def plan_context() -> Tuple[int, Tuple[Tuple[str, str], ...], int]:
    """What a plan depends on besides its arguments: the workspace limit in force,
    the :func:`forced` choices and the thread limit (part of every cache key of plans)."""
    return get_workspace_limit(), _forced.get(), get_thread_limit()


#: How many plans :func:`make_plan` remembers.
PLAN_CACHE_SIZE = 256


@functools.lru_cache(maxsize=PLAN_CACHE_SIZE)
def _cached_plan(geometry: ConvGeometry, dtype: np.dtype, method: str, transposed: bool,
                 has_bias: bool, keep_for_backward: bool, limit: int,
                 context: Tuple[Tuple[Tuple[str, str], ...], int]) -> ConvPlan:
    """make_plan's work, cached; ``context`` (the forced choices and the thread limit,
    which Winograd's scratch depends on) is part of the key: both are read again
    through their context variables, and the plan records the forced choices."""
    return dataclasses.replace(
        _plan_of(geometry, dtype, method, transposed, has_bias, keep_for_backward, limit),
        forced_choices=context[0])


def _plan_of(geometry: ConvGeometry, dtype: np.dtype, method: str, transposed: bool,
             has_bias: bool, keep_for_backward: bool, limit: int) -> ConvPlan:
    _check_serves(method, geometry)
    if method == "winograd":
        return _winograd_plan(geometry, dtype, transposed, has_bias, limit)
    if method == "direct":
        return _direct_plan(geometry, dtype, method, transposed, has_bias, limit,
                            keep_for_backward, "method='direct': depthwise without columns")
    if method == "auto" and dict(_forced.get()).get("adjoint") is None \
            and dict(_forced.get()).get("layout") is None:
        why_direct = _auto_takes_direct(geometry)
        if why_direct is not None:
            return _direct_plan(geometry, dtype, method, transposed, has_bias, limit,
                                keep_for_backward, why_direct)
    item = dtype.itemsize
    if transposed:
        forward = _adjoint_step("forward", geometry, method, item, limit)
        input_gradient = Step("input gradient", Decision(
            "im2col", "the forward convolution of δ: W·X_col of δ's columns"),
            (_pass("product", geometry, item, limit),))
        keep = Decision(False, "the forward pass builds no columns of x")
    else:
        input_gradient = _adjoint_step("input gradient", geometry, method, item, limit)
        product = _pass("product", geometry, item, limit)
        batch = geometry.batch
        batch_columns = batch * product.column_bytes
        if not keep_for_backward:
            keep = Decision(False, "no backward will follow (conv)")
        elif product.layout.choice == "identity":
            keep = Decision(False, "the columns are x itself: backward reads x")
        elif product.column_bytes == 0:
            keep = Decision(False, "no columns to keep (an empty batch or no channels)")
        elif batch_columns > KEEP_COLUMNS_BYTES:
            keep = Decision(False, (
                f"the batch's columns ({_bytes(batch_columns)}) exceed the "
                f"{_bytes(KEEP_COLUMNS_BYTES)} cap: backward rebuilds them per chunk, "
                "measured faster than reading a large kept matrix back"))
        elif batch * product.sample_bytes > limit:
            keep = Decision(False, (
                f"the batch's forward working set ({_bytes(batch * product.sample_bytes)}) "
                f"exceeds the workspace limit ({_bytes(limit)})"))
        else:
            keep = Decision(True, (
                f"the batch's columns ({_bytes(batch_columns)}) fit the "
                f"{_bytes(KEEP_COLUMNS_BYTES)} cap and the workspace limit: backward "
                "does not rebuild them"))
        if keep.choice:
            product = _pass("product", geometry, item, limit, whole_batch=True)
        why = "y = W·X_col, one GEMM per chunk and group"
        if method == "auto" and winograd_reason_not(geometry) is None:
            why += ("; method='winograd' could serve, but measured slower than the lowering on "
                    "2 free cores (resnet3x3 f+b 53 vs 46 ms; faster only on one core, 56 vs 63)")
        forward = Step("forward", Decision("im2col", why), (product,))
    source = "δ" if transposed else "x"
    weight_gradient = Step("weight gradient", Decision(
        "im2col", f"dW = Σ δ·X_colᵀ over the columns of {source}"
        + (", from the kept columns" if keep.choice else "")),
        (_pass("weight_gradient", geometry, item, limit),))
    return ConvPlan(geometry, dtype, transposed, has_bias, method, forward, input_gradient,
                    weight_gradient, keep, limit)


def plan_conv(
    input_shape: ShapeLike,
    weight_shape: ShapeLike,
    *,
    bias: bool = True,
    dtype: DTypeLike = np.float32,
    method: str = "auto",
    transposed: bool = False,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    output_padding: IntOrTuple = 0,
    output_size: Optional[ShapeLike] = None,
) -> ConvPlan:
    """Every decision the engine will make for a convolution, with the reason for each.

    Parameters
    ----------
    input_shape : tuple of int
        ``x.shape``: (N, C_in, *I) or (C_in, *I).
    weight_shape : tuple of int
        (C_out, C_in/G, *K); for ``transposed``, (C_in, C_out/G, *K).
    bias : bool, optional
        Whether the call has a bias.
    dtype : dtype, optional
        The compute dtype (float32 or float64; integers compute in float64).
    method : {'auto', 'im2col', 'winograd', 'direct'}, optional
        ``'im2col'``: exactly the taught lowering (im2col + GEMM forward,
        ``X_colᵀ·δ``, ``col2im(δ·Wᵀ)``). ``'winograd'``: Winograd's F(4, 3)
        (points 0, ±1, 1/2, -2; float32 within 1e-5 relative) for 3-tap stride-1
        kernels, every pass.
        ``'direct'``: depthwise convolution (one input channel per group)
        without columns.
        ``'auto'``: any route the library has. A method that cannot serve the
        geometry is a ValueError naming the methods that can.
    transposed : bool, optional
        Plan :func:`im2colbp.conv_transpose` instead of :func:`im2colbp.conv`.
    stride, padding, dilation, groups, padding_mode
        As for :func:`im2colbp.conv`.
    output_padding, output_size
        As for :func:`im2colbp.conv_transpose` (only with ``transposed``).

    Returns
    -------
    ConvPlan
        Frozen. ``plan.forward``, ``plan.input_gradient`` and
        ``plan.weight_gradient`` each give a route and its passes (layout,
        samples per chunk, scratch bytes); ``plan.keep_columns`` whether the
        forward context keeps the columns; ``str(plan)`` lists every choice
        with its reason. The plan depends on the workspace limit in force.

    Examples
    --------
    >>> import im2colbp as ib
    >>> plan = ib.plan_conv((8, 16, 32, 32), (16, 16, 3, 3), padding=1)
    >>> plan.forward.route.choice, plan.input_gradient.route.choice
    ('im2col', 'transposition')
    >>> ib.plan_conv((8, 16, 32, 32), (16, 16, 3, 3), padding=1,
    ...              method="im2col").input_gradient.route.choice
    'col2im'
    >>> plan.keep_columns.choice, plan.forward.passes[0].layout.choice   # 9.4 MiB of columns
    (False, 'wide')
    >>> ib.plan_conv((2, 16, 16, 16), (16, 16, 3, 3), padding=1).keep_columns.choice
    True
    >>> print(plan)                                         # doctest: +ELLIPSIS
    conv plan, method='auto', float32: N=8, C_in=16, C_out=16, ...
      forward          im2col: y = W·X_col, one GEMM per chunk and group; ...
    ...
    """
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        dtype = np.dtype(np.float64) if dtype.kind in "biu" else dtype
    if dtype.kind != "f":
        raise TypeError(f"dtype must be a real floating type, got {dtype}")
    dtype = np.promote_types(dtype, np.float32)
    if not isinstance(bias, (bool, np.bool_)):
        raise TypeError(f"bias must be True or False, got {bias!r}")
    bias_shape = None
    kwargs = geometry_kwargs(stride, padding, dilation, groups, padding_mode)
    if transposed:
        geometry = conv_transpose_geometry(input_shape, weight_shape, bias_shape,
                                           output_padding=output_padding,
                                           output_size=output_size, **kwargs)
    else:
        if not (output_size is None and output_padding == 0):
            raise ValueError("output_padding and output_size belong to transposed "
                             "convolutions: pass transposed=True")
        geometry = conv_geometry(input_shape, weight_shape, bias_shape, **kwargs)
    return make_plan(geometry, dtype, method=method, transposed=transposed,
                     has_bias=bool(bias))
