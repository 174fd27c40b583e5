"""ViNet-S (Girmaji et al., ICASSP 2025), as released: ``VideoSaliencyModel`` of
github.com/ViNet-Saliency/vinet_v2 ``ViNet_S/ViNet_S_model.py`` in the build of its inference script
(``ViNet_S_inferences_metrics.py``: 32 frames, ``grouped_conv``, ``root_grouping``, no ``depth``
grouping, trilinear upsampling), or of its training script (bilinear upsampling with
``align_corners=True``: ``fusion.upsampling = "bilinear"``).

Encoder: the official ``BackBoneS3D`` is the Kinetics S3D written with 2-D max pools over
reshaped views (``BackBone_Maxpool_Base1`` reshapes to a fixed ``[-1, 1024, 112, 192]``, so the
official module only runs 32 x 224 x 384 clips); each of those pools equals the 3-D pool of our
:class:`~avsal_deploy.models.s3d.S3D` exactly (a max over a box is the max over its time extent
of the max over its space extent), with pool4 = (2,1,1) then k2/s2/p0: ``S3D(1.0,
pool4="public")``, layer for layer, same channels (192, 480, 832, 1024) and the same parameter
names below ``backbone.``. It returns the four block outputs, which the decoder all takes; ours
returns them high to low resolution (``v0`` = base1 .. ``v3`` = Mixed_5c), the reverse of the
official ``[y0, y1, y2, y3]``.

Decoder (``DecoderConvUpGrouped(root_grouping=True)``): grouped 3-D convolutions (groups 32, 16, 8,
4, 2) each followed by ReLU and a x2 spatial upsampling; between them the decoder concatenates the
next encoder output along TIME (``torch.cat(..., 2)``), then reduces time with the strided
temporal kernels (4+8 -> 4, 4+16 -> 4, 4+16 -> 4, 4 -> 2 -> 1). Output: a sigmoid map
[B, 1, H, W] (the official [B, H, W] with a channel axis). The upsampling, reproduced on a
``[B, C*T, H, W]`` view so that the graphs use 2-D Resize:

- ``trilinear`` (inference build): ``nn.Upsample(scale_factor=(1, 2, 2), mode="trilinear")``;
  time is not resampled (scale 1), so it is bilinear x2 with half-pixel centres per frame;
- ``bilinear`` (training build): the official ``Interpolate`` module, per frame bilinear to
  ``(2H, 2W)`` with ``align_corners=True``.

Shapes: 32 frames (the decoder's temporal kernels assume 4/8/16/16 frames), height and width
multiples of 32 (each upsampled map is concatenated with the next encoder output).

Official checkpoint keys: ``backbone.*`` -> ``video_encoder.*``, ``decoder.*`` -> ``fusion.*``
(same names below). The training script saves ``model.state_dict()`` (``model.module`` with
several GPUs: no ``module.`` prefix; one is removed if present).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsal_deploy.config import UPSAMPLINGS, Config, family
from avsal_deploy.errors import ConfigError
from avsal_deploy.models.official import Converted, OfficialStages
from avsal_deploy.models.official.checkpoint import map_state
from avsal_deploy.models.s3d import S3D

FAMILY = "vinet-s"
CLIP_LEN = 32
VIDEO_OUTPUTS: tuple[str, ...] = ("v0", "v1", "v2", "v3")
#: Keys (with these shapes) that mark a ViNet-S state dict (``module.`` removed): the S3D
#: backbone under ``backbone.`` and the root-grouped decoder convolutions 1024 -> 832 (groups 32)
#: and 832 -> 480 (groups 16); ViNet's ungrouped decoder has the same names with shapes
#: [832, 1024, 1, 3, 3] and [480, 832, 3, 3, 3].
MARKERS: dict[str, tuple[int, ...]] = {
    "backbone.base1.0.conv_s.weight": (64, 3, 1, 7, 7),
    "decoder.convtsp1.0.weight": (832, 32, 1, 3, 3),
    "decoder.convtsp2.0.weight": (480, 52, 3, 3, 3),
    "decoder.convtsp4.8.bias": (1,),
}


class Upsample2x(nn.Module):
    """x2 spatial upsampling of ``[B, C, T, H, W]`` per frame (see the module docstring)."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        if mode not in UPSAMPLINGS:
            raise ConfigError(f"fusion.upsampling={mode!r}: must be one of {', '.join(UPSAMPLINGS)}")
        self.mode = mode

    def forward(self, x: Tensor) -> Tensor:
        c, t, h, w = (int(n) for n in x.shape[1:])
        y = x.flatten(1, 2)  # [B, C*T, H, W]: every (channel, frame) plane on its own
        if self.mode == "trilinear":
            y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
        else:
            y = F.interpolate(y, size=(2 * h, 2 * w), mode="bilinear", align_corners=True)
        return y.unflatten(1, (c, t))


class GroupedUNetDecoder(nn.Module):
    """ViNet-S's ``DecoderConvUpGrouped`` (root grouping; module names as the official file's)."""

    def __init__(self, upsampling: str = "trilinear") -> None:
        super().__init__()

        def conv(cin: int, cout: int, kt: int, groups: int) -> nn.Conv3d:
            return nn.Conv3d(
                cin, cout, (kt, 3, 3), stride=(kt, 1, 1), padding=(0, 1, 1), bias=False, groups=groups
            )

        def up() -> Upsample2x:
            return Upsample2x(upsampling)

        self.upsampling = upsampling
        self.convtsp1 = nn.Sequential(conv(1024, 832, 1, 32), nn.ReLU(), up())
        self.convtsp2 = nn.Sequential(conv(832, 480, 3, 16), nn.ReLU(), up())
        self.convtsp3 = nn.Sequential(conv(480, 192, 5, 8), nn.ReLU(), up())
        self.convtsp4 = nn.Sequential(
            conv(192, 64, 5, 4),
            nn.ReLU(),
            up(),
            conv(64, 32, 2, 2),
            nn.ReLU(),
            up(),
            nn.Conv3d(32, 32, (2, 1, 1), stride=(2, 1, 1), bias=False),
            nn.ReLU(),
            nn.Conv3d(32, 1, 1, bias=True),
            nn.Sigmoid(),
        )

    def forward(self, v0: Tensor, v1: Tensor, v2: Tensor, v3: Tensor) -> Tensor:
        """``v0`` .. ``v3``: base1, Mixed_3c, Mixed_4f, Mixed_5c (our S3D's order)."""
        z = self.convtsp1(v3)
        z = self.convtsp2(torch.cat((z, v2), 2))  # concatenated along time
        z = self.convtsp3(torch.cat((z, v1), 2))
        z = self.convtsp4(torch.cat((z, v0), 2))
        return z.squeeze(2)  # [B,1,1,H,W] -> [B,1,H,W]


def check_config(config: Config) -> None:
    """ViNet-S's fixed shape: 32 frames, H and W multiples of 32, S3D at width 1."""
    v = config.video
    if v.clip_len != CLIP_LEN:
        raise ConfigError(f"vinet-s: video.clip_len={v.clip_len}: ViNet-S takes {CLIP_LEN} frames")
    if v.height % 32 or v.width % 32:
        raise ConfigError(
            f"vinet-s: frames {v.height}x{v.width}: height and width must be multiples of 32 "
            "(the official input is 224x384)"
        )
    if v.s3d_width != 1.0:
        raise ConfigError(f"vinet-s: video.s3d_width={v.s3d_width}: the official S3D has width 1.0")


def build(config: Config, variant: str = FAMILY) -> OfficialStages:
    """ViNet-S's stages for ``config`` (``config.fusion.upsampling`` picks the build)."""
    if family(variant).name != FAMILY:
        raise ConfigError(f"{variant!r} is not ViNet-S")
    check_config(config)
    return OfficialStages(
        video_encoder=S3D(1.0, pool4="public"),
        video_outputs=VIDEO_OUTPUTS,
        decoder=GroupedUNetDecoder(config.fusion.upsampling),
    )


def detect(state: Mapping[str, Tensor]) -> str | None:
    """``"vinet-s"`` if ``state`` (``module.`` prefixes removed) looks like a ViNet-S state dict (it
    has every :data:`MARKERS` key with that shape), else None. (The upsampling build is not in the
    weights.)"""
    found = all(k in state and tuple(state[k].shape) == shape for k, shape in MARKERS.items())
    return FAMILY if found else None


def _rename(key: str) -> str | None:
    if key.startswith("backbone."):
        return "video_encoder." + key[len("backbone.") :]
    if key.startswith("decoder."):
        return "fusion." + key[len("decoder.") :]
    return None


def _official(ours: str) -> str:
    stage, rest = ours.split(".", 1)
    return ("backbone." if stage == "video_encoder" else "decoder.") + rest


def expected_state(config: Config | None = None) -> dict[str, Tensor]:
    """Our stages' state dict keys/shapes (on "meta"), ``video_encoder.*`` / ``fusion.*``."""
    from avsal_deploy.config import family_config

    with torch.device("meta"):
        stages = build(config or family_config(FAMILY), FAMILY)
    assert stages.decoder is not None
    out = {f"video_encoder.{k}": v for k, v in stages.video_encoder.state_dict().items()}
    out.update({f"fusion.{k}": v for k, v in stages.decoder.state_dict().items()})
    return out


def convert(state: Mapping[str, Tensor], variant: str = FAMILY) -> Converted:
    """The official ViNet-S state dict in our stage keys (strict: unknown, missing or misshapen
    keys raise :class:`~avsal_deploy.errors.WeightsError` naming them). Nothing is dropped. Both
    upsampling builds have the same weights: the build is the config's ``fusion.upsampling``."""
    if family(variant).name != FAMILY:
        raise ConfigError(f"{variant!r} is not ViNet-S")
    mapped = map_state(state, _rename, expected_state(), "ViNet-S checkpoint", _official)
    return Converted(state=mapped, dropped=[])
