"""Video in, saliency maps out: the window planner, preprocessing, an engine and the sampler.

:class:`Predictor` does not know which engine runs the networks (torch, ONNX Runtime, TensorRT,
Triton); :func:`open_engine` picks one for a checkpoint, exporting and caching the ONNX
components on first use for the embedded ONNX Runtime default. :func:`predict_to_directory` is
what ``avsal predict`` runs: every output is written into a private temporary directory and moved
into place only when all of it is complete, so a failed run leaves no partial files and loses
nothing written before.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy import __version__
from avsal_deploy.data.preprocess import (
    audio_inputs,
    envelope_inputs,
    gather_clips,
    postprocess_maps,
    preprocess_frames,
)
from avsal_deploy.data.video import VideoData, iter_frames, read_video
from avsal_deploy.engine.base import Engine
from avsal_deploy.errors import AvsalError, MediaError
from avsal_deploy.models.build import resolve_steps
from avsal_deploy.windows import WindowPlan, plan

Progress = Callable[[int, int], None]
ENGINES = ("onnxruntime", "torch", "triton")
DEFAULT_CHECKPOINT = Path(__file__).parent / "assets" / "hybrid-synthetic.safetensors"


@dataclass
class Prediction:
    """Maps for every frame of a video; full-resolution maps are made on demand per frame."""

    window_maps: np.ndarray  # [n_windows, h, w] at model size, in [0, 1]
    plan: WindowPlan
    source_size: tuple[int, int]  # (H, W) of the video
    fps: float
    timestamps: np.ndarray
    steps: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return self.plan.n_frames

    def map_at(self, frame: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Frame ``frame``'s map as float32 [H, W] in [0, 1] (source size unless ``size``)."""
        m = self.window_maps[self.plan.assignment[frame]]
        return postprocess_maps(m[None], size or self.source_size)[0]

    def maps(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """All maps [N, H, W]; for long high-resolution videos prefer :meth:`map_at`."""
        return np.stack([self.map_at(i, size) for i in range(self.n_frames)])


class Predictor:
    """Runs an :class:`Engine` over every window of a video.

    The same x_T is used for every window of a video (drawn from ``seed``): the maps are
    reproducible and consecutive frames do not flicker from independent sampling noise.
    """

    def __init__(
        self,
        engine: Engine,
        steps: int | None = None,
        stride: int | None = None,
        batch_size: int = 1,
        seed: int = 0,
        letterbox: bool = False,
    ) -> None:
        if batch_size < 1:
            raise AvsalError(f"batch_size={batch_size}: must be >= 1")
        self.engine = engine
        self.config = engine.config
        self.variant = engine.variant
        self.steps = resolve_steps(self.config, self.variant, steps)
        self.stride = stride
        self.batch_size = batch_size
        self.seed = seed
        self.letterbox = letterbox

    def read(self, path: str | os.PathLike[str]) -> VideoData:
        """Decode ``path`` straight to the model's frame size (cheap even for 4K)."""
        v = self.config.video
        size = None if self.letterbox else (v.height, v.width)
        return read_video(path, size=size, max_side=max(v.height, v.width) if self.letterbox else None)

    def predict(self, video: VideoData, progress: Progress | None = None) -> Prediction:
        timings = {"preprocess": 0.0, "inference": 0.0}
        t0 = time.perf_counter()
        pre = preprocess_frames(video.frames, self.config, self.letterbox)
        timings["preprocess"] += time.perf_counter() - t0
        windows = plan(video.n_frames, self.config, self.variant, stride=self.stride)
        n = len(windows.windows)
        out = np.zeros((n, self.config.video.height, self.config.video.width), np.float32)
        noise1 = self.engine.make_noise(1, self.seed)
        for first in range(0, n, self.batch_size):
            batch = windows.windows[first : first + self.batch_size]
            t0 = time.perf_counter()
            frames = gather_clips(pre, batch)
            audio = audio_inputs(video, batch, self.config, self.variant)
            envelope = envelope_inputs(video, batch, self.config, self.variant)
            t1 = time.perf_counter()
            noise = np.repeat(noise1, len(batch), axis=0)
            maps = self.engine.predict_window(frames, audio, self.steps, noise, envelope=envelope)
            t2 = time.perf_counter()
            out[first : first + len(batch)] = maps[:, 0]
            timings["preprocess"] += t1 - t0
            timings["inference"] += t2 - t1
            if progress is not None:
                progress(min(first + len(batch), n), n)
        return Prediction(out, windows, video.source_size, video.fps, video.timestamps, self.steps, timings)


# ----------------------------------------------------------------------------- engines
def cache_root() -> Path:
    """Where exported ONNX components are cached (``$AVSAL_CACHE``, else ~/.cache/avsal)."""
    return Path(os.environ.get("AVSAL_CACHE") or Path.home() / ".cache" / "avsal")


def cached_export(checkpoint: Path, on_export: Callable[[Path], None] | None = None) -> Path:
    """The export directory of ``checkpoint``, exporting it once (keyed by content and version)."""
    from avsal_deploy.export.onnx import export_model, sha256_file
    from avsal_deploy.models.build import load_pretrained

    digest = sha256_file(checkpoint)
    directory = cache_root() / "exports" / f"{digest[:16]}-{__version__}"
    manifest = directory / "manifest.json"
    if manifest.exists():
        recorded = json.loads(manifest.read_text()).get("checkpoint") or {}
        if recorded.get("sha256") == digest:
            return directory
    model = load_pretrained(checkpoint)  # refuses a bad checkpoint before any export work
    if on_export is not None:
        on_export(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=directory.parent))
    try:
        export_model(model, tmp, checkpoint=checkpoint)
        shutil.rmtree(directory, ignore_errors=True)
        tmp.rename(directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return directory


def open_engine(
    engine: str = "onnxruntime",
    checkpoint: str | os.PathLike[str] | None = None,
    export_dir: str | os.PathLike[str] | None = None,
    triton_url: str | None = None,
    on_export: Callable[[Path], None] | None = None,
) -> Engine:
    """An engine for ``checkpoint`` (default: the shipped synthetic-data checkpoint).

    ``onnxruntime`` uses ``export_dir`` when given, else exports the checkpoint into the cache on
    first use; ``torch`` runs the checkpoint eagerly; ``triton`` talks to a server at
    ``triton_url`` serving a repository made from ``export_dir`` (``avsal triton-repo``).
    """
    from avsal_deploy import engine as engines

    if engine not in ENGINES:
        raise AvsalError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine == "triton":
        from avsal_deploy.serving.client import open_triton

        return open_triton(triton_url or "127.0.0.1:8000", export_dir=export_dir)
    if export_dir is not None:
        return engines.open(export_dir, backend=engine)
    ckpt = Path(checkpoint) if checkpoint is not None else DEFAULT_CHECKPOINT
    if not ckpt.is_file():
        raise AvsalError(f"{ckpt}: no such checkpoint file")
    if engine == "torch":
        from avsal_deploy.engine.eager import TorchEngine
        from avsal_deploy.models.build import load_pretrained

        return TorchEngine(load_pretrained(ckpt))
    return engines.open(cached_export(ckpt, on_export), backend="onnxruntime")


# ----------------------------------------------------------------------------- outputs
def check_writable(out_dir: Path) -> None:
    """Fail before any work when ``out_dir`` cannot be created or written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".avsal-probe-"):
            pass
    except OSError as exc:
        raise AvsalError(f"{out_dir}: output directory is not writable ({exc.strerror or exc})") from exc


def predict_to_directory(
    video_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    predictor: Predictor,
    *,
    overlay: bool = True,
    pngs: bool = True,
    overlay_max_side: int = 1280,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Predict ``video_path`` and write maps.npz, maps/*.png, overlay.mp4, contact_sheet.png and
    summary.json into ``out_dir``; returns the summary."""
    from avsal_deploy import outputs

    video_path, out = Path(video_path), Path(out_dir)
    check_writable(out)
    t_start = time.perf_counter()
    video = predictor.read(video_path)
    t_decoded = time.perf_counter()
    pred = predictor.predict(video, progress)
    t_pred = time.perf_counter()
    H, W = video.source_size
    tmp = Path(tempfile.mkdtemp(prefix=".avsal-", dir=out))
    try:
        last: dict[str, Any] = {"i": -1, "m": None}

        def map_at(i: int) -> np.ndarray:  # consecutive frames often share a window: reuse
            if last["i"] != i:
                last["i"], last["m"] = i, pred.map_at(i)
            return last["m"]

        with outputs.MapWriter(tmp / "maps.npz", (H, W), video.fps) as writer:
            for i in range(pred.n_frames):
                writer.write(map_at(i), pred.timestamps[i])
        if pngs:
            (tmp / "maps").mkdir()
            for i in range(pred.n_frames):
                outputs.write_map_png(tmp / "maps", i, map_at(i))
        written = ["maps.npz", *(["maps"] if pngs else [])]
        if overlay:
            size = outputs.overlay_size((H, W), overlay_max_side)
            picks = set(np.linspace(0, pred.n_frames - 1, min(8, pred.n_frames)).round().astype(int).tolist())
            thumbs: dict[int, np.ndarray] = {}

            def source() -> Iterator[tuple[np.ndarray, float]]:  # keep the contact sheet's frames
                for i, (frame, t) in enumerate(iter_frames(video_path, max_side=max(size))):
                    if i in picks:
                        thumbs[i] = frame
                    yield frame, t

            n = outputs.write_overlay(
                tmp / "overlay.mp4",
                source(),
                map_at,
                video.fps,
                size,
                video.audio if video.has_audio else None,
                video.audio_rate,
            )
            if n != pred.n_frames:
                raise MediaError(f"{video_path}: decoded {n} frames for the overlay, {pred.n_frames} before")
            shown = sorted(thumbs)
            outputs.contact_sheet(
                tmp / "contact_sheet.png",
                [thumbs[i] for i in shown],
                [pred.map_at(i, thumbs[i].shape[:2]) for i in shown],
                [f"#{i + 1} {pred.timestamps[i]:.2f}s" for i in shown],
            )
            written += ["overlay.mp4", "contact_sheet.png"]
        t_end = time.perf_counter()
        summary = {
            "video": str(video_path),
            "frames": pred.n_frames,
            "fps": video.fps,
            "size": [H, W],
            "has_audio": video.has_audio,
            "engine": predictor.engine.backend,
            "variant": predictor.variant,
            "profile": predictor.config.profile,
            "steps": pred.steps,
            "stride": pred.plan.stride,
            "windows": len(pred.plan.windows),
            "seconds": round(t_end - t_start, 3),
            "timings": {
                "decode": round(t_decoded - t_start, 3),
                **{k: round(v, 3) for k, v in pred.timings.items()},
                "write": round(t_end - t_pred, 3),
            },
            "frames_per_second": round(pred.n_frames / max(t_pred - t_decoded, 1e-9), 3),
            "avsal_version": __version__,
        }
        (tmp / "summary.json").write_text(json.dumps(summary, indent=2))
        for name in [*written, "summary.json"]:
            dest = out / name
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(tmp / name, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return summary
