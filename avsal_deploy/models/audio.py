"""Audio encoders: SoundNet-8 on the raw waveform (AVRSP, hybrid) and VGGish + a temporal
transformer on log-mel slices (DiffSal).

SoundNet-8 (Aytar et al. 2016) is built from :data:`SOUNDNET_LAYERS`, the layer table of the
public PyTorch port (the TensorFlow ``sound8`` model converted to PyTorch; used by ViNet/AViNet):
the waveform is an NCHW image ``[B, 1, L, 1]``, every convolution has a (k, 1) kernel and a
(s, 1) stride, followed by BatchNorm and ReLU; conv1, conv2 and conv5 are followed by max pools
of 8, 8 and 4. The conv8 object/scene classification heads are not built: the encoder returns the
conv7 features (1024 channels at width 1.0), as AViNet and AVRSP use them.
:func:`soundnet_output_frames` computes the number of conv7 frames from the same table.

VGGish (Hershey et al. 2017) is the conv trunk of the public torchvggish port (3x3 convolutions
with ReLU, 64-M-128-M-256-256-M-512-512-M, M = 2x2 max pool), applied to each log-mel slice. The
fully connected embedding layers are not used: DiffSal keeps the [C, h_a, w_a] feature map. The
slices' maps then go through DiffSal's temporal enhancement module (Sec. 4.1, eq. 4-5): patch
embedding, a learnable positional embedding along time, and pre-LN transformer layers
``f = MSA(LN(f)) + f; f = MLP(LN(f)) + f`` over all ``S * h_a * w_a`` tokens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from avsal_deploy.config import check_variant, scaled
from avsal_deploy.errors import ConfigError

if TYPE_CHECKING:
    from avsal_deploy.config import Config

# --------------------------------------------------------------------------- SoundNet-8
# One row per conv block of the public port: (out channels at width 1.0, kernel, stride,
# padding, max-pool size after the block or 1 for none). Kernels/strides/pads act on time (H).
SOUNDNET_LAYERS: tuple[tuple[int, int, int, int, int], ...] = (
    (16, 64, 2, 32, 8),  # conv1 + pool1
    (32, 32, 2, 16, 8),  # conv2 + pool2
    (64, 16, 2, 8, 1),  # conv3
    (128, 8, 2, 4, 1),  # conv4
    (256, 4, 2, 2, 4),  # conv5 + pool5
    (512, 4, 2, 2, 1),  # conv6
    (1024, 4, 2, 2, 1),  # conv7: the encoder's output
)
SOUNDNET_BN_EPS = 1e-5  # as in the public port


def soundnet_output_frames(samples: int) -> int:
    """Number of conv7 frames SoundNet-8 gives for a waveform of ``samples`` samples.

    Closed form from :data:`SOUNDNET_LAYERS`: each conv maps n -> (n + 2p - k) // s + 1, each
    max pool (kernel = stride = m, no padding) n -> n // m. The paper profile's 70,560-sample
    buffer (22,050 Hz / 10 fps * 32 frames, the ViNet convention) gives 3 frames.
    """
    n = int(samples)
    for _, k, s, p, pool in SOUNDNET_LAYERS:
        n = (n + 2 * p - k) // s + 1
        n //= pool
        if n < 1:
            raise ConfigError(f"{samples} audio samples are too short for SoundNet-8 (no output frame)")
    return n


class SoundNet8(nn.Module):
    """SoundNet-8 conv1..conv7 on the raw waveform.

    Input ``[B, 1, L, 1]`` (the legacy SoundNet layout, samples scaled to about [-256, 256]);
    output ``[B, C_a, T_a, 1, 1]`` with ``C_a = out_channels = scaled(1024, width)`` and
    ``T_a = soundnet_output_frames(L)``. ``conv{i}`` is ``Sequential(conv, bn, relu[, pool])``,
    the block layout of the public port (its conv layers have a bias although BN follows).
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        if width <= 0:
            raise ConfigError(f"audio.soundnet_width={width}: must be > 0")
        self.width = float(width)
        cin = 1
        for i, (cout, k, s, p, pool) in enumerate(SOUNDNET_LAYERS, start=1):
            cout = scaled(cout, width)
            layers: list[nn.Module] = [
                nn.Conv2d(cin, cout, (k, 1), stride=(s, 1), padding=(p, 0)),
                nn.BatchNorm2d(cout, eps=SOUNDNET_BN_EPS),
                nn.ReLU(),
            ]
            if pool > 1:
                layers.append(nn.MaxPool2d((pool, 1), stride=(pool, 1)))
            self.add_module(f"conv{i}", nn.Sequential(*layers))
            cin = cout
        self.out_channels: int = cin

    def forward(self, wave: Tensor) -> Tensor:
        x = wave
        for i in range(1, len(SOUNDNET_LAYERS) + 1):
            x = getattr(self, f"conv{i}")(x)
        return x.unsqueeze(-1)  # [B, C, T, 1] -> [B, C, T, 1, 1]


# --------------------------------------------------------------------------- VGGish
# torchvggish's trunk: conv widths at width 1.0, "M" = 2x2 max pool. With this list the module
# indices of ``trunk`` equal those of torchvggish's ``features`` (convs at 0, 3, 6, 8, 11, 13).
VGGISH_LAYERS: tuple[int | str, ...] = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M")
VGGISH_POOLS = sum(1 for v in VGGISH_LAYERS if v == "M")
# MLP hidden width of the temporal transformer relative to its width: the released DiffSal
# config uses mlp_dim=256 for dim=512.
MLP_RATIO = 0.5


def vggish_output_hw(h: int, w: int) -> tuple[int, int]:
    """Feature-map size (h_a, w_a) of the VGGish trunk for an ``h x w`` log-mel slice.

    Each of the four 2x2/2 max pools rounds down: 96x64 -> 6x4 (VGGish's own examples, the paper
    profile), 112x192 -> 7x12 (the official code's resized slices).
    """
    ha, wa = h, w
    for _ in range(VGGISH_POOLS):
        ha, wa = ha // 2, wa // 2
    if ha < 1 or wa < 1:
        raise ConfigError(f"log-mel slice {h}x{w} is too small for VGGish (needs at least 16x16)")
    return ha, wa


def _vggish_trunk(width: float) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    cin = 1
    for v in VGGISH_LAYERS:
        if v == "M":
            layers.append(nn.MaxPool2d(2, stride=2))
        else:
            cout = scaled(int(v), width)
            layers += [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU()]
            cin = cout
    return nn.Sequential(*layers), cin


class SelfAttention(nn.Module):
    """Multi-head self-attention written with Linear + MatMul + Softmax (clean ONNX/TensorRT graphs).

    Queries, keys and values come from one fused projection (no bias, as in DiffSal's code).
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.scale = self.head_dim**-0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, c = x.shape[1], x.shape[2]
        qkv = self.qkv(x).reshape(-1, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, N, head_dim]
        attn = torch.softmax(torch.matmul(q * self.scale, k.transpose(-2, -1)), dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(-1, n, c)
        return self.proj(out)


class TransformerLayer(nn.Module):
    """Pre-LN transformer layer (DiffSal eq. 5): ``x + MSA(LN(x))``, then ``x + MLP(LN(x))``."""

    def __init__(self, dim: int, heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VGGishEncoder(nn.Module):
    """VGGish trunk per log-mel slice + DiffSal's temporal enhancement module.

    Input ``[B, S, 1, h, w]`` (S slices of ``h x w`` log-mel); output
    ``[B, C_a, S, h_a, w_a]`` with ``C_a = out_channels = scaled(512, audio.vggish_width)`` and
    ``(h_a, w_a) = vggish_output_hw(h, w)``.

    Temporal enhancement (DiffSal Sec. 4.1): the per-slice maps are rearranged into
    ``S * h_a * w_a`` tokens of ``C_a`` channels, embedded by a linear patch embedding (a 1x1
    convolution), given a learnable positional embedding along time (one ``C_a``-vector per slice,
    broadcast over the ``h_a x w_a`` positions, eq. 4) and refined by ``audio.transformer_layers``
    pre-LN layers (eq. 5). Deviations from the released code, which (a) adds a single scalar per
    slice as positional embedding and (b) wraps the patch embedding in LayerNorms and ends with a
    final LayerNorm: we follow the paper's equations (a per-channel embedding, plain linear patch
    embedding, no final norm). Heads have ``C_a / audio.transformer_heads`` channels (64 at the
    paper profile, as released); the MLP hidden width is ``MLP_RATIO * C_a``.
    """

    def __init__(self, config: Config) -> None:
        super().__init__()
        a = config.audio
        self.width = float(a.vggish_width)
        if self.width <= 0:
            raise ConfigError(f"audio.vggish_width={a.vggish_width}: must be > 0")
        self.trunk, dim = _vggish_trunk(self.width)
        if dim % a.transformer_heads:
            raise ConfigError(
                f"audio.transformer_heads={a.transformer_heads}: must divide the VGGish width {dim}"
            )
        if a.transformer_layers < 1:
            raise ConfigError(f"audio.transformer_layers={a.transformer_layers}: must be >= 1")
        self.slices = a.vggish_slices
        self.slice_hw = (a.vggish_slice_height, a.vggish_slice_width)
        self.feature_hw = vggish_output_hw(*self.slice_hw)
        self.patch_embed = nn.Linear(dim, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, self.slices, 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        hidden = max(1, int(round(dim * MLP_RATIO)))
        self.layers = nn.ModuleList(
            TransformerLayer(dim, a.transformer_heads, hidden) for _ in range(a.transformer_layers)
        )
        self.out_channels: int = dim

    def forward(self, slices: Tensor) -> Tensor:
        s, h, w = slices.shape[1], slices.shape[3], slices.shape[4]
        x = self.trunk(slices.reshape(-1, 1, h, w))  # [B*S, C, h_a, w_a]
        c, ha, wa = x.shape[1], x.shape[2], x.shape[3]
        x = x.reshape(-1, s, c, ha * wa).transpose(2, 3)  # [B, S, h_a*w_a, C]
        x = self.patch_embed(x) + self.pos_embed  # eq. 4: one embedding per slice (time step)
        x = x.reshape(-1, s * ha * wa, c)
        for layer in self.layers:
            x = layer(x)
        return x.reshape(-1, s, ha, wa, c).permute(0, 4, 1, 2, 3)  # [B, C, S, h_a, w_a]


def build_audio_encoder(config: Config, variant: str) -> nn.Module:
    """SoundNet-8 for ``avrsp`` and ``hybrid``, VGGish + temporal transformer for ``diffsal``."""
    if check_variant(variant) == "diffsal":
        return VGGishEncoder(config)
    return SoundNet8(config.audio.soundnet_width)
