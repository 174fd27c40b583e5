"""ViNet and AViNet (Jain et al., IROS 2021) as released in github.com/samyak0210/ViNet.

Reproduced from the official ``model.py`` / ``model_utils.py`` (commit 2a52666), in the variant the
released inference scripts build (``generate_result.py``, ``generate_result_audio_visual.py``
with their default arguments: ``decoder_upsample=1``, ``num_hier=3``, ``clip_size=32``; AViNet's
``use_transformer`` left at its default ``False``):

``vinet``: ``VideoSaliencyModel`` = ``BackBoneS3D`` + ``DecoderConvUp``.
``avinet``: ``VideoAudioSaliencyModel`` = the same S3D and decoder (``visual_model``), SoundNet-8
(``audionet``) and the bilinear fusion: the S3D's deepest output ``y0`` [B,1024,4,7,12] is max
pooled (kernel (4,1,1), stride (2,1,2)) to [B,1024,1,7,6], each channel's 42 positions and the
audio's 3 conv7 frames ``a`` [B,1024,3] enter ``torch.nn.Bilinear(42, 3, 336)`` *per channel*
(``out[b,c,k] = sum_ij y[b,c,i] W[k,i,j] a[b,c,j] + bias[k]``), and the 336 outputs are reshaped
to [B,1024,4,7,12] in place of ``y0`` for the decoder. (``model.py`` imports ``block.fusions``
but no released class uses it: the fusion is ``torch.nn.Bilinear``.)

Not covered (their keys are refused as unknown): ``num_hier`` 0-2 and ``num_clips`` 8/16/48 (other
decoder classes), ``use_upsample=False`` (``DecoderConvT``, not even defined in ``model.py``),
AViNet with ``use_transformer=True`` and ``VideoAudioSaliencyFusionModel``.

Stages (see :mod:`avsal_deploy.models.official`):

- ``video_encoder``: our :class:`~avsal_deploy.models.s3d.S3D` at width 1.0 with
  ``pool4="public"`` (``maxp4`` k2/s2/p0 as ``BackBoneS3D``); every other layer is the same
  (BN eps 1e-3, SepConv3d, Mixed blocks, pools). It returns ``v0..v3`` = the official
  ``[y3, y2, y1, y0]`` (ours high -> low resolution, theirs low -> high).
- ``audio_encoder`` (``avinet``): our :class:`~avsal_deploy.models.audio.SoundNet8` (layer for
  layer the official ``SoundNet``: conv1..conv7 with BN eps 1e-5, pools 8/8/4, ReLU), output
  [B,1024,3,1,1] for the official [B,1,70560,1] input. The conv8 heads are never used by the
  official forward: their keys are accepted and dropped.
- ``decoder`` (exported as ``fusion``): :class:`ViNetDecoder` (``DecoderConvUp``), preceded for
  ``avinet`` by the pool + bilinear fusion (:class:`AViNetDecoder`); the output is the official
  map ``[B,H,W]`` as ``[B,1,H,W]`` (sigmoid, in [0, 1]).

Input sizes: 32 frames (the decoder's temporal strides reduce exactly 32 frames to one map);
ViNet takes any height and width that are multiples of 32 (the map has the frame's size);
AViNet only 224x384 (the bilinear fusion's 42 positions and 336 outputs are those of 224x384),
with audio of 70,560 samples (3 SoundNet frames).

Official key markers (:func:`detect`): ``vinet`` has ``backbone.*`` and
``decoder.convtsp{1..4}.*`` at the top level with ``decoder.convtsp1.0.weight`` of shape
[832, 1024, 1, 3, 3] (ViNet-S's grouped decoder has the same names at other shapes); ``avinet``
has ``visual_model.backbone.*``, ``visual_model.decoder.*``, ``audionet.*`` and
``bilinear.weight`` [336, 42, 3].
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from avsal_deploy.config import Config
from avsal_deploy.errors import ConfigError, WeightsError
from avsal_deploy.models.audio import SOUNDNET_LAYERS, SoundNet8, soundnet_output_frames
from avsal_deploy.models.official import Converted, OfficialStages
from avsal_deploy.models.s3d import S3D

#: The official repository and the commit this module reproduces.
OFFICIAL_SOURCE = "github.com/samyak0210/ViNet@2a52666"
VARIANTS: tuple[str, ...] = ("vinet", "avinet")
CLIP_LEN = 32  # DecoderConvUp's temporal strides (3, 5, 5, 2, 2) fit exactly 32 frames
AVINET_HW = (224, 384)  # nn.Bilinear(42, 3, 4*7*12): the S3D grid of 224x384 frames
AVINET_AUDIO_FRAMES = 3  # SoundNet conv7 frames of the 70,560-sample buffer (Bilinear's in2)
VIDEO_OUTPUTS = ("v0", "v1", "v2", "v3")

# Decoder convolutions, in the official order: (ours, official DecoderConvUp submodule,
# in, out, kernel (t, h, w), temporal stride, padding (t, h, w), bias).
_DECODER_CONVS: tuple[
    tuple[str, str, int, int, tuple[int, int, int], int, tuple[int, int, int], bool], ...
] = (
    ("up1", "convtsp1.0", 1024, 832, (1, 3, 3), 1, (0, 1, 1), False),
    ("up2", "convtsp2.0", 832, 480, (3, 3, 3), 3, (0, 1, 1), False),
    ("up3", "convtsp3.0", 480, 192, (5, 3, 3), 5, (0, 1, 1), False),
    ("up4", "convtsp4.0", 192, 64, (5, 3, 3), 5, (0, 1, 1), False),
    ("up5", "convtsp4.3", 64, 32, (2, 3, 3), 2, (0, 1, 1), False),
    ("time", "convtsp4.6", 32, 32, (2, 1, 1), 2, (0, 0, 0), False),
    ("head", "convtsp4.8", 32, 1, (1, 1, 1), 1, (0, 0, 0), True),
)
_BN_SUFFIXES = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
_MAX_NAMED = 5  # keys named per category in an error message
_COUNTER = "num_batches_tracked"


def upsample_hw(x: Tensor) -> Tensor:
    """``nn.Upsample(scale_factor=(1, 2, 2), mode="trilinear")`` of [B,C,T,H,W], as a bilinear 2x
    resize of every frame (``align_corners=False``; a time scale of 1 interpolates nothing), on a
    4-D tensor so every engine's Resize takes it."""
    c, t, h, w = x.shape[1], x.shape[2], x.shape[3], x.shape[4]
    y = F.interpolate(x.reshape(-1, c * t, h, w), scale_factor=2.0, mode="bilinear", align_corners=False)
    return y.reshape(-1, c, t, 2 * h, 2 * w)


class ViNetDecoder(nn.Module):
    """ViNet's hierarchical decoder (``DecoderConvUp``): from the deepest S3D feature, each stage
    convolves (ReLU), upsamples 2x in space and concatenates the next shallower S3D feature along
    TIME; strided temporal convolutions fold time back (4 -> 1 frame); sigmoid map.

    ``forward(v0, v1, v2, v3)`` takes the S3D outputs high -> low resolution (the official
    ``y3, y2, y1, y0``) and returns [B,1,H,W].
    """

    def __init__(self) -> None:
        super().__init__()
        for name, _, cin, cout, k, st, pad, bias in _DECODER_CONVS:
            self.add_module(name, nn.Conv3d(cin, cout, k, stride=(st, 1, 1), padding=pad, bias=bias))

    def forward(self, v0: Tensor, v1: Tensor, v2: Tensor, v3: Tensor) -> Tensor:
        z = upsample_hw(F.relu(self.up1(v3)))
        z = upsample_hw(F.relu(self.up2(torch.cat((z, v2), 2))))
        z = upsample_hw(F.relu(self.up3(torch.cat((z, v1), 2))))
        z = upsample_hw(F.relu(self.up4(torch.cat((z, v0), 2))))
        z = upsample_hw(F.relu(self.up5(z)))
        z = torch.sigmoid(self.head(F.relu(self.time(z))))  # [B, 1, 1, H, W]
        return z.flatten(1, 2)


class PositionBilinear(nn.Module):
    """``torch.nn.Bilinear(in1, in2, out)`` applied to the last axis of [B,C,in1] and [B,C,in2]
    (same weight and bias layout), as an outer product and one matmul (no einsum)."""

    def __init__(self, in1: int, in2: int, out: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out, in1, in2))
        self.bias = nn.Parameter(torch.empty(out))
        nn.init.uniform_(self.weight, -(in1**-0.5), in1**-0.5)  # as nn.Bilinear (values are loaded)
        nn.init.uniform_(self.bias, -(in1**-0.5), in1**-0.5)

    def forward(self, x1: Tensor, x2: Tensor) -> Tensor:
        c, p, q = x1.shape[1], x1.shape[2], x2.shape[2]
        outer = (x1.unsqueeze(3) * x2.unsqueeze(2)).reshape(-1, c, p * q)  # index i * q + j
        return torch.matmul(outer, self.weight.reshape(-1, p * q).t()) + self.bias


class AViNetDecoder(nn.Module):
    """AViNet's fusion + decoder: pool the deepest S3D feature, fuse it with the SoundNet features by
    the per-channel bilinear map, decode as ViNet. ``forward(v0, v1, v2, v3, audio_feat)`` with
    ``audio_feat`` [B,1024,3,1,1] (our SoundNet-8 output); returns [B,1,224,384]."""

    def __init__(self, video_thw: tuple[int, int, int] = (4, 7, 12)) -> None:
        super().__init__()
        self.video_thw = video_thw
        self.pool = nn.MaxPool3d((4, 1, 1), stride=(2, 1, 2))
        t, h, w = video_thw
        pooled = ((t - 4) // 2 + 1) * h * ((w - 1) // 2 + 1)  # 1 * 7 * 6 = 42 at 224x384
        self.bilinear = PositionBilinear(pooled, AVINET_AUDIO_FRAMES, t * h * w)
        self.decoder = ViNetDecoder()

    def forward(self, v0: Tensor, v1: Tensor, v2: Tensor, v3: Tensor, audio_feat: Tensor) -> Tensor:
        c = v3.shape[1]
        t, h, w = self.video_thw
        video = self.pool(v3).flatten(2)  # [B, C, 42]
        audio = audio_feat.flatten(2)  # [B, C, 3]
        fused = self.bilinear(video, audio).reshape(-1, c, t, h, w)
        return self.decoder(v0, v1, v2, fused)


# --------------------------------------------------------------------------- build
def _check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ConfigError(
            f"{variant!r} is not built by the ViNet module (choose one of {', '.join(VARIANTS)})"
        )


def check_input_size(config: Config, variant: str) -> None:
    """ConfigError unless ``config``'s clip (and audio buffer) fits the official network."""
    _check_variant(variant)
    v = config.video
    if v.s3d_width != 1.0:
        raise ConfigError(f"{variant}: video.s3d_width={v.s3d_width}: the official S3D has width 1.0")
    if v.clip_len != CLIP_LEN:
        raise ConfigError(
            f"{variant}: video.clip_len={v.clip_len}: the official decoder takes exactly 32 frames"
        )
    if variant == "vinet" and (v.height % 32 or v.width % 32):
        raise ConfigError(f"vinet: frames {v.height}x{v.width}: height and width must be multiples of 32")
    if variant == "avinet":
        if (v.height, v.width) != AVINET_HW:
            raise ConfigError(
                f"avinet: frames {v.height}x{v.width}: the official bilinear fusion takes 224x384 only"
            )
        if config.audio.soundnet_width != 1.0:
            raise ConfigError(f"avinet: audio.soundnet_width={config.audio.soundnet_width}: official is 1.0")
        frames = soundnet_output_frames(config.soundnet_samples())
        if frames != AVINET_AUDIO_FRAMES:
            raise ConfigError(
                f"avinet: an audio buffer of {config.soundnet_samples()} samples gives {frames} SoundNet "
                f"frames; the official bilinear fusion takes 3 (70,560 samples)"
            )


def build(config: Config, variant: str) -> OfficialStages:
    """The stages of ``vinet`` or ``avinet`` for ``config`` (see the module docstring)."""
    check_input_size(config, variant)
    video = S3D(1.0, pool4="public")
    if variant == "vinet":
        return OfficialStages(video, VIDEO_OUTPUTS, decoder=ViNetDecoder())
    return OfficialStages(video, VIDEO_OUTPUTS, audio_encoder=SoundNet8(1.0), decoder=AViNetDecoder())


# --------------------------------------------------------------------------- official layout
@functools.lru_cache(maxsize=4)
def _official_names(variant: str) -> dict[str, str]:
    """Our stage key -> the official key, for every tensor of our stages (official order)."""
    _check_variant(variant)
    visual = "" if variant == "vinet" else "visual_model."
    decoder = "fusion." if variant == "vinet" else "fusion.decoder."
    names: dict[str, str] = {}
    with torch.device("meta"):
        video_keys = list(S3D(1.0, pool4="public").state_dict())
    for key in video_keys:
        names[f"video_encoder.{key}"] = f"{visual}backbone.{key}"
    for ours, theirs, *_, bias in _DECODER_CONVS:
        names[f"{decoder}{ours}.weight"] = f"{visual}decoder.{theirs}.weight"
        if bias:
            names[f"{decoder}{ours}.bias"] = f"{visual}decoder.{theirs}.bias"
    if variant == "avinet":
        for i in range(1, len(SOUNDNET_LAYERS) + 1):
            for p in ("weight", "bias"):
                names[f"audio_encoder.conv{i}.0.{p}"] = f"audionet.conv{i}.{p}"
            for p in _BN_SUFFIXES:
                names[f"audio_encoder.conv{i}.1.{p}"] = f"audionet.batchnorm{i}.{p}"
        names["fusion.bilinear.weight"] = "bilinear.weight"
        names["fusion.bilinear.bias"] = "bilinear.bias"
    return names


#: Official keys the official forward never uses (accepted by :func:`convert` and dropped), with
#: their shapes: SoundNet's object and scene classification heads.
DROPPED: dict[str, dict[str, tuple[int, ...]]] = {
    "vinet": {},
    "avinet": {
        "audionet.conv8_objs.weight": (1000, 1024, 8, 1),
        "audionet.conv8_objs.bias": (1000,),
        "audionet.conv8_scns.weight": (401, 1024, 8, 1),
        "audionet.conv8_scns.bias": (401,),
    },
}


@functools.lru_cache(maxsize=4)
def _stage_shapes(variant: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Our stage key -> (shape, dtype), built on the meta device (no memory, no init cost)."""
    with torch.device("meta"):
        modules: dict[str, nn.Module] = {"video_encoder": S3D(1.0, pool4="public")}
        if variant == "vinet":
            modules["fusion"] = ViNetDecoder()
        else:
            modules["audio_encoder"] = SoundNet8(1.0)
            modules["fusion"] = AViNetDecoder()
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for stage, module in modules.items():
        for key, tensor in module.state_dict().items():
            out[f"{stage}.{key}"] = (tuple(tensor.shape), tensor.dtype)
    return out


def official_layout(variant: str, *, with_dropped: bool = True) -> list[tuple[str, tuple[int, ...], str]]:
    """The official state dict's (key, shape, dtype) rows in the official module's order: what
    ``torch.save(model.state_dict())`` of the official ``variant`` holds (``with_dropped``: also
    the keys the forward never uses, which a saved AViNet has)."""
    names = _official_names(variant)
    shapes = _stage_shapes(variant)
    rows = [
        (theirs, shapes[ours][0], str(shapes[ours][1]).replace("torch.", ""))
        for ours, theirs in names.items()
    ]
    if with_dropped:
        dropped = DROPPED[variant]
        # the official SoundNet registers conv8_* after batchnorm7, before the bilinear fusion
        at = next((i for i, r in enumerate(rows) if r[0].startswith("bilinear.")), len(rows))
        rows[at:at] = [(k, s, "float32") for k, s in dropped.items()]
    order = {"backbone": 0, "decoder": 1, "audionet": 2, "bilinear": 3}

    def rank(name: str) -> int:
        parts = name.split(".")
        return order[parts[1] if parts[0] == "visual_model" else parts[0]]

    return sorted(rows, key=lambda r: rank(r[0]))  # stable: keeps each module's own order


# --------------------------------------------------------------------------- convert
def _named(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMED])
    return shown + (f" (+{len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else "")


def convert(state: Mapping[str, Tensor], variant: str) -> Converted:
    """The official ``variant`` state dict (``module.`` prefixes already stripped) in our stage keys.

    Strict: a key that is neither in the official layout nor one the official forward never uses
    (:data:`DROPPED`) is unknown; a layout key that is absent is missing; a tensor of another shape
    is misshapen. Any of these raises one :class:`WeightsError` line that names the first few of
    each and their count. Floating tensors are returned as float32, BatchNorm counters as int64;
    the counters alone may be absent (they never change an inference: set to 0).
    """
    names = _official_names(variant)
    shapes = _stage_shapes(variant)
    dropped_layout = DROPPED[variant]
    by_official = {theirs: ours for ours, theirs in names.items()}
    unknown = [k for k in state if k not in by_official and k not in dropped_layout]
    missing = [k for k in by_official if k not in state and not k.endswith(_COUNTER)]
    misshapen: list[str] = []
    for key, tensor in state.items():
        expected = shapes[by_official[key]][0] if key in by_official else dropped_layout.get(key)
        if expected is not None and tuple(tensor.shape) != tuple(expected):
            misshapen.append(f"{key} {list(tensor.shape)} (expected {list(expected)})")
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown key(s): {_named(unknown)}")
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_named(missing)}")
    if misshapen:
        problems.append(f"{len(misshapen)} misshapen key(s): {_named(misshapen)}")
    if problems:
        detected = detect(state)
        hint = f" (its layout is that of {detected})" if detected not in (None, variant) else ""
        raise WeightsError(f"not an official {variant} state dict{hint}: " + "; ".join(problems))
    out: dict[str, Tensor] = {}
    for theirs, ours in by_official.items():
        shape, dtype = shapes[ours]
        if theirs not in state:  # a BatchNorm counter (files older than PyTorch 0.4.1 lack them)
            out[ours] = torch.zeros(shape, dtype=dtype)
            continue
        out[ours] = state[theirs].detach().to(dtype).contiguous()
    dropped = [k for k in state if k in dropped_layout]
    return Converted(out, dropped)


def detect(state: Mapping[str, Tensor]) -> str | None:
    """``"vinet"`` or ``"avinet"`` when ``state`` has that official layout's keys at its shapes
    (the AViNet heads and the BatchNorm counters optional), else None (other families are detected by their own modules)."""
    for variant in VARIANTS:
        layout = official_layout(variant, with_dropped=False)
        required = {name: shape for name, shape, _ in layout if not name.endswith(_COUNTER)}
        optional = {name: shape for name, shape, _ in layout if name.endswith(_COUNTER)}
        optional.update(DROPPED[variant])
        if set(required) <= set(state) and set(state) <= set(required) | set(optional):
            expected = {**required, **optional}
            if all(tuple(state[k].shape) == tuple(expected[k]) for k in state):
                return variant
    return None
