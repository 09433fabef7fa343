"""PyTorch as an oracle (optional: skipped when torch is not installed).

1. The convolution geometries PyTorch's own test suite exercises -- the Conv/ConvTranspose
   entries of ``module_tests``/``new_module_tests`` (torch/testing/_internal/common_nn.py,
   including the padding_mode variants), the conv/conv_transpose OpInfo sample inputs
   (common_methods_invocations.py, batched and unbatched) and the ModuleInfo inputs
   (common_modules.py) -- restated as a table here. For each, forward output and the input,
   weight and bias gradients of im2colbp are compared with torch autograd, in float64 and float32.
   ``im2col``/``col2im`` are compared with ``F.unfold``/``F.fold`` (OpInfo and module cases) and
   ``conv_transpose(output_size=...)`` with ``ConvTransposeNd.forward(x, output_size=...)``.
2. Inputs torch refuses (after its OpInfo ``error_inputs_conv*`` and the argument checks of
   ATen): im2colbp must refuse them too, with ValueError/TypeError raised by im2colbp itself and
   naming the argument. Where im2colbp's documented semantics deliberately go further than torch
   ('same' with stride > 1, circular padding wrapping more than once, padding modes and
   asymmetric padding for conv_transpose, integer inputs, wider output_size range), torch is
   shown to refuse and im2colbp is checked against a direct torch computation instead.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional
functional_call = torch.func.functional_call

import im2colbp as ib  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")

DTYPES = [pytest.param(np.float64, id="f64"), pytest.param(np.float32, id="f32")]


# ----------------------------------------------------------------------------------------------
# helpers: data, torch oracles, comparison
# ----------------------------------------------------------------------------------------------
def _data(shape, dtype=np.float64, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


def _arrays(x_shape, w_shape, bias, dtype, out_channels):
    x = _data(x_shape, dtype, 1)
    w = _data(w_shape, dtype, 2)
    b = _data((out_channels,), dtype, 3) if bias else None
    return x, w, b


def _has_pairs(padding):
    return isinstance(padding, (tuple, list)) and any(isinstance(p, (tuple, list)) for p in padding)


def _torch_pad_list(pairs):
    """(before, after) per axis -> F.pad's flat list, last axis first."""
    flat = []
    for before, after in reversed(pairs):
        flat += [before, after]
    return flat


_TORCH_MODE = {"zeros": "constant", "reflect": "reflect", "replicate": "replicate",
               "circular": "circular"}


def torch_conv(x, w, b, *, stride=1, padding=0, dilation=1, groups=1, padding_mode="zeros"):
    """torch's convolution, exactly as a user would call it."""
    r = w.dim() - 2
    if _has_pairs(padding):  # asymmetric: torch's way is F.pad then an unpadded convolution
        pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in padding]
        mode = _TORCH_MODE[padding_mode]
        x = F.pad(x, _torch_pad_list(pairs), mode=mode)
        padding = 0
    elif padding_mode != "zeros":  # the nn.ConvNd module applies padding_mode
        module = getattr(torch.nn, f"Conv{r}d")(
            w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=stride, padding=padding,
            dilation=dilation, groups=groups, bias=b is not None, padding_mode=padding_mode,
            dtype=w.dtype,
        )
        params = {"weight": w} if b is None else {"weight": w, "bias": b}
        return functional_call(module, params, (x,))
    conv = getattr(F, f"conv{r}d")
    return conv(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)


def torch_conv_transpose(x, w, b, *, stride=1, padding=0, output_padding=0, dilation=1,
                         groups=1, output_size=None):
    r = w.dim() - 2
    if output_size is not None:  # only the module has output_size
        module = getattr(torch.nn, f"ConvTranspose{r}d")(
            w.shape[0], w.shape[1] * groups, tuple(w.shape[2:]), stride=stride, padding=padding,
            output_padding=output_padding, groups=groups, bias=b is not None, dilation=dilation,
            dtype=w.dtype,
        )
        params = {"weight": w} if b is None else {"weight": w, "bias": b}
        return functional_call(module, params, (x,), {"output_size": list(output_size)})
    conv_t = getattr(F, f"conv_transpose{r}d")
    return conv_t(x, w, b, stride=stride, padding=padding, output_padding=output_padding,
                  groups=groups, dilation=dilation)


def torch_autograd(fn, arrays, seed=4):
    """Run ``fn`` on leaf tensors; return (y, dy, grads) as numpy (grads None for None inputs)."""
    leaves = [None if a is None else torch.tensor(a, requires_grad=True) for a in arrays]
    y = fn(*leaves)
    dy = _data(tuple(y.shape), arrays[0].dtype, seed)
    used = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(y, used, torch.tensor(dy), allow_unused=True))
    out = []
    for leaf in leaves:
        if leaf is None:
            out.append(None)
            continue
        g = next(grads)
        out.append(np.zeros(tuple(leaf.shape), leaf.detach().numpy().dtype) if g is None
                   else g.detach().numpy())
    return y.detach().numpy(), dy, out


def assert_matches(actual, expected, dtype, what):
    """float64: rtol 1e-10; float32: rtol 1e-4; atol scaled by the largest expected value."""
    assert actual is not None, what
    assert actual.dtype == np.dtype(dtype), f"{what}: dtype {actual.dtype}, expected {dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = max(1.0, float(np.abs(expected).max())) if expected.size else 1.0
    if np.dtype(dtype) == np.float64:
        rtol, atol = 1e-10, 1e-12 * scale
    else:
        rtol, atol = 1e-4, 2e-5 * scale
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def _t(a):
    return None if a is None else torch.tensor(a)


# ----------------------------------------------------------------------------------------------
# 1a. convolution: the configurations of PyTorch's test suite
# ----------------------------------------------------------------------------------------------
def C(case_id, x, w, bias=True, **kw):
    """A convolution case: input shape (batched or not), weight shape, bias?, keyword args."""
    return pytest.param(x, w, bias, kw, id=case_id)


CONV_CASES = [
    # common_nn.py module_tests / new_module_tests, Conv1d
    C("nn-Conv1d", (2, 4, 10), (5, 4, 3)),
    C("nn-Conv1d_stride", (2, 4, 10), (5, 4, 3), stride=2),
    C("nn-Conv1d_pad1", (2, 4, 10), (5, 4, 3), padding=1),
    C("nn-Conv1d_pad2", (2, 4, 10), (5, 4, 5), padding=2),
    C("nn-Conv1d_pad1size1", (1, 4, 1), (4, 4, 3), padding=1),
    C("nn-Conv1d_pad2size1", (1, 4, 1), (4, 4, 5), padding=2),
    C("nn-Conv1d_zero_batch", (0, 4, 10), (5, 4, 3)),
    C("nn-Conv1d_dilated", (2, 4, 10), (5, 4, 3), dilation=2),
    C("nn-Conv1d_groups", (2, 4, 6), (6, 2, 3), groups=2),
    C("nn-Conv1d_pad_valid", (2, 4, 10), (5, 4, 3), padding="valid"),
    C("nn-Conv1d_pad_same", (2, 4, 10), (5, 4, 3), padding="same"),
    C("nn-Conv1d_pad_same2", (2, 4, 10), (5, 4, 4), padding="same"),
    C("nn-Conv1d_pad_same_dilated", (2, 4, 10), (5, 4, 4), padding="same", dilation=2),
    # Conv2d
    C("nn-Conv2d", (2, 3, 7, 5), (4, 3, 3, 2)),
    C("nn-Conv2d_strided", (2, 3, 6, 6), (4, 3, 3, 3), stride=(2, 2)),
    C("nn-Conv2d_padding", (2, 3, 6, 6), (4, 3, 3, 3), stride=(2, 2), padding=(1, 1)),
    C("nn-Conv2d_dilated", (2, 3, 8, 8), (2, 3, 3, 3), stride=(2, 2), padding=(1, 1),
      dilation=(2, 2)),
    C("nn-Conv2d_no_bias", (2, 3, 6, 5), (4, 3, 3, 2), bias=False),
    C("nn-Conv2d_zero_batch", (0, 3, 7, 5), (4, 3, 3, 2)),
    C("nn-Conv2d_groups", (2, 4, 6, 5), (6, 2, 3, 2), groups=2),
    C("nn-Conv2d_pad_valid", (2, 2, 6, 5), (4, 2, 3, 4), padding="valid"),
    C("nn-Conv2d_pad_same", (2, 2, 6, 5), (4, 2, 3, 4), padding="same"),
    C("nn-Conv2d_pad_same_dilated", (2, 2, 6, 5), (4, 2, 3, 4), padding="same", dilation=2),
    C("nn-Conv2d_depthwise", (2, 4, 6, 6), (4, 1, 3, 3), groups=4),
    C("nn-Conv2d_depthwise_with_multiplier", (2, 4, 6, 6), (8, 1, 3, 3), groups=4),
    C("nn-Conv2d_depthwise_strided", (2, 4, 6, 6), (4, 1, 3, 3), stride=(2, 2), groups=4),
    C("nn-Conv2d_depthwise_padded", (2, 4, 6, 6), (4, 1, 3, 3), padding=(1, 1), groups=4),
    C("nn-Conv2d_depthwise_dilated", (2, 4, 5, 5), (4, 1, 2, 2), dilation=(2, 2), groups=4),
    # Conv3d
    C("nn-Conv3d", (1, 2, 4, 5, 4), (3, 2, 2, 3, 2)),
    C("nn-Conv3d_no_bias", (1, 2, 3, 4, 5), (3, 2, 2, 3, 4), bias=False),
    C("nn-Conv3d_1x1x1_no_bias", (1, 2, 3, 4, 5), (3, 2, 1, 1, 1), bias=False),
    C("nn-Conv3d_stride", (2, 3, 5, 5, 5), (4, 3, 2, 2, 2), stride=2),
    C("nn-Conv3d_stride_padding", (2, 3, 5, 5, 5), (4, 3, 2, 2, 2), stride=2, padding=1),
    C("nn-Conv3d_zero_batch", (0, 3, 3, 4, 5), (4, 3, 2, 3, 4)),
    C("nn-Conv3d_groups", (1, 2, 4, 5, 4), (4, 1, 3, 3, 3), groups=2),
    C("nn-Conv3d_dilated", (2, 3, 5, 5, 5), (4, 3, 2, 2, 2), dilation=2),
    C("nn-Conv3d_dilated_strided", (2, 3, 5, 5, 5), (4, 3, 2, 2, 2), dilation=2, stride=2),
    C("nn-Conv3d_pad_valid", (2, 3, 6, 5, 4), (4, 3, 2, 3, 4), padding="valid"),
    C("nn-Conv3d_pad_same", (2, 3, 6, 5, 4), (4, 3, 2, 3, 4), padding="same"),
    C("nn-Conv3d_pad_same_dilated", (2, 3, 6, 5, 4), (4, 3, 2, 3, 4), padding="same",
      dilation=2),
]
# new_module_tests' padding-mode loop: Conv{d}d(2, 3, 3, stride=2, padding=(1..d), mode) on 4^d
# (torch skips reflect for 3-D there; reflection_pad3d exists now, so it is included here)
for _mode in ("reflect", "circular", "replicate", "zeros"):
    for _d in (1, 2, 3):
        CONV_CASES.append(C(f"nn-Conv{_d}d_{_mode}_stride2_pad", (2, 2) + (4,) * _d,
                            (3, 2) + (3,) * _d, stride=2, padding=tuple(range(1, _d + 1)),
                            padding_mode=_mode))
# OpInfo sample inputs (common_methods_invocations.py); "-nobatch" = the unbatched variant
_OPINFO_CONV = [
    ("1d-a", (1, 3, 4), (3, 3, 3), True, dict(stride=(2,), padding=2, groups=1)),
    ("1d-b", (2, 4, 8), (2, 2, 3), True, dict(stride=3, padding=1, groups=2, dilation=2)),
    ("1d-valid", (1, 4, 5), (1, 4, 3), False, dict(stride=(2,), padding="valid")),
    ("1d-same-groups", (2, 2, 4), (2, 1, 4), True,
     dict(stride=(1,), padding="same", groups=2, dilation=(2,))),
    ("1d-defaults", (1, 4, 5), (3, 4, 3), False, {}),
    ("2d-a", (1, 3, 4, 4), (3, 3, 3, 3), True, dict(stride=(2, 2), padding=2, groups=1)),
    ("2d-b", (2, 4, 8, 8), (2, 2, 3, 3), True,
     dict(stride=(3, 2), padding=(2, 1), groups=2, dilation=(4, 4))),
    ("2d-c", (1, 4, 5, 5), (1, 4, 2, 3), True,
     dict(stride=2, padding=1, groups=1, dilation=(2, 3))),
    ("2d-d", (1, 2, 4, 3), (4, 2, 3, 4), False, dict(stride=2, padding=1, groups=1)),
    ("2d-valid", (1, 4, 5, 5), (1, 4, 2, 3), True, dict(stride=2, padding="valid")),
    ("2d-same-dil3", (1, 4, 5, 5), (1, 4, 2, 3), True, dict(stride=1, padding="same",
                                                          dilation=3)),
    ("2d-depthwise-s32", (2, 4, 6, 6), (4, 1, 3, 3), True, dict(groups=4, stride=(3, 2))),
    ("2d-defaults", (1, 4, 5, 5), (3, 4, 3, 3), False, {}),
    ("3d-1x1x1-same", (1, 1, 4, 4, 4), (1, 1, 1, 1, 1), True, dict(padding="same")),
    ("3d-full-kernel", (1, 1, 4, 4, 4), (1, 1, 4, 4, 4), True, dict(stride=(2, 2, 2))),
    ("3d-dil2", (1, 1, 5, 5, 5), (1, 1, 3, 3, 3), True, dict(dilation=2)),
    ("3d-valid", (1, 1, 1, 1, 10), (1, 1, 1, 1, 4), False, dict(padding="valid")),
    ("3d-same", (1, 1, 10, 11, 12), (1, 1, 1, 2, 5), False, dict(padding="same")),
    ("3d-same-dil2", (1, 1, 10, 11, 12), (1, 1, 1, 2, 5), False, dict(padding="same",
                                                                      dilation=2)),
    ("3d-same-dil3", (1, 1, 10, 11, 12), (1, 1, 4, 4, 4), False, dict(padding="same",
                                                                      dilation=3)),
    ("3d-groups", (3, 9, 3, 1, 9), (3, 3, 3, 1, 9), True, dict(groups=3)),
    ("3d-groups-s2", (3, 9, 3, 1, 9), (3, 3, 3, 1, 9), True,
     dict(stride=(2, 2, 2), dilation=1, groups=3)),
]
for _id, _x, _w, _b, _kw in _OPINFO_CONV:
    CONV_CASES.append(C(f"opinfo-{_id}", _x, _w, _b, **_kw))
    CONV_CASES.append(C(f"opinfo-{_id}-nobatch", _x[1:], _w, _b, **_kw))
# ModuleInfo inputs (common_modules.py): Conv{N}d(4, 5, 3) on (2, 4, 3, 4, 5)[:N+2], +'same'
for _n in (1, 2, 3):
    _x = (2, 4) + tuple(i + 3 for i in range(_n))
    for _pad in (0, "same"):
        CONV_CASES.append(C(f"module-Conv{_n}d{'-same' if _pad else ''}-nobatch", _x[1:],
                            (5, 4) + (3,) * _n, padding=_pad))
# padding forms torch reaches only through F.pad: (before, after) pairs, per mode
CONV_CASES += [
    C("pairs-1d-zeros", (2, 3, 7), (2, 3, 3), padding=((2, 0),), stride=2),
    C("pairs-2d-reflect", (1, 2, 5, 6), (4, 1, 3, 2), padding=((1, 2), (0, 3)),
      padding_mode="reflect", groups=2),
    C("pairs-2d-circular-nobatch", (2, 4, 5), (3, 2, 2, 3), padding=((3, 1), 2),
      padding_mode="circular", dilation=(1, 2)),
    C("pairs-3d-replicate", (1, 2, 3, 4, 3), (2, 1, 2, 2, 2), padding=((0, 2), (1, 1), (2, 0)),
      padding_mode="replicate", groups=2, stride=(1, 2, 1)),
]

# edges torch accepts: reflect padding size-1, circular padding == size, replicate far beyond
# the input, stride larger than the dilated kernel, padding modes on unbatched input, 'same'
# (asymmetric split) and 'valid' combined with padding modes
CONV_CASES += [
    C("edge-reflect-pad-size-minus-1", (2, 2, 3), (2, 2, 3), padding=2, padding_mode="reflect"),
    C("edge-circular-pad-equal-size", (1, 2, 3, 2), (2, 2, 2, 3), padding=(3, 2),
      padding_mode="circular"),
    C("edge-replicate-pad-beyond-size", (1, 1, 2), (2, 1, 3), padding=5,
      padding_mode="replicate"),
    C("edge-stride-beyond-kernel", (2, 2, 11), (3, 2, 2), stride=5, dilation=2),
    C("edge-reflect-nobatch-2d", (2, 4, 5), (3, 2, 3, 3), padding=(1, 2), stride=(1, 2),
      padding_mode="reflect"),
    C("edge-same-replicate-even-kernel-groups", (1, 4, 6, 5), (6, 2, 4, 2), padding="same",
      dilation=(1, 3), groups=2, padding_mode="replicate"),
    C("edge-same-circular-1d", (2, 3, 7), (2, 3, 4), padding="same", padding_mode="circular"),
    C("edge-valid-reflect-3d", (1, 2, 4, 3, 5), (2, 2, 2, 2, 2), padding="valid",
      padding_mode="reflect"),
]

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, bias, kw", CONV_CASES)
def test_conv_matches_torch(x_shape, w_shape, bias, kw, dtype):
    x, w, b = _arrays(x_shape, w_shape, bias, dtype, w_shape[0])
    originals = [None if a is None else a.copy() for a in (x, w, b)]
    y_t, dy, (dx_t, dw_t, db_t) = torch_autograd(
        lambda xt, wt, bt: torch_conv(xt, wt, bt, **kw), [x, w, b])

    y, ctx = ib.conv_forward(x, w, b, **kw)
    assert_matches(y, y_t, dtype, "forward")
    assert_matches(ib.conv(x, w, b, **kw), y_t, dtype, "conv")
    grads = ib.conv_backward(dy, ctx)
    assert_matches(grads.input, dx_t, dtype, "grad input")
    assert_matches(grads.weight, dw_t, dtype, "grad weight")
    if bias:
        assert_matches(grads.bias, db_t, dtype, "grad bias")
    else:
        assert grads.bias is None
    # the stand-alone gradient functions agree with torch too
    assert_matches(ib.conv_grad_input(dy, w, x.shape, **kw), dx_t, dtype, "conv_grad_input")
    assert_matches(ib.conv_grad_weight(dy, x, w.shape, **kw), dw_t, dtype, "conv_grad_weight")
    if bias:
        dyb = dy if len(x_shape) == len(w_shape) else dy[None]
        assert_matches(ib.conv_grad_bias(dyb), db_t, dtype, "conv_grad_bias")
    for before, after in zip(originals, (x, w, b)):
        if before is not None:
            np.testing.assert_array_equal(after, before)  # inputs are never modified


# ----------------------------------------------------------------------------------------------
# 1b. transposed convolution
# ----------------------------------------------------------------------------------------------
CONVT_CASES = [
    # common_nn.py
    C("nn-ConvTranspose1d", (1, 3, 7), (3, 4, 3), stride=(3,), padding=1, output_padding=(1,)),
    C("nn-ConvTranspose1d_no_bias", (1, 3, 6), (3, 4, 3), bias=False, stride=2, padding=1,
      output_padding=1),
    C("nn-ConvTranspose1d_dilated", (1, 3, 6), (3, 4, 3), stride=2, padding=1, output_padding=1,
      dilation=2),
    C("nn-ConvTranspose1d_groups", (2, 4, 7), (4, 3, 3), stride=(3,), padding=1,
      output_padding=(1,), groups=2),
    C("nn-ConvTranspose2d", (1, 3, 7, 6), (3, 4, 3, 3), stride=(3, 2), padding=1,
      output_padding=(1, 1)),
    C("nn-ConvTranspose2d_dilated", (1, 3, 6, 7), (3, 4, 3, 3), bias=False, stride=(2, 3),
      padding=1, output_padding=(1, 1), dilation=(2, 2)),
    C("nn-ConvTranspose2d_no_bias", (1, 3, 6, 7), (3, 4, 3, 3), bias=False, stride=(2, 3),
      padding=1, output_padding=(1, 1)),
    C("nn-ConvTranspose2d_groups", (1, 2, 4, 5), (2, 2, 2, 3), groups=2),
    C("nn-ConvTranspose3d", (1, 2, 4, 5, 4), (2, 3, 2, 3, 2)),
    C("nn-ConvTranspose3d_dilated", (1, 2, 4, 5, 4), (2, 3, 2, 3, 2), dilation=(2, 2, 2)),
    C("zero_batch-ConvTranspose2d", (0, 3, 4, 4), (3, 2, 3, 3), stride=2, output_padding=1),
]
_OPINFO_CONVT = [
    ("1d-a", (1, 3, 4), (3, 3, 3), True,
     dict(stride=(2,), padding=2, output_padding=(1,), groups=1)),
    ("1d-b", (2, 2, 4), (2, 2, 4), True,
     dict(stride=(3,), padding=(1,), output_padding=(2,), groups=2, dilation=(4,))),
    ("1d-c", (1, 1, 4), (1, 1, 4), True,
     dict(stride=2, padding=1, output_padding=1, groups=1, dilation=(2,))),
    ("1d-d", (1, 1, 4), (1, 2, 3), False, dict(stride=2, padding=1, output_padding=1, groups=1)),
    ("1d-defaults", (1, 4, 5), (4, 8, 3), False, {}),
    ("2d-a", (1, 3, 4, 4), (3, 3, 3, 3), True,
     dict(stride=(2, 2), padding=2, output_padding=(1, 1), groups=1)),
    ("2d-b", (2, 2, 4, 4), (2, 2, 4, 5), True,
     dict(stride=(3, 2), padding=(1, 2), output_padding=(2, 3), groups=2, dilation=(4, 4))),
    ("2d-c", (1, 1, 4, 5), (1, 1, 4, 3), True,
     dict(stride=2, padding=1, output_padding=1, groups=1, dilation=(2, 3))),
    ("2d-d", (1, 1, 4, 3), (1, 2, 3, 4), False,
     dict(stride=2, padding=1, output_padding=1, groups=1)),
    ("2d-depthwise", (2, 4, 4, 4), (4, 1, 3, 3), False, dict(groups=4)),
    ("2d-defaults", (1, 2, 5, 5), (2, 4, 3, 3), False, {}),
    ("3d-a", (1, 3, 4, 4, 4), (3, 3, 3, 3, 3), True,
     dict(stride=(2, 2, 2), padding=2, output_padding=(1, 1, 1), groups=1)),
    ("3d-b", (2, 2, 4, 4, 4), (2, 2, 4, 5, 6), True,
     dict(stride=(3, 2, 1), padding=(1, 2, 3), output_padding=(2, 3, 1), groups=2,
          dilation=(4, 4, 4))),
    ("3d-c", (1, 1, 4, 5, 2), (1, 1, 4, 3, 1), True,
     dict(stride=2, padding=1, output_padding=1, groups=1, dilation=(2, 3, 2))),
    ("3d-d", (1, 1, 4, 3, 4), (1, 2, 3, 4, 5), False,
     dict(stride=2, padding=1, output_padding=1, groups=1)),
    ("3d-defaults", (1, 4, 5, 5, 5), (4, 8, 3, 3, 3), False, {}),
]
for _id, _x, _w, _b, _kw in _OPINFO_CONVT:
    CONVT_CASES.append(C(f"opinfo-{_id}", _x, _w, _b, **_kw))
    CONVT_CASES.append(C(f"opinfo-{_id}-nobatch", _x[1:], _w, _b, **_kw))
for _n in (1, 2, 3):  # ModuleInfo: ConvTranspose{N}d(4, 5, 3), batched and not
    _x = (2, 4) + tuple(i + 3 for i in range(_n))
    CONVT_CASES.append(C(f"module-ConvTranspose{_n}d", _x, (4, 5) + (3,) * _n))
    CONVT_CASES.append(C(f"module-ConvTranspose{_n}d-nobatch", _x[1:], (4, 5) + (3,) * _n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("x_shape, w_shape, bias, kw", CONVT_CASES)
def test_conv_transpose_matches_torch(x_shape, w_shape, bias, kw, dtype):
    groups = kw.get("groups", 1)
    x, w, b = _arrays(x_shape, w_shape, bias, dtype, w_shape[1] * groups)
    y_t, dy, (dx_t, dw_t, db_t) = torch_autograd(
        lambda xt, wt, bt: torch_conv_transpose(xt, wt, bt, **kw), [x, w, b])

    y, ctx = ib.conv_transpose_forward(x, w, b, **kw)
    assert_matches(y, y_t, dtype, "forward")
    assert_matches(ib.conv_transpose(x, w, b, **kw), y_t, dtype, "conv_transpose")
    grads = ib.conv_transpose_backward(dy, ctx)
    assert_matches(grads.input, dx_t, dtype, "grad input")
    assert_matches(grads.weight, dw_t, dtype, "grad weight")
    if bias:
        assert_matches(grads.bias, db_t, dtype, "grad bias")
    else:
        assert grads.bias is None


# ConvTransposeNd.forward(x, output_size=...): x shape, weight shape, module kwargs, output_size
OUTPUT_SIZE_CASES = [
    C("2d-min", (1, 4, 5, 5), (4, 2, 3, 3), stride=2, padding=1, output_size=(9, 9)),
    C("2d-max", (1, 4, 5, 5), (4, 2, 3, 3), stride=2, padding=1, output_size=(10, 10)),
    C("2d-mixed", (1, 4, 5, 5), (4, 2, 3, 3), stride=2, padding=1, output_size=(9, 10)),
    C("2d-full-shape", (1, 4, 5, 5), (4, 2, 3, 3), stride=2, padding=1,
      output_size=(1, 2, 10, 9)),
    C("2d-groups-nobatch-full-shape", (4, 5, 5), (4, 1, 3, 3), stride=(2, 3), groups=2,
      output_size=(2, 12, 16)),
    C("1d-stride3", (2, 3, 4), (3, 4, 3), stride=3, padding=1, output_size=(12,)),
    C("1d-stride3-mid", (2, 3, 4), (3, 4, 3), bias=False, stride=3, padding=1,
      output_size=(11,)),
    C("1d-dilated", (2, 3, 4), (3, 4, 3), stride=2, dilation=2, output_size=(12,)),
    C("3d", (1, 2, 3, 3, 3), (2, 3, 2, 2, 2), stride=(2, 1, 3), output_size=(7, 4, 9)),
]


@pytest.mark.parametrize("x_shape, w_shape, bias, kw", OUTPUT_SIZE_CASES)
def test_conv_transpose_output_size_matches_torch_module(x_shape, w_shape, bias, kw):
    groups = kw.get("groups", 1)
    x, w, b = _arrays(x_shape, w_shape, bias, np.float64, w_shape[1] * groups)
    y_t, dy, (dx_t, dw_t, db_t) = torch_autograd(
        lambda xt, wt, bt: torch_conv_transpose(xt, wt, bt, **kw), [x, w, b])
    r = w.ndim - 2
    assert y_t.shape[-r:] == tuple(kw["output_size"])[-r:]
    y, ctx = ib.conv_transpose_forward(x, w, b, **kw)
    assert_matches(y, y_t, np.float64, "forward")
    grads = ib.conv_transpose_backward(dy, ctx)
    assert_matches(grads.input, dx_t, np.float64, "grad input")
    assert_matches(grads.weight, dw_t, np.float64, "grad weight")
    if bias:
        assert_matches(grads.bias, db_t, np.float64, "grad bias")


# ----------------------------------------------------------------------------------------------
# 1c. im2col / col2im against F.unfold / F.fold (2-D, which is what torch supports)
# ----------------------------------------------------------------------------------------------
_UNFOLD_KERNELS = (2, (2, 2), (2, 3))
_UNFOLD_DILATIONS = (1, 2, (1, 2))
_UNFOLD_PADDINGS = (0, 1, (1, 2))
_UNFOLD_STRIDES = (1, 2, (1, 2))


def _kid(v):
    return "x".join(map(str, v)) if isinstance(v, tuple) else str(v)


@pytest.mark.parametrize("dilation", _UNFOLD_DILATIONS, ids=lambda v: f"d{_kid(v)}")
@pytest.mark.parametrize("kernel_size", _UNFOLD_KERNELS, ids=lambda v: f"k{_kid(v)}")
def test_im2col_col2im_match_unfold_fold_opinfo_grid(kernel_size, dilation):
    """OpInfo nn.functional.unfold grid: shapes x kernels x dilations x paddings x strides."""
    for shape in ((0, 1, 5, 5), (2, 3, 5, 5)):
        for padding in _UNFOLD_PADDINGS:
            for stride in _UNFOLD_STRIDES:
                geo = dict(stride=stride, padding=padding, dilation=dilation)
                where = f"shape={shape} padding={padding} stride={stride}"
                x = _data(shape)
                expected = F.unfold(torch.tensor(x), kernel_size, **geo).numpy()
                cols = ib.im2col(x, kernel_size, **geo)
                assert_matches(cols, expected, np.float64, f"im2col {where}")
                c = _data(expected.shape, seed=7)
                folded = F.fold(torch.tensor(c), shape[2:], kernel_size, **geo).numpy()
                assert_matches(ib.col2im(c, shape[2:], kernel_size, **geo), folded, np.float64,
                               f"col2im {where}")


FOLD_MODULE_CASES = [  # common_nn.py Unfold / Fold entries, plus unbatched and float32 variants
    pytest.param("unfold", (2, 4, 3, 3), dict(kernel_size=(2, 2), dilation=(1, 1),
                                              padding=(0, 0), stride=(1, 1)), id="Unfold"),
    pytest.param("unfold", (2, 4, 3, 3), dict(kernel_size=2, dilation=1, padding=0, stride=1),
                 id="Unfold_int_input"),
    pytest.param("unfold", (4, 3, 3), dict(kernel_size=(2, 2)), id="Unfold_no_batch_dim"),
    pytest.param("unfold", (2, 3, 7, 6), dict(kernel_size=(3, 2), dilation=(2, 1),
                                              padding=(2, 1), stride=(3, 2)),
                 id="Unfold_all_tuples"),
    pytest.param("fold", (2, 16, 4), dict(output_size=(3, 3), kernel_size=(2, 2),
                                          dilation=(1, 1), padding=(0, 0), stride=(1, 1)),
                 id="Fold"),
    pytest.param("fold", (16, 4), dict(output_size=(3, 3), kernel_size=(2, 2)),
                 id="Fold_no_batch_dim_input"),
    pytest.param("fold", (2, 16, 4), dict(output_size=3, kernel_size=2, dilation=1, padding=0,
                                          stride=1), id="Fold_int_input"),
    pytest.param("fold", (16, 4), dict(output_size=3, kernel_size=2, dilation=1, padding=0,
                                       stride=1), id="Fold_no_batch_dim_int_input"),
    pytest.param("fold", (1, 12, 12), dict(output_size=(7, 6), kernel_size=(3, 2),
                                           dilation=(2, 1), padding=(2, 1), stride=(3, 2)),
                 id="Fold_all_tuples"),
]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("op, shape, kw", FOLD_MODULE_CASES)
def test_unfold_fold_module_cases(op, shape, kw, dtype):
    a = _data(shape, dtype)
    kw = dict(kw)
    if op == "unfold":
        expected = torch.nn.Unfold(**kw)(torch.tensor(a)).numpy()
        kernel = kw.pop("kernel_size")
        if isinstance(kernel, int) and len(shape) == 3:
            kernel = (kernel, kernel)
        assert_matches(ib.im2col(a, kernel, **kw), expected, dtype, "im2col")
    else:
        expected = torch.nn.Fold(**kw)(torch.tensor(a)).numpy()
        out = kw.pop("output_size")
        out = (out, out) if isinstance(out, int) else out
        kernel = kw.pop("kernel_size")
        assert_matches(ib.col2im(a, out, kernel, **kw), expected, dtype, "col2im")


# ----------------------------------------------------------------------------------------------
# 2a. inputs torch refuses: im2colbp refuses them too, naming the argument
# ----------------------------------------------------------------------------------------------
def E(case_id, op, x, w=None, bias=None, match="", **kw):
    return pytest.param(op, x, w, bias, match, kw, id=case_id)


ERROR_CASES = [
    # OpInfo error_inputs_conv1d/2d/3d, verbatim. Some carry two faults (the weight expects 2
    # input channels as well as the bad stride/padding): torch names the first it checks, we
    # may name the other, so either name is accepted; the single-fault variants follow.
    E("conv1d-negative-stride", "conv", (1, 1, 4), (1, 2, 2), (1,), "stride|C_in",
      stride=(-1,)),
    E("conv1d-negative-stride-only", "conv", (1, 1, 4), (1, 1, 2), (1,), "stride",
      stride=(-1,)),
    E("conv1d-negative-padding", "conv", (1, 1, 4), (1, 2, 2), (1,), "padding|C_in",
      padding=(-1,)),
    E("conv1d-negative-padding-only", "conv", (1, 1, 4), (1, 1, 2), (1,), "padding",
      padding=(-1,)),
    E("conv1d-negative-dilation", "conv", (1, 1, 4), (1, 1, 2), (1,), "dilation",
      dilation=(-1,)),
    E("conv1d-weight-rank2", "conv", (1, 1, 4), (1, 2), (1,), "weight"),
    E("conv1d-groups3-same", "conv", (2, 2, 4), (2, 2, 2), (2,), "groups", padding="same",
      groups=3),
    E("conv1d-groups3", "conv", (2, 2, 4), (2, 2, 2), (2,), "groups", groups=3),
    E("conv1d-groups-negative", "conv", (2, 2, 4), (2, 2, 2), (2,), "groups", padding="same",
      groups=-1),
    E("conv1d-groups0", "conv", (2, 2, 4), (2, 2, 2), (2,), "groups", padding="same", groups=0),
    E("conv2d-negative-stride", "conv", (1, 1, 4, 4), (1, 2, 2, 3), (1,), "stride|C_in",
      stride=(-1,)),
    E("conv2d-negative-stride-only", "conv", (1, 1, 4, 4), (1, 1, 2, 3), (1,), "stride",
      stride=(1, -1)),
    E("conv3d-negative-padding-only", "conv", (1, 1, 4, 4, 4), (1, 1, 2, 2, 2), (1,), "padding",
      padding=(0, -1, 0)),
    E("conv3d-negative-dilation-only", "conv", (1, 1, 4, 4, 4), (1, 1, 2, 2, 2), (1,),
      "dilation", dilation=-1),
    E("conv2d-input-3d-for-1d-weight", "conv", (1, 1, 4, 3), (1, 2, 2), (1,), "input",
      padding="same"),
    E("conv2d-groups3", "conv", (2, 2, 4, 3), (2, 2, 1, 3), (2,), "groups", groups=3),
    E("conv2d-groups0-same", "conv", (2, 2, 4, 3), (2, 2, 4, 3), (2,), "groups",
      padding="same", groups=0),
    E("conv3d-input-rank", "conv", (1, 1, 3, 4, 5), (1, 1, 4, 3), (1,), "input",
      padding="same"),
    E("conv3d-groups3", "conv", (2, 2, 3, 4, 5), (2, 2, 4, 3, 3), (2,), "groups", groups=3),
    E("conv1d-complex-bias", "conv", (1, 1, 4), (1, 1, 2), "complex", "complex|bias"),
    E("conv1d-complex-input", "conv", "complex", (1, 1, 2), None, "complex|x"),
    # the argument checks of ATen / torch.nn
    E("conv1d-input-rank5", "conv", (1, 1, 4, 4, 4), (1, 1, 3), None, "input"),
    E("conv2d-input-rank1", "conv", (4,), (1, 1, 3, 3), None, "input"),
    E("conv1d-channel-mismatch", "conv", (1, 3, 5), (2, 4, 3), None, "C_in|channel"),
    E("conv1d-groups-not-dividing-input", "conv", (1, 3, 5), (4, 1, 3), None, "groups|C_in",
      groups=2),
    E("conv1d-stride0", "conv", (1, 1, 4), (1, 1, 3), None, "stride", stride=0),
    E("conv1d-stride-length2", "conv", (1, 1, 4), (1, 1, 3), None, "stride", stride=(1, 1)),
    E("conv2d-padding-length3", "conv", (1, 1, 4, 4), (1, 1, 3, 3), None, "padding",
      padding=(1, 1, 1)),
    E("conv1d-dilation0", "conv", (1, 1, 4), (1, 1, 3), None, "dilation", dilation=0),
    E("conv1d-kernel-larger-than-input", "conv", (1, 1, 3), (1, 1, 5), None, "kernel"),
    E("conv2d-kernel-larger-than-padded", "conv", (1, 1, 3, 6), (1, 1, 6, 3), None, "kernel",
      padding=1),
    E("conv1d-dilated-kernel-larger", "conv", (1, 1, 5), (1, 1, 3), None, "kernel", dilation=3),
    E("conv1d-kernel-size0", "conv", (1, 1, 4), (1, 1, 0), None, "kernel_size"),
    E("conv1d-spatial-size0", "conv", (1, 1, 0), (1, 1, 3), None, "spatial size|input"),
    E("conv1d-bias-too-long", "conv", (1, 1, 4), (1, 1, 3), (2,), "bias"),
    E("conv1d-bias-2d", "conv", (1, 1, 4), (1, 1, 3), (1, 1), "bias"),
    E("conv1d-bias-scalar", "conv", (1, 1, 4), (1, 1, 3), (), "bias"),
    E("conv1d-padding-string-full", "conv", (1, 1, 4), (1, 1, 3), None, "padding",
      padding="full"),
    E("conv1d-padding-mode-unknown", "conv", (1, 1, 4), (1, 1, 3), None, "padding_mode",
      padding=1, padding_mode="foo"),
    E("conv1d-reflect-pad-equal-size", "conv", (1, 1, 3), (1, 1, 3), None, "reflect|padding",
      padding=3, padding_mode="reflect"),
    E("conv2d-reflect-pad-larger-on-axis0", "conv", (1, 1, 2, 6), (1, 1, 3, 3), None,
      "reflect|padding", padding=(2, 1), padding_mode="reflect"),
    E("conv1d-backward-dy-shape", "conv_backward", (1, 1, 4), (1, 1, 3), None, "dy",
      dy=(1, 1, 3)),
    # transposed convolution
    E("convT1d-same", "convT", (1, 1, 4), (1, 1, 3), None, "padding", padding="same"),
    E("convT1d-padding-string-full", "convT", (1, 1, 4), (1, 1, 3), None, "padding",
      padding="full"),
    E("convT1d-output-padding-eq-stride", "convT", (1, 1, 4), (1, 1, 3), None,
      "output_padding", stride=2, output_padding=2),
    E("convT1d-output-padding-eq-dilation", "convT", (1, 1, 4), (1, 1, 3), None,
      "output_padding", dilation=3, output_padding=3),
    E("convT1d-output-padding-negative", "convT", (1, 1, 4), (1, 1, 3), None, "output_padding",
      stride=2, output_padding=-1),
    E("convT2d-output-padding-axis1", "convT", (1, 1, 4, 4), (1, 1, 3, 3), None,
      "output_padding", stride=(3, 2), output_padding=(2, 2)),
    E("convT1d-channel-mismatch", "convT", (1, 3, 5), (4, 2, 3), None, "weight|C_in"),
    E("convT1d-groups-not-dividing", "convT", (1, 3, 5), (3, 2, 3), None, "groups",
      groups=2),
    E("convT1d-groups0", "convT", (1, 2, 5), (2, 2, 3), None, "groups", groups=0),
    E("convT1d-stride0", "convT", (1, 1, 4), (1, 1, 3), None, "stride", stride=0),
    E("convT1d-negative-padding", "convT", (1, 1, 4), (1, 1, 3), None, "padding", padding=-1),
    E("convT1d-dilation0", "convT", (1, 1, 4), (1, 1, 3), None, "dilation", dilation=0),
    E("convT1d-output-too-small", "convT", (1, 1, 1), (1, 1, 1), None,
      "output size.*padding", padding=1),
    E("convT1d-bias-shape", "convT", (1, 2, 4), (2, 3, 3), (2,), "bias"),
    E("convT1d-input-rank4", "convT", (1, 1, 4, 4), (1, 1, 3), None, "input"),
    E("convT1d-spatial-size0", "convT", (1, 1, 0), (1, 1, 3), None, "spatial size|input"),
    E("convT2d-output-size-too-large", "convT", (1, 4, 5, 5), (4, 2, 3, 3), None, "output_size",
      stride=2, padding=1, output_size=(11, 10)),
    E("convT2d-output-size-too-small", "convT", (1, 4, 5, 5), (4, 2, 3, 3), None, "output_size",
      stride=2, padding=1, output_size=(9, 8)),
    E("convT2d-output-size-length", "convT", (1, 4, 5, 5), (4, 2, 3, 3), None, "output_size",
      stride=2, padding=1, output_size=(10,)),
    E("convT1d-backward-dy-shape", "convT_backward", (1, 1, 4), (1, 1, 3), None, "dy",
      dy=(1, 1, 5)),
    # unfold / fold
    E("unfold-kernel-larger", "unfold", (1, 1, 3, 3), None, None, "kernel", kernel_size=4),
    E("unfold-dilated-kernel-larger", "unfold", (1, 1, 5, 5), None, None, "kernel",
      kernel_size=3, dilation=(1, 3)),
    E("unfold-stride0", "unfold", (1, 1, 3, 3), None, None, "stride", kernel_size=2, stride=0),
    E("unfold-negative-padding", "unfold", (1, 1, 3, 3), None, None, "padding", kernel_size=2,
      padding=-1),
    E("unfold-dilation0", "unfold", (1, 1, 3, 3), None, None, "dilation", kernel_size=2,
      dilation=0),
    E("fold-wrong-L", "fold", (1, 4, 5), None, None, "cols|columns", output_size=(3, 3),
      kernel_size=2),
    E("fold-rows-not-multiple", "fold", (1, 5, 4), None, None, "cols|rows", output_size=(3, 3),
      kernel_size=2),
    E("fold-kernel-larger", "fold", (1, 16, 1), None, None, "kernel", output_size=(3, 3),
      kernel_size=4),
    E("fold-stride0", "fold", (1, 4, 4), None, None, "stride", output_size=(3, 3),
      kernel_size=2, stride=0),
]


def _error_operands(x, w, bias):
    def make(spec, seed):
        if spec is None:
            return None
        if spec == "complex":
            return (_data((1, 1, 4), seed=seed) + 1j).astype(np.complex128) if seed == 1 else \
                np.ones(1, np.complex128)
        return _data(spec, seed=seed)
    return make(x, 1), make(w, 2), make(bias, 3)


def _run_error_case(lib, op, x, w, b, kw):
    """Call torch (lib='torch') or im2colbp (lib='ib') on the same bad input."""
    kw = dict(kw)
    if lib == "torch":
        x, w, b = _t(x), _t(w), _t(b)
    if op == "conv":
        return torch_conv(x, w, b, **kw) if lib == "torch" else ib.conv(x, w, b, **kw)
    if op == "convT":
        if lib == "torch":
            return torch_conv_transpose(x, w, b, **kw)
        return ib.conv_transpose(x, w, b, **kw)
    if op in ("conv_backward", "convT_backward"):
        dy = _data(kw.pop("dy"), seed=5)
        if lib == "torch":
            x.requires_grad_(True)
            fn = torch_conv if op == "conv_backward" else torch_conv_transpose
            return fn(x, w, b, **kw).backward(torch.tensor(dy))
        if op == "conv_backward":
            return ib.conv_backward(dy, ib.conv_forward(x, w, b, **kw)[1])
        return ib.conv_transpose_backward(dy, ib.conv_transpose_forward(x, w, b, **kw)[1])
    if op == "unfold":
        kernel = kw.pop("kernel_size")
        if lib == "torch":
            return F.unfold(x, kernel, **kw)
        return ib.im2col(x, kernel, **kw)
    if op == "fold":
        out, kernel = kw.pop("output_size"), kw.pop("kernel_size")
        if lib == "torch":
            return F.fold(x, out, kernel, **kw)
        return ib.col2im(x, out, kernel, **kw)
    raise AssertionError(op)


@pytest.mark.parametrize("op, x_spec, w_spec, b_spec, match, kw", ERROR_CASES)
def test_bad_input_refused_like_torch(op, x_spec, w_spec, b_spec, match, kw):
    x, w, b = _error_operands(x_spec, w_spec, b_spec)
    with pytest.raises(Exception):  # noqa: B017 - torch's exception types vary
        _run_error_case("torch", op, x, w, b, kw)
    with pytest.raises((ValueError, TypeError)) as info:
        _run_error_case("ib", op, x, w, b, kw)
    assert re.search(match, str(info.value), re.IGNORECASE), \
        f"message does not name {match!r}: {info.value}"
    # raised by im2colbp's own checks, not from inside NumPy
    assert "im2colbp" in str(info.traceback[-1].path), info.traceback[-1]


# ----------------------------------------------------------------------------------------------
# 2b. documented differences: torch refuses, im2colbp defines the result
# ----------------------------------------------------------------------------------------------
def _tf_same_pairs(in_size, kernel, stride, dilation):
    """TensorFlow/JAX 'same': O = ceil(I/S), total padding split before = total // 2."""
    pairs = []
    for i, k, s, d in zip(in_size, kernel, stride, dilation):
        total = max((math.ceil(i / s) - 1) * s + d * (k - 1) + 1 - i, 0)
        pairs.append((total // 2, total - total // 2))
    return pairs


SAME_STRIDED_CASES = [
    C("1d-k3-s2", (2, 3, 10), (4, 3, 3), stride=2),
    C("1d-k4-s3-odd", (1, 2, 7), (2, 2, 4), stride=3),
    C("1d-k1-s2", (1, 2, 7), (2, 2, 1), stride=2),
    C("2d-k3x4-s2x3-dil2", (2, 2, 6, 5), (4, 2, 3, 4), stride=(2, 3), dilation=(2, 1)),
    C("2d-reflect-s2", (1, 2, 7, 6), (3, 2, 3, 3), stride=2, padding_mode="reflect"),
    C("3d-groups3-s2", (2, 9, 3, 1, 9), (3, 3, 3, 1, 9), bias=True, stride=2, groups=3),
    C("2d-circular-s3-nobatch", (2, 8, 7), (3, 2, 4, 2), stride=3, padding_mode="circular"),
]


@pytest.mark.parametrize("x_shape, w_shape, bias, kw", SAME_STRIDED_CASES)
def test_same_padding_with_stride_where_torch_refuses(x_shape, w_shape, bias, kw):
    """'same' with stride > 1 is ours (TF/JAX rule); torch refuses it."""
    x, w, b = _arrays(x_shape, w_shape, bias, np.float64, w_shape[0])
    with pytest.raises(Exception, match="same"):
        torch_conv(_t(x), _t(w), _t(b), padding="same", **kw)
    r = w.ndim - 2
    stride = kw["stride"] if isinstance(kw["stride"], tuple) else (kw["stride"],) * r
    dil = kw.get("dilation", 1)
    dil = dil if isinstance(dil, tuple) else (dil,) * r
    pairs = _tf_same_pairs(x_shape[-r:], w_shape[2:], stride, dil)
    y_t, dy, (dx_t, dw_t, db_t) = torch_autograd(
        lambda xt, wt, bt: torch_conv(xt, wt, bt, padding=tuple(pairs), **kw), [x, w, b])
    assert y_t.shape[-r:] == tuple(math.ceil(i / s) for i, s in zip(x_shape[-r:], stride))
    y, ctx = ib.conv_forward(x, w, b, padding="same", **kw)
    assert_matches(y, y_t, np.float64, "forward")
    grads = ib.conv_backward(dy, ctx)
    assert_matches(grads.input, dx_t, np.float64, "grad input")
    assert_matches(grads.weight, dw_t, np.float64, "grad weight")
    if bias:
        assert_matches(grads.bias, db_t, np.float64, "grad bias")


def _periodic_pad(x, pairs):
    """Circular padding by index arithmetic: wraps as often as needed (differentiable)."""
    r = len(pairs)
    for axis, (before, after) in enumerate(pairs):
        dim = x.dim() - r + axis
        size = x.shape[dim]
        index = torch.arange(-before, size + after) % size
        x = x.index_select(dim, index)
    return x


CIRCULAR_WIDE_CASES = [
    C("1d-pad5-size3", (1, 2, 3), (2, 2, 3), padding=5),
    C("1d-pairs-7-1-size2-strided", (2, 1, 2), (3, 1, 4), padding=((7, 1),), stride=2),
    C("2d-pad4x6-size2x3", (1, 2, 2, 3), (2, 2, 3, 2), padding=(4, 6), dilation=(2, 1)),
    C("2d-nobatch-groups", (2, 1, 4), (4, 1, 2, 3), padding=(3, 9), groups=2),
    C("3d-pad3-size2", (1, 1, 2, 2, 1), (2, 1, 2, 2, 2), padding=3),
]


@pytest.mark.parametrize("x_shape, w_shape, bias, kw", CIRCULAR_WIDE_CASES)
def test_circular_padding_wider_than_input_wraps(x_shape, w_shape, bias, kw):
    """torch's circular pad refuses to wrap more than once; ours wraps periodically."""
    x, w, b = _arrays(x_shape, w_shape, bias, np.float64, w_shape[0])
    r = w.ndim - 2
    padding = kw.pop("padding")
    per_axis = (padding,) * r if isinstance(padding, int) else padding
    pairs = [(p, p) if isinstance(p, int) else tuple(p) for p in per_axis]
    with pytest.raises(Exception, match="wrapping|[Pp]adding"):
        torch_conv(_t(x), _t(w), _t(b), padding=padding, padding_mode="circular", **kw)
    conv = getattr(F, f"conv{r}d")
    y_t, dy, (dx_t, dw_t, db_t) = torch_autograd(
        lambda xt, wt, bt: conv(_periodic_pad(xt, pairs), wt, bt, **kw), [x, w, b])
    y, ctx = ib.conv_forward(x, w, b, padding=padding, padding_mode="circular", **kw)
    assert_matches(y, y_t, np.float64, "forward")
    grads = ib.conv_backward(dy, ctx)
    assert_matches(grads.input, dx_t, np.float64, "grad input")
    assert_matches(grads.weight, dw_t, np.float64, "grad weight")
    if bias:
        assert_matches(grads.bias, db_t, np.float64, "grad bias")


CONVT_ADJOINT_CASES = [
    C("1d-reflect-s2", (2, 2, 4), (2, 3, 3), stride=2, padding=2, padding_mode="reflect"),
    C("1d-reflect-dil-outpad-crop", (1, 1, 5), (1, 2, 3), padding=1, dilation=2,
      output_padding=1, padding_mode="reflect"),
    C("2d-replicate-groups", (1, 4, 3, 4), (4, 1, 3, 2), stride=(2, 1), padding=(1, 2),
      groups=2, padding_mode="replicate"),
    C("2d-circular-outpad", (2, 2, 3, 3), (2, 2, 3, 3), stride=2, padding=1, output_padding=1,
      padding_mode="circular"),
    C("3d-circular", (1, 2, 2, 3, 2), (2, 1, 2, 2, 2), padding=1, padding_mode="circular"),
    C("2d-zeros-asymmetric-pairs", (1, 2, 4, 3), (2, 3, 3, 3), stride=2,
      padding=((0, 2), (1, 0)), bias=True),
    C("1d-reflect-pairs-nobatch", (2, 5), (2, 2, 4), stride=3, padding=((2, 1),),
      output_padding=2, padding_mode="reflect"),
]


@pytest.mark.parametrize("x_shape, w_shape, bias, kw", CONVT_ADJOINT_CASES)
def test_conv_transpose_padding_modes_are_the_conv_adjoint(x_shape, w_shape, bias, kw):
    """torch's ConvTranspose has only zeros padding and symmetric padding; ours is defined as
    the exact adjoint (input gradient) of the convolution with that padding -- built here from
    torch autograd (double backward gives its gradients)."""
    kw = dict(kw)
    mode = kw.pop("padding_mode", "zeros")
    output_padding = kw.pop("output_padding", 0)
    groups = kw.get("groups", 1)
    r = len(w_shape) - 2
    x, w, b = _arrays(x_shape, w_shape, bias, np.float64, w_shape[1] * groups)
    if mode != "zeros":
        with pytest.raises(ValueError, match="zeros"):
            getattr(torch.nn, f"ConvTranspose{r}d")(2, 2, 3, padding_mode=mode)
    # the transposed convolution's output shape, from im2colbp's documented formula
    y = ib.conv_transpose(x, w, b, padding_mode=mode, output_padding=output_padding, **kw)
    out_shape = y.shape

    def transposed(xt, wt, bt):
        z = torch.zeros(out_shape, dtype=xt.dtype, requires_grad=True)
        conv_out = torch_conv(z, wt, None, padding_mode=mode, **kw)
        crop = (Ellipsis,) + tuple(slice(0, n) for n in xt.shape[-r:])
        (vjp,) = torch.autograd.grad(conv_out[crop], z, xt, create_graph=True)
        return vjp if bt is None else vjp + bt.reshape((-1,) + (1,) * r)

    y_t, dy, (dx_t, dw_t, db_t) = torch_autograd(transposed, [x, w, b])
    y2, ctx = ib.conv_transpose_forward(x, w, b, padding_mode=mode,
                                        output_padding=output_padding, **kw)
    assert_matches(y2, y_t, np.float64, "forward")
    grads = ib.conv_transpose_backward(dy, ctx)
    assert_matches(grads.input, dx_t, np.float64, "grad input")
    assert_matches(grads.weight, dw_t, np.float64, "grad weight")
    if bias:
        assert_matches(grads.bias, db_t, np.float64, "grad bias")


def test_output_size_beyond_stride_when_dilation_is_larger():
    """torch's module caps output_size at min + stride - 1 although F.conv_transpose accepts
    output_padding < max(stride, dilation); ours admits every size a legal output_padding gives."""
    x, w, _ = _arrays((1, 1, 4), (1, 2, 3), False, np.float64, 2)
    with pytest.raises(ValueError, match="output size"):
        torch_conv_transpose(_t(x), _t(w), None, dilation=3, output_size=(12,))
    expected = F.conv_transpose1d(_t(x), _t(w), dilation=3, output_padding=2).numpy()
    assert expected.shape[-1] == 12
    assert_matches(ib.conv_transpose(x, w, dilation=3, output_size=(12,)), expected,
                   np.float64, "output_size=12")


def test_output_size_full_shape_leading_sizes_are_checked():
    """torch drops the leading (N, C) of a full output_size unchecked; ours must match them."""
    x, w, _ = _arrays((1, 4, 5, 5), (4, 2, 3, 3), False, np.float64, 2)
    y_t = torch_conv_transpose(_t(x), _t(w), None, stride=2, padding=1,
                               output_size=(7, 7, 10, 10))
    assert tuple(y_t.shape) == (1, 2, 10, 10)
    with pytest.raises(ValueError, match="output_size"):
        ib.conv_transpose(x, w, stride=2, padding=1, output_size=(7, 7, 10, 10))
    assert_matches(ib.conv_transpose(x, w, stride=2, padding=1, output_size=(1, 2, 10, 10)),
                   y_t.numpy(), np.float64, "full shape")


def test_output_size_conflicting_with_output_padding_is_refused():
    """torch's module silently lets output_size override its output_padding; ours refuses a
    non-zero output_padding that disagrees (and accepts one that agrees)."""
    x, w, _ = _arrays((1, 4, 5, 5), (4, 2, 3, 3), False, np.float64, 2)
    y_t = torch_conv_transpose(_t(x), _t(w), None, stride=2, padding=1, output_padding=1,
                               output_size=(9, 9))
    assert tuple(y_t.shape[-2:]) == (9, 9)
    with pytest.raises(ValueError, match="output_padding"):
        ib.conv_transpose(x, w, stride=2, padding=1, output_padding=1, output_size=(9, 9))
    assert_matches(ib.conv_transpose(x, w, stride=2, padding=1, output_padding=(0, 1),
                                     output_size=(9, 10)),
                   torch_conv_transpose(_t(x), _t(w), None, stride=2, padding=1,
                                        output_size=(9, 10)).numpy(), np.float64, "agreeing")


@pytest.mark.parametrize("op", ["conv", "conv_transpose"])
def test_integer_inputs_compute_in_float64(op):
    """torch refuses int64 input with a float weight (OpInfo error_inputs); ours promotes."""
    x = np.random.default_rng(0).integers(-5, 5, size=(2, 3, 6))
    w = _data((3, 3, 3))
    b = np.arange(3)  # an integer bias too
    torch_fn = torch_conv if op == "conv" else torch_conv_transpose
    with pytest.raises(RuntimeError):
        torch_fn(torch.tensor(x), _t(w), _t(b.astype(np.float64)), stride=2)
    expected = torch_fn(_t(x.astype(np.float64)), _t(w), _t(b.astype(np.float64)),
                        stride=2).numpy()
    assert_matches(getattr(ib, op)(x, w, b, stride=2), expected, np.float64, op)


def test_zero_input_channels_give_the_bias():
    """With C_in = 0 the sums are empty: y = bias. torch returns a (N, 0, *O) tensor there
    (it takes the channel count from the empty input) -- ours keeps C_out channels."""
    x, w, b = _data((2, 0, 5)), _data((3, 0, 3)), _data((3,))
    assert tuple(torch_conv(_t(x), _t(w), _t(b)).shape) == (2, 0, 3)
    y, ctx = ib.conv_forward(x, w, b)
    np.testing.assert_array_equal(y, np.broadcast_to(b[None, :, None], (2, 3, 3)))
    dy = _data((2, 3, 3), seed=4)
    grads = ib.conv_backward(dy, ctx)
    assert grads.input.shape == (2, 0, 5) and grads.weight.shape == (3, 0, 3)
    np.testing.assert_allclose(grads.bias, dy.sum(axis=(0, 2)), rtol=1e-12)


# ----------------------------------------------------------------------------------------------
# torch.nn.functional's positional order (issue: `ib.conv(x, w, b, 2, 1)` raised TypeError)
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rank", [1, 2, 3])
@pytest.mark.parametrize("method", ["auto", "im2col"])
def test_positional_order_of_torch_functional(rank, method):
    rng = np.random.default_rng(rank)
    spatial = (7, 6, 5)[:rank]
    x = rng.standard_normal((2, 4) + spatial)
    w = rng.standard_normal((6, 2) + (3,) * rank)
    b = rng.standard_normal(6)
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[rank]
    expected = conv(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), 2, 1, 2, 2)
    got = ib.conv(x, w, b, 2, 1, 2, 2, method=method)  # stride, padding, dilation, groups
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-12, atol=1e-12)
    y, _ = ib.conv_forward(x, w, b, 2, 1, 2, 2, method=method)
    np.testing.assert_array_equal(y, got)

    wt = rng.standard_normal((4, 3) + (3,) * rank)  # (C_in, C_out/G, *K)
    bt = rng.standard_normal(6)
    conv_t = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}[rank]
    # stride, padding, output_padding, groups, dilation
    expected_t = conv_t(torch.from_numpy(x), torch.from_numpy(wt), torch.from_numpy(bt),
                        2, 1, 1, 2, 2)
    got_t = ib.conv_transpose(x, wt, bt, 2, 1, 1, 2, 2, method=method)
    np.testing.assert_allclose(got_t, expected_t.numpy(), rtol=1e-12, atol=1e-12)
    y_t, _ = ib.conv_transpose_forward(x, wt, bt, 2, 1, 1, 2, 2, method=method)
    np.testing.assert_array_equal(y_t, got_t)
