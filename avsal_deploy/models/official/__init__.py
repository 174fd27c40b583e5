"""Official architectures of the field, reproduced exactly from their released code.

Each official family of :data:`avsal_deploy.config.FAMILIES` (``origin="official"``) has a module
here that provides two things (registered in :data:`OFFICIAL_MODULES`, imported on first use):

- ``build(config, variant) -> OfficialStages``: plain ``nn.Module`` stages in the deployment split
  (video encoder, optional audio encoder, then a one-shot decoder or a Saliency-UNet step), whose
  composition reproduces the official forward for the same input tensors;
- ``convert(state, variant) -> Converted``: the official checkpoint's state dict (as the official
  training script saves it, ``module.`` prefixes already stripped) mapped onto the stages' keys,
  strictly: an unknown, missing or misshapen key is an error that names it.

Stage call conventions (what :class:`avsal_deploy.models.build.OfficialModel` calls):

- ``video_encoder(frames [B,3,T,H,W]) -> tuple[Tensor, ...]``, named ``video_outputs``;
- ``audio_encoder(audio [B, *config.audio_input_shape(variant)]) -> Tensor`` (``audio_feat``);
- ``decoder(*video_feats[, audio_feat]) -> Tensor [B,1,H,W]``: the official output map (the
  exported ``fusion`` component: the stage after the encoders that gives the one-shot map);
- ``unet(x_t [B,1,H,W], t [B] float, *video_feats[, audio_feat]) -> Tensor [B,1,H,W]``: the x0
  estimate of one step, before any clamp.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

from avsal_deploy.config import Config, family

#: Official family -> the module that builds and converts it.
OFFICIAL_MODULES: dict[str, str] = {
    "diffsal-official": "avsal_deploy.models.official.diffsal",
    "diffsal-official-visual": "avsal_deploy.models.official.diffsal",
    "vinet": "avsal_deploy.models.official.vinet",
    "avinet": "avsal_deploy.models.official.vinet",
    "vinet-s": "avsal_deploy.models.official.vinet_s",
    "tased": "avsal_deploy.models.official.tased",
}


@dataclass
class OfficialStages:
    """The stages of one official network (see the module docstring for their call conventions)."""

    video_encoder: nn.Module
    video_outputs: tuple[str, ...]
    audio_encoder: nn.Module | None = None
    decoder: nn.Module | None = None
    unet: nn.Module | None = None


@dataclass
class Converted:
    """An official state dict in our stage keys (``video_encoder.*``, ``audio_encoder.*``,
    ``fusion.*`` for the decoder, ``unet.*``: the attributes of
    :class:`~avsal_deploy.models.build.OfficialModel`), and the official keys accepted but not used
    by the official forward."""

    state: dict[str, Tensor]
    dropped: list[str] = field(default_factory=list)


def _module(variant: str):  # type: ignore[no-untyped-def]
    if family(variant).origin != "official" or variant not in OFFICIAL_MODULES:
        raise KeyError(f"{variant!r} is not an official family")
    return importlib.import_module(OFFICIAL_MODULES[variant])


def build_stages(config: Config, variant: str) -> OfficialStages:
    """The stages of official family ``variant`` for ``config``."""
    return _module(variant).build(config, variant)  # type: ignore[no-any-return]


def convert_state(state: Mapping[str, Tensor], variant: str) -> Converted:
    """An official state dict of ``variant`` in our stage keys (strict; see the module docstring)."""
    return _module(variant).convert(state, variant)  # type: ignore[no-any-return]
