"""A video file as the frame flow reads it: frames one at a time, the aligned audio beside them.

:class:`MediaSource` decodes the frames (:class:`~avsal_deploy.data.decode.FrameReader`) and the
audio track (:class:`~avsal_deploy.data.decode.AudioReader`, aligned to the first frame) of one
file in a single pass each, handing out with every frame the audio decoded since the previous
one. Offline prediction, batch scoring and INT8 calibration read files through it.
"""

from __future__ import annotations

import os
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avsal_deploy.data.decode import (
    SILENT_AUDIO_RATE,
    AudioReader,
    Backend,
    FrameReader,
    MediaWarning,
    VideoData,
    probe,
)

#: Audio decoded ahead of a frame before it enters the windower (seconds past its own span): a
#: window then reads exactly the samples the whole-file decode would give it, resampling filter
#: included, however the container interleaves its audio and video packets.
AUDIO_LEAD_S = 0.1


def audio_needed(timestamp: float, fps: float, rate: int) -> int:
    """Samples of audio (from the first frame) to hand out with the frame at ``timestamp``: its span
    (1/fps) plus :data:`AUDIO_LEAD_S`."""
    return int(np.ceil((timestamp + 1.0 / fps + AUDIO_LEAD_S) * rate))


@dataclass
class Timings:
    """Seconds spent per stage (``decode``, ``preprocess``, ``inference``, ``write``)."""

    decode: float = 0.0
    preprocess: float = 0.0
    inference: float = 0.0
    write: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {k: round(v, 3) for k, v in self.__dict__.items()}


class MediaSource:
    """An opened video file for the frame flow: its frames (decoded one at a time) and the audio
    aligned to them, with what is known before the loop (fps, size, audio, estimated length)."""

    def __init__(self, path: str | os.PathLike[str], backend: Backend = "auto") -> None:
        self.path = Path(path)
        info = probe(self.path)  # bad files fail here, before any output exists
        self.estimated_frames = info.n_frames
        self._frames = FrameReader(self.path, backend=backend)
        self._frames.first()  # the first frame's absolute time aligns the audio
        self.fps = self._frames.fps
        self.source_size = self._frames.source_size
        self._audio: AudioReader | None = AudioReader(self.path, start=self._frames.first_time)
        self.has_audio = self._audio.has_audio
        if not self.has_audio:
            self._audio = None
            warnings.warn(
                f"{self.path}: no audio track (or none decodable); predicting with silence",
                MediaWarning,
                stacklevel=3,
            )
        self.audio_rate = self._audio.rate if self._audio is not None else SILENT_AUDIO_RATE
        self._audio_iter = iter(self._audio) if self._audio is not None else iter(())

    def media(self, timings: Timings | None = None) -> Iterator[tuple[np.ndarray, float, np.ndarray]]:
        """``(frame, timestamp, audio chunk)`` per frame: the chunk holds the audio decoded since the
        previous frame, decoded until it covers the frame's span plus :data:`AUDIO_LEAD_S`."""
        timings = timings if timings is not None else Timings()
        frames = iter(self._frames)
        have = 0  # audio samples handed out so far
        while True:
            t0 = time.perf_counter()
            item = next(frames, None)
            if item is None:
                timings.decode += time.perf_counter() - t0
                return
            frame, ts = item
            need = audio_needed(ts, self.fps, self.audio_rate)
            chunks = []
            while have < need and (chunk := next(self._audio_iter, None)) is not None:
                chunks.append(chunk)
                have += chunk.shape[0]
            timings.decode += time.perf_counter() - t0
            yield frame, ts, (np.concatenate(chunks) if chunks else np.zeros(0, np.float32))

    def rest_of_audio(self) -> np.ndarray:
        """The audio after the last frame's chunk (the tail of the soundtrack)."""
        rest = list(self._audio_iter)
        return np.concatenate(rest) if rest else np.zeros(0, np.float32)

    def close(self) -> None:
        self._frames.close()
        if self._audio is not None:
            self._audio.close()


class ArraySource:
    """Decoded media held in memory (a :class:`~avsal_deploy.data.decode.VideoData`, e.g. a data
    set's frames and soundtrack) with :class:`MediaSource`'s interface, so the frame flow and the
    writers run on it unchanged; each frame comes with the audio up to its span plus
    :data:`AUDIO_LEAD_S`, as from a file."""

    def __init__(self, video: VideoData) -> None:
        self.video = video
        self.path = Path(video.path)
        self.fps = video.fps
        self.source_size = tuple(video.source_size)
        self.has_audio = video.has_audio
        self.audio_rate = video.audio_rate
        self.estimated_frames = video.n_frames
        self._given = 0

    def media(self, timings: Timings | None = None) -> Iterator[tuple[np.ndarray, float, np.ndarray]]:
        audio = self.video.audio
        for frame, ts in zip(self.video.frames, self.video.timestamps, strict=True):
            need = min(audio_needed(float(ts), self.fps, self.audio_rate), audio.shape[0])
            chunk = audio[self._given : max(need, self._given)]
            self._given = max(need, self._given)
            yield frame, float(ts), chunk

    def rest_of_audio(self) -> np.ndarray:
        rest = self.video.audio[self._given :]
        self._given = self.video.audio.shape[0]
        return rest

    def close(self) -> None:
        pass


class CaptureSource:
    """A live input PyAV (FFmpeg's libavdevice) opens: a camera (``v4l2:/dev/video0``), a screen
    grab (``x11grab::0.0``), a network stream (``rtsp://...``, no prefix) or a filter graph
    (``lavfi:testsrc=rate=25``), with :class:`MediaSource`'s interface.

    ``spec`` is ``FORMAT:TARGET`` for an input device or format (FFmpeg's ``-f FORMAT -i TARGET``),
    else a URL FFmpeg opens as is; ``options`` are the demuxer's (``video_size``, ``framerate``,
    ...). One container is demuxed in arrival order: each video frame comes with the audio decoded
    since the previous one (mono, the track's rate; trimmed to start at the first frame), so a
    live source's audio lead is whatever the device delivered, not :data:`AUDIO_LEAD_S`.
    ``max_seconds`` ends a source that never ends by itself; :meth:`stop` ends it from another
    thread (a signal handler) after the current frame.
    """

    def __init__(
        self, spec: str, options: dict[str, str] | None = None, max_seconds: float | None = None
    ) -> None:
        import av

        from avsal_deploy.errors import MediaError

        fmt, target = split_capture_spec(spec)
        self.path = Path(spec)
        self.spec = spec
        try:
            self._container = av.open(target, format=fmt, options=dict(options or {}), timeout=10.0)
        except (av.FFmpegError, OSError, ValueError) as exc:
            raise MediaError(f"{spec}: cannot open the capture input ({exc})") from exc
        if not self._container.streams.video:
            self._container.close()
            raise MediaError(f"{spec}: the capture input has no video stream")
        self._video = self._container.streams.video[0]
        audio = self._container.streams.audio
        self._audio_stream = audio[0] if audio else None
        self.has_audio = self._audio_stream is not None
        self.audio_rate = (
            int(self._audio_stream.rate) if self._audio_stream is not None else SILENT_AUDIO_RATE
        )
        rate = self._video.average_rate or self._video.guessed_rate
        self.fps = float(rate) if rate else 25.0
        self.estimated_frames = 0  # live: unknown
        self.max_seconds = max_seconds
        self._stopped = False
        self._pending: list[np.ndarray] = []
        self._decoded = self._decode()
        first = next(self._decoded, None)
        if first is None:
            self._container.close()
            raise MediaError(f"{spec}: the capture input delivered no video frame")
        self._first = first
        self.source_size = (int(first[1].shape[0]), int(first[1].shape[1]))

    def _decode(self) -> Iterator[tuple[str, np.ndarray, float]]:
        import av

        streams = [s for s in (self._video, self._audio_stream) if s is not None]
        resampler = av.AudioResampler(format="flt", layout="mono") if self._audio_stream is not None else None
        for packet in self._container.demux(*streams):
            try:
                frames = packet.decode()
            except av.FFmpegError:
                continue  # a damaged packet: its neighbours still play
            for frame in frames:
                t = float(frame.time) if frame.time is not None else 0.0
                if packet.stream.type == "video":
                    yield "video", frame.to_ndarray(format="rgb24"), t
                elif resampler is not None:
                    for out in resampler.resample(frame):
                        yield "audio", out.to_ndarray().reshape(-1).astype(np.float32, copy=False), t

    def stop(self) -> None:
        self._stopped = True

    def media(self, timings: Timings | None = None) -> Iterator[tuple[np.ndarray, float, np.ndarray]]:
        timings = timings if timings is not None else Timings()
        start = self._first[2]
        item: tuple[str, np.ndarray, float] | None = self._first
        while item is not None and not self._stopped:
            kind, data, t = item
            if kind == "audio":
                skip = int(round(max(0.0, start - t) * self.audio_rate))  # audio before the first frame
                if skip < data.shape[0]:
                    self._pending.append(data[skip:])
            else:
                ts = t - start
                if self.max_seconds is not None and ts >= self.max_seconds:
                    return
                chunk = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
                self._pending.clear()
                yield data, ts, chunk
            t0 = time.perf_counter()
            item = next(self._decoded, None)
            timings.decode += time.perf_counter() - t0

    def rest_of_audio(self) -> np.ndarray:
        rest = np.concatenate(self._pending) if self._pending else np.zeros(0, np.float32)
        self._pending.clear()
        return rest

    def close(self) -> None:
        self._container.close()


def split_capture_spec(spec: str) -> tuple[str | None, str]:
    """``FORMAT:TARGET`` -> (FORMAT, TARGET) when FORMAT is an input format FFmpeg has (a device
    such as v4l2, alsa, x11grab, avfoundation, or lavfi); a URL (``rtsp://...``) -> (None, spec)."""
    import av

    fmt, sep, target = spec.partition(":")
    if sep and fmt and not target.startswith("//") and fmt in av.formats_available:
        return fmt, target
    return None, spec


def is_capture_spec(spec: str) -> bool:
    """Whether ``spec`` names a live input (``FORMAT:TARGET`` or a streaming URL), not a file."""
    if Path(spec).exists():
        return False
    fmt, target = split_capture_spec(spec)
    return fmt is not None or spec.startswith(
        ("rtsp://", "rtmp://", "udp://", "srt://", "http://", "https://")
    )
