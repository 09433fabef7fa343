"""Draw the figures of the docs into ``docs/_static/`` (PNG, checked in).

    python scripts/make_figures.py            # needs matplotlib (the ``figures`` extra)

Every number in a figure is computed by im2colbp itself (``im2col``,
``zero_insert``, ``backprop_kernel``, ``conv_grad_input``), so a figure cannot
drift from the code it illustrates. The examples are the ones the pages
print in their doctests:

im2col.png
    ``x`` of shape (1, 2, 3, 3) (two channels, samples numbered 0..17), kernel
    2×2, stride 1, no padding: the (8, 4) column matrix, each cell coloured
    like the input sample it copies; 0-based row, column and window labels.
zero_insertion.png
    the worked example's δ (3×3, stride 2, padding 1, kernel 3×3): δ, δ with
    stride-1 = 1 zero between neighbours, and that padded by D·(K-1) - P = 1
    -- the input of the stride-1 backward convolution, which gives the 5×5 dx.
backprop_kernel.png
    Aggarwal's picture, small: a (C_out=2, C_in=3, 3, 3) weight numbered 0..53,
    coloured R/G/B by input channel, and its backprop kernel (3, 2, 3, 3):
    every slice moves from (f, c) to (c, f) and is rotated by 180°.
remainder.png
    1-D, I = 6, K = 3, S = 2: the windows, the zero-inserted and padded δ,
    and the last input sample no window reaches (its gradient is 0).
channels.png
    channel fan-out in the forward pass, fan-in (a sum over filters) in the
    backward pass.
stride.png
    the input gradient at stride 2 two ways: the kernel stamped at every S-th
    position (col2im), and the stride-1 correlation of the zero-inserted δ
    with the rotated kernel; both computed, and checked equal.
explorer-example.html
    the interactive explorer (``im2colbp.explorer``) of the worked example's
    geometry.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Patch, Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import im2colbp as ib  # noqa: E402
from im2colbp.explorer import write_explorer  # noqa: E402
from im2colbp.transposition import backprop_kernel, zero_insert  # noqa: E402

OUT = ROOT / "docs" / "_static"
DPI = 110
PALETTE = [plt.get_cmap("tab20")(i) for i in range(20)]
PADDING_GREY = (0.85, 0.85, 0.85, 1.0)
WHITE = (1.0, 1.0, 1.0, 1.0)


def lighten(color, amount=0.45):
    """Mix ``color`` with white so black text on it stays readable."""
    rgb = np.asarray(color[:3])
    return tuple(rgb + (1.0 - rgb) * amount) + (1.0,)


def draw_grid(ax, values, colors, x0, y0, cell=1.0, fmt="{:g}", fontsize=11, hatch=None):
    """Draw a 2-D array as coloured cells, row 0 at the top, top-left corner at (x0, y0)."""
    rows, cols = values.shape
    for i in range(rows):
        for j in range(cols):
            x, y = x0 + j * cell, y0 - (i + 1) * cell
            ax.add_patch(Rectangle((x, y), cell, cell, facecolor=colors[i][j],
                                   edgecolor="0.35", linewidth=0.8,
                                   hatch=None if hatch is None else hatch[i][j]))
            text = fmt.format(values[i, j])
            ax.text(x + cell / 2, y + cell / 2, text, ha="center", va="center",
                    fontsize=fontsize)


def outline(ax, x0, y0, width, height, color="black", linewidth=2.5):
    ax.add_patch(Rectangle((x0, y0 - height), width, height, fill=False,
                           edgecolor=color, linewidth=linewidth, zorder=5))


def arrow(ax, start, end, text=None, fontsize=10, below=False):
    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=18,
                                 linewidth=1.5, color="0.2"))
    if text:
        offset = -0.35 if below else 0.35
        ax.text((start[0] + end[0]) / 2, (start[1] + end[1]) / 2 + offset, text,
                ha="center", va="top" if below else "bottom", fontsize=fontsize)


def legend(ax, entries, loc="lower left", hatch=None, fontsize=10):
    """A legend of coloured squares: ``entries`` is a list of (colour, text)."""
    handles = [Patch(facecolor=color, edgecolor="0.35",
                     hatch=None if hatch is None else hatch.get(text), label=text)
               for color, text in entries]
    ax.legend(handles=handles, loc=loc, fontsize=fontsize, frameon=True)


def finish(fig, ax, name, xlim, ylim):
    ax.set_xlim(*xlim)
    ax.set_ylim(*ylim)
    ax.set_aspect("equal")
    ax.axis("off")
    path = OUT / name
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white",
                metadata={"Software": None})  # no version string: reproducible bytes
    plt.close(fig)
    print(f"wrote {path.relative_to(ROOT)}")


# --------------------------------------------------------------------------
# im2col.png
# --------------------------------------------------------------------------
def figure_im2col():
    x = np.arange(18.0).reshape(1, 2, 3, 3)  # (N, C_in, 3, 3), samples numbered 0..17
    cols = ib.im2col(x, (2, 2))[0]  # (C_in·K·K, L) = (8, 4)
    tab10 = [plt.get_cmap("tab10")(i) for i in range(10)]
    # one hue per position, dark in channel 0 and pale in channel 1
    hues = [tab10[i] for i in (0, 1, 2, 3, 4, 5, 6, 8, 9)]  # tab10 without its grey
    sample_color = {v: lighten(hues[int(v) % 9], 0.35 if v < 9 else 0.75)
                    for v in x.ravel()}

    fig, ax = plt.subplots(figsize=(11, 6.2))
    # the input, one 3×3 grid per channel, with 0-based row/column labels
    for c in range(2):
        top = 7.5 - c * 4.2
        colors = [[sample_color[v] for v in row] for row in x[0, c]]
        draw_grid(ax, x[0, c], colors, 0.0, top)
        ax.text(1.5, top + 0.55, f"x[0, c={c}]  (sample numbers)", ha="center", va="bottom",
                fontsize=12)
        for i in range(3):
            ax.text(-0.15, top - i - 0.5, f"i₁={i}", ha="right", va="center", fontsize=8)
            ax.text(i + 0.5, top + 0.08, f"i₂={i}", ha="center", va="bottom", fontsize=8)
        outline(ax, 1.0, top, 2.0, 2.0)  # the window at o = (0, 1)
    ax.text(1.5, -1.3, "black outline: window o = (0, 1)\nin both channels", ha="center",
            va="top", fontsize=10)

    # the column matrix
    x0, top = 9.7, 8.2
    colors = [[sample_color[v] for v in row] for row in cols]
    draw_grid(ax, cols, colors, x0, top)
    for col, o in enumerate(np.ndindex(2, 2)):
        ax.text(x0 + col + 0.5, top + 0.15, f"o=\n({o[0]},{o[1]})", ha="center",
                va="bottom", fontsize=9)
    for row, (c, k1, k2) in enumerate(np.ndindex(2, 2, 2)):
        ax.text(x0 - 0.15, top - row - 0.5, f"row {row}: c={c}, k=({k1},{k2})", ha="right",
                va="center", fontsize=10)
    outline(ax, x0 + 1, top, 1.0, 8.0)
    ax.text(x0 + 2, top + 1.1, "cols[0] = im2col(x)[0]   shape (C_in·K₁·K₂, O₁·O₂) = (8, 4)",
            ha="center", va="bottom", fontsize=12)
    ax.text(x0 + 2, -0.2,
            "row (c, k₁, k₂), column o; every index from 0:\n"
            "cols[(c, k), o] = x[c, o + k]  (S = D = 1, P = 0)\n"
            "a cell shows, and has the colour of, the sample it copies",
            ha="center", va="top", fontsize=10)
    arrow(ax, (3.6, 3.0), (5.6, 3.0), "im2col")
    finish(fig, ax, "im2col.png", (-0.9, 14.5), (-2.6, 9.8))


# --------------------------------------------------------------------------
# zero_insertion.png
# --------------------------------------------------------------------------
def figure_zero_insertion():
    stride, kernel, pad = 2, 3, 1
    dy = np.arange(1.0, 10.0).reshape(3, 3)  # δ of one filter, (O, O) = (3, 3)
    z = zero_insert(dy[None, None], stride)[0, 0]  # (5, 5)
    before = after = (kernel - 1) - pad  # D·(K-1) - P_before; remainder R = 0 here
    zp = np.pad(z, ((before, after), (before, after)))  # (7, 7)
    hues = [PALETTE[i] for i in (0, 2, 4, 6, 8, 10, 12, 16, 18)]  # tab20 without its grey
    color = {v: lighten(hues[int(v) - 1]) for v in dy.ravel()}

    def colors_of(a, border=0):
        size = a.shape[0]
        out = []
        for i in range(size):
            row = []
            for j in range(size):
                inside = border <= i < size - border and border <= j < size - border
                if a[i, j]:
                    row.append(color[a[i, j]])
                else:
                    row.append(WHITE if inside else PADDING_GREY)
            out.append(row)
        return out

    fig, ax = plt.subplots(figsize=(13, 5.2))
    top = 6.0
    draw_grid(ax, dy, colors_of(dy), 0.0, top - 2.0)
    ax.text(1.5, top - 1.7, "δ  (O = 3)", ha="center", va="bottom", fontsize=12)
    draw_grid(ax, z, colors_of(z), 5.5, top - 1.0)
    ax.text(8.0, top - 0.7, "zero_insert(δ, 2)  (Z = 5)", ha="center", va="bottom",
            fontsize=12)
    draw_grid(ax, zp, colors_of(zp, border=before), 13.0, top)
    ax.text(16.5, top + 0.3, "padded by D·(K−1) − P = 1  (7 = I + D·(K−1))", ha="center",
            va="bottom", fontsize=12)
    outline(ax, 13.0, top, 3.0, 3.0, color="tab:red")
    arrow(ax, (3.3, 2.5), (5.2, 2.5), "S − 1 = 1 zero\nbetween\nneighbours", fontsize=9,
          below=True)
    arrow(ax, (10.8, 2.5), (12.7, 2.5), "pad", fontsize=10)
    ax.text(16.5, -1.4, "a 3×3 window (red) slides with stride 1 over 5×5 positions:\n"
            "dx = conv(padded, backprop_kernel(w)), shape 5×5 = I", ha="center", va="top",
            fontsize=10)
    legend(ax, [(PADDING_GREY, "padding: D·(K−1) − P = 1 zero on each side"),
                (WHITE, "inserted zeros: S − 1 = 1 between neighbours"),
                (color[1.0], "δ values (coloured, one colour per window)")],
           loc="lower left")
    finish(fig, ax, "zero_insertion.png", (-0.4, 20.4), (-2.6, 7.2))


# --------------------------------------------------------------------------
# backprop_kernel.png
# --------------------------------------------------------------------------
def figure_backprop_kernel():
    """Aggarwal's picture, small: 2 filters on an RGB input -> 3 filters of depth 2."""
    c_out, c_in, k = 2, 3, 3
    w = np.arange(c_out * c_in * k * k, dtype=float).reshape(c_out, c_in, k, k)  # 0..53
    w_bp = backprop_kernel(w)  # (C_in, C_out, 3, 3)
    # R, G, B for the input channel; dark for filter 0, pale for filter 1
    rgb = [(0.85, 0.25, 0.2, 1.0), (0.3, 0.7, 0.3, 1.0), (0.3, 0.45, 0.9, 1.0)]
    names = ["R", "G", "B"]
    slice_color = {(f, c): lighten(rgb[c], 0.45 if f == 0 else 0.78)
                   for f in range(c_out) for c in range(c_in)}

    fig, ax = plt.subplots(figsize=(13, 8.2))
    gap = k + 1.6
    top = 12.5
    # forward weight: rows f (filters), columns c (input channels)
    for f in range(c_out):
        for c in range(c_in):
            x0, y0 = c * (k + 1.2), top - f * (gap + 0.6)
            colors = [[slice_color[f, c]] * k for _ in range(k)]
            draw_grid(ax, w[f, c], colors, x0, y0, fmt="{:.0f}")
            ax.text(x0 + k / 2, y0 + 0.15, f"w[f={f}, c={c} ({names[c]})]", ha="center",
                    va="bottom", fontsize=10)
        ax.text(-0.3, top - f * (gap + 0.6) - k / 2, f"filter {f}", ha="right", va="center",
                fontsize=11, rotation=90)
    ax.text(1.5 * (k + 1.2) - 0.6, top + 1.4, "forward weight (C_out=2, C_in=3, 3, 3):\n"
            "2 filters, each of depth 3 (R, G, B)", ha="center", va="bottom", fontsize=12)

    # backprop kernel: rows c (new filters), columns f (new depth)
    x_start = 3 * (k + 1.2) + 3.0
    gap_right = k + 2.4
    for c in range(c_in):
        for f in range(c_out):
            x0, y0 = x_start + f * gap_right, top - c * (gap + 0.6) * 0.92
            colors = [[slice_color[f, c]] * k for _ in range(k)]
            draw_grid(ax, w_bp[c, f], colors, x0, y0, fmt="{:.0f}")
            ax.text(x0 + k / 2, y0 + 0.15, f"kernel[c={c}, f={f}]\n= rot180(w[{f}, {c}])",
                    ha="center", va="bottom", fontsize=9)
        ax.text(x_start + 2 * gap_right - 1.7, top - c * (gap + 0.6) * 0.92 - k / 2,
                f"→ dx[{names[c]}]", ha="left", va="center", fontsize=11)
    ax.text(x_start + gap_right - 1.0, top + 1.4,
            "kernel = backprop_kernel(w) (C_in=3, C_out=2, 3, 3):\n"
            "3 filters (one per colour), each of depth 2 (one slice per forward filter)",
            ha="center", va="bottom", fontsize=12)
    arrow(ax, (3 * (k + 1.2) - 0.9, top - 3.5), (x_start - 0.4, top - 3.5),
          "swap (f, c),\nrotate each\nslice 180°")
    legend(ax, [(slice_color[0, c], f"channel {c} = {names[c]}, filter 0") for c in range(3)]
           + [(slice_color[1, c], f"channel {c} = {names[c]}, filter 1") for c in range(3)],
           loc="lower left", fontsize=9)
    finish(fig, ax, "backprop_kernel.png", (-1.0, x_start + 2 * gap_right + 1.5),
           (-2.6, top + 3.0))


# --------------------------------------------------------------------------
# remainder.png
# --------------------------------------------------------------------------
def figure_remainder():
    size, kernel, stride = 6, 3, 2
    w = np.array([[[1.0, 2.0, 3.0]]])
    dy = np.array([[[1.0, 10.0]]])  # O = floor((6 - 3) / 2) + 1 = 2
    dx = ib.conv_grad_input(dy, w, (1, 1, size), stride=stride)[0, 0]
    z = zero_insert(dy, stride)[0, 0]  # Z = 3
    remainder = (size - kernel) % stride  # R = 1
    zp = np.pad(z, (kernel - 1, kernel - 1 + remainder))  # (8,) = I + D·(K-1)
    x = np.arange(size, dtype=float)
    unread = (1.0, 0.8, 0.8, 1.0)  # the remainder sample (pink), nothing else
    delta_color = lighten(PALETTE[0])

    fig, ax = plt.subplots(figsize=(10, 6.2))
    # the input and the two windows
    draw_grid(ax, x[None], [[WHITE] * (size - 1) + [unread]], 2.0, 6.0, fmt="x[{:.0f}]",
              fontsize=9)
    for o, color in ((0, "tab:blue"), (1, "tab:orange")):
        outline(ax, 2.0 + o * stride + 0.06 * o, 6.0 + 0.08 * o, kernel - 0.12 * o, 1.0 + 0.16 * o,
                color=color)
    ax.text(2.0 + size / 2, 6.3, "forward: I = 6, K = 3, S = 2 → O = 2 windows (o = 0 blue, "
            "o = 1 orange)", ha="center", va="bottom", fontsize=11)
    ax.text(2.0 + size + 0.2, 5.5, "← R = 1 sample\n   no window reads", ha="left",
            va="center", fontsize=9)

    # the backward input: zero-inserted, padded δ
    colors = [[delta_color if v else (PADDING_GREY if (j < kernel - 1 or
               j >= kernel - 1 + z.size) else WHITE) for j, v in enumerate(zp)]]
    draw_grid(ax, zp[None], colors, 0.0, 3.5, fmt="{:g}")
    ax.text(4.0, 3.8, "zero_insert(δ = [1, 10], 2), padded: K−1 = 2 before, K−1 + R = 3 after",
            ha="center", va="bottom", fontsize=11)
    for j in range(zp.size):
        ax.text(j + 0.5, 2.4, str(j), ha="center", va="top", fontsize=8, color="0.4")
    # the result
    colors = [[WHITE] * (size - 1) + [unread]]
    draw_grid(ax, dx[None], colors, 2.0, 1.2, fmt="{:g}")
    for j in range(size):
        ax.text(2.0 + j + 0.5, 1.3, f"dx[{j}]", ha="center", va="bottom", fontsize=8,
                color="0.4")
    ax.text(2.0 + size / 2, -0.2, "dx = stride-1 conv with w flipped = [3, 2, 1]:\n"
            "the last sample gets 0", ha="center", va="top", fontsize=11)
    legend(ax, [(delta_color, "δ values"), (WHITE, "inserted zeros (S − 1 = 1)"),
                (PADDING_GREY, "padding of the zero-inserted δ"),
                (unread, "the remainder: x[5] and its gradient dx[5] = 0")],
           loc="lower right", fontsize=9)
    finish(fig, ax, "remainder.png", (-0.3, 14.5), (-3.6, 7.4))


# --------------------------------------------------------------------------
# channels.png
# --------------------------------------------------------------------------
def figure_channels():
    """Fan-out of an input channel in the forward pass is a fan-in (a sum) in the backward."""
    rgb = [(0.85, 0.25, 0.2, 1.0), (0.3, 0.7, 0.3, 1.0), (0.3, 0.45, 0.9, 1.0)]
    fcol = [(0.55, 0.55, 0.55, 1.0), (0.35, 0.35, 0.35, 1.0)]
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.6))
    for panel, ax in enumerate(axes):
        left = [(0.0, 4.4 - 2.2 * c) for c in range(3)]  # input channels
        right = [(6.0, 3.3 - 2.2 * f) for f in range(2)]  # filters / output channels
        for c, (x0, y0) in enumerate(left):
            ax.add_patch(Rectangle((x0, y0 - 0.5), 1.6, 1.0, facecolor=lighten(rgb[c], 0.3),
                                   edgecolor="0.2"))
            label = f"x[c={c}]" if panel == 0 else f"dx[c={c}]"
            ax.text(x0 + 0.8, y0, label, ha="center", va="center", fontsize=11)
        for f, (x0, y0) in enumerate(right):
            ax.add_patch(Rectangle((x0, y0 - 0.5), 1.6, 1.0, facecolor=lighten(fcol[f], 0.5),
                                   edgecolor="0.2"))
            label = f"y[f={f}]" if panel == 0 else f"δ[f={f}]"
            ax.text(x0 + 0.8, y0, label, ha="center", va="center", fontsize=11)
        for c, (xc, yc) in enumerate(left):
            for f, (xf, yf) in enumerate(right):
                start, end = ((xc + 1.6, yc), (xf, yf)) if panel == 0 else ((xf, yf),
                                                                              (xc + 1.6, yc))
                ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=14,
                                             linewidth=1.6, color=rgb[c], alpha=0.9))
                t = 0.24 if panel == 0 else 0.76
                mx = start[0] + t * (end[0] - start[0])
                my = start[1] + t * (end[1] - start[1])
                text = f"w[{f},{c}]" if panel == 0 else f"rot180(w[{f},{c}])"
                ax.text(mx, my + 0.12, text, ha="center", va="bottom", fontsize=8,
                        color="0.15")
        if panel == 0:
            title = ("forward: every filter sums over all channels (fan-in),\n"
                     "every channel feeds every filter (fan-out)")
            formula = "y[f] = b[f] + Σ_c  w[f, c] ⋆ x[c]"
        else:
            title = ("backward: the fan-out becomes a sum —\n"
                     "each channel collects from every filter")
            formula = "dx[c] = Σ_f  rot180(w[f, c]) ⋆ (δ[f] zero-inserted, padded)"
        ax.set_title(title, fontsize=12)
        ax.text(3.8, -1.3, formula, ha="center", va="center", fontsize=11)
        ax.set_xlim(-0.5, 8.1)
        ax.set_ylim(-1.8, 5.3)
        ax.set_aspect("equal")
        ax.axis("off")
    path = OUT / "channels.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white",
                metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {path.relative_to(ROOT)}")


# --------------------------------------------------------------------------
# stride.png
# --------------------------------------------------------------------------
def figure_stride():
    """The input gradient at stride 2, two ways: stamps (scatter) and a stride-1 correlation."""
    size, stride = 7, 2
    w = np.array([[[1.0, 2.0, 3.0]]])
    dy = np.array([[[1.0, 10.0, 100.0]]])  # O = (7 - 3) // 2 + 1 = 3
    dx = ib.conv_grad_input(dy, w, (1, 1, size), stride=stride)[0, 0]
    kernel = w.shape[-1]
    z = zero_insert(dy, stride)[0, 0]  # (5,)
    pads = ((kernel - 1), (kernel - 1) + (size - kernel) % stride)
    zp = np.pad(z, pads)  # (9,)
    flipped = backprop_kernel(w)[0, 0]  # [3, 2, 1]
    by_correlation = ib.conv(zp[None, None], backprop_kernel(w))[0, 0]
    if not np.array_equal(by_correlation, dx):
        raise RuntimeError("the two routes of the stride figure disagree")
    window_colors = ["tab:blue", "tab:orange", "tab:green"]

    fig, axes = plt.subplots(1, 2, figsize=(15, 5.8))
    # left: stamps
    ax = axes[0]
    for o in range(dy.shape[-1]):
        row = np.zeros(size)
        row[o * stride:o * stride + kernel] = dy[0, 0, o] * w[0, 0]
        colors = [[lighten(to_rgba(window_colors[o]), 0.55) if o * stride <= j <
                   o * stride + kernel else WHITE for j in range(size)]]
        draw_grid(ax, row[None], colors, 0.0, 5.0 - 1.3 * o, fmt="{:g}", fontsize=10)
        ax.text(-0.2, 4.5 - 1.3 * o, f"δ[{o}]·w at {o}·S = {o * stride}", ha="right",
                va="center", fontsize=10)
    draw_grid(ax, dx[None], [[(0.93, 0.93, 0.8, 1.0)] * size], 0.0, 0.6, fmt="{:g}")
    ax.text(-0.2, 0.1, "sum = dx", ha="right", va="center", fontsize=11)
    for j in range(size):
        ax.text(j + 0.5, 5.1, str(j), ha="center", va="bottom", fontsize=8, color="0.4")
    ax.set_title("stamp the kernel at every S-th position\n"
                 "(dx = col2im(Wᵀ·δ): window o adds δ[o]·w onto what it read)", fontsize=12)
    ax.set_xlim(-4.2, size + 0.4)
    ax.set_ylim(-0.8, 6.4)
    ax.set_aspect("equal")
    ax.axis("off")
    # right: correlation of the zero-inserted, padded δ with the flipped kernel
    ax = axes[1]
    colors = [[lighten(to_rgba(window_colors[int(np.log10(v))]), 0.55) if v else
               (PADDING_GREY if (j < pads[0] or j >= pads[0] + z.size) else WHITE)
               for j, v in enumerate(zp)]]
    draw_grid(ax, zp[None], colors, 0.0, 5.0, fmt="{:g}")
    ax.text(zp.size / 2, 5.2, "δ zero-inserted (S − 1 = 1 zero), padded K − 1 = 2 each side",
            ha="center", va="bottom", fontsize=10)
    for j in range(3):  # three positions of the sliding flipped kernel
        draw_grid(ax, flipped[None], [[(0.9, 0.9, 0.9, 1.0)] * kernel], float(j), 3.6 - 1.0 * j,
                  fmt="{:g}", fontsize=9)
        ax.text(j + kernel + 0.2, 3.1 - 1.0 * j, f"→ dx[{j}]", ha="left", va="center",
                fontsize=9)
    ax.text(zp.size - 0.2, 2.2, "rot180(w) = [3, 2, 1]\nslides with stride 1\n…",
            ha="right", va="center", fontsize=10)
    draw_grid(ax, by_correlation[None], [[(0.93, 0.93, 0.8, 1.0)] * size], 0.0, 0.6,
              fmt="{:g}")
    ax.text(-0.2, 0.1, "dx", ha="right", va="center", fontsize=11)
    ax.set_title("stride-1 correlation of the zero-inserted δ\n"
                 "with the rotated kernel: the same dx", fontsize=12)
    ax.set_xlim(-1.2, zp.size + 0.4)
    ax.set_ylim(-0.8, 6.4)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.legend(handles=[Patch(facecolor=PADDING_GREY, edgecolor="0.35", label="padding"),
                       Patch(facecolor=WHITE, edgecolor="0.35", label="inserted zeros")],
              loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=2, fontsize=9)
    path = OUT / "stride.png"
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white",
                metadata={"Software": None})
    plt.close(fig)
    print(f"wrote {path.relative_to(ROOT)}")


# --------------------------------------------------------------------------
# explorer-example.html
# --------------------------------------------------------------------------
EXPLORER_EXAMPLE = dict(input_shape=(1, 3, 5, 5), weight_shape=(2, 3, 3, 3), stride=2,
                        padding=1)  # the worked example's geometry (cs231n's demo)


def write_explorer_example():
    path = write_explorer(OUT / "explorer-example.html", **EXPLORER_EXAMPLE)
    print(f"wrote {Path(path).relative_to(ROOT)}")


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    plt.rcParams.update({"font.family": "DejaVu Sans", "svg.hashsalt": "im2colbp"})
    figure_im2col()
    figure_zero_insertion()
    figure_backprop_kernel()
    figure_remainder()
    figure_channels()
    figure_stride()
    write_explorer_example()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
