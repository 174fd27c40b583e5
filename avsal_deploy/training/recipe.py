"""Training recipes: a typed :class:`TrainConfig` read from TOML.

A recipe file has four kinds of tables::

    [model]                 # which network: profile + variant + config overrides
    profile = "tiny"
    variant = "hybrid"
    [model.overrides]       # any Config field, dotted ("video.clip_len" = 16) or as sub-tables
    "video.clip_len" = 16

    [data]                  # where the windows come from (DataSection)
    root = "data/synthetic"
    name = "synthetic"

    [train]                 # optimisation, validation, checkpoints (TrainSection)
    lr = 1e-4

    [[stages]]              # optional: consecutive stages (StageSection), e.g. AVRSP's
    name = "visual"         # visual stage, then the audio-visual stage
    audio = "silent"
    epochs = 10

Relative paths (``data.root``, ``train.init_checkpoint``) are resolved against the recipe file's
folder. Overrides from the command line use ``section.field=value`` with the value parsed as JSON
when it parses (``train.lr=3e-4``, ``model.overrides.video.clip_len=16``,
``stages.1.epochs=5``); unknown names raise :class:`~avsal_deploy.errors.ConfigError`.

A recipe without ``[[stages]]`` has one stage named ``main`` that takes its epochs, audio mode,
freezing and loss weights from ``[train]``. A stage field left unset inherits the ``[train]`` value.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from avsal_deploy.config import Config, check_variant, load_config
from avsal_deploy.errors import ConfigError
from avsal_deploy.training.data import check_audio_mode

MODULE_NAMES: tuple[str, ...] = ("video_encoder", "audio_encoder", "fusion", "unet")
#: Sub-modules a stage may freeze besides MODULE_NAMES: the VGGish trunk of the diffsal audio encoder
#: (its temporal transformer stays trainable).
PART_NAMES: tuple[str, ...] = ("audio_encoder.trunk",)


def pretrained_audio_part(variant: str) -> str:
    """What ``train.freeze_audio`` freezes: the VGGish trunk for diffsal (as the official DiffSal
    code, which runs it under no_grad), the whole SoundNet otherwise."""
    return "audio_encoder.trunk" if variant == "diffsal" else "audio_encoder"


SCHEDULERS: tuple[str, ...] = ("plateau", "cosine", "constant")
AMP_MODES: tuple[str, ...] = ("auto", "off", "fp16", "bf16")
#: Validation metrics a recipe may monitor, and whether larger is better.
MONITOR_METRICS: dict[str, bool] = {"cc": True, "nss": True, "sim": True, "kld": False, "loss": False}


@dataclass(frozen=True)
class ModelSection:
    """The network: a profile, a variant and config overrides (recorded in every checkpoint)."""

    profile: str = "tiny"
    variant: str = "hybrid"
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DataSection:
    """The training and validation data (STAViS layout or DHF1K, see ``open_dataset``)."""

    root: str = ""
    name: str = "synthetic"
    fold: int = 1
    train_split: str = "train"
    val_split: str = "test"  # "" disables validation (and with it early stopping)
    windows_per_video: int = 8  # training windows per video and epoch
    flip: bool = True  # horizontal flip of clip + map + fixations
    channel_shuffle: bool = True  # random permutation of R, G, B
    cache: bool = True  # keep decoded / preprocessed frames in memory
    num_workers: int = 0  # DataLoader workers (each keeps its own cache)
    val_stride: int = 4  # validation predicts every k-th frame of each validation video
    val_max_videos: int = 0  # 0 = every validation video


@dataclass(frozen=True)
class TrainSection:
    """Optimisation, losses, validation, checkpoints."""

    seed: int = 0
    epochs: int = 10  # per stage unless the stage says otherwise
    max_steps: int = 0  # optimiser steps over the whole run (0 = no limit): a hard budget
    batch_size: int = 8  # per process (the global batch is batch_size * world size)
    lr: float = 1e-4
    weight_decay: float = 1e-5
    betas: tuple[float, float] = (0.9, 0.999)
    scheduler: str = "plateau"
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    min_lr: float = 0.0
    warmup_steps: int = 0  # linear warm-up at the start of each stage
    grad_clip: float = 0.0  # max global grad norm (0 = off)
    amp: str = "auto"  # auto: fp16/bf16 autocast on CUDA, off on CPU
    audio: str = "real"  # "silent": the visual-only twin
    freeze: tuple[str, ...] = ()  # modules without gradient: video_encoder, audio_encoder, fusion, unet
    # Freeze the audio encoder's pretrained part in every stage (recipe.pretrained_audio_part): no
    # gradient, not in the optimiser, eval mode. The DiffSal recipe sets it, as the official code.
    freeze_audio: bool = False
    # Public encoder weights loaded before training, "layout=path" (models.weights.LAYOUTS), e.g.
    # "torchvggish=/weights/vggish.pth", "torchvision-mvit_v2_s=/weights/mvit_v2_s-ae3be167.pth".
    backbone_weights: tuple[str, ...] = ()
    # Losses: oneshot = AVRSP loss on the one-shot map (avrsp, hybrid); diffusion = x0 MSE (diffsal, hybrid).
    kl_weight: float = 1.0
    cc_weight: float = -0.1
    sim_weight: float = -0.1
    oneshot_weight: float = 1.0
    diffusion_weight: float = 1.0
    # Deep supervision of the fusion decoder's AV sync gate (losses.sync_loss; 0 = off; only models
    # with fusion.av_sync): the synchrony map is pulled towards the target map.
    sync_weight: float = 0.0
    init_checkpoint: str = ""  # start from these weights (same architecture and variant)
    # Modules whose convolutions are re-initialised He-normal before training from scratch (see
    # trainer.he_initialise): ["audio_encoder"] for a VGGish trained without its public weights.
    he_init: tuple[str, ...] = ()
    # Validation metric for the LR plateau, the best checkpoint and early stopping: cc, nss, sim,
    # kld, or loss (the AVRSP objective kl*KL + cc*CC + sim*SIM of the validation maps, as the
    # paper's "validation loss"). Without a validation split the training loss is monitored.
    monitor: str = "cc"
    early_stop_patience: int = 0  # epochs without improvement before stopping (0 = never)
    min_delta: float = 0.0
    val_steps: int = -1  # DDIM steps at validation (-1 = config.diffusion.sampling_steps)
    val_batch_size: int = 16
    log_every: int = 10  # optimiser steps per metrics-log record
    checkpoint_every: int = 0  # also checkpoint every N steps (0 = at epoch ends only)


@dataclass(frozen=True)
class StageSection:
    """One training stage; unset (None) fields inherit the ``[train]`` value."""

    name: str = "main"
    epochs: int | None = None
    audio: str | None = None
    freeze: tuple[str, ...] | None = None
    lr: float | None = None
    oneshot_weight: float | None = None
    diffusion_weight: float | None = None
    data_root: str | None = None  # another data set for this stage (e.g. DHF1K for the visual stage)
    data_name: str | None = None


@dataclass(frozen=True)
class Stage:
    """A stage with every value resolved (what the trainer runs)."""

    index: int
    name: str
    epochs: int
    audio: str
    freeze: tuple[str, ...]
    lr: float
    oneshot_weight: float
    diffusion_weight: float
    data_root: str
    data_name: str


@dataclass(frozen=True)
class TrainConfig:
    """A whole recipe: model, data, training, stages; plus the file it came from."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    stages: tuple[StageSection, ...] = ()
    source: str = ""  # the recipe file ("" when built in code)

    def __post_init__(self) -> None:
        check_variant(self.model.variant)
        t, d = self.train, self.data
        if t.scheduler not in SCHEDULERS:
            raise ConfigError(f"train.scheduler={t.scheduler!r}: choose one of {', '.join(SCHEDULERS)}")
        if t.amp not in AMP_MODES:
            raise ConfigError(f"train.amp={t.amp!r}: choose one of {', '.join(AMP_MODES)}")
        if t.monitor not in MONITOR_METRICS:
            raise ConfigError(f"train.monitor={t.monitor!r}: choose one of {', '.join(MONITOR_METRICS)}")
        for name in ("batch_size", "val_batch_size", "log_every"):
            if getattr(t, name) < 1:
                raise ConfigError(f"train.{name}={getattr(t, name)}: must be >= 1")
        for name in ("epochs", "max_steps", "early_stop_patience", "checkpoint_every", "warmup_steps"):
            if getattr(t, name) < 0:
                raise ConfigError(f"train.{name}={getattr(t, name)}: must be >= 0")
        if t.lr <= 0:
            raise ConfigError(f"train.lr={t.lr}: must be > 0")
        if d.val_stride < 1:
            raise ConfigError(f"data.val_stride={d.val_stride}: must be >= 1")
        if d.num_workers < 0:
            raise ConfigError(f"data.num_workers={d.num_workers}: must be >= 0")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"stage names must be unique, got {names}")
        bad = [w for w in t.backbone_weights if not w.partition("=")[0] or not w.partition("=")[2]]
        if bad:
            raise ConfigError(f"train.backbone_weights: expected 'layout=path' entries, got {bad}")
        unknown_init = [m for m in t.he_init if m not in MODULE_NAMES]
        if unknown_init:
            raise ConfigError(
                f"train.he_init: unknown module(s) {unknown_init}; choose from {', '.join(MODULE_NAMES)}"
            )
        for stage in self.resolved_stages():
            check_audio_mode(stage.audio)
            unknown = [m for m in stage.freeze if m not in MODULE_NAMES + PART_NAMES]
            if unknown:
                raise ConfigError(
                    f"stage {stage.name!r}: cannot freeze {unknown}; choose from "
                    f"{', '.join(MODULE_NAMES + PART_NAMES)}"
                )
            if stage.lr <= 0:
                raise ConfigError(f"stage {stage.name!r}: lr={stage.lr} must be > 0")
        self.model_config()  # raises ConfigError on a bad profile / override

    # ----------------------------------------------------------------- derived
    def model_config(self) -> Config:
        """The model :class:`Config`: the profile with ``[model.overrides]`` applied."""
        return load_config(self.model.profile, dict(self.model.overrides))

    def backbone_layouts(self) -> tuple[tuple[str, str], ...]:
        """``train.backbone_weights`` as (layout, path) pairs."""
        return tuple((w.partition("=")[0], w.partition("=")[2]) for w in self.train.backbone_weights)

    def frozen_audio_untrained(self) -> bool:
        """Whether ``train.freeze_audio`` would freeze an audio encoder that no weights fill
        (neither public audio weights nor ``train.init_checkpoint``)."""
        t = self.train
        audio_layouts = {"torchvggish", "soundnet8"}
        given = any(layout in audio_layouts for layout, _ in self.backbone_layouts())
        return t.freeze_audio and not (given or t.init_checkpoint)

    def resolved_stages(self) -> tuple[Stage, ...]:
        """The stages with inherited values filled in (one ``main`` stage when none are listed)."""
        t, d = self.train, self.data
        sections = self.stages or (StageSection(),)
        out = []
        for i, s in enumerate(sections):
            out.append(
                Stage(
                    index=i,
                    name=s.name,
                    epochs=t.epochs if s.epochs is None else int(s.epochs),
                    audio=t.audio if s.audio is None else s.audio,
                    freeze=tuple(t.freeze if s.freeze is None else s.freeze)
                    + ((pretrained_audio_part(self.model.variant),) if t.freeze_audio else ()),
                    lr=t.lr if s.lr is None else float(s.lr),
                    oneshot_weight=t.oneshot_weight if s.oneshot_weight is None else float(s.oneshot_weight),
                    diffusion_weight=(
                        t.diffusion_weight if s.diffusion_weight is None else float(s.diffusion_weight)
                    ),
                    data_root=d.root if s.data_root is None else s.data_root,
                    data_name=d.name if s.data_name is None else s.data_name,
                )
            )
        return tuple(out)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, overrides: dict[str, Any]) -> TrainConfig:
        """A copy with dotted overrides (``{"train.lr": 3e-4, "stages.0.epochs": 2}``) applied."""
        data = self.to_dict()
        for key, value in overrides.items():
            _set_dotted(data, key, value)
        return from_dict(data, source=self.source)


# --------------------------------------------------------------------------- reading
_SECTIONS: dict[str, type] = {"model": ModelSection, "data": DataSection, "train": TrainSection}


def _set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    if parts[0] not in (*_SECTIONS, "stages") or len(parts) < 2:
        raise ConfigError(
            f"override {key!r}: expected section.field with section one of model, data, train, stages"
        )
    if parts[0] == "model" and parts[1] == "overrides":
        if len(parts) < 3:
            raise ConfigError(f"override {key!r}: name the config field, e.g. model.overrides.video.height")
        data["model"]["overrides"]["".join(p + "." for p in parts[2:])[:-1]] = value
        return
    if parts[0] == "stages":
        stages = data["stages"]
        if len(parts) != 3 or not parts[1].isdigit() or int(parts[1]) >= max(len(stages), 1):
            raise ConfigError(
                f"override {key!r}: expected stages.<index>.<field> with an existing stage index"
            )
        if not stages:
            stages.append(dataclasses.asdict(StageSection()))
        node = stages[int(parts[1])]
        leaf = parts[2]
    else:
        if len(parts) != 2:
            raise ConfigError(f"override {key!r}: expected section.field")
        node = data[parts[0]]
        leaf = parts[1]
    if leaf not in node:
        raise ConfigError(f"override {key!r}: unknown field {leaf!r}")
    node[leaf] = value


def _coerce(cls: type, values: dict[str, Any], where: str) -> Any:
    names = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ConfigError(f"{where}: unknown field(s) {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _flatten_overrides(prefix: str, value: Any, out: dict[str, Any]) -> None:
    """TOML sub-tables ``[model.overrides.video]`` -> dotted keys ``video.height``."""
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten_overrides(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value


def from_dict(data: dict[str, Any], source: str = "") -> TrainConfig:
    """A :class:`TrainConfig` from plain data (the parsed TOML, or :meth:`TrainConfig.to_dict`)."""
    unknown = sorted(set(data) - {*_SECTIONS, "stages", "source"})
    if unknown:
        raise ConfigError(f"{source or 'recipe'}: unknown section(s) {', '.join(unknown)}")
    model = dict(data.get("model", {}))
    overrides: dict[str, Any] = {}
    _flatten_overrides("", model.pop("overrides", {}), overrides)
    model["overrides"] = overrides
    where = source or "recipe"
    sections = {
        name: _coerce(cls, dict(data.get(name, {})) if name != "model" else model, f"{where} [{name}]")
        for name, cls in _SECTIONS.items()
    }
    stages_data = data.get("stages", [])
    if not isinstance(stages_data, list | tuple):
        raise ConfigError(f"{where}: 'stages' must be an array of tables ([[stages]])")
    stages = tuple(
        _coerce(StageSection, dict(s), f"{where} [[stages]] #{i + 1}") for i, s in enumerate(stages_data)
    )
    return TrainConfig(
        model=sections["model"],
        data=sections["data"],
        train=sections["train"],
        stages=stages,
        source=source,
    )


def _resolve_paths(data: dict[str, Any], base: Path) -> None:
    """Make the recipe's relative paths relative to the recipe file's folder."""

    def fix(node: dict[str, Any], key: str) -> None:
        value = node.get(key)
        if isinstance(value, str) and value and not Path(value).expanduser().is_absolute():
            node[key] = str((base / value).resolve())

    fix(data.setdefault("data", {}), "root")
    fix(data.setdefault("train", {}), "init_checkpoint")
    for stage in data.get("stages", []):
        fix(stage, "data_root")


def load_recipe(path: str | Path, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a TOML recipe, resolve its relative paths and apply dotted ``overrides``.

    Override values that are relative paths are taken relative to the current directory (they come
    from the command line), unlike the paths written in the file.
    """
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: no such recipe file")
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{p}: cannot read recipe: {exc}") from exc
    _resolve_paths(data, p.resolve().parent)
    recipe = from_dict(data, source=str(p))
    return recipe.replace(overrides) if overrides else recipe
