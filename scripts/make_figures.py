"""Draw the figures of the docs into ``docs/_static/`` (PNG, checked in).

    python scripts/make_figures.py            # needs matplotlib (the ``docs`` extra)

Every number in a figure is computed by im2colbp itself (``im2col``,
``zero_insert``, ``backprop_kernel``, ``conv_grad_input``), so a figure cannot
drift from the code it illustrates. The examples are the ones the pages
print in their doctests:

im2col.png
    ``x`` of shape (1, 2, 3, 3) (two channels, samples numbered 1..18), kernel
    2×2, stride 1, no padding: the (8, 4) column matrix, each cell coloured
    like the input sample it copies. One window and its column are outlined.
zero_insertion.png
    the worked example's δ (3×3, stride 2, padding 1, kernel 3×3): δ, δ with
    stride-1 = 1 zero between neighbours, and that padded by D·(K-1) - P = 1
    -- the input of the stride-1 backward convolution, which gives the 5×5 dx.
backprop_kernel.png
    a (C_out=2, C_in=3, 3, 3) weight and its backprop kernel (3, 2, 3, 3):
    every slice moves from (f, c) to (c, f) and is rotated by 180°.
remainder.png
    1-D, I = 6, K = 3, S = 2: the windows, the zero-inserted and padded δ,
    and the last input sample no window reaches (its gradient is 0).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede pyplot

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import im2colbp as ib  # noqa: E402
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
    x = np.arange(1.0, 19.0).reshape(1, 2, 3, 3)  # (N, C_in, 3, 3), samples 1..18
    cols = ib.im2col(x, (2, 2))[0]  # (C_in·K·K, L) = (8, 4)
    tab10 = [plt.get_cmap("tab10")(i) for i in range(10)]
    # one hue per position, dark in channel 0 and pale in channel 1
    sample_color = {v: lighten(tab10[(int(v) - 1) % 9], 0.35 if v < 10 else 0.75)
                    for v in x.ravel()}

    fig, ax = plt.subplots(figsize=(11, 6.2))
    # the input, one 3×3 grid per channel
    for c in range(2):
        top = 7.5 - c * 4.2
        colors = [[sample_color[v] for v in row] for row in x[0, c]]
        draw_grid(ax, x[0, c], colors, 0.0, top)
        ax.text(1.5, top + 0.3, f"x[0, c={c}]", ha="center", va="bottom", fontsize=12)
        outline(ax, 1.0, top, 2.0, 2.0)  # the window at o = (0, 1)
    ax.text(1.5, -1.3, "window o = (0, 1)\noutlined in both channels", ha="center",
            va="top", fontsize=10)

    # the column matrix
    x0, top = 8.2, 8.2
    colors = [[sample_color[v] for v in row] for row in cols]
    draw_grid(ax, cols, colors, x0, top)
    for col, o in enumerate(np.ndindex(2, 2)):
        ax.text(x0 + col + 0.5, top + 0.15, f"o=\n({o[0]},{o[1]})", ha="center",
                va="bottom", fontsize=9)
    for row, (c, k1, k2) in enumerate(np.ndindex(2, 2, 2)):
        ax.text(x0 - 0.15, top - row - 0.5, f"c={c}, k=({k1},{k2})", ha="right",
                va="center", fontsize=10)
    outline(ax, x0 + 1, top, 1.0, 8.0)
    ax.text(x0 + 2, top + 1.1, "cols[0] = im2col(x)[0]   shape (C_in·K₁·K₂, O₁·O₂) = (8, 4)",
            ha="center", va="bottom", fontsize=12)
    ax.text(x0 + 2, -0.2,
            "row (c, k₁, k₂), column o:\ncols[(c, k), o] = x[c, o + k]  (S = D = 1, P = 0)",
            ha="center", va="top", fontsize=10)
    arrow(ax, (3.4, 3.6), (5.0, 3.6), "im2col")
    finish(fig, ax, "im2col.png", (-0.3, 13.0), (-2.3, 9.8))


# --------------------------------------------------------------------------
# zero_insertion.png
# --------------------------------------------------------------------------
def figure_zero_insertion():
    stride, kernel, pad = 2, 3, 1
    dy = np.arange(1.0, 10.0).reshape(3, 3)  # δ of one filter, (O, O) = (3, 3)
    z = zero_insert(dy[None, None], stride)[0, 0]  # (5, 5)
    before = after = (kernel - 1) - pad  # D·(K-1) - P_before; remainder R = 0 here
    zp = np.pad(z, ((before, after), (before, after)))  # (7, 7)
    color = {v: lighten(PALETTE[2 * (int(v) - 1) % 20]) for v in dy.ravel()}

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
    ax.text(1.5, -0.5, "grey: padding\nwhite: inserted zeros", ha="center", va="top",
            fontsize=10)
    finish(fig, ax, "zero_insertion.png", (-0.4, 20.4), (-2.6, 7.2))


# --------------------------------------------------------------------------
# backprop_kernel.png
# --------------------------------------------------------------------------
def figure_backprop_kernel():
    c_out, c_in, k = 2, 3, 3
    w = np.tile(np.arange(1.0, 10.0).reshape(3, 3), (c_out, c_in, 1, 1))  # every slice 1..9
    w_bp = backprop_kernel(w)  # (C_in, C_out, 3, 3)
    slice_color = {(f, c): lighten(PALETTE[2 * (3 * f + c) % 20], 0.35)
                   for f in range(c_out) for c in range(c_in)}

    fig, ax = plt.subplots(figsize=(13, 7.5))
    gap = k + 1.6
    top = 12.5
    # forward weight: rows f (filters), columns c (input channels)
    for f in range(c_out):
        for c in range(c_in):
            x0, y0 = c * (k + 1.2), top - f * (gap + 0.6)
            colors = [[slice_color[f, c]] * k for _ in range(k)]
            draw_grid(ax, w[f, c], colors, x0, y0, fmt="{:.0f}")
            ax.text(x0 + k / 2, y0 + 0.15, f"w[f={f}, c={c}]", ha="center", va="bottom",
                    fontsize=10)
    ax.text(1.5 * (k + 1.2) - 0.6, top + 1.4, "forward weight (C_out=2, C_in=3, 3, 3):\n"
            "2 filters of depth 3", ha="center", va="bottom", fontsize=12)

    # backprop kernel: rows c (new filters), columns f (new depth)
    x_start = 3 * (k + 1.2) + 3.0
    gap_right = k + 2.0
    for c in range(c_in):
        for f in range(c_out):
            x0, y0 = x_start + f * gap_right, top - c * (gap + 0.6)
            colors = [[slice_color[f, c]] * k for _ in range(k)]
            draw_grid(ax, w_bp[c, f], colors, x0, y0, fmt="{:.0f}")
            ax.text(x0 + k / 2, y0 + 0.15, f"kernel[c={c}, f={f}]\n= rot180(w[{f}, {c}])",
                    ha="center", va="bottom", fontsize=9)
    ax.text(x_start + gap_right - 1.0, top + 1.4,
            "kernel = backprop_kernel(w) (C_in=3, C_out=2, 3, 3):\n3 filters of depth 2",
            ha="center", va="bottom", fontsize=12)
    arrow(ax, (3 * (k + 1.2) - 0.9, top - 3.5), (x_start - 0.4, top - 3.5),
          "swap (f, c),\nrotate 180°")
    finish(fig, ax, "backprop_kernel.png", (-0.5, x_start + 2 * gap_right),
           (-2.0, top + 3.0))


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

    fig, ax = plt.subplots(figsize=(10, 5.4))
    # the input and the two windows
    draw_grid(ax, x[None], [[WHITE] * (size - 1) + [PADDING_GREY]], 2.0, 6.0, fmt="x[{:.0f}]",
              fontsize=9)
    for o, color in ((0, "tab:blue"), (1, "tab:orange")):
        outline(ax, 2.0 + o * stride + 0.06 * o, 6.0 + 0.08 * o, kernel - 0.12 * o, 1.0 + 0.16 * o,
                color=color)
    ax.text(2.0 + size / 2, 6.3, "forward: I = 6, K = 3, S = 2 → O = 2 windows",
            ha="center", va="bottom", fontsize=11)
    ax.text(2.0 + size + 0.2, 5.5, "← R = 1 sample\n   no window reads", ha="left",
            va="center", fontsize=9)

    # the backward input: zero-inserted, padded δ
    colors = [[lighten(PALETTE[0]) if v else (PADDING_GREY if (j < kernel - 1 or
               j >= kernel - 1 + z.size) else WHITE) for j, v in enumerate(zp)]]
    draw_grid(ax, zp[None], colors, 0.0, 3.5, fmt="{:g}")
    ax.text(4.0, 3.8, "zero_insert(δ = [1, 10], 2), padded: K−1 = 2 before, K−1 + R = 3 after",
            ha="center", va="bottom", fontsize=11)
    # the result
    colors = [[WHITE] * (size - 1) + [PADDING_GREY]]
    draw_grid(ax, dx[None], colors, 2.0, 1.2, fmt="{:g}")
    ax.text(2.0 + size / 2, -0.2, "dx = stride-1 conv with w flipped = [3, 2, 1]:\n"
            "the last sample gets 0", ha="center", va="top", fontsize=11)
    arrow(ax, (5.0, 2.4), (5.0, 1.3))
    finish(fig, ax, "remainder.png", (-0.3, 10.6), (-1.6, 7.4))


def main() -> int:
    os.makedirs(OUT, exist_ok=True)
    plt.rcParams.update({"font.family": "DejaVu Sans", "svg.hashsalt": "im2colbp"})
    figure_im2col()
    figure_zero_insertion()
    figure_backprop_kernel()
    figure_remainder()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
