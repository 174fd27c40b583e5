"""Weights: public backbone checkpoints (by layout) and our own full-model checkpoints.

Public backbones
----------------
:func:`load_backbone_weights` loads a public checkpoint into the encoder it belongs to. Each
*layout* is a table of rename rules from the public key names to ours (regular expressions over
whole keys, with small lookup tables for indices), plus the keys the model deliberately does not
use (classification heads). Loading is strict: every key of the covered module must be provided
with the right shape, every public key must either map to one of ours or be listed as ignored;
anything else raises :class:`~avsal_deploy.errors.WeightsError` naming the keys. BatchNorm
``num_batches_tracked`` counters are optional in the source (checkpoints older than PyTorch 0.4.1
have none); everything else is required.

Layouts (public source: key rules, public -> ours):

``torchvision-s3d``
    ``torchvision.models.video.s3d`` (S3D_Weights.KINETICS400_V1). ``features.N`` -> ``baseK.M``
    by :data:`S3D_SEQUENTIAL_INDEX` (stem 0/2/3; Mixed 5,6 / 8-12 / 14,15; 1, 4, 7, 13 are
    pools); ``Conv3dNormActivation`` children ``0``/``1`` -> ``conv``/``bn``;
    ``TemporalSeparableConv`` children ``U.L`` -> ``{conv,bn}_{s,t}``; ``branch0.L`` ->
    ``branch0.0.L``. Ignored: ``classifier.1.*`` (Kinetics classifier).
``tased-s3d``
    ``S3D_kinetics400.pt`` of kylemin/S3D, used by TASED-Net and ViNet. ``base.N.rest`` ->
    ``baseK.M.rest`` by the same index table; the module names below it are already ours.
    Ignored: ``fc.0.*`` (Kinetics classifier).
``soundnet8``
    The PyTorch ports of SoundNet ``sound8``, in either naming: the block port
    (``convI.0`` conv, ``convI.1`` BN; kept as is, I = 1..7) or the flat port of ViNet's
    ``soundnet8_final.pth`` (``convI.{weight,bias}`` -> ``convI.0.*``, ``batchnormI.*`` ->
    ``convI.1.*``). Ignored: the object/scene heads ``conv8.0.*``, ``conv8_2.0.*`` (block) and
    ``conv8_objs.*``, ``conv8_scns.*`` (flat).
``torchvision-mvit_v2_s``
    ``torchvision.models.video.mvit_v2_s`` (MViT_V2_S_Weights.KINETICS400_V1, ``mvit_v2_s-ae3be167.pth``;
    DiffSal's video backbone). Our :class:`~avsal_deploy.models.mvit.MViTv2S` uses torchvision's
    names, so the rule is the identity over ``conv_proj.*``, ``pos_encoding.class_token``,
    ``blocks.N.*`` and ``norm.*``; the relative-position tables keep the shapes of the 16x224x224
    weights at any frame size (resized at run time). Not provided (trained here):
    ``stage_norms.*``, the output norms of stages 0-2. Ignored: ``head.1.*`` (Kinetics classifier).
``mmaction2-mvit_v2_s``
    mmaction2's ``MViT(arch="small")``, the layout of the Kinetics-400 file the official DiffSal
    code loads (``mvit-small-p244_16x4x1_kinetics400-rgb.pth``; keys with or without the
    recogniser's ``backbone.`` prefix). ``patch_embed.projection`` -> ``conv_proj``,
    ``cls_token`` [1, 1, 96] -> ``pos_encoding.class_token`` [96], ``attn.proj`` ->
    ``attn.project.0``, ``attn.pool_X`` / ``attn.norm_X`` -> ``attn.pool_X.pool`` /
    ``attn.pool_X.norm_act.0``, ``mlp.fc1/fc2`` -> ``mlp.0/3``, ``proj`` -> ``project``,
    ``norm3`` -> ``norm``, ``norm0-2`` (optional: present in DiffSal-trained backbones) ->
    ``stage_norms.0-2``. Ignored: ``cls_head.*``.
``torchvggish``
    harritaylor/torchvggish ``vggish`` state dict. ``features.N.*`` -> ``trunk.N.*`` (N = 0, 3,
    6, 8, 11, 13). Covers the VGGish trunk only; the temporal transformer is trained by us.
    Ignored: ``embeddings.{0,2,4}.*`` (fully connected embedding), ``pproc.*`` (PCA).

Public weights exist only at width 1.0 (``video.s3d_width``, ``audio.soundnet_width``,
``audio.vggish_width``); other widths fail with shape mismatches that say so.

Full-model checkpoints
----------------------
:func:`save_checkpoint` writes a model's whole state dict as ``.safetensors`` with metadata: the
config (JSON), :meth:`~avsal_deploy.config.Config.architecture_fingerprint`, the variant and the
avsal version. :func:`load_checkpoint` refuses a checkpoint of another architecture or variant
with a one-line message before touching the model.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from avsal_deploy.config import Config, check_variant
from avsal_deploy.errors import WeightsError
from avsal_deploy.models.audio import SoundNet8, VGGishEncoder
from avsal_deploy.models.mvit import MViTv2S
from avsal_deploy.models.s3d import S3D

# --------------------------------------------------------------------------- layouts

# Public S3D ``nn.Sequential`` index (torchvision ``features.N``, kylemin/TASED ``base.N``) ->
# our stage.position (the ViNet BackBoneS3D split). 1, 4, 7 and 13 are parameter-free pools.
S3D_SEQUENTIAL_INDEX: dict[str, str] = {
    "0": "base1.0",  # SepConv 3->64, k7 s2
    "2": "base1.2",  # BasicConv 64->64, 1x1
    "3": "base1.3",  # SepConv 64->192, k3
    "5": "base2.0",  # Mixed_3b
    "6": "base2.1",  # Mixed_3c
    "8": "base3.0",  # Mixed_4b
    "9": "base3.1",  # Mixed_4c
    "10": "base3.2",  # Mixed_4d
    "11": "base3.3",  # Mixed_4e
    "12": "base3.4",  # Mixed_4f
    "14": "base4.0",  # Mixed_5b
    "15": "base4.1",  # Mixed_5c
}
# Lookup tables applied to the named groups of the same name in the rules below.
LOOKUPS: dict[str, dict[str, str]] = {
    "s3d": S3D_SEQUENTIAL_INDEX,
    "stem_sep": {k: S3D_SEQUENTIAL_INDEX[k] for k in ("0", "3")},
    "stem_basic": {"2": S3D_SEQUENTIAL_INDEX["2"]},
    "mixed": {k: v for k, v in S3D_SEQUENTIAL_INDEX.items() if int(k) >= 5},
    "cb": {"0": "conv", "1": "bn"},  # torchvision Conv3dNormActivation children
    "st": {"0": "s", "1": "t"},  # torchvision TemporalSeparableConv children
}
_P = r"(?P<p>weight|bias|running_mean|running_var|num_batches_tracked)"


@dataclass(frozen=True)
class Layout:
    """A public checkpoint layout: which encoder it fills and how its keys map to ours."""

    name: str
    source: str  # the public code / file it comes from
    encoder: type[nn.Module]  # the encoder class it loads into
    attribute: str  # that encoder's attribute name on a full model
    rules: tuple[tuple[str, str], ...]  # (regex over a whole public key, our key template)
    ignored: tuple[str, ...]  # regexes of public keys the model does not use (heads)
    covers: str = ""  # prefix of our keys the layout must provide ("" = the whole encoder)
    optional: tuple[str, ...] = ()  # prefixes of our keys the public weights may lack (trained here)
    reshape: tuple[str, ...] = ()  # our keys whose public tensor may differ in shape, not in size
    width_setting: str = ""  # the config setting that must be 1.0 for public weights

    def translate(self, key: str) -> str | None:
        """Our key for a public key, or None if no rule matches."""
        for pattern, template in self.rules:
            m = re.fullmatch(pattern, key)
            if m is None:
                continue
            groups = m.groupdict()
            try:
                values = {g: LOOKUPS[g][v] if g in LOOKUPS else v for g, v in groups.items()}
            except KeyError:  # an index the lookup table does not know (e.g. a pool position)
                continue
            return template.format(**values)
        return None

    def is_ignored(self, key: str) -> bool:
        return any(re.fullmatch(p, key) for p in self.ignored)


LAYOUTS: dict[str, Layout] = {
    "torchvision-s3d": Layout(
        name="torchvision-s3d",
        source="torchvision.models.video.s3d (S3D_Weights.KINETICS400_V1)",
        encoder=S3D,
        attribute="video_encoder",
        rules=(
            (rf"features\.(?P<stem_sep>\d+)\.(?P<st>[01])\.(?P<cb>[01])\.{_P}", "{stem_sep}.{cb}_{st}.{p}"),
            (rf"features\.(?P<stem_basic>\d+)\.(?P<cb>[01])\.{_P}", "{stem_basic}.{cb}.{p}"),
            (rf"features\.(?P<mixed>\d+)\.branch0\.(?P<cb>[01])\.{_P}", "{mixed}.branch0.0.{cb}.{p}"),
            (
                rf"features\.(?P<mixed>\d+)\.branch(?P<j>[12])\.0\.(?P<cb>[01])\.{_P}",
                "{mixed}.branch{j}.0.{cb}.{p}",
            ),
            (
                rf"features\.(?P<mixed>\d+)\.branch(?P<j>[12])\.1\.(?P<st>[01])\.(?P<cb>[01])\.{_P}",
                "{mixed}.branch{j}.1.{cb}_{st}.{p}",
            ),
            (rf"features\.(?P<mixed>\d+)\.branch3\.1\.(?P<cb>[01])\.{_P}", "{mixed}.branch3.1.{cb}.{p}"),
        ),
        ignored=(r"classifier\.1\.(weight|bias)",),
        width_setting="video.s3d_width",
    ),
    "tased-s3d": Layout(
        name="tased-s3d",
        source="S3D_kinetics400.pt (kylemin/S3D, used by TASED-Net and ViNet)",
        encoder=S3D,
        attribute="video_encoder",
        rules=((r"base\.(?P<s3d>\d+)\.(?P<rest>.+)", "{s3d}.{rest}"),),
        ignored=(r"fc\.0\.(weight|bias)",),
        width_setting="video.s3d_width",
    ),
    "soundnet8": Layout(
        name="soundnet8",
        source="PyTorch ports of SoundNet sound8 (block port; ViNet soundnet8_final.pth)",
        encoder=SoundNet8,
        attribute="audio_encoder",
        rules=(
            (r"conv(?P<i>[1-7])\.(?P<rest>[01]\..+)", "conv{i}.{rest}"),  # block port
            (r"conv(?P<i>[1-7])\.(?P<p>weight|bias)", "conv{i}.0.{p}"),  # flat port
            (rf"batchnorm(?P<i>[1-7])\.{_P}", "conv{i}.1.{p}"),  # flat port
        ),
        ignored=(
            r"conv8(_2)?\.0\.(weight|bias)",  # block port: object / scene heads
            r"conv8_(objs|scns)\.(weight|bias)",  # flat port: object / scene heads
        ),
        width_setting="audio.soundnet_width",
    ),
    "torchvision-mvit_v2_s": Layout(
        name="torchvision-mvit_v2_s",
        source="torchvision.models.video.mvit_v2_s (MViT_V2_S_Weights.KINETICS400_V1)",
        encoder=MViTv2S,
        attribute="video_encoder",
        rules=(
            (
                r"(?P<key>conv_proj\.(weight|bias)|pos_encoding\.class_token|norm\.(weight|bias)"
                r"|blocks\.\d+\.[a-z_0-9.]+)",
                "{key}",
            ),
        ),
        ignored=(r"head\.1\.(weight|bias)",),
        optional=("stage_norms.",),
    ),
    "mmaction2-mvit_v2_s": Layout(
        name="mmaction2-mvit_v2_s",
        source="mmaction2 MViT(arch='small'), mvit-small-p244_16x4x1_kinetics400-rgb (DiffSal's official backbone)",
        encoder=MViTv2S,
        attribute="video_encoder",
        rules=tuple(
            (rf"(?:backbone\.)?{pattern}", template)
            for pattern, template in (
                (r"patch_embed\.projection\.(?P<p>weight|bias)", "conv_proj.{p}"),
                (r"cls_token", "pos_encoding.class_token"),
                (r"blocks\.(?P<i>\d+)\.(?P<n>norm1|norm2)\.(?P<p>weight|bias)", "blocks.{i}.{n}.{p}"),
                (r"blocks\.(?P<i>\d+)\.attn\.qkv\.(?P<p>weight|bias)", "blocks.{i}.attn.qkv.{p}"),
                (r"blocks\.(?P<i>\d+)\.attn\.proj\.(?P<p>weight|bias)", "blocks.{i}.attn.project.0.{p}"),
                (
                    r"blocks\.(?P<i>\d+)\.attn\.pool_(?P<w>[qkv])\.weight",
                    "blocks.{i}.attn.pool_{w}.pool.weight",
                ),
                (
                    r"blocks\.(?P<i>\d+)\.attn\.norm_(?P<w>[qkv])\.(?P<p>weight|bias)",
                    "blocks.{i}.attn.pool_{w}.norm_act.0.{p}",
                ),
                (r"blocks\.(?P<i>\d+)\.attn\.rel_pos_(?P<a>[thw])", "blocks.{i}.attn.rel_pos_{a}"),
                (r"blocks\.(?P<i>\d+)\.mlp\.fc1\.(?P<p>weight|bias)", "blocks.{i}.mlp.0.{p}"),
                (r"blocks\.(?P<i>\d+)\.mlp\.fc2\.(?P<p>weight|bias)", "blocks.{i}.mlp.3.{p}"),
                (r"blocks\.(?P<i>\d+)\.proj\.(?P<p>weight|bias)", "blocks.{i}.project.{p}"),
                (r"norm3\.(?P<p>weight|bias)", "norm.{p}"),
                (r"norm(?P<s>[012])\.(?P<p>weight|bias)", "stage_norms.{s}.{p}"),
            )
        ),
        ignored=(r"cls_head\..+",),
        optional=("stage_norms.",),
        reshape=("pos_encoding.class_token",),  # mmaction2 stores it as [1, 1, 96]
    ),
    "torchvggish": Layout(
        name="torchvggish",
        source="harritaylor/torchvggish vggish state dict",
        encoder=VGGishEncoder,
        attribute="audio_encoder",
        rules=((r"features\.(?P<n>0|3|6|8|11|13)\.(?P<p>weight|bias)", "trunk.{n}.{p}"),),
        ignored=(r"embeddings\.[024]\.(weight|bias)", r"pproc\.(pca_matrix|pca_means)"),
        covers="trunk.",
        width_setting="audio.vggish_width",
    ),
}

_MAX_NAMED = 6  # keys named per category in an error message


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMED])
    return shown + (f" (+{len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else "")


def _read_state_dict(source: str | Path | Mapping[str, Tensor]) -> tuple[dict[str, Tensor], str]:
    """A flat ``{name: tensor}`` dict from a file or a mapping, plus a label for messages.

    ``.safetensors`` files are read with safetensors, anything else with
    ``torch.load(weights_only=True)``. A top-level ``state_dict`` / ``model`` wrapper and
    ``module.`` prefixes (DataParallel) are removed.
    """
    if isinstance(source, Mapping):
        raw: Any = dict(source)
        label = "state dict"
    else:
        path = Path(source)
        label = str(path)
        if not path.is_file():
            raise WeightsError(f"{path}: no such weights file")
        try:
            if path.suffix == ".safetensors":
                from safetensors.torch import load_file

                raw = load_file(str(path))
            else:
                raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as exc:  # corrupt or foreign file: every reader raises its own type
            raise WeightsError(f"{path}: cannot read weights ({type(exc).__name__}: {exc})") from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(raw, Mapping) and isinstance(raw.get(wrapper), Mapping):
            raw = raw[wrapper]
            break
    if not isinstance(raw, Mapping):
        raise WeightsError(f"{label}: not a state dict (got {type(raw).__name__})")
    out: dict[str, Tensor] = {}
    for key, value in raw.items():
        if not isinstance(value, Tensor):
            raise WeightsError(f"{label}: entry {key!r} is a {type(value).__name__}, not a tensor")
        name = str(key)
        while name.startswith("module."):
            name = name[len("module.") :]
        out[name] = value
    return out, label


def _encoder_for(model: nn.Module, layout: Layout) -> nn.Module:
    if isinstance(model, layout.encoder):
        return model
    encoder = getattr(model, layout.attribute, None)
    if isinstance(encoder, layout.encoder):
        return encoder
    found = type(encoder).__name__ if encoder is not None else f"no {layout.attribute}"
    raise WeightsError(
        f"layout {layout.name!r} loads into a {layout.encoder.__name__} ({layout.attribute}); "
        f"this model has {found}"
    )


def load_backbone_weights(
    model: nn.Module, path_or_state_dict: str | Path | Mapping[str, Tensor], layout: str
) -> None:
    """Load a public backbone checkpoint of ``layout`` into its encoder, strictly.

    ``model`` is the encoder itself or a full model with ``video_encoder`` / ``audio_encoder``.
    Raises :class:`WeightsError` naming missing, unexpected and mis-shaped keys (nothing is
    loaded then).
    """
    if layout not in LAYOUTS:
        raise WeightsError(f"unknown weights layout {layout!r}: choose one of {', '.join(LAYOUTS)}")
    spec = LAYOUTS[layout]
    encoder = _encoder_for(model, spec)
    source, label = _read_state_dict(path_or_state_dict)

    own = encoder.state_dict()
    wanted = {k for k in own if k.startswith(spec.covers)}
    mapped: dict[str, Tensor] = {}
    origin: dict[str, str] = {}  # our key -> the public key that provided it
    unexpected: list[str] = []
    duplicate: list[str] = []
    shapes: list[str] = []
    for key, value in source.items():
        if spec.is_ignored(key):
            continue
        ours = spec.translate(key)
        if ours is None or ours not in wanted:
            unexpected.append(key)
            continue
        if ours in origin:
            duplicate.append(f"{origin[ours]} / {key}")
            continue
        origin[ours] = key
        if ours in spec.reshape and value.numel() == own[ours].numel():
            value = value.reshape(own[ours].shape)
        if tuple(value.shape) != tuple(own[ours].shape):
            shapes.append(f"{key} {tuple(value.shape)} vs {tuple(own[ours].shape)}")
            continue
        mapped[ours] = value
    # BatchNorm step counters are optional: checkpoints older than PyTorch 0.4.1 have none.
    missing = sorted(
        k
        for k in wanted - set(origin)
        if not k.endswith("num_batches_tracked") and not k.startswith(spec.optional)
    )
    problems = []
    if missing:
        problems.append(f"missing model keys {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected checkpoint keys {_names(sorted(unexpected))}")
    if duplicate:
        problems.append(f"duplicate checkpoint keys {_names(duplicate)}")
    if shapes:
        hint = ""
        width = getattr(encoder, "width", 1.0)
        if width != 1.0 and spec.width_setting:
            hint = f" (public weights need {spec.width_setting}=1.0, this model has {width})"
        problems.append(f"shape mismatch (checkpoint vs model) {_names(shapes)}{hint}")
    if problems:
        raise WeightsError(f"{label}: does not fit layout {layout!r} ({spec.source}): " + "; ".join(problems))

    full = dict(own)
    full.update(mapped)
    encoder.load_state_dict(full, strict=True)


# --------------------------------------------------------------------------- checkpoints
_FORMAT = "avsal-checkpoint/1"
_RESERVED = ("format", "config", "fingerprint", "variant", "profile", "avsal_version")


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    config: Config,
    variant: str,
    metadata: Mapping[str, Any] | None = None,
) -> None:
    """Write ``model``'s state dict as safetensors with the metadata that identifies it.

    Stored: the config (JSON), its architecture fingerprint, the variant, the profile, the avsal
    version and ``metadata`` (JSON-serialisable values, e.g. epoch or metrics; names may not
    shadow the reserved ones above). Tensors are saved contiguous and unshared.
    """
    from safetensors.torch import save_file

    from avsal_deploy._version import __version__

    check_variant(variant)
    header = {
        "avsal.format": _FORMAT,
        "avsal.config": config.to_json(),
        "avsal.fingerprint": config.architecture_fingerprint(),
        "avsal.variant": variant,
        "avsal.profile": config.profile,
        "avsal.avsal_version": __version__,
    }
    for key, value in (metadata or {}).items():
        if key in _RESERVED:
            raise ValueError(f"checkpoint metadata name {key!r} is reserved")
        header[f"user.{key}"] = json.dumps(value)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=header)


def read_checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an avsal checkpoint: format, config (dict), fingerprint, variant, profile,
    avsal_version and the user entries given to :func:`save_checkpoint`."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: no such checkpoint file")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types for corrupt headers
        raise WeightsError(f"{path}: not a readable safetensors checkpoint ({exc})") from exc
    if header.get("avsal.format") != _FORMAT:
        raise WeightsError(f"{path}: not an avsal checkpoint (no {_FORMAT} metadata)")
    try:
        meta: dict[str, Any] = {k[len("avsal.") :]: v for k, v in header.items() if k.startswith("avsal.")}
        meta["config"] = json.loads(meta["config"])
        for key, value in header.items():
            if key.startswith("user."):
                meta[key[len("user.") :]] = json.loads(value)
    except (KeyError, ValueError) as exc:
        raise WeightsError(f"{path}: corrupt avsal checkpoint metadata ({exc})") from exc
    return meta


def load_checkpoint(model: nn.Module, path: str | Path, config: Config, variant: str) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` into ``model``; return its metadata.

    Refuses (WeightsError, model untouched) a checkpoint of another architecture fingerprint or
    variant, or whose keys or shapes differ from the model's.
    """
    check_variant(variant)
    path = Path(path)
    meta = read_checkpoint_metadata(path)
    ours = config.architecture_fingerprint()
    if meta.get("fingerprint") != ours:
        raise WeightsError(
            f"{path}: checkpoint was trained for profile {meta.get('profile')} "
            f"(fingerprint {meta.get('fingerprint')}), this model is profile {config.profile} "
            f"(fingerprint {ours})"
        )
    if meta.get("variant") != variant:
        raise WeightsError(
            f"{path}: checkpoint is variant {meta.get('variant')!r}, this model is {variant!r}"
        )
    from safetensors.torch import load_file

    try:
        tensors = load_file(str(path))
    except Exception as exc:  # truncated data section
        raise WeightsError(f"{path}: cannot read checkpoint tensors ({exc})") from exc
    own = model.state_dict()
    missing = sorted(set(own) - set(tensors))
    unexpected = sorted(set(tensors) - set(own))
    shapes = [
        f"{k} {tuple(tensors[k].shape)} vs {tuple(own[k].shape)}"
        for k in sorted(set(own) & set(tensors))
        if tuple(tensors[k].shape) != tuple(own[k].shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {_names(missing)}")
    if unexpected:
        problems.append(f"unexpected {_names(unexpected)}")
    if shapes:
        problems.append(f"shape mismatch {_names(shapes)}")
    if problems:
        raise WeightsError(f"{path}: checkpoint does not fit this model: " + "; ".join(problems))
    model.load_state_dict(tensors, strict=True)
    return meta
