"""Max-unpooling without MaxUnpool or scatter: equal to PyTorch's CPU result, ties and overlaps included.

TASED-Net's decoder unpools with the indices of max pools over ``(1, kh, kw)`` windows
(``nn.MaxPool3d(return_indices=True)`` then ``nn.MaxUnpool3d``). MaxUnpool has no TensorRT
implementation and exports to ONNX as a scatter. This module splits it in two exportable halves:

:func:`window_argmax` (encoder side)
    For each pooled position, the *offset* of its window's maximum inside the window,
    ``i * kw + j`` for the window cell ``(i, j)`` (0 .. kh*kw-1), as float32. It is found by
    comparing each of the ``kh*kw`` strided views of the padded input with the pooled maximum;
    the first cell that equals it wins. That is the index PyTorch's CPU ``max_pool3d`` returns:
    its kernel scans the in-bounds cells of a window in raster order and keeps a cell only if it
    is strictly greater than the best so far, so among equal values the first in raster order
    wins (padding cells are never chosen: here they are ``-inf``). The pooled grid is 4x
    (stride 2) smaller than the input, so the decoder gets these codes instead of the pre-pool
    tensor.

:func:`unpool_argmax` (decoder side)
    ``MaxUnpool3d(z, indices)`` from those offsets. Window ``q`` (pooled position) puts its value
    at ``p = q * stride - padding + (i, j)``; for a fixed offset ``(i, j)`` that map is injective,
    so each offset's contribution is a zero-inserted (stride), shifted copy of ``z`` masked to the
    windows that chose that offset (pads and slices only). Where windows overlap (kernel 3,
    stride 2: a third of the indices of TASED's two overlapping unpoolings repeat), several
    windows can choose the same cell; PyTorch's CPU kernel writes the pooled positions in raster
    order, so the LAST window in raster order wins. Two windows ``q != q'`` that reach the same
    cell with offsets ``k, k'`` satisfy ``q * s + k = q' * s + k'``: the later window (larger
    ``q_h``, then larger ``q_w``) is the one with the lexicographically SMALLER offset. So the
    contributions are merged with ``where`` from the largest offset to the smallest, the smallest
    written last.

Windows extend over one frame (``kernel_t = stride_t = 1``), so frames never interact; indices of
the official code run over the flattened ``T*H*W`` volume of each (batch, channel) and stay in
their frame. NaN inputs are out of scope (PyTorch picks a NaN as the maximum; here no cell of a
NaN window matches and the offset is 0).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Pair = tuple[int, int]


def pooled_size(n: int, kernel: int, stride: int, padding: int) -> int:
    """Pooled length of an axis of length ``n`` (floor mode, as the official pools)."""
    return (n + 2 * padding - kernel) // stride + 1


def window_argmax(x: Tensor, kernel: Pair, stride: Pair, padding: Pair) -> Tensor:
    """Offsets (float32, ``i * kw + j``) of the maximum of each ``(1, kh, kw)`` window of
    ``x [B, C, T, H, W]``, as CPU ``max_pool3d(..., return_indices=True)`` chooses it (the first
    maximum in raster order). Shape: the pooled shape ``[B, C, T, Hq, Wq]``."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    h, w = int(x.shape[-2]), int(x.shape[-1])
    hq, wq = pooled_size(h, kh, sh, ph), pooled_size(w, kw, sw, pw)
    need_h, need_w = (hq - 1) * sh + kh, (wq - 1) * sw + kw  # padded extent the windows read
    pad_b, pad_r = need_h - h - ph, need_w - w - pw
    xp = F.pad(x, (pw, max(pad_r, 0), ph, max(pad_b, 0)), value=float("-inf"))
    xp = xp[..., :need_h, :need_w]
    best = F.max_pool3d(x, (1, kh, kw), (1, sh, sw), (0, ph, pw))
    offsets = torch.zeros_like(best)
    taken = torch.zeros_like(best, dtype=torch.bool)
    for i in range(kh):
        for j in range(kw):
            cell = xp[..., i : i + (hq - 1) * sh + 1 : sh, j : j + (wq - 1) * sw + 1 : sw]
            first = (cell == best) & ~taken
            offsets = torch.where(first, torch.full_like(offsets, float(i * kw + j)), offsets)
            taken = taken | first
    return offsets


def _zero_insert(y: Tensor, sh: int, sw: int) -> Tensor:
    """``[..., Hq, Wq] -> [..., Hq*sh, Wq*sw]`` with ``y[q]`` at ``q * stride``, zeros elsewhere."""
    if sw > 1:
        y = F.pad(y.unsqueeze(-1), (0, sw - 1)).flatten(-2)
    if sh > 1:
        y = F.pad(y.unsqueeze(-2), (0, 0, 0, sh - 1)).flatten(-3, -2)
    return y


def _shift_crop(z: Tensor, d_h: int, d_w: int, h: int, w: int) -> Tensor:
    """``out[p] = z[p + d]`` for ``p`` in ``[0, h) x [0, w)`` (zero outside ``z``): slices and pads."""
    n_h, n_w = int(z.shape[-2]), int(z.shape[-1])
    h0, h1 = max(d_h, 0), min(d_h + h, n_h)
    w0, w1 = max(d_w, 0), min(d_w + w, n_w)
    front_h, front_w = h0 - d_h, w0 - d_w
    part = z[..., h0:h1, w0:w1]
    return F.pad(part, (front_w, w - front_w - (w1 - w0), front_h, h - front_h - (h1 - h0)))


def unpool_argmax(
    z: Tensor, offsets: Tensor, kernel: Pair, stride: Pair, padding: Pair, output_hw: Pair
) -> Tensor:
    """``MaxUnpool3d((1, kh, kw), (1, sh, sw), (0, ph, pw))(z, indices, output_size)`` on the CPU,
    given :func:`window_argmax`'s offsets instead of the flat indices; ``z`` and ``offsets`` are
    ``[B, C, T, Hq, Wq]``, the result ``[B, C, T, *output_hw]``. Overlapping windows: the last
    write in raster order wins (see the module docstring)."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    h, w = output_hw
    out: Tensor | None = None
    zero = torch.zeros_like(z)
    for k in reversed(range(kh * kw)):  # the smallest offset is written last: it wins overlaps
        i, j = divmod(k, kw)
        chosen = offsets == float(k)
        value = _shift_crop(_zero_insert(torch.where(chosen, z, zero), sh, sw), ph - i, pw - j, h, w)
        if out is None:
            out = value
            continue
        hit = _shift_crop(_zero_insert(chosen.to(z.dtype), sh, sw), ph - i, pw - j, h, w)
        out = torch.where(hit > 0.5, value, out)
    assert out is not None
    return out
