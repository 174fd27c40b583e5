"""The released DiffSal (github.com/junwenxiong/diff_sal@c9b8070), audio-visual and visual-only,
in the deployment split: video encoder and audio encoder once per window, the Saliency-UNet step
(:mod:`avsal_deploy.models.official.diffsal_unet`) alone in the DDIM loop.

Families (``avsal_deploy.config.FAMILIES``):

- ``diffsal-official``: ``cfgs/audio_visual.py`` (the AVAD/DIEM/Coutrot/ETMD/SumMe checkpoints);
- ``diffsal-official-visual``: ``cfgs/visual.py`` (DHF1K; ``spatiotemp_net=None``, no
  ``audio_net``): its UNet ignores x_t and t (see the UNet module), one pass gives the map.

Stages (:func:`build`):

- ``video_encoder`` (:class:`OfficialMViT`): mmaction2's ``MViT(arch="small",
  out_scales=[0, 1, 2, 3])`` as the released code builds it, i.e. our MViTv2-S with LayerNorm
  eps 1e-5 and each stage's normalised tokens carried into the next stage. Returns the three
  stages the UNet reads, coarse first: ``stage3`` [B,768,T/2,H/32,W/32], ``stage2`` (384, /16),
  ``stage1`` (192, /8). The stage-0 output (96, /4) is not used by the released forward (its
  ``norm0`` still is: the next stage takes the normalised tokens).
- ``audio_encoder`` (:class:`OfficialAudioEncoder`, audio-visual only): input [B, 1, 9, 112, 192]
  (nine log-mel examples resized to 112x192, as the released forward takes them), the VGGish
  conv trunk per example -> [B*9, 512, 7, 12], then the released ``AudioAttnNet``: one pre-norm
  transformer layer over all 9*7*12 tokens (2 heads of 64, i.e. inner width 128; feed-forward
  LayerNorm, 512->256, GELU, 256->512), a final LayerNorm -> [B, 512, 9, 7, 12]. Its patch
  embedding and position embedding are computed by the released forward and then overwritten
  (``x = rearrange(audio, ...)``): not used, not built.
- ``unet`` (:class:`~avsal_deploy.models.official.diffsal_unet.OfficialSalUNet`).

Checkpoint (:func:`~avsal_deploy.models.official.checkpoint.read_official_state`, :func:`convert`): ``best.pth`` as the released
trainer saves it, ``{"state_dict": {"module." + key: tensor}, "optim_dict", "epoch", "step"}``.
Keys (AV file: 658; visual: 616): ``visual_net.*`` (401, the mmaction2 MViT layout, renamed by
:data:`avsal_deploy.models.weights.LAYOUTS` ``mmaction2-mvit_v2_s``), ``audio_net.features.*`` (12,
the torchvggish trunk), ``spatiotemp_net.*`` (20), ``decoder_net.*`` (215, same names under
``unet.``). Accepted but not used by the released forward (:attr:`Converted.dropped`):
``audio_net.embeddings.*`` (VGGish's fully connected head), ``fc.*`` (an unused 128->512->768
MLP), ``spatiotemp_net.to_patch_embedding.*`` and ``spatiotemp_net.pos_embedding``, and in a
visual-only file the UNet's ``align_conv`` weights (built by every block, read only with audio).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from avsal_deploy.config import Config
from avsal_deploy.errors import ConfigError, WeightsError
from avsal_deploy.models.audio import _vggish_trunk
from avsal_deploy.models.mvit import MViTv2S
from avsal_deploy.models.official import Converted, OfficialStages
from avsal_deploy.models.official.diffsal_unet import AUDIO_WIDTH, OfficialSalUNet

AUDIO_VISUAL = "diffsal-official"
VISUAL = "diffsal-official-visual"
FAMILY_NAMES: tuple[str, str] = (AUDIO_VISUAL, VISUAL)
VIDEO_OUTPUTS: tuple[str, str, str] = ("stage3", "stage2", "stage1")
MMACTION2_LN_EPS = 1e-5  # mmaction2's MViT builds nn.LayerNorm at its default eps

# The released AudioAttnNet (cfgs/audio_visual.py spatiotemp_net): dim 512, depth 1, heads 2,
# dim_head 64, mlp_dim 256.
AUDIO_HEADS, AUDIO_HEAD_DIM, AUDIO_MLP = 2, 64, 256


class OfficialMViT(MViTv2S):
    """MViTv2-S as mmaction2 runs it (LayerNorm eps 1e-5, stage norms carried on), returning the
    three stages the released SalUNet reads, coarse first (module docstring).
    :meth:`stage_outputs` gives all four stages, fine first (mmaction2's order before its
    ``outs[::-1]``)."""

    def __init__(self, frames: int, height: int, width: int) -> None:
        super().__init__(frames, height, width, ln_eps=MMACTION2_LN_EPS, carry_stage_norms=True)

    def stage_outputs(self, frames: Tensor) -> list[Tensor]:
        return super().forward(frames)

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        s0, s1, s2, s3 = super().forward(frames)
        return s3, s2, s1


class _AudioLayer(nn.Module):
    """``x + Attn(LN(x))`` (no qkv bias, ``heads x head_dim`` inner width, softmax of
    ``q k^T * head_dim^-0.5``), then ``x + FF(x)`` with FF = LN, Linear, GELU, Linear."""

    def __init__(self, dim: int, heads: int, head_dim: int, hidden: int) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.scale = head_dim**-0.5
        inner = heads * head_dim
        self.attn_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * inner, bias=False)
        self.proj = nn.Linear(inner, dim)
        self.ff_norm = nn.LayerNorm(dim)
        self.ff1 = nn.Linear(dim, hidden)
        self.ff2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[1]
        qkv = self.qkv(self.attn_norm(x)).reshape(-1, n, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [B, heads, N, head_dim]
        attn = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(-1, n, self.heads * self.head_dim)
        x = self.proj(out) + x
        return self.ff2(nn.functional.gelu(self.ff1(self.ff_norm(x)))) + x


class OfficialAudioEncoder(nn.Module):
    """VGGish trunk per log-mel example + the released ``AudioAttnNet`` (module docstring).

    Input [B, 1, S, h, w] (S examples), output [B, 512, S, h/16, w/16].
    """

    def __init__(self, layers: int = 1) -> None:
        super().__init__()
        self.trunk, dim = _vggish_trunk(1.0)
        assert dim == AUDIO_WIDTH
        self.layers = nn.ModuleList(
            _AudioLayer(dim, AUDIO_HEADS, AUDIO_HEAD_DIM, AUDIO_MLP) for _ in range(layers)
        )
        self.norm = nn.LayerNorm(dim)
        self.out_channels = dim

    def forward(self, audio: Tensor) -> Tensor:
        s, h, w = audio.shape[2], audio.shape[3], audio.shape[4]
        x = self.trunk(audio.reshape(-1, 1, h, w))  # [B*S, C, h', w']
        c, ha, wa = x.shape[1], x.shape[2], x.shape[3]
        x = x.reshape(-1, s, c, ha * wa).transpose(2, 3).reshape(-1, s * ha * wa, c)  # b (t h w) c
        for layer in self.layers:
            x = layer(x)
        x = self.norm(x)
        return x.reshape(-1, s, ha, wa, c).permute(0, 4, 1, 2, 3)


# ----------------------------------------------------------------------------- build
def _check_family(variant: str) -> bool:
    """True for the audio-visual family, False for the visual-only one."""
    if variant not in FAMILY_NAMES:
        raise ConfigError(f"{variant!r} is not an official DiffSal family ({', '.join(FAMILY_NAMES)})")
    return variant == AUDIO_VISUAL


def check_shapes(config: Config, variant: str) -> None:
    """The released network's constraints on the input mode: 16 frames (9 slots with the noise),
    frame sides multiples of 32, and for the audio-visual family 9 examples whose VGGish map
    upsamples by an integer factor to the coarsest stage."""
    av = _check_family(variant)
    t, h, w = config.clip_len(variant), config.video.height, config.video.width
    if t != 16:
        raise ConfigError(f"{variant}: video.clip_len={t}, the released network takes 16 frames")
    if h % 32 or w % 32:
        raise ConfigError(f"{variant}: frame size {h}x{w} must be multiples of 32 (the MViT stages)")
    if av:
        a = config.audio
        if a.vggish_slices != t // 2 + 1:
            raise ConfigError(
                f"{variant}: audio.vggish_slices={a.vggish_slices}, the network takes {t // 2 + 1}"
            )
        ha, wa = a.vggish_slice_height // 16, a.vggish_slice_width // 16
        hs, ws = h // 32, w // 32
        if ha < 1 or wa < 1 or hs % ha or ws % wa or hs // ha != ws // wa:
            raise ConfigError(
                f"{variant}: audio examples {a.vggish_slice_height}x{a.vggish_slice_width} give a "
                f"{ha}x{wa} map that does not upsample by one integer factor to the {hs}x{ws} stage"
            )


def build(config: Config, variant: str) -> OfficialStages:
    """The stages of ``variant`` (``diffsal-official`` or ``diffsal-official-visual``) for
    ``config`` (its frame size and audio example size), in eval mode."""
    av = _check_family(variant)
    check_shapes(config, variant)
    t, h, w = config.clip_len(variant), config.video.height, config.video.width
    stages = OfficialStages(
        video_encoder=OfficialMViT(t, h, w),
        video_outputs=VIDEO_OUTPUTS,
        audio_encoder=OfficialAudioEncoder() if av else None,
        unet=OfficialSalUNet((h, w), audio=av),
    )
    for m in (stages.video_encoder, stages.audio_encoder, stages.unet):
        if m is not None:
            m.eval()
    return stages


# ----------------------------------------------------------------------------- checkpoints
_DROPPED = (
    r"audio_net\.embeddings\.[024]\.(weight|bias)",
    r"fc\.[02]\.(weight|bias)",
    r"spatiotemp_net\.to_patch_embedding\.[012]\.(weight|bias)",
    r"spatiotemp_net\.pos_embedding",
)
_VISUAL_DROPPED = (r"decoder_net\.invpt_decoder\.mid_stages\.\d+\.blocks\.\d+\.align_conv\.(weight|bias)",)
_AUDIO_RULES = (
    (r"audio_net\.features\.(?P<n>\d+)\.(?P<p>weight|bias)", "audio_encoder.trunk.{n}.{p}"),
    (r"spatiotemp_net\.transformer\.norm\.(?P<p>weight|bias)", "audio_encoder.norm.{p}"),
    (
        r"spatiotemp_net\.transformer\.layers\.(?P<i>\d+)\.0\.norm\.(?P<p>weight|bias)",
        "audio_encoder.layers.{i}.attn_norm.{p}",
    ),
    (
        r"spatiotemp_net\.transformer\.layers\.(?P<i>\d+)\.0\.to_qkv\.weight",
        "audio_encoder.layers.{i}.qkv.weight",
    ),
    (
        r"spatiotemp_net\.transformer\.layers\.(?P<i>\d+)\.0\.to_out\.0\.(?P<p>weight|bias)",
        "audio_encoder.layers.{i}.proj.{p}",
    ),
    (
        r"spatiotemp_net\.transformer\.layers\.(?P<i>\d+)\.1\.net\.0\.(?P<p>weight|bias)",
        "audio_encoder.layers.{i}.ff_norm.{p}",
    ),
    (
        r"spatiotemp_net\.transformer\.layers\.(?P<i>\d+)\.1\.net\.1\.(?P<p>weight|bias)",
        "audio_encoder.layers.{i}.ff1.{p}",
    ),
    (
        r"spatiotemp_net\.transformer\.layers\.(?P<i>\d+)\.1\.net\.4\.(?P<p>weight|bias)",
        "audio_encoder.layers.{i}.ff2.{p}",
    ),
)
_SHOWN = 5  # keys named per problem in an error message


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_SHOWN])
    return f"{len(keys)}: {shown}" + (", ..." if len(keys) > _SHOWN else "")


def detect(state: Mapping[str, Any]) -> str | None:
    """For a released DiffSal state dict (``module.`` stripped; it has ``visual_net.*`` and
    ``decoder_net.*``): ``diffsal-official`` if it has an audio network (``audio_net.*`` /
    ``spatiotemp_net.*``), else ``diffsal-official-visual``. None for any other state dict."""
    if not any(k.startswith("visual_net.") for k in state) or not any(
        k.startswith("decoder_net.") for k in state
    ):
        return None
    has_audio = any(k.startswith(("audio_net.", "spatiotemp_net.")) for k in state)
    return AUDIO_VISUAL if has_audio else VISUAL


def _translate(key: str, av: bool) -> str | None:
    """Our stage key for an official key (None: not one the family uses)."""
    if key.startswith("visual_net."):
        from avsal_deploy.models.weights import LAYOUTS

        ours = LAYOUTS["mmaction2-mvit_v2_s"].translate(key[len("visual_net.") :])
        return None if ours is None else "video_encoder." + ours
    if key.startswith("decoder_net."):
        return "unet." + key[len("decoder_net.") :]
    if av:
        for pattern, template in _AUDIO_RULES:
            m = re.fullmatch(pattern, key)
            if m is not None:
                return template.format(**m.groupdict())
    return None


def _untemplate(rules: tuple[tuple[str, str], ...], key: str) -> str | None:
    """The official key that ``rules`` (``(regex over an official key, our key template)``, with
    plain named groups and no lookup tables) translate to our ``key``; None if none does."""
    for pattern, template in rules:
        ours = "".join(
            f"(?P<{part}>[^.]+)" if i % 2 else re.escape(part)
            for i, part in enumerate(re.split(r"\{(\w+)\}", template))
        )
        m = re.fullmatch(ours, key)
        if m is None:
            continue
        text = re.sub(r"\(\?:[^)]*\)\?", "", pattern)  # optional prefixes, e.g. (?:backbone\.)?
        text = re.sub(r"\(\?P<(\w+)>[^)]*\)", r"{\1}", text).replace("\\.", ".")
        official = text.format(**m.groupdict())
        if re.fullmatch(pattern, official):
            return official
    return None


def official_key(key: str) -> str:
    """The official checkpoint key that converts to our stage key ``key`` (for error messages;
    ``key`` itself when no rule gives one)."""
    from avsal_deploy.models.weights import LAYOUTS

    stage, _, rest = key.partition(".")
    if stage == "unet":
        return "decoder_net." + rest
    if stage == "video_encoder":
        found = _untemplate(LAYOUTS["mmaction2-mvit_v2_s"].rules, rest)
        return key if found is None else "visual_net." + found
    if stage == "audio_encoder":
        rules = tuple((p, t[len("audio_encoder.") :]) for p, t in _AUDIO_RULES)
        return _untemplate(rules, rest) or key
    return key


def _stage_shapes(variant: str) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Our stages' state-dict keys with shapes and dtypes (built on the meta device: the parameter
    shapes do not depend on the frame size)."""
    from avsal_deploy.config import family_config

    with torch.device("meta"):
        stages = build(family_config(variant), variant)
    out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {}
    for prefix, module in (
        ("video_encoder", stages.video_encoder),
        ("audio_encoder", stages.audio_encoder),
        ("unet", stages.unet),
    ):
        if module is not None:
            for k, v in module.state_dict().items():
                out[f"{prefix}.{k}"] = (tuple(v.shape), v.dtype)
    return out


def convert(state: Mapping[str, Tensor], variant: str) -> Converted:
    """The official state dict (``module.`` stripped) of ``variant`` in our stage keys, strictly:
    an official key that is neither used nor known-unused, a missing key or a shape that differs
    raises :class:`WeightsError` naming them (first few and the count). BatchNorm
    ``num_batches_tracked`` counters may be absent (they do not affect inference)."""
    av = _check_family(variant)
    dropped_patterns = _DROPPED if av else _VISUAL_DROPPED
    wanted = _stage_shapes(variant)
    out: dict[str, Tensor] = {}
    dropped: list[str] = []
    unknown: list[str] = []
    shapes: list[str] = []
    provided: set[str] = set()
    for key, value in state.items():
        if any(re.fullmatch(p, key) for p in dropped_patterns):
            dropped.append(key)
            continue
        ours = _translate(key, av)
        if ours is None or ours not in wanted or ours in provided:
            unknown.append(key)
            continue
        provided.add(ours)
        shape, dtype = wanted[ours]
        if not isinstance(value, Tensor):
            shapes.append(f"{key} is a {type(value).__name__}")
            continue
        if ours.endswith("pos_encoding.class_token") and value.numel() == torch.Size(shape).numel():
            value = value.reshape(shape)  # mmaction2 stores it as [1, 1, 96]
        if tuple(value.shape) != shape:
            shapes.append(f"{key} {tuple(value.shape)} (expected {shape})")
            continue
        value = value.detach().to("cpu")
        out[ours] = (value.to(dtype) if value.is_floating_point() else value).contiguous()
    missing = sorted(
        official_key(k) for k in wanted if k not in provided and not k.endswith("num_batches_tracked")
    )
    problems = []
    if unknown:
        problems.append(f"unknown keys ({_names(sorted(unknown))})")
    if missing:
        problems.append(f"missing keys ({_names(missing)})")
    if shapes:
        problems.append(f"wrong shapes ({_names(shapes)})")
    if problems:
        raise WeightsError(f"not a {variant} checkpoint: " + "; ".join(problems))
    for k in wanted:  # BatchNorm step counters absent from the file: not used in inference
        out.setdefault(k, torch.zeros((), dtype=torch.long))
    return Converted(state=out, dropped=sorted(dropped))
