"""Objective quality of an encode against its input, and Bjontegaard deltas.

All metrics compare yuv420p planes (the encoder's input vs the decoded output), 8-bit, peak 255,
and average PER FRAME values over the frames (the usual codec-evaluation convention):

- ``psnr``: YUV PSNR weighted 6:1:1, ``(6 PSNR_Y + PSNR_U + PSNR_V) / 8`` per frame (the JCT-VC /
  HEVC common-test-conditions weighting); ``psnr_y``: luma only. A frame with zero error counts
  as 100 dB.
- ``ssim``: luma SSIM of Wang et al. 2004: Gaussian window 11x11, sigma 1.5, K1 = 0.01, K2 = 0.03,
  mean over the 'valid' window positions (as their ``ssim_index.m``; no down-sampling).
- ``ewpsnr``: eye-tracking-weighted PSNR on luma: ``10 log10(255^2 / sum_px w_px e_px^2)`` with
  ``w = g / sum(g)`` the frame's ground-truth saliency map ``g`` (resized to the picture) normalised
  to sum 1; an all-zero map gives uniform weights (then EWPSNR = PSNR_Y).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import correlate1d

PEAK = 255.0
MAX_DB = 100.0


def _psnr(mse: float) -> float:
    return MAX_DB if mse <= PEAK**2 * 10 ** (-MAX_DB / 10) else float(10.0 * np.log10(PEAK**2 / mse))


def split_planes(yuv: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The Y [H, W], U and V [H/2, W/2] planes of a PyAV yuv420p array [H * 3 / 2, W]."""
    h = yuv.shape[0] * 2 // 3
    w = yuv.shape[1]
    y = yuv[:h]
    chroma = yuv[h:].reshape(2, h // 2, w // 2)
    return y, chroma[0], chroma[1]


def _gaussian_window(size: int = 11, sigma: float = 1.5) -> np.ndarray:
    x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    g = np.exp(-(x**2) / (2 * sigma**2))
    return g / g.sum()


_WINDOW = _gaussian_window()


def _filter_valid(x: np.ndarray) -> np.ndarray:
    k = len(_WINDOW)
    out = correlate1d(correlate1d(x, _WINDOW, axis=0, mode="constant"), _WINDOW, axis=1, mode="constant")
    half = k // 2
    return out[half : x.shape[0] - (k - 1 - half), half : x.shape[1] - (k - 1 - half)]


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean SSIM of two 8-bit grey images (Wang et al. 2004, Gaussian 11x11, sigma 1.5)."""
    x = np.asarray(a, np.float64)
    y = np.asarray(b, np.float64)
    if min(x.shape) < len(_WINDOW):
        raise ValueError(f"ssim: image {x.shape} smaller than the 11x11 window")
    c1, c2 = (0.01 * PEAK) ** 2, (0.03 * PEAK) ** 2
    mx, my = _filter_valid(x), _filter_valid(y)
    sxx = _filter_valid(x * x) - mx * mx
    syy = _filter_valid(y * y) - my * my
    sxy = _filter_valid(x * y) - mx * my
    num = (2 * mx * my + c1) * (2 * sxy + c2)
    den = (mx * mx + my * my + c1) * (sxx + syy + c2)
    return float(np.mean(num / den))


def ewpsnr_frame(ref_y: np.ndarray, out_y: np.ndarray, weights: np.ndarray | None) -> float:
    """EWPSNR of one luma plane; ``weights`` [H, W] >= 0 (normalised here), None = uniform."""
    e2 = (np.asarray(ref_y, np.float64) - np.asarray(out_y, np.float64)) ** 2
    if weights is None:
        return _psnr(float(e2.mean()))
    w = np.clip(np.asarray(weights, np.float64), 0.0, None)
    total = float(w.sum())
    if not total > 0:
        return _psnr(float(e2.mean()))
    return _psnr(float((w * e2).sum() / total))


@dataclass
class Quality:
    """Per-frame accumulators of the metrics; :meth:`summary` gives the means."""

    psnr: list[float] = field(default_factory=list)
    psnr_y: list[float] = field(default_factory=list)
    ewpsnr: list[float] = field(default_factory=list)
    ssim: list[float] = field(default_factory=list)

    def add(
        self, ref: np.ndarray, out: np.ndarray, weights: np.ndarray | None, with_ssim: bool = True
    ) -> None:
        """Score one yuv420p frame ``out`` against ``ref``; ``weights`` [H, W] for EWPSNR."""
        ry, ru, rv = split_planes(ref)
        oy, ou, ov = split_planes(out)
        p = [
            _psnr(float(np.mean((r.astype(np.float64) - o) ** 2))) for r, o in ((ry, oy), (ru, ou), (rv, ov))
        ]
        self.psnr_y.append(p[0])
        self.psnr.append((6 * p[0] + p[1] + p[2]) / 8.0)
        self.ewpsnr.append(ewpsnr_frame(ry, oy, weights))
        if with_ssim:
            self.ssim.append(ssim(ry, oy))

    def summary(self) -> dict[str, float]:
        out = {
            "psnr": float(np.mean(self.psnr)),
            "psnr_y": float(np.mean(self.psnr_y)),
            "ewpsnr": float(np.mean(self.ewpsnr)),
        }
        if self.ssim:
            out["ssim"] = float(np.mean(self.ssim))
        return out


def score(
    reference: Sequence[np.ndarray],
    decoded: Iterable[np.ndarray],
    weights: Iterable[np.ndarray | None],
    with_ssim: bool = True,
) -> dict[str, float]:
    """Mean metrics of decoded yuv420p frames against ``reference``; ``weights`` one map per frame."""
    q = Quality()
    n = 0
    for ref, out, w in zip(reference, decoded, weights, strict=False):
        if out.shape != ref.shape:
            raise ValueError(f"decoded frame {n} has shape {out.shape}, the input {ref.shape}")
        q.add(ref, out, w, with_ssim)
        n += 1
    if n != len(reference):
        raise ValueError(f"decoded {n} frames, the input has {len(reference)}")
    return q.summary()


def bd_rate(
    rate_ref: Sequence[float], q_ref: Sequence[float], rate_test: Sequence[float], q_test: Sequence[float]
) -> float:
    """Bjontegaard delta rate of ``test`` against ``ref``, in percent (negative = ``test`` needs fewer
    bits for the same quality): cubic fits of log10(rate) as a function of quality, integrated over
    the overlapping quality interval. Needs >= 4 points per curve; NaN without overlap."""
    rr, qr = np.log10(np.asarray(rate_ref, np.float64)), np.asarray(q_ref, np.float64)
    rt, qt = np.log10(np.asarray(rate_test, np.float64)), np.asarray(q_test, np.float64)
    if len(qr) < 4 or len(qt) < 4:
        raise ValueError("bd_rate needs at least 4 rate points per curve")
    lo, hi = max(qr.min(), qt.min()), min(qr.max(), qt.max())
    if not hi > lo:
        return float("nan")
    pr, pt = np.polyfit(qr, rr, 3), np.polyfit(qt, rt, 3)
    ir, it = np.polyint(pr), np.polyint(pt)
    avg = ((np.polyval(it, hi) - np.polyval(it, lo)) - (np.polyval(ir, hi) - np.polyval(ir, lo))) / (hi - lo)
    return float((10.0**avg - 1.0) * 100.0)


def bd_quality(
    rate_ref: Sequence[float], q_ref: Sequence[float], rate_test: Sequence[float], q_test: Sequence[float]
) -> float:
    """Bjontegaard delta quality (dB) of ``test`` against ``ref`` at equal rate: cubic fits of quality
    as a function of log10(rate) over the overlapping rate interval (positive = ``test`` better)."""
    rr, qr = np.log10(np.asarray(rate_ref, np.float64)), np.asarray(q_ref, np.float64)
    rt, qt = np.log10(np.asarray(rate_test, np.float64)), np.asarray(q_test, np.float64)
    if len(qr) < 4 or len(qt) < 4:
        raise ValueError("bd_quality needs at least 4 rate points per curve")
    lo, hi = max(rr.min(), rt.min()), min(rr.max(), rt.max())
    if not hi > lo:
        return float("nan")
    ir, it = np.polyint(np.polyfit(rr, qr, 3)), np.polyint(np.polyfit(rt, qt, 3))
    return float(
        ((np.polyval(it, hi) - np.polyval(it, lo)) - (np.polyval(ir, hi) - np.polyval(ir, lo))) / (hi - lo)
    )
