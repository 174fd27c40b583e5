"""Video in, saliency maps out: one frame flow for files, batch scoring and live streams.

Every frame takes the same path, wherever it comes from::

    decoder (frame by frame, audio chunks beside it)
      -> StreamWindower (windows as they become ready: the offline plan's rule)
      -> engine (ready windows in batches; encoders once per window, DDIM over the UNet step)
      -> FrameMap per frame, in order (stride: the nearest computed map)
      -> writers (maps.npz, PNGs, overlay with the audio), on their own thread

:class:`FrameFlow` is that path for one stream: push a frame (and the audio that came with it),
get back the maps of every frame now settled. :class:`Predictor` drives a flow from a file
(:meth:`Predictor.run`), and :func:`predict_to_directory` (``avsal predict``, batch scoring)
writes what it yields. The Triton stream model runs a :class:`FrameFlow` per sequence, so offline
and live maps are the same by construction. Memory is bounded by the window length and the
batch, not by the video's length: frames are decoded one at a time, the windower keeps a ring of
``L`` preprocessed frames and the audio they need, and written maps are dropped.

The library never prints and imports no torch: engines come from :func:`avsal_deploy.engine.open`.
"""

from __future__ import annotations

import json
import os
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy import interrupt
from avsal_deploy._version import __version__
from avsal_deploy.config import resolve_steps
from avsal_deploy.data.preprocess import postprocess_map, postprocess_maps
from avsal_deploy.data.source import ArraySource, MediaSource, Timings
from avsal_deploy.data.stream import StreamWindow, StreamWindower
from avsal_deploy.engine.base import Engine
from avsal_deploy.errors import AvsalError, MediaError
from avsal_deploy.outputs import PredictionWriter, Progress, check_writable, fit_frame

MAP_SIZES = ("source", "model")


@dataclass(frozen=True)
class PredictOptions:
    """How the maps of a video or stream are computed; the same for every engine and every command.

    - ``steps``: DDIM steps per window (None: the config's ``diffusion.sampling_steps``; 0: the
      one-shot map of a hybrid model, and always for a family without a Saliency-UNet);
    - ``stride``: run the networks for every K-th frame only, the others show the nearest computed
      map (None: the config's ``window.stride``);
    - ``seed``: the sampling noise x_T of a video (or stream) is drawn from it, once, and shared
      by all its windows: maps are reproducible and do not flicker;
    - ``batch_size``: windows per engine call (windows wait until a batch is full or the video ends).

    Invalid values raise :class:`~avsal_deploy.errors.AvsalError` when the options are made.
    """

    steps: int | None = None
    stride: int | None = None
    seed: int = 0
    batch_size: int = 1

    def __post_init__(self) -> None:
        if self.steps is not None and self.steps < 0:
            raise AvsalError(f"steps={self.steps}: must be >= 0")
        if self.stride is not None and self.stride < 1:
            raise AvsalError(f"stride={self.stride}: must be >= 1")
        if self.seed < 0:
            raise AvsalError(f"seed={self.seed}: must be >= 0")
        if self.batch_size < 1:
            raise AvsalError(f"batch_size={self.batch_size}: must be >= 1")


@dataclass(frozen=True)
class FrameMap:
    """The map of one frame, at the model's size, in [0, 1] (clamped and min-max normalised)."""

    index: int
    timestamp: float  # seconds from the first frame
    saliency: np.ndarray  # float32 [h, w]
    source: int  # the frame whose window computed it (== index at stride 1)
    frame: np.ndarray | None = None  # the decoded RGB frame, when the flow keeps frames


class FrameFlow:
    """One stream's frames to maps: windower, batched engine calls, maps in frame order.

    Args:
        engine: any :class:`~avsal_deploy.engine.base.Engine`.
        fps: the stream's nominal frame rate; ``audio_rate``: the pushed audio's sample rate;
            ``audio_start``: when its first sample plays, on the clock of the pushed timestamps
            (default: with the first frame; see :class:`~avsal_deploy.data.stream.StreamWindower`).
        options: steps, stride, seed and batch size (:class:`PredictOptions`). The same x_T (from
            the seed) serves every window of the stream.
        letterbox: as :class:`Predictor`.
        keep_frames: hand each pushed frame back in its :class:`FrameMap` (for overlays).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        fps: float,
        audio_rate: int | None = None,
        options: PredictOptions | None = None,
        letterbox: bool = False,
        keep_frames: bool = False,
        timings: Timings | None = None,
        audio_start: float | None = None,
    ) -> None:
        options = options if options is not None else PredictOptions()
        self.engine = engine
        self.options = options
        self.steps = resolve_steps(engine.config, engine.variant, options.steps)
        self.batch_size = options.batch_size
        self.windower = StreamWindower(
            engine.config,
            engine.variant,
            fps=fps,
            audio_rate=audio_rate,
            stride=options.stride,
            letterbox=letterbox,
            audio_start=audio_start,
        )
        self.keep_frames = keep_frames
        self.timings = timings if timings is not None else Timings()
        self.noise1 = engine.make_noise(1, options.seed) if self.steps > 0 else None
        self._ready: list[StreamWindow] = []
        self._maps: dict[int, np.ndarray] = {}
        self._times: dict[int, float] = {}
        self._frames: dict[int, np.ndarray] = {}
        self._next = 0

    @property
    def n_frames(self) -> int:
        return self.windower.n_frames

    @property
    def pending(self) -> int:
        """Frames pushed whose maps have not been returned yet."""
        return self.windower.n_frames - self._next

    def push(
        self,
        frame: np.ndarray,
        audio: np.ndarray | None = None,
        timestamp: float | None = None,
        keep: np.ndarray | None = None,
        run: bool = True,
    ) -> list[FrameMap]:
        """Add the next frame (uint8 RGB [H, W, 3]) and its audio; the maps now settled, in order.

        With ``keep_frames``, ``keep`` (default: the frame itself, e.g. a smaller copy for an
        overlay) comes back in the frame's :class:`FrameMap`. ``run=False`` leaves the ready
        windows queued for a caller that batches several flows (:func:`run_windows`,
        :meth:`take_ready`, then :meth:`collect`) and returns nothing: every settled map, also one
        that needed no new window (a strided frame showing an earlier target's map), comes from
        that :meth:`collect`."""
        index = self.windower.n_frames
        t0 = time.perf_counter()
        ready = self.windower.push(frame, audio, timestamp)
        self.timings.preprocess += time.perf_counter() - t0
        self._times[index] = self.windower.frame_time(index)
        if self.keep_frames:
            self._frames[index] = frame if keep is None else keep
        self._ready.extend(ready)
        if not run:
            return []
        if len(self._ready) >= self.batch_size:
            self._run(whole_batches=True)
        return self.collect()

    def flush(self, run: bool = True) -> list[FrameMap]:
        """End of stream: every remaining frame's map (``run=False``: see :meth:`push`)."""
        t0 = time.perf_counter()
        self._ready.extend(self.windower.flush())
        self.timings.preprocess += time.perf_counter() - t0
        if not run:
            return []
        self._run(whole_batches=False)
        return self.collect()

    def take_ready(self) -> list[StreamWindow]:
        """The queued ready windows (removed from the flow): run them and :meth:`accept` the maps."""
        ready, self._ready = self._ready, []
        return ready

    def accept(self, window: StreamWindow, saliency: np.ndarray) -> None:
        """The engine's map [h, w] of one of this flow's windows."""
        self._maps[window.window.target] = normalize_map(saliency)

    def _run(self, whole_batches: bool) -> None:
        n = len(self._ready) - (len(self._ready) % self.batch_size if whole_batches else 0)
        jobs = [(self, w) for w in self._ready[:n]]
        self._ready = self._ready[n:]
        t0 = time.perf_counter()
        run_windows(self.engine, jobs, self.batch_size)
        self.timings.inference += time.perf_counter() - t0

    def collect(self) -> list[FrameMap]:
        """The maps of the frames settled so far and not yet returned, in frame order."""
        out = []
        while self._next < self.windower.n_frames:
            src = self.windower.source_of(self._next)
            if src is None or src not in self._maps:
                break
            i = self._next
            out.append(FrameMap(i, self._times.pop(i), self._maps[src], src, self._frames.pop(i, None)))
            for t in [t for t in self._maps if t < src]:  # later frames show src or a later map
                del self._maps[t]
            self._next += 1
        return out


def run_windows(engine: Engine, jobs: list[tuple[FrameFlow, StreamWindow]], batch_size: int) -> None:
    """Run the windows of one or many flows through ``engine`` in batches of up to ``batch_size``
    (windows of concurrent streams share engine calls) and hand each map to its flow.

    Windows are grouped by their flow's DDIM steps; each row's x_T is its own flow's.
    """
    by_steps: dict[int, list[tuple[FrameFlow, StreamWindow]]] = {}
    for job in jobs:
        by_steps.setdefault(job[0].steps, []).append(job)
    for steps, group in by_steps.items():
        for first in range(0, len(group), batch_size):
            batch = group[first : first + batch_size]
            frames = np.stack([w.clip for _, w in batch])
            audio = np.stack([w.audio for _, w in batch])
            envelope = np.stack([w.envelope for _, w in batch]) if batch[0][1].envelope is not None else None
            noise = None if steps == 0 else np.concatenate([f.noise1 for f, _ in batch])
            maps = engine.predict_window(frames, audio, steps, noise, envelope=envelope)
            for (flow, w), m in zip(batch, maps[:, 0], strict=True):
                flow.accept(w, m)


def normalize_map(m: np.ndarray) -> np.ndarray:
    """A model map clamped to [0, 1] and min-max normalised (a constant map becomes zeros)."""
    return postprocess_maps(np.asarray(m, np.float32)[None], m.shape[-2:])[0]


# ----------------------------------------------------------------------------- files
class Predictor:
    """Runs an :class:`Engine` over every window of a video through one :class:`FrameFlow`.

    The same x_T is used for every window of a video (drawn from ``options.seed``): the maps are
    reproducible and consecutive frames do not flicker from independent sampling noise.
    ``letterbox`` pads frames to the model's aspect ratio instead of stretching them. The options
    may also be given by name (``Predictor(engine, stride=4)``), not both ways at once.
    """

    def __init__(
        self,
        engine: Engine,
        options: PredictOptions | None = None,
        *,
        letterbox: bool = False,
        **fields: Any,
    ) -> None:
        if fields and options is not None:
            raise AvsalError(f"Predictor: give options or {', '.join(sorted(fields))}, not both")
        self.engine = engine
        self.config = engine.config
        self.variant = engine.variant
        self.options = options if options is not None else PredictOptions(**fields)
        self.steps = resolve_steps(self.config, self.variant, self.options.steps)
        self.stride = self.options.stride
        self.letterbox = letterbox

    def flow(
        self,
        fps: float,
        audio_rate: int | None = None,
        keep_frames: bool = False,
        timings: Timings | None = None,
        audio_start: float | None = None,
    ) -> FrameFlow:
        """A :class:`FrameFlow` with this predictor's settings (one per stream)."""
        return FrameFlow(
            self.engine,
            fps=fps,
            audio_rate=audio_rate,
            audio_start=audio_start,
            options=self.options,
            letterbox=self.letterbox,
            keep_frames=keep_frames,
            timings=timings,
        )

    def run(
        self,
        source: MediaSource,
        keep_frames: bool = False,
        timings: Timings | None = None,
        keep_max_side: int | None = None,
    ) -> Iterator[tuple[list[FrameMap], np.ndarray]]:
        """Decode ``source`` once, frame by frame, through a flow: per decoded frame, the maps now
        settled and the audio chunk that came with the frame (the last item: the flushed maps and
        the rest of the soundtrack). ``keep_frames`` hands the decoded frames back in the maps,
        scaled down to ``keep_max_side`` (longest side) when larger."""
        timings = timings if timings is not None else Timings()
        flow = self.flow(source.fps, source.audio_rate, keep_frames, timings)
        for frame, ts, chunk in source.media(timings):
            interrupt.check()  # a stop request discards the video in flight
            keep = fit_frame(frame, keep_max_side) if keep_frames and keep_max_side else None
            yield flow.push(frame, chunk, ts, keep), chunk
        if flow.n_frames == 0:
            raise MediaError(f"{source.path}: no decodable video frame")
        yield flow.flush(), source.rest_of_audio()

    def predict(self, path: str | os.PathLike[str]) -> Prediction:
        """All maps of a video (model size, in memory): for API use on short clips; long videos
        go through :meth:`run` or :func:`predict_to_directory`."""
        source = MediaSource(path)
        timings = Timings()
        try:
            maps = [fm for out, _ in self.run(source, timings=timings) for fm in out]
        finally:
            source.close()
        return Prediction(
            np.stack([fm.saliency for fm in maps]),
            np.asarray([fm.source for fm in maps]),
            source.source_size,
            source.fps,
            np.asarray([fm.timestamp for fm in maps]),
            self.steps,
            timings.as_dict(),
        )


@dataclass
class Prediction:
    """Maps for every frame of a video at the model's size; :meth:`maps` at any size."""

    frame_maps: np.ndarray  # [N, h, w] in [0, 1]
    sources: np.ndarray  # [N] the frame whose window computed each map
    source_size: tuple[int, int]  # (H, W) of the video
    fps: float
    timestamps: np.ndarray
    steps: int
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.frame_maps.shape[0])

    @property
    def targets(self) -> list[int]:
        """The frames whose windows were computed (every frame at stride 1)."""
        return sorted({int(s) for s in self.sources})

    def map_at(self, frame: int, size: tuple[int, int] | None = None) -> np.ndarray:
        """Frame ``frame``'s map as float32 [H, W] in [0, 1] (source size unless ``size``)."""
        return postprocess_map(self.frame_maps[frame], size or self.source_size)

    def maps(self, size: tuple[int, int] | None = None) -> np.ndarray:
        """All maps [N, H, W] at the video's size (or ``size``)."""
        return postprocess_maps(self.frame_maps, size or self.source_size)


# ----------------------------------------------------------------------------- writing
def peak_rss_mb() -> float:
    """This process's peak resident set size so far, MiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def predict_to_directory(
    video_path: str | os.PathLike[str] | MediaSource | ArraySource,
    out_dir: str | os.PathLike[str],
    predictor: Predictor,
    *,
    overlay: bool = False,
    pngs: bool = False,
    overlay_max_side: int = 1280,
    map_size: str = "model",
    progress: Progress | None = None,
    observe: Callable[[FrameMap], None] | None = None,
) -> dict[str, Any]:
    """Predict ``video_path`` and write ``maps.npz`` (:class:`avsal_deploy.outputs.MapWriter`),
    ``maps/*.png``, ``overlay.mp4``, ``contact_sheet.png`` and ``summary.json`` into ``out_dir``;
    returns the summary (its ``files`` lists what was written).

    One pass over the file: each decoded frame goes through the flow and, with its map, to the
    writers (:class:`~avsal_deploy.outputs.PredictionWriter`): everything is written into a private
    temporary directory and moved into place only when all of it is complete, so a failed run
    leaves no partial files and loses nothing written before. ``map_size``: ``"model"`` (default)
    stores maps at the model's size, the information the network computed (``load_maps`` resizes
    them to the video's size), ``"source"`` upsampled to the video's size (about 100x the bytes and
    the deflate time at 720p). ``progress(frames written, frames expected)``; ``observe(frame_map)``
    sees every :class:`FrameMap` as it is settled. ``video_path`` may also be an opened source
    (:class:`~avsal_deploy.data.source.MediaSource`, :class:`~avsal_deploy.data.source.ArraySource`
    for frames in memory); it is closed here.
    """
    if map_size not in MAP_SIZES:
        raise AvsalError(f"map_size={map_size!r}: choose one of {', '.join(MAP_SIZES)}")
    t_start = time.perf_counter()
    timings = Timings()
    out = Path(out_dir)
    check_writable(out)
    source = video_path if isinstance(video_path, MediaSource | ArraySource) else MediaSource(video_path)
    try:
        model_size = (predictor.config.video.height, predictor.config.video.width)
        with PredictionWriter(
            out,
            source_size=source.source_size,
            fps=source.fps,
            audio_rate=source.audio_rate if source.has_audio else 0,
            map_size=source.source_size if map_size == "source" else model_size,
            pngs=pngs,
            overlay=overlay,
            overlay_max_side=overlay_max_side,
            estimated_frames=source.estimated_frames,
            timings=timings,
            progress=progress,
        ) as writer:
            n_frames = _write_maps(source, predictor, writer, overlay, overlay_max_side, timings, observe)
            writer.finish()
            t_end = time.perf_counter()
            summary = {
                "video": str(source.path),
                "frames": n_frames,
                "fps": source.fps,
                "size": list(source.source_size),
                "map_size": list(writer.map_size),
                "has_audio": source.has_audio,
                "engine": predictor.engine.backend,
                "variant": predictor.variant,
                "profile": predictor.config.profile,
                "steps": predictor.steps,
                "stride": predictor.stride or predictor.config.window.stride,
                "seconds": round(t_end - t_start, 3),
                "timings": timings.as_dict(),
                "frames_per_second": round(n_frames / max(t_end - t_start, 1e-9), 3),
                "peak_rss_mb": round(peak_rss_mb(), 1),
                "avsal_version": __version__,
            }
            summary["files"] = writer.publish({"summary.json": json.dumps(summary, indent=2)})
    finally:
        source.close()
    return summary


def _write_maps(
    source: MediaSource | ArraySource,
    predictor: Predictor,
    writer: PredictionWriter,
    keep_frames: bool,
    keep_max_side: int,
    timings: Timings,
    observe: Callable[[FrameMap], None] | None,
) -> int:
    """Run ``source`` through ``predictor`` into ``writer``; the number of maps written."""
    n_frames = 0
    for maps, chunk in predictor.run(
        source, keep_frames=keep_frames, timings=timings, keep_max_side=keep_max_side
    ):
        writer.add_audio(chunk)
        for fm in maps:
            if observe is not None:
                observe(fm)
            writer.add_map(fm.index, fm.timestamp, fm.saliency, fm.frame)
        n_frames += len(maps)
    return n_frames
