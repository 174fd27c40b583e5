"""Saliency metrics with the MIT saliency benchmark definitions.

Reference: the MATLAB code of the MIT/Tuebingen saliency benchmark (cvzoya/saliency,
``code_forMetrics``: ``CC.m``, ``NSS.m``, ``KLdiv.m``, ``similarity.m``, ``AUC_Judd.m``,
``AUC_shuffled.m``). Every metric here follows those files step by step, in float64:

* ``cc``: Pearson correlation of the prediction and the continuous ground-truth map (both z-scored
  with the N-1 standard deviation, as MATLAB's ``std``; ``corr2`` of the z-scored maps).
* ``nss``: the prediction z-scored (N-1 standard deviation), averaged over fixated pixels; no epsilon.
* ``kld``: both maps sum-normalised (an all-zero map stays zero), then
  ``sum(gt * log(eps + gt / (pred + eps)))`` with MATLAB's ``eps`` = 2**-52 = 2.2204e-16.
* ``sim``: each map min-max normalised THEN sum-normalised (an all-zero map stays zero), then
  ``sum(min(pred, gt))``.
* ``auc_judd``: ROC of the prediction (tiny jitter, then min-max) with the prediction values at
  the fixated pixels as thresholds.
* ``sauc``: ROC against negatives drawn from fixation locations of OTHER images/frames
  (``AUC_shuffled.m``), at fixed threshold steps, averaged over random splits.

Conventions (the same for every function):

* Maps are 2-D arrays ``[H, W]`` of any real dtype; they are converted to float64. Fixation maps are
  binary ``[H, W]`` arrays: every non-zero pixel is one fixated location (a pixel fixated twice
  counts once, as in the MIT code; pysaliency, which takes fixation coordinates, counts it twice).
* Different sizes: the PREDICTION is resized to the size of the ground truth / fixation map, never
  the other way round (MIT: ``imresize(saliencyMap, size(fixationMap))``). Deviation: MATLAB's
  ``imresize`` defaults to bicubic; we resize with its bilinear kernel (same pixel-centre geometry,
  same antialiasing when shrinking, same mirrored borders, see :func:`resize_map`). The bicubic
  kernel overshoots below zero next to sharp peaks, and a negative prediction makes KL undefined
  (complex in MATLAB, NaN here); the bilinear kernel never leaves the input's value range. Call
  ``resize_map(pred, shape, method="bicubic")`` first to reproduce MATLAB bit for bit.
* Undefined cases return NaN, exactly where the MIT code does (it returns NaN and prints a message):
  a prediction (or, for CC, a ground truth) that is constant has no z-score (CC, NSS), no min-max
  normalisation (SIM, AUCs) and gives NaN; a fixation map without fixations gives NaN for NSS and the
  AUCs. Two cases stay finite because the MIT code guards them: an all-zero map is left as zero in
  KL and SIM (so SIM with an all-zero map is 0). We detect "constant" exactly (max == min) instead of
  relying on 0/0, so a constant map gives NaN even when the float mean does not round back to the
  constant. :func:`aggregate` states how NaN frames are averaged.

The batched ``*_batch`` functions compute CC/NSS/KL/SIM over a stack ``[N, H, W]`` in one pass (used
by :func:`evaluate_frames` and for validation during training) and equal the scalar functions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

__all__ = [
    "MATLAB_EPS",
    "METRIC_NAMES",
    "VIDEO_METRICS",
    "EvalResult",
    "aggregate",
    "auc_judd",
    "cc",
    "cc_batch",
    "evaluate_frames",
    "frame_metrics",
    "kld",
    "kld_batch",
    "nss",
    "nss_batch",
    "resize_map",
    "sauc",
    "shuffled_fixations",
    "sim",
    "sim_batch",
]

MATLAB_EPS: float = float(np.finfo(np.float64).eps)
"""MATLAB's ``eps`` (2**-52 = 2.2204e-16), the regulariser of the MIT KL divergence."""

METRIC_NAMES: tuple[str, ...] = ("cc", "nss", "kld", "sim", "auc_j", "sauc")
#: The metrics a video is scored with on its own (every MIT metric but sAUC, whose negatives are
#: fixations of the other videos of a data set): what ``avsal score --gt`` reports.
VIDEO_METRICS: tuple[str, ...] = ("cc", "nss", "kld", "sim", "auc_j")
"""Names accepted by :func:`evaluate_frames`, in the order the video-saliency papers report them."""

_AUC_JITTER_SCALE = 1e-7  # MIT AUC_Judd: saliencyMap + rand(size(saliencyMap)) / 10000000
_THRESHOLD_TOLERANCE = 1e-10  # MATLAB's colon operator includes an end point lost to rounding


# --------------------------------------------------------------------------------------------------
# Resizing (MATLAB imresize geometry)
# --------------------------------------------------------------------------------------------------


def _cubic(x: np.ndarray) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5 (MATLAB/Pillow bicubic), support [-2, 2]."""
    ax = np.abs(x)
    ax2, ax3 = ax * ax, ax * ax * ax
    inner = (1.5 * ax3 - 2.5 * ax2 + 1.0) * (ax <= 1.0)
    outer = (-0.5 * ax3 + 2.5 * ax2 - 4.0 * ax + 2.0) * ((ax > 1.0) & (ax <= 2.0))
    return inner + outer


def _triangle(x: np.ndarray) -> np.ndarray:
    """Linear interpolation kernel, support [-1, 1]."""
    return np.clip(1.0 - np.abs(x), 0.0, None)


_KERNELS: dict[str, tuple[Callable[[np.ndarray], np.ndarray], float]] = {
    "bilinear": (_triangle, 2.0),
    "bicubic": (_cubic, 4.0),
}


def _resize_matrix(in_len: int, out_len: int, method: str) -> np.ndarray:
    """``[out_len, in_len]`` matrix of one separable MATLAB ``imresize`` pass along one axis.

    Output pixel ``x`` (0-based) samples the input at ``u = (x + 0.5) / scale - 0.5``; when shrinking
    the kernel is stretched by ``1 / scale`` (antialiasing); weights are normalised to sum to 1 and
    indices beyond the border are mirrored (``[0..n-1, n-1..0]`` repeated), as MATLAB does.
    """
    kernel, width = _KERNELS[method]
    scale = out_len / in_len
    stretch = min(scale, 1.0)  # antialiasing: widen the kernel by 1 / scale when shrinking
    width = width / stretch
    u = (np.arange(out_len, dtype=np.float64) + 0.5) / scale - 0.5
    left = np.floor(u - width / 2.0).astype(np.int64)
    taps = int(np.ceil(width)) + 2
    idx = left[:, None] + np.arange(taps, dtype=np.int64)[None, :]
    w = stretch * kernel(stretch * (u[:, None] - idx))
    w = w / w.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(in_len), np.arange(in_len)[::-1]])
    src = mirror[np.mod(idx, 2 * in_len)]
    matrix = np.zeros((out_len, in_len), dtype=np.float64)
    np.add.at(matrix, (np.repeat(np.arange(out_len), taps), src.ravel()), w.ravel())
    return matrix


def resize_map(
    saliency_map: np.ndarray, shape: tuple[int, int], method: Literal["bilinear", "bicubic"] = "bilinear"
) -> np.ndarray:
    """Resize the last two axes of ``saliency_map`` to ``shape`` like MATLAB's ``imresize``.

    Works on one map ``[H, W]`` or a stack ``[..., H, W]``; returns float64 and no clipping (MATLAB
    does not clip doubles). ``method="bicubic"`` is MATLAB's default; the metrics use ``"bilinear"``
    (see the module docstring). A map already of size ``shape`` is returned unchanged (as float64);
    a constant map stays exactly constant.
    """
    if method not in _KERNELS:
        raise ValueError(f"resize_map: method must be one of {sorted(_KERNELS)}, got {method!r}")
    x = np.asarray(saliency_map, dtype=np.float64)
    if x.ndim < 2:
        raise ValueError(f"resize_map: expected a map [..., H, W], got shape {x.shape}")
    out_h, out_w = (int(s) for s in shape)
    if out_h < 1 or out_w < 1:
        raise ValueError(f"resize_map: target shape must be positive, got {shape}")
    in_h, in_w = x.shape[-2:]
    if (in_h, in_w) == (out_h, out_w):
        return x
    out = x
    if in_h != out_h:
        out = np.matmul(_resize_matrix(in_h, out_h, method), out)
    if in_w != out_w:
        out = np.matmul(out, _resize_matrix(in_w, out_w, method).T)
    # The weights sum to 1 only up to rounding: keep constant maps exactly constant, so that the
    # metrics still recognise them (a 1-ulp ripple would turn CC's NaN into an arbitrary number).
    lo = x.min(axis=(-2, -1), keepdims=True)
    return np.where(lo == x.max(axis=(-2, -1), keepdims=True), lo, out)


# --------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------


def _as_map(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty 2-D map [H, W], got shape {arr.shape}")
    return arr


def _as_fixations(x: np.ndarray, name: str, shape: tuple[int, ...] | None = None) -> np.ndarray:
    arr = np.asarray(x)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty binary 2-D map [H, W], got shape {arr.shape}")
    if shape is not None and arr.shape != shape:
        raise ValueError(f"{name}: shape {arr.shape} differs from the fixation map's {shape}")
    return arr != 0


def _prediction(pred: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """The prediction as float64 at the ground truth's size (see the module docstring)."""
    return resize_map(_as_map(pred, "pred"), (shape[0], shape[1]))


def _is_constant(x: np.ndarray) -> bool:
    return bool(x.max() == x.min())


def _trapezoid(x: np.ndarray, y: np.ndarray) -> float:
    """MATLAB ``trapz(x, y)``: area under the piecewise-linear curve through (x, y)."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) * 0.5))


# --------------------------------------------------------------------------------------------------
# Single-map metrics
# --------------------------------------------------------------------------------------------------


def cc(pred: np.ndarray, gt: np.ndarray) -> float:
    """Linear correlation coefficient (MIT ``CC.m``) of ``pred`` and the continuous map ``gt``.

    Both maps are z-scored (N-1 standard deviation) and correlated with MATLAB's ``corr2``, which
    equals Pearson's r. Range [-1, 1]. NaN when either map is constant (MIT: 0/0 in the z-score).
    """
    g = _as_map(gt, "gt")
    p = _prediction(pred, g.shape)
    if _is_constant(p) or _is_constant(g):
        return float("nan")
    pz = (p - p.mean()) / p.std(ddof=1)
    gz = (g - g.mean()) / g.std(ddof=1)
    pc, gc = pz - pz.mean(), gz - gz.mean()
    return float(np.sum(pc * gc) / np.sqrt(np.sum(pc * pc) * np.sum(gc * gc)))


def nss(pred: np.ndarray, fixations: np.ndarray) -> float:
    """Normalized scanpath saliency (MIT ``NSS.m``): mean z-scored prediction at fixated pixels.

    The z-score uses the N-1 standard deviation (MATLAB ``std``; pysaliency uses N, which scales the
    score by sqrt(N / (N-1))); no epsilon. NaN when ``fixations`` has no fixation (MATLAB's mean of
    an empty set) or when the prediction is constant (0/0).
    """
    fix = _as_fixations(fixations, "fixations")
    if not fix.any():
        return float("nan")
    p = _prediction(pred, fix.shape)
    if _is_constant(p):
        return float("nan")
    z = (p - p.mean()) / p.std(ddof=1)
    return float(z[fix].mean())


def kld(pred: np.ndarray, gt: np.ndarray) -> float:
    """KL divergence of the prediction from the ground truth (MIT ``KLdiv.m``); lower is better.

    Both maps are sum-normalised (an all-zero map is left as zero), then
    ``sum(gt * log(eps + gt / (pred + eps)))`` with ``eps`` = :data:`MATLAB_EPS`. Maps must be
    non-negative (as in the MIT code, a negative prediction makes the logarithm undefined: NaN).
    An all-zero ``gt`` gives 0.
    """
    g = _as_map(gt, "gt")
    p = _prediction(pred, g.shape)
    if p.any():
        p = p / p.sum()
    if g.any():
        g = g / g.sum()
    return float(np.sum(g * np.log(MATLAB_EPS + g / (p + MATLAB_EPS))))


def _sim_normalise(x: np.ndarray) -> np.ndarray | None:
    """Min-max then sum-normalise (MIT ``similarity.m``); zero stays zero; None if undefined."""
    if not x.any():
        return x
    if _is_constant(x):
        return None
    x = (x - x.min()) / (x.max() - x.min())
    return x / x.sum()


def sim(pred: np.ndarray, gt: np.ndarray) -> float:
    """Similarity / histogram intersection (MIT ``similarity.m``), in [0, 1].

    Each map is min-max normalised THEN sum-normalised; an all-zero map stays all-zero (so the score
    is 0 against it); the score is ``sum(min(pred, gt))``. A constant non-zero map cannot be min-max
    normalised: NaN, as in the MIT code. (pysaliency's SIM skips the min-max step, so it differs
    whenever a map's minimum is not 0.)
    """
    g_raw = _as_map(gt, "gt")
    p = _sim_normalise(_prediction(pred, g_raw.shape))
    g = _sim_normalise(g_raw)
    if p is None or g is None:
        return float("nan")
    return float(np.sum(np.minimum(p, g)))


def auc_judd(pred: np.ndarray, fixations: np.ndarray, jitter: bool = True, seed: int = 0) -> float:
    """AUC-Judd (MIT ``AUC_Judd.m``), in [0, 1]; 0.5 is chance.

    With ``jitter`` the prediction gets ``uniform(0, 1) * 1e-7`` added to break ties of flat regions
    (MIT: ``rand / 10000000``; seeded here with ``seed`` for reproducibility, so values differ from
    MATLAB's random stream by at most that jitter's effect). The prediction is then min-max
    normalised; the thresholds are the prediction values at the fixated pixels sorted in descending
    order; at the i-th threshold ``tp = i / Nfix`` and ``fp = (#pixels >= threshold - i) /
    (Npixels - Nfix)``; the curve is padded with (0, 0) and (1, 1) and integrated with the trapezoid
    rule. NaN without fixations, for a constant prediction without jitter, or when every pixel is
    fixated (no negatives). A constant prediction WITH jitter scores about 0.5, as in MATLAB.
    """
    fix = _as_fixations(fixations, "fixations")
    if not fix.any():
        return float("nan")
    s = _prediction(pred, fix.shape)
    if jitter:
        s = s + np.random.default_rng(seed).random(s.shape) * _AUC_JITTER_SCALE
    n_pix, n_fix = s.size, int(fix.sum())
    if _is_constant(s) or n_fix == n_pix:
        return float("nan")
    s = (s - s.min()) / (s.max() - s.min())
    thresholds = np.sort(s[fix])[::-1]
    above = n_pix - np.searchsorted(np.sort(s.ravel()), thresholds, side="left")
    i = np.arange(1, n_fix + 1, dtype=np.float64)
    tp = np.concatenate([[0.0], i / n_fix, [1.0]])
    fp = np.concatenate([[0.0], (above - i) / (n_pix - n_fix), [1.0]])
    return _trapezoid(fp, tp)


def _counts_at_or_above(sorted_values: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    return sorted_values.size - np.searchsorted(sorted_values, thresholds, side="left")


def sauc(
    pred: np.ndarray,
    fixations: np.ndarray,
    other_fixations: np.ndarray,
    n_splits: int = 100,
    step_size: float = 0.1,
    seed: int = 0,
) -> float:
    """Shuffled AUC (MIT ``AUC_shuffled.m``, after Borji), in [0, 1]; a pure centre bias scores ~0.5.

    ``other_fixations`` is a binary map of fixations from OTHER images/frames (Borji: the union of 10
    others, see :func:`shuffled_fixations`), of the same size as ``fixations``. The prediction is
    min-max normalised (no jitter). For each of ``n_splits`` random splits, ``min(Nfix, #other)``
    locations of ``other_fixations`` are drawn without replacement as negatives; thresholds run from
    ``k * step_size`` (the largest such value <= the largest positive or negative) down to 0;
    ``tp`` and ``fp`` are the fractions of positives / negatives at or above each threshold, padded
    with (0, 0) and (1, 1), trapezoid rule; the score is the mean over splits. ``seed`` seeds the
    draws (MATLAB uses its global stream). NaN without fixations, without other fixations (the MIT
    code divides 0 by 0), or for a constant prediction.
    """
    fix = _as_fixations(fixations, "fixations")
    other = _as_fixations(other_fixations, "other_fixations", fix.shape)
    if n_splits < 1 or not step_size > 0:
        raise ValueError(f"sauc: need n_splits >= 1 and step_size > 0, got {n_splits}, {step_size}")
    if not fix.any() or not other.any():
        return float("nan")
    s = _prediction(pred, fix.shape)
    if _is_constant(s):
        return float("nan")
    s = (s - s.min()) / (s.max() - s.min())
    positives = np.sort(s[fix])
    candidates = s[other]
    n_pos = positives.size
    n_neg = min(n_pos, candidates.size)
    rng = np.random.default_rng(seed)
    aucs = np.empty(n_splits, dtype=np.float64)
    for k in range(n_splits):
        negatives = np.sort(candidates[rng.permutation(candidates.size)[:n_neg]])
        top = max(positives[-1], negatives[-1])
        n_steps = int(np.floor(top / step_size + _THRESHOLD_TOLERANCE))
        thresholds = np.arange(n_steps, -1, -1, dtype=np.float64) * step_size
        tp = np.concatenate([[0.0], _counts_at_or_above(positives, thresholds) / n_pos, [1.0]])
        fp = np.concatenate([[0.0], _counts_at_or_above(negatives, thresholds) / n_neg, [1.0]])
        aucs[k] = _trapezoid(fp, tp)
    return float(aucs.mean())


# --------------------------------------------------------------------------------------------------
# Batched metrics over [N, H, W]
# --------------------------------------------------------------------------------------------------


def _as_stack(x: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 3 or arr.size == 0:
        raise ValueError(f"{name}: expected a non-empty stack of maps [N, H, W], got shape {arr.shape}")
    return arr


def _paired_stacks(preds: np.ndarray, ref: np.ndarray, ref_name: str) -> tuple[np.ndarray, np.ndarray]:
    """Flattened ``[N, H*W]`` float64 views of preds (resized to ref's size) and the reference."""
    r = _as_stack(ref, ref_name)
    p = _as_stack(preds, "preds")
    if p.shape[0] != r.shape[0]:
        raise ValueError(f"preds: {p.shape[0]} maps but {ref_name} has {r.shape[0]}")
    p = resize_map(p, r.shape[1:])
    return p.reshape(p.shape[0], -1), r.reshape(r.shape[0], -1)


def _constant_rows(x: np.ndarray) -> np.ndarray:
    return x.max(axis=1) == x.min(axis=1)


def cc_batch(preds: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """:func:`cc` for each pair of a stack ``[N, H, W]``; returns ``[N]`` float64 (NaN as in cc)."""
    p, g = _paired_stacks(preds, gts, "gts")
    pc = p - p.mean(axis=1, keepdims=True)
    gc = g - g.mean(axis=1, keepdims=True)
    undefined = _constant_rows(p) | _constant_rows(g)
    den = np.sqrt(np.sum(pc * pc, axis=1) * np.sum(gc * gc, axis=1))
    den = np.where(undefined, 1.0, den)
    return np.where(undefined, np.nan, np.sum(pc * gc, axis=1) / den)


def nss_batch(preds: np.ndarray, fixations: np.ndarray) -> np.ndarray:
    """:func:`nss` for each pair of a stack ``[N, H, W]``; returns ``[N]`` float64 (NaN as in nss)."""
    p, f = _paired_stacks(preds, fixations, "fixations")
    fix = f != 0
    n_fix = fix.sum(axis=1)
    undefined = _constant_rows(p) | (n_fix == 0)
    std = np.where(undefined, 1.0, p.std(axis=1, ddof=1))
    z = (p - p.mean(axis=1, keepdims=True)) / std[:, None]
    return np.where(undefined, np.nan, np.sum(z * fix, axis=1) / np.maximum(n_fix, 1))


def _sum_normalise_rows(x: np.ndarray) -> np.ndarray:
    """Rows divided by their sum; rows without a non-zero value stay zero (MIT ``if any(map)``)."""
    nonzero = (x != 0).any(axis=1)
    total = np.where(nonzero, x.sum(axis=1), 1.0)
    return x / total[:, None]


def kld_batch(preds: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """:func:`kld` for each pair of a stack ``[N, H, W]``; returns ``[N]`` float64."""
    p, g = _paired_stacks(preds, gts, "gts")
    p, g = _sum_normalise_rows(p), _sum_normalise_rows(g)
    return np.sum(g * np.log(MATLAB_EPS + g / (p + MATLAB_EPS)), axis=1)


def _sim_normalise_rows(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rows min-max then sum-normalised; zero rows stay zero; also the rows where this is undefined."""
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    nonzero = (x != 0).any(axis=1)
    undefined = nonzero & (hi[:, 0] == lo[:, 0])
    scaled = (x - lo) / np.where(hi > lo, hi - lo, 1.0)
    return np.where(nonzero[:, None], _sum_normalise_rows(scaled), 0.0), undefined


def sim_batch(preds: np.ndarray, gts: np.ndarray) -> np.ndarray:
    """:func:`sim` for each pair of a stack ``[N, H, W]``; returns ``[N]`` float64 (NaN as in sim)."""
    p, g = _paired_stacks(preds, gts, "gts")
    p, p_undefined = _sim_normalise_rows(p)
    g, g_undefined = _sim_normalise_rows(g)
    return np.where(p_undefined | g_undefined, np.nan, np.sum(np.minimum(p, g), axis=1))


# --------------------------------------------------------------------------------------------------
# Evaluation over frames and videos
# --------------------------------------------------------------------------------------------------


def shuffled_fixations(fix_maps: np.ndarray, exclude_index: int, n: int = 10, seed: int = 0) -> np.ndarray:
    """Binary ``[H, W]`` union of the fixation maps of ``n`` random OTHER frames, for :func:`sauc`.

    ``fix_maps`` is a stack ``[N, H, W]`` of binary fixation maps (frames of other videos, or of the
    whole data set); ``exclude_index`` is the frame being scored, which is never drawn. Frames are
    drawn without replacement (all other frames when fewer than ``n`` exist). Borji's recipe, which the
    MIT ``AUC_shuffled.m`` expects as its ``otherMap``, uses n = 10.
    """
    maps = np.asarray(fix_maps)
    if maps.ndim != 3:
        raise ValueError(f"shuffled_fixations: expected fixation maps [N, H, W], got shape {maps.shape}")
    count = maps.shape[0]
    if count < 2:
        raise ValueError("shuffled_fixations: need at least 2 fixation maps to draw from other frames")
    if not 0 <= exclude_index < count:
        raise ValueError(f"shuffled_fixations: exclude_index {exclude_index} outside [0, {count})")
    if n < 1:
        raise ValueError(f"shuffled_fixations: n must be >= 1, got {n}")
    others = np.delete(np.arange(count), exclude_index)
    chosen = np.random.default_rng(seed).choice(others, size=min(n, others.size), replace=False)
    return (maps[chosen] != 0).any(axis=0)


def evaluate_frames(
    preds: np.ndarray,
    gts: np.ndarray,
    fixations: np.ndarray,
    metrics: Sequence[str] = METRIC_NAMES,
    other_fixations_fn: Callable[[int], np.ndarray] | None = None,
    *,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per-frame metric values for a stack of frames; no averaging happens here.

    Args:
        preds: predictions ``[N, h, w]`` (resized to ``[H, W]`` if they differ, see the module docs).
        gts: continuous ground-truth maps ``[N, H, W]`` (for cc, kld, sim).
        fixations: binary fixation maps ``[N, H, W]`` (for nss, auc_j, sauc).
        metrics: any of :data:`METRIC_NAMES`.
        other_fixations_fn: ``i -> [H, W]`` binary map of fixations from OTHER frames, the negatives of
            sAUC for frame ``i``. Default: :func:`shuffled_fixations` over ``fixations`` itself (10
            other frames of this stack, seed ``seed + i``). Pass frames of the whole data set (other
            videos) for benchmark numbers: frames of the same video share its particular bias.
        seed: base seed; frame ``i`` uses ``seed + i`` for the AUC-Judd jitter and the sAUC draws.

    Returns:
        ``{metric: float64 array [N]}`` in the order of ``metrics``; NaN where a metric is undefined
        for a frame (see the module docstring), to be handled by :func:`aggregate`.
    """
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown or not metrics:
        raise ValueError(f"evaluate_frames: unknown metrics {unknown}; choose from {list(METRIC_NAMES)}")
    g = _as_stack(gts, "gts")
    f = np.asarray(fixations)
    if f.shape != g.shape:
        raise ValueError(f"fixations: shape {f.shape} differs from gts {g.shape}")
    p = _as_stack(preds, "preds")
    if p.shape[0] != g.shape[0]:
        raise ValueError(f"preds: {p.shape[0]} maps but gts has {g.shape[0]}")
    p = resize_map(p, g.shape[1:])

    def others(i: int) -> np.ndarray:
        if other_fixations_fn is not None:
            return other_fixations_fn(i)
        return shuffled_fixations(f, i, n=10, seed=seed + i)

    batched: dict[str, Callable[[], np.ndarray]] = {
        "cc": lambda: cc_batch(p, g),
        "nss": lambda: nss_batch(p, f),
        "kld": lambda: kld_batch(p, g),
        "sim": lambda: sim_batch(p, g),
        "auc_j": lambda: np.array([auc_judd(p[i], f[i], seed=seed + i) for i in range(len(p))]),
        "sauc": lambda: np.array([sauc(p[i], f[i], others(i), seed=seed + i) for i in range(len(p))]),
    }
    return {m: np.asarray(batched[m](), dtype=np.float64) for m in metrics}


def _mean(values: np.ndarray, omit_nan: bool) -> float:
    if omit_nan:
        values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else float("nan")


def aggregate(
    per_video: Mapping[str, Mapping[str, np.ndarray]],
    mode: Literal["per_video", "per_frame"] = "per_video",
    nan_policy: Literal["omit", "propagate"] = "omit",
) -> dict[str, float]:
    """Data-set means of per-frame metric values, with the averaging stated explicitly.

    Args:
        per_video: ``{video: {metric: per-frame values [n_frames]}}``, e.g. :func:`evaluate_frames`
            outputs keyed by video name; every video must carry the same metrics.
        mode: ``"per_video"``: mean over videos of each video's frame mean (every video weighs the
            same; the STAViS / ViNet convention). ``"per_frame"``: mean over all frames pooled (long
            videos weigh more).
        nan_policy: ``"omit"`` drops NaN frames (frames without fixations, constant predictions)
            before each mean, and videos whose frames are all NaN; ``"propagate"`` lets one NaN make
            the result NaN. A metric with no finite value gives NaN either way.

    Returns:
        ``{metric: mean}``.
    """
    if mode not in ("per_video", "per_frame"):
        raise ValueError(f"aggregate: mode must be 'per_video' or 'per_frame', got {mode!r}")
    if nan_policy not in ("omit", "propagate"):
        raise ValueError(f"aggregate: nan_policy must be 'omit' or 'propagate', got {nan_policy!r}")
    if not per_video:
        raise ValueError("aggregate: no videos to average")
    videos = list(per_video)
    names = list(per_video[videos[0]])
    for video in videos:
        if set(per_video[video]) != set(names):
            raise ValueError(
                f"aggregate: video {video!r} has metrics {sorted(per_video[video])}, expected {sorted(names)}"
            )
    omit = nan_policy == "omit"
    result: dict[str, float] = {}
    for name in names:
        columns = [np.asarray(per_video[v][name], dtype=np.float64).ravel() for v in videos]
        if mode == "per_frame":
            result[name] = _mean(np.concatenate(columns), omit)
        else:
            result[name] = _mean(np.array([_mean(c, omit) for c in columns]), omit)
    return result


# --------------------------------------------------------------------------- per video, per data set
def frame_metrics(
    predictions: np.ndarray,
    targets: Sequence[int],
    maps: np.ndarray,
    fixations: np.ndarray,
    metrics: Sequence[str] = METRIC_NAMES,
    other_fixations: Callable[[int], np.ndarray] | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Per-frame metric values of one video: ``predictions[i]`` (any size) against the ground truth
    of frame ``targets[i]`` at its stored size (``maps`` / ``fixations`` [N, H, W]).

    The one per-video scoring rule shared by ``avsal eval``
    (:func:`avsal_deploy.training.evaluate.evaluate_predictor`) and ``avsal score --gt``
    (:mod:`avsal_deploy.scoring`).
    """
    idx = list(targets)
    return evaluate_frames(
        np.asarray(predictions, dtype=np.float32),
        maps[idx],
        fixations[idx],
        metrics,
        other_fixations,
        seed=seed,
    )


@dataclass
class EvalResult:
    """Per-frame metric values of every scored video, and the summaries derived from them."""

    metrics: tuple[str, ...]
    per_frame: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # video -> metric -> [n]
    conditions: dict[str, str | None] = field(default_factory=dict)  # video -> condition
    frames: dict[str, list[int]] = field(default_factory=dict)  # video -> scored frame indices

    def per_video(self) -> dict[str, dict[str, float]]:
        """``{video: {metric: mean over its scored frames}}`` (NaN frames omitted)."""
        return {v: aggregate({v: values}, mode="per_frame") for v, values in self.per_frame.items()}

    def summary(self, videos: Sequence[str] | None = None) -> dict[str, float]:
        """Data-set means over videos (each video weighs the same)."""
        names = list(self.per_frame) if videos is None else list(videos)
        if not names:
            return {m: math.nan for m in self.metrics}
        return aggregate({v: self.per_frame[v] for v in names}, mode="per_video")

    def by_condition(self) -> dict[str, dict[str, float]]:
        """``{condition: summary over its videos}`` for videos that have a condition."""
        groups: dict[str, list[str]] = {}
        for video, cond in self.conditions.items():
            if cond is not None:
                groups.setdefault(cond, []).append(video)
        return {cond: self.summary(videos) for cond, videos in sorted(groups.items())}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: per-video means (with condition and frame count), per condition, overall."""
        per_video = self.per_video()
        return {
            "metrics": list(self.metrics),
            "averaging": "per-video mean of per-frame values (NaN frames omitted), then mean over videos",
            "videos": {
                v: {
                    "condition": self.conditions.get(v),
                    "frames": len(self.frames.get(v, [])),
                    **per_video[v],
                }
                for v in self.per_frame
            },
            "conditions": self.by_condition(),
            "dataset": self.summary(),
        }
