"""Deterministic built-in demo data: a small RGB image and recognisable filters."""

from __future__ import annotations

from typing import Tuple

import numpy as np

__all__ = ["rgb_image", "edge_filters"]


def rgb_image(size: int = 5) -> np.ndarray:
    """A ``(3, size, size)`` image with small integer values a person can check.

    Red rises left to right, green top to bottom, blue is a bright centre square.

    Examples
    --------
    >>> from im2colbp.examples import rgb_image
    >>> rgb_image(3)[0]
    array([[0., 1., 2.],
           [0., 1., 2.],
           [0., 1., 2.]])
    """
    ramp = np.arange(size, dtype=np.float64)
    red = np.tile(ramp, (size, 1))
    green = red.T.copy()
    blue = np.zeros((size, size))
    low, high = size // 3, size - size // 3
    blue[low:high, low:high] = 4.0
    return np.stack([red, green, blue])


def edge_filters() -> Tuple[np.ndarray, np.ndarray]:
    """Two 3×3 filters over 3 channels and their biases: weight ``(2, 3, 3, 3)``, bias ``(2,)``.

    Filter 0 is a vertical-edge (Sobel-x) detector on red; filter 1 a
    horizontal-edge (Sobel-y) detector on green plus the mean of blue.

    Examples
    --------
    >>> from im2colbp.examples import edge_filters
    >>> w, b = edge_filters()
    >>> w.shape, b.tolist()
    ((2, 3, 3, 3), [0.5, -1.0])
    """
    sobel_x = np.array([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    weight = np.zeros((2, 3, 3, 3))
    weight[0, 0] = sobel_x
    weight[1, 1] = sobel_x.T
    weight[1, 2] = 1.0 / 9.0
    return weight, np.array([0.5, -1.0])
