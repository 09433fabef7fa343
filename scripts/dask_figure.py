#!/usr/bin/env python3
"""Draw ``docs/_static/dask_halos.png``: how im2colbp.dask cuts a strided, padded conv.

    python scripts/dask_figure.py        # needs matplotlib and dask

One spatial axis: I = 16 samples in chunks (5, 6, 5), kernel K = 3, stride S = 2,
padding (1, 1) in reflect mode. Every number is taken from im2colbp.dask itself: the
output chunks from ``ibd.conv(...).chunks``, the range each output chunk reads from the
module's own ``_read_ranges``, and the reflect border from ``_source_index``.

Rows, top to bottom: the padded input (chunks coloured; the border cells show the
sample they copy, with an arrow: in the input gradient their gradient folds back
there); the padded range each output chunk reads (overlaps are the halos); the output,
coloured by chunk, each sample under the start ``o·S`` of its window.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import dask.array as da  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import FancyArrowPatch, Rectangle  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import im2colbp.dask as ibd  # noqa: E402

OUT = ROOT / "docs" / "_static" / "dask_halos.png"
COLORS = [plt.get_cmap("tab10")(i) for i in (0, 2, 1, 4)]
GREY = (0.85, 0.85, 0.85, 1.0)


def light(color, amount=0.55):
    rgb = np.asarray(color[:3])
    return tuple(rgb + (1 - rgb) * amount) + (1.0,)


def main() -> int:
    size, chunks, kernel, stride, before, after = 16, (5, 6, 5), 3, 2, 1, 1
    x = da.zeros((1, 1, size), chunks=(1, 1, chunks))
    y = ibd.conv(x, np.ones((1, 1, kernel)), stride=stride, padding=((before, after),),
                 padding_mode="reflect")
    out_chunks = y.chunks[-1]
    starts = np.cumsum((0,) + out_chunks[:-1])
    out_ranges = [(int(s), int(s + n)) for s, n in zip(starts, out_chunks)]
    reads = ibd._read_ranges(out_ranges, stride, kernel)
    source = ibd._source_index(size, before, after, "reflect")
    chunk_of = np.repeat(np.arange(len(chunks)), chunks)

    fig, ax = plt.subplots(figsize=(11, 4.6), dpi=110)
    padded = size + before + after
    top, mid, low = 3.6, 2.0, 0.4
    # the padded input
    for p in range(padded):
        q = p - before
        inside = 0 <= q < size
        color = light(COLORS[chunk_of[q]]) if inside else GREY
        ax.add_patch(Rectangle((p, top), 1, 0.8, facecolor=color, edgecolor="black", lw=0.8))
        label = f"{q}" if inside else f"={source[p]}"
        ax.text(p + 0.5, top + 0.4, label, ha="center", va="center", fontsize=9)
    for p, q in ((0, source[0]), (padded - 1, source[padded - 1])):
        ax.add_patch(FancyArrowPatch((p + 0.5, top + 0.85), (q + before + 0.5, top + 0.85),
                                     connectionstyle="arc3,rad=-0.5", arrowstyle="-|>",
                                     mutation_scale=10, color="0.35", lw=1))
    ax.text(-0.4, top + 0.4, "padded x", ha="right", va="center", fontsize=10)
    # what each output chunk reads
    for index, (start, stop) in enumerate(reads):
        height = mid + 0.55 - 0.35 * index
        ax.add_patch(Rectangle((start, height), stop - start, 0.28,
                               facecolor=light(COLORS[index], 0.25), edgecolor="black", lw=0.8))
        ax.text(stop + 0.2, height + 0.14, f"reads [{start}, {stop}) of the padded axis",
                va="center", fontsize=8)
    ax.text(-0.4, mid + 0.2, "block reads", ha="right", va="center", fontsize=10)
    # the output, each sample under the start of its window
    for index, (o0, o1) in enumerate(out_ranges):
        for o in range(o0, o1):
            ax.add_patch(Rectangle((o * stride, low), 1, 0.8, facecolor=light(COLORS[index]),
                                   edgecolor="black", lw=0.8))
            ax.text(o * stride + 0.5, low + 0.4, f"{o}", ha="center", va="center", fontsize=9)
    ax.text(-0.4, low + 0.4, "y (at o·S)", ha="right", va="center", fontsize=10)
    ax.set_title(f"I = {size} in chunks {chunks}, K = {kernel}, S = {stride}, padding "
                 f"({before}, {after}) reflect: output chunks {tuple(out_chunks)}; output chunk "
                 "[o0, o1) reads [o0·S, (o1-1)·S + D·(K-1) + 1)", fontsize=9)
    ax.set_xlim(-3.2, padded + 9)
    ax.set_ylim(0, top + 1.6)
    ax.set_aspect("equal")
    ax.axis("off")
    fig.tight_layout()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(OUT, bbox_inches="tight", pad_inches=0.1)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
