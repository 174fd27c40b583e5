"""TASED-Net (Min & Corso, ICCV 2019), as released: ``TASED_v2`` of github.com/MichiganCOG/TASED-Net.

The network: an S3D encoder (Kinetics layout: ``base1`` .. ``base4``, pool4 = a (2,1,1) temporal
and a k2/s2/p0 spatial max pool) and a decoder of transposed convolutions with three
max-unpoolings. The indices of those unpoolings come from three max pools of the encoder:

=========  ==============================================  =====================================
unpooling  indices from (pool over ``(1,k,k)`` windows)    windows
=========  ==============================================  =====================================
unpool1    pool4's spatial pool, on ``maxt4(Mixed_4f)``     k2/s2/p0 (disjoint)
unpool2    a k3/s2/p1 pool on ``maxm3(Mixed_3c)``           k3/s2/p1 (overlapping)
unpool3    a k3/s2/p1 pool on ``maxm2(base1)``              k3/s2/p1 (overlapping)
=========  ==============================================  =====================================

(``maxm2``/``maxm3``: (4,1,1)/(4,1,1) temporal max pools, 16 -> 4 frames.)

Deployment split (:class:`~avsal_deploy.models.official.OfficialStages`):

- ``video_encoder`` (:class:`TasedEncoder`, our :class:`~avsal_deploy.models.s3d.S3D` with
  ``pool4="public"``, which is TASED's encoder layer for layer) returns ``v3`` (Mixed_5c,
  [B,1024,T/8,H/32,W/32]) and, for each unpooling, the window offsets of its pool's maxima
  (:func:`~avsal_deploy.models.official.unpool.window_argmax`, float32 in 0..k*k-1, on the
  pooled grid): ``unpool1_argmax`` [B,832,4,H/32,W/32], ``unpool2_argmax`` [B,480,4,H/16,W/16],
  ``unpool3_argmax`` [B,192,4,H/8,W/8];
- ``decoder`` (:class:`TasedDecoder`) unpools with
  :func:`~avsal_deploy.models.official.unpool.unpool_argmax` (no MaxUnpool, no scatter; equal to
  PyTorch's CPU MaxUnpool3d, where overlapping windows' last write wins) and returns the map
  [B,1,H,W] (the official output [B,H,W] with a channel axis).

The official network takes 32 frames (its decoder reduces T/8 = 4 frames to 1 with two (2,1,1)
stride-2 convolutions) and frames whose height and width are multiples of 32 (the unpoolings'
output sizes are exactly twice their inputs'); the official input is 224 x 384.

Official checkpoint keys (``run_train.py`` saves the DataParallel model: ``module.`` prefixes,
removed when read): ``base1.*`` .. ``base4.*`` -> ``video_encoder.*``, ``convtsp1.*`` ..
``convtsp4.*`` -> ``fusion.*`` (same names below; the pools have no parameters).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

from avsal_deploy.config import Config, family
from avsal_deploy.errors import ConfigError
from avsal_deploy.models.official import Converted, OfficialStages
from avsal_deploy.models.official.checkpoint import map_state
from avsal_deploy.models.official.unpool import unpool_argmax, window_argmax
from avsal_deploy.models.s3d import BN_EPS, S3D

FAMILY = "tased"
CLIP_LEN = 32
#: Our video encoder's outputs (the decoder's inputs), in order.
VIDEO_OUTPUTS: tuple[str, ...] = ("v3", "unpool1_argmax", "unpool2_argmax", "unpool3_argmax")
#: (kernel, stride, padding) of the spatial windows of unpool1..3 (all (1, k, k) in time).
UNPOOLS: tuple[tuple[tuple[int, int], tuple[int, int], tuple[int, int]], ...] = (
    ((2, 2), (2, 2), (0, 0)),
    ((3, 3), (2, 2), (1, 1)),
    ((3, 3), (2, 2), (1, 1)),
)
_ENCODER_PREFIXES = ("base1.", "base2.", "base3.", "base4.")
_DECODER_PREFIXES = ("convtsp1.", "convtsp2.", "convtsp3.", "convtsp4.")
#: Keys whose presence (with these shapes) marks a TASED-Net state dict (``module.`` removed):
#: the top-level S3D stem (no ``backbone.`` prefix, unlike ViNet's) and the decoder's transposed
#: convolution 1024 -> 832 and final 4 -> 1 convolution.
MARKERS: dict[str, tuple[int, ...]] = {
    "base1.0.conv_s.weight": (64, 3, 1, 7, 7),
    "convtsp1.3.weight": (1024, 832, 1, 3, 3),
    "convtsp4.13.weight": (1, 4, 1, 1, 1),
}


def _bn(channels: int) -> nn.BatchNorm3d:
    return nn.BatchNorm3d(channels, eps=BN_EPS)


class TasedEncoder(S3D):
    """TASED-Net's S3D encoder: Mixed_5c and the window offsets of the three unpoolings' pools."""

    def __init__(self) -> None:
        super().__init__(1.0, pool4="public")
        self.maxm = nn.MaxPool3d((4, 1, 1), stride=(4, 1, 1))  # the official maxm2 / maxm3

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # type: ignore[override]
        base1 = self.base1(frames)
        mixed_3c = self.base2(self.maxp2(base1))
        mixed_4f = self.base3(self.maxp3(mixed_3c))
        pool4_in = self.maxt4(mixed_4f)
        mixed_5c = self.base4(self.maxp4(pool4_in))
        u1 = window_argmax(pool4_in, *UNPOOLS[0])
        u2 = window_argmax(self.maxm(mixed_3c), *UNPOOLS[1])
        u3 = window_argmax(self.maxm(base1), *UNPOOLS[2])
        return mixed_5c, u1, u2, u3


class TasedDecoder(nn.Module):
    """TASED-Net's decoder (``convtsp1`` .. ``convtsp4`` as the official file names them), with the
    unpoolings in the exportable form of :mod:`~avsal_deploy.models.official.unpool`."""

    def __init__(self) -> None:
        super().__init__()
        up = nn.ConvTranspose3d
        self.convtsp1 = nn.Sequential(
            nn.Conv3d(1024, 1024, 1, bias=False),
            _bn(1024),
            nn.ReLU(),
            up(1024, 832, (1, 3, 3), stride=1, padding=(0, 1, 1), bias=False),
            _bn(832),
            nn.ReLU(),
        )
        self.convtsp2 = nn.Sequential(
            up(832, 480, (1, 3, 3), stride=1, padding=(0, 1, 1), bias=False), _bn(480), nn.ReLU()
        )
        self.convtsp3 = nn.Sequential(
            up(480, 192, (1, 3, 3), stride=1, padding=(0, 1, 1), bias=False), _bn(192), nn.ReLU()
        )
        self.convtsp4 = nn.Sequential(
            up(192, 64, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            _bn(64),
            nn.ReLU(),
            nn.Conv3d(64, 64, (2, 1, 1), stride=(2, 1, 1), bias=False),
            _bn(64),
            nn.ReLU(),
            up(64, 4, 1, stride=1, bias=False),
            _bn(4),
            nn.ReLU(),
            nn.Conv3d(4, 4, (2, 1, 1), stride=(2, 1, 1), bias=False),
            _bn(4),
            nn.ReLU(),
            up(4, 4, (1, 4, 4), stride=(1, 2, 2), padding=(0, 1, 1), bias=False),
            nn.Conv3d(4, 1, 1, bias=True),
            nn.Sigmoid(),
        )

    @staticmethod
    def _unpool(z: Tensor, offsets: Tensor, which: int) -> Tensor:
        kernel, stride, padding = UNPOOLS[which]
        # Frames with H, W multiples of 32: every unpooling exactly doubles its input.
        out_hw = (int(z.shape[-2]) * stride[0], int(z.shape[-1]) * stride[1])
        return unpool_argmax(z, offsets, kernel, stride, padding, out_hw)

    def forward(
        self, v3: Tensor, unpool1_argmax: Tensor, unpool2_argmax: Tensor, unpool3_argmax: Tensor
    ) -> Tensor:
        """Arguments named as the encoder's outputs (:data:`VIDEO_OUTPUTS`)."""
        z = self._unpool(self.convtsp1(v3), unpool1_argmax, 0)
        z = self._unpool(self.convtsp2(z), unpool2_argmax, 1)
        z = self._unpool(self.convtsp3(z), unpool3_argmax, 2)
        return self.convtsp4(z).squeeze(2)  # [B,1,1,H,W] -> [B,1,H,W]


def check_config(config: Config) -> None:
    """TASED-Net's fixed shape: 32 frames, H and W multiples of 32, S3D at width 1."""
    v = config.video
    if v.clip_len != CLIP_LEN:
        raise ConfigError(f"tased: video.clip_len={v.clip_len}: TASED-Net takes {CLIP_LEN} frames")
    if v.height % 32 or v.width % 32:
        raise ConfigError(
            f"tased: frames {v.height}x{v.width}: height and width must be multiples of 32 "
            "(the official input is 224x384)"
        )
    if v.s3d_width != 1.0:
        raise ConfigError(f"tased: video.s3d_width={v.s3d_width}: the official S3D has width 1.0")


def build(config: Config, variant: str = FAMILY) -> OfficialStages:
    """TASED-Net's stages for ``config`` (see the module docstring)."""
    if family(variant).name != FAMILY:
        raise ConfigError(f"{variant!r} is not TASED-Net")
    check_config(config)
    return OfficialStages(video_encoder=TasedEncoder(), video_outputs=VIDEO_OUTPUTS, decoder=TasedDecoder())


def detect(state: Mapping[str, Tensor]) -> str | None:
    """``"tased"`` if ``state`` (``module.`` prefixes removed) looks like a TASED-Net state dict (it
    has every :data:`MARKERS` key with that shape), else None."""
    found = all(k in state and tuple(state[k].shape) == shape for k, shape in MARKERS.items())
    return FAMILY if found else None


def _rename(key: str) -> str | None:
    if key.startswith(_ENCODER_PREFIXES):
        return "video_encoder." + key
    if key.startswith(_DECODER_PREFIXES):
        return "fusion." + key
    return None


def _official(ours: str) -> str:
    return ours.split(".", 1)[1]


def expected_state(config: Config | None = None) -> dict[str, Tensor]:
    """Our stages' state dict keys/shapes (on "meta": no memory), ``video_encoder.*`` / ``fusion.*``."""
    from avsal_deploy.config import family_config

    with torch.device("meta"):
        stages = build(config or family_config(FAMILY), FAMILY)
    assert stages.decoder is not None
    out = {f"video_encoder.{k}": v for k, v in stages.video_encoder.state_dict().items()}
    out.update({f"fusion.{k}": v for k, v in stages.decoder.state_dict().items()})
    return out


def convert(state: Mapping[str, Tensor], variant: str = FAMILY) -> Converted:
    """The official TASED-Net state dict in our stage keys (strict: unknown, missing or misshapen
    keys raise :class:`~avsal_deploy.errors.WeightsError` naming them). Nothing is dropped: every
    official key is used."""
    if family(variant).name != FAMILY:
        raise ConfigError(f"{variant!r} is not TASED-Net")
    mapped = map_state(state, _rename, expected_state(), "TASED-Net checkpoint", _official)
    return Converted(state=mapped, dropped=[])
