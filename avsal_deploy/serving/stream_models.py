"""Triton models for raw media: ``avsal_stream`` (live frames in, maps out) and ``avsal_video``.

Both run the library's one frame flow (:class:`~avsal_deploy.pipeline.FrameFlow`) over a
:class:`~avsal_deploy.serving.bls.BLSEngine`: the networks run in the component models (one ONNX
Runtime or TensorRT session per component per instance, their dynamic batchers merging concurrent
windows), so a stream's maps are the maps ``avsal predict`` gives for the same frames and audio.

``avsal_stream`` sits under Triton's sequence batcher (``START`` / ``END`` / ``CORRID`` control
inputs). Per correlation id an instance keeps one flow (a :class:`StreamWindower` ring of ``L``
preprocessed frames and the audio they need: bounded memory). Each request carries one decoded
frame (``frame`` UINT8 [H, W, 3], RGB; the first frame fixes the size) and the audio that came with
it (``audio`` FP32 [n], n >= 0); the first request may set ``audio_rate`` (INT32, default 16000),
``fps`` (FP64, default 25), ``steps``, ``stride``, ``seed`` and ``roi_codec`` (BYTES, ``x264`` or
``x265``). The response has the maps of every frame whose window became ready (``maps`` FP32
[K, h, w] at the model's size, ``frame_index`` INT64 [K]), with ``roi_codec`` their temporally
smoothed QP offset grids for the stream's frame size (``qp_offsets`` FP32 [K, rows, cols], negative =
more bits, :class:`avsal_deploy.roi.mapping.OffsetSmoother`; [K, 0, 0] without), and ``streams``
(INT32 [1], live streams on this instance); the END request flushes the
start-up frames, so every frame of a stream gets exactly one map. Windows of the streams in one
batch of requests go through the networks together (:func:`~avsal_deploy.pipeline.run_windows`).

A stream idle for longer than ``stream_idle_timeout_s`` is dropped (its state freed); Triton's own
``max_sequence_idle_microseconds`` is set to the same timeout, so a late request for it is refused
("must specify the START flag"). A new START on a live correlation id starts the stream afresh.

``avsal_video`` takes a whole encoded file (``video`` BYTES [1], any container FFmpeg reads) and
returns ``maps`` FP32 [N, h, w] and ``fps`` FP64 [1]; it decodes with PyAV on CPU, or with DALI's
GPU decoder (``decoder = dali``, the GPU repositories), frames copied to the host for
preprocessing.

Limits (model config parameters, each refused with a clear error): ``max_pixels`` per frame,
``max_streams`` per instance, ``max_steps``, ``max_stride``; for ``avsal_video`` also
``max_video_bytes``, ``max_video_frames`` and ``max_video_seconds`` (checked from the headers
before decoding and again while decoding: a decompression bomb or a 10-hour file is refused, not
decoded).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from avsal_deploy.errors import AvsalError

STREAM_MODEL = "avsal_stream"
VIDEO_MODEL = "avsal_video"

#: Defaults of the limits (config parameters of the generated repository).
STREAM_LIMITS: dict[str, float] = {
    "max_pixels": 3840 * 2160,
    "max_streams": 8,  # the sequence batcher's slots per instance (max_batch_size)
    "max_steps": 50,
    "max_stride": 64,
    "stream_idle_timeout_s": 60.0,
}
VIDEO_LIMITS: dict[str, float] = {
    "max_pixels": 3840 * 2160,
    "max_steps": 50,
    "max_stride": 64,
    "max_video_bytes": 512 << 20,
    "max_video_frames": 108_000,
    "max_video_seconds": 3600.0,
}
DEFAULT_FPS = 25.0
#: Encoders whose QP offset grids ``avsal_stream`` returns (``roi_codec``; avsal_deploy.roi).
ROI_CODECS = ("x264", "x265")
DEFAULT_AUDIO_RATE = 16000


class RequestError(AvsalError):
    """A request the model refuses (answered with INVALID_ARG; the server keeps serving)."""


def limits_of(model_config: dict[str, Any], defaults: dict[str, float]) -> dict[str, float]:
    """The limits of a model config (its ``parameters``), with ``defaults`` where absent."""
    params = model_config.get("parameters", {})
    out = dict(defaults)
    for key in defaults:
        if key in params:
            out[key] = float(params[key]["string_value"])
    return out


def _scalar(value: np.ndarray | None, kind: type, name: str, default: Any) -> Any:
    if value is None:
        return default
    flat = np.asarray(value).reshape(-1)
    if flat.size != 1:
        raise RequestError(f"{name} must hold one value, got {flat.size}")
    return kind(flat[0])


@dataclass
class Settings:
    """Per-sequence (or per-video) options, validated against the limits."""

    steps: int | None
    stride: int | None
    seed: int

    @classmethod
    def read(cls, get: Any, limits: dict[str, float], model: str) -> Settings:
        steps = _scalar(get("steps"), int, "steps", None)
        stride = _scalar(get("stride"), int, "stride", None)
        seed = _scalar(get("seed"), int, "seed", 0)
        if steps is not None and not 0 <= steps <= limits["max_steps"]:
            raise RequestError(f"{model}: steps={steps} outside [0, {int(limits['max_steps'])}]")
        if stride is not None and not 1 <= stride <= limits["max_stride"]:
            raise RequestError(f"{model}: stride={stride} outside [1, {int(limits['max_stride'])}]")
        if seed < 0:
            raise RequestError(f"{model}: seed={seed} must be >= 0")
        return cls(steps, stride, seed)


def check_frame(frame: np.ndarray, limits: dict[str, float], model: str) -> np.ndarray:
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
    if audio is None:
        return None
    audio = np.asarray(audio, np.float32).reshape(-1)
    if not np.isfinite(audio).all():
        raise RequestError(f"{model}: audio holds non-finite samples (NaN or inf)")
    return audio


@dataclass(eq=False)  # identity: a stream is hashed by who it is
class _Stream:
    flow: Any  # FrameFlow
    size: tuple[int, int]
    last_seen: float
    roi: Any = None  # avsal_deploy.roi.mapping.OffsetSmoother when the stream asked for QP offsets


class StreamSessions:
    """The live streams of one model instance, keyed by correlation id (the model's logic,
    independent of Triton's request objects so it can be tested and reused)."""

    def __init__(self, engine: Any, limits: dict[str, float], batch_size: int) -> None:
        self.engine = engine
        self.limits = limits
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

    def start(self, cid: int, frame: np.ndarray, get: Any) -> _Stream:
        from avsal_deploy.pipeline import FrameFlow

        self.streams.pop(cid, None)  # a new START on a live id starts afresh
        if len(self.streams) >= self.limits["max_streams"]:
            raise RequestError(
                f"{STREAM_MODEL}: {len(self.streams)} live streams on this instance "
                f"(max_streams={int(self.limits['max_streams'])})"
            )
        settings = Settings.read(get, self.limits, STREAM_MODEL)
        rate = _scalar(get("audio_rate"), int, "audio_rate", DEFAULT_AUDIO_RATE)
        fps = _scalar(get("fps"), float, "fps", DEFAULT_FPS)
        if rate <= 0 or not np.isfinite(fps) or fps <= 0:
            raise RequestError(f"{STREAM_MODEL}: audio_rate={rate} and fps={fps} must be positive")
        flow = FrameFlow(
            self.engine,
            fps=fps,
            audio_rate=rate,
            steps=settings.steps,
            stride=settings.stride,
            batch_size=self.batch_size,
            seed=settings.seed,
        )
        stream = _Stream(flow, tuple(frame.shape[:2]), time.monotonic())
        codec = get("roi_codec")
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

    def step(self, requests: list[dict[str, Any]]) -> list[Any]:
        """Handle one batch of requests (each a dict with ``cid``, ``start``, ``end``, ``frame``,
        ``audio``, ``timestamp`` and ``get(name)`` for optional inputs). Returns, per request,
        ``(frame_index [K], maps [K, h, w], qp_offsets [K, rows, cols])`` (``rows = cols = 0``
        unless the stream asked for ``roi_codec``) or the :class:`AvsalError` that refuses it."""
        self.expire()
        results: list[Any] = [None] * len(requests)
        touched: list[tuple[int, _Stream, bool]] = []
        for i, r in enumerate(requests):
            try:
                frame = check_frame(r["frame"], self.limits, STREAM_MODEL)
                audio = check_audio(r["audio"], STREAM_MODEL)
                cid = int(r["cid"])
                if r["start"]:
                    stream = self.start(cid, frame, r["get"])
                else:
                    found = self.streams.get(cid)
                    if found is None:
                        raise RequestError(
                            f"{STREAM_MODEL}: no live stream {cid} (never started, ended or expired after "
                            f"{self.limits['stream_idle_timeout_s']:g} s idle): send START first"
                        )
                    stream = found
                if tuple(frame.shape[:2]) != stream.size:
                    raise RequestError(
                        f"{STREAM_MODEL}: stream {cid} frame size changed from {stream.size[1]}x{stream.size[0]} "
                        f"to {frame.shape[1]}x{frame.shape[0]}"
                    )
                ts = r.get("timestamp")
                stream.flow.push(frame, audio, None if ts is None else float(ts), run=False)
                stream.last_seen = time.monotonic()
                if r["end"]:
                    stream.flow.flush(run=False)
                touched.append((i, stream, bool(r["end"])))
            except AvsalError as exc:
                results[i] = exc
        self._run([s for _, s, _ in touched])
        for i, stream, end in touched:
            maps = stream.flow.collect()
            index = np.asarray([m.index for m in maps], np.int64)
            h, w = self.engine.config.map_shape()[1:]
            stack = np.stack([m.saliency for m in maps]) if maps else np.zeros((0, h, w), np.float32)
            if stream.roi is not None:
                qp = np.stack([stream.roi(m.saliency) for m in maps]) if maps else None
                qp = qp if qp is not None else np.zeros((0, *stream.roi.grid), np.float32)
            else:
                qp = np.zeros((len(maps), 0, 0), np.float32)
            results[i] = (index, stack.astype(np.float32, copy=False), qp.astype(np.float32, copy=False))
            if end:
                self.streams = {c: s for c, s in self.streams.items() if s is not stream}
        return results

    def _run(self, streams: list[_Stream]) -> None:
        from avsal_deploy.pipeline import run_windows

        jobs = [(s.flow, w) for s in dict.fromkeys(streams, None) for w in s.flow.take_ready()]
        if jobs:
            run_windows(self.engine, jobs, self.batch_size)


def _pb_input(pb_utils: Any, request: Any, name: str) -> np.ndarray | None:
    found = pb_utils.get_input_tensor_by_name(request, name)
    return None if found is None else found.as_numpy()


class StreamModel:
    """``avsal_stream`` (see the module docstring); requests arrive from the sequence batcher."""

    def initialize(self, args: dict[str, str]) -> None:
        from avsal_deploy.serving.bls import window_engine

        config = json.loads(args["model_config"])
        engine = window_engine(args, config)
        batch = int(config.get("parameters", {}).get("window_batch", {}).get("string_value", 8))
        self.sessions = StreamSessions(engine, limits_of(config, STREAM_LIMITS), batch)

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        parsed = []
        for request in requests:
            get = _getter(pb_utils, request)
            frame = get("frame")
            parsed.append(
                {
                    "cid": int(get("CORRID").reshape(-1)[0]),
                    "start": bool(get("START").reshape(-1)[0]),
                    "end": bool(get("END").reshape(-1)[0]),
                    "frame": frame[0] if frame is not None and frame.ndim == 4 else frame,
                    "audio": get("audio"),
                    "timestamp": _scalar(get("timestamp"), float, "timestamp", None),
                    "get": get,
                }
            )
        results = self.sessions.step(parsed)
        live = np.array([[len(self.sessions.streams)]], np.int32)
        return [_response(pb_utils, r, live) for r in results]


def _getter(pb_utils: Any, request: Any) -> Any:
    def get(name: str) -> np.ndarray | None:
        value = _pb_input(pb_utils, request, name)
        return value

    return get


def _response(pb_utils: Any, result: Any, live: np.ndarray) -> Any:
    from avsal_deploy.serving.bls import ComponentCallError

    if isinstance(result, ComponentCallError):
        return pb_utils.InferenceResponse(
            error=pb_utils.TritonError(str(result), pb_utils.TritonError.INTERNAL)
        )
    if isinstance(result, BaseException):
        return pb_utils.InferenceResponse(
            error=pb_utils.TritonError(str(result), pb_utils.TritonError.INVALID_ARG)
        )
    index, maps, qp = result
    return pb_utils.InferenceResponse(
        output_tensors=[
            pb_utils.Tensor("maps", np.ascontiguousarray(maps[None])),
            pb_utils.Tensor("frame_index", np.ascontiguousarray(index[None])),
            pb_utils.Tensor("qp_offsets", np.ascontiguousarray(qp[None])),
            pb_utils.Tensor("streams", live),
        ]
    )


# ----------------------------------------------------------------------------- whole videos
def predict_video_bytes(
    engine: Any, data: bytes, limits: dict[str, float], settings: Settings, decoder: str = "pyav"
) -> tuple[np.ndarray, float]:
    """Maps [N, h, w] and fps of an encoded video given as bytes, within ``limits``."""
    from avsal_deploy.data.decode import probe
    from avsal_deploy.data.source import MediaSource
    from avsal_deploy.pipeline import FrameFlow

    if not data:
        raise RequestError(f"{VIDEO_MODEL}: empty video")
    if len(data) > limits["max_video_bytes"]:
        raise RequestError(
            f"{VIDEO_MODEL}: {len(data)} bytes exceed max_video_bytes={int(limits['max_video_bytes'])}"
        )
    with tempfile.TemporaryDirectory(prefix="avsal-video-") as tmp:
        path = os.path.join(tmp, "video")
        with open(path, "wb") as f:
            f.write(data)
        info = probe(path)  # headers only: refuse before decoding anything
        if info.width * info.height > limits["max_pixels"]:
            raise RequestError(
                f"{VIDEO_MODEL}: {info.width}x{info.height} exceeds max_pixels={int(limits['max_pixels'])}"
            )
        if info.duration > limits["max_video_seconds"]:
            raise RequestError(
                f"{VIDEO_MODEL}: {info.duration:.0f} s exceeds max_video_seconds={limits['max_video_seconds']:g}"
            )
        if info.n_frames > limits["max_video_frames"]:
            raise RequestError(
                f"{VIDEO_MODEL}: {info.n_frames} frames exceed max_video_frames={int(limits['max_video_frames'])}"
            )
        source = MediaSource(path, backend="dali-gpu" if decoder == "dali" else "pyav")
        try:
            flow = FrameFlow(
                engine,
                fps=source.fps,
                audio_rate=source.audio_rate,
                steps=settings.steps,
                stride=settings.stride,
                batch_size=8,
                seed=settings.seed,
            )
            maps = []
            for frame, ts, chunk in source.media():
                if flow.n_frames >= limits["max_video_frames"] or ts > limits["max_video_seconds"]:
                    raise RequestError(
                        f"{VIDEO_MODEL}: the video runs past max_video_frames / max_video_seconds"
                    )
                maps += flow.push(frame, chunk, ts)
            maps += flow.flush()
        finally:
            source.close()
    return np.stack([m.saliency for m in maps]).astype(np.float32, copy=False), float(source.fps)


class VideoModel:
    """``avsal_video`` (see the module docstring): one whole encoded video per request."""

    def initialize(self, args: dict[str, str]) -> None:
        from avsal_deploy.serving.bls import window_engine

        config = json.loads(args["model_config"])
        self.engine = window_engine(args, config)
        self.limits = limits_of(config, VIDEO_LIMITS)
        self.decoder = config.get("parameters", {}).get("decoder", {}).get("string_value", "pyav")

    def execute(self, requests: list[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils

        from avsal_deploy.serving.bls import ComponentCallError

        responses = []
        for request in requests:
            get = _getter(pb_utils, request)
            try:
                video = get("video")
                if video is None or video.size != 1:
                    raise RequestError(f"{VIDEO_MODEL}: video must be BYTES [1] holding one encoded file")
                data = video.reshape(-1)[0]
                data = data if isinstance(data, bytes) else bytes(data)
                settings = Settings.read(get, self.limits, VIDEO_MODEL)
                maps, fps = predict_video_bytes(self.engine, data, self.limits, settings, self.decoder)
            except ComponentCallError as exc:
                err = pb_utils.TritonError(str(exc), pb_utils.TritonError.INTERNAL)
                responses.append(pb_utils.InferenceResponse(error=err))
                continue
            except AvsalError as exc:  # MediaError for corrupt files, RequestError for limits
                err = pb_utils.TritonError(f"{VIDEO_MODEL}: {exc}", pb_utils.TritonError.INVALID_ARG)
                responses.append(pb_utils.InferenceResponse(error=err))
                continue
            responses.append(
                pb_utils.InferenceResponse(
                    output_tensors=[
                        pb_utils.Tensor("maps", maps),
                        pb_utils.Tensor("fps", np.array([fps], np.float64)),
                    ]
                )
            )
        return responses
