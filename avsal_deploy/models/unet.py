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
   cross-attention (ECA, eq. 7-8; per frame, see below); a 3D temporal conv (the only place the
   frames meet after the MIM); reduction to a 2D map feature.
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
- ECA (``unet.attention = "eca"``, the default) follows eq. 7-8 and the official ``Attention``
  (``models/saliency_decoder/attention.py``, run by ``TransformerBlock`` on ``(b t) c h w``): the
  ``T_i + 1`` frames of ``[f_v, f_s]`` (the noise slot included, as its own frame) are folded into
  the batch and each frame attends over space to its own keys; ``Q = V = [f_v, f_s]``,
  ``K = f_avs``; keys and values are compressed by a depthwise conv of kernel = stride
  ``(1, k, k)`` (official ``kernel_kv = stride_kv = [2, 4, 8, 16]`` from the lowest resolution up,
  i.e. ``k = 2^(4-i)`` at scale ``i``, the paper's ``2^m`` in MAM stage ``m``) + LayerNorm. At the
  ``paper`` profile (224x384, 16 frames) that is 24 keys per frame at every scale for 5376 / 1344 /
  336 / 84 queries. Remaining deviations: (a) inputs are zero-padded on the far side to a multiple
  of the stride (official: no padding, so a 56-row grid with ``k = 16`` keeps 3 of 3.5 key rows and
  drops the last 8 pixel rows); (b) the kernel is clipped to the grid on small profiles (nothing is
  clipped at ``paper``); (c) no depthwise 3x3 convolution on the queries (the official ``conv_proj_q``,
  ``q_proj_method = "dw_bn"``): eq. 7 has a plain ``Q W_Q``, which we follow; (d) scores are scaled
  by ``(C / heads)^-0.5`` (standard multi-head attention; official ``C^-0.5``) and the head count is
  ``unet.heads`` (official 2); (e) the LayerNorms sit on the query tokens and after each compression
  (eq. 8's STC), the official code adds one pre-norm of ``[f_v, f_s]`` before all three.
- Parameters: ECA adds ``2 * sum_i C_i k_i^2`` (the two depthwise kernels; LayerNorms and
  projections are shared with the standard attention), :func:`eca_extra_parameters`: 57,344
  (0.057 M) at the ``paper`` profile's widths (64, 128, 192, 256), 92,160 at the paper's widths
  (96, 192, 384, 768). Table 4's +0.14 M (SCA 76.43 M, ECA 76.57 M) is more than the key/value
  kernels alone: it matches an SCA without all three official convolutional projections and their
  LayerNorms (92,160 + 3x3x3 query kernel 38,880 + LayerNorms 8,640 = 139,680); the paper does not
  say what its SCA removed.
- ``unet.attention = "standard"`` is Table 4's baseline: the same per-frame attention with
  uncompressed keys/values (``H_i W_i`` keys per frame). Its score tensor at the finest ``paper``
  scale is 9 frames x 4 heads x 5376^2 floats = 4.16 GB per batch item.
- ``unet.attention = "eca3d"`` is the earlier form, kept for checkpoints trained with it (the shipped
  tiny checkpoint; :data:`avsal_deploy.config.LEGACY_DEFAULTS` maps stored configs without the
  field to it): all ``(T_i + 1) H_i W_i`` tokens of a scale attend together to keys compressed by a
  3-D depthwise conv of kernel = stride ``2^(4-i)`` also over time (clipped to the smallest
  ``T_i + 1``), so at the finest ``paper`` scale the 9 frames collapse into ONE key frame (24 keys
  for 48,384 queries) and frames, the noise slot included, mix through the keys. It adds 454,656
  parameters at the ``paper`` profile. Not DiffSal's ECA; not for new models.
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

from avsal_deploy.config import ATTENTION_MODES, Config, ceil_halve, check_variant
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
def _check_mode(mode: str) -> str:
    if mode not in ATTENTION_MODES:
        raise ConfigError(f"attention mode {mode!r}: choose one of {', '.join(ATTENTION_MODES)}")
    return mode


def eca_kernels(config: Config, mode: str | None = None) -> tuple[tuple[int, int, int], ...]:
    """Kernel (= stride) ``(k_t, k_h, k_w)`` of the key/value compression at each scale ``i``
    (0 = high resolution), for attention ``mode`` (default ``config.unet.attention``).

    MAM stage ``m = 4 - i`` (stage 1 = lowest resolution) uses ``k = 2^m`` (paper §5.1; official
    ``kernel_kv = stride_kv = [2, 4, 8, 16]`` from the lowest resolution up), clipped per axis to the
    scale's grid ``(H_i, W_i)`` so that it stays valid on small profiles (at the ``paper`` profile
    nothing is clipped). ``eca``: ``(1, k, k)``, one frame at a time; ``standard``: ``(1, 1, 1)``
    (no compression); ``eca3d`` (legacy): ``k`` also over time, clipped to the smallest ``T_i + 1``
    of the UNet variants.
    """
    mode = _check_mode(config.unet.attention if mode is None else mode)
    out = []
    for i in range(NUM_SCALES):
        k = 2 ** (NUM_SCALES - i)
        s = config.video_scales()[i]
        if mode == "standard":
            out.append((1, 1, 1))
        elif mode == "eca":
            out.append((1, min(k, s.height), min(k, s.width)))
        else:
            frames = min(config.video_scales(v)[i].frames for v in UNET_VARIANTS) + 1
            out.append((min(k, frames), min(k, s.height), min(k, s.width)))
    return tuple(out)


def attention_score_shapes(
    config: Config, variant: str, mode: str | None = None
) -> tuple[tuple[int, int, int, int], ...]:
    """Shape ``(groups, heads, queries, keys)`` of the attention score tensor of ONE batch item, per
    scale 0..3 (the module computes ``batch * groups`` of them in one batched MatMul).

    ``eca`` / ``standard`` attend per frame: ``groups = T_i + 1`` frames (the noise slot included),
    ``queries = H_i W_i`` and ``keys = ceil(H_i / k_h) ceil(W_i / k_w)`` (ECA) or ``H_i W_i``
    (standard). ``eca3d`` (legacy) attends over all frames at once: ``groups = 1``,
    ``queries = (T_i + 1) H_i W_i``, ``keys = prod(ceil(n / k))`` over ``(T_i + 1, H_i, W_i)``.
    """
    check_variant(variant)
    if variant not in UNET_VARIANTS:
        raise ConfigError(f"variant {variant!r} has no Saliency-UNet (choose {', '.join(UNET_VARIANTS)})")
    mode = _check_mode(config.unet.attention if mode is None else mode)
    heads = config.unet.heads
    shapes = []
    for s, kernel in zip(config.video_scales(variant), eca_kernels(config, mode), strict=True):
        grid = (s.frames + 1, s.height, s.width)
        keys = math.prod(-(-n // k) for n, k in zip(grid, kernel, strict=True))  # over all frames
        if mode == "eca3d":
            shapes.append((1, heads, math.prod(grid), keys))
        else:  # kernel (1, k_h, k_w): the same key count in every frame
            shapes.append((grid[0], heads, s.height * s.width, keys // grid[0]))
    return tuple(shapes)


def attention_memory_bytes(config: Config, variant: str, mode: str | None = None) -> int:
    """Bytes of the float32 attention score tensors of one batch item, summed over the 4 MAM stages.

    Standard attention is quadratic in the ``H_i W_i`` tokens of a frame; ECA divides the key count
    by ``k^2`` (``16^2`` at the highest resolution). This counts one score tensor per stage; the
    softmax holds a second one of the same size while it runs (see
    :mod:`avsal_deploy.models.attention_memory` for the measured peak).
    """
    return sum(math.prod(shape) for shape in attention_score_shapes(config, variant, mode)) * _FLOAT32_BYTES


def eca_extra_parameters(config: Config, mode: str | None = None) -> int:
    """Parameters the key/value compression adds over the standard attention (2 depthwise kernels,
    no bias, per MAM stage; the LayerNorms and projections are shared by every mode)."""
    mode = _check_mode(config.unet.attention if mode is None else mode)
    if mode == "standard":
        return 0
    return sum(
        2 * c * math.prod(kernel)
        for c, kernel in zip(config.unet.channels, eca_kernels(config, mode), strict=True)
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
    """[G, C, *grid] -> [G, prod(grid), C]."""
    return x.flatten(2).transpose(1, 2)


def _frames(x: Tensor) -> Tensor:
    """[B, C, T, H, W] -> [B T, C, H, W] (frames folded into the batch, batch-major)."""
    return x.transpose(1, 2).flatten(0, 1)


class SpatioTemporalCrossAttention(nn.Module):
    """ECA (eq. 7-8): multi-head cross-attention of ``[f_v, f_s]`` queries over compressed keys/values.

    ``out = x + W_o MHA(LN(x) W_Q, STC(f_avs) W_K, STC(x) W_V)``, ``STC(z) = LN(DWConv_{k = stride}(z))``
    (``Q = V = [f_v, f_s]``, ``K = f_avs``). ``mode``:

    - ``"eca"``: per frame. The ``T + 1`` frames (the noise slot included) are folded into the batch;
      each frame's ``H W`` queries attend to its own ``ceil(H / k) ceil(W / k)`` keys, compressed
      by a depthwise ``k x k`` conv of stride ``k`` (the official ``(1, k, k)`` Conv3d on one frame).
    - ``"standard"``: the same per-frame attention without compression (``H W`` keys per frame).
    - ``"eca3d"`` (legacy): all ``(T + 1) H W`` tokens attend together to keys compressed by a 3-D
      depthwise conv of kernel ``kernel`` over ``(T + 1, H, W)``.

    Inputs are zero-padded on the far side to a multiple of the stride, so no frame or pixel is
    dropped. Written with Linear / Conv / MatMul / Softmax only, for a clean ONNX graph.
    """

    def __init__(self, channels: int, heads: int, kernel: tuple[int, int, int], mode: str) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (channels // heads) ** -0.5
        self.mode = _check_mode(mode)
        self.per_frame = mode != "eca3d"
        # Compression kernel over the axes the tokens span: (H, W) per frame, (T+1, H, W) for eca3d.
        self.kernel = tuple(kernel[1:]) if self.per_frame else tuple(kernel)
        if self.per_frame and kernel[0] != 1:
            raise ConfigError(f"per-frame attention needs a temporal kernel of 1, got {kernel}")
        self.norm_q = nn.LayerNorm(channels)
        self.norm_k = nn.LayerNorm(channels)
        self.norm_v = nn.LayerNorm(channels)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.Linear(channels, channels)
        self.compress_k: nn.Module | None = None
        self.compress_v: nn.Module | None = None
        if mode != "standard":
            conv = nn.Conv2d if self.per_frame else nn.Conv3d
            self.compress_k = conv(
                channels, channels, self.kernel, stride=self.kernel, groups=channels, bias=False
            )
            self.compress_v = conv(
                channels, channels, self.kernel, stride=self.kernel, groups=channels, bias=False
            )

    def _compress(self, conv: nn.Module | None, z: Tensor) -> Tensor:
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
        """[G, N, C] -> [G, heads, N, C / heads]."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def _attend(self, x: Tensor, f_avs: Tensor) -> Tensor:
        """Attention over the token grid of ``x`` [G, C, *grid] -> [G, prod(grid), C]."""
        q = self._heads(self.to_q(self.norm_q(_tokens(x))))
        k = self._heads(self.to_k(self.norm_k(_tokens(self._compress(self.compress_k, f_avs)))))
        v = self._heads(self.to_v(self.norm_v(_tokens(self._compress(self.compress_v, x)))))
        attn = torch.softmax(torch.matmul(q * self.scale, k.transpose(-1, -2)), dim=-1)
        return self.to_out(torch.matmul(attn, v).transpose(1, 2).flatten(2))

    def forward(self, x: Tensor, f_avs: Tensor) -> Tensor:
        """``x = [f_v, f_s]`` and ``f_avs``: [B, C, T + 1, H, W] -> [B, C, T + 1, H, W]."""
        if not self.per_frame:
            return x + self._attend(x, f_avs).transpose(1, 2).reshape(x.shape)
        frames, height, width = x.shape[2:]
        out = self._attend(_frames(x), _frames(f_avs))  # [B (T+1), H W, C]
        out = out.transpose(1, 2).unflatten(2, (height, width)).unflatten(0, (-1, frames))
        return x + out.transpose(1, 2)


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
        self, channels: int, audio_channels: int, heads: int, kernel: tuple[int, int, int], mode: str
    ) -> None:
        super().__init__()
        self.audio_conv = nn.Conv3d(audio_channels, channels, 1)
        self.attn = SpatioTemporalCrossAttention(channels, heads, kernel, mode)
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
    ``unet.channels``). Heads, time-embedding size, blocks and the attention mode come from
    ``config.unet``; the map
    size and the spatial grids from ``config.video`` / ``config.video_scales``. ``oneshot``: the
    variant has a one-shot map (hybrid); with ``unet.oneshot_condition`` the UNet then takes it as
    an input (:meth:`forward`'s ``one_shot``).
    """

    def __init__(
        self,
        config: Config,
        cond_channels: tuple[int, int, int, int],
        audio_channels: int,
        channels: tuple[int, ...] | None = None,
        oneshot: bool = False,
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
        self.attention = u.attention

        self.time_embed = TimestepEmbedding(u.time_dim)
        # unet.oneshot_condition (hybrid): the one-shot map enters beside x_t as a second channel
        self.oneshot_condition = bool(u.oneshot_condition and oneshot)
        self.stem = nn.Conv2d(2 if self.oneshot_condition else 1, ch[0], 3, padding=1)
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
            MAMStage(c, audio_channels, u.heads, kernel, u.attention)
            for c, kernel in zip(ch, eca_kernels(config, u.attention), strict=True)
        )
        self.head_norm = _group_norm(ch[0])
        self.head_conv = nn.Conv2d(ch[0], 1, 3, padding=1)

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        c0: Tensor,
        c1: Tensor,
        c2: Tensor,
        c3: Tensor,
        audio: Tensor,
        one_shot: Tensor | None = None,
    ) -> Tensor:
        """x0 estimate [B, 1, H, W] from ``x_t`` [B, 1, H, W] at float time steps ``t`` [B].

        ``c_i``: [B, cond_channels[i], T_i, H_i, W_i] on the S3D grid of scale ``i``;
        ``audio``: [B, C_a, T_a, h_a, w_a] (``h_a = w_a = 1`` for SoundNet); ``one_shot``
        [B, 1, H, W] in [0, 1], the fusion decoder's map (required with ``unet.oneshot_condition``,
        ignored otherwise).
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
        if self.oneshot_condition:
            if one_shot is None:
                raise ValueError(
                    "this UNet is conditioned on the one-shot map (unet.oneshot_condition): pass one_shot"
                )
            stem = self.stem(torch.cat([x_t, one_shot.to(x_t.dtype)], dim=1))
        else:
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
