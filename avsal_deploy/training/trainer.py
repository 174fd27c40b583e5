"""The training loop: stages, epochs, validation, checkpoints, resumption.

One :class:`Trainer` runs a :class:`~avsal_deploy.training.recipe.TrainConfig` into an output
folder::

    <out>/recipe.json              the resolved recipe (every value, after overrides)
    <out>/config.json              the model config
    <out>/metrics.jsonl            one JSON record per log interval ("train"), epoch ("epoch") and
                                   validation ("val")
    <out>/metrics.png              loss and validation-metric curves (matplotlib, if installed)
    <out>/checkpoints/last.safetensors + last.state.pt    resumable
    <out>/checkpoints/best.safetensors                    best validation ``train.monitor``

The pieces it drives live beside it: :mod:`~avsal_deploy.training.distributed` (torchrun, DDP,
rank-0 validation and writing), :mod:`~avsal_deploy.training.precision` (autocast, the gradient
scaler, the optimiser step), :mod:`~avsal_deploy.training.objective` (the losses per variant) and
:mod:`~avsal_deploy.training.evaluate` (validation, the same code as ``avsal eval``). The
per-process batch is ``train.batch_size``.

Determinism and resumption: all training randomness is counter-based -- a window's frames, target
and augmentation depend on ``(seed, epoch, index)`` (:class:`~avsal_deploy.training.data.
WindowDataset`), the sampler order on ``(seed, epoch)``, and the diffusion noise of a step on
``(seed, rank, step)`` -- so a run resumed from ``last.state.pt`` (mid-epoch included: the batches
already done are skipped) computes the same losses as an uninterrupted one on the same machine
and thread count. The global torch and CUDA RNG states are saved and restored too (nothing
here draws from numpy's or Python's global generators).

The library does not print: progress goes to the optional ``progress`` callback as
:class:`TrainEvent` values (the CLI draws tqdm bars from them).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from avsal_deploy import interrupt
from avsal_deploy.config import Config
from avsal_deploy.data.datasets import open_dataset
from avsal_deploy.engine.base import Engine
from avsal_deploy.engine.choice import EngineChoice
from avsal_deploy.errors import ConfigError, DatasetError, WeightsError
from avsal_deploy.models.build import AVSaliencyModel, build_model
from avsal_deploy.models.weights import load_backbone_weights, load_checkpoint
from avsal_deploy.pipeline import PredictOptions
from avsal_deploy.training.checkpoints import (
    load_training_state,
    save_training_state,
    save_weights,
    state_path,
)
from avsal_deploy.training.data import VideoInputs, WindowDataset
from avsal_deploy.training.distributed import (
    all_mean,
    any_rank,
    barrier,
    broadcast_object,
    setup_distributed,
    sync_buffers,
    wrap_ddp,
)
from avsal_deploy.training.evaluate import (
    VALIDATION_METRICS,
    dataset_inputs,
    engine_predictor,
    evaluate_predictor,
    open_eval_engine,
)
from avsal_deploy.training.objective import SaliencyObjective, diffusion_inputs
from avsal_deploy.training.precision import optimizer_step, resolve_precision
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
    # "completed", "max_steps", "early_stop" (of the last stage) or "interrupted" (a stop request,
    # avsal_deploy.interrupt: the resumable checkpoint of the last finished step is written)
    stopped: str
    seconds: float  # wall time of the whole run, summed over resumed sessions


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
        self._val_engine: Engine | None = None
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
        """Score the model on the validation videos with the code of ``avsal eval``: the model in
        process as an engine (:func:`~avsal_deploy.training.evaluate.open_eval_engine`) with the
        deployed noise policy (one x_T per video from ``train.seed``, shared by its windows)."""
        t = self.recipe.train
        if self._val_engine is None:  # holds the model's own modules: weights stay current
            choice = EngineChoice("torch", checkpoint=str(self.last_path))
            self._val_engine = open_eval_engine(choice, self.model, self.last_path, device=self.ctx.device)
        self.model.eval()  # the next epoch's _train_mode puts it back (frozen modules stay in eval)
        options = PredictOptions(
            steps=None if t.val_steps < 0 else t.val_steps, seed=t.seed, batch_size=t.val_batch_size
        )
        predictor = engine_predictor(self._val_engine, options)
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
        self._val_engine = None
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
        self._interrupted = False
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
            if self.stopped in ("max_steps", "interrupted"):
                break

        if self.ctx.is_main:
            from avsal_deploy.training.plots import plot_metrics

            plot_metrics(self.log_path, self.plot_path)
        self._emit(TrainEvent("end", stage.name, self.epoch, self.step, values={"stopped": self.stopped}))
        barrier(self.ctx)
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
        self.stopped = "completed"
        dataset, val_videos, steps_per_epoch = self._stage_data(stage)
        # the global step at which this stage started (also when resuming inside it)
        self.stage_start_step = self.step - self.stage_epoch * steps_per_epoch - start_batch
        runner = self._stage_optimisation(stage, steps_per_epoch)
        if state is not None:
            self._restore_optimisation(state)
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
                {"max_steps": self.recipe.train.max_steps},
            )
        )
        generator = torch.Generator(device=self.ctx.device)
        metrics: dict[str, Any] | None = None
        while self.stage_epoch < stage.epochs:
            epoch = self._run_epoch(stage, dataset, runner, generator, steps_per_epoch, start_batch, metrics)
            start_batch = 0
            if epoch is None:  # the step budget ended the stage mid-epoch (checkpoint written)
                return
            metrics = self._end_epoch(stage, val_videos, *epoch)
            if self._interrupted:
                self.stopped = "interrupted"
            if self.stopped in ("early_stop", "max_steps", "interrupted"):
                return

    def _stop_requested(self) -> bool:
        """Whether a stop was requested (SIGINT / SIGTERM under the CLI) on any rank: every rank
        stops after the same step."""
        return any_rank(self.ctx, interrupt.requested())

    def _stage_data(self, stage: Stage) -> tuple[WindowDataset, list[VideoInputs], int]:
        """The stage's training windows, its validation videos (rank 0) and its steps per epoch."""
        r, t, ctx = self.recipe, self.recipe.train, self.ctx
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
        return dataset, val_videos, steps_per_epoch

    def _stage_optimisation(self, stage: Stage, steps_per_epoch: int) -> nn.Module:
        """Freeze the stage's modules, build its objective (DDP-wrapped in a multi-process job),
        optimiser, scheduler and gradient scaler; return the module a step calls."""
        t = self.recipe.train
        self.params = _apply_freeze(self.model, stage.freeze)
        objective = SaliencyObjective.for_stage(self.model, self.precision, t, stage)
        runner = wrap_ddp(self.ctx, objective)
        self.optimizer = torch.optim.AdamW(
            self.params, lr=stage.lr, betas=t.betas, weight_decay=t.weight_decay
        )
        self.scheduler = self._scheduler(stage, steps_per_epoch)
        self.scaler = self.precision.grad_scaler(self.ctx.device)
        return runner

    def _restore_optimisation(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state["scheduler"]:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state["scaler"]:
            self.scaler.load_state_dict(state["scaler"])

    def _epoch_loader(self, dataset: WindowDataset, steps_per_epoch: int, start_batch: int) -> DataLoader:
        """This rank's batches of the current epoch, from batch ``start_batch`` on."""
        r, t, ctx = self.recipe, self.recipe.train, self.ctx
        dataset.set_epoch(self.epoch)
        sampler = DistributedSampler(
            dataset, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=t.seed, drop_last=True
        )
        sampler.set_epoch(self.epoch)
        order = list(sampler)[: steps_per_epoch * t.batch_size]
        return DataLoader(
            dataset,
            batch_size=t.batch_size,
            sampler=order[start_batch * t.batch_size :],
            num_workers=r.data.num_workers,
            drop_last=True,
            pin_memory=ctx.device.type == "cuda",
        )

    def _run_epoch(
        self,
        stage: Stage,
        dataset: WindowDataset,
        runner: nn.Module,
        generator: torch.Generator,
        steps_per_epoch: int,
        start_batch: int,
        metrics: dict[str, Any] | None,
    ) -> tuple[float, int] | None:
        """Train one epoch (from ``start_batch``); return the sum and count of its step losses, or
        None when the step budget ends it early (the resumable checkpoint is then written)."""
        t, ctx = self.recipe.train, self.ctx
        loader = self._epoch_loader(dataset, steps_per_epoch, start_batch)
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
                mean = all_mean(ctx, {k: v / t.log_every for k, v in window.items()})
                record = {
                    "kind": "train",
                    "stage": stage.name,
                    "epoch": self.epoch,
                    "step": self.step,
                    "lr": lr,
                }
                self._log({**record, **mean})
                window = {}
            if t.max_steps and self.step >= t.max_steps:
                self.stopped = "max_steps"
                break
            if self._stop_requested():
                self._interrupted = True
                if batch_in_epoch < steps_per_epoch:  # at the epoch's end, the epoch ends as usual
                    self.stopped = "interrupted"
                break
            if (
                t.checkpoint_every
                and self.step % t.checkpoint_every == 0
                and batch_in_epoch < steps_per_epoch
            ):
                self._save(stage, batch_in_epoch, metrics)
        if self.stopped in ("max_steps", "interrupted") and batch_in_epoch < steps_per_epoch:
            sync_buffers(ctx, self.model)
            self._save(stage, batch_in_epoch, metrics)
            return None
        return epoch_sum, epoch_n

    def _end_epoch(
        self, stage: Stage, val_videos: list[VideoInputs], epoch_sum: float, epoch_n: int
    ) -> dict[str, Any]:
        """End of epoch: validation, LR plateau, best / early stop, checkpoint; return the metrics."""
        r, t, ctx = self.recipe, self.recipe.train, self.ctx
        monitor = self._monitor()
        higher = MONITOR_METRICS[monitor]
        self.epoch += 1
        self.stage_epoch += 1
        sync_buffers(ctx, self.model)
        train_loss = all_mean(ctx, {"loss": epoch_sum / max(epoch_n, 1)})["loss"]
        metrics: dict[str, Any] = {"loss": train_loss, "train_loss": train_loss}
        if val_videos or (r.data.val_split and not ctx.is_main):
            val = self._validate(val_videos) if ctx.is_main else None
            val = broadcast_object(ctx, val)
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
        return metrics

    def _train_step(
        self, runner: nn.Module, batch: dict[str, Tensor], generator: torch.Generator
    ) -> dict[str, Tensor]:
        dev = self.ctx.device
        frames = batch["frames"].to(dev, non_blocking=True)
        audio = batch["audio"].to(dev, non_blocking=True)
        target = batch["map"].to(dev, non_blocking=True)
        envelope = batch["envelope"].to(dev, non_blocking=True) if "envelope" in batch else None
        x_t, t_idx = diffusion_inputs(
            self.model, target, generator, self.recipe.train.seed, self.ctx.rank, self.step
        )
        out = runner(frames, audio, target, x_t, t_idx, envelope)
        loss = out["loss"]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss is {loss.item()} at step {self.step}")
        optimizer_step(
            loss, self.optimizer, self.scaler, self.params, self.recipe.train.grad_clip, self.precision
        )
        return {k: v.detach() for k, v in out.items()}


# ------------------------------------------------------------------------------ RNG state
def _restore_rng(rng: dict[str, Any]) -> None:
    torch.set_rng_state(rng["torch"])
    if rng.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
