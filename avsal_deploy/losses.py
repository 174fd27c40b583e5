"""Training losses: the AVRSP saliency loss (KL, CC, SIM) and the DiffSal x0 MSE.

AVRSP (Sec. III-E, eq. 16-19) trains with ``L = KL + alpha * CC + beta * SIM``, alpha = beta = -0.1:
KL divergence of the predicted from the ground-truth distribution, linear correlation coefficient
and similarity (histogram intersection). The three terms here use exactly the definitions of the
MIT benchmark metrics in :mod:`avsal_deploy.metrics` (``kld``, ``cc``, ``sim``), differentiable and
batched, so the loss optimises what the evaluation reports:

* KL: both maps sum-normalised, ``sum(g * log(eps + g / (p + eps)))``, eps = 2**-52 (MATLAB ``eps``).
* CC: Pearson's r of the two maps (invariant to the sum-normalisation, so none is applied).
* SIM: each map min-max THEN sum-normalised, ``sum(min(p, g))``. Since the sum-normalisation cancels
  the min-max scale, this is computed as ``(x - min) / sum(x - min)``.

Each term is computed per map and averaged over the batch. ``kl_loss``, ``cc_loss`` and ``sim_loss``
return the metric values themselves (KL: lower is better; CC, SIM: higher is better); the signs live
in the weights of :func:`avrsp_loss`.

Deviation from the metrics, for stable training: where a metric is undefined (NaN) the loss term is
finite with a finite gradient instead. A constant map has no correlation: its CC term is 0 and passes
no gradient. A map with no mass (all zero, or constant before SIM's min-max) stays zero, as the MIT
code's ``if any(map)`` guard does, and its normalisation passes no gradient. Nothing here is exported
to ONNX; the data-dependent guards are ``torch.where`` selections, not Python branches.

DiffSal predicts the clean map x0 and trains with plain MSE (:func:`diffusion_mse_loss`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from avsal_deploy.metrics import MATLAB_EPS

__all__ = ["avrsp_loss", "cc_loss", "diffusion_mse_loss", "kl_loss", "sim_loss"]


def _flatten_pair(pred: Tensor, gt: Tensor, name: str) -> tuple[Tensor, Tensor]:
    """``[B, 1, H, W]`` or ``[B, H, W]`` maps as ``[B, H*W]`` rows (no copy when contiguous)."""
    if pred.shape != gt.shape:
        raise ValueError(f"{name}: pred shape {tuple(pred.shape)} differs from gt {tuple(gt.shape)}")
    if pred.dim() == 4 and pred.shape[1] != 1:
        raise ValueError(f"{name}: expected one channel [B, 1, H, W], got {tuple(pred.shape)}")
    if pred.dim() not in (3, 4) or pred.numel() == 0:
        raise ValueError(f"{name}: expected maps [B, 1, H, W] or [B, H, W], got {tuple(pred.shape)}")
    return pred.reshape(pred.shape[0], -1), gt.reshape(gt.shape[0], -1)


def _sum_normalise(x: Tensor) -> Tensor:
    """Rows divided by their sum; a row without a non-zero value stays zero and passes no gradient."""
    has_mass = (x != 0).any(dim=1, keepdim=True)
    total = torch.where(has_mass, x.sum(dim=1, keepdim=True), torch.ones_like(x[:, :1]))
    return torch.where(has_mass, x / total, torch.zeros_like(x))


def _kl_rows(p: Tensor, g: Tensor, eps: float) -> Tensor:
    p, g = _sum_normalise(p), _sum_normalise(g)
    return (g * torch.log(eps + g / (p + eps))).sum(dim=1)


def _cc_rows(p: Tensor, g: Tensor) -> Tensor:
    pc = p - p.mean(dim=1, keepdim=True)
    gc = g - g.mean(dim=1, keepdim=True)
    constant = (p.amax(dim=1) == p.amin(dim=1)) | (g.amax(dim=1) == g.amin(dim=1))
    den_sq = (pc * pc).sum(dim=1) * (gc * gc).sum(dim=1)
    defined = ~constant & (den_sq > 0)
    den = torch.sqrt(torch.where(defined, den_sq, torch.ones_like(den_sq)))
    return torch.where(defined, (pc * gc).sum(dim=1) / den, torch.zeros_like(den))


def _sim_rows(p: Tensor, g: Tensor) -> Tensor:
    p = _sum_normalise(p - p.amin(dim=1, keepdim=True))
    g = _sum_normalise(g - g.amin(dim=1, keepdim=True))
    return torch.minimum(p, g).sum(dim=1)


def kl_loss(pred: Tensor, gt: Tensor, eps: float = MATLAB_EPS) -> Tensor:
    """Batch mean of the MIT KL divergence (:func:`avsal_deploy.metrics.kld`) of ``pred`` from ``gt``.

    ``pred`` and ``gt``: non-negative maps ``[B, 1, H, W]`` or ``[B, H, W]`` of the same shape.
    """
    p, g = _flatten_pair(pred, gt, "kl_loss")
    return _kl_rows(p, g, eps).mean()


def cc_loss(pred: Tensor, gt: Tensor) -> Tensor:
    """Batch mean of the linear correlation coefficient (:func:`avsal_deploy.metrics.cc`); maximise it.

    A pair with a constant map contributes 0 (the metric gives NaN) and no gradient.
    """
    p, g = _flatten_pair(pred, gt, "cc_loss")
    return _cc_rows(p, g).mean()


def sim_loss(pred: Tensor, gt: Tensor) -> Tensor:
    """Batch mean of the MIT similarity (:func:`avsal_deploy.metrics.sim`); maximise it.

    A constant map min-max normalises to zero here, so its pair contributes 0 (the metric gives NaN
    for a constant non-zero map).
    """
    p, g = _flatten_pair(pred, gt, "sim_loss")
    return _sim_rows(p, g).mean()


def avrsp_loss(
    pred: Tensor,
    gt: Tensor,
    kl_weight: float = 1.0,
    cc_weight: float = -0.1,
    sim_weight: float = -0.1,
    eps: float = MATLAB_EPS,
) -> Tensor:
    """AVRSP loss (eq. 19): ``kl_weight * KL + cc_weight * CC + sim_weight * SIM``, batch mean.

    The defaults are the paper's: ``KL - 0.1 * CC - 0.1 * SIM`` (its alpha = beta = -0.1, so the
    weights carry the sign). ``pred``: predicted maps (non-negative, e.g. after a sigmoid) and
    ``gt``: continuous ground-truth maps, both ``[B, 1, H, W]`` or ``[B, H, W]``.
    """
    p, g = _flatten_pair(pred, gt, "avrsp_loss")
    per_map = kl_weight * _kl_rows(p, g, eps) + cc_weight * _cc_rows(p, g) + sim_weight * _sim_rows(p, g)
    return per_map.mean()


def diffusion_mse_loss(x0_pred: Tensor, x0: Tensor) -> Tensor:
    """DiffSal's training loss: mean squared error between the predicted and the clean map x0.

    Shapes must match exactly (no broadcasting, which would silently average the wrong pairs).
    """
    if x0_pred.shape != x0.shape:
        raise ValueError(
            f"diffusion_mse_loss: x0_pred shape {tuple(x0_pred.shape)} differs from x0 {tuple(x0.shape)}"
        )
    return F.mse_loss(x0_pred, x0)


def sync_loss(synchrony: Tensor, target: Tensor) -> Tensor:
    """Deep supervision of the AV sync gate: KL(target || softmax over space of the synchrony).

    ``synchrony`` [B, heads, h, w] (:meth:`~avsal_deploy.models.fusion.AudioVisualSync.synchrony`),
    ``target`` the saliency maps [B, 1, H, W]. The target is area-pooled to the synchrony's grid and
    normalised to a distribution P; Q is the softmax over the grid of the head-mean synchrony.
    A soundtrack that does not change over time (silence) gives zero synchrony everywhere, so Q is
    uniform and the loss passes no gradient to the gate: only sound that varies can be bound.
    Mean over the batch.
    """
    b, _, h, w = synchrony.shape
    p = F.adaptive_avg_pool2d(target.float(), (h, w)).flatten(1)
    p = p / p.sum(dim=1, keepdim=True).clamp_min(MATLAB_EPS)
    log_q = F.log_softmax(synchrony.float().mean(dim=1).flatten(1), dim=1)
    return (torch.xlogy(p, p) - p * log_q).sum(dim=1).mean()
