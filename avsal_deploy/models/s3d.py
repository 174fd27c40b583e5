"""S3D video encoder (Xie et al. 2018, "Rethinking Spatiotemporal Feature Learning").

S3D is Inception-v1 (GoogLeNet) inflated to 3D with every 3x3x3 convolution made *separable*: a
spatial (1,k,k) convolution + BN + ReLU followed by a temporal (k,1,1) convolution + BN + ReLU.
The layer structure and the module names follow the public PyTorch S3D used by TASED-Net and
ViNet (``base1`` .. ``base4`` as in ViNet's ``BackBoneS3D``), so the Kinetics-400 checkpoints load
through the rule tables of :mod:`avsal_deploy.models.weights`.

The encoder returns the four block outputs ViNet's ``BackBoneS3D`` takes, high to low resolution:

=====  ===================================  ========  =================================
scale  block output                         channels  (T, H, W) for a [T, H, W] clip
=====  ===================================  ========  =================================
0      SepConv 64->192 (before pool2)        192       T/2, ceil(H/4),  ceil(W/4)
1      Mixed_3c                              480       T/2, ceil(H/8),  ceil(W/8)
2      Mixed_4f                              832       T/4, ceil(H/16), ceil(W/16)
3      Mixed_5c                              1024      T/8, ceil(H/32), ceil(W/32)
=====  ===================================  ========  =================================

(:meth:`avsal_deploy.config.Config.video_scales` derives the same shapes.)

Deviations from the public code, and why:

- ``pool4`` is ViNet's temporal ``maxt4`` (2,1,1)/(2,1,1) followed by a spatial k3/s2/p1 max pool
  (ViNet: k2/s2/p0; kylemin's and torchvision's S3D: one (2,2,2)/2 pool). Every spatial step then rounds up, so
  inputs whose size is not a multiple of 32 (e.g. 112x192 -> 4x6 at scale 3) keep their border
  instead of silently dropping it. At 224x384 the output size is unchanged, but the values are not
  (a 3x3 window sees more than a 2x2 one): ``pool4="public"`` builds ViNet's k2/s2/p0 pool, which
  the official ViNet, AViNet, ViNet-S and TASED-Net weights need.
- A channel multiplier ``width`` scales every branch through :func:`~avsal_deploy.config.scaled`.
  The pool-projection branch (``branch3``) of each Mixed block takes up the rounding, so every
  block's width is exactly ``scaled(public width, width)`` (the config's ``s3d_channels``).
  ``width=1.0`` has exactly the public channel counts (and parameter count, 7,910,048 without the
  classifier head).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from avsal_deploy.config import S3D_SCALE_CHANNELS, scaled
from avsal_deploy.errors import ConfigError

if TYPE_CHECKING:
    from avsal_deploy.config import Config

# Public Mixed-block widths (Inception-v1): branch0 1x1, branch1 1x1 -> sep 3x3x3,
# branch2 1x1 -> sep 3x3x3, branch3 max pool 3x3x3 -> 1x1. Order = order in the network.
#                 b0   b1_mid  b1   b2_mid  b2   b3
MIXED_WIDTHS: dict[str, tuple[int, int, int, int, int, int]] = {
    "3b": (64, 96, 128, 16, 32, 32),
    "3c": (128, 128, 192, 32, 96, 64),
    "4b": (192, 96, 208, 16, 48, 64),
    "4c": (160, 112, 224, 24, 64, 64),
    "4d": (128, 128, 256, 24, 64, 64),
    "4e": (112, 144, 288, 32, 64, 64),
    "4f": (256, 160, 320, 32, 128, 128),
    "5b": (256, 160, 320, 32, 128, 128),
    "5c": (384, 192, 384, 48, 128, 128),
}
# Mixed blocks of each encoder stage (base2 .. base4); base1 is the stem.
STAGE_BLOCKS: tuple[tuple[str, ...], ...] = (("3b", "3c"), ("4b", "4c", "4d", "4e", "4f"), ("5b", "5c"))
STEM_WIDTH = 64  # conv1 and conv2 of the stem; conv3 gives S3D_SCALE_CHANNELS[0] = 192
BN_EPS = 1e-3  # TensorFlow/Sonnet default the Kinetics checkpoints were trained with
# The public code uses momentum 1e-3 (TF decay 0.999); we keep PyTorch's 0.1 so the running
# statistics follow within a short fine-tune and when the small profiles train from scratch.
BN_MOMENTUM = 0.1
#: The spatial part of pool4: "ceil" (ours, k3/s2/p1, rounds up) or "public" (ViNet's and
#: TASED-Net's k2/s2/p0, which the official checkpoints of those models were trained with).
POOL4_MODES: tuple[str, ...] = ("ceil", "public")


class BasicConv3d(nn.Module):
    """Conv3d (no bias) + BatchNorm + ReLU."""

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        self.conv = nn.Conv3d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm3d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.relu = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.relu(self.bn(self.conv(x)))


class SepConv3d(nn.Module):
    """Separable 3D convolution: spatial (1,k,k) conv + BN + ReLU, then temporal (k,1,1) conv + BN + ReLU.

    ``stride`` applies to both space (first conv) and time (second conv).
    """

    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int = 1, padding: int = 0) -> None:
        super().__init__()
        k, s, p = kernel_size, stride, padding
        self.conv_s = nn.Conv3d(cin, cout, (1, k, k), stride=(1, s, s), padding=(0, p, p), bias=False)
        self.bn_s = nn.BatchNorm3d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.relu_s = nn.ReLU()
        self.conv_t = nn.Conv3d(cout, cout, (k, 1, 1), stride=(s, 1, 1), padding=(p, 0, 0), bias=False)
        self.bn_t = nn.BatchNorm3d(cout, eps=BN_EPS, momentum=BN_MOMENTUM)
        self.relu_t = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu_s(self.bn_s(self.conv_s(x)))
        return self.relu_t(self.bn_t(self.conv_t(x)))


class MixedBlock(nn.Module):
    """An S3D Inception block: four parallel branches concatenated along channels."""

    def __init__(
        self, cin: int, widths: tuple[int, int, int, int, int, int], width: float, name: str
    ) -> None:
        super().__init__()
        b0, b1_mid, b1, b2_mid, b2, b3 = (scaled(c, width) for c in widths)
        out = scaled(widths[0] + widths[2] + widths[4] + widths[5], width)
        b3 = out - (b0 + b1 + b2)  # the pool projection takes up the rounding (exact at width 1.0)
        if b3 < 1:
            raise ConfigError(f"video.s3d_width={width}: too narrow for S3D block Mixed_{name}")
        self.branch0 = nn.Sequential(BasicConv3d(cin, b0, 1))
        self.branch1 = nn.Sequential(BasicConv3d(cin, b1_mid, 1), SepConv3d(b1_mid, b1, 3, 1, 1))
        self.branch2 = nn.Sequential(BasicConv3d(cin, b2_mid, 1), SepConv3d(b2_mid, b2, 3, 1, 1))
        self.branch3 = nn.Sequential(nn.MaxPool3d(3, stride=1, padding=1), BasicConv3d(cin, b3, 1))
        self.out_channels = out

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat((self.branch0(x), self.branch1(x), self.branch2(x), self.branch3(x)), dim=1)


def _spatial_pool() -> nn.MaxPool3d:
    """k3/s2/p1 spatial max pool: halves H and W, rounding up."""
    return nn.MaxPool3d((1, 3, 3), stride=(1, 2, 2), padding=(0, 1, 1))


class S3D(nn.Module):
    """S3D encoder returning its four block outputs, high to low resolution.

    Input: normalised frames ``[B, 3, T, H, W]`` (T a multiple of 8). Output: a tuple of four
    tensors ``[B, C_i, T_i, H_i, W_i]`` with ``C_i = out_channels[i]``.
    """

    def __init__(self, width: float = 1.0, pool4: str = "ceil") -> None:
        super().__init__()
        if width <= 0:
            raise ConfigError(f"video.s3d_width={width}: must be > 0")
        if pool4 not in POOL4_MODES:
            raise ConfigError(f"S3D pool4={pool4!r}: choose one of {', '.join(POOL4_MODES)}")
        self.width = float(width)
        c64, c192 = scaled(STEM_WIDTH, width), scaled(S3D_SCALE_CHANNELS[0], width)
        self.base1 = nn.Sequential(
            SepConv3d(3, c64, 7, stride=2, padding=3),  # conv1: stride 2 in time and space
            _spatial_pool(),  # pool1
            BasicConv3d(c64, c64, 1),
            SepConv3d(c64, c192, 3, stride=1, padding=1),
        )
        self.maxp2 = _spatial_pool()
        stages = []
        cin = c192
        for names in STAGE_BLOCKS:
            blocks = []
            for name in names:
                block = MixedBlock(cin, MIXED_WIDTHS[name], width, name)
                cin = block.out_channels
                blocks.append(block)
            stages.append(nn.Sequential(*blocks))
        self.base2, self.base3, self.base4 = stages
        self.maxp3 = nn.MaxPool3d(3, stride=2, padding=1)  # pool3: time and space
        self.maxt4 = nn.MaxPool3d((2, 1, 1), stride=(2, 1, 1))  # pool4, temporal part
        # pool4, spatial part: ours rounds up; the public code's k2/s2/p0 drops an odd border
        self.maxp4 = _spatial_pool() if pool4 == "ceil" else nn.MaxPool3d((1, 2, 2), stride=(1, 2, 2))
        self.out_channels: tuple[int, int, int, int] = (
            c192,
            self.base2[-1].out_channels,
            self.base3[-1].out_channels,
            self.base4[-1].out_channels,
        )

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        y0 = self.base1(frames)
        y1 = self.base2(self.maxp2(y0))
        y2 = self.base3(self.maxp3(y1))
        y3 = self.base4(self.maxp4(self.maxt4(y2)))
        return y0, y1, y2, y3


def build_s3d(config: Config) -> S3D:
    """The S3D encoder of ``config`` (width ``config.video.s3d_width``)."""
    model = S3D(config.video.s3d_width)
    if model.out_channels != config.s3d_channels():  # guards the config <-> module contract
        raise ConfigError(
            f"video.s3d_width={config.video.s3d_width}: S3D widths {model.out_channels} "
            f"differ from config.s3d_channels() {config.s3d_channels()}"
        )
    return model
