"""``avsal_stream``: live frames in, maps out, under Triton's sequence batcher.

The model runs the library's one frame flow (:class:`~avsal_deploy.pipeline.FrameFlow`) per
stream over the repository's window engine (:mod:`avsal_deploy.serving.window_engine`), so a
stream's maps are the maps ``avsal predict`` gives for the same frames and audio.

``avsal_stream`` sits under Triton's sequence batcher (``START`` / ``END`` / ``CORRID`` control
inputs). Per correlation id an instance keeps one flow (a
:class:`~avsal_deploy.data.stream.StreamWindower` ring of ``L`` preprocessed frames and the audio
they need: bounded memory). Each request carries one decoded frame (``frame`` UINT8 [H, W, 3],
RGB; the first frame fixes the size) and the audio that came with it (``audio`` FP32 [n], n >= 0);
the first request may set ``audio_rate`` (INT32, default 16000), ``fps`` (FP64, default 25),
``audio_start`` (FP64: when the first audio sample plays, on the clock of the frames'
``timestamp`` inputs; default: with the first frame; a client that demuxes a file itself sends its
audio track's start time, as a file's soundtrack is aligned to its first frame offline),
``steps``, ``stride``, ``seed`` and ``roi_codec`` (BYTES, ``x264`` or ``x265``). The response has
the maps of every frame whose window became ready (``maps`` FP32 [K, h, w] at the model's size,
``frame_index`` INT64 [K]), with ``roi_codec`` their temporally smoothed QP offset grids for the
stream's frame size (``qp_offsets`` FP32 [K, rows, cols], negative = more bits,
:class:`avsal_deploy.roi.mapping.OffsetSmoother`; [K, 0, 0] without), and ``streams`` (INT32 [1],
live streams on this instance); the END request flushes the start-up frames, so every frame of a
stream gets exactly one map. Windows of the streams in one batch of requests go through the
networks together (:func:`~avsal_deploy.pipeline.run_windows`).

A stream idle for longer than ``stream_idle_timeout_s`` is dropped (its state freed); Triton's own
``max_sequence_idle_microseconds`` is set to the same timeout, so a late request for it is refused
("must specify the START flag"). A new START on a live correlation id starts the stream afresh.

Limits (model config parameters, each refused with a clear error): ``max_pixels`` per frame,
``max_streams`` per instance, ``max_steps``, ``max_stride``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from avsal_deploy.errors import AvsalError
from avsal_deploy.pipeline import FrameFlow, PredictOptions, Predictor, run_windows
from avsal_deploy.serving.contract import (
    AUDIO_INPUT,
    AUDIO_RATE_INPUT,
    AUDIO_START_INPUT,
    CORRID_CONTROL,
    DEFAULT_AUDIO_RATE,
    DEFAULT_FPS,
    END_CONTROL,
    FPS_INPUT,
    FRAME_INDEX_OUTPUT,
    FRAME_INPUT,
    MAPS_OUTPUT,
    QP_OFFSETS_OUTPUT,
    ROI_CODEC_INPUT,
    ROI_CODECS,
    SEED_INPUT,
    START_CONTROL,
    STEPS_INPUT,
    STREAM_LIMITS,
    STREAM_MODEL,
    STREAMS_OUTPUT,
    STRIDE_INPUT,
    TIMESTAMP_INPUT,
    WINDOW_BATCH_PARAMETER,
    RequestError,
    error_response,
    limits_of,
    parameter,
    scalar,
)

#: ``get(name)``: a request's input by name (None when the request does not send it).
Getter = Callable[[str], "np.ndarray | None"]


def request_options(get: Getter, limits: Mapping[str, float], model: str, batch_size: int) -> PredictOptions:
    """The ``steps``, ``stride`` and ``seed`` a request (a stream's first, or a video's) asks
    for, checked against the model's limits, with the model's window batch."""
    steps = scalar(get(STEPS_INPUT), int, STEPS_INPUT, None)
    stride = scalar(get(STRIDE_INPUT), int, STRIDE_INPUT, None)
    seed = scalar(get(SEED_INPUT), int, SEED_INPUT, 0)
    if steps is not None and not 0 <= steps <= limits["max_steps"]:
        raise RequestError(f"{model}: steps={steps} outside [0, {int(limits['max_steps'])}]")
    if stride is not None and not 1 <= stride <= limits["max_stride"]:
        raise RequestError(f"{model}: stride={stride} outside [1, {int(limits['max_stride'])}]")
    if seed < 0:
        raise RequestError(f"{model}: seed={seed} must be >= 0")
    return PredictOptions(steps=steps, stride=stride, seed=seed, batch_size=batch_size)


def check_frame(frame: np.ndarray, limits: Mapping[str, float], model: str) -> np.ndarray:
    """One RGB uint8 [H, W, 3] frame within the pixel limit (Triton checks dtype and rank)."""
    if frame.ndim != 3 or frame.shape[-1] != 3 or frame.dtype != np.uint8:
        raise RequestError(f"{model}: frame must be UINT8 [H, W, 3], got {frame.dtype} {list(frame.shape)}")
    h, w = frame.shape[:2]
    if h < 1 or w < 1:
        raise RequestError(f"{model}: empty frame {list(frame.shape)}")
    if h * w > limits["max_pixels"]:
        raise RequestError(f"{model}: frame of {w}x{h} exceeds max_pixels={int(limits['max_pixels'])}")
    return np.ascontiguousarray(frame)


def check_audio(audio: np.ndarray | None, model: str) -> np.ndarray | None:
    """A request's audio as float32 [n], refused when it holds NaN or inf."""
    if audio is None:
        return None
    audio = np.asarray(audio, np.float32).reshape(-1)
    if not np.isfinite(audio).all():
        raise RequestError(f"{model}: audio holds non-finite samples (NaN or inf)")
    return audio


@dataclass(eq=False)  # identity: a stream is hashed by who it is
class _Stream:
    flow: FrameFlow
    size: tuple[int, int]
    last_seen: float
    roi: Any = None  # avsal_deploy.roi.mapping.OffsetSmoother when the stream asked for QP offsets


#: One stream's answer to a request: frame indices [K], maps [K, h, w], QP offsets [K, rows, cols].
StreamResult = tuple[np.ndarray, np.ndarray, np.ndarray]


class StreamSessions:
    """The live streams of one model instance, keyed by correlation id (the model's logic,
    independent of Triton's request objects so it can be tested and reused)."""

    def __init__(self, engine: Any, limits: Mapping[str, float], batch_size: int) -> None:
        self.engine = engine
        self.limits = dict(limits)
        self.batch_size = max(1, int(batch_size))
        self.streams: dict[int, _Stream] = {}

    def expire(self, now: float | None = None) -> list[int]:
        """Drop streams idle for longer than the timeout; the dropped correlation ids."""
        now = time.monotonic() if now is None else now
        timeout = self.limits["stream_idle_timeout_s"]
        gone = [cid for cid, s in self.streams.items() if now - s.last_seen > timeout]
        for cid in gone:
            del self.streams[cid]
        return gone

    def start(self, cid: int, frame: np.ndarray, get: Getter) -> _Stream:
        """A new stream ``cid`` whose first frame is ``frame`` (its first request's options)."""
        self.streams.pop(cid, None)  # a new START on a live id starts afresh
        if len(self.streams) >= self.limits["max_streams"]:
            raise RequestError(
                f"{STREAM_MODEL}: {len(self.streams)} live streams on this instance "
                f"(max_streams={int(self.limits['max_streams'])})"
            )
        options = request_options(get, self.limits, STREAM_MODEL, self.batch_size)
        rate = scalar(get(AUDIO_RATE_INPUT), int, AUDIO_RATE_INPUT, DEFAULT_AUDIO_RATE)
        fps = scalar(get(FPS_INPUT), float, FPS_INPUT, DEFAULT_FPS)
        if rate <= 0 or not np.isfinite(fps) or fps <= 0:
            raise RequestError(f"{STREAM_MODEL}: audio_rate={rate} and fps={fps} must be positive")
        audio_start = scalar(get(AUDIO_START_INPUT), float, AUDIO_START_INPUT, None)
        if audio_start is not None and not np.isfinite(audio_start):
            raise RequestError(f"{STREAM_MODEL}: audio_start={audio_start} must be a finite time in seconds")
        flow = Predictor(self.engine, options).flow(fps, rate, audio_start=audio_start)
        stream = _Stream(flow, (int(frame.shape[0]), int(frame.shape[1])), time.monotonic())
        codec = get(ROI_CODEC_INPUT)
        if codec is not None:
            from avsal_deploy.roi.mapping import OffsetSmoother

            name = codec.reshape(-1)[0]
            name = name.decode() if isinstance(name, bytes) else str(name)
            if name not in ROI_CODECS:
                raise RequestError(
                    f"{STREAM_MODEL}: roi_codec={name!r}: choose one of {', '.join(ROI_CODECS)}"
                )
            stream.roi = OffsetSmoother(stream.size, name)
        self.streams[cid] = stream
        return stream

    def _live(self, cid: int) -> _Stream:
        found = self.streams.get(cid)
        if found is None:
            raise RequestError(
                f"{STREAM_MODEL}: no live stream {cid} (never started, ended or expired after "
                f"{self.limits['stream_idle_timeout_s']:g} s idle): send START first"
            )
        return found

    def _push(self, request: Mapping[str, Any]) -> _Stream:
        """Check one request and push its frame into its stream (the networks do not run yet)."""
        frame = check_frame(request["frame"], self.limits, STREAM_MODEL)
        audio = check_audio(request["audio"], STREAM_MODEL)
        cid = int(request["cid"])
        stream = self.start(cid, frame, request["get"]) if request["start"] else self._live(cid)
        if tuple(frame.shape[:2]) != stream.size:
            raise RequestError(
                f"{STREAM_MODEL}: stream {cid} frame size changed from {stream.size[1]}x{stream.size[0]} "
                f"to {frame.shape[1]}x{frame.shape[0]}"
            )
        ts = request.get("timestamp")
        stream.flow.push(frame, audio, None if ts is None else float(ts), run=False)
        stream.last_seen = time.monotonic()
        if request["end"]:
            stream.flow.flush(run=False)
        return stream

    def _collect(self, stream: _Stream) -> StreamResult:
        """The maps (and QP offsets) of ``stream``'s frames settled since its last answer."""
        maps = stream.flow.collect()
        index = np.asarray([m.index for m in maps], np.int64)
        h, w = self.engine.config.map_shape()[1:]
        stack = np.stack([m.saliency for m in maps]) if maps else np.zeros((0, h, w), np.float32)
        if stream.roi is not None:
            qp = np.stack([stream.roi(m.saliency) for m in maps]) if maps else None
            qp = qp if qp is not None else np.zeros((0, *stream.roi.grid), np.float32)
        else:
            qp = np.zeros((len(maps), 0, 0), np.float32)
        return index, stack.astype(np.float32, copy=False), qp.astype(np.float32, copy=False)

    def step(self, requests: list[dict[str, Any]]) -> list[StreamResult | AvsalError]:
        """Handle one batch of requests (each a dict with ``cid``, ``start``, ``end``, ``frame``,
        ``audio``, ``timestamp`` and ``get(name)`` for optional inputs). Returns, per request,
        ``(frame_index [K], maps [K, h, w], qp_offsets [K, rows, cols])`` (``rows = cols = 0``
        unless the stream asked for ``roi_codec``) or the :class:`AvsalError` that refuses it."""
        self.expire()
        results: list[Any] = [None] * len(requests)
        touched: list[tuple[int, _Stream, bool]] = []
        for i, r in enumerate(requests):
            try:
                touched.append((i, self._push(r), bool(r["end"])))
            except AvsalError as exc:
                results[i] = exc
        self._run([s for _, s, _ in touched])
        for i, stream, end in touched:
            results[i] = self._collect(stream)
            if end:
                self.streams = {c: s for c, s in self.streams.items() if s is not stream}
        return results

    def _run(self, streams: list[_Stream]) -> None:
        jobs = [(s.flow, w) for s in dict.fromkeys(streams, None) for w in s.flow.take_ready()]
        if jobs:
            run_windows(self.engine, jobs, self.batch_size)


def request_getter(pb_utils: Any, request: Any) -> Getter:
    """``get(name)``: the input ``name`` of a Triton request as numpy (None when absent)."""

    def get(name: str) -> np.ndarray | None:
        found = pb_utils.get_input_tensor_by_name(request, name)
        return None if found is None else found.as_numpy()

    return get


class StreamModel:
    """``avsal_stream`` (see the module docstring); requests arrive from the sequence batcher."""

    def initialize(self, args: dict[str, str]) -> None:
        from avsal_deploy.serving.window_engine import window_engine

        config = json.loads(args["model_config"])
        self.engine = window_engine(args, config)
        batch = parameter(config, WINDOW_BATCH_PARAMETER, int, 8)
        self.sessions = StreamSessions(self.engine, limits_of(config, STREAM_LIMITS), batch)

    def _parse(self, pb_utils: Any, request: Any) -> dict[str, Any]:
        get = request_getter(pb_utils, request)
        frame = get(FRAME_INPUT)
        return {
            "cid": int(get(CORRID_CONTROL).reshape(-1)[0]),
            "start": bool(get(START_CONTROL).reshape(-1)[0]),
            "end": bool(get(END_CONTROL).reshape(-1)[0]),
            "frame": frame[0] if frame is not None and frame.ndim == 4 else frame,
            "audio": get(AUDIO_INPUT),
            "timestamp": scalar(get(TIMESTAMP_INPUT), float, TIMESTAMP_INPUT, None),
            "get": get,
        }

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        results = self.sessions.step([self._parse(pb_utils, r) for r in requests])
        live = np.array([[len(self.sessions.streams)]], np.int32)
        return [_response(pb_utils, r, live) for r in results]

    def finalize(self) -> None:
        """Drop every live stream and release the window engine."""
        self.sessions.streams.clear()
        self.engine.close()


def _response(pb_utils: Any, result: StreamResult | BaseException, live: np.ndarray) -> Any:
    if isinstance(result, BaseException):
        return error_response(pb_utils, result)
    index, maps, qp = result
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor(MAPS_OUTPUT, np.ascontiguousarray(maps[None])),
            pb_utils.Tensor(FRAME_INDEX_OUTPUT, np.ascontiguousarray(index[None])),
            pb_utils.Tensor(QP_OFFSETS_OUTPUT, np.ascontiguousarray(qp[None])),
            pb_utils.Tensor(STREAMS_OUTPUT, live),
        ]
    )
