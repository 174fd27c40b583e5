"""Composition of a model family's stages: encoders, fusion decoder and Saliency-UNet.

Every family is split the way it is deployed: :meth:`SaliencyModel.condition` (video and audio
encoders, then the fusion decoder) runs ONCE per window; only :meth:`SaliencyModel.denoise` (one
Saliency-UNet step) runs inside the DDIM loop, which lives in :mod:`avsal_deploy.diffusion` and
does not know which engine runs the networks. Our families (``avrsp``, ``diffsal``, ``hybrid``)
are :class:`AVSaliencyModel`; the official ones (DiffSal as released, ViNet, AViNet, ViNet-S,
TASED-Net; :mod:`avsal_deploy.models.official`) are :class:`OfficialModel`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from avsal_deploy.config import Config, check_variant, family, resolve_steps
from avsal_deploy.diffusion import DDIMScheduler, ddim_sample, normalize_maps
from avsal_deploy.errors import ConfigError, WeightsError
from avsal_deploy.models.audio import build_audio_encoder
from avsal_deploy.models.fusion import FusionAux, FusionDecoder
from avsal_deploy.models.mvit import build_mvit
from avsal_deploy.models.s3d import build_s3d
from avsal_deploy.models.unet import SaliencyUNet


@dataclass
class Conditioning:
    """What the encoders and the fusion decoder hand to the sampler for one batch of windows."""

    one_shot: Tensor | None  # [B,1,H,W] map of a one-shot decoder in [0,1] (None without one)
    conds: tuple[Tensor, ...]  # what the UNet step is conditioned on (multi-scale features)
    audio: Tensor | None  # the audio features (None for a visual-only family)
    # the fusion decoder's auxiliary outputs (training objectives; empty without a fusion decoder)
    aux: FusionAux = field(default_factory=lambda: FusionAux(None))


class SaliencyModel(nn.Module):
    """What every family's model does with its stages (``video_encoder``, ``audio_encoder``,
    ``fusion``, ``unet``; absent ones are None): one window's map, once conditioned
    (:meth:`condition`), from the one-shot decoder or by DDIM over :meth:`denoise`."""

    video_encoder: nn.Module
    audio_encoder: nn.Module | None
    fusion: nn.Module | None
    unet: nn.Module | None

    def __init__(self, config: Config, variant: str) -> None:
        super().__init__()
        self.config = config
        self.variant = check_variant(variant)
        self.scheduler = DDIMScheduler.from_config(config.diffusion)

    def encode(self, frames: Tensor, audio: Tensor) -> tuple[tuple[Tensor, ...], Tensor | None]:
        """The video encoder's outputs and the audio features (None without an audio encoder)."""
        video = tuple(self.video_encoder(frames))
        return video, self.audio_encoder(audio) if self.audio_encoder is not None else None

    def decode(
        self,
        video: tuple[Tensor, ...],
        audio_feat: Tensor | None,
        frames: Tensor,
        envelope: Tensor | None = None,
    ) -> Conditioning:
        """The stage after the encoders (the fusion decoder, when there is one): the one-shot map
        and what the UNet step is conditioned on."""
        raise NotImplementedError

    def condition(self, frames: Tensor, audio: Tensor, envelope: Tensor | None = None) -> Conditioning:
        """Encoders and fusion decoder: everything that runs once per window.

        ``envelope`` [B, *config.envelope_shape(variant)] is required when
        ``config.uses_envelope(variant)`` and ignored otherwise.
        """
        video, audio_feat = self.encode(frames, audio)
        return self.decode(video, audio_feat, frames, envelope)

    def denoise(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """One Saliency-UNet step: the x0 estimate from the noisy map ``x_t`` at time steps ``t``."""
        raise NotImplementedError

    def resolve_steps(self, steps: int | None) -> int:
        return resolve_steps(self.config, self.variant, steps)

    def forward(
        self,
        frames: Tensor,
        audio: Tensor,
        steps: int | None = None,
        noise: Tensor | None = None,
        generator: torch.Generator | None = None,
        *,
        envelope: Tensor | None = None,
    ) -> Tensor:
        """The saliency map [B,1,H,W] of each window's target frame.

        ``steps`` DDIM steps (default: ``config.diffusion.sampling_steps``); 0 returns the one-shot
        map (a family without a Saliency-UNet always does). ``noise`` (x_T) or ``generator`` make
        the sampling reproducible; engines pass the same ``noise`` for parity. ``envelope``: the
        per-frame audio envelope (see :meth:`condition`).
        """
        steps = self.resolve_steps(steps)
        cond = self.condition(frames, audio, envelope)
        if steps == 0:
            assert cond.one_shot is not None
            return cond.one_shot
        if noise is None:
            shape = (frames.shape[0], *self.config.map_shape())
            noise = torch.randn(shape, generator=generator, dtype=frames.dtype, device=frames.device)
        x0 = ddim_sample(
            lambda x_t, t: self.denoise(x_t, t, cond),
            noise,
            self.scheduler,
            steps,
            clip_x0=self.config.diffusion.clip_x0,
        )
        return normalize_maps(x0)


class AVSaliencyModel(SaliencyModel):
    """One of our families ``avrsp``, ``diffsal`` or ``hybrid``, built from one :class:`Config`."""

    def __init__(self, config: Config, variant: str = "hybrid") -> None:
        super().__init__(config, variant)
        if family(variant).origin != "avsal":
            raise ConfigError(f"{variant!r} is an official family: build it with build_model")
        backbone = config.video_backbone(variant)
        self.video_encoder = build_mvit(config, variant) if backbone == "mvit_v2_s" else build_s3d(config)
        self.audio_encoder = build_audio_encoder(config, variant)
        audio_ch = int(self.audio_encoder.out_channels)
        video_ch = tuple(self.video_encoder.out_channels)
        self.fusion: FusionDecoder | None = None
        self.unet: SaliencyUNet | None = None
        if variant in ("avrsp", "hybrid"):
            self.fusion = FusionDecoder(config, video_ch, audio_ch)
        if variant in ("diffsal", "hybrid"):
            cond_ch = tuple(config.fusion.channels) if variant == "hybrid" else video_ch
            self.unet = SaliencyUNet(
                config, cond_ch, audio_ch, config.unet_channels(variant), oneshot=variant == "hybrid"
            )

    # ------------------------------------------------------------------ stages
    def decode(
        self,
        video: tuple[Tensor, ...],
        audio_feat: Tensor | None,
        frames: Tensor,
        envelope: Tensor | None = None,
    ) -> Conditioning:
        """The fusion decoder (avrsp, hybrid; its one-shot map and the UNet's conditions c0..c3),
        or, for diffsal, the video features themselves as the conditions."""
        if self.fusion is None:
            return Conditioning(None, video, audio_feat)  # type: ignore[arg-type]
        binding_frames = frames if self.config.uses_binding(self.variant) else None
        (one_shot, *conds), aux = self.fusion(*video, audio_feat, envelope, binding_frames, return_aux=True)
        return Conditioning(one_shot, tuple(conds), audio_feat, aux)  # type: ignore[arg-type]

    def denoise(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        """One Saliency-UNet step: the x0 estimate from the noisy map ``x_t`` at time steps ``t``."""
        if self.unet is None:
            raise ConfigError(f"variant {self.variant!r} has no Saliency-UNet (no diffusion steps)")
        return self.unet(x_t, t.to(x_t.dtype), *cond.conds, cond.audio, cond.one_shot)


class OfficialModel(SaliencyModel):
    """An official family's network (:mod:`avsal_deploy.models.official`), reproducing its released
    forward exactly, in the same deployment split: ``video_encoder`` (frames -> the named
    ``video_outputs``), ``audio_encoder`` (its audio input -> ``audio_feat``; None when visual-only),
    then either ``fusion`` (the decoder: the official output map, steps = 0) or ``unet`` (one
    official Saliency-UNet step conditioned on the video outputs and the audio features)."""

    def __init__(self, config: Config, variant: str) -> None:
        super().__init__(config, variant)
        from avsal_deploy.models.official import build_stages

        if family(variant).origin != "official":
            raise ConfigError(f"{variant!r} is not an official family")
        stages = build_stages(config, variant)
        self.video_encoder = stages.video_encoder
        self.video_outputs = tuple(stages.video_outputs)
        self.audio_encoder = stages.audio_encoder
        self.fusion = stages.decoder
        self.unet = stages.unet

    def decode(
        self,
        video: tuple[Tensor, ...],
        audio_feat: Tensor | None,
        frames: Tensor,
        envelope: Tensor | None = None,
    ) -> Conditioning:
        """The decoder's map (when the family has one); the UNet is conditioned on the video
        outputs themselves (``frames`` and ``envelope`` unused)."""
        extra = (audio_feat,) if audio_feat is not None else ()
        one_shot = self.fusion(*video, *extra) if self.fusion is not None else None
        return Conditioning(one_shot, video, audio_feat)

    def denoise(self, x_t: Tensor, t: Tensor, cond: Conditioning) -> Tensor:
        if self.unet is None:
            raise ConfigError(f"model family {self.variant!r} has no Saliency-UNet (no diffusion steps)")
        extra = (cond.audio,) if cond.audio is not None else ()
        return self.unet(x_t, t.to(x_t.dtype), *cond.conds, *extra)


def build_model(config: Config, variant: str = "hybrid") -> SaliencyModel:
    """The model of family ``variant`` for ``config``: one of ours (``avrsp``, ``diffsal``,
    ``hybrid``) or an official one (:data:`avsal_deploy.config.FAMILIES`)."""
    if family(variant).origin == "official":
        return OfficialModel(config, variant)
    return AVSaliencyModel(config, variant)


def checkpoint_config(path: str | Path) -> tuple[Config, str, dict[str, Any]]:
    """The config, variant and full metadata recorded in an avsal checkpoint, validated: the stored
    config must parse under this version and reproduce the stored architecture fingerprint."""
    from avsal_deploy.models.weights import read_checkpoint_metadata

    meta = read_checkpoint_metadata(path)
    try:
        config = Config.from_dict(meta["config"])
    except ConfigError as exc:
        raise WeightsError(f"{path}: checkpoint config is not valid for this version ({exc})") from exc
    if config.architecture_fingerprint() != meta.get("fingerprint"):
        raise WeightsError(
            f"{path}: checkpoint config does not reproduce its architecture fingerprint "
            f"{meta.get('fingerprint')} (written by an incompatible avsal version?)"
        )
    return config, str(meta["variant"]), meta


def load_trained(path: str | Path, variant: str | None = None) -> tuple[SaliencyModel, dict[str, Any]]:
    """The model a checkpoint was trained as (config and variant from its metadata) and the
    checkpoint's user metadata (e.g. ``audio``, ``step``, ``metrics``). The one checkpoint loader.

    ``variant`` (optional) must agree with the checkpoint's; weights load strictly; eval mode.
    """
    from avsal_deploy.models.weights import load_checkpoint

    config, stored_variant, _ = checkpoint_config(path)
    if variant is not None and variant != stored_variant:
        raise WeightsError(f"{path}: checkpoint is variant {stored_variant!r}, not {variant!r}")
    model = build_model(config, stored_variant)
    meta = load_checkpoint(model, path, config, stored_variant)
    return model.eval(), meta


def load_pretrained(path: str | Path, variant: str | None = None) -> SaliencyModel:
    """The model of an avsal checkpoint, ready for inference (see :func:`load_trained`)."""
    return load_trained(path, variant)[0]


# ---------------------------------------------------------------------- accounting
def count_parameters(model: SaliencyModel) -> dict[str, int]:
    """Parameters per component (absent components omitted) and in total."""
    out: dict[str, int] = {}
    for name in ("video_encoder", "audio_encoder", "fusion", "unet"):
        module = getattr(model, name)
        if module is not None:
            out[name] = sum(p.numel() for p in module.parameters())
    out["total"] = sum(p.numel() for p in model.parameters())
    return out


def example_inputs(
    config: Config, variant: str, batch: int = 1, device: str | torch.device = "cpu"
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Random frames, audio and envelope (None when the variant takes none) of the variant's shapes."""
    frames = torch.randn(batch, *config.frames_shape(variant), device=device)
    audio = torch.randn(batch, *config.audio_input_shape(variant), device=device)
    envelope = None
    if config.uses_envelope(variant):
        envelope = torch.rand(batch, *config.envelope_shape(variant), device=device)
    return frames, audio, envelope


#: Sizes the papers report for their own models (parameters, "FLOPs" as printed), with the input
#: they were measured on. DiffSal Table 6 (audio-visual; Table 8, visual-only: 70.54 M / 161.06 G).
#: The paper does not name its counting convention. Its figure must count one per multiply-add
#: (fvcore/thop style): the MViTv2-S backbone alone takes 127.8 G multiply-adds on its
#: 3x16x224x384 clip (our count; 64.2 G at 16x224x224, torchvision's figure), i.e. 255.6 GFLOP at
#: 2 FLOPs per multiply-add, more than the 187.31 G total. The AVRSP paper reports no sizes.
PAPER_SIZES: dict[str, dict[str, Any]] = {
    "diffsal": {
        "parameters": 76.57e6,
        "flops_as_printed": 187.31e9,
        "convention": "multiply-adds (inferred; the paper does not say)",
        "input": "audio 1x9x112x192, video 3x16x224x384",
        "frames_shape": (3, 16, 224, 384),
        "audio_shape": (9, 1, 112, 192),
        "source": "DiffSal (CVPR 2024) Table 6",
    }
}


def forward_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of running ``fn()``, counted by ``torch.utils.flop_counter.FlopCounterMode``.

    Its convention: 2 FLOPs per multiply-add of every matmul, convolution and attention product
    (mm, bmm, addmm, conv, scaled-dot-product attention); element-wise ops, norms, pools and
    softmax count 0. Multiply-adds (MACs) are therefore exactly half. Works on "meta" tensors.
    """
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def count_flops(
    model: SaliencyModel, config: Config | None = None, steps: int | None = None
) -> dict[str, int]:
    """FLOPs of one window (batch 1) per component, counted by torch's own FlopCounterMode
    (:func:`forward_flops`: 2 per multiply-add).

    Runs on the "meta" device (shapes only, no arithmetic), so the paper profile costs no compute.
    ``unet_step`` is one Saliency-UNet evaluation; ``per_window`` adds ``steps`` of them (default
    ``config.diffusion.sampling_steps``) to the encoders and the fusion decoder, which run once.
    """
    config = config or model.config
    variant = model.variant
    with torch.device("meta"):  # a twin with the same shapes; the real weights stay untouched
        meta = build_model(config, variant)
    frames, audio, envelope = example_inputs(config, variant, 1, device="meta")
    out: dict[str, int] = {}
    held: dict[str, Any] = {}
    with torch.no_grad():
        out["video_encoder"] = forward_flops(lambda: held.update(video=tuple(meta.video_encoder(frames))))
        held["audio"] = None
        if meta.audio_encoder is not None:
            out["audio_encoder"] = forward_flops(lambda: held.update(audio=meta.audio_encoder(audio)))
        video, audio_feat = held["video"], held["audio"]
        decoded = forward_flops(lambda: held.update(cond=meta.decode(video, audio_feat, frames, envelope)))
        if meta.fusion is not None:
            out["fusion"] = decoded
        n_steps = meta.resolve_steps(steps)
        if meta.unet is not None:
            x_t = torch.randn(1, *config.map_shape(), device="meta")
            t = torch.zeros(1, device="meta")
            out["unet_step"] = forward_flops(lambda: meta.denoise(x_t, t, held["cond"]))
    out["steps"] = n_steps
    once = sum(v for k, v in out.items() if k in ("video_encoder", "audio_encoder", "fusion"))
    out["forward"] = once + out.get("unet_step", 0)  # one pass: encoders (+ fusion) + one UNet step
    out["per_window"] = once + n_steps * out.get("unet_step", 0)
    return out
