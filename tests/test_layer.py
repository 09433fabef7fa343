"""Conv / ConvTranspose layers against independent oracles.

Oracles: the direct reference (im2colbp.reference), finite differences in
float64, PyTorch's initialisation rule restated as a bound, and (when torch is
installed) torch.nn.Conv*/ConvTranspose* modules loaded with the same weights.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from im2colbp import reference
from im2colbp.convolution import conv, conv_backward, conv_forward
from im2colbp.gradcheck import numerical_gradient
from im2colbp.layer import (
    Conv,
    Conv1d,
    Conv2d,
    Conv3d,
    ConvTranspose,
    ConvTranspose1d,
    ConvTranspose2d,
    ConvTranspose3d,
)

RNG = np.random.default_rng


def _normal(shape, seed, dtype=np.float64):
    return RNG(seed).standard_normal(shape).astype(dtype)


def _conv_kwargs(layer):
    return dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
                groups=layer.groups, padding_mode=layer.padding_mode)


# --------------------------------------------------------------------------
# forward and backward against the reference
# --------------------------------------------------------------------------
CONV_CASES = [
    pytest.param(lambda: Conv1d(4, 6, 3, 2, 1, dtype=np.float64, rng=1), (2, 4, 9), id="1d"),
    pytest.param(lambda: Conv1d(4, 6, 4, padding="same", dilation=2, groups=2,
                                dtype=np.float64, rng=2), (3, 4, 10), id="1d-same-groups"),
    pytest.param(lambda: Conv2d(3, 5, 3, stride=2, padding=1, dtype=np.float64, rng=3),
                 (2, 3, 7, 6), id="2d-strided"),
    pytest.param(lambda: Conv2d(4, 6, (3, 2), (2, 1), ((1, 0), (0, 2)), (1, 2), 2, False,
                                "replicate", dtype=np.float64, rng=4), (2, 4, 7, 7),
                 id="2d-positional-asymmetric-replicate"),
    pytest.param(lambda: Conv2d(2, 4, 3, stride=3, padding="same", padding_mode="reflect",
                                dtype=np.float64, rng=5), (2, 2, 8, 7), id="2d-same-stride3"),
    pytest.param(lambda: Conv3d(2, 4, (2, 3, 3), (1, 2, 2), (0, 1, 1), dtype=np.float64, rng=6),
                 (2, 2, 3, 5, 5), id="3d"),
    pytest.param(lambda: Conv(2, 2, (3,), padding=2, padding_mode="circular",
                              dtype=np.float64, rng=7), (2, 5), id="nd-1-unbatched-circular"),
    pytest.param(lambda: Conv(2, 3, 2, ndim=4, dtype=np.float64, rng=8), (1, 2, 3, 3, 2, 3),
                 id="nd-4"),
]


@pytest.mark.parametrize("make, x_shape", CONV_CASES)
def test_conv_layer_matches_reference_and_accumulates(make, x_shape):
    layer = make()
    kw = _conv_kwargs(layer)
    x = _normal(x_shape, 10)
    y = layer(x)
    np.testing.assert_allclose(y, reference.conv(x, layer.weight, layer.bias, **kw),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(y, conv(x, layer.weight, layer.bias, **kw))

    dy = _normal(y.shape, 11)
    dx = layer.backward(dy)
    np.testing.assert_allclose(dx, reference.conv_grad_input(dy, layer.weight, x.shape, **kw),
                               rtol=1e-12, atol=1e-12)
    dw = reference.conv_grad_weight(dy, x, layer.weight.shape, **kw)
    np.testing.assert_allclose(layer.grad_weight, dw, rtol=1e-12, atol=1e-12)
    batched_dy = dy if x.ndim == layer.ndim + 2 else dy[None]
    if layer.bias is not None:
        np.testing.assert_allclose(layer.grad_bias, reference.conv_grad_bias(batched_dy),
                                   rtol=1e-12, atol=1e-12)

    # a second pass with another input: the gradients add up (weight sharing)
    x2, dy2 = _normal(x_shape, 12), _normal(y.shape, 13)
    layer(x2)
    layer.backward(dy2)
    dw2 = reference.conv_grad_weight(dy2, x2, layer.weight.shape, **kw)
    np.testing.assert_allclose(layer.grad_weight, dw + dw2, rtol=1e-12, atol=1e-12)
    layer.zero_grad()
    assert not layer.grad_weight.any()
    assert layer.grad_bias is None or not layer.grad_bias.any()


TRANSPOSE_CASES = [
    pytest.param(lambda: ConvTranspose1d(4, 6, 3, 2, 1, 1, dtype=np.float64, rng=1), (2, 4, 5),
                 None, id="1d-output_padding"),
    pytest.param(lambda: ConvTranspose2d(4, 6, 3, stride=2, padding=1, groups=2,
                                         dtype=np.float64, rng=2), (2, 4, 3, 4), (6, 8),
                 id="2d-groups-output_size"),
    pytest.param(lambda: ConvTranspose2d(2, 3, (3, 2), (1, 1), 0, 1, 1, False, 2,
                                         dtype=np.float64, rng=3), (1, 2, 3, 3), None,
                 id="2d-positional-dilation"),
    pytest.param(lambda: ConvTranspose3d(2, 2, 2, 2, dtype=np.float64, rng=4), (1, 2, 2, 2, 3),
                 None, id="3d"),
    pytest.param(lambda: ConvTranspose(3, 2, (3,), stride=2, padding=((2, 0),),
                                       padding_mode="reflect", dtype=np.float64, rng=5),
                 (3, 4), None, id="nd-1-unbatched-reflect-asymmetric"),
]


@pytest.mark.parametrize("make, x_shape, output_size", TRANSPOSE_CASES)
def test_conv_transpose_layer_matches_reference_and_finite_differences(make, x_shape,
                                                                       output_size):
    layer = make()
    x = _normal(x_shape, 20)
    y = layer(x, output_size=output_size)
    kw = dict(stride=layer.stride, padding=layer.padding, dilation=layer.dilation,
              groups=layer.groups, padding_mode=layer.padding_mode, output_size=output_size,
              output_padding=layer.output_padding if output_size is None else 0)
    np.testing.assert_allclose(y, reference.conv_transpose(x, layer.weight, layer.bias, **kw),
                               rtol=1e-12, atol=1e-12)
    if output_size is not None:
        assert y.shape[-layer.ndim:] == tuple(output_size)

    dy = _normal(y.shape, 21)
    dx = layer.backward(dy)

    def f_x(v):
        return reference.conv_transpose(v, layer.weight, layer.bias, **kw)

    def f_w(v):
        return reference.conv_transpose(x, v, layer.bias, **kw)

    np.testing.assert_allclose(dx, numerical_gradient(f_x, x, dy), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(layer.grad_weight, numerical_gradient(f_w, layer.weight, dy),
                               rtol=1e-6, atol=1e-7)
    if layer.bias is not None:
        def f_b(v):
            return reference.conv_transpose(x, layer.weight, v, **kw)

        np.testing.assert_allclose(layer.grad_bias, numerical_gradient(f_b, layer.bias, dy),
                                   rtol=1e-6, atol=1e-7)
    before = layer.grad_weight.copy()
    with pytest.raises(ValueError, match="no forward is waiting for backward"):
        layer.backward(dy)  # that forward was back-propagated already
    np.testing.assert_array_equal(layer.grad_weight, before)
    layer(x, output_size=output_size)
    layer.backward(dy)  # a second forward of x: accumulates a second copy
    np.testing.assert_allclose(layer.grad_weight, 2 * before, rtol=1e-12)


def test_layer_forward_equals_functional_forward_and_keeps_context():
    layer = Conv2d(3, 4, 3, padding=1, rng=0)
    x = _normal((2, 3, 5, 5), 0, np.float32)
    y = layer(x)
    y_ref, ctx = conv_forward(x, layer.weight, layer.bias, padding=1)
    np.testing.assert_array_equal(y, y_ref)
    dy = np.ones_like(y)
    grads = conv_backward(dy, ctx)
    np.testing.assert_array_equal(layer.backward(dy), grads.input)
    np.testing.assert_array_equal(layer.grad_weight, grads.weight)
    np.testing.assert_array_equal(layer.grad_bias, grads.bias)


def test_same_padding_with_stride_is_allowed():
    layer = Conv2d(1, 1, 3, stride=2, padding="same", rng=0)
    assert layer(np.zeros((1, 1, 7, 8))).shape == (1, 1, 4, 4)  # ceil(7/2), ceil(8/2)


def test_transpose_output_size_replaces_output_padding_as_in_pytorch():
    layer = ConvTranspose2d(2, 2, 3, stride=2, padding=1, output_padding=1, rng=0)
    x = np.ones((1, 2, 4, 4))
    assert layer(x).shape == (1, 2, 8, 8)
    assert layer(x, output_size=(7, 7)).shape == (1, 2, 7, 7)
    assert layer.forward(x, output_size=(1, 2, 8, 7)).shape == (1, 2, 8, 7)
    with pytest.raises(ValueError, match="admissible sizes are 7..8"):
        layer(x, output_size=(9, 9))


# --------------------------------------------------------------------------
# dtype
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parameters_and_gradients_keep_the_layer_dtype(dtype):
    layer = Conv1d(2, 3, 3, dtype=dtype, rng=0)
    assert layer.weight.dtype == layer.bias.dtype == dtype
    assert layer.grad_weight.dtype == layer.grad_bias.dtype == dtype
    x = _normal((2, 2, 6), 0, np.float64)  # float64 input: NumPy promotion
    y = layer(x)
    assert y.dtype == np.float64
    dx = layer.backward(np.ones_like(y))
    assert dx.dtype == np.float64
    assert layer.grad_weight.dtype == layer.grad_bias.dtype == dtype
    assert layer(x.astype(np.float32)).dtype == np.result_type(np.float32, dtype)


def test_dtype_none_means_float32():
    assert Conv2d(1, 1, 1, dtype=None, rng=0).weight.dtype == np.float32


# --------------------------------------------------------------------------
# initialisation
# --------------------------------------------------------------------------
@pytest.mark.parametrize("make, fan_in", [
    (lambda rng: Conv2d(4, 16, 3, rng=rng), 4 * 9),
    (lambda rng: Conv2d(8, 16, 3, groups=4, rng=rng), 2 * 9),
    (lambda rng: Conv1d(16, 4, 5, rng=rng), 16 * 5),
    (lambda rng: ConvTranspose2d(16, 4, 3, rng=rng), 4 * 9),  # weight.shape[1] = C_out/G
    (lambda rng: ConvTranspose2d(16, 8, 3, groups=2, rng=rng), 4 * 9),
    (lambda rng: ConvTranspose(4, 32, (2, 2, 2), rng=rng), 32 * 8),
])
def test_default_initialisation_is_pytorch_uniform_bound(make, fan_in):
    layer = make(0)
    bound = 1 / math.sqrt(fan_in)
    for values in (layer.weight, layer.bias):
        assert np.all(np.abs(values) <= bound)
    # large enough samples reach close to the bound, and are centred
    assert np.abs(layer.weight).max() > 0.9 * bound
    assert abs(float(layer.weight.mean())) < 0.1 * bound
    # the variance of U(-a, a) is a^2 / 3
    assert np.isclose(layer.weight.var(), bound**2 / 3, rtol=0.25)


def test_initialisation_is_reproducible():
    a, b = Conv2d(3, 8, 3, rng=42), Conv2d(3, 8, 3, rng=42)
    np.testing.assert_array_equal(a.weight, b.weight)
    np.testing.assert_array_equal(a.bias, b.bias)
    c = Conv2d(3, 8, 3, rng=np.random.default_rng(42))
    np.testing.assert_array_equal(a.weight, c.weight)
    assert not np.array_equal(a.weight, Conv2d(3, 8, 3, rng=43).weight)
    assert not np.array_equal(Conv2d(3, 8, 3).weight, Conv2d(3, 8, 3).weight)  # fresh entropy
    # one generator shared by two layers: the draws continue
    generator = np.random.default_rng(7)
    first, second = Conv1d(1, 2, 3, rng=generator), Conv1d(1, 2, 3, rng=generator)
    assert not np.array_equal(first.weight, second.weight)
    layer = Conv2d(3, 8, 3, rng=0)
    weight_array = layer.weight
    layer.reset_parameters(42)
    assert layer.weight is weight_array  # in place
    np.testing.assert_array_equal(layer.weight, a.weight)


# --------------------------------------------------------------------------
# parameters, state_dict
# --------------------------------------------------------------------------
def test_parameters_yield_the_layer_arrays():
    layer = Conv2d(2, 3, 3, rng=0)
    names = [name for name, _, _ in layer.parameters()]
    assert names == ["weight", "bias"]
    (_, w, gw), (_, b, gb) = layer.parameters()
    assert w is layer.weight and gw is layer.grad_weight
    assert b is layer.bias and gb is layer.grad_bias
    assert [n for n, _, _ in Conv2d(2, 3, 3, bias=False).parameters()] == ["weight"]


def test_state_dict_round_trip():
    source = ConvTranspose2d(4, 2, 3, stride=2, rng=1)
    target = ConvTranspose2d(4, 2, 3, stride=2, rng=2)
    state = source.state_dict()
    assert sorted(state) == ["bias", "weight"]
    state["weight"][...] = 0  # a copy: the layer is untouched
    assert source.weight.any()
    weight_array = target.weight
    target.load_state_dict(source.state_dict())
    assert target.weight is weight_array  # copied in place, like torch
    x = _normal((1, 4, 3, 3), 0, np.float32)
    np.testing.assert_array_equal(target(x), source(x))
    assert list(Conv1d(1, 1, 1, bias=False).state_dict()) == ["weight"]


def test_load_state_dict_casts_to_the_layer_dtype():
    layer = Conv1d(1, 2, 3, rng=0)
    layer.load_state_dict({"weight": np.ones((2, 1, 3)), "bias": [1, 2]})
    assert layer.weight.dtype == np.float32 and layer.bias.dtype == np.float32
    np.testing.assert_array_equal(layer.bias, [1.0, 2.0])


@pytest.mark.parametrize("state, exc, match", [
    ({"weight": np.zeros((2, 1, 3))}, ValueError, r"missing \['bias'\]"),
    ({"weight": np.zeros((2, 1, 3)), "bias": np.zeros(2), "extra": 1}, ValueError,
     r"unexpected \['extra'\]"),
    ({"weight": np.zeros((2, 1, 5)), "bias": np.zeros(2)}, ValueError,
     r"state_dict\['weight'\] must have shape \(2, 1, 3\).*got \(2, 1, 5\)"),
    ({"weight": np.zeros((2, 1, 3)), "bias": np.zeros(3)}, ValueError,
     r"state_dict\['bias'\] must have shape \(2,\)"),
    ({"weight": np.zeros((2, 1, 3), complex), "bias": np.zeros(2)}, TypeError, "complex"),
    ({"weight": "abc", "bias": np.zeros(2)}, TypeError, "numeric"),
    ([("weight", np.zeros((2, 1, 3)))], TypeError, "mapping"),
])
def test_load_state_dict_errors_leave_the_layer_unchanged(state, exc, match):
    layer = Conv1d(1, 2, 3, rng=0)
    before = layer.state_dict()
    with pytest.raises(exc, match=match):
        layer.load_state_dict(state)
    np.testing.assert_array_equal(layer.weight, before["weight"])
    np.testing.assert_array_equal(layer.bias, before["bias"])


def test_load_state_dict_bias_mismatch_hints():
    with pytest.raises(ValueError, match="bias=False"):
        Conv1d(1, 2, 3, bias=False).load_state_dict(
            {"weight": np.zeros((2, 1, 3)), "bias": np.zeros(2)})


def test_assigning_parameters_copies_with_checks():
    layer = Conv1d(1, 2, 3, rng=0)
    array = layer.weight
    layer.weight = np.full((2, 1, 3), 0.5)
    assert layer.weight is array and np.all(layer.weight == 0.5)
    with pytest.raises(ValueError, match="must have shape"):
        layer.weight = np.zeros((2, 1, 4))
    with pytest.raises(ValueError, match="no bias"):
        Conv1d(1, 2, 3, bias=False).bias = np.zeros(2)


# --------------------------------------------------------------------------
# repr
# --------------------------------------------------------------------------
@pytest.mark.parametrize("layer, text", [
    (Conv2d(3, 8, 3), "Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1))"),
    (Conv2d(3, 8, 3, 2, 1, bias=False),
     "Conv2d(3, 8, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), bias=False)"),
    (Conv1d(4, 4, 3, padding="same", dilation=2, groups=2, padding_mode="reflect"),
     "Conv1d(4, 4, kernel_size=(3,), stride=(1,), padding='same', dilation=(2,), groups=2, "
     "padding_mode='reflect')"),
    (Conv(1, 1, (1, 2, 3), padding=((0, 1), 0, 0), dtype=np.float64),
     "Conv(1, 1, kernel_size=(1, 2, 3), stride=(1, 1, 1), padding=((0, 1), (0, 0), (0, 0)), "
     "dtype=float64)"),
    (Conv3d(1, 1, 1, padding="valid"),
     "Conv3d(1, 1, kernel_size=(1, 1, 1), stride=(1, 1, 1), padding='valid')"),
    (ConvTranspose2d(4, 2, 3, 2, 1, 1, dilation=2),
     "ConvTranspose2d(4, 2, kernel_size=(3, 3), stride=(2, 2), padding=(1, 1), "
     "dilation=(2, 2), output_padding=(1, 1))"),
    (ConvTranspose1d(2, 2, 3), "ConvTranspose1d(2, 2, kernel_size=(3,), stride=(1,))"),
])
def test_repr_shows_non_default_arguments(layer, text):
    assert repr(layer) == text


# --------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------
ERRORS = [
    ("groups-in", lambda: Conv2d(3, 4, 3, groups=2), ValueError,
     "in_channels must be divisible by groups"),
    ("groups-out", lambda: Conv2d(4, 6, 3, groups=4), ValueError,
     "out_channels must be divisible by groups"),
    ("groups-zero", lambda: Conv2d(4, 4, 3, groups=0), ValueError, "groups must be positive"),
    ("groups-float", lambda: Conv2d(4, 4, 3, groups=2.0), TypeError, "groups must be an int"),
    ("in-zero", lambda: Conv2d(0, 4, 3), ValueError, "in_channels must be positive"),
    ("out-negative", lambda: Conv1d(1, -1, 3), ValueError, "out_channels must be positive"),
    ("in-str", lambda: Conv2d("3", 4, 3), TypeError, "in_channels must be an int"),
    ("kernel-zero", lambda: Conv2d(1, 1, 0), ValueError, "kernel_size must be positive"),
    ("kernel-length", lambda: Conv2d(1, 1, (3, 3, 3)), ValueError,
     "kernel_size must be an int or a tuple of 2 ints"),
    ("stride-zero", lambda: Conv1d(1, 1, 3, 0), ValueError, "stride must be positive"),
    ("dilation-length", lambda: Conv2d(1, 1, 3, dilation=(1, 1, 1)), ValueError, "dilation"),
    ("padding-negative", lambda: Conv2d(1, 1, 3, padding=-1), ValueError,
     "padding must be >= 0"),
    ("padding-string", lambda: Conv2d(1, 1, 3, padding="full"), ValueError,
     r"padding string must be one of \('valid', 'same'\), got 'full'"),
    ("padding-mode-value", lambda: Conv2d(1, 1, 3, padding_mode="mirror"), ValueError,
     "padding_mode must be one of"),
    ("padding-mode-type", lambda: Conv2d(1, 1, 3, padding_mode=None), TypeError,
     "padding_mode must be a string"),
    ("bias-type", lambda: Conv2d(1, 1, 3, bias=np.zeros(1)), TypeError, "bias must be True or"),
    ("dtype-int", lambda: Conv2d(1, 1, 3, dtype=np.int32), TypeError, "dtype must be"),
    ("dtype-half", lambda: Conv2d(1, 1, 3, dtype=np.float16), TypeError, "dtype must be"),
    ("dtype-nonsense", lambda: Conv2d(1, 1, 3, dtype="abc"), TypeError, "dtype must be"),
    ("rng-float", lambda: Conv2d(1, 1, 3, rng=1.5), TypeError, "rng must be"),
    ("rng-negative", lambda: Conv2d(1, 1, 3, rng=-1), TypeError, "rng must be"),
    ("rng-bool", lambda: Conv2d(1, 1, 3, rng=True), TypeError, "rng must be"),
    ("nd-int-kernel", lambda: Conv(1, 1, 3), ValueError, "cannot tell the spatial rank"),
    ("nd-ndim-mismatch", lambda: Conv(1, 1, (3, 3), ndim=3), ValueError,
     "kernel_size must be an int or a tuple of 3 ints"),
    ("nd-ndim-zero", lambda: Conv(1, 1, 3, ndim=0), ValueError, "ndim must be positive"),
    ("nd-empty-kernel", lambda: ConvTranspose(1, 1, ()), ValueError, "at least one entry"),
    ("nd-kernel-str", lambda: Conv(1, 1, "3"), TypeError, "kernel_size must be an int"),
    ("t-same", lambda: ConvTranspose2d(1, 1, 3, padding="same"), ValueError,
     "padding='same' is not defined for transposed convolution"),
    ("t-groups-out", lambda: ConvTranspose2d(4, 3, 3, groups=2), ValueError,
     "out_channels must be divisible by groups"),
    ("t-output-padding", lambda: ConvTranspose2d(1, 1, 3, stride=2, output_padding=2),
     ValueError, r"output_padding must satisfy 0 <= output_padding < max\(stride, dilation\) = 2"),
    ("t-output-padding-stride1", lambda: ConvTranspose1d(1, 1, 3, output_padding=1), ValueError,
     "output_padding"),
    ("t-output-padding-negative", lambda: ConvTranspose1d(1, 1, 3, 2, output_padding=-1),
     ValueError, r"output_padding must satisfy 0 <= output_padding < max\(stride, dilation\) = 2"),
]


@pytest.mark.parametrize("make, exc, match", [pytest.param(*e[1:], id=e[0]) for e in ERRORS])
def test_constructor_errors(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_backward_before_forward_is_a_clear_error():
    for layer in (Conv2d(1, 1, 3), ConvTranspose2d(1, 1, 3)):
        with pytest.raises(ValueError, match="backward called before forward"):
            layer.backward(np.zeros((1, 1, 3, 3)))


def test_backward_with_wrong_dy_shape():
    layer = Conv2d(1, 2, 3, rng=0)
    layer(np.zeros((1, 1, 5, 5)))
    with pytest.raises(ValueError, match=r"dy must have shape \(1, 2, 3, 3\)"):
        layer.backward(np.zeros((1, 2, 5, 5)))
    layer_t = ConvTranspose1d(1, 2, 3, rng=0)
    layer_t(np.zeros((1, 1, 4)))
    with pytest.raises(ValueError, match=r"dy must have shape \(1, 2, 6\)"):
        layer_t.backward(np.zeros((1, 2, 4)))
    assert not layer.grad_weight.any()  # nothing accumulated by the failed calls


def test_forward_errors_come_from_the_geometry():
    with pytest.raises(ValueError, match="input has C_in=2 channels"):
        Conv2d(3, 2, 3)(np.zeros((1, 2, 5, 5)))
    with pytest.raises(ValueError, match="reflect padding must be smaller"):
        Conv1d(1, 1, 3, padding=4, padding_mode="reflect")(np.zeros((1, 1, 4)))
    with pytest.raises(ValueError, match="kernel larger than the padded input"):
        Conv2d(1, 1, 5)(np.zeros((1, 1, 3, 3)))


# --------------------------------------------------------------------------
# PyTorch (skipped when torch is not installed)
# --------------------------------------------------------------------------
TORCH_CASES = [
    ("Conv1d", (4, 6, 3), dict(stride=2, padding=1), (2, 4, 9), None),
    ("Conv1d", (4, 6, 4), dict(padding="same", dilation=2, groups=2), (3, 4, 10), None),
    ("Conv1d", (2, 3, 3), dict(padding=2, padding_mode="circular"), (2, 2, 6), None),
    ("Conv2d", (3, 8, 3), dict(stride=2, padding=1), (2, 3, 7, 7), None),
    ("Conv2d", (4, 6, (3, 2)), dict(stride=(2, 1), padding=(1, 0), dilation=(1, 2), groups=2,
                                    bias=False), (2, 4, 7, 7), None),
    ("Conv2d", (2, 4, 3), dict(padding=2, padding_mode="reflect"), (2, 2, 5, 6), None),
    ("Conv2d", (2, 4, 3), dict(stride=2, padding=(1, 2), padding_mode="circular"), (1, 2, 6, 5),
     None),
    ("Conv2d", (4, 4, 3), dict(padding=1, padding_mode="replicate", groups=4), (2, 4, 5, 5),
     None),
    ("Conv2d", (3, 2, 3), dict(padding="valid"), (3, 5, 5), None),  # unbatched
    ("Conv3d", (2, 4, (2, 3, 3)), dict(stride=(1, 2, 2), padding=(0, 1, 1)), (2, 2, 3, 5, 5),
     None),
    ("Conv3d", (2, 2, 3), dict(padding=1, padding_mode="reflect", groups=2), (1, 2, 4, 4, 4),
     None),
    ("ConvTranspose1d", (4, 6, 3), dict(stride=2, padding=1, output_padding=1), (2, 4, 5), None),
    ("ConvTranspose2d", (4, 6, 3), dict(stride=2, padding=1, groups=2), (2, 4, 3, 4), [6, 8]),
    ("ConvTranspose2d", (3, 2, (3, 4)), dict(stride=(2, 3), padding=(1, 0),
                                             output_padding=(1, 2)), (2, 3, 3, 3), None),
    ("ConvTranspose2d", (2, 4, 3), dict(dilation=2, output_padding=1, bias=False), (1, 2, 4, 4),
     None),
    ("ConvTranspose2d", (2, 2, 3), dict(stride=2, padding=1, output_padding=1), (2, 3, 3),
     [5, 5]),  # unbatched; output_size overrides the layer's output_padding, as in torch
    ("ConvTranspose3d", (2, 4, 2), dict(stride=2, groups=2), (1, 2, 2, 3, 2), None),
]


def _torch_case_id(case):
    name, args, kwargs, _, output_size = case
    text = f"{name}{args}" + "".join(f"-{k}={v}" for k, v in kwargs.items())
    return text + ("" if output_size is None else f"-output_size={output_size}")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", TORCH_CASES, ids=[_torch_case_id(c) for c in TORCH_CASES])
def test_layers_match_torch_modules(case, dtype):
    torch = pytest.importorskip("torch")
    import im2colbp.layer as layers

    name, args, kwargs, x_shape, output_size = case
    ours = getattr(layers, name)(*args, **kwargs, dtype=dtype, rng=0)
    torch_dtype = torch.float64 if dtype == np.float64 else torch.float32
    theirs = getattr(torch.nn, name)(*args, **kwargs, dtype=torch_dtype)
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})

    x = _normal(x_shape, 1, dtype)
    x_t = torch.tensor(x, requires_grad=True)
    if output_size is None:
        y, y_t = ours(x), theirs(x_t)
    else:
        y, y_t = ours(x, output_size=output_size), theirs(x_t, output_size=output_size)
    dy = _normal(y.shape, 2, dtype)
    y_t.backward(torch.from_numpy(dy))
    dx = ours.backward(dy)

    rtol, atol = (1e-10, 1e-12) if dtype == np.float64 else (1e-4, 1e-5)
    scale = max(1.0, float(np.abs(y_t.detach().numpy()).max()))

    def same(a, b):
        assert a.dtype == dtype and a.shape == tuple(b.shape)
        np.testing.assert_allclose(a, b.detach().numpy(), rtol=rtol, atol=atol * scale)

    same(y, y_t)
    same(dx, x_t.grad)
    same(ours.grad_weight, theirs.weight.grad)
    if theirs.bias is None:
        assert ours.bias is None and ours.grad_bias is None
    else:
        same(ours.grad_bias, theirs.bias.grad)


@pytest.mark.parametrize("name, args", [
    ("Conv2d", (3, 8, 3)), ("Conv1d", (4, 2, 5)), ("ConvTranspose2d", (8, 4, 3)),
    ("ConvTranspose3d", (2, 6, 2)),
])
def test_torch_weights_load_and_torch_init_has_our_bounds(name, args):
    """torch's own init obeys the bound our init uses; its state_dict loads as is."""
    torch = pytest.importorskip("torch")
    import im2colbp.layer as layers

    torch.manual_seed(0)
    theirs = getattr(torch.nn, name)(*args)
    ours = getattr(layers, name)(*args, rng=0)
    bound = 1 / math.sqrt(ours.weight.shape[1] * math.prod(ours.kernel_size))
    assert float(theirs.weight.detach().abs().max()) <= bound
    assert float(theirs.bias.detach().abs().max()) <= bound
    ours.load_state_dict(theirs.state_dict())  # torch tensors go straight in
    x = _normal((2, args[0]) + (6,) * ours.ndim, 3, np.float32)
    np.testing.assert_allclose(ours(x), theirs(torch.from_numpy(x)).detach().numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_transpose_padding_modes_are_adjoints_of_torch_convolutions(mode):
    """torch refuses these modes for ConvTranspose; ours is the input gradient of the conv."""
    torch = pytest.importorskip("torch")
    kwargs = dict(stride=2, padding=1, padding_mode=mode)
    with pytest.raises(ValueError):
        torch.nn.ConvTranspose2d(4, 3, 3, **kwargs)
    layer = ConvTranspose2d(4, 3, 3, **kwargs, bias=False, dtype=np.float64, rng=0)
    x = _normal((2, 4, 3, 3), 5)
    y = layer(x)
    forward = torch.nn.Conv2d(3, 4, 3, **kwargs, bias=False, dtype=torch.float64)
    forward.load_state_dict({"weight": torch.from_numpy(layer.weight)})
    z = torch.zeros(y.shape, dtype=torch.float64, requires_grad=True)
    (forward(z) * torch.from_numpy(x)).sum().backward()
    np.testing.assert_allclose(y, z.grad.numpy(), rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# weight sharing: every forward keeps its context, backward goes last-in, first-out
# --------------------------------------------------------------------------
def test_shared_layer_backward_uses_each_forwards_own_input():
    """The issue's case: L(x1); L(x2); backward(dy2); backward(dy1)."""
    layer = Conv2d(2, 3, 3, padding=1, dtype=np.float64, rng=0)
    kw = _conv_kwargs(layer)
    x1, x2 = _normal((2, 2, 5, 5), 1), _normal((2, 2, 5, 5), 2)
    y1, y2 = layer(x1), layer(x2)
    dy1, dy2 = _normal(y1.shape, 3), _normal(y2.shape, 4)
    dx2 = layer.backward(dy2)
    dx1 = layer.backward(dy1)
    expected = (reference.conv_grad_weight(dy1, x1, layer.weight.shape, **kw)
                + reference.conv_grad_weight(dy2, x2, layer.weight.shape, **kw))
    np.testing.assert_allclose(layer.grad_weight, expected, rtol=1e-12, atol=1e-12)
    for dx, dy in ((dx1, dy1), (dx2, dy2)):
        np.testing.assert_allclose(
            dx, reference.conv_grad_input(dy, layer.weight, x1.shape, **kw), rtol=1e-12,
            atol=1e-12)
    assert layer.pending == ()


def test_explicit_context_gives_any_order():
    layer = ConvTranspose1d(2, 3, 3, stride=2, dtype=np.float64, rng=0)
    xs = [_normal((1, 2, 4 + i), 10 + i) for i in range(3)]  # three different sizes
    outputs = [layer.forward_with_context(x) for x in xs]
    assert [ctx.number for _, ctx in outputs] == [1, 2, 3]
    assert [ctx.state for ctx in layer.pending] == ["pending"] * 3
    dys = [_normal(y.shape, 20 + i) for i, (y, _) in enumerate(outputs)]
    for i in (0, 2, 1):  # neither LIFO nor FIFO
        dx = layer.backward(dys[i], ctx=outputs[i][1])
        np.testing.assert_allclose(
            dx, reference.conv(dys[i], layer.weight, stride=2), rtol=1e-12, atol=1e-12)
        assert outputs[i][1].state == "used"
    expected = sum(
        numerical_gradient(lambda v, x=x: reference.conv_transpose(x, v, stride=2),
                           layer.weight, dy)
        for x, dy in zip(xs, dys))
    np.testing.assert_allclose(layer.grad_weight, expected, rtol=1e-6, atol=1e-8)


def _torch_layer(torch, ours):
    name = type(ours).__name__
    theirs = getattr(torch.nn, name)(
        ours.in_channels, ours.out_channels, ours.kernel_size, stride=ours.stride,
        padding=ours.padding, dilation=ours.dilation, groups=ours.groups,
        bias=ours.bias is not None, dtype=torch.float64,
        **({"output_padding": ours.output_padding} if ours.transposed else {}))
    theirs.load_state_dict({k: torch.from_numpy(v) for k, v in ours.state_dict().items()})
    return theirs


@pytest.mark.parametrize("make, x_shape", [
    (lambda: Conv2d(3, 3, 3, padding=1, dtype=np.float64, rng=0), (2, 3, 5, 5)),
    (lambda: ConvTranspose2d(3, 3, 3, stride=1, padding=1, dtype=np.float64, rng=0),
     (2, 3, 4, 4)),
])
def test_shared_layer_three_uses_matches_torch(make, x_shape):
    """x -> L -> relu -> L -> relu -> L, plus a skip L(x): four uses of one layer."""
    torch = pytest.importorskip("torch")
    layer = make()
    theirs = _torch_layer(torch, layer)
    x = _normal(x_shape, 1)
    # ours, by hand: a chain of three uses, then a fourth (skip) use on x
    h1 = layer(x)
    m1 = h1 > 0
    h2 = layer(h1 * m1)
    m2 = h2 > 0
    h3 = layer(h2 * m2)
    skip = layer(x)
    dout = _normal(h3.shape, 2)
    # reverse mode: the skip (last forward) first, then the chain from its end
    dx_skip = layer.backward(dout)
    dh2 = layer.backward(dout) * m2
    dh1 = layer.backward(dh2) * m1
    dx = layer.backward(dh1) + dx_skip
    assert layer.pending == ()

    x_t = torch.tensor(x, requires_grad=True)
    relu = torch.relu
    out_t = theirs(relu(theirs(relu(theirs(x_t))))) + theirs(x_t)
    out_t.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(h3 + skip, out_t.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, x_t.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(layer.grad_weight, theirs.weight.grad.numpy(), rtol=1e-10,
                               atol=1e-12)
    np.testing.assert_allclose(layer.grad_bias, theirs.bias.grad.numpy(), rtol=1e-10,
                               atol=1e-12)


def test_interleaved_shared_layers_match_torch():
    """a(x1), b(.), a(x2), b(.): two shared layers, backward in reverse order, siamese loss."""
    torch = pytest.importorskip("torch")
    a = Conv1d(2, 4, 3, padding=1, dtype=np.float64, rng=1)
    b = ConvTranspose1d(4, 2, 4, stride=2, padding=1, dtype=np.float64, rng=2)
    a_t, b_t = _torch_layer(torch, a), _torch_layer(torch, b)
    x1, x2 = _normal((3, 2, 6), 3), _normal((3, 2, 6), 4)
    z1 = b(a(x1))
    z2 = b(a(x2))
    dz = _normal(z1.shape, 5)
    # loss = <z1 - z2, dz>: dz for the first branch, -dz for the second
    dx2 = a.backward(b.backward(-dz))
    dx1 = a.backward(b.backward(dz))

    x1_t, x2_t = (torch.tensor(v, requires_grad=True) for v in (x1, x2))
    difference = b_t(a_t(x1_t)) - b_t(a_t(x2_t))
    difference.backward(torch.from_numpy(dz))
    np.testing.assert_allclose(z1 - z2, difference.detach().numpy(), rtol=1e-10, atol=1e-12)
    for ours, theirs in ((dx1, x1_t.grad), (dx2, x2_t.grad), (a.grad_weight, a_t.weight.grad),
                         (b.grad_weight, b_t.weight.grad), (a.grad_bias, a_t.bias.grad),
                         (b.grad_bias, b_t.bias.grad)):
        np.testing.assert_allclose(ours, theirs.numpy(), rtol=1e-10, atol=1e-12)


def test_backward_errors_when_no_pending_forward_matches():
    layer = Conv1d(1, 2, 3, rng=0)
    other = Conv1d(1, 2, 3, rng=0)
    with pytest.raises(ValueError, match="backward called before forward"):
        layer.backward(np.zeros((1, 2, 3)))
    y_small, small = layer.forward_with_context(np.zeros((1, 1, 5)))
    y_big = layer(np.zeros((1, 1, 9)))
    # the most recent forward is the big one: a dy of the small one's shape is refused,
    # with a pointer to ctx=, and nothing is consumed or accumulated
    with pytest.raises(ValueError, match=r"dy must have shape \(1, 2, 7\) \(the output of "
                       r"forward #2, the most recent pending one.*forward #1 has that output"):
        layer.backward(np.ones(y_small.shape))
    assert len(layer.pending) == 2 and not layer.grad_weight.any()
    _, foreign = other.forward_with_context(np.zeros((1, 1, 5)))
    with pytest.raises(ValueError, match="of another layer"):
        layer.backward(np.ones(y_small.shape), ctx=foreign)
    with pytest.raises(TypeError, match="ctx must be a LayerContext"):
        layer.backward(np.ones(y_small.shape), ctx="first")
    with pytest.raises(ValueError, match=r"dy must have shape \(1, 2, 3\) \(the output of "
                       r"forward #1, the ctx given\)"):
        layer.backward(np.ones(y_big.shape), ctx=small)
    layer.backward(np.ones(y_small.shape), ctx=small)
    with pytest.raises(ValueError, match="forward #1, was already back-propagated"):
        layer.backward(np.ones(y_small.shape), ctx=small)
    layer.backward(np.ones(y_big.shape))
    with pytest.raises(ValueError, match="no forward is waiting for backward.*all 2"):
        layer.backward(np.ones(y_big.shape))  # more backwards than forwards


def test_no_grad_keeps_no_context_and_is_per_thread():
    import threading

    from im2colbp.layer import no_grad

    layer = Conv2d(1, 2, 3, rng=0)
    x = np.ones((1, 1, 5, 5), dtype=np.float32)
    y = layer(x)
    with no_grad():
        for _ in range(300):  # more than max_pending: nothing is kept
            np.testing.assert_array_equal(layer(x), y)
        assert len(layer.pending) == 1
        seen = []
        thread = threading.Thread(target=lambda: seen.append(layer(x)))
        thread.start()
        thread.join()
        assert len(layer.pending) == 2  # another thread still records
        with pytest.raises(ValueError, match="under no_grad"):
            layer.forward_with_context(x)
    with pytest.raises(RuntimeError):
        with no_grad():
            raise RuntimeError
    layer(x)  # recording again after both blocks
    assert len(layer.pending) == 3
    fresh = Conv2d(1, 2, 3, rng=0)
    with no_grad():
        fresh(x)
    with pytest.raises(ValueError, match="before forward"):
        fresh.backward(np.ones_like(y))


def test_pending_contexts_are_bounded_loudly():
    layer = Conv1d(1, 1, 3, rng=0)
    x = np.ones((1, 1, 5), dtype=np.float32)
    assert layer.max_pending == 256
    layer.max_pending = 3
    for _ in range(3):
        layer(x)
    with pytest.raises(ValueError, match=r"3 forward passes are already waiting.*no_grad"):
        layer(x)
    assert layer.clear_contexts() == 3 and layer.pending == ()
    with pytest.raises(ValueError, match="no forward is waiting"):
        layer.backward(np.ones((1, 1, 3)))
    layer.max_pending = None
    for _ in range(5):
        layer(x)
    assert len(layer.pending) == 5


# --------------------------------------------------------------------------
# state dicts of whole networks: prefix, strict, named_parameters
# --------------------------------------------------------------------------
def test_named_parameters_and_prefixed_state_dict():
    layer = ConvTranspose2d(4, 2, 3, rng=0)
    named = list(layer.named_parameters("up."))
    assert [name for name, _ in named] == ["up.weight", "up.bias"]
    assert named[0][1] is layer.weight and named[1][1] is layer.bias
    assert [n for n, _ in Conv2d(1, 1, 1, bias=False).named_parameters()] == ["weight"]
    network: dict = {}
    Conv2d(1, 4, 3, rng=1).state_dict(destination=network, prefix="0.")
    layer.state_dict(destination=network, prefix="1.")
    assert sorted(network) == ["0.bias", "0.weight", "1.bias", "1.weight"]
    np.testing.assert_array_equal(network["1.weight"], layer.weight)
    with pytest.raises(TypeError, match="prefix must be a string"):
        layer.state_dict(prefix=1)


def test_load_state_dict_prefix_and_strict():
    network = {"enc.weight": np.ones((2, 1, 3)), "enc.bias": np.arange(2.0),
               "dec.weight": np.ones((2, 4, 1)), "head.scale": 3.0}
    layer = Conv1d(1, 2, 3, rng=0)
    assert layer.load_state_dict(network, prefix="enc.") == ([], [])
    np.testing.assert_array_equal(layer.bias, [0.0, 1.0])
    # the hint names the prefixes when the keys are nested
    with pytest.raises(ValueError, match=r"keys are nested.*'dec\.', 'enc\.'.*prefix="):
        Conv1d(1, 2, 3).load_state_dict(network)
    # strict=False loads what is there and reports the rest, as PyTorch
    dec = ConvTranspose1d(2, 4, 1, rng=0)
    bias_before = dec.bias.copy()
    result = dec.load_state_dict(network, strict=False, prefix="dec.")
    assert result.missing_keys == ["dec.bias"] and result.unexpected_keys == []
    np.testing.assert_array_equal(dec.weight, np.ones((2, 4, 1)))
    np.testing.assert_array_equal(dec.bias, bias_before)
    with pytest.raises(ValueError, match=r"missing \['dec.bias'\].*has a bias but the state has "
                       r"none.*strict=False"):
        ConvTranspose1d(2, 4, 1).load_state_dict(network, prefix="dec.")
    extra = dict(network, **{"enc.running_mean": np.zeros(2)})
    with pytest.raises(ValueError, match=r"unexpected \['enc.running_mean'\]"):
        Conv1d(1, 2, 3).load_state_dict(extra, prefix="enc.")
    assert Conv1d(1, 2, 3).load_state_dict(extra, strict=False, prefix="enc.") == (
        [], ["enc.running_mean"])
    with pytest.raises(TypeError, match="strict must be True or False"):
        layer.load_state_dict(network, strict="no", prefix="enc.")


@pytest.mark.parametrize("strict", [True, False])
def test_failed_prefixed_load_leaves_the_layer_unchanged(strict):
    layer = Conv1d(1, 2, 3, rng=0)
    before = layer.state_dict()
    bad = {"enc.weight": np.full((2, 1, 3), 7.0), "enc.bias": np.zeros(3)}  # bias shape wrong
    with pytest.raises(ValueError, match=r"state_dict\['enc.bias'\] must have shape \(2,\)"):
        layer.load_state_dict(bad, strict=strict, prefix="enc.")
    np.testing.assert_array_equal(layer.weight, before["weight"])
    np.testing.assert_array_equal(layer.bias, before["bias"])


def test_torch_sequential_state_dict_loads_into_matching_layers():
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1, groups=2, bias=False),
        nn.ReLU(),
        nn.ConvTranspose2d(8, 4, 4, stride=2, padding=1),
    ).double()
    ours = {"0": Conv2d(3, 8, 3, stride=2, padding=1, dtype=np.float64),
            "2": Conv2d(8, 8, 3, padding=1, groups=2, bias=False, dtype=np.float64),
            "4": ConvTranspose2d(8, 4, 4, stride=2, padding=1, dtype=np.float64)}
    state = model.state_dict()
    for prefix, layer in ours.items():
        assert layer.load_state_dict(state, prefix=prefix + ".") == ([], [])
    loaded = {}
    for prefix, layer in ours.items():
        loaded.update(dict(layer.named_parameters(prefix + ".")))
    assert sorted(loaded) == sorted(state)
    x = _normal((2, 3, 8, 8), 1)
    h = np.maximum(ours["0"](x), 0)
    h = np.maximum(ours["2"](h), 0)
    y = ours["4"](h)
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(y, expected, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------
# dtypes and sizes (refused before anything is allocated)
# --------------------------------------------------------------------------
def test_float16_input_is_computed_and_returned_in_float32():
    layer = Conv2d(2, 3, 3, rng=0)
    x16 = _normal((1, 2, 5, 5), 0, np.float16)
    y = layer(x16)
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, layer(x16.astype(np.float32)))
    np.testing.assert_allclose(
        y, reference.conv(x16.astype(np.float64), layer.weight.astype(np.float64),
                          layer.bias.astype(np.float64)), rtol=1e-5, atol=1e-5)
    dx = layer.backward(np.ones(y.shape, np.float16))
    assert dx.dtype == np.float32


@pytest.mark.parametrize("dtype", [("f4", -1), ("f4", (2,)), [("a", "f4")], "f2", object()])
def test_odd_dtypes_are_the_librarys_type_error(dtype):
    with pytest.raises(TypeError, match="dtype must be a NumPy floating dtype"):
        Conv2d(1, 1, 3, dtype=dtype)


_SIZE_SCRIPT = r"""
import resource, sys
import numpy as np
import im2colbp as ib
cap = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
cases = {
    "in2^31": lambda: ib.Conv2d(2**31, 8, 3),
    "30GiB": lambda: ib.Conv2d(30000, 30000, 3),
    "2^63": lambda: ib.Conv2d(2**63, 6, 3),
    "kernel10^30": lambda: ib.Conv2d(4, 6, 10**30),
    "t-out": lambda: ib.ConvTranspose2d(8, 2**40, 3),
    "nd": lambda: ib.Conv(3, 4, (3,) * 40),
    "over-the-cap": lambda: ib.Conv2d(10000, 10000, 3),  # 14.4 GB: fits RAM, not the cap
    "under-the-cap": lambda: ib.Conv2d(1000, 1000, 3),  # 144 MB
}
for name, make in cases.items():
    try:
        make()
        print(name, "ok")
    except ValueError as error:
        print(name, "ValueError", error)
    except BaseException as error:
        print(name, "OTHER", type(error).__name__, error)
# and a normal layer still works under the cap
print("small", ib.Conv2d(64, 64, 3)(np.ones((1, 64, 8, 8), np.float32)).shape)
"""


def test_huge_layers_are_refused_before_allocating():
    """Under an address-space cap NumPy's allocator would fail: the check must come first."""
    import subprocess
    import sys

    pytest.importorskip("resource")
    import resource

    # the cap: what this test's child needs to start (numpy, im2colbp) plus 1.5 GiB
    cap = 3 * 2**30 if sys.maxsize > 2**32 else 2**30
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if hard != resource.RLIM_INFINITY and hard < cap:
        pytest.skip("the address-space limit is already below the test's cap")
    result = subprocess.run([sys.executable, "-c", _SIZE_SCRIPT, str(cap)], capture_output=True,
                            text=True, timeout=120,
                            env={**__import__("os").environ, "OPENBLAS_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    for name, argument in [("in2^31", "in_channels=2147483648"),
                           ("30GiB", "in_channels=30000 and out_channels=30000"),
                           ("2^63", "in_channels=9223372036854775808"),
                           ("kernel10^30", "kernel_size="),
                           ("t-out", "out_channels=1099511627776"),
                           ("nd", "kernel_size=(3, 3, 3"),
                           ("over-the-cap", "in_channels=10000 and out_channels=10000")]:
        assert lines[name].startswith("ValueError"), (name, lines[name])
        assert argument in lines[name] and "bytes" in lines[name], (name, lines[name])
    assert "RLIMIT_AS" in lines["over-the-cap"]
    assert lines["under-the-cap"] == "ok"
    assert lines["small"] == "(1, 64, 6, 6)"


def test_each_pending_forward_is_differentiated_at_its_own_weights():
    """An update between two forwards (e.g. truncated BPTT with a step in between)."""
    layer = Conv1d(2, 3, 3, padding=1, dtype=np.float64, rng=0)
    kw = _conv_kwargs(layer)
    x1, x2 = _normal((2, 2, 6), 1), _normal((2, 2, 6), 2)
    w1 = layer.weight.copy()
    y1 = layer(x1)
    layer.weight -= 0.5  # in place, as an optimiser does
    w2 = layer.weight.copy()
    y2 = layer(x2)
    dy1, dy2 = _normal(y1.shape, 3), _normal(y2.shape, 4)
    dx2 = layer.backward(dy2)
    dx1 = layer.backward(dy1)
    np.testing.assert_allclose(dx1, reference.conv_grad_input(dy1, w1, x1.shape, **kw),
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx2, reference.conv_grad_input(dy2, w2, x2.shape, **kw),
                               rtol=1e-12, atol=1e-12)
