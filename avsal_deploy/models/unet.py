"""The Saliency-UNet of DiffSal (Xiong et al., CVPR 2024, §4.2): one denoising step ``x_t -> x0``.

``SaliencyUNet(x_t, t, c0, c1, c2, c3, audio)`` predicts the clean saliency map from the noisy map
``x_t`` at diffusion time ``t``, conditioned on four multi-scale video features ``c_i`` (S3D features
for ``diffsal``, the fusion decoder's gated features for ``hybrid``) and the audio features. Only this
network runs inside the DDIM loop (:mod:`avsal_deploy.diffusion`); the conditions are computed once
per clip.

Structure (paper Fig. 2 and §4.2; official code ``junwenxiong/diff_sal``, ``sal_unet.py``):

1. **Time embedding**: sinusoidal (DDPM/fairseq convention) + 2-layer MLP to ``unet.time_dim``.
2. **Noise encoder**: a stem conv on ``x_t`` and 4 ResNet stages (GroupNorm, SiLU, time-embedding
   scale-shift modulation) with stride-2 k3/p1 convs; stage ``i`` yields the noise feature ``f_s^i``
   on EXACTLY the spatial grid of condition ``c_i`` (the S3D grid of ``config.video_scales``: sizes
   round up, as S3D's do).
3. **Decoder**: 4 multi-modal attention modulation (MAM) stages from the lowest resolution (scale 3)
   upward. Each stage: up-sample the previous stage's output to the scale's grid and add it to
   ``f_s^i``; build the spatio-temporal noise map ``[f_v^i, f_s^i]`` (``T_i + 1`` frames, the noise
   slot LAST); multi-modal interaction module (MIM, eq. 9) -> ``f_avs``; efficient spatio-temporal
   cross-attention (ECA, eq. 7-8); a 3D temporal conv; reduction to a 2D map feature.
4. **Prediction head**: up-sample to the map size, add the full-resolution stem feature (a U-Net skip
   of ``x_t``), GroupNorm + SiLU + conv to one channel. No sigmoid: x0 parameterisation, the sampler
   clamps (:func:`avsal_deploy.diffusion.ddim_sample`).

Deviations from the paper/official code (and why):

- Time steps of the conditions may differ per scale (S3D halves time at scales 2 and 3); the audio
  feature is resampled (trilinear) to each scale's ``(T_i + 1, H_i, W_i)``. The official code relies on
  ``T_a == T_v + 1`` (9 VGGish slices for 8 MViT frames + the noise slot) instead.
- MIM softmax axis: we normalise over the whole spatial grid (``H_i * W_i``, per channel); the official
  code applies ``softmax(dim=-1)``, i.e. over the width axis only, which makes the mask depend on the
  arbitrary row split of the grid.
- ECA: ``Q = V = [f_v, f_s]`` and ``K = f_avs`` as in the paper (eq. 7) and the official code. The STC
  compression is a depthwise Conv3d (official ``groups=dim``; this also matches the +0.14M parameters
  of ECA over standard attention in Table 4, a dense 16^3 kernel would add tens of millions) with
  kernel = stride = ``2^m`` in MAM stage ``m = 1..4`` (stage 1 = lowest resolution), i.e. ``2^(4-i)`` at
  scale ``i``: the high-resolution stages are compressed the most, as in the official ``kernel_kv=[2,4,8]``.
  The kernel is clipped per axis to the smallest ``(T_i + 1, H_i, W_i)`` the config produces for the
  UNet variants, and inputs are zero-padded on the far side to a multiple of the stride ("ceil" mode)
  so that no frame or pixel (in particular the noise slot) is dropped.
- Time reduction after each stage: we keep the NOISE SLOT (the last of the ``T_i + 1`` frames), which
  the attention and the temporal conv have filled with video and audio information and which carries
  the identity path of ``f_s``. The official ``ReduceTemp`` is a learned conv over a fixed number of
  frames; it cannot be used here because ``T_i`` depends on the variant (16 or 32-frame windows) while
  the weights must not.
- Time conditioning in the ResNet blocks is a scale-shift of the GroupNorm output instead of the
  official additive bias before it (which a GroupNorm of single-channel groups erases; see
  :class:`ResBlock`).
- The official decoder has an MLP after the attention; the paper's MAM has a 3D temporal conv, which we
  follow (pre-activation residual block, kernel 3 over time).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsal_deploy.config import Config, ceil_halve, check_variant
from avsal_deploy.errors import ConfigError

NUM_SCALES = 4
UNET_VARIANTS: tuple[str, ...] = ("diffsal", "hybrid")
_FLOAT32_BYTES = 4


def _groups(channels: int, max_groups: int = 32, min_group_size: int = 4) -> int:
    """GroupNorm group count: the largest divisor of ``channels`` up to ``max_groups`` (DDPM's 32)
    that keeps at least ``min_group_size`` channels per group (1-channel groups act as InstanceNorm)."""
    limit = max(1, min(max_groups, channels // min_group_size))
    return max(g for g in range(1, limit + 1) if channels % g == 0)


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(_groups(channels), channels, eps=1e-6)


# ---------------------------------------------------------------------- analytic shapes
def eca_kernels(config: Config) -> tuple[tuple[int, int, int], ...]:
    """Kernel (= stride) ``(k_t, k_h, k_w)`` of the STC Conv3d at each scale ``i`` (0 = high resolution).

    MAM stage ``m = 4 - i`` uses ``2^m`` (paper §5.1), clipped per axis to the smallest
    ``(T_i + 1, H_i, W_i)`` of the UNet variants, so it stays valid on small grids.
    """
    out = []
    for i in range(NUM_SCALES):
        k = 2 ** (NUM_SCALES - i)
        frames = min(config.video_scales(v)[i].frames for v in UNET_VARIANTS) + 1
        s = config.video_scales()[i]
        out.append((min(k, frames), min(k, s.height), min(k, s.width)))
    return tuple(out)


def attention_score_shapes(config: Config, variant: str, efficient: bool) -> tuple[tuple[int, int, int], ...]:
    """Shape ``(heads, queries, keys)`` of the attention score tensor per batch item, per scale 0..3.

    Queries are the ``(T_i + 1) * H_i * W_i`` tokens of ``[f_v, f_s]``; keys are as many (standard
    cross-attention) or the STC-compressed grid ``prod(ceil(n / k))`` (ECA).
    """
    check_variant(variant)
    if variant not in UNET_VARIANTS:
        raise ConfigError(f"variant {variant!r} has no Saliency-UNet (choose {', '.join(UNET_VARIANTS)})")
    heads = config.unet.heads
    shapes = []
    for s, kernel in zip(config.video_scales(variant), eca_kernels(config), strict=True):
        grid = (s.frames + 1, s.height, s.width)
        n_q = math.prod(grid)
        n_kv = math.prod(-(-n // k) for n, k in zip(grid, kernel, strict=True)) if efficient else n_q
        shapes.append((heads, n_q, n_kv))
    return tuple(shapes)


def attention_memory_bytes(config: Config, variant: str, efficient: bool) -> int:
    """Bytes of the float32 attention score tensors of one batch item, summed over the 4 MAM stages.

    The quantity behind DiffSal's Table 4 claim (ECA 1.20 GB vs standard cross-attention 5.32 GB for
    the whole model): standard attention is quadratic in the ``(T_i + 1) H_i W_i`` tokens, ECA divides
    the key count by the STC kernel volume (up to 16^3 at the highest resolution). See :func:`attention_score_shapes` for the per-stage shapes.
    """
    return (
        sum(math.prod(shape) for shape in attention_score_shapes(config, variant, efficient)) * _FLOAT32_BYTES
    )


# ---------------------------------------------------------------------- building blocks
class TimestepEmbedding(nn.Module):
    """Sinusoidal embedding of the (float) time step + MLP (DDPM; official ``get_timestep_embedding``).

    ``emb = [sin(t w_k), cos(t w_k)]`` with ``w_k = 10000^(-k / (half - 1))``, then
    Linear -> SiLU -> Linear to ``dim``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        half = dim // 2
        k = torch.arange(half, dtype=torch.float32)
        self.register_buffer("freqs", torch.exp(-math.log(10000.0) * k / max(half - 1, 1)), persistent=False)
        self.mlp = nn.Sequential(nn.Linear(2 * half, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: Tensor) -> Tensor:
        args = t.to(self.freqs.dtype)[:, None] * self.freqs[None, :]
        return self.mlp(torch.cat([torch.sin(args), torch.cos(args)], dim=1))


class ResBlock(nn.Module):
    """Pre-activation ResNet block (GroupNorm, SiLU, conv) conditioned on the time embedding.

    The time embedding modulates the second normalisation as ``GN(h) * (1 + scale) + shift``
    (Nichol & Dhariwal 2021, "scale-shift norm"). The official DDPM block ADDS a per-channel bias
    before that GroupNorm instead, which the normalisation largely removes and, when a group holds a
    single channel (narrow profiles), removes exactly: the network would then ignore ``t``.
    """

    def __init__(self, in_channels: int, out_channels: int, time_dim: int) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.time_proj = nn.Linear(time_dim, 2 * out_channels)
        self.norm2 = _group_norm(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.time_proj(F.silu(temb))[:, :, None, None].chunk(2, dim=1)
        h = self.norm2(h) * (1.0 + scale) + shift
        h = self.conv2(F.silu(h))
        return self.skip(x) + h


class NoiseStage(nn.Module):
    """One noise-encoder stage: ``downsamples`` stride-2 k3/p1 convs, then ``blocks`` ResNet blocks."""

    def __init__(
        self, in_channels: int, out_channels: int, downsamples: int, blocks: int, time_dim: int
    ) -> None:
        super().__init__()
        self.down = nn.ModuleList(
            nn.Conv2d(in_channels, in_channels, 3, stride=2, padding=1) for _ in range(downsamples)
        )
        self.blocks = nn.ModuleList(
            ResBlock(in_channels if j == 0 else out_channels, out_channels, time_dim) for j in range(blocks)
        )

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        for conv in self.down:
            x = conv(x)
        for block in self.blocks:
            x = block(x, temb)
        return x


def _tokens(x: Tensor) -> Tensor:
    """[B, C, T, H, W] -> [B, T*H*W, C]."""
    return x.flatten(2).transpose(1, 2)


class SpatioTemporalCrossAttention(nn.Module):
    """ECA (eq. 7-8): multi-head attention of ``[f_v, f_s]`` queries over STC-compressed keys/values.

    ``out = x + W_o MHA(LN(x) W_Q, STC_K(f_avs) W_K, STC_V(x) W_V)`` with
    ``STC(z) = LN(DepthwiseConv3d_{kernel = stride}(z))``. With ``efficient=False`` the keys and
    values are the uncompressed (LayerNormed) tokens: the standard cross-attention of Table 4.
    Written with Linear / MatMul / Softmax only, for a clean ONNX graph.
    """

    def __init__(self, channels: int, heads: int, kernel: tuple[int, int, int], efficient: bool) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (channels // heads) ** -0.5
        self.kernel = kernel
        self.efficient = efficient
        self.norm_q = nn.LayerNorm(channels)
        self.norm_k = nn.LayerNorm(channels)
        self.norm_v = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)
        self.compress_k: nn.Conv3d | None = None
        self.compress_v: nn.Conv3d | None = None
        if efficient:
            self.compress_k = nn.Conv3d(
                channels, channels, kernel, stride=kernel, groups=channels, bias=False
            )
            self.compress_v = nn.Conv3d(
                channels, channels, kernel, stride=kernel, groups=channels, bias=False
            )

    def _compress(self, conv: nn.Conv3d | None, z: Tensor) -> Tensor:
        """STC without the LayerNorm: zero-pad to a multiple of the stride, strided depthwise conv."""
        if conv is None:
            return z
        pads: list[int] = []
        for n, k in zip(reversed(z.shape[2:]), reversed(self.kernel), strict=True):
            pads += [0, (-n) % k]
        if any(pads):
            z = F.pad(z, pads)
        return conv(z)

    def _heads(self, x: Tensor) -> Tensor:
        """[B, N, C] -> [B, heads, N, C / heads]."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def forward(self, x: Tensor, f_avs: Tensor) -> Tensor:
        q = self._heads(self.to_q(self.norm_q(_tokens(x))))
        k = self._heads(self.to_k(self.norm_k(_tokens(self._compress(self.compress_k, f_avs)))))
        v = self._heads(self.to_v(self.norm_v(_tokens(self._compress(self.compress_v, x)))))
        attn = torch.softmax(torch.matmul(q * self.scale, k.transpose(-1, -2)), dim=-1)
        out = self.to_out(torch.matmul(attn, v).transpose(1, 2).flatten(2))
        return x + out.transpose(1, 2).reshape(x.shape)


def multimodal_interaction(x: Tensor, audio: Tensor) -> Tensor:
    """MIM (eq. 9): ``f_avs = softmax_space(Pool_time([f_v, f_s] * f~_a)) * f~_a``.

    ``x`` = ``[f_v, f_s]`` and ``audio`` = ``f~_a`` are both [B, C, T+1, H, W]. The softmax runs per
    channel over the flattened ``H * W`` grid (see the module docstring for the official axis).
    """
    pooled = (x * audio).mean(dim=2, keepdim=True)
    mask = torch.softmax(pooled.flatten(2), dim=-1).reshape(pooled.shape)
    return mask * audio


class MAMStage(nn.Module):
    """One multi-modal attention modulation stage at one scale (everything after the up-sampling).

    ``f~_a = Conv(UpSample(f_a))`` (eq. 9): the 1x1x1 conv is applied BEFORE the trilinear resampling,
    which is the same map (both are linear and the interpolation weights sum to one) at a fraction
    of the cost.
    """

    def __init__(
        self, channels: int, audio_channels: int, heads: int, kernel: tuple[int, int, int], efficient: bool
    ) -> None:
        super().__init__()
        self.audio_conv = nn.Conv3d(audio_channels, channels, 1)
        self.attn = SpatioTemporalCrossAttention(channels, heads, kernel, efficient)
        self.temporal_norm = _group_norm(channels)
        self.temporal_conv = nn.Conv3d(channels, channels, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, f_v: Tensor, f_s: Tensor, audio: Tensor) -> Tensor:
        x = torch.cat([f_v, f_s.unsqueeze(2)], dim=2)
        f_a = F.interpolate(
            self.audio_conv(audio), size=tuple(x.shape[2:]), mode="trilinear", align_corners=False
        )
        x = self.attn(x, multimodal_interaction(x, f_a))
        x = x + self.temporal_conv(F.silu(self.temporal_norm(x)))
        return x[:, :, -1]


# ---------------------------------------------------------------------- the network
class SaliencyUNet(nn.Module):
    """DiffSal's Saliency-UNet ``g_psi(S_t, t, f_a, f_v) -> S0_hat`` (eq. 6).

    ``cond_channels``: channels of ``c0..c3`` (video-encoder widths for ``diffsal``,
    ``config.fusion.channels`` for ``hybrid``); ``audio_channels``: channels of the audio feature
    (VGGish or SoundNet); ``channels``: the UNet widths (``config.unet_channels(variant)``; default
    ``unet.channels``). Heads, time-embedding size, blocks and the ECA switch come from
    ``config.unet``; the map
    size and the spatial grids from ``config.video`` / ``config.video_scales``.
    """

    def __init__(
        self,
        config: Config,
        cond_channels: tuple[int, int, int, int],
        audio_channels: int,
        channels: tuple[int, ...] | None = None,
    ) -> None:
        super().__init__()
        u = config.unet
        ch = tuple(u.channels if channels is None else channels)  # config.unet_channels(variant)
        if len(ch) != NUM_SCALES or len(tuple(cond_channels)) != NUM_SCALES:
            raise ConfigError(f"unet.channels and the condition channels must have {NUM_SCALES} entries")
        if any(c % u.heads for c in ch):
            raise ConfigError(f"unet.channels={ch}: every entry must be divisible by unet.heads={u.heads}")
        if u.time_dim < 2 or u.res_blocks < 1:
            raise ConfigError(
                f"unet.time_dim={u.time_dim} must be >= 2 and unet.res_blocks={u.res_blocks} >= 1"
            )
        self.map_size = (config.video.height, config.video.width)
        self.grids = tuple((s.height, s.width) for s in config.video_scales())
        self.efficient_attention = u.efficient_attention

        self.time_embed = TimestepEmbedding(u.time_dim)
        self.stem = nn.Conv2d(1, ch[0], 3, padding=1)
        stages = []
        prev, in_ch = self.map_size, ch[0]
        for i, grid in enumerate(self.grids):
            stages.append(NoiseStage(in_ch, ch[i], _halvings(prev, grid), u.res_blocks, u.time_dim))
            prev, in_ch = grid, ch[i]
        self.encoder = nn.ModuleList(stages)
        self.cond_proj = nn.ModuleList(
            nn.Conv3d(c_in, c, 1) for c_in, c in zip(cond_channels, ch, strict=True)
        )
        # Channel change on the way up, scale i+1 -> i (applied before the bilinear up-sampling).
        self.lateral = nn.ModuleList(nn.Conv2d(ch[i + 1], ch[i], 1) for i in range(NUM_SCALES - 1))
        self.mam = nn.ModuleList(
            MAMStage(c, audio_channels, u.heads, kernel, u.efficient_attention)
            for c, kernel in zip(ch, eca_kernels(config), strict=True)
        )
        self.head_norm = _group_norm(ch[0])
        self.head_conv = nn.Conv2d(ch[0], 1, 3, padding=1)

    def forward(
        self, x_t: Tensor, t: Tensor, c0: Tensor, c1: Tensor, c2: Tensor, c3: Tensor, audio: Tensor
    ) -> Tensor:
        """x0 estimate [B, 1, H, W] from ``x_t`` [B, 1, H, W] at float time steps ``t`` [B].

        ``c_i``: [B, cond_channels[i], T_i, H_i, W_i] on the S3D grid of scale ``i``;
        ``audio``: [B, C_a, T_a, h_a, w_a] (``h_a = w_a = 1`` for SoundNet).
        """
        if tuple(x_t.shape[1:]) != (1, *self.map_size):
            raise ValueError(
                f"x_t must be [B, 1, {self.map_size[0]}, {self.map_size[1]}], got {tuple(x_t.shape)}"
            )
        conds = (c0, c1, c2, c3)
        for i, (c, grid) in enumerate(zip(conds, self.grids, strict=True)):
            if tuple(c.shape[-2:]) != grid:
                raise ValueError(f"c{i} must be on the {grid} grid of scale {i}, got {tuple(c.shape)}")
        temb = self.time_embed(t)
        stem = self.stem(x_t)
        noise_feats = []
        h = stem
        for stage in self.encoder:
            h = stage(h, temb)
            noise_feats.append(h)

        last = NUM_SCALES - 1
        out = self.mam[last](self.cond_proj[last](conds[last]), noise_feats[last], audio)
        for i in reversed(range(last)):
            up = F.interpolate(self.lateral[i](out), size=self.grids[i], mode="bilinear", align_corners=False)
            out = self.mam[i](self.cond_proj[i](conds[i]), noise_feats[i] + up, audio)
        y = F.interpolate(out, size=self.map_size, mode="bilinear", align_corners=False) + stem
        return self.head_conv(F.silu(self.head_norm(y)))


def _halvings(size: tuple[int, int], grid: tuple[int, int]) -> int:
    """Number of round-up stride-2 steps taking ``size`` to ``grid`` (ConfigError if none does)."""
    for n in range(16):
        if (ceil_halve(size[0], n), ceil_halve(size[1], n)) == grid:
            return n
    raise ConfigError(f"the noise encoder cannot reach the S3D grid {grid} from {size} with stride-2 steps")
