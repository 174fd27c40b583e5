"""Antialiased bilinear resizing in NumPy: what ``torch.nn.functional.interpolate(mode="bilinear",
align_corners=False, antialias=True)`` and PIL's ``BILINEAR`` resize compute, without torch.

The filter is separable: along each axis, output sample ``i`` sits at ``(i + 0.5) * scale`` in
input coordinates (half-pixel centres) and averages the input samples under a triangle of
half-width ``max(scale, 1)`` (so shrinking averages, enlarging interpolates), with the weights
renormalised where the window leaves the image. Each axis is a small banded matrix: the weights
and indices are computed once per (input, output) length and cached, and a resize is two
gathers and weighted sums, ``O(taps x output size)``.

The runtime (preprocessing frames, resizing maps back to the video's size, VGGish slices) uses
this; training and the tests check it against torch within float rounding.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import sparse


@functools.lru_cache(maxsize=64)
def axis_weights(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
    """``(index [n_out, K] int64, weight [n_out, K] float32)`` of one axis; rows sum to 1."""
    if n_in < 1 or n_out < 1:
        raise ValueError(f"resize: lengths must be >= 1 (got {n_in} -> {n_out})")
    scale = n_in / n_out
    support = max(scale, 1.0)  # the triangle's half-width in input samples
    centres = (np.arange(n_out, dtype=np.float64) + 0.5) * scale
    first = np.maximum(np.floor(centres - support + 0.5).astype(np.int64), 0)
    last = np.minimum(np.floor(centres + support + 0.5).astype(np.int64), n_in)  # exclusive
    taps = int((last - first).max())
    index = first[:, None] + np.arange(taps)[None, :]
    valid = index < last[:, None]
    dist = (index + 0.5 - centres[:, None]) / support
    weight = np.where(valid, np.maximum(0.0, 1.0 - np.abs(dist)), 0.0)
    weight /= weight.sum(axis=1, keepdims=True)
    index = np.minimum(index, n_in - 1)
    return index, weight.astype(np.float32)


@functools.lru_cache(maxsize=64)
def axis_matrix(n_in: int, n_out: int) -> sparse.csr_matrix:
    """The axis's weights as a sparse ``[n_out, n_in]`` float32 matrix."""
    index, weight = axis_weights(n_in, n_out)
    rows = np.repeat(np.arange(n_out), index.shape[1])
    m = sparse.coo_matrix((weight.ravel(), (rows, index.ravel())), shape=(n_out, n_in), dtype=np.float32)
    return m.tocsr()  # duplicates (clamped indices carry weight 0) are summed


def _resize_axis(x: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    n_in = x.shape[axis]
    if n_in == n_out:
        return x
    moved = np.moveaxis(x, axis, 0)
    rest = moved.shape[1:]
    out = axis_matrix(n_in, n_out) @ moved.reshape(n_in, -1)
    return np.moveaxis(np.asarray(out, np.float32).reshape(n_out, *rest), 0, axis)


def resize(x: np.ndarray, size: tuple[int, int], axes: tuple[int, int] = (-2, -1)) -> np.ndarray:
    """``x`` resized to ``size = (height, width)`` along ``axes`` (default: the last two), float32.

    Height goes first: with ``axes=(0, 1)`` on an ``[H, W, C]`` image (the decoder's layout) that
    pass reads the array as it lies in memory, and the width pass sees the shrunken rows.
    """
    out = np.asarray(x, dtype=np.float32)
    h_axis, w_axis = axes
    out = _resize_axis(out, int(size[0]), h_axis)
    out = _resize_axis(out, int(size[1]), w_axis)
    return np.ascontiguousarray(out)


# --------------------------------------------------------------------------- OpenCV's INTER_LINEAR
_CV_COEF_SCALE = 2048  # OpenCV's INTER_RESIZE_COEF_SCALE: 11-bit fixed-point weights


@functools.lru_cache(maxsize=64)
def _cv2_axis(n_in: int, n_out: int, clamp: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Source indices ``(i0, i1)`` and fixed-point weights ``(w0, w1)`` of one axis of
    ``cv2.resize(..., interpolation=INTER_LINEAR)`` on uint8 images."""
    scale = n_in / n_out
    f = ((np.arange(n_out, dtype=np.float64) + 0.5) * scale - 0.5).astype(np.float32)
    i0 = np.floor(f).astype(np.int64)
    f = (f - i0).astype(np.float32)
    if clamp:  # columns: a sample left of the first / right of the last centre takes that pixel
        low, high = i0 < 0, i0 >= n_in - 1
        f[low | high] = 0.0
        i0 = np.where(low, 0, np.where(high, n_in - 1, i0))
    i1 = np.clip(i0 + 1, 0, n_in - 1)  # rows: the two taps are clipped, the weights are not
    i0 = np.clip(i0, 0, n_in - 1)
    w0 = np.rint((np.float32(1.0) - f) * np.float32(_CV_COEF_SCALE)).astype(np.int64)
    w1 = np.rint(f * np.float32(_CV_COEF_SCALE)).astype(np.int64)
    return i0, i1, w0, w1


def cv2_linear_resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 ``[H, W, C]`` resized to ``size = (height, width)`` as ``cv2.resize(image, (width,
    height))`` (INTER_LINEAR) computes it on x86, bit for bit: bilinear with half-pixel centres and
    NO antialiasing (a shrunk image samples 2 x 2 pixels per output pixel), 11-bit fixed-point
    weights, a horizontal pass into integers and the vertical pass of OpenCV's SIMD kernel
    (``((r0 >> 4) * b0 >> 16) + ((r1 >> 4) * b1 >> 16) + 2) >> 2``). TASED-Net's
    ``run_example.py`` resizes its frames so. Checked against OpenCV 5.1 (tests/golden/cv2_resize.npz).
    """
    img = np.asarray(image)
    if img.dtype != np.uint8 or img.ndim != 3:
        raise ValueError(f"cv2_linear_resize: expected uint8 [H, W, C], got {img.dtype} {img.shape}")
    h, w = int(size[0]), int(size[1])
    x0, x1, a0, a1 = _cv2_axis(img.shape[1], w, True)
    y0, y1, b0, b1 = _cv2_axis(img.shape[0], h, False)
    src = img.astype(np.int64)
    rows = src[:, x0] * a0[None, :, None] + src[:, x1] * a1[None, :, None]  # [H, w, C], scale 2048
    top = (rows[y0] >> 4) * b0[:, None, None] >> 16
    bottom = (rows[y1] >> 4) * b1[:, None, None] >> 16
    return np.clip((top + bottom + 2) >> 2, 0, 255).astype(np.uint8)
