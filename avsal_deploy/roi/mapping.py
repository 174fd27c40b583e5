"""Saliency maps -> per-block QP offset maps on an encoder's block grid.

Conventions (every function of this package):

- A QP offset map is float32 ``[rows, cols]`` with ``rows = ceil(H / block)``, ``cols = ceil(W / block)``
  for a source of ``H x W`` pixels, blocks in raster order (row 0 is the top of the picture). The
  last row / column covers a partial block when the size is not a multiple of the block.
- Offsets are in H.264/HEVC QP units (the quantiser step doubles every 6 QP) and are ADDED to the QP
  the rate control picks: **negative = finer quantisation = more bits = better quality** (the sign of
  FFmpeg's ``AVRegionOfInterest.qoffset``, x264's ``quant_offsets`` and NVENC's QP-delta map).
- x264 macroblocks and FFmpeg's ROI handling for libx264 and libx265 both use 16x16 blocks.

The mapping (:class:`RoiParams`, :func:`qp_offsets`), in four steps:

1. Block saliency ``s_b``: the map resized to the source size, area-averaged over each block (a
   partial edge block averages its real pixels). Area averaging is what eye-tracking-weighted
   distortion needs: the weighted squared error of block b is ``sum_px g_px e_px^2``, i.e. about
   ``mean_b(g) * SSE_b``.
2. Relative importance ``r_b = s_b^gamma / mean(s^gamma)`` (mean 1; ``gamma = 1`` matches EWPSNR,
   ``gamma > 1`` concentrates bits on the peaks), mixed with a uniform floor against
   missed fixations and prediction errors: ``w_b = floor + (1 - floor) * r_b`` (still mean 1).
3. Offsets as a log ratio: ``dQP_b = -strength * log2(w_b / ref)``. With distortion ~ Qstep^2 and
   rate ~ -log2 Qstep per block (the high-rate model), minimising ``sum_b w_b D_b`` at a fixed total
   rate gives ``Qstep_b^2 ~ 1 / w_b``, i.e. ``dQP_b = -3 log2(w_b) + c``: ``strength = 3`` is the
   classic rate-allocation optimum for weighted MSE; low rates (skipped blocks, dead zone) make a
   different strength better in practice, so it is a parameter (the default is measured, see the README).
   ``ref`` is chosen so the offsets average to zero in the budget-neutral mode (default); otherwise
   ``ref = 1`` (a block of average importance keeps the rate control's QP).
4. Clamp to ``[-max_delta, +max_delta]``; in the budget-neutral mode the shift is solved after the
   clamp (bisection), so the clamped offsets still average to exactly zero.

Temporal smoothing (:class:`OffsetSmoother`) runs on the importance ``w`` before step 3: a block whose
importance rises takes it at once (no lag on the leading edge of a moving object), a block whose
importance falls releases it exponentially (``w_t = max(w_raw, release * w_{t-1} + (1 - release) * w_raw)``),
so ROIs do not flicker when a map dips for a frame.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from avsal_deploy.errors import AvsalError

#: Block size of each in-process codec's ROI grid (FFmpeg's libx264 / libx265 wrappers).
CODEC_BLOCK = {"x264": 16, "x265": 16}
#: Measured best strength per codec at equal bitrate (README, "ROI video coding"); the other
#: defaults of :class:`RoiParams` are shared.
DEFAULT_STRENGTH = {"x264": 2.0, "x265": 1.0}
#: QP range FFmpeg scales ``AVRegionOfInterest.qoffset`` ([-1, 1]) by, for 8-bit video.
QP_RANGE_8BIT = 51


@dataclass(frozen=True)
class RoiParams:
    """How maps become QP offsets (see the module docstring for the formulae).

    ``strength``: QP per halving of relative importance. ``gamma``: exponent on block saliency.
    ``floor``: weight of the uniform prior mixed into the importance, in [0, 1] (1 = no ROI).
    ``max_delta``: clamp on |offset| in QP. ``neutral``: offsets average to zero over the blocks.
    ``release``: temporal smoothing coefficient in [0, 1) for falling importance (0 = none).
    """

    strength: float = 2.0
    gamma: float = 1.0
    floor: float = 0.2
    max_delta: float = 10.0
    neutral: bool = True
    release: float = 0.5

    def __post_init__(self) -> None:
        if not (self.strength >= 0 and math.isfinite(self.strength)):
            raise AvsalError(f"roi strength={self.strength}: must be a finite number >= 0")
        if not self.gamma > 0:
            raise AvsalError(f"roi gamma={self.gamma}: must be > 0")
        if not 0.0 <= self.floor <= 1.0:
            raise AvsalError(f"roi floor={self.floor}: must be in [0, 1]")
        if not self.max_delta >= 0:
            raise AvsalError(f"roi max_delta={self.max_delta}: must be >= 0")
        if not 0.0 <= self.release < 1.0:
            raise AvsalError(f"roi release={self.release}: must be in [0, 1)")

    def to_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def default_params(codec: str) -> RoiParams:
    """The default mapping for ``codec``: :class:`RoiParams` with the codec's measured strength."""
    codec_block(codec)
    return RoiParams(strength=DEFAULT_STRENGTH[codec])


def block_grid(source_size: tuple[int, int], block: int = 16) -> tuple[int, int]:
    """(rows, cols) of the ``block`` grid over an ``(H, W)`` source: ceil division."""
    h, w = int(source_size[0]), int(source_size[1])
    if h < 1 or w < 1:
        raise AvsalError(f"source size {h}x{w}: must be positive")
    return -(-h // block), -(-w // block)


def codec_block(codec: str) -> int:
    """The ROI block size of ``codec`` (``x264`` or ``x265``)."""
    try:
        return CODEC_BLOCK[codec]
    except KeyError:
        raise AvsalError(f"unknown codec {codec!r}: choose one of {', '.join(CODEC_BLOCK)}") from None


def _resize(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if saliency.shape == tuple(size):
        return saliency
    from avsal_deploy.data.resize import resize

    return np.asarray(resize(saliency, size), dtype=np.float32)


def block_means(values: np.ndarray, block: int) -> np.ndarray:
    """Area average of ``values`` [H, W] over each ``block`` x ``block`` block (partial edge blocks
    average their real pixels): float64 [ceil(H/block), ceil(W/block)]."""
    h, w = values.shape
    starts_r, starts_c = np.arange(0, h, block), np.arange(0, w, block)
    sums = np.add.reduceat(np.add.reduceat(values, starts_c, axis=1), starts_r, axis=0)
    n_r = np.diff(np.append(starts_r, h))
    n_c = np.diff(np.append(starts_c, w))
    return sums.astype(np.float64) / np.outer(n_r, n_c)


def block_saliency(saliency: np.ndarray, source_size: tuple[int, int], block: int = 16) -> np.ndarray:
    """Step 1: the map (any size; resized to ``source_size`` = (H, W)) area-averaged per block,
    float64 [rows, cols], values >= 0 (block means below 0 become 0)."""
    m = np.asarray(saliency, dtype=np.float32)
    if m.ndim != 2:
        raise AvsalError(f"saliency map of shape {m.shape}: expected [H, W]")
    b = block_means(_resize(m, (int(source_size[0]), int(source_size[1]))), block)
    if not np.all(np.isfinite(b)):  # a NaN / inf pixel reaches its block mean
        raise AvsalError("saliency map has NaN or infinite values")
    return np.maximum(b, 0.0)  # saliency is >= 0 (maps are in [0, 1]; negatives count as 0 per block)


def importance(block_sal: np.ndarray, params: RoiParams) -> np.ndarray:
    """Step 2: relative importance ``w_b = floor + (1 - floor) * s_b^gamma / mean(s^gamma)``, mean 1.
    An all-zero map gives ``w = 1`` everywhere (no ROI)."""
    s = np.power(np.asarray(block_sal, np.float64), params.gamma)
    mean = float(s.mean())
    if not mean > 0:
        return np.ones_like(s)
    return params.floor + (1.0 - params.floor) * (s / mean)


def _zero_mean_clamp(u: np.ndarray, limit: float) -> np.ndarray:
    """``clip(u - c, -limit, limit)`` with the shift ``c`` that makes the mean exactly zero."""
    if limit == 0:
        return np.zeros_like(u)
    c = float(u.mean())
    if float(np.abs(u - c).max()) <= limit:  # the clamp is not active: the shift is the mean
        return u - c
    lo, hi = float(u.min()) - limit, float(u.max()) + limit  # mean(clip(u - c)) is +limit at lo, -limit at hi
    for _ in range(60):
        c = 0.5 * (lo + hi)
        m = float(np.clip(u - c, -limit, limit).mean())
        if m > 0:
            lo = c
        else:
            hi = c
        if hi - lo < 1e-9:
            break
    return np.clip(u - 0.5 * (lo + hi), -limit, limit)


def offsets_from_importance(w: np.ndarray, params: RoiParams) -> np.ndarray:
    """Steps 3-4: ``dQP = clamp(-strength * log2(w / ref))`` as float32 (see the module docstring)."""
    u = -params.strength * np.log2(np.maximum(np.asarray(w, np.float64), 1e-12))
    if params.neutral:
        out = _zero_mean_clamp(u, params.max_delta)
    else:
        out = np.clip(u, -params.max_delta, params.max_delta)
    return out.astype(np.float32)


def qp_offsets(
    saliency: np.ndarray,
    source_size: tuple[int, int],
    codec: str = "x264",
    params: RoiParams | None = None,
) -> np.ndarray:
    """QP offsets for one map, stateless: float32 [ceil(H/16), ceil(W/16)] for ``codec``'s block grid.

    ``saliency``: [h, w] map in [0, 1] at any resolution (resized to ``source_size`` = (H, W) of the
    video being encoded). Offsets in QP, negative = more bits, raster order; average zero in the
    budget-neutral mode (default). For a stream, keep an :class:`OffsetSmoother` per stream instead.
    """
    p = params or default_params(codec)
    w = importance(block_saliency(saliency, source_size, codec_block(codec)), p)
    return offsets_from_importance(w, p)


class OffsetSmoother:
    """Per-stream state: maps in, temporally smoothed QP offsets out (one call per frame, in order).

    ``OffsetSmoother(source_size, codec, params)(map) -> float32 [rows, cols]``; the smoothing is the
    fast-attack / exponential-release filter of the module docstring on the importance. Not thread
    safe: one object per stream (e.g. per correlation id in a server).
    """

    def __init__(
        self, source_size: tuple[int, int], codec: str = "x264", params: RoiParams | None = None
    ) -> None:
        self.source_size = (int(source_size[0]), int(source_size[1]))
        self.codec = codec
        self.block = codec_block(codec)
        self.params = params or default_params(codec)
        self.grid = block_grid(self.source_size, self.block)
        self._w: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the history (a scene cut, a new stream)."""
        self._w = None

    def __call__(self, saliency: np.ndarray) -> np.ndarray:
        p = self.params
        w = importance(block_saliency(saliency, self.source_size, self.block), p)
        if self._w is not None and p.release > 0:
            w = np.maximum(w, p.release * self._w + (1.0 - p.release) * w)
        self._w = w
        return offsets_from_importance(w, p)


def offsets_for_maps(
    maps: np.ndarray,
    source_size: tuple[int, int],
    codec: str = "x264",
    params: RoiParams | None = None,
) -> np.ndarray:
    """Smoothed offsets for a whole video's maps [N, h, w]: float32 [N, rows, cols]."""
    smoother = OffsetSmoother(source_size, codec, params)
    return np.stack([smoother(m) for m in maps])


def naive_offsets(
    saliency: np.ndarray, source_size: tuple[int, int], top: int = 60, scale: float = 0.4, block: int = 16
) -> np.ndarray:
    """The naive baseline mapping: ``qoffset = -scale * s_b`` (s_b = block mean of the max-normalised
    map) on the ``top`` most salient blocks, 0 elsewhere; returned in QP (``qoffset * 51``)."""
    s = block_saliency(saliency, source_size, block)
    peak = float(s.max())
    out = np.zeros(s.shape, np.float32)
    if peak <= 0:
        return out
    s = s / peak
    idx = np.argsort(s, axis=None)[::-1][: min(top, s.size)]
    out.flat[idx] = -scale * s.flat[idx] * QP_RANGE_8BIT
    return out


def flicker(offsets: np.ndarray) -> float:
    """Mean absolute frame-to-frame change of offsets [N, rows, cols], in QP (0 for one frame)."""
    o = np.asarray(offsets, np.float64)
    return float(np.abs(np.diff(o, axis=0)).mean()) if len(o) > 1 else 0.0
