"""The explorer page: its cells and links against the library's own convolutions.

The oracle for "which cells does this one reach" is the library computing on
one-hot inputs with all-ones weights (every term positive, so a structural
zero is a real zero): ``conv`` of a one-hot ``x`` is non-zero exactly on the
outputs that read it, ``conv_transpose`` of a one-hot input exactly where it
is stamped, and ``conv_operator`` of a one-hot weight names the sample each
tap of each window copies (padding modes included).
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

import im2colbp as ib
from im2colbp.explorer import MAX_CELLS, explorer_data, explorer_html, write_explorer

GEOMETRIES = [
    ((1, 3, 5, 5), (2, 3, 3, 3), dict(stride=2, padding=1)),
    ((1, 2, 7), (4, 1, 3), dict(stride=3, padding=((2, 1),), dilation=2, groups=2)),
    ((2, 2, 4, 5), (2, 2, 2, 3), dict(stride=(2, 1), padding=(1, 2), padding_mode="reflect")),
    ((1, 1, 4, 4), (1, 1, 3, 3), dict(padding=2, padding_mode="circular")),
    ((2, 5), (3, 2, 2), dict(padding="same", padding_mode="replicate")),
    ((1, 1, 2, 2, 3), (2, 1, 2, 1, 2), dict(padding=(1, 0, 1))),
]


def _grid(data, name):
    (grid,) = [g for g in data["grids"] if g["name"] == name]
    return grid


def _ids(data, name):
    grid = _grid(data, name)
    return range(grid["first"], grid["first"] + grid["count"])


def _local(data, name, ids):
    first = _grid(data, name)["first"]
    return sorted(i - first for i in ids if i in _ids(data, name))


def _conv_kwargs(kwargs):
    return {k: v for k, v in kwargs.items()}


@pytest.mark.parametrize("input_shape, weight_shape, kwargs", GEOMETRIES)
def test_sources_are_the_samples_im2col_copies(input_shape, weight_shape, kwargs):
    data = explorer_data(input_shape, weight_shape, **kwargs)
    sources = np.array(data["sources"])  # (C_in·∏K, ∏O)
    r = len(weight_shape) - 2
    c_in = input_shape[-r - 1]
    kernel = weight_shape[2:]
    per_sample = (c_in,) + tuple(input_shape[-r:])
    kvol = math.prod(kernel)
    groups = kwargs.get("groups", 1)
    for j in range(sources.shape[0]):
        c, k = divmod(j, kvol)
        w = np.zeros((1, 1) + kernel)  # one tap, one channel: conv reads exactly one sample
        w.flat[k] = 1.0
        geometry = {key: v for key, v in kwargs.items() if key != "groups"}
        T = ib.conv_operator(w, (1,) + per_sample[1:], **geometry).toarray()  # (∏O, ∏I)
        for o in range(sources.shape[1]):
            hits = np.flatnonzero(T[o])
            expected = -1 if hits.size == 0 else c * math.prod(per_sample[1:]) + int(hits[0])
            assert hits.size <= 1
            assert sources[j, o] == expected, (j, o, groups)
    # and X_col cells show those numbers
    cells = data["cells"]
    grid = _grid(data, "X_col")
    texts = [cells[i]["text"].rstrip("*") for i in _ids(data, "X_col")]
    assert texts == ["·" if s < 0 else str(s) for s in sources.ravel()]
    assert grid["shape"] == list(sources.shape)


@pytest.mark.parametrize("input_shape, weight_shape, kwargs", GEOMETRIES)
def test_forward_and_input_gradient_links_follow_conv(input_shape, weight_shape, kwargs):
    data = explorer_data(input_shape, weight_shape, **kwargs)
    r = len(weight_shape) - 2
    per_sample = (input_shape[-r - 1],) + tuple(input_shape[-r:])
    ones = np.ones(weight_shape)
    for i, cell in enumerate(_ids(data, "x")):
        x = np.zeros((1,) + per_sample)
        x.flat[i] = 1.0
        reached = np.flatnonzero(ib.conv(x, ones, **_conv_kwargs(kwargs))[0] > 0)
        forward = data["links"]["forward"][cell]
        assert _local(data, "y", forward[1]) == list(reached)       # x goes to these y
        backward = data["links"]["input gradient"][cell]
        assert _local(data, "δ", backward[0]) == list(reached)      # dx comes from these δ
        # every X_col entry that copies x[i], and only those
        copies = np.flatnonzero(np.array(data["sources"]).ravel() == i)
        assert _local(data, "X_col", forward[1]) == list(copies)
        assert _local(data, "X_col", backward[0]) == list(copies)
    for o, cell in enumerate(_ids(data, "y")):
        dy = np.zeros((1,) + tuple(_grid(data, "y")["shape"]))
        dy.flat[o] = 1.0
        read = np.flatnonzero(ib.conv_grad_input(dy, ones, (1,) + per_sample,
                                                 **_conv_kwargs(kwargs))[0] > 0)
        assert _local(data, "x", data["links"]["forward"][cell][0]) == list(read)
        f = o // math.prod(_grid(data, "y")["shape"][1:])
        assert _local(data, "W", data["links"]["forward"][cell][0]) == list(
            range(f * ones[0].size, (f + 1) * ones[0].size))
        assert _local(data, "b", data["links"]["forward"][cell][0]) == [f]


@pytest.mark.parametrize("input_shape, weight_shape, kwargs", GEOMETRIES)
def test_weight_gradient_links_follow_conv_grad_weight(input_shape, weight_shape, kwargs):
    data = explorer_data(input_shape, weight_shape, **kwargs)
    r = len(weight_shape) - 2
    per_sample = (input_shape[-r - 1],) + tuple(input_shape[-r:])
    out_shape = (1,) + tuple(_grid(data, "δ")["shape"])
    for i, cell in enumerate(_ids(data, "x")):
        x = np.zeros((1,) + per_sample)
        x.flat[i] = 1.0
        dw = ib.conv_grad_weight(np.ones(out_shape), x, weight_shape, **_conv_kwargs(kwargs))
        assert _local(data, "W", data["links"]["weight gradient"][cell][1]) == list(
            np.flatnonzero(dw > 0))
    for o, cell in enumerate(_ids(data, "δ")):
        dy = np.zeros(out_shape)
        dy.flat[o] = 1.0
        dw = ib.conv_grad_weight(dy, np.ones((1,) + per_sample), weight_shape,
                                 **_conv_kwargs(kwargs))
        to = data["links"]["weight gradient"][cell][1]
        # δ[f, o] reaches the whole row f of dW (padding reads included, as the GEMM does)
        f = o // math.prod(out_shape[2:])
        assert set(np.flatnonzero(dw > 0)) <= set(_local(data, "W", to))
        assert _local(data, "W", to) == list(range(f * dw[0].size, (f + 1) * dw[0].size))
        assert _local(data, "b", to) == [f]


@pytest.mark.parametrize("kwargs", [
    dict(stride=2, padding=1, output_padding=1),
    dict(stride=(2, 3), padding=((1, 0), (0, 2)), dilation=(1, 2), groups=2),
    dict(stride=2, padding=1, output_size=(6, 5)),
])
def test_transposed_links_follow_conv_transpose(kwargs):
    input_shape, weight_shape = (1, 2, 3, 3), (2, 2, 3, 2)
    data = explorer_data(input_shape, weight_shape, transposed=True, **kwargs)
    assert data["transposed"] and [g["name"] for g in data["grids"]][0] == "x"
    ones = np.ones(weight_shape)
    out_shape = (1,) + tuple(_grid(data, "y")["shape"])
    for i, cell in enumerate(_ids(data, "x")):
        x = np.zeros(input_shape)
        x.flat[i] = 1.0
        stamped = np.flatnonzero(ib.conv_transpose(x, ones, **kwargs)[0] > 0)
        assert _local(data, "y", data["links"]["forward"][cell][1]) == list(stamped)
        # input gradient of the transposed convolution: dx = conv(δ, w), so x[i] is computed
        # from the δ samples that are stamped onto by x[i]
        assert _local(data, "δ", data["links"]["input gradient"][cell][0]) == list(stamped)
    for i, cell in enumerate(_ids(data, "y")):
        assert _local(data, "b", data["links"]["forward"][cell][0]) == [
            i // math.prod(out_shape[2:])]
    assert _grid(data, "y")["shape"] == list(ib.conv_transpose(
        np.zeros(input_shape), ones, **kwargs).shape[1:])


def test_page_is_self_contained_and_carries_its_data(tmp_path):
    page = explorer_html((1, 3, 5, 5), (2, 3, 3, 3), stride=2, padding=1)
    assert "http" not in page and "src=" not in page and "<link" not in page
    payload = re.search(r'<script id="explorer-data" type="application/json">(.*?)</script>',
                        page, re.S).group(1)
    data = json.loads(payload.replace("<\\/", "</"))
    assert data == json.loads(json.dumps(explorer_data((1, 3, 5, 5), (2, 3, 3, 3), stride=2,
                                                       padding=1)))
    ids = [int(v) for v in re.findall(r'<td data-id="(\d+)"', page)]
    assert sorted(ids) == list(range(len(data["cells"])))
    # x 75, X_col 27·9, W 2·27, b 2, y 18, δ 18
    assert len(ids) == 75 + 243 + 54 + 2 + 18 + 18
    path = write_explorer(tmp_path / "page.html", (1, 3, 5, 5), (2, 3, 3, 3), stride=2,
                          padding=1)
    assert path == str(tmp_path / "page.html")
    assert (tmp_path / "page.html").read_text(encoding="utf-8") == page


def test_no_bias_draws_no_bias_grid():
    data = explorer_data((1, 1, 4), (1, 1, 2), bias=False)
    assert [g["name"] for g in data["grids"]] == ["x", "X_col", "W", "y", "δ"]


def test_cell_text_shows_the_index_arithmetic():
    data = explorer_data((1, 3, 5, 5), (2, 3, 3, 3), stride=2, padding=1)
    cell = data["cells"][_grid(data, "X_col")["first"] + 0 * 9 + 5]   # row (c=0, k=(0,0)), o=5
    assert "1·2+0·1 2·2+0·1 = (2,4)" in cell["info"] and "x[0, (1,3)]" in cell["info"]


@pytest.mark.parametrize("call, message", [
    (lambda: explorer_data((1, 64, 32, 32), (64, 64, 3, 3)), f"at most {MAX_CELLS} cells"),
    (lambda: explorer_data((1, 2, 5), (2, 2, 3), output_padding=1), "transposed=True"),
    (lambda: explorer_data((1, 3, 5), (2, 2, 3)), "C_in"),
    (lambda: explorer_data((1, 2, 5), (2, 2, 3), transposed=True, output_padding=3,
                           stride=2), "output_padding"),
    (lambda: explorer_data((1, 0, 5), (2, 0, 3)), "at least one input"),
])
def test_refusals_are_value_errors(call, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_bias_must_be_a_bool():
    with pytest.raises(TypeError, match="bias"):
        explorer_data((1, 1, 4), (1, 1, 2), bias=np.ones(1))


def test_committed_example_page_is_current():
    """docs/_static/explorer-example.html is what scripts/make_figures.py writes today."""
    from pathlib import Path

    page = Path(__file__).resolve().parent.parent / "docs" / "_static" / "explorer-example.html"
    expected = explorer_html((1, 3, 5, 5), (2, 3, 3, 3), stride=2, padding=1)
    assert page.read_text(encoding="utf-8") == expected, (
        "docs/_static/explorer-example.html is stale: run python scripts/make_figures.py")
