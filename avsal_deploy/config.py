"""One typed configuration for the whole product.

A :class:`Config` is built from a named profile (``paper``, ``small``, ``tiny``), optionally read
from a TOML/JSON file, and overridden field by field. Training, export, the Triton repository and
the benchmarks all read it; every tensor shape downstream is *derived* from it here (see
:meth:`Config.clip_len`, :meth:`Config.video_scales`, :meth:`Config.audio_input_shape`), never
re-typed by hand.

Overrides use dotted keys (``{"video.height": 128}``), double-underscore keyword arguments
(``load_config("tiny", video__height=128)``) or whole sections
(``load_config("tiny", video={"height": 128})``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import tomllib

from avsal_deploy.errors import ConfigError

Variant = Literal["avrsp", "diffsal", "hybrid"]
#: This project's own model families (trainable with ``avsal train``).
VARIANTS: tuple[str, ...] = ("avrsp", "diffsal", "hybrid")
# Saliency-UNet cross-attention (models.unet.SpatioTemporalCrossAttention): "eca" = DiffSal's
# per-frame attention over space with (1, k, k) key/value compression (paper eq. 7-8, official
# code); "standard" = the same per-frame attention uncompressed (Table 4's baseline); "eca3d" = the
# legacy (k_t, k, k) compression over all T+1 frames at once (the shipped checkpoint's form).
AttentionMode = Literal["eca", "standard", "eca3d"]
ATTENTION_MODES: tuple[str, ...] = ("eca", "standard", "eca3d")
PROFILES: tuple[str, ...] = ("paper", "small", "tiny")
TEMPORAL_REDUCTIONS: tuple[str, ...] = ("conv", "mean")
#: ViNet-S decoder upsampling builds (FusionConfig.upsampling).
UPSAMPLINGS: tuple[str, ...] = ("trilinear", "bilinear")

# S3D (Xie et al. 2018) channel widths after its four encoder blocks, at width multiplier 1.0:
# block 1 = SepConv 64->192, block 2 = Mixed_3c, block 3 = Mixed_4f, block 4 = Mixed_5c.
S3D_SCALE_CHANNELS: tuple[int, int, int, int] = (192, 480, 832, 1024)
# (temporal, spatial) stride-2 steps before each of those four blocks' outputs, cumulative:
# block 1 sees conv1 (2, 2) + pool1 (1, 2); block 2 pool2 (1, 2); block 3 pool3 (2, 2);
# block 4 pool4 (2, 2). Every spatial step is a k3/s2/p1 pool or k7/s2/p3 conv, so it rounds UP.
S3D_STEPS: tuple[tuple[int, int], ...] = ((1, 2), (0, 1), (1, 1), (1, 1))
# MViTv2-S (DiffSal's backbone, models.mvit) stage widths; its stage outputs sit at T/2 and at
# ceil(H/4), /8, /16, /32 (a k7/s4/p3 patch embedding, then k3/s2/p1 q pooling: all round up).
MVIT_STAGE_CHANNELS: tuple[int, int, int, int] = (96, 192, 384, 768)
DiffSalBackbone = Literal["s3d", "mvit_v2_s"]
DIFFSAL_BACKBONES: tuple[str, ...] = ("s3d", "mvit_v2_s")
FrameResize = Literal["antialias", "pil", "cv2"]
FRAME_RESIZES: tuple[str, ...] = ("antialias", "pil", "cv2")
SoundNetFraming = Literal["avsal", "vinet"]
SOUNDNET_FRAMINGS: tuple[str, ...] = ("avsal", "vinet")


def ceil_halve(n: int, times: int) -> int:
    """Size after ``times`` stride-2 steps that round up (k3/s2/p1 pools, k7/s2/p3 convs)."""
    for _ in range(times):
        n = (n + 1) // 2
    return n


def scaled(channels: int, mult: float, divisor: int = 4) -> int:
    """Channel count ``channels * mult`` rounded to a multiple of ``divisor`` (at least ``divisor``)."""
    return max(divisor, int(round(channels * mult / divisor)) * divisor)


@dataclass(frozen=True)
class VideoConfig:
    height: int = 224
    width: int = 384
    clip_len: int = 32  # AVRSP / hybrid window (frames)
    diffsal_clip_len: int = 16  # DiffSal window (frames)
    # Normalisation after scaling uint8 frames to [0, 1] (ImageNet statistics, as ViNet/AViNet).
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    # How frames are resized to (height, width) (data.preprocess.preprocess_frames): "antialias" =
    # antialiased bilinear on the float frame (ours); "pil" = Pillow's BILINEAR resize of the 8-bit
    # frame, rounded to 8 bits after each pass, then /255 (torchvision's Resize + ToTensor on a PIL
    # image: the ViNet, AViNet, ViNet-S and DiffSal loaders); "cv2" = OpenCV's INTER_LINEAR on the
    # 8-bit frame (TASED-Net's run_example.py). They differ by at most about half a grey level.
    resize: FrameResize = "antialias"
    # (height, width) of a first resize before the one to (height, width): Pillow's bicubic (its
    # default filter), then its bilinear; needs resize = "pil". () = none. The official DiffSal
    # audio-visual loader's pil_loader (320x240) followed by its Scale (384x224).
    pre_resize: tuple[int, ...] = ()
    s3d_width: float = 1.0  # channel multiplier of S3D; 1.0 loads the public Kinetics checkpoints
    # Video encoder of the diffsal variant: "mvit_v2_s" as in the paper (MViTv2-S, Kinetics-400
    # 16x4x1 weights in torchvision's layout) or "s3d" (the AVRSP/hybrid encoder: cheaper, and the
    # small/tiny profiles' setting). avrsp and hybrid always use S3D.
    diffsal_backbone: DiffSalBackbone = "mvit_v2_s"


@dataclass(frozen=True)
class AudioConfig:
    # SoundNet-8 on the raw waveform (AVRSP, hybrid). The clip's excerpt is Hanning-windowed and
    # centred in a zero buffer of int(rate / buffer_fps * clip_len) samples (ViNet convention).
    soundnet_rate: int = 22050
    soundnet_buffer_fps: float = 10.0
    soundnet_scale: float = 256.0  # legacy SoundNet input range about [-256, 256]
    soundnet_width: float = 1.0  # 1.0 loads the public soundnet8 port
    # Sample arithmetic of the excerpt (data.audio.soundnet_excerpt): "avsal" (ours) or "vinet"
    # (AViNet's loader exactly: frame k at k * (1.0 / fps) seconds, a time-reversed window's buffer
    # flipped whole after centring; they differ by a sample at most).
    soundnet_framing: SoundNetFraming = "avsal"
    # VGGish on log-mel slices (DiffSal).
    vggish_rate: int = 16000
    n_mels: int = 64
    win_ms: float = 25.0
    hop_ms: float = 10.0
    fmin: float = 125.0
    fmax: float = 7500.0
    log_offset: float = 0.01
    vggish_slices: int = 9  # slices per DiffSal window
    # How the slices are cut (data.audio.vggish_slices): "examples" = VGGish's own 0.96 s examples
    # (vggish_example_frames log-mel frames x n_mels, as VGGish was trained) in the official
    # arrangement (consecutive examples vggish_example_hop frames apart, centred on the window's
    # excerpt in a zero buffer); "window" = the window's excerpt cut into equal slices (small/tiny
    # profiles and checkpoints written before this setting existed).
    vggish_framing: Literal["examples", "window"] = "examples"
    vggish_example_frames: int = 96  # 0.96 s at the 10 ms hop (VGGish's NUM_FRAMES)
    vggish_example_hop: int = 11  # frames between consecutive slices (the official 0.11 s)
    # Model input per slice; a slice of another size is resized (bilinear) to it. "examples" at
    # 96x64 feeds VGGish as trained; 112x192 is the official code's resize (the paper's FLOP input).
    vggish_slice_height: int = 96
    vggish_slice_width: int = 64
    vggish_width: float = 1.0  # 1.0 loads the public torchvggish port
    transformer_layers: int = 1
    transformer_heads: int = 8
    # Per-frame audio envelope (the input of the fusion decoder's audio-visual synchrony module,
    # fusion.av_sync): for every frame of a window, the log energies of its own audio span (1/fps
    # seconds, resampled to vggish_rate) in envelope_bands mel bands between fmin and fmax, plus
    # its log loudness. Digital silence gives exactly zero.
    envelope_bands: int = 8


@dataclass(frozen=True)
class FusionConfig:
    # Channels of the four scales after ASPP + LIP (high resolution -> low resolution).
    channels: tuple[int, int, int, int] = (64, 128, 192, 256)
    ravf_blocks: int = 2
    ravf_heads: int = 8
    ffn_mult: int = 2
    aspp_rates: tuple[int, ...] = (1, 2, 3)
    # Audio-visual synchrony (our extension, off in the paper profile): a time-aligned, softmax-free
    # relevance gate at scale ``sync_scale`` that retains the per-frame audio envelope where the
    # visual features vary in step with it (models.fusion.AudioVisualSync). RAVF meets the audio
    # only at the coarsest scale (T/8 frames), too coarse in time to tell which of several objects
    # pulses with the sound when the encoders are trained from scratch.
    av_sync: bool = False
    sync_scale: int = 1
    sync_heads: int = 2
    # How the saliency decoder reduces time to the target frame (models.fusion.SaliencyDecoder):
    # "conv" -- per block, a learned valid temporal conv over the scale's whole window anchored at
    # the target frame's time slot (AVRSP Sec. III-D / ViNet's learned reduction); "mean" -- the
    # earlier plain temporal mean before the head (checkpoints that predate the field, see
    # LEGACY_DEFAULTS).
    temporal_reduction: Literal["conv", "mean"] = "conv"
    # Audio-visual binding (our extension; on in the small and tiny profiles, off in the paper's;
    # the audio-binding grid, training/grids/audio-binding.toml, measured it): a parameter-free map
    # of where each position's luminance correlates over the window with the per-frame audio
    # loudness (best of lags 0..binding_lags frames, the sound trailing the picture), plus where the
    # luminance varies at all, projected and added to fusion scale ``binding_scale``
    # (models.binding). Takes the window's frames and the envelope as extra fusion inputs.
    binding: bool = False
    binding_scale: int = 0
    binding_lags: int = 2
    # Direct read-out of the binding map into the one-shot map (needs ``binding``): the
    # correlation and spread at full map resolution, beside the decoder's logits, through a small
    # zero-initialised conv stack added to those logits (models.binding.BindingReadout).
    binding_readout: bool = False
    # The x2 spatial upsampling of ViNet-S's grouped U-Net decoder (models.official.vinet_s):
    # "trilinear" = its inference script's build (nn.Upsample, scale (1, 2, 2), half-pixel
    # centres); "bilinear" = its training script's build (per-frame bilinear, align_corners=True).
    # The same weights give maps up to ~0.6 apart; the family "vinet-s" means the inference build.
    upsampling: Literal["trilinear", "bilinear"] = "trilinear"


@dataclass(frozen=True)
class UNetConfig:
    channels: tuple[int, int, int, int] = (64, 128, 192, 256)
    # Widths of the diffsal variant's UNet; () = ``channels``. The paper's: those of its MViTv2-S
    # conditions (official SalUNet up_channel 768/384/192/96).
    diffsal_channels: tuple[int, ...] = (96, 192, 384, 768)
    heads: int = 4
    time_dim: int = 256
    res_blocks: int = 1  # ResNet blocks per noise-encoder stage
    attention: AttentionMode = "eca"  # see ATTENTION_MODES (replaces the bool efficient_attention)
    # hybrid only (our extension): the UNet also takes the fusion decoder's one-shot map
    # as a second input channel beside x_t (conditioning by concatenation), so the diffusion refines
    # the decoder's map instead of re-deriving it from c0..c3. On in small and tiny, off in paper.
    oneshot_condition: bool = False


@dataclass(frozen=True)
class DiffusionConfig:
    timesteps: int = 1000
    cosine_s: float = 0.008
    max_beta: float = 0.999
    sampling_steps: int = 4  # paper: 4; released DiffSal config: 1; 0 on hybrid = one-shot map
    dequant_sigma: float = 0.01
    # Clamp every x0 estimate to [0, 1] inside the DDIM loop (ours); the released DiffSal sampler
    # clamps only the final map (diffusion.ddim_sample's clip_x0).
    clip_x0: bool = True


@dataclass(frozen=True)
class WindowConfig:
    stride: int = 1
    mode: Literal["causal", "centre"] = "causal"  # causal: predicts the LAST frame (AVRSP)


@dataclass(frozen=True)
class ScaleShape:
    """Shape of one multi-scale feature, batch excluded: [channels, frames, height, width]."""

    channels: int
    frames: int
    height: int
    width: int

    def as_tuple(self) -> tuple[int, int, int, int]:
        return (self.channels, self.frames, self.height, self.width)


@dataclass(frozen=True)
class Config:
    profile: str = "paper"
    video: VideoConfig = field(default_factory=VideoConfig)
    audio: AudioConfig = field(default_factory=AudioConfig)
    fusion: FusionConfig = field(default_factory=FusionConfig)
    unet: UNetConfig = field(default_factory=UNetConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    window: WindowConfig = field(default_factory=WindowConfig)

    def __post_init__(self) -> None:
        v = self.video
        for name, n in (("clip_len", v.clip_len), ("diffsal_clip_len", v.diffsal_clip_len)):
            if n < 8 or n % 8:
                raise ConfigError(f"video.{name}={n}: must be a positive multiple of 8 (S3D strides)")
        for name, n in (("height", v.height), ("width", v.width)):
            if n < 32 or n % 16:
                raise ConfigError(f"video.{name}={n}: must be a multiple of 16, at least 32")
        if self.fusion.channels[-1] % self.fusion.ravf_heads:
            raise ConfigError("fusion.channels[-1] must be divisible by fusion.ravf_heads")
        if v.diffsal_backbone not in DIFFSAL_BACKBONES:
            raise ConfigError(
                f"video.diffsal_backbone={v.diffsal_backbone!r}: choose one of {', '.join(DIFFSAL_BACKBONES)}"
            )
        if v.pre_resize:
            if len(v.pre_resize) != 2 or any(int(n) < 1 for n in v.pre_resize):
                raise ConfigError(f"video.pre_resize={v.pre_resize}: give (height, width) or ()")
            if v.resize != "pil":
                raise ConfigError("video.pre_resize needs video.resize = 'pil' (Pillow's bicubic first pass)")
        if len(self.unet.diffsal_channels) not in (0, 4):
            raise ConfigError(f"unet.diffsal_channels={self.unet.diffsal_channels}: give 4 widths or none")
        if self.window.stride < 1:
            raise ConfigError(f"window.stride={self.window.stride}: must be >= 1")
        if self.window.mode not in ("causal", "centre"):
            raise ConfigError(f"window.mode={self.window.mode!r}: must be 'causal' or 'centre'")
        if self.diffusion.sampling_steps < 0:
            raise ConfigError("diffusion.sampling_steps must be >= 0")
        if self.unet.attention not in ATTENTION_MODES:
            raise ConfigError(
                f"unet.attention={self.unet.attention!r}: choose one of {', '.join(ATTENTION_MODES)}"
            )
        if v.resize not in FRAME_RESIZES:
            raise ConfigError(f"video.resize={v.resize!r}: choose one of {', '.join(FRAME_RESIZES)}")
        a = self.audio
        if a.soundnet_framing not in SOUNDNET_FRAMINGS:
            raise ConfigError(
                f"audio.soundnet_framing={a.soundnet_framing!r}: choose one of {', '.join(SOUNDNET_FRAMINGS)}"
            )
        if a.vggish_framing not in ("examples", "window"):
            raise ConfigError(f"audio.vggish_framing={a.vggish_framing!r}: must be 'examples' or 'window'")
        if a.vggish_example_frames < 1 or a.vggish_example_hop < 1 or a.vggish_slices < 1:
            raise ConfigError(
                "audio.vggish_example_frames, audio.vggish_example_hop and audio.vggish_slices must be >= 1"
            )
        if self.audio.envelope_bands < 1:
            raise ConfigError(f"audio.envelope_bands={self.audio.envelope_bands}: must be >= 1")
        f = self.fusion
        if f.temporal_reduction not in TEMPORAL_REDUCTIONS:
            raise ConfigError(
                f"fusion.temporal_reduction={f.temporal_reduction!r}: must be one of "
                f"{', '.join(TEMPORAL_REDUCTIONS)}"
            )
        if not 0 <= f.sync_scale < len(f.channels):
            raise ConfigError(
                f"fusion.sync_scale={f.sync_scale}: must index one of the {len(f.channels)} scales"
            )
        if not 0 <= f.binding_scale < len(f.channels):
            raise ConfigError(
                f"fusion.binding_scale={f.binding_scale}: must index one of the {len(f.channels)} scales"
            )
        if f.binding_lags < 0:
            raise ConfigError(f"fusion.binding_lags={f.binding_lags}: must be >= 0")
        if f.upsampling not in UPSAMPLINGS:
            raise ConfigError(f"fusion.upsampling={f.upsampling!r}: must be one of {', '.join(UPSAMPLINGS)}")
        if f.binding_readout and not f.binding:
            raise ConfigError("fusion.binding_readout needs fusion.binding (the map it reads out)")
        if f.sync_heads < 1 or f.channels[f.sync_scale] % f.sync_heads:
            raise ConfigError(
                f"fusion.sync_heads={f.sync_heads}: must divide fusion.channels[{f.sync_scale}]="
                f"{f.channels[f.sync_scale]}"
            )

    # ----------------------------------------------------------------- derived shapes
    def clip_len(self, variant: str = "hybrid") -> int:
        """Frames per window: 32 for AVRSP/hybrid, 16 for DiffSal at the paper profile; an official
        family's ``video.clip_len`` (its input mode)."""
        check_variant(variant)
        return self.video.diffsal_clip_len if variant == "diffsal" else self.video.clip_len

    def frames_shape(self, variant: str = "hybrid") -> tuple[int, int, int, int]:
        """Model input clip, batch excluded: [3, T, H, W], float32, normalised."""
        return (3, self.clip_len(variant), self.video.height, self.video.width)

    def s3d_channels(self) -> tuple[int, int, int, int]:
        return tuple(scaled(c, self.video.s3d_width) for c in S3D_SCALE_CHANNELS)  # type: ignore[return-value]

    def video_backbone(self, variant: str = "hybrid") -> str:
        """The video encoder of ``variant``: ``video.diffsal_backbone`` for diffsal, else S3D."""
        return self.video.diffsal_backbone if check_variant(variant) == "diffsal" else "s3d"

    def unet_channels(self, variant: str = "hybrid") -> tuple[int, ...]:
        """Saliency-UNet widths of ``variant``: ``unet.diffsal_channels`` (if set) for diffsal."""
        u = self.unet
        return tuple(u.diffsal_channels) if variant == "diffsal" and u.diffsal_channels else tuple(u.channels)

    def video_scales(self, variant: str = "hybrid") -> tuple[ScaleShape, ...]:
        """The four video-encoder outputs (high -> low resolution), batch excluded.

        S3D block outputs, or the MViTv2-S stage outputs for diffsal with ``video.diffsal_backbone
        = "mvit_v2_s"`` (all at T/2; 224x384 -> 56x96, 28x48, 14x24, 7x12). Temporal steps are
        exact (clip lengths are multiples of 8); spatial steps round up, so 112x192 gives 28x48,
        14x24, 7x12, 4x6 with either encoder.
        """
        t, h, w = self.clip_len(variant), self.video.height, self.video.width
        if self.video_backbone(variant) == "mvit_v2_s":
            return tuple(
                ScaleShape(c, t // 2, ceil_halve(h, 2 + i), ceil_halve(w, 2 + i))
                for i, c in enumerate(MVIT_STAGE_CHANNELS)
            )
        out = []
        for c, (st, ss) in zip(self.s3d_channels(), S3D_STEPS, strict=True):
            t, h, w = t >> st, ceil_halve(h, ss), ceil_halve(w, ss)
            out.append(ScaleShape(c, t, h, w))
        return tuple(out)

    def fusion_scales(self, variant: str = "hybrid") -> tuple[ScaleShape, ...]:
        """The four scales after ASPP + LIP (same grid as S3D, fusion channels)."""
        return tuple(
            ScaleShape(c, s.frames, s.height, s.width)
            for c, s in zip(self.fusion.channels, self.video_scales(variant), strict=True)
        )

    def soundnet_samples(self) -> int:
        """Length of the zero buffer the Hanning-windowed excerpt is centred in."""
        a = self.audio
        return int(a.soundnet_rate / a.soundnet_buffer_fps * self.video.clip_len)

    def audio_input_shape(self, variant: str = "hybrid") -> tuple[int, ...]:
        """Audio model input, batch excluded.

        SoundNet (avrsp, hybrid, avinet): waveform [1, samples, 1] (NCHW with W=1, the legacy layout).
        VGGish (diffsal): log-mel slices [slices, 1, slice_height, slice_width]. Official DiffSal:
        [1, slices, slice_height, slice_width], as its forward takes them. Visual-only families:
        ``(0,)`` (a zero-size placeholder; no audio encoder runs).
        """
        kind = family(variant).audio
        a = self.audio
        if kind == "vggish":
            return (a.vggish_slices, 1, a.vggish_slice_height, a.vggish_slice_width)
        if kind == "diffsal":
            return (1, a.vggish_slices, a.vggish_slice_height, a.vggish_slice_width)
        if kind == "none":
            return (0,)
        return (1, self.soundnet_samples(), 1)

    def uses_envelope(self, variant: str = "hybrid") -> bool:
        """Whether ``variant`` takes the per-frame audio envelope (its fusion decoder has AV sync or
        the binding map)."""
        return check_variant(variant) in ("avrsp", "hybrid") and (self.fusion.av_sync or self.fusion.binding)

    def uses_binding(self, variant: str = "hybrid") -> bool:
        """Whether ``variant``'s fusion decoder also takes the window's frames (``fusion.binding``)."""
        return check_variant(variant) in ("avrsp", "hybrid") and self.fusion.binding

    def uses_oneshot_condition(self, variant: str = "hybrid") -> bool:
        """Whether ``variant``'s UNet takes the one-shot map as an input (``unet.oneshot_condition``)."""
        return check_variant(variant) == "hybrid" and self.unet.oneshot_condition

    def envelope_shape(self, variant: str = "hybrid") -> tuple[int, int]:
        """Per-frame audio envelope of a window, batch excluded: [envelope_bands + 1, T]."""
        return (self.audio.envelope_bands + 1, self.clip_len(variant))

    def map_shape(self) -> tuple[int, int, int]:
        """Saliency map at model size, batch excluded: [1, H, W]."""
        return (1, self.video.height, self.video.width)

    # ----------------------------------------------------------------- identity
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def architecture_fingerprint(self) -> str:
        """Hash of every field that changes parameter shapes (not sampling or window settings).

        Checkpoints record it, so loading weights trained under another profile fails clearly.
        """
        d = _legacy_view(self.to_dict())
        for k in ("profile", "diffusion", "window"):
            d.pop(k)
        # Frame size and clip lengths fix the Saliency-UNet's key/value compression kernels.
        d["video"] = {k: v for k, v in d["video"].items() if k not in ("mean", "std", "resize", "pre_resize")}
        keep = ("soundnet_width", "vggish_width", "transformer_layers", "transformer_heads")
        keep += ("vggish_slices", "vggish_slice_height", "vggish_slice_width", "envelope_bands")
        d["audio"] = {k: d["audio"][k] for k in keep}
        blob = json.dumps(d, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        """Inverse of :meth:`to_dict` (unknown fields are rejected, missing ones take defaults).

        A stored config written before a field existed gets that field's :data:`LEGACY_DEFAULTS`
        value (the behaviour it was trained with), and renamed fields are migrated
        (:data:`RENAMED_FIELDS`).
        """
        data = _migrate_legacy(data)
        return _from_dict(_merge(Config(profile=str(data.get("profile", "paper"))).to_dict(), data))

    def replace(self, overrides: dict[str, Any] | None = None, **kwargs: Any) -> Config:
        """A copy with dotted / double-underscore / section overrides applied."""
        merged: dict[str, Any] = dict(overrides or {})
        merged.update(kwargs)
        return _from_dict(_merge(self.to_dict(), _expand(merged)))


def check_variant(variant: str) -> str:
    """``variant`` if it names a model family (ours or an official one), else a ConfigError."""
    if variant not in FAMILIES:
        raise ConfigError(f"unknown model family {variant!r}: choose one of {', '.join(FAMILIES)}")
    return variant


# --------------------------------------------------------------------- model families
@dataclass(frozen=True)
class Family:
    """A model family: how its network is split into exported stages and what it takes.

    ``variant`` strings throughout the code name a family. Ours (``origin="avsal"``) are built from
    the profile's sections; an official family (``origin="official"``) reproduces a published
    model's released code exactly, built by :mod:`avsal_deploy.models.official`, and its input mode
    (frame size and statistics, clip length, target frame, audio input) lives in
    :attr:`input_mode`, a set of config overrides on the ``paper`` profile.
    """

    name: str
    origin: Literal["avsal", "official"]
    #: the audio encoder's input: "soundnet" (Hanning-windowed waveform buffer), "vggish" (our
    #: log-mel slices), "diffsal" (the official DiffSal log-mel examples), "none" (visual only)
    audio: Literal["soundnet", "vggish", "diffsal", "none"]
    #: a decoder gives a map in one pass (the one-shot map; steps = 0)
    one_shot: bool
    #: a Saliency-UNet denoises the map (DDIM over the UNet step)
    unet: bool
    summary: str
    #: the UNet reads neither x_t nor t (one pass gives the map; no DDIM loop is run)
    noise_free: bool = False
    #: where the architecture comes from, and the licence of its released weights
    source: str = "avsal-deploy"
    weights_licence: str = "-"
    input_mode: dict[str, Any] = field(default_factory=dict)

    @property
    def has_audio(self) -> bool:
        return self.audio != "none"


# Official DiffSal's frame statistics on the 0-255 scale (its AV loader), as [0, 1]-scale values.
_DIFFSAL_MEAN = (114.7748 / 255.0, 107.7354 / 255.0, 99.4750 / 255.0)
_DIFFSAL_STD = (38.7568578 / 255.0, 37.88248729 / 255.0, 40.02898126 / 255.0)
_OFFICIAL_VIDEO = {"height": 224, "width": 384, "s3d_width": 1.0}
# ViNet / AViNet loaders (samyak0210/ViNet generate_result*.py torch_transform, dataloader.py):
# PIL Resize((224, 384)) (bilinear), ToTensor, ImageNet Normalize; 32-frame clips, the map of
# the LAST frame; the first 31 frames from the time-reversed first clip (our causal windows).
_VINET_VIDEO = {
    **_OFFICIAL_VIDEO,
    "clip_len": 32,
    "mean": (0.485, 0.456, 0.406),
    "std": (0.229, 0.224, 0.225),
    "resize": "pil",
}
# AViNet's audio (generate_result_audio_visual.py get_audio_feature): the window's excerpt,
# Hanning-windowed, centred in int(22050 / 10 * 32) = 70,560 zeros, samples in [-256, 256).
_AVINET_AUDIO = {
    "soundnet_rate": 22050,
    "soundnet_buffer_fps": 10.0,
    "soundnet_scale": 256.0,
    "soundnet_width": 1.0,
    "soundnet_framing": "vinet",
}

FAMILIES: dict[str, Family] = {
    f.name: f
    for f in (
        Family(
            "avrsp",
            "avsal",
            "soundnet",
            one_shot=True,
            unet=False,
            summary="AVRSP: S3D + SoundNet, relevance-guided fusion decoder (one-shot map)",
        ),
        Family(
            "diffsal",
            "avsal",
            "vggish",
            one_shot=False,
            unet=True,
            summary="DiffSal-style: video + VGGish encoders, Saliency-UNet denoised by DDIM",
        ),
        Family(
            "hybrid",
            "avsal",
            "soundnet",
            one_shot=True,
            unet=True,
            summary="AVRSP fusion decoder conditioning a Saliency-UNet (one-shot map or DDIM)",
        ),
        Family(
            "diffsal-official",
            "official",
            "diffsal",
            one_shot=False,
            unet=True,
            summary="DiffSal as released (MViTv2-S + VGGish, SalUNet), audio-visual",
            source="github.com/junwenxiong/diff_sal@c9b8070",
            weights_licence="not stated (the repository has no licence)",
            # datasets/saliency_db.py: frames PIL-resized to 320x240 (bicubic, pil_loader) then
            # 384x224 (bilinear, Scale), 0-255 scale, the AV statistics; the target is frame 8 of
            # 16 (median of the indices rounded half up); audio: nine 0.64 s log-mel examples
            # (data.diffsal_audio), resized to 112x192.
            input_mode={
                "video": {
                    **_OFFICIAL_VIDEO,
                    "clip_len": 16,
                    "mean": _DIFFSAL_MEAN,
                    "std": _DIFFSAL_STD,
                    "resize": "pil",
                    "pre_resize": (240, 320),
                },
                "audio": {
                    "vggish_slices": 9,
                    "vggish_slice_height": 112,
                    "vggish_slice_width": 192,
                    "vggish_example_frames": 64,
                    "vggish_example_hop": 11,
                },
                "window": {"mode": "centre"},
                "diffusion": {"sampling_steps": 1, "clip_x0": False},
            },
        ),
        Family(
            "diffsal-official-visual",
            "official",
            "none",
            one_shot=False,
            unet=True,
            noise_free=True,
            summary="DiffSal as released, visual-only (DHF1K); its UNet ignores x_T and t",
            source="github.com/junwenxiong/diff_sal@c9b8070",
            weights_licence="not stated (the repository has no licence)",
            # datasets/meta_data.py + dhf1k_data.py: transforms.Resize((224, 384)) of the PIL frame
            # (bilinear), ToTensor, ImageNet Normalize (the profile's mean/std); the target is
            # frame 8 of 16 (get_center_slice).
            input_mode={
                "video": {**_OFFICIAL_VIDEO, "clip_len": 16, "resize": "pil"},
                "window": {"mode": "centre"},
                "diffusion": {"sampling_steps": 1, "clip_x0": False},
            },
        ),
        Family(
            "vinet",
            "official",
            "none",
            one_shot=True,
            unet=False,
            summary="ViNet (IROS 2021): S3D + hierarchical decoder, visual-only",
            source="github.com/samyak0210/ViNet@2a52666",
            weights_licence="not stated (the code is MIT-licensed)",
            input_mode={"video": _VINET_VIDEO, "window": {"mode": "causal"}},
        ),
        Family(
            "avinet",
            "official",
            "soundnet",
            one_shot=True,
            unet=False,
            summary="AViNet (IROS 2021): ViNet + SoundNet-8, bilinear fusion",
            source="github.com/samyak0210/ViNet@2a52666",
            weights_licence="not stated (the code is MIT-licensed)",
            input_mode={
                "video": _VINET_VIDEO,
                "audio": _AVINET_AUDIO,
                "window": {"mode": "causal"},
            },
        ),
        Family(
            "vinet-s",
            "official",
            "none",
            one_shot=True,
            unet=False,
            summary="ViNet-S (ICASSP 2025): S3D + grouped U-Net decoder, visual-only",
            source="github.com/ViNet-Saliency/vinet_v2@d09066b",
            weights_licence="CC BY-NC-SA 4.0: non-commercial use only",
            # ViNet_S_dataloader.py: PIL Resize((224, 384)), ToTensor, ImageNet Normalize; frames
            # end-31..end, the map of the LAST one (the first frames: indices below 0 repeat
            # frame 0; we use our causal start-up rule instead).
            input_mode={"video": {**_VINET_VIDEO}, "window": {"mode": "causal"}},
        ),
        Family(
            "tased",
            "official",
            "none",
            one_shot=True,
            unet=False,
            summary="TASED-Net (ICCV 2019): S3D + transposed-convolution decoder with unpooling",
            source="github.com/MichiganCOG/TASED-Net@0cf47b7",
            # run_example.py: cv2.resize to 384x224 (INTER_LINEAR, data.resize.cv2_linear_resize),
            # (2p - 255) / 255; frames i-31..i give the map of frame i; frames 0..30 from the
            # time-reversed clip of frames t+31..t (our causal start-up rule exactly).
            weights_licence="not stated (the code is MIT-licensed)",
            input_mode={
                "video": {
                    **_OFFICIAL_VIDEO,
                    "clip_len": 32,
                    "mean": (0.5, 0.5, 0.5),
                    "std": (0.5, 0.5, 0.5),
                    "resize": "cv2",
                },
                "window": {"mode": "causal"},
            },
        ),
    )
}


#: ``avsal convert --from`` names: the official family each one means (``diffsal``: the
#: audio-visual or the visual-only network, whichever the file holds).
CONVERT_SOURCES: dict[str, str] = {
    "diffsal": "diffsal-official",
    "diffsal-visual": "diffsal-official-visual",
    "vinet": "vinet",
    "avinet": "avinet",
    "vinet-s": "vinet-s",
    "tased": "tased",
}


def family(variant: str) -> Family:
    """The :class:`Family` named ``variant`` (a ConfigError for an unknown name)."""
    return FAMILIES[check_variant(variant)]


def family_config(variant: str, overrides: dict[str, Any] | None = None) -> Config:
    """The config an official family runs with (its input mode on the ``paper`` profile), or the
    ``paper`` profile for one of ours; ``overrides`` as :meth:`Config.replace`."""
    fam = family(variant)
    base = profile_config("paper")
    if fam.input_mode:
        base = _from_dict(_merge(base.to_dict(), fam.input_mode))
    return base.replace(overrides) if overrides else base


# Our extensions that the deployable profiles (small, tiny) turn on and the paper profile leaves
# off: the AV sync gate and the binding map with its read-out (with unet.oneshot_condition: the
# binding switches whose results the audio-binding grid, training/grids/audio-binding.toml, reports).
_EXTENSIONS_FUSION: dict[str, Any] = {"av_sync": True, "binding": True, "binding_readout": True}

_PROFILE_OVERRIDES: dict[str, dict[str, Any]] = {
    "paper": {},
    "small": {
        "video": {
            "height": 112,
            "width": 192,
            "clip_len": 16,
            "diffsal_clip_len": 16,
            "s3d_width": 0.5,
            "diffsal_backbone": "s3d",
        },
        "audio": {
            "soundnet_width": 0.5,
            "vggish_width": 0.5,
            "vggish_slices": 9,
            "vggish_framing": "window",
            "vggish_slice_height": 56,
            "vggish_slice_width": 96,
            "transformer_heads": 4,
        },
        "fusion": {**_EXTENSIONS_FUSION, "channels": (32, 64, 96, 128), "ravf_heads": 4},
        "unet": {
            "channels": (32, 64, 96, 128),
            "diffsal_channels": (),
            "heads": 2,
            "time_dim": 128,
            "oneshot_condition": True,
        },
    },
    "tiny": {
        "video": {
            "height": 64,
            "width": 96,
            "clip_len": 8,
            "diffsal_clip_len": 8,
            "s3d_width": 0.125,
            "diffsal_backbone": "s3d",
        },
        "audio": {
            "soundnet_width": 0.125,
            "vggish_width": 0.125,
            "vggish_slices": 5,
            "vggish_framing": "window",
            "vggish_slice_height": 32,
            "vggish_slice_width": 32,
            "transformer_heads": 2,
        },
        "fusion": {
            "channels": (8, 16, 24, 32),
            "ravf_blocks": 1,
            "ravf_heads": 2,
            "aspp_rates": (1, 2),
            **_EXTENSIONS_FUSION,
        },
        "unet": {
            "channels": (8, 16, 24, 32),
            "diffsal_channels": (),
            "heads": 2,
            "time_dim": 32,
            "oneshot_condition": True,
        },
        "diffusion": {"sampling_steps": 2},
    },
}


def resolve_steps(config: Config, variant: str, steps: int | None) -> int:
    """DDIM steps for ``variant``: the config's default when None; avrsp has none (always 0);
    diffsal has no one-shot map, so it needs at least one."""
    steps = config.diffusion.sampling_steps if steps is None else int(steps)
    if steps < 0:
        raise ConfigError(f"steps={steps}: must be >= 0")
    fam = family(variant)
    if not fam.unet:
        return 0
    if fam.noise_free:  # the UNet reads neither x_t nor t: every step gives the same map
        return 1
    if not fam.one_shot and steps == 0:
        raise ConfigError(f"model family {variant!r} has no one-shot map: steps must be >= 1")
    return steps


def profile_config(name: str) -> Config:
    if name not in _PROFILE_OVERRIDES:
        raise ConfigError(f"unknown profile {name!r}: choose one of {', '.join(PROFILES)}")
    return _from_dict(_merge(Config(profile=name).to_dict(), _PROFILE_OVERRIDES[name]))


def load_config(
    name_or_path: str | Path | Config = "paper", overrides: dict[str, Any] | None = None, **kwargs: Any
) -> Config:
    """The config of a named profile or a TOML/JSON file, with overrides applied.

    A file may name its base profile (``profile = "small"``) and override any section.
    """
    if isinstance(name_or_path, Config):
        base = name_or_path
    elif str(name_or_path) in _PROFILE_OVERRIDES:
        base = profile_config(str(name_or_path))
    else:
        path = Path(name_or_path)
        if not path.exists():
            raise ConfigError(f"{path}: no such config file (and not a profile name: {', '.join(PROFILES)})")
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (OSError, ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: cannot read config: {exc}") from exc
        data = dict(data.get("model", data)) if "model" in data and "profile" not in data else dict(data)
        base = profile_config(str(data.pop("profile", "paper")))
        base = _from_dict(_merge(base.to_dict(), data))
    if overrides or kwargs:
        base = base.replace(overrides, **kwargs)
    return base


def parse_overrides(items: Sequence[str] | None) -> dict[str, Any]:
    """``section.field=value`` strings (the CLI's ``--set``) as an override dict.

    Values are parsed as JSON where they parse (numbers, booleans, lists), else kept as text.
    """
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected section.field=value")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


# --------------------------------------------------------------------- legacy configs
# Dotted field -> the value a STORED config (checkpoint, export manifest) that lacks the field
# means: the behaviour it was written with. Applied by Config.from_dict only; new profiles get the
# dataclass defaults. A field at its legacy value is left out of the architecture fingerprint, so
# old checkpoints reproduce theirs.
LEGACY_DEFAULTS: dict[str, Any] = {
    "unet.attention": "eca3d",  # before it: the 3-D key/value compression over all frames
    "video.diffsal_backbone": "s3d",  # before it: S3D for every variant
    "unet.diffsal_channels": (),  # before it: the diffsal UNet at unet.channels
    "audio.vggish_framing": "window",  # before it: the window's excerpt cut into equal slices
    "fusion.temporal_reduction": "mean",  # before it: the saliency decoder's plain temporal mean
    "fusion.binding": False,  # before it: no audio-visual binding map
    "fusion.binding_scale": 0,
    "fusion.binding_lags": 2,
    "fusion.binding_readout": False,  # before it: no direct read-out of the binding map
    "unet.oneshot_condition": False,  # before it: the UNet saw only c0..c3
    "fusion.upsampling": "trilinear",  # before it: no ViNet-S decoder (only its default build)
    "video.resize": "antialias",  # before it: antialiased bilinear on the float frame
    "video.pre_resize": (),  # before it: one resize
    "audio.soundnet_framing": "avsal",  # before it: our excerpt arithmetic
}
# Old dotted field -> (new dotted field, {old value: new value}, what to write instead); an old
# value missing from the map has no equivalent any more. Stored configs are migrated; overrides
# naming the old field fail with the replacement in the message.
RENAMED_FIELDS: dict[str, tuple[str, dict[Any, Any], str]] = {
    "unet.efficient_attention": (
        "unet.attention",
        {True: "eca3d"},
        "unet.attention = 'eca' (per-frame ECA), 'standard' (per-frame, uncompressed) or 'eca3d' "
        "(what efficient_attention = true built; false's 3-D uncompressed attention is gone)",
    ),
}


def _migrate_legacy(data: dict[str, Any]) -> dict[str, Any]:
    """A stored config dict in today's fields: renamed fields mapped, missing ones at legacy values."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for old, (new, values, hint) in RENAMED_FIELDS.items():
        section, name = old.split(".")
        if name not in out.get(section, {}):
            continue
        value = out[section].pop(name)
        if value not in values:
            raise ConfigError(f"config field {old}={value!r} has no equivalent any more: set {hint}")
        out[section].setdefault(new.split(".")[1], values[value])
    for dotted, value in LEGACY_DEFAULTS.items():
        section, name = dotted.split(".")
        out.setdefault(section, {}).setdefault(name, value)
    return out


def _legacy_view(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` as a config written before :data:`LEGACY_DEFAULTS` stored it (for the fingerprint):
    fields at their legacy value dropped, renamed fields back under their old name."""
    d = {k: dict(v) if isinstance(v, dict) else v for k, v in d.items()}
    for dotted, value in LEGACY_DEFAULTS.items():
        section, name = dotted.split(".")
        if d[section].get(name) == value:
            del d[section][name]
            for old, (new, values, _) in RENAMED_FIELDS.items():
                back = [o for o, n in values.items() if n == value]
                if new == dotted and back:
                    d[section][old.split(".")[1]] = back[0]
    return d


# --------------------------------------------------------------------- helpers
_SECTIONS: dict[str, type] = {
    "video": VideoConfig,
    "audio": AudioConfig,
    "fusion": FusionConfig,
    "unet": UNetConfig,
    "diffusion": DiffusionConfig,
    "window": WindowConfig,
}


def _expand(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        parts = key.replace("__", ".").split(".")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        leaf = parts[-1]
        if isinstance(value, dict) and isinstance(node.get(leaf), dict):
            node[leaf].update(value)
        else:
            node[leaf] = value
    return out


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if key not in out:
            raise ConfigError(f"unknown config field {key!r}")
        if isinstance(out[key], dict):
            if not isinstance(value, dict):
                raise ConfigError(f"config section {key!r} needs a table of fields, got {value!r}")
            unknown = set(value) - set(out[key])
            renamed = [f"{key}.{u}" for u in sorted(unknown) if f"{key}.{u}" in RENAMED_FIELDS]
            if renamed:
                raise ConfigError(
                    f"config field {renamed[0]} was replaced: set {RENAMED_FIELDS[renamed[0]][2]}"
                )
            if unknown:
                raise ConfigError(
                    f"unknown config field(s) {', '.join(f'{key}.{u}' for u in sorted(unknown))}"
                )
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _coerce(cls: type, values: dict[str, Any]) -> Any:
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        if isinstance(v, list):
            v = tuple(v)
        kwargs[f.name] = v
    return cls(**kwargs)


def _from_dict(d: dict[str, Any]) -> Config:
    sections = {name: _coerce(cls, d.get(name, {})) for name, cls in _SECTIONS.items()}
    return Config(profile=str(d.get("profile", "paper")), **sections)
