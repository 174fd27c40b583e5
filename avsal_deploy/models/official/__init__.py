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
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from avsal_deploy.config import CONVERT_SOURCES, Config, family
from avsal_deploy.errors import ConfigError, WeightsError

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


def detect_family(state: Mapping[str, Tensor]) -> str | None:
    """The official family whose released layout ``state`` has (keys and marker shapes), or None."""
    for name in dict.fromkeys(OFFICIAL_MODULES.values()):
        found = importlib.import_module(name).detect(state)
        if found is not None:
            return str(found)
    return None


@dataclass
class ConvertedCheckpoint:
    """What :func:`convert_checkpoint` wrote."""

    path: Path
    variant: str
    parameters: int
    dropped: list[str]


def convert_checkpoint(
    source: str | Path,
    out: str | Path,
    from_name: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ConvertedCheckpoint:
    """Convert an official checkpoint file into an avsal checkpoint that every command takes.

    ``source`` is the file as the official training script saved it (read with
    ``torch.load(weights_only=True)``; :func:`~avsal_deploy.models.official.checkpoint.read_official_state`);
    ``from_name`` one of :data:`CONVERT_SOURCES` (None: detected from the keys). The written
    config is the family's input mode (:func:`~avsal_deploy.config.family_config`) with
    ``overrides`` applied (e.g. ``fusion.upsampling=bilinear`` for ViNet-S's training build, a
    smaller frame size). The file is written atomically: on any error nothing is written.
    Raises :class:`~avsal_deploy.errors.WeightsError` (one line naming the file) for a file of
    another model and for unknown, missing or misshapen keys.
    """
    from avsal_deploy.config import family_config
    from avsal_deploy.models.build import build_model
    from avsal_deploy.models.official.checkpoint import read_official_state
    from avsal_deploy.models.weights import save_checkpoint
    from avsal_deploy.specs import sha256_file

    source, out = Path(source), Path(out)
    if from_name is not None and from_name not in CONVERT_SOURCES:
        raise ConfigError(f"--from {from_name}: choose one of {', '.join(CONVERT_SOURCES)}")
    state = read_official_state(source)
    detected = detect_family(state)
    if from_name is None:
        if detected is None:
            raise WeightsError(
                f"{source}: not a checkpoint of an official model this version knows "
                f"({', '.join(CONVERT_SOURCES)}); name the model with --from to see which keys differ"
            )
        variant = detected
    else:
        variant = CONVERT_SOURCES[from_name]
        if from_name == "diffsal" and detected == "diffsal-official-visual":
            variant = detected  # the visual-only network: no audio keys in the file
        if detected is not None and detected != variant:
            named = next(k for k, v in CONVERT_SOURCES.items() if v == detected)
            raise WeightsError(
                f"{source}: a {detected} checkpoint, not {variant} (convert it --from {named})"
            )
    try:
        converted = convert_state(state, variant)
    except WeightsError as exc:
        raise WeightsError(f"{source}: {exc}") from exc
    config = family_config(variant, dict(overrides or {}))
    model = build_model(config, variant)
    model.load_state_dict(converted.state, strict=True)
    fam = family(variant)
    metadata = {
        "converted_from": {
            "file": source.name,
            "sha256": sha256_file(source),
            "family": variant,
            "official_code": fam.source,
            "weights_licence": fam.weights_licence,
            "dropped_keys": converted.dropped,
        }
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        save_checkpoint(model, tmp, config, variant, metadata)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return ConvertedCheckpoint(out, variant, sum(p.numel() for p in model.parameters()), converted.dropped)
