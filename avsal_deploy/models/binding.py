"""Audio-visual binding: where in the picture does the luminance vary in step with the sound?

Our extension (``config.fusion.binding``; on in the small and tiny profiles, off in the paper's;
measured by the audio-binding grid, ``training/grids/audio-binding.toml``). The learned AV sync gate
(:class:`~avsal_deploy.models.fusion.AudioVisualSync`)
must discover from a few videos that "the object the sound belongs to is the one that changes in
step with the sound"; on data it was not tuned on (more objects, the sound trailing the picture
by a frame or two) it did not. :class:`BindingMap` computes that cue directly, with no parameters,
from the window's frames and its per-frame audio envelope (the input the sync gate already takes):

1. the luminance ``l(t, p)`` of every pixel (Rec. 601 weights of the un-normalised RGB frame);
2. for every lag ``d = 0 .. binding_lags`` frames (the sound trailing the picture by ``d``), the
   Pearson correlation over the window of ``l(t - d, p)`` with the envelope's loudness ``e(t)``:
   ``cov_t / (std_t(l) * sqrt(var_t(e) + ENV_VAR_FLOOR))``. The floor keeps the correlation of a
   flat soundtrack (silence, music of nearly constant loudness) near zero instead of amplifying
   its ripples; digital silence gives exactly zero;
3. each lag's correlation map is area-pooled to the grid of fusion scale ``binding_scale`` and the
   maximum over lags is kept (tolerance to an audio lag of up to ``binding_lags`` frames);
4. beside it, the pooled temporal spread ``std_t(l)`` (where anything varies at all, a purely
   visual cue that the visual-only twin gets too).

The two maps ``[B, 2, h, w]`` are projected by a zero-initialised 1x1 conv to the scale's channels
and added to that scale's multi-scale feature at every time step (:class:`BindingInjector`), so an
untrained injector leaves the decoder as it was; from there they reach the decoder's finest block
(scale 0 by default) and, through the MRG conditions, the Saliency-UNet.

Everything has static shapes and is made of slices, ReduceMean/ReduceMax, Sqrt, Div, AveragePool
or Resize and a 1x1 Conv: it exports to ONNX and builds in TensorRT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsal_deploy.config import Config

#: Floor added to the envelope's temporal variance (log-loudness units squared). A burst train's
#: loudness spans about 0.3 to 0.75 on the envelope's log scale (variance ~ 0.02); music of flat
#: loudness varies by a few hundredths (variance < 1e-3).
ENV_VAR_FLOOR = 1e-3
#: Floor of the luminance standard deviation (intensity units in [0, 1]): far below the sensor
#: noise of real video (and of the synthetic set's 0.015), it only guards the division.
LUMA_STD_FLOOR = 1e-4
#: Scale of the spread channel: a luminance std of 0.1 (a pulsing object) becomes 1.
SPREAD_SCALE = 10.0
REC601 = (0.299, 0.587, 0.114)


class BindingMap(nn.Module):
    """Parameter-free per-position binding maps ``[B, 2, h, w]`` (correlation, spread).

    ``frames`` [B, 3, T, H, W] normalised as the model's input (``config.video.mean/std``),
    ``envelope`` [B, E, T] (:func:`~avsal_deploy.data.audio.envelope_frames`; its last row is the
    loudness). ``out_size`` is the (h, w) grid of the fusion scale the maps are injected into.
    """

    def __init__(self, config: Config, out_size: tuple[int, int], max_lag: int) -> None:
        super().__init__()
        v = config.video
        t = config.clip_len("hybrid")
        if not 0 <= max_lag < t - 1:
            raise ValueError(f"fusion.binding_lags={max_lag}: must be in [0, {t - 2}] for {t}-frame windows")
        self.max_lag = int(max_lag)
        self.out_size = (int(out_size[0]), int(out_size[1]))
        std = torch.tensor(v.std, dtype=torch.float32)
        weights = torch.tensor(REC601, dtype=torch.float32)
        # luminance = sum_c w_c * (x_c * std_c + mean_c) = sum_c (w_c std_c) x_c + sum_c w_c mean_c;
        # the constant drops out of every centred statistic, so only the scale is kept.
        self.register_buffer("luma", (weights * std).reshape(1, 3, 1, 1, 1), persistent=False)

    def _pool(self, x: Tensor) -> Tensor:
        """Area-pool [B, C, H, W] to ``out_size`` (an exact average pool when it divides)."""
        h, w = int(x.shape[-2]), int(x.shape[-1])
        th, tw = self.out_size
        if h % th == 0 and w % tw == 0:
            return F.avg_pool2d(x, (h // th, w // tw))
        return F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False, antialias=False)

    def statistics(self, frames: Tensor, envelope: Tensor) -> tuple[Tensor, Tensor]:
        """Per-pixel statistics at the frames' resolution, independent of ``out_size``: the
        correlation with the loudness for each lag ``[B, lags + 1, H, W]`` and the luminance
        spread ``[B, 1, H, W]``. Computed once per window when several maps read them."""
        lum = (frames * self.luma).sum(dim=1)  # [B, T, H, W]
        env = envelope[:, -1, :].to(lum.dtype)  # [B, T] loudness
        t = int(lum.shape[1])
        spread = (lum - lum.mean(dim=1, keepdim=True)).square().mean(dim=1, keepdim=True).sqrt()
        corrs = []
        for d in range(self.max_lag + 1):
            x = lum[:, : t - d]  # picture at t - d ...
            e = env[:, d:]  # ... against the sound at t
            xc = x - x.mean(dim=1, keepdim=True)
            ec = e - e.mean(dim=1, keepdim=True)
            cov = (xc * ec[:, :, None, None]).mean(dim=1, keepdim=True)
            sx = xc.square().mean(dim=1, keepdim=True).sqrt().clamp_min(LUMA_STD_FLOOR)
            se = (ec.square().mean(dim=1, keepdim=True) + ENV_VAR_FLOOR).sqrt()[:, :, None, None]
            corrs.append(cov / (sx * se))
        return torch.cat(corrs, dim=1), spread

    def pooled(self, stats: tuple[Tensor, Tensor]) -> Tensor:
        """:meth:`statistics` -> [B, 2, h, w]: each lag's correlation pooled to ``out_size``, the
        maximum over lags, and the pooled spread."""
        corrs, spread = stats
        corr = self._pool(corrs).amax(dim=1, keepdim=True)
        return torch.cat([corr, SPREAD_SCALE * self._pool(spread)], dim=1)

    def forward(self, frames: Tensor, envelope: Tensor) -> Tensor:
        """frames [B, 3, T, H, W], envelope [B, E, T] -> [B, 2, h, w] (max-lag correlation, spread)."""
        return self.pooled(self.statistics(frames, envelope))


class BindingInjector(nn.Module):
    """:class:`BindingMap` + a zero-initialised 1x1 projection added to one fusion scale."""

    def __init__(self, config: Config, channels: int, out_size: tuple[int, int], max_lag: int) -> None:
        super().__init__()
        self.maps = BindingMap(config, out_size, max_lag)
        self.project = nn.Conv2d(2, channels, 1)
        nn.init.zeros_(self.project.weight)
        nn.init.zeros_(self.project.bias)

    def forward(self, feature: Tensor, frames: Tensor, envelope: Tensor) -> Tensor:
        """feature [B, C, T_s, h, w] + projected binding maps (broadcast over time)."""
        return self.add(feature, self.maps.statistics(frames, envelope))

    def add(self, feature: Tensor, stats: tuple[Tensor, Tensor]) -> Tensor:
        """:meth:`forward` from :meth:`BindingMap.statistics` already computed."""
        return feature + self.project(self.maps.pooled(stats))[:, :, None]


class BindingReadout(nn.Module):
    """Direct read-out of the binding map into the one-shot map's logits (``fusion.binding_readout``).

    The injector hands the binding map to the decoder at one scale and lets the decoder learn to
    use it; on the lagged-pulses task (2-4 pulsing objects, the sound trailing by 0-60 ms) it did not within the budget (the probes found the source in the
    map, not in the predicted map). The read-out puts the cue where the loss sees it: the
    :class:`BindingMap` at full map resolution (no pooling) and the decoder's own logits go through
    three convolutions (3x3, 3x3, 1x1, ``hidden`` channels, ReLU) whose output is ADDED to the
    logits. The last convolution is zero-initialised, so an untrained read-out leaves the map as it
    was while its gradients are nonzero from the first step. Seeing the logits lets it weigh the
    sound's evidence against the picture's (a correlated blob that is an object, not texture).
    """

    def __init__(self, config: Config, out_size: tuple[int, int], max_lag: int, hidden: int = 8) -> None:
        super().__init__()
        self.maps = BindingMap(config, out_size, max_lag)
        self.net = nn.Sequential(
            nn.Conv2d(3, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, 1),
        )
        nn.init.zeros_(self.net[-1].weight)
        nn.init.zeros_(self.net[-1].bias)

    def forward(self, logits: Tensor, frames: Tensor, envelope: Tensor) -> Tensor:
        """logits [B, 1, H, W] (before the sigmoid) -> logits + read-out of the binding maps."""
        return self.add(logits, self.maps.statistics(frames, envelope))

    def add(self, logits: Tensor, stats: tuple[Tensor, Tensor]) -> Tensor:
        """:meth:`forward` from :meth:`BindingMap.statistics` already computed."""
        return logits + self.net(torch.cat([self.maps.pooled(stats), logits], dim=1))
