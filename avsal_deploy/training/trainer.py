"""The training loop: stages, DDP, mixed precision, validation, checkpoints, resumption.

One :class:`Trainer` runs a :class:`~avsal_deploy.training.recipe.TrainConfig` into an output
folder::

    <out>/recipe.json              the resolved recipe (every value, after overrides)
    <out>/config.json              the model config
    <out>/metrics.jsonl            one JSON record per log interval ("train"), epoch ("epoch") and
                                   validation ("val")
    <out>/metrics.png              loss and validation-metric curves (matplotlib, if installed)
    <out>/checkpoints/last.safetensors + last.state.pt    resumable
    <out>/checkpoints/best.safetensors                    best validation ``train.monitor``

Losses (per variant): ``avrsp`` -- the AVRSP loss ``KL - 0.1 CC - 0.1 SIM`` on the one-shot map;
``diffsal`` -- the x0 MSE of the Saliency-UNet at a time step drawn uniformly per sample
(:meth:`~avsal_deploy.diffusion.DDIMScheduler.q_sample_training`, cosine schedule); ``hybrid`` --
``oneshot_weight * AVRSP loss + diffusion_weight * x0 MSE`` in one backward pass, the UNet's
gradient flowing into the fusion decoder and the encoders that produce its conditions (freeze
them per stage to train the UNet alone).

Distributed training is PyTorch's own: launched by ``torchrun`` (``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR``/``MASTER_PORT`` in the environment) the trainer initialises the
process group (NCCL on CUDA, gloo on CPU), wraps the loss module in
:class:`~torch.nn.parallel.DistributedDataParallel` and shards every epoch with
:class:`~torch.utils.data.distributed.DistributedSampler`. The per-process batch is
``train.batch_size``. Only rank 0 validates and writes files; its validation result is broadcast
so that every rank takes the same scheduler and early-stopping decisions, and BatchNorm running
statistics are broadcast from rank 0 after every epoch, so all ranks hold identical weights.

Determinism and resumption: all training randomness is counter-based -- a window's frames, target
and augmentation depend on ``(seed, epoch, index)`` (:class:`~avsal_deploy.training.data.
WindowDataset`), the sampler order on ``(seed, epoch)``, and the diffusion noise of a step on
``(seed, rank, step)`` -- so a run resumed from ``last.state.pt`` (mid-epoch included: the batches
already done are skipped) computes the same losses as an uninterrupted one on the same machine
and thread count. The global torch and CUDA RNG states are saved and restored too (nothing
here draws from numpy's or Python's global generators).

Mixed precision: ``train.amp = "auto"`` uses ``torch.autocast`` on CUDA (bfloat16 where the GPU
supports it, else float16 with a gradient scaler) and full precision on CPU; ``"bf16"`` forces
bfloat16 autocast (CPU included), ``"fp16"`` float16 (CUDA only), ``"off"`` none. Losses are always
computed in float32.

The library does not print: progress goes to the optional ``progress`` callback as
:class:`TrainEvent` values (the CLI draws tqdm bars from them).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from avsal_deploy.config import Config
from avsal_deploy.data.datasets import open_dataset
from avsal_deploy.errors import ConfigError, DatasetError, WeightsError
from avsal_deploy.losses import avrsp_loss, diffusion_mse_loss, sync_loss
from avsal_deploy.models.build import AVSaliencyModel, build_model
from avsal_deploy.models.weights import load_backbone_weights, load_checkpoint
from avsal_deploy.training.checkpoints import (
    load_training_state,
    save_training_state,
    save_weights,
    state_path,
)
from avsal_deploy.training.data import VideoInputs, WindowDataset
from avsal_deploy.training.evaluate import (
    VALIDATION_METRICS,
    dataset_inputs,
    evaluate_predictor,
    model_predictor,
)
from avsal_deploy.training.recipe import MODULE_NAMES, MONITOR_METRICS, Stage, TrainConfig

STATE_VERSION = 1


# ------------------------------------------------------------------------------ events
@dataclass(frozen=True)
class TrainEvent:
    """A progress report. ``kind``: ``stage`` (a stage starts; ``total`` = its epochs), ``epoch``
    (an epoch starts; ``total`` = its batches, ``done`` = batches already done when resuming),
    ``step`` (a batch is done; ``values`` = the step's losses and lr), ``val`` (validation done;
    ``values`` = metrics), ``end`` (training finished; ``values["stopped"]`` the reason)."""

    kind: str
    stage: str
    epoch: int
    step: int
    done: int = 0
    total: int = 0
    values: dict[str, Any] = field(default_factory=dict)


Progress = Callable[[TrainEvent], None]


@dataclass(frozen=True)
class TrainResult:
    """Where a run ended and what it produced."""

    out_dir: Path
    last_checkpoint: Path
    best_checkpoint: Path | None
    best_metric: float | None
    monitor: str
    steps: int
    epochs: int
    stopped: str  # "completed", "max_steps" or "early_stop" (of the last stage)
    seconds: float  # wall time of the whole run, summed over resumed sessions


# ------------------------------------------------------------------------------ distributed
@dataclass(frozen=True)
class DistContext:
    """This process's place in the job (a single process: rank 0 of 1)."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str | None = None) -> DistContext:
    """Read torchrun's environment and initialise the process group when ``WORLD_SIZE > 1``.

    ``device`` ``None``/``"auto"``: ``cuda:<LOCAL_RANK>`` when CUDA is available, else CPU.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device in (None, "auto"):
        dev = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        dev = torch.device(device)
        if dev.type == "cuda" and dev.index is None:
            dev = torch.device(f"cuda:{local}")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistContext(rank, world, local, dev)


def _broadcast_object(ctx: DistContext, value: Any) -> Any:
    if not ctx.distributed:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _all_mean(ctx: DistContext, values: dict[str, float]) -> dict[str, float]:
    if not ctx.distributed or not values:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist(), strict=True)}


def _sync_buffers(ctx: DistContext, model: nn.Module) -> None:
    """Broadcast BatchNorm running statistics (all buffers) from rank 0."""
    if ctx.distributed:
        for buf in model.buffers():
            dist.broadcast(buf, src=0)


# ------------------------------------------------------------------------------ precision
@dataclass(frozen=True)
class Precision:
    enabled: bool
    dtype: torch.dtype
    scaler: bool

    @property
    def name(self) -> str:
        return (
            {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(self.dtype, "fp32")
            if self.enabled
            else "fp32"
        )


def resolve_precision(mode: str, device: torch.device) -> Precision:
    """The autocast settings for ``train.amp`` on ``device`` (see the module docstring)."""
    cuda = device.type == "cuda"
    if mode == "off" or (mode == "auto" and not cuda):
        return Precision(False, torch.float32, False)
    if mode == "bf16" or (mode == "auto" and torch.cuda.is_bf16_supported()):
        return Precision(True, torch.bfloat16, False)
    if not cuda:
        raise ConfigError(f"train.amp={mode!r}: float16 autocast needs a CUDA device (use 'bf16' or 'off')")
    return Precision(True, torch.float16, True)


# ------------------------------------------------------------------------------ objective
class SaliencyObjective(nn.Module):
    """The model and its training loss as one module: the unit DDP wraps.

    ``forward(frames, audio, target, x_t, t, envelope)`` returns ``{"loss", "oneshot", "diffusion",
    "sync"}`` (the last three detached, 0 where the variant has no such term). With ``sync_weight``
    and a fusion decoder with AV sync, the gate's synchrony map is read by a forward hook on the
    gate (the model's forward is unchanged) and supervised by :func:`~avsal_deploy.losses.sync_loss`. The network runs under autocast;
    losses are computed in float32. Both terms are always computed when the variant has them (a
    zero weight multiplies them), so every trainable parameter takes part in every step, as DDP
    requires.
    """

    def __init__(
        self,
        model: AVSaliencyModel,
        precision: Precision,
        kl_weight: float = 1.0,
        cc_weight: float = -0.1,
        sim_weight: float = -0.1,
    ) -> None:
        super().__init__()
        self.model = model
        self.precision = precision
        self.kl_weight, self.cc_weight, self.sim_weight = kl_weight, cc_weight, sim_weight
        self.oneshot_weight = 1.0
        self.diffusion_weight = 1.0
        self.sync_weight = 0.0

    def forward(
        self,
        frames: Tensor,
        audio: Tensor,
        target: Tensor,
        x_t: Tensor | None,
        t: Tensor | None,
        envelope: Tensor | None = None,
    ) -> dict[str, Tensor]:
        zero = torch.zeros((), device=target.device)
        gate = self.model.fusion.sync if self.model.fusion is not None else None
        seen: dict[str, tuple[Tensor, ...]] = {}
        hook = None
        if self.sync_weight and gate is not None:
            hook = gate.register_forward_hook(lambda _m, args, _out: seen.update(args=args))
        try:
            with torch.autocast(frames.device.type, self.precision.dtype, enabled=self.precision.enabled):
                cond = self.model.condition(frames, audio, envelope)
                x0 = self.model.denoise(x_t, t, cond) if self.model.unet is not None else None
                synchrony = gate.synchrony(*seen["args"]) if "args" in seen and gate is not None else None
        finally:
            if hook is not None:
                hook.remove()
        oneshot = zero
        if cond.one_shot is not None:
            oneshot = avrsp_loss(
                cond.one_shot.float(), target, self.kl_weight, self.cc_weight, self.sim_weight
            )
        diffusion = zero if x0 is None else diffusion_mse_loss(x0.float(), target)
        sync = zero if synchrony is None else sync_loss(synchrony, target)
        loss = self.oneshot_weight * oneshot + self.diffusion_weight * diffusion + self.sync_weight * sync
        return {
            "loss": loss,
            "oneshot": oneshot.detach(),
            "diffusion": diffusion.detach(),
            "sync": sync.detach(),
        }


def step_seed(seed: int, rank: int, step: int) -> int:
    """Seed of the diffusion noise of one step on one rank."""
    return int(np.random.SeedSequence((seed, rank, step)).generate_state(1)[0])


# ------------------------------------------------------------------------------ trainer
def he_initialise(model: AVSaliencyModel, modules: tuple[str, ...]) -> None:
    """Re-initialise every convolution of ``modules`` He-normal (fan-in, ReLU gain; zero bias).

    Why: the VGGish trunk (DiffSal's audio encoder, the public torchvggish layout) is six 3x3
    convolutions with ReLU and no normalisation. Under PyTorch's default init (Kaiming-uniform with
    a = sqrt(5), i.e. a variance gain of 1/3) each layer shrinks the signal, and from scratch its
    output is almost independent of the log-mel input (measured at the tiny profile: features of a
    soundtrack and of silence differ by a few percent, the map by 0.1 %), so the audio branch gets
    no useful gradient. He et al. 2015's init keeps the activation variance through ReLU layers.
    Public VGGish weights, when loaded afterwards, overwrite it.
    """
    for name in modules:
        module = getattr(model, name)
        if module is None:
            continue
        for layer in module.modules():
            if isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
                nn.init.kaiming_normal_(layer.weight, mode="fan_in", nonlinearity="relu")
                if layer.bias is not None:
                    nn.init.zeros_(layer.bias)


def _apply_freeze(model: AVSaliencyModel, frozen: tuple[str, ...]) -> list[nn.Parameter]:
    """Set ``requires_grad`` per module; return the trainable parameters."""
    for name in MODULE_NAMES:
        module = getattr(model, name)
        if module is not None:
            module.requires_grad_(name not in frozen)
    for name in frozen:  # sub-modules (recipe.PART_NAMES), e.g. the VGGish trunk of train.freeze_audio
        if "." in name:
            model.get_submodule(name).requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"every module of the model is frozen ({', '.join(frozen)}): nothing to train")
    return params


def _train_mode(model: AVSaliencyModel, frozen: tuple[str, ...]) -> None:
    """Train mode, except frozen modules stay in eval mode (their BatchNorm statistics stay fixed)."""
    model.train()
    for name in frozen:
        module = model.get_submodule(name) if "." in name else getattr(model, name)
        if module is not None:
            module.eval()


class Trainer:
    """Runs a recipe into ``out_dir`` (see the module docstring).

    ``resume=True`` continues from ``<out>/checkpoints/last.safetensors`` and its state file; a
    fresh run refuses an ``out_dir`` that already holds a checkpoint, so nothing is overwritten
    by accident. ``device`` ``None`` picks CUDA when available.
    """

    def __init__(
        self,
        recipe: TrainConfig,
        out_dir: str | Path,
        *,
        resume: bool = False,
        device: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.recipe = recipe
        self.out_dir = Path(out_dir)
        self.resume = resume
        self.device_name = device
        self.progress = progress
        self.config: Config = recipe.model_config()
        self.variant = recipe.model.variant
        self.ckpt_dir = self.out_dir / "checkpoints"
        self.last_path = self.ckpt_dir / "last.safetensors"
        self.best_path = self.ckpt_dir / "best.safetensors"
        self.log_path = self.out_dir / "metrics.jsonl"
        self.plot_path = self.out_dir / "metrics.png"

    # ------------------------------------------------------------------ helpers
    def _emit(self, event: TrainEvent) -> None:
        if self.progress is not None and self.ctx.is_main:
            self.progress(event)

    def _log(self, record: dict[str, Any]) -> None:
        if self.ctx.is_main:
            with self.log_path.open("a") as f:
                f.write(json.dumps(record) + "\n")

    def _truncate_log(self, step: int, epoch: int) -> None:
        """Drop log records written after the checkpoint being resumed (a crash leaves some)."""
        if not self.ctx.is_main or not self.log_path.is_file():
            return
        keep = []
        for line in self.log_path.read_text().splitlines():
            if not line.strip():
                continue
            rec = json.loads(line)
            if rec.get("step", 0) <= step and (rec.get("kind") == "train" or rec.get("epoch", 0) <= epoch):
                keep.append(line)
        self.log_path.write_text("".join(line + "\n" for line in keep))

    def _metadata(self, stage: Stage, metrics: dict[str, float] | None) -> dict[str, Any]:
        return {
            "audio": stage.audio,
            "stage": stage.name,
            "epoch": self.epoch,
            "step": self.step,
            "metrics": {
                k: v for k, v in (metrics or {}).items() if isinstance(v, float) and math.isfinite(v)
            },
            "recipe": self.recipe.to_dict(),
        }

    def _save(self, stage: Stage, batch_in_epoch: int, metrics: dict[str, float] | None) -> None:
        if not self.ctx.is_main:
            return
        self.ckpt_dir.mkdir(parents=True, exist_ok=True)
        save_weights(self.model, self.last_path, self.config, self.variant, self._metadata(stage, metrics))
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "step": self.step,
            "epoch": self.epoch,
            "stage": stage.index,
            "stage_epoch": self.stage_epoch,
            "batch_in_epoch": batch_in_epoch,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else {},
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "best": self.best,
            "bad_epochs": self.bad_epochs,
            "stopped": self.stopped,
            "seconds": self._seconds(),
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else [],
            },
            "recipe": self.recipe.to_json(),
        }
        save_training_state(state_path(self.last_path), state)

    def _open(self, root: str, name: str, split: str) -> Any:
        if not root:
            raise ConfigError("data.root is empty: set it in the recipe or with --set data.root=DIR")
        return open_dataset(root, name, split, self.recipe.data.fold)

    # ------------------------------------------------------------------ pieces of a stage
    def _scheduler(self, stage: Stage, steps_per_epoch: int) -> Any:
        """``plateau``: ReduceLROnPlateau on the monitored metric, stepped once per epoch (warm-up
        is applied by :meth:`_warmup`); ``cosine`` / ``constant``: a per-step LambdaLR of warm-up
        times a cosine decay to ``min_lr`` over the stage (or a constant)."""
        t = self.recipe.train
        if t.scheduler == "plateau":
            mode = "max" if MONITOR_METRICS[self._monitor()] else "min"
            return torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.optimizer,
                mode=mode,
                factor=t.plateau_factor,
                patience=t.plateau_patience,
                min_lr=t.min_lr,
            )
        total = stage.epochs * steps_per_epoch
        if t.max_steps:  # a step budget ends the stage earlier: decay over what it allows
            total = min(total, t.max_steps - self.stage_start_step)
        total = max(1, total)
        floor = t.min_lr / stage.lr
        cosine = t.scheduler == "cosine"

        def factor(step: int) -> float:
            warm = min(1.0, (step + 1) / t.warmup_steps) if t.warmup_steps else 1.0
            if not cosine:
                return warm
            progress = min(1.0, max(0.0, (step - t.warmup_steps) / max(1, total - t.warmup_steps)))
            return warm * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))

        return torch.optim.lr_scheduler.LambdaLR(self.optimizer, factor)

    def _monitor(self) -> str:
        """The monitored metric: ``train.monitor``, or the training loss without validation."""
        return self.recipe.train.monitor if self.recipe.data.val_split else "loss"

    def _warmup(self, stage: Stage, stage_step: int) -> None:
        """Linear warm-up over the first ``train.warmup_steps`` steps of a plateau-scheduled stage."""
        warm = self.recipe.train.warmup_steps
        if warm and stage_step < warm and self.recipe.train.scheduler == "plateau":
            for group in self.optimizer.param_groups:
                group["lr"] = stage.lr * (stage_step + 1) / warm

    def _validate(self, videos: list[VideoInputs]) -> dict[str, Any]:
        t = self.recipe.train
        predictor = model_predictor(
            self.model,
            None if t.val_steps < 0 else t.val_steps,
            t.val_batch_size,
            t.seed,
            self.ctx.device,
        )
        result = evaluate_predictor(
            predictor, videos, metrics=VALIDATION_METRICS, stride=self.recipe.data.val_stride, seed=t.seed
        )
        summary = result.summary()
        # The AVRSP objective evaluated with the MIT metrics of the predicted maps (the losses
        # module uses the same definitions), so "loss" can drive the plateau as in the paper.
        summary["loss"] = (
            t.kl_weight * summary["kld"] + t.cc_weight * summary["cc"] + t.sim_weight * summary["sim"]
        )
        return {**summary, "by_condition": result.by_condition()}

    # ------------------------------------------------------------------ main loop
    def _seconds(self) -> float:
        """Training wall time over every session of this run (resumed ones included)."""
        return self.seconds_before + time.monotonic() - self.t0

    def fit(self) -> TrainResult:
        """Train every stage (from the checkpoint when resuming) and return where it ended."""
        self.t0 = time.monotonic()
        self.seconds_before = 0.0
        self.ctx = setup_distributed(self.device_name)
        r, t = self.recipe, self.recipe.train
        torch.manual_seed(t.seed)
        self.model = build_model(self.config, self.variant)
        he_initialise(self.model, t.he_init)
        if r.frozen_audio_untrained() and not self.resume:
            raise ConfigError(
                "train.freeze_audio: the audio encoder would stay at its random initialisation; give its "
                "public weights (train.backbone_weights, e.g. torchvggish=<path>) or train.init_checkpoint"
            )
        for layout, path in r.backbone_layouts():
            load_backbone_weights(self.model, path, layout)
        self.model.to(self.ctx.device)
        self.precision = resolve_precision(t.amp, self.ctx.device)
        self.step = self.epoch = self.stage_epoch = 0
        self.best: float | None = None
        self.bad_epochs = 0
        self.stopped = "completed"
        start_stage, start_batch = 0, 0
        state: dict[str, Any] | None = None

        if self.resume:
            if not self.last_path.is_file():
                raise WeightsError(f"{self.last_path}: nothing to resume (no checkpoint in {self.out_dir})")
            load_checkpoint(self.model, self.last_path, self.config, self.variant)
            state = load_training_state(state_path(self.last_path))
            self.step, self.epoch = int(state["step"]), int(state["epoch"])
            self.stage_epoch = int(state["stage_epoch"])
            start_stage, start_batch = int(state["stage"]), int(state["batch_in_epoch"])
            self.best = state["best"]
            self.bad_epochs = int(state["bad_epochs"])
            self.seconds_before = float(state.get("seconds", 0.0))
            _restore_rng(state["rng"])
            self._truncate_log(self.step, self.epoch)
        else:
            if self.last_path.exists():
                raise ConfigError(
                    f"{self.last_path}: a run already exists in {self.out_dir}; pass --resume or another --out"
                )
            if t.init_checkpoint:
                load_checkpoint(self.model, t.init_checkpoint, self.config, self.variant)
            if self.ctx.is_main:
                self.out_dir.mkdir(parents=True, exist_ok=True)
                self.log_path.write_text("")
        if self.ctx.is_main:
            (self.out_dir / "recipe.json").write_text(r.to_json() + "\n")
            (self.out_dir / "config.json").write_text(self.config.to_json() + "\n")

        stages = r.resolved_stages()
        stage = stages[min(start_stage, len(stages) - 1)]
        for stage in stages[start_stage:]:
            resuming = state is not None and stage.index == start_stage
            if not resuming:
                self.stage_epoch, start_batch, self.bad_epochs = 0, 0, 0
                self.best = None
            self._run_stage(stage, state if resuming else None, start_batch)
            state = None
            if self.stopped == "max_steps":
                break

        if self.ctx.is_main:
            from avsal_deploy.training.plots import plot_metrics

            plot_metrics(self.log_path, self.plot_path)
        self._emit(TrainEvent("end", stage.name, self.epoch, self.step, values={"stopped": self.stopped}))
        if self.ctx.distributed:
            dist.barrier()
        return TrainResult(
            out_dir=self.out_dir,
            last_checkpoint=self.last_path,
            best_checkpoint=self.best_path if self.best_path.is_file() else None,
            best_metric=self.best,
            monitor=self._monitor(),
            steps=self.step,
            epochs=self.epoch,
            stopped=self.stopped,
            seconds=self._seconds(),
        )

    def _run_stage(self, stage: Stage, state: dict[str, Any] | None, start_batch: int) -> None:
        r, t, ctx = self.recipe, self.recipe.train, self.ctx
        self.stopped = "completed"
        train_set = self._open(stage.data_root, stage.data_name, r.data.train_split)
        dataset = WindowDataset(
            train_set,
            self.config,
            self.variant,
            windows_per_video=r.data.windows_per_video,
            audio=stage.audio,  # type: ignore[arg-type]
            flip=r.data.flip,
            channel_shuffle=r.data.channel_shuffle,
            seed=t.seed,
            cache=r.data.cache,
        )
        val_videos: list[VideoInputs] = []
        if r.data.val_split and ctx.is_main:
            val_set = self._open(stage.data_root, stage.data_name, r.data.val_split)
            val_videos = dataset_inputs(
                val_set,
                self.config,
                self.variant,
                stage.audio,
                r.data.val_max_videos,
                r.data.cache,  # type: ignore[arg-type]
            )
        per_step = t.batch_size * ctx.world_size
        steps_per_epoch = len(dataset) // per_step
        if steps_per_epoch < 1:
            raise DatasetError(
                f"{stage.data_root}: {len(dataset)} training windows per epoch are fewer than one global batch "
                f"({t.batch_size} x {ctx.world_size} processes); raise data.windows_per_video"
            )

        # the global step at which this stage started (also when resuming inside it)
        self.stage_start_step = self.step - self.stage_epoch * steps_per_epoch - start_batch
        params = _apply_freeze(self.model, stage.freeze)
        objective = SaliencyObjective(self.model, self.precision, t.kl_weight, t.cc_weight, t.sim_weight)
        objective.oneshot_weight = stage.oneshot_weight
        objective.diffusion_weight = stage.diffusion_weight
        objective.sync_weight = t.sync_weight
        runner: nn.Module = objective
        if ctx.distributed:
            ids = [ctx.device.index] if ctx.device.type == "cuda" else None
            runner = nn.parallel.DistributedDataParallel(objective, device_ids=ids)
        self.optimizer = torch.optim.AdamW(params, lr=stage.lr, betas=t.betas, weight_decay=t.weight_decay)
        self.scheduler = self._scheduler(stage, steps_per_epoch)
        self.scaler = torch.amp.GradScaler(ctx.device.type) if self.precision.scaler else None
        if state is not None:
            self.optimizer.load_state_dict(state["optimizer"])
            if self.scheduler is not None and state["scheduler"]:
                self.scheduler.load_state_dict(state["scheduler"])
            if self.scaler is not None and state["scaler"]:
                self.scaler.load_state_dict(state["scaler"])
            if state.get("stopped") == "early_stop":
                self.stopped = "early_stop"
                return
        self._emit(
            TrainEvent(
                "stage",
                stage.name,
                self.epoch,
                self.step,
                self.stage_epoch,
                stage.epochs,
                {"max_steps": t.max_steps},
            )
        )
        monitor = self._monitor()
        higher = MONITOR_METRICS[monitor]
        generator = torch.Generator(device=ctx.device)
        metrics: dict[str, Any] | None = None

        while self.stage_epoch < stage.epochs:
            dataset.set_epoch(self.epoch)
            sampler = DistributedSampler(
                dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=t.seed, drop_last=True
            )
            sampler.set_epoch(self.epoch)
            order = list(sampler)[: steps_per_epoch * t.batch_size]
            loader = DataLoader(
                dataset,
                batch_size=t.batch_size,
                sampler=order[start_batch * t.batch_size :],
                num_workers=r.data.num_workers,
                drop_last=True,
                pin_memory=ctx.device.type == "cuda",
            )
            self._emit(TrainEvent("epoch", stage.name, self.epoch, self.step, start_batch, steps_per_epoch))
            _train_mode(self.model, stage.freeze)
            window: dict[str, float] = {}
            epoch_sum, epoch_n = 0.0, 0
            batch_in_epoch = start_batch
            for batch in loader:
                if t.max_steps and self.step >= t.max_steps:  # resumed at or beyond the budget
                    self.stopped = "max_steps"
                    break
                self._warmup(stage, self.stage_epoch * steps_per_epoch + batch_in_epoch)
                losses = self._train_step(runner, batch, generator)
                self.step += 1
                batch_in_epoch += 1
                lr = self.optimizer.param_groups[0]["lr"]
                values = {k: float(v) for k, v in losses.items()}
                for k, v in values.items():
                    window[k] = window.get(k, 0.0) + v
                epoch_sum += values["loss"]
                epoch_n += 1
                if isinstance(self.scheduler, torch.optim.lr_scheduler.LambdaLR):
                    self.scheduler.step()
                self._emit(
                    TrainEvent(
                        "step",
                        stage.name,
                        self.epoch,
                        self.step,
                        batch_in_epoch,
                        steps_per_epoch,
                        {**values, "lr": lr},
                    )
                )
                if self.step % t.log_every == 0:
                    n = t.log_every
                    mean = _all_mean(ctx, {k: v / n for k, v in window.items()})
                    self._log(
                        {
                            "kind": "train",
                            "stage": stage.name,
                            "epoch": self.epoch,
                            "step": self.step,
                            "lr": lr,
                            **mean,
                        }
                    )
                    window = {}
                if t.max_steps and self.step >= t.max_steps:
                    self.stopped = "max_steps"
                    break
                if (
                    t.checkpoint_every
                    and self.step % t.checkpoint_every == 0
                    and batch_in_epoch < steps_per_epoch
                ):
                    self._save(stage, batch_in_epoch, metrics)
            start_batch = 0
            if self.stopped == "max_steps" and batch_in_epoch < steps_per_epoch:
                _sync_buffers(ctx, self.model)
                self._save(stage, batch_in_epoch, metrics)
                return

            # ---- end of epoch: validation, LR plateau, best / early stop, checkpoint
            self.epoch += 1
            self.stage_epoch += 1
            _sync_buffers(ctx, self.model)
            train_loss = _all_mean(ctx, {"loss": epoch_sum / max(epoch_n, 1)})["loss"]
            metrics = {"loss": train_loss, "train_loss": train_loss}
            if val_videos or (r.data.val_split and not ctx.is_main):
                val = self._validate(val_videos) if ctx.is_main else None
                val = _broadcast_object(ctx, val)
                metrics.update({k: v for k, v in val.items() if k != "by_condition"})
                self._log({"kind": "val", "stage": stage.name, "epoch": self.epoch, "step": self.step, **val})
                self._emit(TrainEvent("val", stage.name, self.epoch, self.step, values=val))
            self._log(
                {
                    "kind": "epoch",
                    "stage": stage.name,
                    "epoch": self.epoch,
                    "step": self.step,
                    "train_loss": train_loss,
                    "lr": self.optimizer.param_groups[0]["lr"],
                }
            )
            value = float(metrics[monitor])
            if isinstance(self.scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                self.scheduler.step(value)
            improved = self.best is None or (
                value > self.best + t.min_delta if higher else value < self.best - t.min_delta
            )
            if improved and math.isfinite(value):
                self.best, self.bad_epochs = value, 0
                if ctx.is_main:
                    self.ckpt_dir.mkdir(parents=True, exist_ok=True)
                    save_weights(
                        self.model, self.best_path, self.config, self.variant, self._metadata(stage, metrics)
                    )
            else:
                self.bad_epochs += 1
            if t.early_stop_patience and self.bad_epochs >= t.early_stop_patience:
                self.stopped = "early_stop"
            self._save(stage, 0, metrics)
            if ctx.is_main:
                from avsal_deploy.training.plots import plot_metrics

                plot_metrics(self.log_path, self.plot_path)
            if self.stopped in ("early_stop", "max_steps"):
                return

    def _train_step(
        self, runner: nn.Module, batch: dict[str, Tensor], generator: torch.Generator
    ) -> dict[str, Tensor]:
        dev = self.ctx.device
        frames = batch["frames"].to(dev, non_blocking=True)
        audio = batch["audio"].to(dev, non_blocking=True)
        target = batch["map"].to(dev, non_blocking=True)
        envelope = batch["envelope"].to(dev, non_blocking=True) if "envelope" in batch else None
        x_t = t_idx = None
        if self.model.unet is not None:
            generator.manual_seed(step_seed(self.recipe.train.seed, self.ctx.rank, self.step))
            x_t, t_idx, _ = self.model.scheduler.q_sample_training(target, generator)
        out = runner(frames, audio, target, x_t, t_idx, envelope)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.step}")
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
        else:
            loss.backward()
        if self.recipe.train.grad_clip > 0:
            nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.recipe.train.grad_clip
            )
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return {k: v.detach() for k, v in out.items()}


# ------------------------------------------------------------------------------ RNG state
def _restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
