"""An interactive explorer of one convolution geometry: a single self-contained HTML page.

The page draws, for one sample, the input, the column matrix ``X_col`` (the
library's layout: one column per window), the weight matrix ``W``, the bias,
the output and δ as grids. Pointing at a cell highlights, for the pass chosen
(forward, input gradient, weight gradient), every cell it is computed *from*,
every cell it goes *to*, and the cells it is multiplied *with*, and shows the
index arithmetic of that cell.

Nothing is derived by hand: which input sample each ``X_col`` entry copies is
read off :func:`im2colbp.im2col` applied to an input whose samples hold their
own numbers (padded by the library's own padding for the non-zero modes), and
the geometry comes from :mod:`im2colbp.geometry`. The page needs no network:
its CSS, script and data are inline.

Examples
--------
>>> from im2colbp.explorer import explorer_data
>>> data = explorer_data((1, 1, 4), (1, 1, 2))           # 1-D, I = 4, K = 2: O = 3
>>> [grid["name"] for grid in data["grids"]]
['x', 'X_col', 'W', 'b', 'y', 'δ']
>>> data["sources"]                                    # X_col entry -> x sample (-1: padding)
[[0, 1, 2], [1, 2, 3]]
"""

from __future__ import annotations

import html
import json
import math
import os
from typing import Any, Dict, List, Optional, Sequence, SupportsInt, Tuple, Union

import numpy as np

from .geometry import (
    ConvGeometry,
    IntOrTuple,
    Padding,
    conv_geometry,
    conv_transpose_geometry,
)
from .lowering import im2col, pad

__all__ = ["explorer_data", "explorer_html", "write_explorer", "MAX_CELLS"]

MAX_CELLS = 6000  # cells of all grids together (a page of about 5 MB); larger ones are refused
PASSES = ("forward", "input gradient", "weight gradient")

# an operation of a pass: (inputs, output), cells given as global ids
_Op = Tuple[Tuple[int, ...], int]


def _tuple(values: Sequence[SupportsInt]) -> str:
    ints = [int(v) for v in values]
    return str(ints[0]) if len(ints) == 1 else "(" + ",".join(map(str, ints)) + ")"


def _geometry(input_shape, weight_shape, bias, stride, padding, dilation, groups,
              padding_mode, transposed, output_padding, output_size) -> ConvGeometry:
    if not isinstance(bias, (bool, np.bool_)):
        raise TypeError(f"bias must be True or False, got {bias!r}")
    weight_shape = tuple(weight_shape)
    bias_shape = None
    if transposed:
        # the bias is drawn with the output's C_out = weight.shape[1]·G: no shape to check
        geometry = conv_transpose_geometry(
            input_shape, weight_shape, None, stride=stride, padding=padding,
            output_padding=output_padding, dilation=dilation, groups=groups,
            output_size=output_size, padding_mode=padding_mode)
    else:
        if not (isinstance(output_padding, int) and output_padding == 0) or output_size is not None:
            raise ValueError(
                "output_padding and output_size belong to a transposed convolution: pass "
                f"transposed=True, got output_padding={output_padding!r}, "
                f"output_size={output_size!r}")
        if bias and len(weight_shape) >= 1:
            bias_shape = (weight_shape[0],)
        geometry = conv_geometry(input_shape, weight_shape, bias_shape, stride=stride,
                                 padding=padding, dilation=dilation, groups=groups,
                                 padding_mode=padding_mode)
    if geometry.in_channels == 0 or geometry.out_channels == 0:
        raise ValueError(
            "the explorer needs at least one input and one output channel, got "
            f"C_in={geometry.in_channels}, C_out={geometry.out_channels}")
    return geometry


def _sources(geometry: ConvGeometry) -> Tuple[np.ndarray, np.ndarray]:
    """(source, border), each (C_in·∏K, ∏O), of one sample.

    ``source[j, o]`` is the flat index in (C_in, *I) of the sample X_col entry
    ``(j, o)`` copies, -1 for a zero of 'zeros' padding; ``border`` marks the
    entries read from the padded border (copies, for the other modes). Read off
    the library's own im2col of an input holding its element numbers.
    """
    window = geometry.window
    shape = (1, geometry.in_channels) + window.in_size
    numbers = np.arange(1, math.prod(shape) + 1, dtype=np.float64).reshape(shape)

    def columns(a: np.ndarray, padding: Padding) -> np.ndarray:  # (C·∏K, ∏O) of sample 0
        return im2col(a, window.kernel_size, stride=window.stride, padding=padding,
                      dilation=window.dilation)[0]

    if window.padding_mode == "zeros":
        inside = np.ones(shape)
        source = columns(numbers, window.padding)
        border = columns(inside, window.padding) == 0
    else:
        source = columns(pad(numbers, window), 0)
        interior = np.zeros((1, 1) + window.padded_size)  # 1 on the real samples, 0 on the border
        interior[(0, 0) + tuple(slice(b, b + i) for i, (b, _) in zip(window.in_size,
                                                                  window.padding))] = 1
        border = columns(interior, 0) == 0
        border = np.tile(border, (geometry.in_channels, 1))
    return source.astype(np.int64) - 1, border


class _Page:
    """Grids and cells with global ids."""

    def __init__(self) -> None:
        self.grids: List[Dict[str, Any]] = []
        self.cells: List[Dict[str, Any]] = []  # id -> {grid, label, text, info}

    def grid(self, name: str, title: str, shape: Tuple[int, ...], blocks: List[str],
             block_shape: Tuple[int, int], row_labels=None, col_labels=None,
             cell_text=None) -> int:
        """Add a grid of ``len(blocks)`` blocks of ``block_shape``; return its first id."""
        first = len(self.cells)
        count = len(blocks) * block_shape[0] * block_shape[1]
        self.grids.append(dict(name=name, title=title, shape=list(shape), blocks=blocks,
                               block_shape=list(block_shape), first=first, count=count,
                               row_labels=row_labels, col_labels=col_labels))
        for index in range(count):
            self.cells.append(dict(grid=name, text="" if cell_text is None else cell_text[index],
                                   label="", info=""))
        return first


def _split_spatial(size: Tuple[int, ...]) -> Tuple[int, int]:
    """A spatial size drawn as a 2-D block: (∏ of all axes but the last, last axis)."""
    return (math.prod(size[:-1]) if len(size) > 1 else 1, size[-1])


def _closure(ops: List[_Op], count: int) -> List[List[List[int]]]:
    """For every cell: [from, to, with] under ``ops`` (transitive from/to)."""
    consumers: List[List[int]] = [[] for _ in range(count)]  # cell -> ops reading it
    producers: List[List[int]] = [[] for _ in range(count)]  # cell -> ops writing it
    for index, (inputs, output) in enumerate(ops):
        for cell in inputs:
            consumers[cell].append(index)
        producers[output].append(index)

    def walk(start: int, forward: bool) -> set:
        seen: set = set()
        stack = [start]
        while stack:
            cell = stack.pop()
            for op in (consumers if forward else producers)[cell]:
                inputs, output = ops[op]
                nxt = [output] if forward else list(inputs)
                for other in nxt:
                    if other not in seen:
                        seen.add(other)
                        stack.append(other)
        return seen

    result = []
    for cell in range(count):
        ancestors, descendants = walk(cell, False), walk(cell, True)
        partners = {other for op in consumers[cell] for other in ops[op][0] if other != cell}
        partners -= ancestors | descendants
        result.append([sorted(ancestors), sorted(descendants), sorted(partners)])
    return result


def explorer_data(
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    *,
    bias: bool = True,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    transposed: bool = False,
    output_padding: IntOrTuple = 0,
    output_size: Optional[Sequence[int]] = None,
) -> Dict[str, Any]:
    """The content of the explorer page: grids, cells, and per pass what each cell links to.

    Parameters are those of :func:`explorer_html`.

    Returns
    -------
    data : dict
        ``grids`` (name, title, shape, first cell id, count, ...), ``cells`` (one
        dict per cell id: grid, label, info), ``links`` (per pass name, per cell
        id, the lists ``[from, to, with]`` of cell ids), ``sources`` (the
        ``(C_in·∏K, ∏O)`` map of X_col entries to the flat input sample each
        copies, -1 for zero padding; for a transposed convolution, of its
        *output*), and ``geometry`` (the sizes, as text).
    """
    geometry = _geometry(input_shape, weight_shape, bias, stride, padding, dilation, groups,
                         padding_mode, transposed, output_padding, output_size)
    window = geometry.window
    c_in, c_out, g = geometry.in_channels, geometry.out_channels, geometry.groups
    kvol, ovol = window.kernel_volume, window.out_volume
    rows = c_in * kvol
    rows_g, filters_g = rows // g, c_out // g
    in_vol = math.prod(window.in_size)
    total = (c_in * in_vol * 2 + rows * ovol + c_out * rows_g + c_out * ovol * 2
             + (c_in if transposed else c_out) * bool(bias))
    if total > MAX_CELLS:
        raise ValueError(
            f"geometry too big to draw: input {tuple(input_shape)}, weight "
            f"{tuple(weight_shape)} gives X_col {rows} x {ovol} and {total} cells in all; at "
            f"most {MAX_CELLS} cells (use fewer channels, a smaller input or kernel)")
    source, border = _sources(geometry)
    page = _Page()

    # names by role: F is the forward convolution the geometry describes; a transposed
    # convolution computes F's input gradient, so its input has F's output shape.
    if transposed:
        names = dict(a="y", a_title="output (= col2im(Wᵀ·x))", o="x",
                     o_title="input of the transposed convolution", d="δ",
                     d_title="δ = ∂E/∂y (gradient of the output)")
    else:
        names = dict(a="x", a_title="input", o="y", o_title="output y = W·X_col + b", d="δ",
                     d_title="δ = ∂E/∂y")

    def spatial_label(prefix: str, channel: int, flat: int, size: Tuple[int, ...]) -> str:
        return f"{prefix}[{channel}, {_tuple(np.unravel_index(flat, size))}]"

    def row_name(j: int) -> str:
        c, k = divmod(j, kvol)
        return f"(c={c}, k={_tuple(np.unravel_index(k, window.kernel_size))})"

    def col_name(o: int) -> str:
        return _tuple(np.unravel_index(o, window.out_size))

    # grid A: F's input (x; for a transposed convolution its output y)
    block = _split_spatial(window.in_size)
    a_first = page.grid(names["a"], names["a_title"], (c_in,) + window.in_size,
                        [f"channel {c}" for c in range(c_in)], block,
                        cell_text=[str(v) for v in range(c_in * in_vol)])
    # grid C: the column matrix
    text = []
    for j in range(rows):
        for o in range(ovol):
            s = int(source[j, o])
            text.append("·" if s < 0 else (f"{s}*" if border[j, o] else str(s)))
    c_first = page.grid("X_col", "library layout (C_in·∏K, ∏O): one column per window "
                        "(the textbook X_col is its transpose)", (rows, ovol), [""], (rows, ovol),
                        row_labels=[row_name(j) for j in range(rows)],
                        col_labels=[col_name(o) for o in range(ovol)], cell_text=text)
    # grid W: the weight matrix, (C_out, C_in/G·∏K)
    w_first = page.grid("W", f"W = w.reshape(C_out, C_in/G·∏K) = ({c_out}, {rows_g})",
                        (c_out, rows_g), [""], (c_out, rows_g),
                        row_labels=[f"f={f}" for f in range(c_out)],
                        col_labels=[row_name(j) for j in range(rows_g)])
    # grid b
    bias_channels = c_in if transposed else c_out
    b_first: Optional[int] = None  # an int exactly when there is a bias
    if bias:
        b_first = page.grid("b", f"bias ({bias_channels},)", (bias_channels,), [""],
                            (1, bias_channels), col_labels=[str(f) for f in range(bias_channels)])
    # grids O and D: F's output-shaped tensor and the gradient grid
    block_o = _split_spatial(window.out_size)
    o_first = page.grid(names["o"], names["o_title"], (c_out,) + window.out_size,
                        [f"channel {f}" for f in range(c_out)], block_o,
                        cell_text=[str(v % ovol) for v in range(c_out * ovol)])
    if transposed:  # δ of the transposed convolution has its output's shape: F's input
        d_first = page.grid(names["d"], names["d_title"], (c_in,) + window.in_size,
                            [f"channel {c}" for c in range(c_in)], block,
                            cell_text=[str(v) for v in range(c_in * in_vol)])
    else:
        d_first = page.grid(names["d"], names["d_title"], (c_out,) + window.out_size,
                            [f"channel {f}" for f in range(c_out)], block_o,
                            cell_text=[str(v % ovol) for v in range(c_out * ovol)])

    def at_a(c: int, flat: int) -> int:
        return a_first + c * in_vol + flat

    def at_c(j: int, o: int) -> int:
        return c_first + j * ovol + o

    def at_w(f: int, jw: int) -> int:
        return w_first + f * rows_g + jw

    def at_o(f: int, o: int) -> int:
        return o_first + f * ovol + o

    def at_d(index: int) -> int:  # flat index into the δ grid
        return d_first + index

    # the products of F: X_col entry (j, o) meets W[f, j mod rows_g] for the filters of its group
    terms = []  # (j, o, f, jw, s): row, window, filter, W column, source sample
    for j in range(rows):
        grp, jw = divmod(j, rows_g)
        for o in range(ovol):
            s = int(source[j, o])
            for f in range(grp * filters_g, (grp + 1) * filters_g):
                terms.append((j, o, f, jw, s))
    sources_of = {}
    for j in range(rows):
        for o in range(ovol):
            sources_of[(j, o)] = int(source[j, o])

    def a_cell(j: int, s: int) -> int:
        return at_a(j // kvol, s % in_vol)  # s is a flat index into (C_in, *I)

    ops: Dict[str, List[_Op]] = {name: [] for name in PASSES}
    read = [(j, o, s) for (j, o), s in sources_of.items() if s >= 0]  # entries holding data
    copies: List[_Op] = [((a_cell(j, s),), at_c(j, o)) for j, o, s in read]
    scatters: List[_Op] = [((at_c(j, o),), a_cell(j, s)) for j, o, s in read]
    if not transposed:
        ops["forward"] = copies + [((at_c(j, o), at_w(f, jw)), at_o(f, o))
                                   for j, o, f, jw, s in terms]
        if b_first is not None:
            ops["forward"] += [((b_first + f,), at_o(f, o)) for f in range(c_out)
                               for o in range(ovol)]
        delta = lambda f, o: at_d(f * ovol + o)  # noqa: E731
        ops["input gradient"] = [((delta(f, o), at_w(f, jw)), at_c(j, o))
                                 for j, o, f, jw, s in terms] + scatters
        ops["weight gradient"] = copies + [((delta(f, o), at_c(j, o)), at_w(f, jw))
                                           for j, o, f, jw, s in terms]
        if b_first is not None:
            ops["weight gradient"] += [((delta(f, o),), b_first + f) for f in range(c_out)
                                       for o in range(ovol)]
    else:
        # forward of the transposed convolution = F's input gradient, x in δ's place
        d_copies: List[_Op] = [((at_d(s),), at_c(j, o)) for j, o, s in read]
        ops["forward"] = [((at_o(f, o), at_w(f, jw)), at_c(j, o))
                          for j, o, f, jw, s in terms] + scatters
        if b_first is not None:
            ops["forward"] += [((b_first + c,), at_a(c, i)) for c in range(c_in)
                               for i in range(in_vol)]
        # its input gradient = F's forward applied to δ: X_col = im2col(δ), dx = W·X_col
        ops["input gradient"] = d_copies + [((at_c(j, o), at_w(f, jw)), at_o(f, o))
                                            for j, o, f, jw, s in terms]
        ops["weight gradient"] = d_copies + [((at_o(f, o), at_c(j, o)), at_w(f, jw))
                                             for j, o, f, jw, s in terms]
        if b_first is not None:
            ops["weight gradient"] += [((at_d(c * in_vol + i),), b_first + c) for c in range(c_in)
                                       for i in range(in_vol)]

    links = {name: _closure(ops[name], len(page.cells)) for name in PASSES}
    _describe(page, geometry, names, transposed, source, border, a_first, c_first, w_first,
              b_first, o_first, d_first)
    sizes = []
    for axis in range(window.rank):
        before, after = window.padding[axis]
        sizes.append(
            f"axis {axis}: I={window.in_size[axis]} K={window.kernel_size[axis]} "
            f"S={window.stride[axis]} D={window.dilation[axis]} P=({before}, {after}) -> "
            f"O = floor(({window.in_size[axis]} + {before} + {after} - "
            f"{window.dilation[axis]}·{window.kernel_size[axis] - 1} - 1) / "
            f"{window.stride[axis]}) + 1 = {window.out_size[axis]}, remainder R = "
            f"{window.remainder[axis]}")
    kind = "transposed convolution" if transposed else "convolution"
    headline = (f"{kind}: input {tuple(input_shape)}, weight {tuple(weight_shape)}"
                f"{', bias' if bias else ', no bias'}; C_in={c_in}, C_out={c_out}, G={g}, "
                f"padding_mode {window.padding_mode!r}")
    if transposed:
        headline += (f"; drawn through the forward convolution whose input gradient it is "
                     f"({c_in} channels of size {window.in_size} -> {c_out} of size "
                     f"{window.out_size})")
    if geometry.batched and geometry.batch != 1:
        headline += f"; one sample of the batch of {geometry.batch} is drawn"
    grids = page.grids
    if transposed:  # reading order: the transposed convolution's input first
        order = {"x": 0, "W": 1, "X_col": 2, "b": 3, "y": 4, "δ": 5}
        grids = sorted(grids, key=lambda grid: order[grid["name"]])
    return dict(grids=grids, cells=page.cells, links=links, passes=list(PASSES),
                sources=source.tolist(), geometry=dict(headline=headline, axes=sizes),
                transposed=bool(transposed))


def _describe(page: _Page, geometry: ConvGeometry, names, transposed, source, border,
              a_first, c_first, w_first, b_first, o_first, d_first) -> None:
    """Fill every cell's label and index arithmetic."""
    window = geometry.window
    c_in, c_out, g = geometry.in_channels, geometry.out_channels, geometry.groups
    kvol, ovol = window.kernel_volume, window.out_volume
    rows_g, filters_g = c_in * kvol // g, c_out // g
    in_vol = math.prod(window.in_size)
    S, Dl = window.stride, window.dilation
    before = tuple(b for b, _ in window.padding)
    a, o_name, d = names["a"], names["o"], names["d"]

    def idx(flat, size):
        return tuple(int(v) for v in np.unravel_index(flat, size))

    def arithmetic(o_t, k_t):
        p = tuple(oo * s + kk * dd for oo, s, kk, dd in zip(o_t, S, k_t, Dl))
        text = " ".join(f"{oo}·{s}+{kk}·{dd}" for oo, s, kk, dd in zip(o_t, S, k_t, Dl))
        return p, text

    for c in range(c_in):
        for flat in range(in_vol):
            i_t = idx(flat, window.in_size)
            label = f"{a}[{c}, {_tuple(i_t)}]"
            p_t = tuple(i + b for i, b in zip(i_t, before))
            how = ("col2im adds onto it the X_col entries of (window o, tap k)" if transposed
                   else "read by (window o, tap k)")
            lines = [f"{label}: padded position p = i + P_before = {_tuple(p_t)}",
                     f"{how} with o·S + k·D = p (per axis):"]
            hits = np.argwhere(source == c * in_vol + flat)
            for j, o in hits[:8]:
                k_t, o_t = idx(j % kvol, window.kernel_size), idx(o, window.out_size)
                p, text = arithmetic(o_t, k_t)
                copy = " (a padding copy)" if border[j, o] else ""
                lines.append(f"  o={_tuple(o_t)}, k={_tuple(k_t)}: {text} = {_tuple(p)}{copy}"
                             f" → X_col[{j}, {o}]")
            if len(hits) > 8:
                lines.append(f"  … {len(hits)} X_col entries in all")
            if not len(hits):
                lines.append("  none: no window reads it (its gradient is 0)")
            grp = c // (c_in // g)
            lines.append(f"channel {c} is in group {grp}: filters {grp * filters_g}.."
                         f"{(grp + 1) * filters_g - 1}")
            page.cells[a_first + c * in_vol + flat].update(label=label, info="\n".join(lines))
            if transposed:
                dl = f"{d}[{c}, {_tuple(i_t)}]"
                page.cells[d_first + c * in_vol + flat].update(
                    label=dl, info=f"{dl} = ∂E/∂{label}; im2col copies it into the X_col entries "
                    f"{label} is scattered from:\n" + "\n".join(lines[1:]))
    for j in range(c_in * kvol):
        c, k = divmod(j, kvol)
        k_t = idx(k, window.kernel_size)
        grp, jw = divmod(j, rows_g)
        for o in range(ovol):
            o_t = idx(o, window.out_size)
            p, text = arithmetic(o_t, k_t)
            s = int(source[j, o])
            label = f"X_col[{j}, {o}]"
            if s < 0:
                what = "a zero of the padding"
            else:
                what = f"{a}[{c}, {_tuple(idx(s % in_vol, window.in_size))}]"
                if border[j, o]:
                    what += f" (a {window.padding_mode!r} padding copy)"
            lines = [f"row j={j} = (c={c}, k={_tuple(k_t)}), column o={o} = window {_tuple(o_t)}",
                     f"padded position o·S + k·D = {text} = {_tuple(p)}: {what}",
                     f"group {grp}: meets W[f, {jw}] for f = {grp * filters_g}.."
                     f"{(grp + 1) * filters_g - 1} (j mod C_in/G·∏K = {jw})"]
            if transposed:
                lines.append(f"forward: X_col[{j},{o}] = Σ_f W[f,{jw}]·{o_name}[f,{o}], then "
                             f"col2im adds it to {what}")
            else:
                lines.append(f"input gradient: dX_col[{j},{o}] = Σ_f W[f,{jw}]·δ[f,{o}]; "
                             f"col2im adds it to {what}")
            page.cells[c_first + j * ovol + o].update(label=label, info="\n".join(lines))
    for f in range(c_out):
        grp = f // filters_g
        for jw in range(rows_g):
            j = grp * rows_g + jw
            c, k = divmod(j, kvol)
            label = f"W[{f}, {jw}]"
            info = (f"{label} = w[{f}, {c - grp * (c_in // g)}, "
                    f"{_tuple(idx(k, window.kernel_size))}] (filter {f}, group {grp})\n"
                    f"multiplies X_col row j = {grp}·{rows_g} + {jw} = {j} in all {ovol} windows\n"
                    f"dW[{f},{jw}] = Σ_o {'x' if transposed else 'δ'}[{f}, o]·X_col[{j}, o]")
            page.cells[w_first + f * rows_g + jw].update(label=label, info=info)
    if b_first is not None:
        channels = c_in if transposed else c_out
        size = window.in_size if transposed else window.out_size
        for f in range(channels):
            label = f"b[{f}]"
            page.cells[b_first + f].update(
                label=label, info=f"{label} is added to all {math.prod(size)} outputs of "
                f"channel {f}: db[{f}] = Σ of δ over channel {f}")
    for f in range(c_out):
        grp = f // filters_g
        for o in range(ovol):
            o_t = idx(o, window.out_size)
            start = tuple(oo * s - b for oo, s, b in zip(o_t, S, before))
            label = f"{o_name}[{f}, {_tuple(o_t)}]"
            if transposed:
                info = (f"{label}: input of the transposed convolution; X_col column {o} += "
                        f"W[{f}, :]ᵀ·{label} (rows {grp * rows_g}..{(grp + 1) * rows_g - 1}), "
                        f"then col2im stamps it onto the window at input position "
                        f"o·S - P_before = {_tuple(start)}")
            else:
                info = (f"{label} = b[{f}] + Σ_j W[{f}, j]·X_col[{grp}·{rows_g} + j, {o}] "
                        f"({rows_g} terms); window {_tuple(o_t)} starts at o·S - P_before = "
                        f"{_tuple(start)}")
            page.cells[o_first + f * ovol + o].update(label=label, info=info)
            if not transposed:
                dl = f"δ[{f}, {_tuple(o_t)}]"
                page.cells[d_first + f * ovol + o].update(
                    label=dl, info=f"{dl} = ∂E/∂{label}: dX_col[:, {o}] += W[{f}, :]ᵀ·{dl}; "
                    f"dW[{f}, :] += {dl}·X_col[:, {o}]ᵀ; db[{f}] += {dl}")


_CSS = """
body{font-family:system-ui,sans-serif;margin:12px;color:#222}
h1{font-size:18px;margin:4px 0} .geo{font-size:12px;color:#444;white-space:pre-wrap}
.bar{position:sticky;top:0;background:#fff;padding:6px 0;border-bottom:1px solid #ccc;z-index:2}
.bar button{margin-right:6px;padding:4px 10px;border:1px solid #888;background:#eee;cursor:pointer}
.bar button.on{background:#333;color:#fff}
.legend span{display:inline-block;padding:1px 6px;margin-right:6px;font-size:12px}
#info{font:12px/1.35 monospace;white-space:pre-wrap;background:#f6f6f2;border:1px solid #ccc;
 padding:6px;min-height:6em;margin-top:6px}
.grids{display:flex;flex-wrap:wrap;gap:18px;align-items:flex-start;margin-top:10px}
.grid h2{font-size:13px;margin:2px 0 4px 0;max-width:520px}
.block{margin:0 8px 8px 0;display:inline-block;vertical-align:top}
.block .name{font-size:11px;color:#555}
table{border-collapse:collapse} td{border:1px solid #bbb;min-width:18px;height:18px;
 font-size:10px;text-align:center;padding:0 2px;cursor:pointer}
th{font-size:9px;font-weight:normal;color:#555;padding:0 2px;white-space:nowrap}
th.col{writing-mode:vertical-rl;transform:rotate(180deg);height:auto}
td.from{background:#7fb3e6} td.to{background:#f4a259} td.with{background:#9ed69e}
td.me{outline:3px solid #000;outline-offset:-2px}
"""

_JS = """
const data = JSON.parse(document.getElementById('explorer-data').textContent);
let pass = data.passes[0], current = null;
const cells = document.querySelectorAll('td[data-id]');
const byId = {}; cells.forEach(td => { byId[td.dataset.id] = td; });
function clear() { cells.forEach(td => td.classList.remove('from', 'to', 'with', 'me')); }
function show(id) {
  clear(); current = id; const link = data.links[pass][id];
  link[0].forEach(i => byId[i].classList.add('from'));
  link[1].forEach(i => byId[i].classList.add('to'));
  link[2].forEach(i => byId[i].classList.add('with'));
  byId[id].classList.add('me');
  const cell = data.cells[id];
  document.getElementById('info').textContent = '[' + pass + '] ' + cell.label +
    '   from: ' + link[0].length + ', to: ' + link[1].length + ', with: ' + link[2].length +
    '\\n' + cell.info;
}
cells.forEach(td => td.addEventListener('mouseenter', () => show(+td.dataset.id)));
document.querySelectorAll('.bar button').forEach(b => b.addEventListener('click', () => {
  pass = b.dataset.pass;
  document.querySelectorAll('.bar button').forEach(o => o.classList.toggle('on', o === b));
  if (current !== null) show(current);
}));
const start = new URLSearchParams(location.hash.slice(1));
if (start.get('pass')) { const b = document.querySelector('button[data-pass="' +
  start.get('pass') + '"]'); if (b) b.click(); }
if (start.get('cell')) show(+start.get('cell'));
"""


def _grid_html(grid: Dict[str, Any], cells: List[Dict[str, Any]]) -> str:
    rows, cols = grid["block_shape"]
    out = [f'<div class="grid"><h2>{html.escape(grid["name"])}: '
           f'{html.escape(grid["title"])}</h2>']
    for index, name in enumerate(grid["blocks"]):
        first = grid["first"] + index * rows * cols
        out.append('<div class="block">')
        if name:
            out.append(f'<div class="name">{html.escape(name)}</div>')
        out.append("<table>")
        if grid["col_labels"]:
            out.append("<tr>" + ("<th></th>" if grid["row_labels"] else "")
                       + "".join(f'<th class="col">{html.escape(v)}</th>'
                                 for v in grid["col_labels"]) + "</tr>")
        for i in range(rows):
            out.append("<tr>")
            if grid["row_labels"]:
                out.append(f'<th>{html.escape(grid["row_labels"][i])}</th>')
            for j in range(cols):
                cell_id = first + i * cols + j
                cell = cells[cell_id]
                out.append(f'<td data-id="{cell_id}" title="{html.escape(cell["label"])}">'
                           f'{html.escape(cell["text"])}</td>')
            out.append("</tr>")
        out.append("</table></div>")
    out.append("</div>")
    return "".join(out)


def explorer_html(
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    *,
    bias: bool = True,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    transposed: bool = False,
    output_padding: IntOrTuple = 0,
    output_size: Optional[Sequence[int]] = None,
) -> str:
    """The explorer page of one geometry, as a self-contained HTML string.

    Parameters
    ----------
    input_shape : tuple of int
        ``x.shape``, (N, C_in, *I) or unbatched (C_in, *I); one sample is drawn.
    weight_shape : tuple of int
        (C_out, C_in/G, *K); for ``transposed=True`` the transposed layout
        (C_in, C_out/G, *K).
    bias : bool, optional
        Draw a bias (default True).
    stride, padding, dilation, groups, padding_mode
        As for :func:`im2colbp.conv` (:func:`im2colbp.conv_transpose` when
        ``transposed``).
    transposed : bool, optional
        Explore ``conv_transpose`` instead of ``conv``.
    output_padding, output_size
        As for :func:`im2colbp.conv_transpose`; only with ``transposed=True``.

    Returns
    -------
    page : str
        One HTML document, no external resources. Its data (the JSON of
        :func:`explorer_data`) sits in ``<script id="explorer-data">``.

    Raises
    ------
    ValueError
        For a geometry the library refuses, or one with more than
        ``MAX_CELLS`` cells to draw.

    Examples
    --------
    >>> from im2colbp.explorer import explorer_html
    >>> page = explorer_html((1, 3, 5, 5), (2, 3, 3, 3), stride=2, padding=1)
    >>> page.startswith("<!DOCTYPE html>"), "http" in page
    (True, False)
    """
    data = explorer_data(input_shape, weight_shape, bias=bias, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, padding_mode=padding_mode,
                         transposed=transposed, output_padding=output_padding,
                         output_size=output_size)
    payload = json.dumps(data, ensure_ascii=False, separators=(",", ":")).replace("</", "<\\/")
    buttons = "".join(
        f'<button data-pass="{p}"{" class=on" if p == PASSES[0] else ""}>{p}</button>'
        for p in PASSES)
    grids = "".join(_grid_html(grid, data["cells"]) for grid in data["grids"])
    geo = html.escape(data["geometry"]["headline"] + "\n" + "\n".join(data["geometry"]["axes"]))
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        "<title>im2colbp explorer</title>"
        f"<style>{_CSS}</style></head><body>"
        "<h1>im2colbp explorer</h1>"
        f'<div class="geo">{geo}</div>'
        '<div class="bar">pass: ' + buttons +
        '<div class="legend"><span style="background:#7fb3e6">computed from</span>'
        '<span style="background:#f4a259">goes to</span>'
        '<span style="background:#9ed69e">multiplied with</span>'
        "<span>point at any cell; x and X_col cells show input sample numbers "
        "(· a zero of the padding, * a padding copy)</span></div>"
        '<div id="info">Point at a cell.</div></div>'
        f'<div class="grids">{grids}</div>'
        f'<script id="explorer-data" type="application/json">{payload}</script>'
        f"<script>{_JS}</script></body></html>\n"
    )


def write_explorer(
    path: Union[str, os.PathLike],
    input_shape: Sequence[int],
    weight_shape: Sequence[int],
    *,
    bias: bool = True,
    stride: IntOrTuple = 1,
    padding: Padding = 0,
    dilation: IntOrTuple = 1,
    groups: int = 1,
    padding_mode: str = "zeros",
    transposed: bool = False,
    output_padding: IntOrTuple = 0,
    output_size: Optional[Sequence[int]] = None,
) -> str:
    """Write the explorer page of one geometry to ``path``; return the path.

    Parameters are those of :func:`explorer_html`; ``path`` is the file to
    write (UTF-8).

    Returns
    -------
    path : str

    Examples
    --------
    >>> import os, tempfile
    >>> from im2colbp.explorer import write_explorer
    >>> path = write_explorer(os.path.join(tempfile.mkdtemp(), "conv.html"), (1, 1, 4, 4),
    ...                       (1, 1, 3, 3), padding=1, padding_mode="reflect")
    >>> open(path, encoding="utf-8").read(15)
    '<!DOCTYPE html>'
    """
    page = explorer_html(input_shape, weight_shape, bias=bias, stride=stride, padding=padding,
                         dilation=dilation, groups=groups, padding_mode=padding_mode,
                         transposed=transposed, output_padding=output_padding,
                         output_size=output_size)
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(page)
    return path
