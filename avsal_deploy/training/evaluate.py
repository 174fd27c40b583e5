"""Evaluation with the MIT saliency metrics, per video, per condition and per data set.

A predictor maps a video's windows to maps; :func:`evaluate_predictor` scores them against the
ground truth at its stored size (:func:`avsal_deploy.metrics.evaluate_frames` resizes the
prediction, never the ground truth). Three predictors are provided: any
engine with the deployed noise policy (:func:`engine_predictor`: one x_T per video shared by its
windows, as ``avsal predict`` and ``avsal score`` run; ``avsal eval`` and the training loop's
validation both run it, on the engine :func:`open_eval_engine` opens -- torch, ONNX Runtime,
TensorRT or Triton), a trained model in process with fresh noise per window
(:func:`model_predictor`, windows batched, encoders once per window, a generator seeded per
video; ``avsal eval --noise per-window``) and the centre-bias baseline (:func:`center_predictor`, one Gaussian centred map for every frame). The per-video
scoring rule (:func:`frame_metrics`) is shared with ``avsal score --gt``.

Which frames are scored: the windows of :func:`avsal_deploy.windows.plan` at ``stride``; at stride
1 that is every frame of every video (causal windows, reversed for the first frames, exactly as
inference runs), at stride k every k-th frame plus the last one (used for quick validation).

Averaging (stated because published evaluations differ): a video's value is the mean over its
scored frames, NaN frames omitted (frames without fixations, constant predictions); a data set's
or a condition's value is the mean over its videos (every video weighs the same, the STAViS /
ViNet convention; :func:`avsal_deploy.metrics.aggregate` with ``mode="per_video"``).

sAUC negatives come from fixations of OTHER videos of the evaluated set with the same frame size
(10 frames drawn per scored frame): frames of the same video share its particular bias.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from avsal_deploy.config import Config
from avsal_deploy.data.datasets import SaliencyDataset, open_dataset
from avsal_deploy.engine.base import Engine
from avsal_deploy.engine.choice import EngineChoice
from avsal_deploy.errors import ConfigError
from avsal_deploy.metrics import METRIC_NAMES, EvalResult, frame_metrics
from avsal_deploy.models.build import AVSaliencyModel
from avsal_deploy.pipeline import PredictOptions, normalize_map
from avsal_deploy.training.data import AudioMode, VideoInputs, check_audio_mode
from avsal_deploy.windows import Window, plan

#: Metrics computed unless asked otherwise (all the MIT metrics the field reports).
DEFAULT_METRICS: tuple[str, ...] = METRIC_NAMES
#: Cheap metrics for validation during training (batched, no per-frame ROC).
VALIDATION_METRICS: tuple[str, ...] = ("cc", "nss", "kld", "sim")
#: Candidate widths of the centre-bias Gaussian (fractions of frame height / width).
CENTER_SIGMAS: tuple[float, ...] = (0.1, 0.15, 0.2, 0.25, 0.3, 0.4, 0.5, 0.7, 1.0)
DEFAULT_CENTER_SIGMA = 0.25
_SAUC_OTHERS = 10

#: Evaluation's defaults, those of every command: the config's DDIM steps and window stride,
#: seed 0, one window per engine call (the numbers ``avsal score --gt`` reports).
EVAL_OPTIONS = PredictOptions()

#: ``predict(video, windows) -> maps [len(windows), h, w]`` (any size; scored at the GT size).
Predictor = Callable[[VideoInputs, Sequence[Window]], np.ndarray]
#: ``progress(done, total, video_name)`` after each video.
EvalProgress = Callable[[int, int, str], None]


# --------------------------------------------------------------------------- predictors
def model_predictor(
    model: AVSaliencyModel, options: PredictOptions = EVAL_OPTIONS, device: str | torch.device = "cpu"
) -> Predictor:
    """A predictor running ``model`` (eval mode, no grad) on batches of ``options.batch_size``
    windows, with ``options.steps`` DDIM steps (None: the config's; 0: the one-shot map on
    ``hybrid``).

    DDIM noise is drawn afresh for every window, from a generator seeded by ``options.seed`` and
    the video name, so every video's maps are reproducible whatever order videos are scored in.
    """
    n_steps = model.resolve_steps(options.steps)
    seed, batch_size = options.seed, options.batch_size

    def predict(video: VideoInputs, windows: Sequence[Window]) -> np.ndarray:
        entropy = (seed, *video.name.encode())  # the whole name: no collisions between videos
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence(entropy).generate_state(1)[0]))
        out = []
        was_training = model.training
        model.eval()
        with torch.no_grad():
            for first in range(0, len(windows), batch_size):
                chunk = windows[first : first + batch_size]
                frames = torch.from_numpy(np.stack([video.clip(w) for w in chunk])).to(device)
                audio = torch.from_numpy(np.stack([video.audio_input(w) for w in chunk])).to(device)
                envelope = None
                if video.uses_envelope:
                    envelope = torch.from_numpy(np.stack([video.envelope(w) for w in chunk])).to(device)
                noise = None
                if n_steps > 0:
                    noise = torch.randn((len(chunk), *model.config.map_shape()), generator=generator)
                    noise = noise.to(device)
                maps = model(frames, audio, steps=n_steps, noise=noise, envelope=envelope)
                out.append(maps[:, 0].float().cpu().numpy())
        model.train(was_training)
        return np.concatenate(out)

    return predict


def engine_predictor(engine: Engine, options: PredictOptions = EVAL_OPTIONS) -> Predictor:
    """A predictor running any :class:`~avsal_deploy.engine.base.Engine` (torch, ONNX Runtime,
    TensorRT, Triton) on batches of ``options.batch_size`` windows with the DEPLOYED noise policy:
    one x_T per video, drawn from ``options.seed`` by :meth:`Engine.make_noise` and shared by all
    its windows, exactly as :class:`avsal_deploy.pipeline.Predictor` (``avsal predict`` /
    ``avsal score``) does.
    """
    steps, seed, batch_size = options.steps, options.seed, options.batch_size

    def predict(video: VideoInputs, windows: Sequence[Window]) -> np.ndarray:
        noise1 = engine.make_noise(1, seed)
        out = []
        for first in range(0, len(windows), batch_size):
            chunk = windows[first : first + batch_size]
            frames = np.stack([video.clip(w) for w in chunk])
            audio = np.stack([video.audio_input(w) for w in chunk])
            envelope = np.stack([video.envelope(w) for w in chunk]) if engine.uses_envelope else None
            noise = np.repeat(noise1, len(chunk), axis=0)
            maps = engine.predict_window(frames, audio, steps, noise, envelope=envelope)
            out += [normalize_map(m) for m in np.asarray(maps, np.float32)[:, 0]]  # as the frame flow does
        return np.stack(out)

    return predict


def center_bias_map(shape: tuple[int, int], sigma: float = DEFAULT_CENTER_SIGMA) -> np.ndarray:
    """A Gaussian centred in a ``shape`` frame, std ``sigma`` times the height / width; max 1."""
    if sigma <= 0:
        raise ConfigError(f"centre-bias sigma={sigma}: must be > 0")
    h, w = shape
    y = (np.arange(h) - (h - 1) / 2) / (sigma * h)
    x = (np.arange(w) - (w - 1) / 2) / (sigma * w)
    return np.exp(-0.5 * (y[:, None] ** 2 + x[None, :] ** 2)).astype(np.float32)


def center_predictor(sigma: float = DEFAULT_CENTER_SIGMA) -> Predictor:
    """The centre-bias baseline: the same centred Gaussian for every frame (at the model size)."""

    def predict(video: VideoInputs, windows: Sequence[Window]) -> np.ndarray:
        return np.broadcast_to(center_bias_map(video.size, sigma), (len(windows), *video.size)).copy()

    return predict


def fit_center_sigma(
    videos: Sequence[VideoInputs], sigmas: Sequence[float] = CENTER_SIGMAS, stride: int = 4
) -> float:
    """The centre-bias width with the best mean CC on ``videos`` (pass TRAINING videos)."""
    if not videos:
        raise ConfigError("fit_center_sigma: no videos")
    scores = []
    for sigma in sigmas:
        result = evaluate_predictor(center_predictor(sigma), videos, metrics=("cc",), stride=stride)
        scores.append(result.summary()["cc"])
    return float(sigmas[int(np.nanargmax(scores))])


# --------------------------------------------------------------------------- scoring
def _sauc_pool(videos: Sequence[VideoInputs]) -> dict[str, np.ndarray]:
    return {v.name: v.native_annotations()[1] for v in videos}


def _other_fixations(
    pool: dict[str, np.ndarray], video: str, frames: Sequence[int], seed: int
) -> Callable[[int], np.ndarray]:
    shape = pool[video].shape[1:]
    others = [
        (name, k)
        for name, fix in pool.items()
        if name != video and fix.shape[1:] == shape
        for k in range(len(fix))
    ]

    def other(i: int) -> np.ndarray:
        if not others:  # a single video: fall back to its other frames
            own = pool[video]
            idx = [k for k in range(len(own)) if k != frames[i]] or [frames[i]]
            picks = np.random.default_rng((seed, i)).choice(
                idx, size=min(_SAUC_OTHERS, len(idx)), replace=False
            )
            return own[picks].any(axis=0)
        rng = np.random.default_rng((seed, i))
        picks = rng.choice(len(others), size=min(_SAUC_OTHERS, len(others)), replace=False)
        return np.any([pool[others[j][0]][others[j][1]] for j in picks], axis=0)

    return other


def evaluate_predictor(
    predict: Predictor,
    videos: Sequence[VideoInputs],
    *,
    metrics: Sequence[str] = DEFAULT_METRICS,
    stride: int = 1,
    seed: int = 0,
    progress: EvalProgress | None = None,
) -> EvalResult:
    """Score ``predict`` on ``videos`` (see the module docstring for frames and averaging)."""
    metrics = tuple(metrics)
    unknown = [m for m in metrics if m not in METRIC_NAMES]
    if unknown or not metrics:
        raise ConfigError(f"unknown metric(s) {unknown}: choose from {', '.join(METRIC_NAMES)}")
    result = EvalResult(metrics=metrics)
    pool = _sauc_pool(videos) if "sauc" in metrics else {}
    for n, video in enumerate(videos, start=1):
        windows = plan(video.n_frames, video.config, video.variant, stride=stride).windows
        targets = [w.target for w in windows]
        preds = predict(video, windows)
        maps, fixations = video.native_annotations()
        other = _other_fixations(pool, video.name, targets, seed) if pool else None
        result.per_frame[video.name] = frame_metrics(preds, targets, maps, fixations, metrics, other, seed)
        result.conditions[video.name] = video.condition
        result.frames[video.name] = targets
        if progress is not None:
            progress(n, len(videos), video.name)
    return result


def dataset_inputs(
    dataset: SaliencyDataset,
    config: Config,
    variant: str,
    audio: AudioMode = "real",
    max_videos: int = 0,
    cache: bool = True,
) -> list[VideoInputs]:
    """:class:`VideoInputs` for the videos of ``dataset`` (the first ``max_videos`` if > 0)."""
    records = list(dataset)[: max_videos or None]
    return [VideoInputs(r, config, variant, audio, cache) for r in records]


@dataclass(frozen=True)
class CheckpointEvaluation:
    """What :func:`evaluate_checkpoint` measured and how."""

    checkpoint: str
    dataset: str
    split: str
    variant: str
    profile: str
    steps: int
    stride: int
    audio: str
    result: EvalResult
    engine: str = "torch"
    noise: str = "per-video"

    def to_dict(self) -> dict[str, Any]:
        head = {k: getattr(self, k) for k in ("checkpoint", "dataset", "split", "variant", "profile")}
        return {
            **head,
            "engine": self.engine,
            "noise": self.noise,
            "steps": self.steps,
            "stride": self.stride,
            "audio": self.audio,
            **self.result.to_dict(),
        }


#: ``per-video``: one x_T per video shared by its windows (what every deployed engine does);
#: ``per-window``: fresh noise per window from a per-video generator (the in-process torch model only).
NOISE_POLICIES: tuple[str, ...] = ("per-video", "per-window")


def open_eval_engine(
    choice: EngineChoice,
    model: AVSaliencyModel,
    checkpoint: str | Path,
    *,
    device: str | torch.device = "cpu",
) -> Engine:
    """The engine that runs ``model`` (loaded from ``checkpoint``) for evaluation, as ``choice`` says.

    ``torch``: ``model`` itself in process (:class:`~avsal_deploy.engine.eager.TorchEngine`; an
    export directory is refused, it would be ignored). ``onnxruntime`` / ``tensorrt``: the export
    directory when given -- refused unless its manifest records this very checkpoint (content
    hash), or at least, when it records none, the same architecture -- else the checkpoint exported
    once into the cache. ``triton``: the server at the choice's URL (same architecture required).
    A backend this machine cannot run (TensorRT without an NVIDIA GPU) raises its clear
    BackendUnavailableError.
    """
    if choice.backend == "torch":
        if choice.export is not None:
            raise ConfigError(
                f"engine torch runs the checkpoint {checkpoint} in process: --export {choice.export} "
                "is for onnxruntime / tensorrt"
            )
        return choice.open(model=model, device=device)
    if choice.export is not None and not choice.remote:
        from avsal_deploy.specs import read_manifest, sha256_file

        manifest = read_manifest(choice.export)[0]
        recorded = (manifest.get("checkpoint") or {}).get("sha256")
        if recorded is not None and recorded != sha256_file(checkpoint):
            raise ConfigError(
                f"{choice.export}: exported from another checkpoint ({manifest['checkpoint'].get('path')}), "
                f"not {checkpoint}; export it with `avsal export` or omit --export"
            )
    opened = choice.open()
    if opened.config.architecture_fingerprint() != model.config.architecture_fingerprint():
        opened.close()
        raise ConfigError(f"{choice.backend} engine: its model is not the architecture of {checkpoint}")
    return opened


def evaluate_checkpoint(
    checkpoint: str | Path,
    root: str | Path,
    name: str = "synthetic",
    split: str = "test",
    *,
    fold: int = 1,
    options: PredictOptions = EVAL_OPTIONS,
    audio: str | None = None,
    metrics: Sequence[str] = DEFAULT_METRICS,
    device: str | torch.device = "cpu",
    progress: EvalProgress | None = None,
    engine: EngineChoice | str = "torch",
    noise: str = "per-video",
) -> CheckpointEvaluation:
    """Load a trained checkpoint and score it on one split of a data set.

    ``options``: DDIM steps (None: the checkpoint's config), the window stride (which frames are
    scored: every ``stride``-th, None: the config's window stride, 1 in every profile), the seed of
    the sampling noise and the windows per engine call. ``audio=None`` uses the audio mode the
    checkpoint was trained with (its ``audio`` metadata: a visual-only twin is tested on silence),
    ``"real"`` or ``"silent"`` force one.

    ``engine`` runs the networks (:class:`~avsal_deploy.engine.choice.EngineChoice`, or a backend
    name): ``torch`` (the checkpoint in process, on ``device``), ``onnxruntime`` (the choice's
    export directory, else the checkpoint exported once into the cache), ``tensorrt`` (an export
    directory with plans) or ``triton`` (the server at the choice's URL serving the checkpoint's
    export). ``noise`` is the sampling-noise policy (:data:`NOISE_POLICIES`); the default is the
    deployed one, so the numbers are those ``avsal score --gt`` reports.
    """
    from avsal_deploy.training.checkpoints import load_trained_model

    choice = engine if isinstance(engine, EngineChoice) else EngineChoice.of(engine)
    if noise not in NOISE_POLICIES:
        raise ConfigError(f"noise policy {noise!r}: choose one of {', '.join(NOISE_POLICIES)}")
    if noise == "per-window" and choice.backend != "torch":
        raise ConfigError(f"noise policy per-window runs the torch model only, not engine {choice.backend!r}")
    model, config, variant, meta = load_trained_model(checkpoint, device)
    mode = check_audio_mode(audio if audio is not None else str(meta.get("audio", "real")))
    dataset = open_dataset(root, name, split, fold)
    videos = dataset_inputs(dataset, config, variant, mode)  # type: ignore[arg-type]
    n_steps = model.resolve_steps(options.steps)
    stride = options.stride if options.stride is not None else config.window.stride
    resolved = PredictOptions(steps=n_steps, stride=stride, seed=options.seed, batch_size=options.batch_size)
    opened: Engine | None = None
    if noise == "per-window":
        predictor = model_predictor(model, resolved, device)
    else:
        if not choice.remote and choice.export is None and choice.checkpoint is None:
            choice = EngineChoice(choice.backend, checkpoint=str(checkpoint))
        opened = open_eval_engine(choice, model, checkpoint, device=device)
        predictor = engine_predictor(opened, resolved)
    try:
        result = evaluate_predictor(
            predictor, videos, metrics=metrics, stride=stride, seed=options.seed, progress=progress
        )
    finally:
        if opened is not None:
            opened.close()
    return CheckpointEvaluation(
        checkpoint=str(checkpoint),
        dataset=dataset.name,
        split=split,
        variant=variant,
        profile=config.profile,
        steps=n_steps,
        stride=stride,
        audio=mode,
        result=result,
        engine=choice.backend,
        noise=noise,
    )
