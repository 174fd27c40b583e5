"""The released DiffSal Saliency-UNet (``SalUNet``, github.com/junwenxiong/diff_sal@c9b8070), as one
denoising step: ``x0 = unet(x_t, t, stage3, stage2, stage1[, audio_feat])``.

Written from the released forward (``models/saliency_decoder/{sal_unet,transformer,attention,
common_block}.py``) with every quirk kept, because trained weights depend on them. Module and
parameter names follow the released model (``temb``, ``conv_in``, ``down1``, ``res_encoder``,
``invpt_decoder``, ``logits``), so its ``decoder_net.*`` keys map one to one. For a 16x224x384
clip (the released ``img_size``):

1. **Time**: 96-d sinusoidal embedding of ``t`` (``log(10000) / 47`` frequency step, sin then cos)
   -> Linear 96->384 -> swish -> Linear 384->384.
2. **Noise encoder** (``noise_downsample``): ``conv_in`` 3x3 1->96; ``down1`` pads right/bottom by
   one and convolves 3x3 stride 4 (224x384 -> 56x96); then three stages of a ResNet block
   (GroupNorm(32, eps 1e-6), swish, 3x3 conv, ``+ temb_proj(swish(temb))`` as a per-channel bias
   BEFORE the second norm, GroupNorm, swish, 3x3 conv, 1x1 shortcut) and a right/bottom-padded
   3x3 stride-2 conv: 192@28x48, 384@14x24, 768@7x12.
3. **Slots**: each of those noise maps is appended as a ninth time slot to the MViTv2-S stage of
   the same size (8 slots each): ``[B, C, 9, h, w]``. The MViT stage-0 output (96@56x96) is not
   used by the released forward.
4. **Decoder** (``invpt_decoder``), four stages at 7x12, 14x24, 28x48, 56x96 with 768, 384, 192,
   96 channels. Stages 1-3 first apply ``UpEmbed`` per slot (bilinear x2, then twice a 3x3 conv
   with dilation 2 and padding 2 + BatchNorm + ReLU); stages 1 and 2 then add the backbone
   stage of their size (slots included: stage 1 the 384-channel, stage 2 the 192-channel one;
   stage 3 gets no skip). Each stage has one transformer block, per slot: LayerNorm, attention,
   residual; LayerNorm, MLP (ratio 2, GELU), residual. The attention's query, key and value are
   depthwise convolutions (query: the centre temporal tap of a 3x3x3 kernel, padding 1, i.e. a
   3x3 depthwise conv; key and value: kernel = stride = 2, 4, 8, 16 per stage, no padding), each
   followed by a LayerNorm and a Linear; 2 heads; scores scaled by ``C ** -0.5`` with C the
   stage's WHOLE width (not the head width).
5. **Audio interaction** (audio-visual checkpoints): the keys come from the audio, not from the
   frames. Per block: ``align_conv`` (1x1, 512 -> C) on every audio slot, nearest upsampling by
   ``H // h`` when both sides differ, ``pool = mean over slots of (audio * x)``, ``softmax(pool)``
   over the WIDTH axis only, ``audio * softmax``; this ``[B, C, 9, H, W]`` tensor is then read as
   ``[B * 9, H * W, C]`` by a plain reshape of its memory (the released ``.view`` without a
   permute: rows, channels and slots are interleaved) and that is the key's input, read back as
   ``[B * 9, C, H, W]``. The reshape stays inside each sample (a sample's block is exactly
   9 * H * W * C values), so a batch of two gives the two samples' single results.
6. **Read-out**: after every stage the tokens (not carried on) go through a LayerNorm, a
   ``ReduceTemp`` (Conv3d over time, kernel 5 = stride 5, no bias, ReLU; 9 slots give ONE output
   from slots 0-4, so the noise slot 8 is never read directly) to 768 channels and bilinear
   upsampling to 16x the first stage's size (112x192); the four are summed, then 3x3 conv 768->96
   + BatchNorm + ReLU, 1x1 conv to one channel, sigmoid, bilinear to the map size.

**Visual-only checkpoints** (``cfgs/visual.py``, no audio network): every operation of the
decoder is then per slot (attention, norms, MLP and ``UpEmbed`` run on ``(b t)`` batches; the
skips add slot to slot) and ``ReduceTemp`` reads slots 0-4, so the noise slot, and with it x_t and
t, cannot reach the output: the released network ignores both. :class:`OfficialSalUNet` with
``audio=False`` therefore computes only the five slots that are read (the same numbers, 5/9 of
the work) and takes ``x_t`` and ``t`` only to keep the step's call convention. With audio the
slot mean of step 5 and the reshape mix the noise slot into the keys of slots 0-4: that is the only
path by which x_t and t matter.

Every einops/einsum of the released code is a reshape, transpose or matmul here; shapes are static
except the batch, so the step exports to ONNX with a dynamic batch.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: The released SalUNet settings (``cfgs/audio_visual.py`` / ``cfgs/visual.py`` ``decoder_net``).
WIDTHS: tuple[int, int, int, int] = (768, 384, 192, 96)  # up_channel: decoder stages, coarse -> fine
KV_KERNELS: tuple[int, int, int, int] = (2, 4, 8, 16)  # kernel_kv = stride_kv, padding 0
HEADS = 2
MLP_RATIO = 2.0
READOUT_WIDTH = 768  # ReduceTemp output channels (the decoder's target_channel)
HEAD_WIDTH = 96  # mt_proj output (down_embed_dim)
TIME_DIM = 96  # SalUNet.ch: sinusoid width and the noise encoder's first width
REDUCE_SLOTS = 5  # temporal_list: ReduceTemp kernel = stride
AUDIO_WIDTH = 512  # the audio features' channels (align_conv input)
GN_GROUPS, GN_EPS = 32, 1e-6


def swish(x: Tensor) -> Tensor:
    return x * torch.sigmoid(x)


def timestep_frequencies(dim: int = TIME_DIM) -> Tensor:
    """The sinusoid's ``dim // 2`` frequencies, computed as the released ``get_timestep_embedding``."""
    half = dim // 2
    step = math.log(10000) / (half - 1)
    return torch.exp(torch.arange(half, dtype=torch.float32) * -step)


class _PadConv(nn.Module):
    """Pad one zero row/column at the bottom/right, then a 3x3 conv of ``stride`` (``Downsample``)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _ResBlock(nn.Module):
    """GroupNorm-swish-conv, time bias, GroupNorm-swish-conv, 1x1 shortcut (dropout: eval, none)."""

    def __init__(self, cin: int, cout: int, temb: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(GN_GROUPS, cin, eps=GN_EPS)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.temb_proj = nn.Linear(temb, cout)
        self.norm2 = nn.GroupNorm(GN_GROUPS, cout, eps=GN_EPS)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(swish(self.norm1(x)))
        h = h + self.temb_proj(swish(temb))[:, :, None, None]
        h = self.conv2(swish(self.norm2(h)))
        return self.nin_shortcut(x) + h


class _TimeMLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.dense = nn.ModuleList([nn.Linear(dim, hidden), nn.Linear(hidden, hidden)])


class _DepthwiseProjection(nn.Module):
    """A depthwise conv of the attention's query, key or value, then a LayerNorm over channels.

    ``conv`` keeps the released Conv3d weight ``[C, 1, kt, k, k]``; the input has one time slot, so
    only one temporal tap meets data (the centre one of the query's zero-padded 3-tap kernel, the
    only one of the key's and value's): it runs as a 2-D depthwise conv with that tap.
    """

    def __init__(self, channels: int, kernel: tuple[int, int, int], stride: int, padding: int) -> None:
        super().__init__()
        self.conv = nn.Conv3d(
            channels, channels, kernel, stride=stride, padding=padding, groups=channels, bias=False
        )
        self.bn = nn.LayerNorm(channels)  # released name; a LayerNorm
        self.tap = kernel[0] // 2
        self.stride = stride
        self.padding = padding

    def forward(self, x: Tensor) -> Tensor:  # [N, C, H, W] -> [N, H'W', C]
        w = self.conv.weight[:, :, self.tap]
        y = F.conv2d(x, w, stride=self.stride, padding=self.padding, groups=x.shape[1])
        return self.bn(y.flatten(2).transpose(1, 2))


class _Attention(nn.Module):
    def __init__(self, dim: int, kv_kernel: int) -> None:
        super().__init__()
        self.heads = HEADS
        self.scale = dim**-0.5
        self.conv_proj_q = _DepthwiseProjection(dim, (3, 3, 3), 1, 1)
        self.conv_proj_k = _DepthwiseProjection(dim, (1, kv_kernel, kv_kernel), kv_kernel, 0)
        self.conv_proj_v = _DepthwiseProjection(dim, (1, kv_kernel, kv_kernel), kv_kernel, 0)
        self.proj_q = nn.Linear(dim, dim)
        self.proj_k = nn.Linear(dim, dim)
        self.proj_v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> Tensor:  # [N, L, C] -> [N, heads, L, C / heads]
        n, c = x.shape[1], x.shape[2]
        return x.reshape(-1, n, self.heads, c // self.heads).transpose(1, 2)

    def forward(self, x: Tensor, key_source: Tensor) -> Tensor:
        """``x``: normalised tokens [N, H*W, C] as a map [N, C, H, W]; ``key_source``: the map the
        keys are computed from (``x`` itself, or the audio of step 5)."""
        q = self._heads(self.proj_q(self.conv_proj_q(x)))
        k = self._heads(self.proj_k(self.conv_proj_k(key_source)))
        v = self._heads(self.proj_v(self.conv_proj_v(x)))
        attn = torch.softmax(torch.matmul(q, k.transpose(2, 3)) * self.scale, dim=-1)
        out = torch.matmul(attn, v)  # [N, heads, L, d]
        n, length, c = out.shape[0], out.shape[2], out.shape[1] * out.shape[3]
        return self.proj(out.transpose(1, 2).reshape(n, length, c))


class _Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _upsample_nearest(x: Tensor, factor: int) -> Tensor:
    """Nearest-neighbour upsampling of [N, C, h, w] by an integer factor (``F.upsample`` default)."""
    n, c, h, w = x.shape
    x = x[:, :, :, None, :, None].expand(n, c, h, factor, w, factor)
    return x.reshape(n, c, h * factor, w * factor)


class _Block(nn.Module):
    """One decoder transformer block, applied to every slot; the audio gives the keys (step 5)."""

    def __init__(self, dim: int, kv_kernel: int, audio: bool) -> None:
        super().__init__()
        self.mlp = _Mlp(dim, int(dim * MLP_RATIO))
        self.norm = nn.LayerNorm(dim)
        self.attn = _Attention(dim, kv_kernel)
        self.norm2 = nn.LayerNorm(dim)
        # built by every released block; read only with audio (a visual-only file's are dropped)
        self.align_conv = nn.Conv2d(AUDIO_WIDTH, dim, 1) if audio else None

    def _audio_keys(self, x: Tensor, audio: Tensor) -> Tensor:
        """The key input [B*T, C, H, W] from the audio [B, 512, T, h, w] and the slots [B, C, T, H, W]."""
        c, h, w = x.shape[1], x.shape[3], x.shape[4]
        ta, ha, wa = audio.shape[2], audio.shape[3], audio.shape[4]
        assert self.align_conv is not None
        a = self.align_conv(audio.transpose(1, 2).reshape(-1, AUDIO_WIDTH, ha, wa))
        if ha != h and wa != w:
            a = _upsample_nearest(a, h // ha)
        a = a.reshape(-1, ta, c, a.shape[2], a.shape[3]).transpose(1, 2)  # [B, C, T, H, W]
        weight = torch.softmax((a * x).mean(dim=2, keepdim=True), dim=-1)  # over W only
        a = a * weight
        # The released `.view(bs, -1, C)` of the contiguous [B, C, T, H, W] tensor, then its
        # 'b (t h w) c -> b c t h w' with t = 1: the memory read as [B*T, H*W, C], transposed.
        return a.reshape(-1, h * w, c).transpose(1, 2).reshape(-1, c, h, w)

    def forward(self, x: Tensor, audio: Tensor | None) -> Tensor:  # [B, C, T, H, W] -> same
        c, t, h, w = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
        maps = x.transpose(1, 2).reshape(-1, c, h, w)  # (b t) c h w
        tokens = maps.flatten(2).transpose(1, 2)  # [B*T, H*W, C]
        normed = self.norm(tokens)
        normed_map = normed.transpose(1, 2).reshape(-1, c, h, w)
        keys = normed_map if audio is None else self._audio_keys(x, audio)
        y = self.attn(normed_map, keys) + tokens
        y = y + self.mlp(self.norm2(y))
        return y.transpose(1, 2).reshape(-1, t, c, h, w).transpose(1, 2)


class _UpEmbed(nn.Module):
    """Per slot: bilinear x2, then twice (3x3 conv, dilation 2, padding 2, no bias; BN; ReLU)."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Upsample(scale_factor=2.0, mode="bilinear", align_corners=False),
            nn.Conv2d(cin, cout, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
            nn.Conv2d(cout, cout, 3, padding=2, dilation=2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:  # [B, C, T, h, w] -> [B, C', T, 2h, 2w]
        c, t, h, w = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
        y = self.proj(x.transpose(1, 2).reshape(-1, c, h, w))
        return y.reshape(-1, t, y.shape[1], y.shape[2], y.shape[3]).transpose(1, 2)


class _Stage(nn.Module):
    def __init__(self, index: int, cin: int, dim: int, audio: bool) -> None:
        super().__init__()
        self.patch_embed = nn.ModuleList([_UpEmbed(cin, dim)]) if index > 0 else None
        self.blocks = nn.ModuleList([_Block(dim, KV_KERNELS[index], audio)])

    def forward(self, x: Tensor, skip: Tensor | None, audio: Tensor | None) -> Tensor:
        if self.patch_embed is not None:
            x = self.patch_embed[0](x)
            if skip is not None:
                x = x + skip
        for block in self.blocks:
            x = block(x, audio)
        return x


class _ReduceTemp(nn.Module):
    def __init__(self, cin: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            nn.Conv3d(cin, READOUT_WIDTH, (REDUCE_SLOTS, 1, 1), stride=(REDUCE_SLOTS, 1, 1), bias=False),
            nn.ReLU(),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x)


class _Decoder(nn.Module):
    def __init__(self, audio: bool) -> None:
        super().__init__()
        self.mid_stages = nn.ModuleList()
        self.norm_mts = nn.ModuleList()
        self.redu_chan_up = nn.ModuleList()
        cin = WIDTHS[0]
        for i, dim in enumerate(WIDTHS):
            self.mid_stages.append(_Stage(i, cin, dim, audio))
            self.norm_mts.append(nn.LayerNorm(dim))
            self.redu_chan_up.append(_ReduceTemp(dim))
            cin = dim
        self.mt_proj = nn.Sequential(
            nn.Conv2d(READOUT_WIDTH, HEAD_WIDTH, 3, padding=1), nn.BatchNorm2d(HEAD_WIDTH), nn.ReLU()
        )

    def forward(self, feats: list[Tensor], audio: Tensor | None) -> Tensor:
        x = feats[0]
        h, w = x.shape[3], x.shape[4]
        size = (h * 2 ** len(WIDTHS), w * 2 ** len(WIDTHS))
        total: Tensor | None = None
        for i, stage in enumerate(self.mid_stages):
            x = stage(x, feats[i] if i in (1, 2) else None, audio)
            y = self.norm_mts[i](x.permute(0, 2, 3, 4, 1)).permute(0, 4, 1, 2, 3)  # LN over C
            y = self.redu_chan_up[i](y).squeeze(2)
            y = F.interpolate(y, size=size, mode="bilinear", align_corners=False)
            total = y if total is None else total + y
        assert total is not None
        return self.mt_proj(total)


class _Logits(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear_pred = nn.Conv2d(HEAD_WIDTH, 1, 1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.sigmoid(self.linear_pred(x))


class OfficialSalUNet(nn.Module):
    """One step of the released SalUNet (module docstring): ``forward(x_t [B,1,H,W], t [B] float,
    stage3, stage2, stage1[, audio_feat]) -> x0 [B,1,H,W]`` (sigmoid output, no clamp).

    ``stage3``/``stage2``/``stage1``: the MViTv2-S stage outputs [B, 768|384|192, 8, h, w] at 1/32,
    1/16, 1/8 of the frame size; ``audio_feat``: the audio features [B, 512, 9, h_a, w_a] (required
    with ``audio=True``, ignored otherwise).
    ``map_size``: the output size (the released ``img_size``, the frame size).
    """

    def __init__(self, map_size: tuple[int, int], audio: bool = True) -> None:
        super().__init__()
        self.map_size = (int(map_size[0]), int(map_size[1]))
        self.audio = bool(audio)
        self.invpt_decoder = _Decoder(self.audio)
        self.logits = _Logits()
        self.temb = _TimeMLP(TIME_DIM, 4 * TIME_DIM)
        self.conv_in = nn.Conv2d(1, TIME_DIM, 3, padding=1)
        self.down1 = _PadConv(TIME_DIM, 4)
        self.res_encoder = nn.ModuleList()
        cin = TIME_DIM
        for cout in WIDTHS[:-1][::-1]:  # 192, 384, 768
            self.res_encoder.append(nn.ModuleList([_ResBlock(cin, cout, 4 * TIME_DIM), _PadConv(cout, 2)]))
            cin = cout
        self.register_buffer("frequencies", timestep_frequencies(), persistent=False)

    def time_embedding(self, t: Tensor) -> Tensor:
        arg = t.to(torch.float32)[:, None] * self.frequencies[None, :]
        emb = torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)
        return self.temb.dense[1](swish(self.temb.dense[0](emb)))

    def noise_features(self, x_t: Tensor, t: Tensor) -> list[Tensor]:
        """The noise encoder's maps, coarse first: [B, 768|384|192, h, w] (step 2)."""
        temb = self.time_embedding(t)
        x = self.down1(self.conv_in(x_t))
        out = []
        for block, down in self.res_encoder:  # type: ignore[misc]
            x = down(block(x, temb))
            out.append(x)
        return out[::-1]

    def forward(
        self,
        x_t: Tensor,
        t: Tensor,
        stage3: Tensor,
        stage2: Tensor,
        stage1: Tensor,
        audio_feat: Tensor | None = None,
    ) -> Tensor:
        video = (stage3, stage2, stage1)
        audio = audio_feat if self.audio else None
        if self.audio:
            if audio is None:
                raise ValueError("the audio-visual SalUNet step needs audio_feat")
            noise = self.noise_features(x_t, t)
            feats = [torch.cat([v, n.unsqueeze(2)], dim=2) for v, n in zip(video, noise, strict=True)]
        else:  # the slots ReduceTemp reads; the noise slot cannot reach the output (module docstring)
            feats = [v[:, :, :REDUCE_SLOTS] for v in video]
        out = self.logits(self.invpt_decoder(feats, audio))
        return F.interpolate(out, size=self.map_size, mode="bilinear", align_corners=False)
