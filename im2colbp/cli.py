"""The ``im2colbp`` command: ``demo``, ``explain``, ``check`` and ``bench``.

``python -m im2colbp <command>`` or the ``im2colbp`` console script. Each
subcommand registers itself in :func:`build_parser` (an ``_add_<name>``
function that sets a ``handler``), so a new one is one more function and one
more line there. ``explain`` prints a list of sections (:data:`EXPLAIN_SECTIONS`),
each a function of the parsed geometry, so a new section is one more entry.

``explain`` and ``check`` take ``--transposed`` (with ``--output-padding`` and
``--output-size``) for a transposed convolution: ``--weight`` is then in the
transposed layout ``(C_in, C_out/groups, *K)``.

Exit status: 0 success (also when the reader of a pipe, such as ``| head``,
stops early), 1 a check found a mismatch, 2 bad arguments: one line on
stderr with the library's message, no traceback.

Examples
--------
>>> from im2colbp.cli import main
>>> main(["explain", "--input", "1x1x4", "--weight", "1x1x3", "--padding", "same"])
... # doctest: +ELLIPSIS
im2colbp explain: x (1, 1, 4) * weight (1, 1, 3) + bias (1,)
...
0
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import importlib.util
import math
import os
import re
import statistics
import sys
import time
from typing import Any, Callable, Dict, List, NoReturn, Optional, Sequence, TextIO, Tuple

import numpy as np

# the public names (not the engine's modules, which may be renamed)
from . import (
    __version__,
    conv,
    conv_backward,
    conv_forward,
    conv_grad_input_by_transposition,
    conv_transpose,
    conv_transpose_backward,
    conv_transpose_forward,
    get_workspace_limit,
    plan_conv,
    reference,
)
from .examples import edge_filters, rgb_image
from .explorer import write_explorer
from .geometry import ConvGeometry, conv_geometry, conv_transpose_geometry
from .gradcheck import directional_derivative_check, max_relative_error, numerical_gradient
from .lowering import im2col, pad
from .memory import memory_bound
from .plan import METHODS

__all__ = ["main", "build_parser", "demo", "explain", "check", "EXPLAIN_SECTIONS"]


class BadArguments(ValueError):
    """A command-line argument the library (or the command) refuses: exit status 2."""


# --------------------------------------------------------------------------
# output helpers
# --------------------------------------------------------------------------
def _writer(out: Optional[TextIO]) -> Callable[..., None]:
    stream = sys.stdout if out is None else out

    def say(text: str = "") -> None:
        print(text.rstrip(), file=stream)

    return say


def _present(array: Optional[np.ndarray]) -> np.ndarray:
    """A gradient that was asked for (never None here)."""
    if array is None:  # pragma: no cover - every gradient is requested
        raise RuntimeError("a requested gradient is missing")
    return array


def _max_error(a: Optional[np.ndarray], b: Optional[np.ndarray]) -> float:
    a64 = np.asarray(_present(a), dtype=np.float64)
    b64 = np.asarray(_present(b), dtype=np.float64)
    return float(np.max(np.abs(a64 - b64))) if a64.size else 0.0




# --------------------------------------------------------------------------
# geometry options shared by explain and check
# --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ConvSpec:
    """A user geometry, validated by :mod:`im2colbp.geometry`.

    For a transposed convolution (``transposed``), ``geometry`` is the forward
    convolution whose input gradient it is (as
    :func:`im2colbp.geometry.conv_transpose_geometry` returns it): its
    *output* has x's shape and its *input* has y's.
    """

    input_shape: Tuple[int, ...]
    weight_shape: Tuple[int, ...]
    bias: bool
    kwargs: Dict[str, Any]  # the call's keywords as given (stride, padding, ...)
    geometry: ConvGeometry
    transposed: bool = False
    method: str = "auto"

    @property
    def bias_shape(self) -> Optional[Tuple[int, ...]]:
        return (self.out_channels,) if self.bias else None

    @property
    def out_channels(self) -> int:
        """C_out of the call (of y)."""
        g = self.geometry
        return g.in_channels if self.transposed else g.out_channels

    @property
    def output_shape(self) -> Tuple[int, ...]:
        """y.shape."""
        g = self.geometry
        return g.input_shape if self.transposed else g.output_shape

    @property
    def conv_kwargs(self) -> Dict[str, Any]:
        """The keywords of the forward convolution (no output_padding / output_size)."""
        return {k: v for k, v in self.kwargs.items() if k not in ("output_padding", "output_size")}


def _parse_shape(text: str, option: str) -> Tuple[int, ...]:
    parts = text.lower().replace("×", "x").replace(",", "x").split("x")
    try:
        return tuple(int(part) for part in parts)
    except ValueError:
        raise BadArguments(
            f"{option} must be a shape written like 1x3x5x5 (sizes separated by 'x'), "
            f"got {text!r}"
        ) from None


def _parse_ints(text: str, option: str) -> Any:
    """'2' -> 2, '2,1' -> (2, 1); the values are checked by the library."""
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise BadArguments(
            f"{option} must be an int or comma-separated ints, one per spatial axis "
            f"(like 2 or 2,1), got {text!r}"
        ) from None
    return values[0] if len(values) == 1 else values


def _parse_padding(text: str) -> Any:
    """'same'/'valid', '1', '1,2' (per axis) or '0:1,1:0' ((before, after) per axis)."""
    if text in ("same", "valid") or not any(ch.isdigit() for ch in text):
        return text  # a string: the library accepts 'same'/'valid' and names the others
    entries: List[Any] = []
    try:
        for part in text.split(","):
            if ":" in part:
                before, after = part.split(":")
                entries.append((int(before), int(after)))
            else:
                entries.append(int(part))
    except ValueError:
        raise BadArguments(
            "--padding must be 'same', 'valid', an int, comma-separated ints (one per axis) "
            f"or before:after pairs (like 0:1,1:0), got {text!r}"
        ) from None
    if len(entries) == 1 and ":" not in text:
        return entries[0]
    return tuple(entries)


def _add_geometry_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("geometry")
    # required, but checked after the unknown options (a typo is reported as such)
    group.add_argument("--input", metavar="SHAPE",
                       help="(required) x.shape, e.g. 1x3x5x5 = (N, C_in, H, W); (C_in, *I) is "
                       "unbatched")
    group.add_argument("--weight", metavar="SHAPE",
                       help="(required) weight.shape (C_out, C_in/groups, *K), e.g. 2x3x3x3, or "
                       "with --transposed (C_in, C_out/groups, *K); its rank fixes the spatial "
                       "rank r")
    group.add_argument("--stride", default="1", metavar="S", help="int or per axis, e.g. 2 or 2,1")
    group.add_argument("--padding", default="0", metavar="P",
                       help="int, per axis (1,2), before:after pairs (0:1,1:0), 'valid' or 'same'")
    group.add_argument("--dilation", default="1", metavar="D", help="int or per axis")
    group.add_argument("--groups", default="1", metavar="G",
                       help="int dividing both channel counts")
    group.add_argument("--padding-mode", default="zeros", metavar="MODE",
                       help="zeros, reflect, replicate or circular")
    group.add_argument("--no-bias", action="store_true", help="leave out the bias")
    group.add_argument("--transposed", action="store_true",
                       help="a transposed convolution (conv_transpose), the adjoint of the "
                       "convolution with these arguments")
    group.add_argument("--output-padding", metavar="OP",
                       help="with --transposed: int or per axis, 0 <= OP < max(S, D)")
    group.add_argument("--output-size", metavar="SIZE",
                       help="with --transposed: the spatial output size wanted, e.g. 10x10 "
                       "(picks output_padding)")


def conv_spec(args: argparse.Namespace) -> ConvSpec:
    """Parse and validate the geometry options; :class:`BadArguments` on any error."""
    missing = [option for option, value in (("--input", args.input), ("--weight", args.weight))
               if value is None]
    if missing:
        raise BadArguments(f"the following arguments are required: {', '.join(missing)}")
    input_shape = _parse_shape(args.input, "--input")
    weight_shape = _parse_shape(args.weight, "--weight")
    try:
        groups = int(args.groups)
    except ValueError:
        raise BadArguments(f"--groups must be an int, got {args.groups!r}") from None
    kwargs: Dict[str, Any] = dict(
        stride=_parse_ints(args.stride, "--stride"),
        padding=_parse_padding(args.padding),
        dilation=_parse_ints(args.dilation, "--dilation"),
        groups=groups,
        padding_mode=args.padding_mode,
    )
    transposed = bool(getattr(args, "transposed", False))
    output_padding = getattr(args, "output_padding", None)
    output_size = getattr(args, "output_size", None)
    if not transposed:
        for option, value in (("--output-padding", output_padding),
                              ("--output-size", output_size)):
            if value is not None:
                raise BadArguments(f"{option} is an argument of a transposed convolution: "
                                   "add --transposed")
    else:
        kwargs["output_padding"] = (0 if output_padding is None
                                    else _parse_ints(output_padding, "--output-padding"))
        kwargs["output_size"] = (None if output_size is None
                                 else _parse_shape(output_size, "--output-size"))
    bias = not args.no_bias
    try:
        if transposed:
            if len(weight_shape) >= 2:
                bias_shape = (weight_shape[1] * max(groups, 1),) if bias else None
            else:
                bias_shape = None
            geometry = conv_transpose_geometry(input_shape, weight_shape, bias_shape, **kwargs)
        else:
            bias_shape = (weight_shape[0],) if bias and weight_shape else None
            geometry = conv_geometry(input_shape, weight_shape, bias_shape, **kwargs)
    except (ValueError, TypeError) as error:
        raise BadArguments(str(error)) from None
    return ConvSpec(input_shape, weight_shape, bias, kwargs, geometry, transposed)


# --------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------
_MAP_LIMIT = 200_000  # X_col entries of one sample above which the map is not built


def _abbreviated(indices: Sequence[int], keep_head: int, keep_tail: int) -> List[Optional[int]]:
    """The indices to show, None marking an elision."""
    shown: List[Optional[int]] = list(indices)
    if len(shown) <= keep_head + keep_tail + 1:
        return shown
    return shown[:keep_head] + [None] + shown[-keep_tail:]


def _tuple_label(values: Sequence[Any]) -> str:
    return "(" + ",".join(str(v) for v in values) + ")"


def _column_index_map(spec: ConvSpec) -> Tuple[np.ndarray, np.ndarray]:
    """(source, border) for sample 0, each (C_in*prod(K), L).

    ``source`` holds the flat index (in (C_in, *I)) of the input element each
    X_col entry copies, -1 for a zero of 'zeros' padding; ``border`` marks
    entries taken from the padded border. Built by lowering an image of
    element numbers, so it shows exactly what im2col does.
    """
    geometry = spec.geometry
    window = geometry.window
    shape = (1, geometry.in_channels) + window.in_size
    numbers = np.arange(1, math.prod(shape) + 1, dtype=np.float64).reshape(shape)
    padded = pad(numbers, window)  # the padding mode's copies keep their element numbers
    zeros_window = dataclasses.replace(window, padding_mode="zeros")
    interior = pad(np.ones(shape), zeros_window)  # 1 inside, 0 on the border
    lowered = dict(stride=window.stride, dilation=window.dilation)
    source = im2col(padded, window.kernel_size, **lowered)[0].astype(np.int64) - 1
    border = im2col(interior, window.kernel_size, **lowered)[0] == 0
    return source, border


def _say_column_map(spec: ConvSpec, say: Callable[..., None]) -> None:
    geometry = spec.geometry
    window = geometry.window
    rows = geometry.column_rows
    matrix = "Y_col" if spec.transposed else "X_col"
    if rows == 0:
        say(f"   (no {'output' if spec.transposed else 'input'} channels: {matrix} has no rows)")
        return
    elements = geometry.in_channels * math.prod(window.in_size)
    if rows * window.out_volume > _MAP_LIMIT or elements > _MAP_LIMIT:
        what = "y" if spec.transposed else "x"
        say(f"   ({matrix} of one sample has {rows} x {window.out_volume} entries and {what} "
            f"{elements} elements: too many to map here;")
        say("   give a smaller --input or --weight to see which element lands where)")
        return
    source, border = _column_index_map(spec)
    element_shape = (geometry.in_channels,) + window.in_size
    mode = window.padding_mode

    def entry(flat: int, on_border: bool) -> str:
        if flat < 0:
            return "."
        label = ",".join(str(int(i)) for i in np.unravel_index(flat, element_shape))
        return label + ("*" if on_border else "")

    row_ids = _abbreviated(range(rows), 16, 4)
    col_ids = _abbreviated(range(window.out_volume), 8, 2)
    row_labels = {r: _tuple_label((r // window.kernel_volume,) + tuple(
                                      np.unravel_index(r % window.kernel_volume,
                                                       window.kernel_size)))
                  for r in row_ids if r is not None}
    col_labels = {c: _tuple_label(np.unravel_index(c, window.out_size))
                  for c in col_ids if c is not None}
    cells = {(r, c): entry(int(source[r, c]), bool(border[r, c]))
             for r in row_ids if r is not None for c in col_ids if c is not None}
    width = max([len(v) for v in cells.values()] + [len(v) for v in col_labels.values()] + [3])
    label_width = max(len(v) for v in row_labels.values())
    label_width = max(label_width, len("row (c,k)"))
    header = " " * 5 + f"{'row (c,k)':<{label_width}} |"
    for c in col_ids:
        header += " " + (f"{'...':>{width}}" if c is None else f"{col_labels[c]:>{width}}")
    say(header)
    group_rows = rows // geometry.groups
    for r in row_ids:
        if r is None:
            say(" " * 5 + f"{'...':<{label_width}} |")
            continue
        if geometry.groups > 1 and r % group_rows == 0:
            say(" " * 5 + f"-- group {r // group_rows} " + "-" * 8)
        line = " " * 5 + f"{row_labels[r]:<{label_width}} |"
        for c in col_ids:
            line += " " + (f"{'':>{width}}" if c is None else f"{cells[(r, c)]:>{width}}")
        say(line)
    if spec.transposed:
        legend = "entries are c,i_1..i_r of the y[n, c, i_1..i_r] the entry is added into"
        if mode == "zeros":
            legend += "; '.' lands in the padding and is cropped away"
        else:
            legend += f"; '*': lands in the {mode!r} border and folds back onto that element"
    else:
        legend = "entries are c,i_1..i_r of x[n, c, i_1..i_r]"
        if mode == "zeros":
            legend += "; '.' is a zero of the padding"
        else:
            legend += f"; '*' marks a {mode!r} padding copy of that element"
    say(f"     {legend}")

    if window.rank <= 2 and math.prod(window.in_size) <= 400:
        counts = np.bincount(source[source >= 0].ravel(), minlength=math.prod(element_shape))
        counts = counts.reshape(element_shape)[0]
        if spec.transposed:
            say("   How many Y_col entries col2im adds into each element of y's channel 0 (and")
            say("   how many terms its gradient im2col(delta) copies back):")
        else:
            say("   How many X_col entries each element of channel 0 fills (col2im adds that many")
            say("   terms back into its dx):")
        for line in np.atleast_2d(counts):
            say("     " + " ".join(f"{int(v):2d}" for v in line))


def _output_padding(spec: ConvSpec) -> Tuple[int, ...]:
    """The output_padding per axis of a transposed spec (also when output_size chose it)."""
    window = spec.geometry.window  # the forward convolution: in_size is y's, out_size x's
    return tuple(
        out - ((size - 1) * s - before - after + d * (k - 1) + 1)
        for out, size, s, (before, after), d, k in zip(
            window.in_size, window.out_size, window.stride, window.padding, window.dilation,
            window.kernel_size)
    )


def _axis_names(rank: int) -> List[str]:
    tail = ["depth", "height", "width"][3 - min(rank, 3):] if rank > 1 else ["length"]
    names = [f"axis {a}" for a in range(rank)]
    for a, name in zip(range(rank - len(tail), rank), tail):
        names[a] += f" ({name})"
    return names


def _explain_sizes(spec: ConvSpec, say: Callable[..., None], number: int) -> None:
    """The output size per spatial axis, with the numbers put in."""
    if spec.transposed:
        _explain_transposed_sizes(spec, say, number)
        return
    window = spec.geometry.window
    names = _axis_names(window.rank)
    same = spec.kwargs["padding"] == "same"
    say(f"{number}. Output size per spatial axis:  "
        "O = floor((I + P_before + P_after - D*(K-1) - 1) / S) + 1")
    for axis in range(window.rank):
        size, k = window.in_size[axis], window.kernel_size[axis]
        s, d = window.stride[axis], window.dilation[axis]
        before, after = window.padding[axis]
        extent = d * (k - 1)
        out = window.out_size[axis]
        say(f"   {names[axis]}: I={size} K={k} S={s} D={d} P=({before}, {after})")
        if same:
            total = before + after
            say(f"      'same': O = ceil(I/S) = ceil({size}/{s}) = {out}; "
                "total padding = max((O-1)*S + D*(K-1) + 1 - I, 0)")
            say(f"              = max({(out - 1) * s} + {extent} + 1 - {size}, 0) = {total}"
                f" -> before = {total}//2 = {before}, after = {after}")
        numerator = size + before + after - extent - 1
        say(f"      O = floor(({size} + {before} + {after} - {d}*{k - 1} - 1) / {s}) + 1 "
            f"= floor({numerator}/{s}) + 1 = {out}")
        padded = size + before + after
        last_start = (out - 1) * s
        starts = ", ".join(str(o * s) for o in range(min(out, 6))) + (", ..." if out > 6 else "")
        say(f"      windows start at padded index {starts}; the last covers "
            f"{last_start}..{last_start + extent} of 0..{padded - 1}")
        unused = window.remainder[axis]
        if unused:
            say(f"      the last {unused} padded sample(s) are never read (stride remainder) "
                "and get no gradient")
    say(f"   -> y {spec.output_shape}; L = prod(O) = {window.out_volume} window positions "
        "per sample")


def _explain_transposed_sizes(spec: ConvSpec, say: Callable[..., None], number: int) -> None:
    window = spec.geometry.window  # the forward convolution: in_size is y's, out_size x's
    names = _axis_names(window.rank)
    requested = spec.kwargs.get("output_size")
    say(f"{number}. Output size per spatial axis:  "
        "O = (I-1)*S - P_before - P_after + D*(K-1) + output_padding + 1")
    for axis, op in enumerate(_output_padding(spec)):
        size, out = window.out_size[axis], window.in_size[axis]
        k, s, d = window.kernel_size[axis], window.stride[axis], window.dilation[axis]
        before, after = window.padding[axis]
        smallest = out - op
        say(f"   {names[axis]}: I={size} K={k} S={s} D={d} P=({before}, {after}) "
            f"output_padding={op}")
        if requested is not None:
            say(f"      output_size asks for O={out}: output_padding = O - {smallest} = {op} "
                f"(admissible 0..{max(s, d) - 1})")
        say(f"      O = ({size}-1)*{s} - {before} - {after} + {d}*{k - 1} + {op} + 1 = {out}")
        back = (out + before + after - d * (k - 1) - 1) // s + 1
        say(f"      it is the convolution of a size-{out} input that gives I back: "
            f"floor(({out} + {before} + {after} - {d}*{k - 1} - 1) / {s}) + 1 = {back}")
    say(f"   -> y {spec.output_shape}; x has L = prod(I) = {window.out_volume} positions "
        "per sample")


def _explain_lowering(spec: ConvSpec, say: Callable[..., None], number: int) -> None:
    """Which element lands in which entry of the column matrix (im2col / col2im)."""
    geometry = spec.geometry
    window = geometry.window
    g = geometry.groups
    k_text = "*".join(str(k) for k in window.kernel_size)
    positions = window.out_volume
    rows_g = geometry.column_rows // g
    if spec.transposed:
        say(f"{number}. col2im: Y_col[n] = W^T @ X[n] has C_out*prod(K) = "
            f"{geometry.in_channels}*{k_text} = {geometry.column_rows} rows, one per (output "
            "channel, kernel offset),")
        say(f"   and L = {positions} columns, one per position o = (o_1..o_r) of x; col2im "
            "adds every entry into y:")
        say("   y_padded[n, c, o*S + k*D] += Y_col[(c,k), o]   (then the padding is cropped)")
        if g > 1:
            say(f"   groups: the rows form G = {g} blocks of C_out/G*prod(K) = {rows_g}, the "
                f"input channels blocks of C_in/G = {geometry.out_channels // g}")
    else:
        say(f"{number}. im2col: X_col[n] has C_in*prod(K) = {geometry.in_channels}*{k_text} = "
            f"{geometry.column_rows} rows, one per (channel, kernel offset),")
        say(f"   and L = {positions} columns, one per window position o = (o_1..o_r):")
        say("   X_col[(c,k), o] = x_padded[n, c, o*S + k*D]")
        if g > 1:
            say(f"   groups: the rows form G = {g} blocks of C_in/G*prod(K) = {rows_g}, the "
                f"filters blocks of C_out/G = {geometry.out_channels // g}")
    _say_column_map(spec, say)


def _say_gemm_table(table: List[Tuple[Any, ...]], say: Callable[..., None]) -> int:
    cells = [[f"{name} ({a} x {b})" for name, (a, b) in ((r[1], r[2]), (r[3], r[4]),
                                                            (r[5], r[6]))]
             for r in table]
    widths = [max(len(row[i]) for row in cells) for i in range(3)]
    for row, cell in zip(table, cells):
        say(f"   {row[0]:<13}{cell[0]:<{widths[0]}} = {cell[1]:<{widths[1]}} @ "
            f"{cell[2]:<{widths[2]}}  {row[7]}".rstrip())
    return widths[0]


def _explain_gemms(spec: ConvSpec, say: Callable[..., None], number: int) -> None:
    """The three GEMMs (forward, weight gradient, input gradient) and the bias gradient."""
    geometry = spec.geometry
    window = geometry.window
    n, g = geometry.batch, geometry.groups
    rows_g = geometry.column_rows // g
    filters_g = geometry.out_channels // g  # C_out/G of the forward convolution
    positions = window.out_volume
    each = "per sample n" + (" and group g" if g > 1 else "")
    gi, ngi = ("[g]", "[n,g]") if g > 1 else ("", "[n]")
    c_out = spec.out_channels
    if spec.transposed:
        out_positions = math.prod(window.in_size)
        say(f"{number}. The three GEMMs, {each}; W is a (C_in/G) x (C_out/G*prod(K)) matrix, "
            "x a (C_in/G) x L one,")
        say("   delta = dL/dy, and delta_col = im2col(delta) is laid out as X_col of the "
            "convolution:")
        table = [
            ("forward", f"Y_col{ngi}", (rows_g, positions), f"W{gi}^T", (rows_g, filters_g),
             f"X{ngi}", (filters_g, positions), ""),
            ("weight grad", f"dW{gi}", (filters_g, rows_g), f"X{ngi}", (filters_g, positions),
             f"delta_col{ngi}^T", (positions, rows_g), "summed over n"),
            ("input grad", f"dX{ngi}", (filters_g, positions), f"W{gi}", (filters_g, rows_g),
             f"delta_col{ngi}", (rows_g, positions), "(the convolution of delta)"),
        ]
        width = _say_gemm_table(table, say)
        plus = " + b" if spec.bias else ""
        say(f"   {'':<13}and y[n] = col2im(Y_col[n]){plus}: scatter-add, the adjoint of im2col")
    else:
        out_positions = positions
        say(f"{number}. The three GEMMs, {each}; W is a (C_out/G) x (C_in/G*prod(K)) matrix and")
        say("   delta = dL/dy a (C_out/G) x L one:")
        table = [
            ("forward", f"Y{ngi}", (filters_g, positions), f"W{gi}", (filters_g, rows_g),
             f"X_col{ngi}", (rows_g, positions), "+ b" if spec.bias else ""),
            ("weight grad", f"dW{gi}", (filters_g, rows_g), f"delta{ngi}", (filters_g, positions),
             f"X_col{ngi}^T", (positions, rows_g), "summed over n"),
            ("input grad", f"dX_col{ngi}", (rows_g, positions), f"W{gi}^T", (rows_g, filters_g),
             f"delta{ngi}", (filters_g, positions), ""),
        ]
        width = _say_gemm_table(table, say)
        say(f"   {'':<13}then dx[n] = col2im(dX_col[n]): scatter-add, the adjoint of im2col")
    if spec.bias:
        say(f"   {'bias grad':<13}{f'db ({c_out},)':<{width}} = delta summed over n and the "
            f"{out_positions} positions")
    else:
        say(f"   {'':<13}(no bias, so no gradient for it)")
    macs = n * g * filters_g * rows_g * positions
    say(f"   each GEMM: {n} sample(s) x {g} group(s) x {filters_g}*{rows_g}*{positions} "
        f"= {macs:,} multiply-adds")


def _bytes_text(nbytes: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{nbytes} bytes"


def _explain_memory(spec: ConvSpec, say: Callable[..., None], number: int) -> None:
    """What the arrays and the column matrix take, and how the batch is chunked."""
    geometry = spec.geometry
    itemsize = 4
    matrix = "Y_col" if spec.transposed else "X_col"
    sample = geometry.column_rows * geometry.window.out_volume
    batch = geometry.batch
    say(f"{number}. Memory in float32 (float64 doubles every number):")
    say(f"   x {_bytes_text(math.prod(spec.input_shape) * itemsize)}, "
        f"y {_bytes_text(math.prod(spec.output_shape) * itemsize)}, "
        f"weight {_bytes_text(math.prod(spec.weight_shape) * itemsize)}")
    say(f"   {matrix} of one sample: {geometry.column_rows} x {geometry.window.out_volume} = "
        f"{sample:,} entries, {_bytes_text(sample * itemsize)}; of the batch (N={batch}): "
        f"{_bytes_text(batch * sample * itemsize)}")
    sample_bytes = sample * itemsize
    memory, what = memory_bound()
    needed = sample_bytes + (math.prod(spec.input_shape) + math.prod(spec.output_shape)) * itemsize
    if memory > 0 and needed > memory:
        say(f"   this needs at least {_bytes_text(needed)}: more than {what} "
            f"({_bytes_text(memory)}), so the call cannot run here")


def _explain_plan(spec: ConvSpec, say: Callable[..., None], number: int) -> None:
    """The engine's plan (ib.plan_conv): every route, layout and chunk, with its reason."""
    say(f"{number}. The engine's plan for float32 under the workspace limit "
        f"({_bytes_text(get_workspace_limit())}), method={spec.method!r} "
        "(ib.plan_conv prints the same):")
    plan = plan_conv(spec.input_shape, spec.weight_shape, bias=spec.bias, dtype=np.float32,
                        method=spec.method, transposed=spec.transposed, **spec.kwargs)
    for line in str(plan).splitlines()[1:]:
        say(f" {line}")


#: The numbered sections of ``explain``, in order: ``(spec, say, number) -> None``.
EXPLAIN_SECTIONS: List[Callable[[ConvSpec, Callable[..., None], int], None]] = [
    _explain_sizes,
    _explain_lowering,
    _explain_gemms,
    _explain_memory,
    _explain_plan,
]


def explain(spec: ConvSpec, out: Optional[TextIO] = None) -> int:
    """Print the output-size arithmetic, the column layout, the GEMMs and the memory of ``spec``.

    Nothing of the size of the geometry is allocated (the column map is
    built only for small geometries), so huge geometries are explained too.
    """
    say = _writer(out)
    geometry = spec.geometry
    window = geometry.window
    bias_text = f" + bias {spec.bias_shape}" if spec.bias else " (no bias)"
    c_in = geometry.out_channels if spec.transposed else geometry.in_channels
    if spec.transposed:
        say(f"im2colbp explain: transposed convolution of x {spec.input_shape} with weight "
            f"{spec.weight_shape}{bias_text}")
    else:
        say(f"im2colbp explain: x {spec.input_shape} * weight {spec.weight_shape}{bias_text}")
    say(f"   spatial rank r = {window.rank}, N = {geometry.batch}"
        f"{'' if geometry.batched else ' (unbatched)'}, C_in = {c_in}, "
        f"C_out = {spec.out_channels}, G = {geometry.groups}, "
        f"padding_mode {window.padding_mode!r}")
    if spec.transposed:
        say("   the adjoint of the convolution z -> conv(z, weight) that maps y's shape to x's:")
        say("   y = col2im(W^T @ x), the input-gradient pass of that convolution with x as delta")
    for number, section in enumerate(EXPLAIN_SECTIONS, start=1):
        say()
        section(spec, say, number)
    return 0


# --------------------------------------------------------------------------
# check
# --------------------------------------------------------------------------
_CHECK_POSITIONS = 50_000  # output positions x groups the direct reference may loop over
_CHECK_ELEMENTS = 2_000_000
_FULL_FD_LIMIT = 1_500  # arrays up to this size get the full finite-difference gradient
_TOLERANCE = {np.dtype(np.float64): (1e-10, 1e-6), np.dtype(np.float32): (1e-4, 1e-4)}


def _check_size(spec: ConvSpec) -> None:
    geometry = spec.geometry
    positions = geometry.window.out_volume * geometry.groups
    elements = max(math.prod(spec.input_shape), math.prod(spec.output_shape),
                   math.prod(spec.weight_shape))
    if positions > _CHECK_POSITIONS or elements > _CHECK_ELEMENTS:
        raise BadArguments(
            f"check runs the direct reference, which loops over output positions in Python: "
            f"this geometry has {positions:,} positions x groups (limit {_CHECK_POSITIONS:,}) "
            f"and arrays of up to {elements:,} elements (limit {_CHECK_ELEMENTS:,}); "
            "give a smaller --input"
        )


def _finite_difference_error(f: Callable[[np.ndarray], np.ndarray], point: np.ndarray,
                             analytic: np.ndarray, dy: np.ndarray, seed: int
                             ) -> Tuple[float, str]:
    """Relative error of ``analytic`` against finite differences of ``f`` at ``point``."""
    if point.size <= _FULL_FD_LIMIT:
        numeric = numerical_gradient(f, point, dy)
        return max_relative_error(analytic, numeric), f"full ({point.size})"
    worst = 0.0
    for trial in range(3):
        along, value = directional_derivative_check(f, point, analytic, dy, rng=seed + trial)
        worst = max(worst, abs(along - value) / max(abs(along), abs(value), 1e-300))
    return worst, "3 directions"


def _conv_oracles(spec: ConvSpec, x64: np.ndarray, w64: np.ndarray, b64: Optional[np.ndarray],
                  dy64: np.ndarray) -> List[Tuple[str, np.ndarray, Any]]:
    """(name, reference value, finite-difference map and point) of a convolution."""
    kw = spec.kwargs
    batched_dy64 = dy64 if spec.geometry.batched else dy64[None]
    oracles: List[Tuple[str, np.ndarray, Any]] = [
        ("y", reference.conv(x64, w64, b64, **kw), None),
        ("dx", reference.conv_grad_input(dy64, w64, x64.shape, **kw),
         (lambda v: conv(v, w64, b64, **kw), x64)),
        ("dW", reference.conv_grad_weight(dy64, x64, w64.shape, **kw),
         (lambda v: conv(x64, v, b64, **kw), w64)),
    ]
    if b64 is not None:
        oracles.append(("db", reference.conv_grad_bias(batched_dy64),
                        (lambda v: conv(x64, w64, v, **kw), b64)))
    return oracles


def _transposed_oracles(spec: ConvSpec, x64: np.ndarray, w64: np.ndarray,
                        b64: Optional[np.ndarray], dy64: np.ndarray
                        ) -> List[Tuple[str, np.ndarray, Any]]:
    """The same for a transposed convolution, from the reference's convolution.

    The transposed convolution is the adjoint of ``z -> conv(z, w)``: its dx
    is ``conv(δ, w)`` (cropped to x's size when output_padding >= stride),
    its dW the convolution's weight gradient with δ as the input and x as the
    output gradient (zero beyond x's size).
    """
    kw, conv_kw = spec.kwargs, spec.conv_kwargs
    in_size = spec.geometry.window.out_size  # x's spatial size
    full = reference.conv(dy64, w64, **conv_kw)  # the convolution of δ, maybe larger than x
    crop = (Ellipsis,) + tuple(slice(0, size) for size in in_size)
    grown = np.zeros(full.shape)
    grown[crop] = x64  # x as that convolution's output gradient, zero beyond x's size
    batched_dy64 = dy64 if spec.geometry.batched else dy64[None]
    oracles: List[Tuple[str, np.ndarray, Any]] = [
        ("y", reference.conv_transpose(x64, w64, b64, **kw), None),
        ("dx", full[crop], (lambda v: conv_transpose(v, w64, b64, **kw), x64)),
        ("dW", reference.conv_grad_weight(grown, dy64, w64.shape, **conv_kw),
         (lambda v: conv_transpose(x64, v, b64, **kw), w64)),
    ]
    if b64 is not None:
        oracles.append(("db", reference.conv_grad_bias(batched_dy64),
                        (lambda v: conv_transpose(x64, w64, v, **kw), b64)))
    return oracles


def check(spec: ConvSpec, *, dtype: Any = np.float64, seed: int = 0,
          out: Optional[TextIO] = None) -> int:
    """Forward and every gradient against the direct reference and finite differences.

    Random data (``seed``) in ``dtype``. Oracles, in float64 on the same
    values: :mod:`im2colbp.reference` for y, dx, dW and db; central
    differences of the forward map (whole gradient for arrays up to 1,500
    elements, else three random directional derivatives); and the
    channel-transposition route (for dx of a convolution, for y of a
    transposed one). Errors are ``max|ours - oracle| / max|oracle|``.

    Returns 0 when every error is within tolerance, 1 otherwise.
    """
    say = _writer(out)
    dtype = np.dtype(dtype)
    ref_tol, fd_tol = _TOLERANCE[dtype]
    kw = spec.kwargs
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(spec.input_shape).astype(dtype)
    w = rng.standard_normal(spec.weight_shape).astype(dtype)
    b = rng.standard_normal(spec.bias_shape).astype(dtype) if spec.bias else None
    if spec.transposed:
        y, ctx = conv_transpose_forward(x, w, b, **kw)
        dy = rng.standard_normal(y.shape).astype(dtype)
        grads = conv_transpose_backward(dy, ctx)
    else:
        y, ctx = conv_forward(x, w, b, **kw)
        dy = rng.standard_normal(y.shape).astype(dtype)
        grads = conv_backward(dy, ctx)
    # float64 copies of exactly the same values: the oracle's inputs
    x64, w64, dy64 = (a.astype(np.float64) for a in (x, w, dy))
    b64 = None if b is None else b.astype(np.float64)

    what = "conv_transpose" if spec.transposed else "conv"
    say(f"im2colbp check: {what}, x {spec.input_shape}, weight {spec.weight_shape}, "
        f"{'bias ' + str(spec.bias_shape) if spec.bias else 'no bias'}, {dtype.name}, seed {seed}")
    window = spec.geometry.window
    extra = f" output_padding {_output_padding(spec)}," if spec.transposed else ""
    say(f"   stride {window.stride}, padding {window.padding}, dilation {window.dilation},"
        f"{extra} groups {spec.geometry.groups},")
    say(f"   padding_mode {window.padding_mode!r} -> y {y.shape}")
    say(f"   error = max|ours - oracle| / max|oracle|; tolerance {ref_tol:g} vs the direct "
        f"reference,")
    say(f"   {fd_tol:g} vs finite differences")
    say()
    say(f"   {'':<5}{'shape':<18}{'dtype':<9}{'vs reference':>13}{'vs finite diff':>16}"
        "  (finite differences in float64)")
    oracles = (_transposed_oracles if spec.transposed else _conv_oracles)(spec, x64, w64, b64,
                                                                          dy64)
    ours_by_name = {"y": y, "dx": grads.input, "dW": grads.weight, "db": grads.bias}
    ours: np.ndarray
    ok = True
    for index, (name, expected, fd) in enumerate(oracles):
        ours = _present(ours_by_name[name])
        err_ref = max_relative_error(ours, expected)
        good = err_ref <= ref_tol and ours.dtype == dtype and ours.shape == expected.shape
        fd_text, how = f"{'-':>16}", ""
        if fd is not None:
            f, point = fd
            err_fd, how = _finite_difference_error(f, point, ours, dy64, seed + 10 * index)
            good = good and err_fd <= fd_tol
            fd_text = f"{err_fd:16.1e}"
        ok = ok and good
        flag = "" if good else "   <-- MISMATCH"
        say(f"   {name:<5}{str(ours.shape):<18}{ours.dtype.name:<9}{err_ref:13.1e}{fd_text}"
            f"  {how}{flag}")
    conv_kw = spec.conv_kwargs
    if spec.transposed:
        # the transposed convolution is the convolution's input gradient with x as δ
        # (x zero-extended to that convolution's output size when output_padding >= stride)
        grown = np.zeros(conv_geometry(y.shape, w.shape, **conv_kw).output_shape, dtype)
        grown[(Ellipsis,) + tuple(slice(0, n) for n in window.out_size)] = x
        y_t = conv_grad_input_by_transposition(grown, w, y.shape, **conv_kw)
        ours_y = y if b is None else conv_transpose(x, w, None, **kw)
        err = max_relative_error(y_t, ours_y)
        text = "y (no bias) by channel transposition (zero-insert x, pad, flipped swapped W)"
    else:
        dx_t = conv_grad_input_by_transposition(dy, w, x.shape, **conv_kw)
        err = max_relative_error(dx_t, _present(grads.input))
        text = "dx by channel transposition (zero-insert, pad, flipped swapped W) vs dx"
    good = err <= ref_tol
    ok = ok and good
    say(f"   {text}: {err:.1e}{'' if good else '   <-- MISMATCH'}")
    say()
    say("OK: forward and every gradient agree" if ok else "MISMATCH: see the marked rows")
    return 0 if ok else 1


# --------------------------------------------------------------------------
# demo
# --------------------------------------------------------------------------
def _grid(values: np.ndarray, fmt: str = "{:6.2f}") -> List[str]:
    return [" ".join(fmt.format(v) for v in row) for row in values]


def _median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    fn()  # warm up: BLAS threads, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def demo(out: Optional[TextIO] = None, *, timing: bool = True) -> int:
    """Lower a small strided, padded, multi-channel, multi-filter convolution and check it.

    Returns 0 when every check passes, 1 otherwise.
    """
    say = _writer(out)
    image = rgb_image(5)
    x = np.stack([image, image[:, ::-1, :]])  # N=2: the image and its upside-down copy
    weight, bias = edge_filters()
    kw: Dict[str, Any] = dict(stride=2, padding=1)
    size = x.shape[2]
    c_out, k = weight.shape[0], weight.shape[2]

    say("im2colbp demo: one convolution lowered to a GEMM, and its backprop")
    say()
    indent = " " * 54
    say(f"data      x      (N, C_in, H, W)     = {x.shape}   image 0: red ramp left to right,")
    say(f"{indent}green ramp downwards, blue centre;")
    say(f"{indent}image 1: image 0 upside down")
    say(f"          weight (C_out, C_in, K, K) = {weight.shape}   filter 0: Sobel-x on red")
    say(f"{indent}filter 1: Sobel-y on green + blue mean")
    say(f"          bias   (C_out,)            = {bias.shape}           {bias.tolist()}")
    say(f"geometry  S=2, P=1:  O = floor((I + 2P - K) / S) + 1 "
        f"= floor(({size} + 2 - {k}) / 2) + 1 = 3")
    cols = im2col(x, k, **kw)
    inside = im2col(np.ones_like(x), k, **kw) > 0  # False where a window reads the padding
    say()
    say(f"im2col    X_col {cols.shape} = (N, C_in*K*K, O*O): one row per kernel tap (c, kh, kw),")
    say("          one column per window; image 0, the red rows ('.' is padding; a 0 is red's")
    say("          first column, whose value is 0):")
    for r in range(k * k):
        kh, kw_ = divmod(r, k)
        say(f"            (0,{kh},{kw_}) " + " ".join(
            f"{v:3g}" if inside[0, r, c] else "  ." for c, v in enumerate(cols[0, r])))
    say(f"            ... {cols.shape[1] - k * k} more rows for green and blue")
    y, ctx = conv_forward(x, weight, bias, **kw)
    w_matrix = weight.reshape(c_out, -1)
    say()
    say(f"GEMM      Y[n] = W @ X_col[n] + b  ({c_out} x {w_matrix.shape[1]}) @ "
        f"({cols.shape[1]} x {cols.shape[2]}) + ({c_out} x 1) = ({c_out} x {cols.shape[2]}) "
        f"-> y[n] {y.shape[1:]}")
    say("          W[0] (red taps) = " + " ".join(f"{v:g}" for v in w_matrix[0, :k * k])
        + " | 18 zeros")
    left = _grid(y[0, 0])
    right = _grid(y[0, 1])
    say("          y[0, 0] = Sobel-x of red + 0.5      y[0, 1] = Sobel-y of green + blue mean - 1")
    for a, b in zip(left, right):
        say(f"            {a}                {b}")

    rng = np.random.default_rng(0)
    dy = rng.standard_normal(y.shape)
    grads = conv_backward(dy, ctx)
    say()
    say(f"backprop  delta = dL/dy {dy.shape}, random (seed 0)")
    say(f"          dW = sum_n delta[n] @ X_col[n]^T   ({c_out} x {cols.shape[2]}) @ "
        f"({cols.shape[2]} x {cols.shape[1]}) -> {weight.shape}")
    say(f"          dX = col2im(W^T @ delta[n])        ({cols.shape[1]} x {c_out}) @ "
        f"({c_out} x {cols.shape[2]}) = ({cols.shape[1]} x {cols.shape[2]}) -> {x.shape[1:]}")
    say(f"          db = sum of delta over n and the {cols.shape[2]} positions -> ({c_out},)")
    say("          delta[0, 0]                 dX[0, 0], red: even columns see only Sobel-x's 0s")
    delta_rows, dx_rows = _grid(dy[0, 0]), _grid(_present(grads.input)[0, 0])
    for i, row in enumerate(dx_rows):
        delta_row = delta_rows[i] if i < len(delta_rows) else ""
        say(f"            {delta_row:<26}{row}")
    checks = [
        ("y", y, reference.conv(x, weight, bias, **kw), None),
        ("dW", grads.weight, reference.conv_grad_weight(dy, x, weight.shape, **kw),
         numerical_gradient(lambda v: reference.conv(x, v, bias, **kw), weight, dy)),
        ("dX", grads.input, reference.conv_grad_input(dy, weight, x.shape, **kw),
         numerical_gradient(lambda v: reference.conv(v, weight, bias, **kw), x, dy)),
        ("db", grads.bias, reference.conv_grad_bias(dy),
         numerical_gradient(lambda v: reference.conv(x, weight, v, **kw), bias, dy)),
    ]
    worst = 0.0
    say(f"          {'':4}{'shape':<16}{'vs direct':>10}{'vs finite diff':>16}   (max abs error)")
    for name, ours, direct, numeric in checks:
        err_direct = _max_error(ours, direct)
        err_numeric = None if numeric is None else _max_error(ours, numeric)
        worst = max(worst, err_direct, err_numeric or 0.0)
        numeric_text = f"{'-':>16}" if err_numeric is None else f"{err_numeric:16.1e}"
        say(f"          {name:4}{str(_present(ours).shape):<16}{err_direct:10.1e}{numeric_text}")
    dx_t = conv_grad_input_by_transposition(dy, weight, x.shape, **kw)
    err = _max_error(dx_t, grads.input)
    worst = max(worst, err)
    say("          dX by transposition: zero-insert delta (stride), pad, convolve with the "
        "flipped,")
    say(f"            channel-swapped filters -> agrees with col2im(W^T @ delta): {err:.1e}")
    ok = worst < 1e-6

    if timing:
        say()
        t_x = np.random.default_rng(1).standard_normal((8, 16, 32, 32))
        t_w = np.random.default_rng(2).standard_normal((32, 16, 3, 3))
        lowered = _median_seconds(lambda: conv(t_x, t_w, padding=1), 7)
        direct_s = _median_seconds(lambda: reference.conv(t_x, t_w, padding=1), 2)
        say(f"timing    x {t_x.shape} * weight {t_w.shape}, padding 1, float64, medians")
        say(f"          im2col + GEMM {lowered * 1e3:6.1f} ms   direct loops (reference) "
            f"{direct_s * 1e3:6.1f} ms   ratio {direct_s / lowered:.1f}x")
    say()
    say("every result agrees with the direct reference and finite differences" if ok
        else "MISMATCH")
    return 0 if ok else 1


# --------------------------------------------------------------------------
# the parser: one _add_<command> per subcommand
# --------------------------------------------------------------------------
_FORMATTER = argparse.RawDescriptionHelpFormatter


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``<prog>: error: <message> (see '<prog> --help')``."""

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def _add_demo(commands: Any) -> None:
    parser = commands.add_parser(
        "demo", help="lower a small RGB example, check every gradient, time it",
        description="Lower a small strided, padded, 3-channel, 2-filter convolution to a GEMM:\n"
        "the shapes, X_col, the GEMM and the bias; then backprop (delta, dW, dX, db), each\n"
        "checked against the direct reference and finite differences, the channel-transposition\n"
        "route, and a short timing of the lowering against direct convolution.",
        epilog="example:\n  im2colbp demo", formatter_class=_FORMATTER,
    )
    parser.add_argument("--no-timing", action="store_true", help="skip the timing comparison")
    parser.set_defaults(handler=lambda args: demo(timing=not args.no_timing))


def _add_explain(commands: Any) -> None:
    parser = commands.add_parser(
        "explain", help="output sizes, the X_col layout, the GEMMs and the memory of a geometry",
        description="For a geometry: the output-size arithmetic step by step per axis, which\n"
        "input element lands in which X_col entry (for a small one), the three GEMMs with their\n"
        "shapes, and the memory the lowering needs. --transposed explains a transposed\n"
        "convolution: which entry of W^T @ x col2im adds into which output element.",
        epilog="examples:\n"
        "  im2colbp explain --input 1x3x5x5 --weight 2x3x3x3 --stride 2 --padding 1\n"
        "  im2colbp explain --input 1x4x6 --weight 4x2x3 --groups 2 --padding same\n"
        "  im2colbp explain --input 1x1x4x4 --weight 1x1x3x3 --padding 1 --padding-mode reflect\n"
        "  im2colbp explain --input 1x2x3x3 --weight 2x1x3x3 --stride 2 --padding 1 "
        "--transposed --output-padding 1",
        formatter_class=_FORMATTER,
    )
    _add_geometry_options(parser)
    parser.add_argument("--method", default="auto", choices=list(METHODS),
                        help="the method whose plan to print (default auto)")
    parser.add_argument("--html", metavar="FILE",
                        help="also write an interactive, self-contained page of this geometry: "
                        "point at any cell to see where it comes from and goes to")

    def run(args: argparse.Namespace) -> int:
        spec = dataclasses.replace(conv_spec(args), method=args.method)
        try:  # a method that cannot serve the geometry is a bad argument, said at once
            plan_conv(spec.input_shape, spec.weight_shape, bias=spec.bias, method=spec.method,
                      transposed=spec.transposed, **spec.kwargs)
        except ValueError as error:
            raise BadArguments(f"--method: {error}") from None
        if args.html:
            _write_explorer(spec, args.html)
        status = explain(spec)
        if args.html:
            print(f"\nwrote the interactive explorer to {args.html}")
        return status

    parser.set_defaults(handler=run)


def _write_explorer(spec: ConvSpec, path: str) -> None:
    """``explain --html``: the explorer page of ``spec``; a refusal is a bad argument."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise BadArguments(f"--html: the folder {folder} does not exist")
    try:
        write_explorer(path, spec.input_shape, spec.weight_shape, bias=spec.bias,
                       transposed=spec.transposed, **spec.kwargs)
    except (ValueError, TypeError) as error:
        raise BadArguments(f"--html: {error}") from None
    except OSError as error:
        raise BadArguments(f"--html: cannot write {path}: {error.strerror}") from None


def _add_check(commands: Any) -> None:
    parser = commands.add_parser(
        "check", help="forward and every gradient vs the reference and finite differences",
        description="Run the forward pass and every gradient (dx, dW, db) on random data and\n"
        "compare them with the direct reference and with finite differences; print the max\n"
        "errors. --transposed checks a transposed convolution. Exit status 1 on a mismatch,\n"
        "2 on bad arguments.",
        epilog="examples:\n"
        "  im2colbp check --input 2x4x7x7 --weight 6x2x3x3 --stride 2 --padding same --groups 2\n"
        "  im2colbp check --input 1x3x9 --weight 2x3x3 --dilation 2 --padding 3 \\\n"
        "                 --padding-mode circular --dtype float32\n"
        "  im2colbp check --input 2x4x3x3 --weight 4x3x3x3 --stride 2 --transposed "
        "--output-size 6x6",
        formatter_class=_FORMATTER,
    )
    _add_geometry_options(parser)
    parser.add_argument("--dtype", default="float64", choices=["float32", "float64"],
                        help="dtype of the computation (default float64)")
    parser.add_argument("--seed", default=0, type=int,
                        help="seed of the random data, an int >= 0 (default 0)")

    def run(args: argparse.Namespace) -> int:
        if args.seed < 0:
            raise BadArguments(f"--seed must be an int >= 0 (a NumPy seed), got {args.seed}")
        spec = conv_spec(args)
        _check_size(spec)
        return check(spec, dtype=args.dtype, seed=args.seed)

    parser.set_defaults(handler=run)


def _install_hint(module: str, requirement: str, extras: str) -> str:
    return (f"{module} is not installed: {sys.executable} -m pip install '{requirement}' "
            f"(or, in a checkout of im2colbp, {sys.executable} -m pip install '.[{extras}]')")


def _add_bench(commands: Any) -> None:
    from . import benchmark

    parser = commands.add_parser(
        "bench", help="time the lowering against its GEMMs, PyTorch and direct convolution",
        description=benchmark.DESCRIPTION, epilog=benchmark.EPILOG, formatter_class=_FORMATTER,
    )
    benchmark.add_arguments(parser)

    def run(args: argparse.Namespace) -> int:
        # the arguments, before any work (the benchmark itself may take minutes)
        for option in ("threads", "repeats"):
            value = getattr(args, option, None)
            if value is not None and value < 1:
                raise BadArguments(f"--{option} must be a positive int, got {value}")
        for option in ("json", "plot"):
            path = getattr(args, option, None)
            folder = os.path.dirname(os.path.abspath(path)) if path else None
            if folder is not None and not os.path.isdir(folder):
                raise BadArguments(f"--{option} {path}: the folder {folder} does not exist")
        if getattr(args, "plot", None) and importlib.util.find_spec("matplotlib") is None:
            raise BadArguments("--plot needs matplotlib, and "
                               + _install_hint("matplotlib", "matplotlib>=3.6", "figures")
                               + "; the extra 'bench' brings it with threadpoolctl")
        return int(benchmark.run(args))

    parser.set_defaults(handler=run)


def build_parser() -> argparse.ArgumentParser:
    """The ``im2colbp`` argument parser with its subcommands."""
    parser = _Parser(
        prog="im2colbp",
        description="Convolution lowered to im2col + GEMM, with every gradient.",
        epilog="examples:\n  im2colbp demo\n"
        "  im2colbp explain --input 1x3x5x5 --weight 2x3x3x3 --stride 2 --padding 1\n"
        "  im2colbp check --input 1x3x5x5 --weight 2x3x3x3 --stride 2 --padding 1\n"
        "  im2colbp bench --quick\n"
        "run 'im2colbp COMMAND --help' for a command's options",
        formatter_class=_FORMATTER,
    )
    parser.add_argument("--version", action="version", version=f"im2colbp {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_demo(commands)
    _add_explain(commands)
    _add_check(commands)
    _add_bench(commands)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> Dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}  # pragma: no cover - build_parser always adds them


def _value_options(parser: argparse.ArgumentParser) -> set:
    """Every option string (of the parser and its subcommands) that takes a value."""
    options: set = set()
    for p in [parser, *_subparsers(parser).values()]:
        for action in p._actions:
            if action.option_strings and action.nargs != 0:
                options.update(action.option_strings)
    return options


_NEGATIVE_VALUE = re.compile(r"^-[\d.,:x]+$")


def _join_negative_values(parser: argparse.ArgumentParser, argv: List[str]) -> List[str]:
    """``--padding -1:2`` -> ``--padding=-1:2``, so that argparse does not take the value
    for an option (it does for every negative value but a plain number); the library
    then says what is wrong with it."""
    options = _value_options(parser)
    joined: List[str] = []
    index = 0
    while index < len(argv):
        token = argv[index]
        if (token in options and index + 1 < len(argv)
                and _NEGATIVE_VALUE.match(argv[index + 1])):
            joined.append(f"{token}={argv[index + 1]}")
            index += 2
            continue
        joined.append(token)
        index += 1
    return joined


def _unknown_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace,
                       extras: List[str]) -> str:
    """One line naming the first unknown option (with the closest known one)."""
    command = getattr(args, "command", None)
    target = _subparsers(parser).get(command, parser) if command else parser
    known = [option for action in target._actions for option in action.option_strings]
    prog = target.prog
    options = [token for token in extras if token.startswith("-")]
    if not options:
        return f"{prog}: error: unexpected argument {extras[0]!r} (see '{prog} --help')"
    name = options[0].split("=", 1)[0]
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    more = f" (and {len(options) - 1} more)" if len(options) > 1 else ""
    return f"{prog}: error: unknown option {name}{more}{hint} (see '{prog} --help')"


def _quiet_stdout() -> None:
    """After a closed pipe: send what is left to /dev/null, so that exit is quiet."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # pragma: no cover - no real stdout
        pass


def main(argv: Optional[List[str]] = None) -> int:
    """Run the command line; return the exit status (0 ok, 1 mismatch, 2 bad arguments)."""
    parser = build_parser()
    argv = _join_negative_values(parser, list(sys.argv[1:] if argv is None else argv))
    commands = _subparsers(parser)
    before_command = []
    for token in argv:
        if token in commands:
            break
        before_command.append(token)
    main_options = [option for action in parser._actions for option in action.option_strings]
    if not any(token in ("-h", "--help", "--version") for token in before_command):
        strays = [token for token in before_command if token.split("=", 1)[0] not in main_options]
        if strays:  # reported as unknown, not as a missing COMMAND
            print(_unknown_arguments(parser, argparse.Namespace(), strays), file=sys.stderr)
            return 2
    try:
        args, extras = parser.parse_known_args(argv)
    except SystemExit as stop:  # --help / --version (0), or a usage error printed (2)
        return stop.code if isinstance(stop.code, int) else 2
    if extras:
        print(_unknown_arguments(parser, args, extras), file=sys.stderr)
        return 2
    try:
        status = int(args.handler(args))
        sys.stdout.flush()  # a closed pipe shows here rather than at exit
        return status
    except BadArguments as error:
        prog = f"im2colbp {args.command}"
        print(f"{prog}: error: {error} (see '{prog} --help')", file=sys.stderr)
        return 2
    except BrokenPipeError:  # e.g. `im2colbp demo | head`: the reader has what it wanted
        _quiet_stdout()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
