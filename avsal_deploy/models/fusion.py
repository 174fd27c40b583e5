"""The AVRSP fusion decoder: ASPP + LIP, MS, RAVF, MRG and the saliency decoder.

AVRSP (``papers/avrsp-relevance-guided-av-fusion.txt``, Sec. III) turns the four S3D block outputs
and the SoundNet features into a saliency map in five stages, one class each here:

1. :class:`ASPP3d` + :class:`LIP3d` after each encoder block (Sec. III-A),
2. :class:`MultiScaleSynergy` -- each scale interacts with its neighbours (MS, eq. 8-12),
3. :class:`RAVF` -- relevance-guided audio-visual fusion at the lowest resolution (Sec. III-B,
   eq. 1-7), N :class:`RAVFBlock` of :class:`RelevanceCrossAttention` + feed-forward,
4. :class:`MultiScaleRegulator` -- the multi-scale regulator gate cascade (MRG, eq. 13-15),
5. :class:`SaliencyDecoder` -- four blocks of convolution + up-sampling (Sec. III-D), reducing time
   to the target frame by learned temporal convolutions (:class:`TemporalReduction`) or, for
   checkpoints that predate ``fusion.temporal_reduction``, by a plain mean.

With ``config.fusion.av_sync`` (our extension; on in the small and tiny profiles, off in the
paper profile), :class:`AudioVisualSync` also lets one MS scale keep the per-frame audio envelope
where the visual features move in step with it, before RAVF and MRG (see its docstring for why).
With ``config.fusion.binding`` (our extension; on in small and tiny), the
parameter-free luminance-envelope binding map of :mod:`avsal_deploy.models.binding` is projected
and added to scale ``fusion.binding_scale``; the decoder then also takes the window's frames.

:class:`FusionDecoder` composes them and also returns the MRG-gated per-scale features, which the
hybrid variant feeds to the Saliency-UNet as conditions; with ``return_aux=True`` it returns its
auxiliary outputs too (:class:`FusionAux`: the AV sync gate's synchrony map, which the training
objective supervises), so no caller reads module internals through hooks.

The equations of the paper were lost in extraction; where the prose leaves a choice open, the class
docstrings say what we chose and why. Every module exports to ONNX with static ranks and explicit
resize targets (no data-dependent control flow; only shape-dependent Python).
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple, overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsal_deploy.config import Config
from avsal_deploy.errors import ConfigError
from avsal_deploy.models.binding import BindingInjector, BindingReadout

Size3 = tuple[int, int, int]

# LIP's bounded importance logits: weights are exp(COEFF * sigmoid(z)) in [1, e^COEFF]. 12 is the
# value of the reference implementation (Gao et al. 2019, "SoftGate").
LIP_LOGIT_COEFF = 12.0


# ------------------------------------------------------------------------------------ helpers
def _grid(x: Tensor) -> Size3:
    """The (T, H, W) grid of an NCDHW tensor as Python ints (static under export)."""
    t, h, w = x.shape[-3:]
    return int(t), int(h), int(w)


def upsample_to(x: Tensor, size: Size3) -> Tensor:
    """Trilinear resize of ``x`` [B,C,T,H,W] to the explicit grid ``size`` (time included)."""
    if _grid(x) == tuple(size):
        return x
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


def spatial_avg_pool(x: Tensor, stride: int = 1, count_include_pad: bool = True) -> Tensor:
    """3x3 spatial average pool (padding 1) of ``x`` [B,C,T,H,W], frame by frame.

    Runs as a 2D pool over [B, C*T, H, W]: torch's 3D pool rejects grids smaller than the kernel
    even when padding covers them (the 2x3 grid of the tiny profile's scale 3), its 2D pool does not.
    """
    c, t = x.shape[1], x.shape[2]
    y = F.avg_pool2d(x.flatten(1, 2), 3, stride, 1, count_include_pad=count_include_pad)
    return y.unflatten(1, (c, t))


def _halve_time(x: Tensor) -> Tensor:
    """k3/s2/p1 temporal average pool of ``x`` [B,C,T,H,W] (padding excluded from the mean)."""
    h, w = x.shape[3], x.shape[4]
    y = F.avg_pool2d(x.flatten(3), (3, 1), (2, 1), (1, 0), count_include_pad=False)
    return y.unflatten(3, (h, w))


def downsample_to(x: Tensor, size: Size3) -> Tensor:
    """Anti-aliased reduction of ``x`` [B,C,T,H,W] to the explicit grid ``size``.

    Time, and height + width together, whose target is ``ceil(n / 2)`` are halved by k3/s2/p1
    average pools (padding excluded; the same rounding as the S3D pools that produced the scales,
    so 7 -> 4 and 16 -> 8 are exact). Any grid this does not reach exactly (one not produced by
    S3D) is finished by a trilinear resize to ``size``.
    """
    (t, h, w), (tt, th, tw) = _grid(x), size
    if t > tt and (t + 1) // 2 == tt:
        x = _halve_time(x)
    if (h, w) != (th, tw) and ((h + 1) // 2, (w + 1) // 2) == (th, tw):
        x = spatial_avg_pool(x, stride=2, count_include_pad=False)
    if _grid(x) != tuple(size):
        x = F.interpolate(x, size=size, mode="trilinear", align_corners=False)
    return x


def conv_bn_relu(cin: int, cout: int) -> nn.Sequential:
    """1x1x1 Conv3d (no bias) + BatchNorm3d + ReLU."""
    return nn.Sequential(nn.Conv3d(cin, cout, 1, bias=False), nn.BatchNorm3d(cout), nn.ReLU(inplace=True))


def depthwise_separable3d(cin: int, cout: int, kernel: Size3, dilation: Size3 = (1, 1, 1)) -> nn.Sequential:
    """Depthwise ``kernel`` conv ('same' padding, ``dilation``) + pointwise 1x1x1 conv, no bias, no norm.

    The factorisation of Xception / DeepLabv3+ (no activation between the two convs); the caller adds
    the normalisation.
    """
    pad = tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation, strict=True))
    return nn.Sequential(
        nn.Conv3d(cin, cin, kernel, padding=pad, dilation=dilation, groups=cin, bias=False),
        nn.Conv3d(cin, cout, 1, bias=False),
    )


class SepConv3d(nn.Sequential):
    """S3D-style separable convolution: (1,3,3) spatial conv + BN + ReLU + (k,1,1) temporal conv.

    The output is left un-normalised for the caller's BN + ReLU. The paper says "convolutional
    layer"; we factor it as the S3D backbone does, which costs about a third of a full 3x3x3 kernel.
    ``temporal_kernel`` (odd, 'same' padding) is 3 by default; 1 for features of a single frame.
    """

    def __init__(self, cin: int, cout: int, temporal_kernel: int = 3) -> None:
        super().__init__(
            nn.Conv3d(cin, cout, (1, 3, 3), padding=(0, 1, 1), bias=False),
            nn.BatchNorm3d(cout),
            nn.ReLU(inplace=True),
            nn.Conv3d(cout, cout, (temporal_kernel, 1, 1), padding=(temporal_kernel // 2, 0, 0), bias=False),
        )


# ------------------------------------------------------------------------------ ASPP and LIP
class ASPP3d(nn.Module):
    """Atrous spatial pyramid pooling (Chen et al. 2017) on one S3D scale (AVRSP Sec. III-A).

    A 1x1x1 projection brings the S3D channels to the fusion width; parallel branches then look at
    several spatial receptive fields: a 1x1x1 conv, one (1,3,3) conv per rate of
    ``config.fusion.aspp_rates`` with spatial dilation ``rate``, and a global-average-pool branch
    broadcast back over the grid. Their concatenation is fused by a 1x1x1 conv + BN + ReLU.

    Deviations, to keep FLOPs modest at the 16x56x96 positions of the paper profile's scale 0:
    branches are ``channels // 4`` wide (not ``channels``) and the atrous convs are depthwise-
    separable as in DeepLabv3+ (Chen et al. 2018). The pool branch has no BatchNorm (a [B,C,1,1,1]
    tensor cannot be batch-normalised at batch 1 in training).
    """

    def __init__(self, in_channels: int, out_channels: int, rates: tuple[int, ...]) -> None:
        super().__init__()
        width = max(4, out_channels // 4)
        self.project = conv_bn_relu(in_channels, out_channels)
        self.branches = nn.ModuleList(
            [conv_bn_relu(out_channels, width)]
            + [
                nn.Sequential(
                    depthwise_separable3d(out_channels, width, (1, 3, 3), (1, r, r)),
                    nn.BatchNorm3d(width),
                    nn.ReLU(inplace=True),
                )
                for r in rates
            ]
        )
        self.pool_branch = nn.Sequential(nn.Conv3d(out_channels, width, 1), nn.ReLU(inplace=True))
        self.fuse = conv_bn_relu(width * (len(rates) + 2), out_channels)

    def forward(self, x: Tensor) -> Tensor:
        """[B, in_channels, T, H, W] -> [B, out_channels, T, H, W]."""
        x = self.project(x)
        t, h, w = _grid(x)
        pooled = self.pool_branch(x.mean(dim=(2, 3, 4), keepdim=True))
        outs = [branch(x) for branch in self.branches] + [pooled.expand(-1, -1, t, h, w)]
        return self.fuse(torch.cat(outs, dim=1))


class LIP3d(nn.Module):
    """Local importance-based pooling (Gao et al. 2019) over a 3x3 spatial window (AVRSP Sec. III-A).

    ``out = avgpool(x * w) / avgpool(w)`` with importance weights ``w = exp(logit)``; the logits come
    from a small conv branch and are bounded as in the reference implementation:
    ``logit = 12 * sigmoid(z)``, so ``w`` lies in [1, e^12] and the division is always safe.

    Deviations: (1) stride 1 (window 1x3x3, padding 1): LIP is a down-sampler in its paper, but
    AVRSP keeps the four S3D grids for MS and MRG, so the scales cannot be halved again -- here LIP
    acts as an importance-weighted local smoothing that keeps ``config.fusion_scales()``;
    (2) the logit branch is a depthwise (1,3,3) conv + 1x1x1 conv + BatchNorm instead of a full
    3x3 conv + InstanceNorm (about 8x cheaper at scale 0, and BatchNorm folds into the conv at
    inference).
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.logit = nn.Sequential(
            nn.Conv3d(channels, channels, (1, 3, 3), padding=(0, 1, 1), groups=channels, bias=False),
            nn.Conv3d(channels, channels, 1, bias=False),
            nn.BatchNorm3d(channels),
        )

    def importance(self, x: Tensor) -> Tensor:
        """Importance weights ``exp(12 * sigmoid(z))`` of ``x``, same shape as ``x``."""
        return torch.exp(LIP_LOGIT_COEFF * torch.sigmoid(self.logit(x)))

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, T, H, W] -> [B, C, T, H, W] (stride 1)."""
        w = self.importance(x)
        return spatial_avg_pool(x * w) / spatial_avg_pool(w)


# ------------------------------------------------------------------------------------------ MS
class MultiScaleSynergy(nn.Module):
    """Multi-scale feature Synergy (MS, AVRSP Sec. III-C, eq. 8-12).

    Each scale interacts with its adjacent scales only:
    ``E_i = ReLU(BN(Conv(F_i) + UpConv(F_{i+1}) + DownConv(F_{i-1})))``, with the terms of missing
    neighbours dropped (scale 0 has no finer, scale 3 no coarser neighbour).

    - ``Conv``: a depthwise-separable 3x3x3 conv (deviation: a full one would cost ~10 GMAC at the
      paper profile);
    - ``UpConv``: trilinear up-sampling to scale i's grid followed by a 1x1x1 conv, computed in the
      equal but cheaper order conv-then-resize (a 1x1x1 conv commutes exactly with linear
      interpolation, whose weights sum to one);
    - ``DownConv``: anti-aliased down-sampling (:func:`downsample_to`) to scale i's grid followed by
      a 1x1x1 conv.

    All resizes use the explicit target grid, time included (T_i differs between scales).
    """

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        n = len(channels)
        self.convs = nn.ModuleList([depthwise_separable3d(c, c, (3, 3, 3)) for c in channels])
        # up[i]: scale i+1 -> scale i;  down[i]: scale i -> scale i+1.
        self.up = nn.ModuleList(
            [nn.Conv3d(channels[i + 1], channels[i], 1, bias=False) for i in range(n - 1)]
        )
        self.down = nn.ModuleList(
            [nn.Conv3d(channels[i], channels[i + 1], 1, bias=False) for i in range(n - 1)]
        )
        self.norms = nn.ModuleList(
            [nn.Sequential(nn.BatchNorm3d(c), nn.ReLU(inplace=True)) for c in channels]
        )

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        """Enhanced features E_i, each on the grid and with the channels of its input F_i."""
        n = len(feats)
        out = []
        for i, f in enumerate(feats):
            size = _grid(f)
            y = self.convs[i](f)
            if i + 1 < n:
                y = y + upsample_to(self.up[i](feats[i + 1]), size)
            if i > 0:
                y = y + self.down[i - 1](downsample_to(feats[i - 1], size))
            out.append(self.norms[i](y))
        return out


# ---------------------------------------------------------------------------------------- RAVF
def sinusoidal_code_3d(t: int, h: int, w: int, dim: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """Factorised sine/cosine code of a (t, h, w) token grid, [t*h*w, dim] in row-major grid order.

    The channels are split between the three axes (``2*(dim//6)`` for time and height, the rest for
    width), each axis coded as in Vaswani et al. 2017. Being a function of the grid, it needs no
    parameters tied to the clip length or frame size.
    """
    d_t = d_h = 2 * (dim // 6)
    d_w = dim - d_t - d_h

    def axis(n: int, k: int) -> Tensor:
        pos = torch.arange(n, device=device, dtype=torch.float32)[:, None]
        freq = torch.exp(
            torch.arange(k // 2, device=device, dtype=torch.float32) * (-2.0 * math.log(1e4) / max(k, 1))
        )
        ang = pos * freq
        return torch.cat([torch.sin(ang), torch.cos(ang)], dim=1)

    code = torch.cat(
        [
            axis(t, d_t)[:, None, None, :].expand(t, h, w, d_t),
            axis(h, d_h)[None, :, None, :].expand(t, h, w, d_h),
            axis(w, d_w)[None, None, :, :].expand(t, h, w, d_w),
        ],
        dim=-1,
    )
    return code.reshape(t * h * w, dim).to(dtype)


class RelevanceCrossAttention(nn.Module):
    """Relevance-aware multi-head cross-attention (AVRSP Sec. III-B, eq. 1-7).

    Six affine maps give Q_v, K_v, V_v (visual) and Q_a, K_a, V_a (audio). Per head, with no
    softmax (the paper omits it so that the scores act as retention levels):

    - ``RetA = sigmoid(Q_v K_a^T / sqrt(d_h))`` in [0, 1]: how much of each audio value the visual
      tokens retain; ``RetV = sigmoid(Q_a K_v^T / sqrt(d_h))`` likewise for visual values;
    - ``V2A = mean_a(RetA * V_a) + V_v`` ("the visual values are added to the weighted audio
      features") and ``A2V = mean_v(RetV * V_v) + V_a``.

    Deviation: the weighted values are averaged over the keys instead of summed, so their magnitude
    does not grow with the token counts (N_v = T3*H3*W3 ranges from 6 to 336 across profiles).

    Adaptive head weights (eq. 6-7): ``w = sigmoid(MLP([mean_v V2A, mean_a A2V]))`` of shape
    [B, heads], computed from the integrated features of both modalities; both streams' heads are
    scaled by ``w`` before their output projections.

    The audio maps (Q_a, K_a, V_a) have no bias, so all-zero audio tokens give zero K_a and V_a:
    the audio term of V2A vanishes and the visual stream sees exactly its own values.

    With ``audio_output=False`` (the last RAVF block, whose audio stream feeds nothing) A2V is still
    computed for the head weights but not projected out.
    """

    def __init__(self, dim: int, heads: int, audio_output: bool = True) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"RAVF width {dim} is not divisible by its {heads} heads")
        self.heads = heads
        self.head_dim = dim // heads
        self.q_v, self.k_v, self.v_v = (nn.Linear(dim, dim) for _ in range(3))
        self.q_a, self.k_a, self.v_a = (nn.Linear(dim, dim, bias=False) for _ in range(3))
        self.head_mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.ReLU(inplace=True), nn.Linear(dim, heads))
        self.out_v = nn.Linear(dim, dim)
        self.out_a = nn.Linear(dim, dim) if audio_output else None

    def _split(self, x: Tensor) -> Tensor:
        """[B, N, D] -> [B, heads, N, head_dim]."""
        b, n, _ = x.shape
        return x.reshape(b, n, self.heads, self.head_dim).transpose(1, 2)

    def _merge(self, x: Tensor) -> Tensor:
        """[B, heads, N, head_dim] -> [B, N, D]."""
        b, _, n, _ = x.shape
        return x.transpose(1, 2).reshape(b, n, self.heads * self.head_dim)

    def _retain(self, q: Tensor, k: Tensor) -> Tensor:
        """Retention levels sigmoid(q k^T / sqrt(d_h)), [B, heads, N_q, N_k] (no softmax)."""
        return torch.sigmoid(torch.matmul(q, k.transpose(-1, -2)) * (self.head_dim**-0.5))

    def retention(self, x_v: Tensor, x_a: Tensor) -> tuple[Tensor, Tensor]:
        """RetA [B, heads, N_v, N_a] and RetV [B, heads, N_a, N_v] for tokens x_v, x_a (inspection only)."""
        ret_a = self._retain(self._split(self.q_v(x_v)), self._split(self.k_a(x_a)))
        ret_v = self._retain(self._split(self.q_a(x_a)), self._split(self.k_v(x_v)))
        return ret_a, ret_v

    def integrate(self, x_v: Tensor, x_a: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head integrated features V2A [B, heads, N_v, d_h] and A2V [B, heads, N_a, d_h] (eq. 1-5)."""
        q_v, k_v, v_v = (self._split(m(x_v)) for m in (self.q_v, self.k_v, self.v_v))
        q_a, k_a, v_a = (self._split(m(x_a)) for m in (self.q_a, self.k_a, self.v_a))
        n_v, n_a = v_v.shape[-2], v_a.shape[-2]
        v2a = torch.matmul(self._retain(q_v, k_a), v_a) * (1.0 / n_a) + v_v
        a2v = torch.matmul(self._retain(q_a, k_v), v_v) * (1.0 / n_v) + v_a
        return v2a, a2v

    def head_weights(self, v2a: Tensor, a2v: Tensor) -> Tensor:
        """Adaptive per-head weights in [0, 1], [B, heads], from both integrated features (eq. 6)."""
        pooled = torch.cat([self._merge(v2a).mean(dim=1), self._merge(a2v).mean(dim=1)], dim=-1)
        return torch.sigmoid(self.head_mlp(pooled))

    def forward(self, x_v: Tensor, x_a: Tensor) -> tuple[Tensor, Tensor | None]:
        """Tokens x_v [B, N_v, D], x_a [B, N_a, D] -> attended visual and audio tokens (eq. 7).

        The audio output is None when the module was built with ``audio_output=False``.
        """
        v2a, a2v = self.integrate(x_v, x_a)
        w = self.head_weights(v2a, a2v)[:, :, None, None]
        y_v = self.out_v(self._merge(v2a * w))
        y_a = None if self.out_a is None else self.out_a(self._merge(a2v * w))
        return y_v, y_a


class StreamUpdate(nn.Module):
    """Residual + LayerNorm, feed-forward, residual + LayerNorm for one RAVF stream (Fig. 3).

    Post-norm, as the paper's order says ("followed by a residual connection and the layer
    normalization"). The feed-forward layer is Linear-ReLU-Linear of width ``ffn_mult * dim`` (ReLU
    as in Vaswani et al. 2017 rather than GELU, which keeps the exported graph to Gemm/Relu).
    """

    def __init__(self, dim: int, ffn_mult: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, dim * ffn_mult), nn.ReLU(inplace=True), nn.Linear(dim * ffn_mult, dim)
        )
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor, attended: Tensor) -> Tensor:
        """Tokens x and the attention output for them -> refined tokens, [B, N, D]."""
        x = self.norm1(x + attended)
        return self.norm2(x + self.ffn(x))


class RAVFBlock(nn.Module):
    """One RAVF block (AVRSP Fig. 3): relevance-aware cross-attention, then a :class:`StreamUpdate`
    (residual + LayerNorm, FFN, residual + LayerNorm) for the visual and the audio stream.

    ``update_audio=False`` builds the last block of the stack without the audio stream's output
    layers: after it only the visual stream (the fused feature) is used, so they would be parameters
    that never receive a gradient. The audio tokens are then returned unchanged.
    """

    def __init__(self, dim: int, heads: int, ffn_mult: int, update_audio: bool = True) -> None:
        super().__init__()
        self.attn = RelevanceCrossAttention(dim, heads, audio_output=update_audio)
        self.visual = StreamUpdate(dim, ffn_mult)
        self.audio = StreamUpdate(dim, ffn_mult) if update_audio else None

    def forward(self, x_v: Tensor, x_a: Tensor) -> tuple[Tensor, Tensor]:
        """Tokens [B, N_v, D], [B, N_a, D] -> refined tokens of the same shapes."""
        y_v, y_a = self.attn(x_v, x_a)
        x_v = self.visual(x_v, y_v)
        if self.audio is not None and y_a is not None:
            x_a = self.audio(x_a, y_a)
        return x_v, x_a


class RAVF(nn.Module):
    """Relevance-guided audio-visual feature fusion over N blocks (AVRSP Sec. III-B).

    The lowest-resolution MS feature [B, D, T3, H3, W3] becomes N_v = T3*H3*W3 tokens of width D
    plus a sinusoidal 3D position code; the audio feature [B, C_a, T_a, h_a, w_a] becomes
    N_a = T_a*h_a*w_a tokens projected to D by a bias-free linear map. The audio tokens carry no
    position code, so silence (all-zero audio) stays exactly zero at the first block's audio keys
    and values. After the blocks, the visual stream is the fused feature, reshaped to the grid.
    """

    def __init__(self, dim: int, audio_channels: int, heads: int, blocks: int, ffn_mult: int) -> None:
        super().__init__()
        self.audio_proj = nn.Linear(audio_channels, dim, bias=False)
        self.blocks = nn.ModuleList(
            [RAVFBlock(dim, heads, ffn_mult, update_audio=i + 1 < blocks) for i in range(blocks)]
        )

    def tokens(self, visual: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """Visual tokens [B, N_v, D] (with position code) and audio tokens [B, N_a, D]."""
        t, h, w = _grid(visual)
        x_v = visual.flatten(2).transpose(1, 2)
        x_v = x_v + sinusoidal_code_3d(t, h, w, x_v.shape[-1], visual.device, visual.dtype)
        x_a = self.audio_proj(audio.flatten(2).transpose(1, 2))
        return x_v, x_a

    def forward(self, visual: Tensor, audio: Tensor) -> Tensor:
        """visual [B, D, T3, H3, W3], audio [B, C_a, T_a, h_a, w_a] -> fused [B, D, T3, H3, W3]."""
        x_v, x_a = self.tokens(visual, audio)
        for block in self.blocks:
            x_v, x_a = block(x_v, x_a)
        return x_v.transpose(1, 2).reshape(visual.shape)


# ------------------------------------------------------------------------------------ AV sync
class EnvelopeEncoder(nn.Module):
    """Per-frame audio envelope [B, E, T] -> per-frame audio tokens [B, D, T_s] on a visual time grid.

    Two bias-free temporal convs (kernel 3, zero padding) with ReLU, then an exact mean over the
    ``T / T_s`` frames each visual time step covers (S3D halves time with stride-2 steps, so
    ``T_s`` divides ``T``). Bias-free with ReLU: an all-zero envelope (digital silence) gives
    all-zero tokens.
    """

    def __init__(self, env_channels: int, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv1d(env_channels, dim, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv1d(dim, dim, 3, padding=1, bias=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, envelope: Tensor, frames: int) -> Tensor:
        """envelope [B, E, T] -> [B, D, frames] (``frames`` must divide T)."""
        x = self.net(envelope)
        b, d, t = x.shape
        if t % frames:
            raise ValueError(f"envelope has {t} frames, not a multiple of the visual grid's {frames}")
        return x.reshape(b, d, frames, t // frames).mean(dim=-1)


class AudioVisualSync(nn.Module):
    """Time-aligned relevance gate between one visual scale and the per-frame audio envelope.

    Our extension to AVRSP (``config.fusion.av_sync``), in the spirit of RAVF: softmax-free
    retention decides how much audio each visual location keeps. RAVF compares every visual token
    with every audio token at the coarsest scale (T/8 frames); which of several moving, pulsing
    objects makes the sound shows only in *when* each one changes, so here the comparison is made
    frame by frame at scale ``sync_scale`` (T/2 frames for scales 0-1, 12.5 Hz at 25 fps):

    - per head h, visual queries ``q(t, x) = W_q E(t, x)`` and audio keys ``k(t) = W_k a(t)``, both
      centred over the window's time steps;
    - the synchrony ``s_h(x) = mean_t <q~(t, x), k~(t)> / sqrt(d_h)``: a covariance over time, large
      where the visual features vary in step with the sound, zero for a constant soundtrack
      (silence, or music of flat loudness) whatever the visual content;
    - retention ``r_h(x) = sigmoid(s_h(x) + b_h)`` in [0, 1] (no softmax: locations do not compete
      for the audio, and all may ignore it);
    - output ``E(t, x) + W_o[r(x) * v(t)]`` with audio values ``v(t) = W_v a(t)``.

    Every audio-side map is bias-free, so silence (all-zero tokens) returns ``E`` exactly. All
    shapes are static: the module exports as MatMul/ReduceMean/Sigmoid.
    """

    def __init__(self, channels: int, env_channels: int, heads: int) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"AV sync width {channels} is not divisible by its {heads} heads")
        self.heads = heads
        self.head_dim = channels // heads
        self.envelope = EnvelopeEncoder(env_channels, channels)
        self.q = nn.Conv3d(channels, channels, 1, bias=False)
        self.k = nn.Conv1d(channels, channels, 1, bias=False)
        self.v = nn.Conv1d(channels, channels, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(heads))
        self.out = nn.Conv3d(channels, channels, 1, bias=False)

    def _synchrony(self, visual: Tensor, tokens: Tensor) -> Tensor:
        """s_h(x) [B, heads, H, W] of ``visual`` [B, C, T_s, H, W] with audio tokens [B, C, T_s]."""
        b, c, t, h, w = visual.shape
        q = self.q(visual)
        q = (q - q.mean(dim=2, keepdim=True)).reshape(b, self.heads, self.head_dim, t, h * w)
        k = self.k(tokens)
        k = (k - k.mean(dim=2, keepdim=True)).reshape(b, self.heads, self.head_dim, t)
        s = torch.einsum("bndtp,bndt->bnp", q, k) * (self.head_dim**-0.5 / t)
        return s.reshape(b, self.heads, h, w)

    def synchrony(self, visual: Tensor, envelope: Tensor) -> Tensor:
        """Per-head synchrony s_h(x) [B, heads, H, W] of ``visual`` [B, C, T_s, H, W] with ``envelope``."""
        return self._synchrony(visual, self.envelope(envelope, int(visual.shape[2])))

    def _retention(self, visual: Tensor, tokens: Tensor) -> Tensor:
        return torch.sigmoid(self._synchrony(visual, tokens) + self.bias[None, :, None, None])

    def retention(self, visual: Tensor, envelope: Tensor) -> Tensor:
        """Retention r_h(x) = sigmoid(s_h(x) + b_h), [B, heads, H, W] (inspection and tests)."""
        return self._retention(visual, self.envelope(envelope, int(visual.shape[2])))

    def forward_with_synchrony(self, visual: Tensor, envelope: Tensor) -> tuple[Tensor, Tensor]:
        """The gated feature [B, C, T_s, H, W] and the synchrony s_h(x) [B, heads, H, W] it was
        gated by (one computation: the objective supervises the very map the gate used)."""
        b, c, t, h, w = visual.shape
        tokens = self.envelope(envelope, int(t))
        s = self._synchrony(visual, tokens)
        r = torch.sigmoid(s + self.bias[None, :, None, None])
        v = self.v(tokens).reshape(b, self.heads, self.head_dim, t)
        kept = r[:, :, None, None, :, :] * v[:, :, :, :, None, None]  # [B, heads, d_h, T, H, W]
        return visual + self.out(kept.reshape(b, c, t, h, w)), s

    def forward(self, visual: Tensor, envelope: Tensor) -> Tensor:
        """visual [B, C, T_s, H, W], envelope [B, E, T] -> [B, C, T_s, H, W]."""
        return self.forward_with_synchrony(visual, envelope)[0]


# ----------------------------------------------------------------------------------------- MRG
class RegulatorGate(nn.Module):
    """One multi-scale regulator gate (MRG, AVRSP Sec. III-C, eq. 13-15).

    The coarser fused feature F is up-sampled to scale i's grid (time included) and brought to its
    channels by a 1x1x1 conv (computed before the resize; they commute). The channel gate is
    ``g = sigmoid(Conv(GAP(concat(E_i, Up(F)))))`` [B, C_i, 1, 1, 1]; the paper applies it to weight
    the audio-visual feature. Our output ``c_i = E_i + g * Up(F)`` adds the gated audio-visual
    feature to the MS visual feature E_i: the paper's stated aim is to "transfer crucial fusion
    information to visual features", and the decoder must still see E_i (Sec. III-D feeds it the
    multi-scale visual features). ``c_i`` is the fused feature passed to the next (finer) gate.
    """

    def __init__(self, channels: int, coarse_channels: int) -> None:
        super().__init__()
        self.project = nn.Conv3d(coarse_channels, channels, 1)
        self.gate_conv = nn.Conv3d(2 * channels, channels, 1)

    def lift(self, visual: Tensor, fused: Tensor) -> Tensor:
        """The coarser fused feature on the visual feature's grid and channels."""
        return upsample_to(self.project(fused), _grid(visual))

    def gate(self, visual: Tensor, lifted: Tensor) -> Tensor:
        """Channel gate in [0, 1], [B, C_i, 1, 1, 1]."""
        pooled = torch.cat([visual, lifted], dim=1).mean(dim=(2, 3, 4), keepdim=True)
        return torch.sigmoid(self.gate_conv(pooled))

    def forward(self, visual: Tensor, fused: Tensor) -> Tensor:
        """E_i [B, C_i, T_i, H_i, W_i], coarser F [B, C_{i+1}, ...] -> c_i [B, C_i, T_i, H_i, W_i]."""
        lifted = self.lift(visual, fused)
        return visual + self.gate(visual, lifted) * lifted


class MultiScaleRegulator(nn.Module):
    """The MRG cascade: from the RAVF output c_3 down to c_0, one :class:`RegulatorGate` per finer scale."""

    def __init__(self, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.gates = nn.ModuleList(
            [RegulatorGate(channels[i], channels[i + 1]) for i in range(len(channels) - 1)]
        )

    def forward(self, enhanced: list[Tensor], fused: Tensor) -> list[Tensor]:
        """MS features E_0..E_{n-1} and the fused lowest-resolution feature -> c_0..c_{n-1}."""
        conds = [fused]
        for i in range(len(enhanced) - 2, -1, -1):
            conds.insert(0, self.gates[i](enhanced[i], conds[0]))
        return conds


# ------------------------------------------------------------------------------------- decoder
def target_slot(frames: int, clip_len: int, mode: str) -> int:
    """The time slot of a ``frames``-slot scale that holds a ``clip_len``-frame window's target frame.

    The target is the window's last frame in ``causal`` mode and frame ``clip_len // 2`` in
    ``centre`` mode (:mod:`avsal_deploy.windows`); S3D halves time in aligned stride-2 steps, so
    slot ``s`` of a scale with ``frames`` slots covers frames ``[s, s + 1) * clip_len / frames``.
    """
    position = clip_len - 1 if mode == "causal" else clip_len // 2
    return position * frames // clip_len


class TemporalReduction(nn.Module):
    """Learned reduction of one scale's ``frames`` time slots to the target frame (conv mode).

    ``out = x[:, :, slot] + Conv_{(frames,1,1)}(x)``: the feature of the time slot that holds the
    target frame (:func:`target_slot`; the LAST slot in causal mode), plus a bias-free valid
    temporal convolution whose kernel spans the scale's whole window, so it outputs one frame. Each
    of its taps has a fixed offset from the target frame: the decoder knows which frame it predicts
    from its weights, not from zero padding or a position code. One Conv3d + Slice + Add in ONNX.
    """

    def __init__(self, channels: int, frames: int, slot: int) -> None:
        super().__init__()
        if not 0 <= slot < frames:
            raise ValueError(f"target slot {slot} outside a {frames}-slot scale")
        self.frames = frames
        self.slot = slot
        self.conv = nn.Conv3d(channels, channels, (frames, 1, 1), bias=False)

    def forward(self, x: Tensor) -> Tensor:
        """[B, C, frames, H, W] -> [B, C, 1, H, W]."""
        if int(x.shape[2]) != self.frames:
            raise ValueError(f"temporal reduction built for {self.frames} time slots got {int(x.shape[2])}")
        return x[:, :, self.slot : self.slot + 1] + self.conv(x)


class SaliencyDecoder(nn.Module):
    """The saliency decoder (AVRSP Sec. III-D): four blocks of convolution + up-sampling.

    Block 3 takes c_3; block i < 3 takes ``concat(up(previous), c_i)`` (the multi-scale features fed
    "synchronously"). A 1x1 conv maps block 0's output to one channel, which is up-sampled
    bilinearly to the model's frame size and passed through a sigmoid. Time reaches the single
    target frame in one of two ways (``fusion.temporal_reduction``):

    - ``"conv"`` (default of every profile): learned temporal reduction. Each block first reduces
      its skip feature c_i from the scale's T_i time slots to ONE by a :class:`TemporalReduction`
      (a valid temporal conv over the whole window, kernel T_i, anchored at the target frame's
      slot -- the last one in causal mode), then applies a separable (1,3,3) + 1x1x1 conv + BN +
      ReLU and a spatial up-sampling to the next scale's grid. The AVRSP paper gives no kernel
      sizes (its Fig. 2 is not in the text we have); ViNet's decoder (the S3D decoder AVRSP
      follows, Jain et al. 2021) reduces time by valid temporal convs whose kernel equals their
      stride, with kernel sizes derived from the clip length. Deviations: we reduce each skip to
      one frame within its own block (channel concatenation, as AVRSP and MRG keep the scales
      apart) instead of ViNet's concatenation along time, and add the target slot's own feature
      so that the predicted frame is singled out by construction. Kernel sizes follow from the
      config (``config.fusion_scales()``), so weights are specific to the clip length.
    - ``"mean"`` (checkpoints saved before the field existed): every block is a separable 3x3x3
      conv + BN + ReLU on the scale's full time grid followed by a trilinear up-sampling (time
      included), and block 0's output is collapsed by a mean over time; the zero-padded temporal
      convs before it see where the clip ends, the only way the decoder can favour the last frame.
    """

    def __init__(
        self,
        channels: tuple[int, ...],
        out_size: tuple[int, int],
        frames: tuple[int, ...] | None = None,
        reduction: str = "mean",
        slots: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        n = len(channels)
        if reduction not in ("conv", "mean"):
            raise ConfigError(f"fusion.temporal_reduction={reduction!r}: must be 'conv' or 'mean'")
        self.reduction = reduction
        outs = [max(4, channels[0] // 2)] + list(channels[:-1])
        ins = [channels[i] + (outs[i + 1] if i + 1 < n else 0) for i in range(n)]
        self.reduce: nn.ModuleList | None = None
        kernel = 3
        if reduction == "conv":
            if frames is None or slots is None or len(frames) != n or len(slots) != n:
                raise ValueError(f"conv temporal reduction needs the {n} scales' frames and target slots")
            self.reduce = nn.ModuleList(
                [TemporalReduction(c, t, s) for c, t, s in zip(channels, frames, slots, strict=True)]
            )
            kernel = 1
        self.blocks = nn.ModuleList(
            [
                nn.Sequential(
                    SepConv3d(ins[i], outs[i], kernel), nn.BatchNorm3d(outs[i]), nn.ReLU(inplace=True)
                )
                for i in range(n)
            ]
        )
        self.head = nn.Conv2d(outs[0], 1, 1)
        self.out_size = out_size

    def forward(self, conds: list[Tensor]) -> Tensor:
        """c_0..c_{n-1} -> saliency [B, 1, H, W] in [0, 1]."""
        return torch.sigmoid(self.logits(conds))

    def logits(self, conds: list[Tensor]) -> Tensor:
        """c_0..c_{n-1} -> the map's logits [B, 1, H, W] (before the sigmoid)."""
        if self.reduce is not None:
            conds = [reduce(c) for reduce, c in zip(self.reduce, conds, strict=True)]
        x = self.blocks[-1](conds[-1])
        for i in range(len(conds) - 2, -1, -1):
            x = upsample_to(x, _grid(conds[i]))
            x = self.blocks[i](torch.cat([x, conds[i]], dim=1))
        # conv: time is already the single target frame (a squeeze); mean: collapse it here.
        logits = self.head(x[:, :, 0] if self.reduce is not None else x.mean(dim=2))
        return F.interpolate(logits, size=self.out_size, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------- fusion decoder
#: What the fusion decoder's forward returns (and the fusion component exports):
#: ``(saliency [B,1,H,W], c0, c1, c2, c3)``.
FusionOutputs = tuple[Tensor, Tensor, Tensor, Tensor, Tensor]


class FusionAux(NamedTuple):
    """Auxiliary outputs of one fusion-decoder pass, for training objectives (never exported).

    ``synchrony``: the AV sync gate's per-head synchrony s_h(x) [B, sync_heads, H_s, W_s] (the map
    the gate's retention was computed from; :func:`~avsal_deploy.losses.sync_loss` supervises it),
    None without ``fusion.av_sync``.
    """

    synchrony: Tensor | None


class FusionDecoder(nn.Module):
    """The AVRSP fusion decoder: ASPP + LIP, MS, (AV sync,) RAVF, MRG and the saliency decoder.

    ``forward(v0, v1, v2, v3, audio[, envelope]) -> (saliency, c0, c1, c2, c3)`` where ``v_i`` are
    the S3D scales [B, video_channels[i], T_i, H_i, W_i], ``audio`` the SoundNet features
    [B, audio_channels, T_a, h_a, w_a] (any T_a, h_a, w_a >= 1), ``envelope`` the per-frame audio
    envelope [B, *config.envelope_shape()] (required with ``fusion.av_sync``, ignored otherwise),
    ``saliency`` [B, 1, H, W] in [0, 1] at ``config.video`` size, and ``c_i`` the MRG-gated
    audio-visual features [B, config.fusion.channels[i], T_i, H_i, W_i] (c3 is the RAVF output).
    ``forward(..., return_aux=True)`` returns ``((saliency, c0, c1, c2, c3), FusionAux)``, the
    auxiliary outputs a training objective supervises; the exported graph is the default form.
    The saliency decoder's temporal reduction follows ``config.fusion.temporal_reduction`` and its
    target slot ``config.window.mode`` (:class:`SaliencyDecoder`).
    """

    def __init__(
        self, config: Config, video_channels: tuple[int, int, int, int], audio_channels: int
    ) -> None:
        super().__init__()
        fc = config.fusion
        channels = tuple(int(c) for c in fc.channels)
        if len(video_channels) != len(channels):
            raise ValueError(f"FusionDecoder needs {len(channels)} video scales, got {len(video_channels)}")
        if fc.ravf_blocks < 1:
            raise ConfigError(f"fusion.ravf_blocks={fc.ravf_blocks}: RAVF needs at least one block")
        if not fc.aspp_rates or min(fc.aspp_rates) < 1:
            raise ConfigError(f"fusion.aspp_rates={fc.aspp_rates}: need at least one rate, all >= 1")
        self.cond_channels: tuple[int, int, int, int] = channels  # type: ignore[assignment]
        self.adapters = nn.ModuleList(
            [
                nn.Sequential(ASPP3d(cin, cout, tuple(fc.aspp_rates)), LIP3d(cout))
                for cin, cout in zip(video_channels, channels, strict=True)
            ]
        )
        self.synergy = MultiScaleSynergy(channels)
        self.sync_scale = int(fc.sync_scale)
        self.sync: AudioVisualSync | None = None
        if fc.av_sync:
            env_channels = config.envelope_shape()[0]
            self.sync = AudioVisualSync(channels[self.sync_scale], env_channels, fc.sync_heads)
        self.binding_scale = int(fc.binding_scale)
        self.binding: BindingInjector | None = None
        if fc.binding:  # the luminance-envelope binding map (models.binding)
            scale = config.fusion_scales()[self.binding_scale]
            size = (scale.height, scale.width)
            self.binding = BindingInjector(config, scale.channels, size, fc.binding_lags)
        self.readout: BindingReadout | None = None
        if fc.binding_readout:  # the binding map read out into the one-shot map's logits
            self.readout = BindingReadout(config, (config.video.height, config.video.width), fc.binding_lags)
        self.ravf = RAVF(channels[-1], audio_channels, fc.ravf_heads, fc.ravf_blocks, fc.ffn_mult)
        self.regulator = MultiScaleRegulator(channels)
        scales = config.fusion_scales("avrsp")  # avrsp and hybrid share the window length
        frames = tuple(sc.frames for sc in scales)
        clip_len = config.clip_len("avrsp")
        self.decoder = SaliencyDecoder(
            channels,
            (config.video.height, config.video.width),
            frames,
            fc.temporal_reduction,
            tuple(target_slot(t, clip_len, config.window.mode) for t in frames),
        )

    @overload
    def forward(
        self,
        v0: Tensor,
        v1: Tensor,
        v2: Tensor,
        v3: Tensor,
        audio: Tensor,
        envelope: Tensor | None = None,
        frames: Tensor | None = None,
        return_aux: Literal[False] = False,
    ) -> FusionOutputs: ...

    @overload
    def forward(
        self,
        v0: Tensor,
        v1: Tensor,
        v2: Tensor,
        v3: Tensor,
        audio: Tensor,
        envelope: Tensor | None = None,
        frames: Tensor | None = None,
        *,
        return_aux: Literal[True],
    ) -> tuple[FusionOutputs, FusionAux]: ...

    def forward(
        self,
        v0: Tensor,
        v1: Tensor,
        v2: Tensor,
        v3: Tensor,
        audio: Tensor,
        envelope: Tensor | None = None,
        frames: Tensor | None = None,
        return_aux: bool = False,
    ) -> FusionOutputs | tuple[FusionOutputs, FusionAux]:
        """S3D scales + audio features (+ envelope, + the window's frames with ``fusion.binding``)
        -> (saliency [B,1,H,W], c0, c1, c2, c3).

        With ``return_aux=True`` also the :class:`FusionAux` of this pass, as
        ``((saliency, c0, c1, c2, c3), aux)``. The default keeps the exported graph's five outputs.
        """
        feats = [adapter(v) for adapter, v in zip(self.adapters, (v0, v1, v2, v3), strict=True)]
        enhanced = self.synergy(feats)
        synchrony = None
        if self.sync is not None:
            if envelope is None:
                raise ConfigError(
                    "this fusion decoder has AV sync (fusion.av_sync): it needs the per-frame audio "
                    "envelope (avsal_deploy.data.audio.envelope_frames)"
                )
            i = self.sync_scale
            gated, synchrony = self.sync.forward_with_synchrony(enhanced[i], envelope)
            enhanced = [*enhanced[:i], gated, *enhanced[i + 1 :]]
        stats = None
        if self.binding is not None:
            if envelope is None or frames is None:
                raise ConfigError(
                    "this fusion decoder has the binding map (fusion.binding): it needs the window's "
                    "frames and the per-frame audio envelope"
                )
            # the per-pixel statistics once; the injector and the read-out pool them to their grids
            stats = self.binding.maps.statistics(frames, envelope)
            i = self.binding_scale
            enhanced = [*enhanced[:i], self.binding.add(enhanced[i], stats), *enhanced[i + 1 :]]
        fused = self.ravf(enhanced[-1], audio)
        c0, c1, c2, c3 = self.regulator(enhanced, fused)
        logits = self.decoder.logits([c0, c1, c2, c3])
        if self.readout is not None:
            assert stats is not None  # fusion.binding_readout needs fusion.binding (config check)
            logits = self.readout.add(logits, stats)
        outputs = (torch.sigmoid(logits), c0, c1, c2, c3)
        if return_aux:
            return outputs, FusionAux(synchrony)
        return outputs
