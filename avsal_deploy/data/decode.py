"""Decoding videos (frames, timestamps, audio) with PyAV or NVIDIA DALI.

The contract every backend fulfils (:class:`VideoData`):

* ``frames``: uint8 ``[N, H, W, 3]`` RGB in presentation order;
* ``timestamps``: float64 ``[N]`` seconds from the presentation time stamps (variable frame rate
  aware), relative to the first frame, so ``timestamps[0] == 0``;
* ``audio``: float32 mono (channels averaged) at ``audio_rate``, aligned so that ``audio[0]`` plays
  at the first frame's time (a track that starts later is padded with leading zeros, one that
  starts earlier is cut);
* no audio track: silence of the video's duration, ``has_audio=False`` and a
  :class:`MediaWarning`; never an error.

Backends
--------
``pyav``
    FFmpeg through PyAV on the CPU: every codec and container FFmpeg knows (h264, hevc, av1, vp8,
    vp9, mjpeg video; AAC, MP3, Opus, Vorbis, FLAC, PCM audio; mp4, mkv, mov, webm, avi).
``dali``
    NVIDIA DALI's streaming video input (``fn.experimental.inputs.video``), which decodes a bounded
    number of frames per iteration. On the CPU DALI decodes only VP8, VP9 and MJPEG; H.264, HEVC,
    AV1 and MPEG-4 need its ``mixed`` (NVDEC) decoder and an NVIDIA GPU. DALI cannot demux an audio
    track out of a video container (``fn.decoders.audio`` reads WAV/FLAC/OGG byte streams), so the
    audio of a video always comes from PyAV; :func:`read_audio` uses DALI for standalone
    WAV/FLAC/OGG files. Frame timestamps come from PyAV's demuxer (no decoding).
``dali-gpu``
    Forces DALI's mixed (GPU) decoder; raises :class:`BackendUnavailableError` without a GPU.
``auto``
    DALI's GPU decoder when DALI and a GPU are present; DALI's CPU decoder for VP8/VP9/MJPEG when
    DALI is installed; PyAV otherwise. If DALI fails on a file (it is stricter than FFmpeg about
    damaged streams), ``auto`` decodes the file again with PyAV.

Both CPU decoders use FFmpeg's decoders; their RGB conversions differ slightly (chroma up-sampling),
by about 1-2 grey levels on average (tests/test_video.py measures it).

Large inputs
------------
Frames are held in memory at their decoded size: one minute of 4K at 30 fps is 1800 x 3840 x
2160 x 3 bytes, about 45 GB. ``size=(h, w)`` (e.g. the profile's model size) or ``max_side=n``
(longest side at most ``n``, aspect kept) resize every frame as it is decoded, so only the resized
frames are kept (224 x 384: 0.46 GB per minute at 30 fps). :func:`iter_frames` streams frames one at
a time for videos that should never be held whole. Decode-time resizing uses FFmpeg's area
averaging (PyAV) or DALI's antialiased linear filter, both suitable for strong down-scaling.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import av
import av.logging
import numpy as np

from avsal_deploy.data.dali import dali_available, dali_pipeline_options, gpu_available, require_dali
from avsal_deploy.data.signal import AudioTrack, resample
from avsal_deploy.errors import BackendUnavailableError, ConfigError, MediaError

Backend = Literal["auto", "pyav", "dali", "dali-gpu"]
BACKENDS: tuple[str, ...] = ("auto", "pyav", "dali", "dali-gpu")

#: Video codecs DALI decodes on the CPU (its ``cpu`` backend); everything else needs NVDEC.
DALI_CPU_VIDEO_CODECS: frozenset[str] = frozenset({"vp8", "vp9", "mjpeg"})
#: Standalone audio files DALI's ``fn.decoders.audio`` reads.
DALI_AUDIO_SUFFIXES: frozenset[str] = frozenset({".wav", ".flac", ".ogg", ".oga", ".opus"})
#: Frame rate assumed when a container states none and a single frame gives no interval.
DEFAULT_FPS = 25.0
#: Sample rate of the silence returned for videos without audio when no ``audio_rate`` is asked.
SILENT_AUDIO_RATE = 16000
#: Frames DALI decodes per pipeline iteration (bounds its memory for long / large videos).
DALI_SEQUENCE_LENGTH = 16


class MediaWarning(UserWarning):
    """A recoverable problem with a media file (missing audio track, damaged data)."""


class VideoInfo(NamedTuple):
    """What :func:`probe` reads from the container headers, without decoding frames."""

    n_frames: int  # the container's frame count, else duration * fps rounded (an estimate)
    fps: float
    width: int
    height: int
    has_audio: bool
    duration: float  # seconds


@dataclass
class VideoData:
    """A decoded video: frames, their presentation times and the aligned mono audio."""

    frames: np.ndarray  # uint8 [N, H, W, 3] RGB
    fps: float  # the container's average frame rate (frames / second)
    timestamps: np.ndarray  # float64 [N] seconds, timestamps[0] == 0
    audio: np.ndarray  # float32 [L] mono, audio[0] at the first frame's time
    audio_rate: int
    has_audio: bool
    path: str
    source_size: tuple[int, int]  # (height, width) of the coded pictures before any resize
    backend: str = "pyav"  # the decoder that produced the frames: "pyav", "dali" or "dali-gpu"

    @property
    def n_frames(self) -> int:
        return int(self.frames.shape[0])

    @property
    def height(self) -> int:
        return int(self.frames.shape[1])

    @property
    def width(self) -> int:
        return int(self.frames.shape[2])

    @property
    def track(self) -> AudioTrack:
        """The audio with the frames' clock (what :func:`avsal_deploy.data.audio.audio_input` reads)."""
        return AudioTrack(self.audio, self.audio_rate, self.fps, self.timestamps)

    @property
    def duration(self) -> float:
        """Seconds from the first frame to the end of the last one (its nominal 1/fps period)."""
        return float(self.timestamps[-1]) + 1.0 / self.fps


# ----------------------------------------------------------------------------- opening files
def _check_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise MediaError(f"{p}: no such file")
    if p.is_dir():
        raise MediaError(f"{p}: is a directory, not a media file")
    return p


def _open(path: Path) -> Any:
    """Open a container for reading, turning FFmpeg's refusal into a one-line MediaError."""
    try:
        return av.open(str(path), mode="r")
    except (av.FFmpegError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise MediaError(f"{path}: not a readable media file ({reason})") from exc


def _video_stream(container: Any, path: Path) -> Any:
    """The first real video stream (cover art attached to audio files does not count)."""
    for stream in container.streams.video:
        if not stream.disposition & av.stream.Disposition.attached_pic:
            return stream
    raise MediaError(f"{path}: not a video (no video stream)")


def _stream_fps(stream: Any) -> float | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate is not None and rate > 0:
            return float(rate)
    return None


def _stream_duration(container: Any, stream: Any) -> float:
    if stream.duration is not None and stream.time_base is not None:
        return float(stream.duration * stream.time_base)
    if container.duration is not None:
        return container.duration / av.time_base
    return 0.0


def probe(path: str | os.PathLike[str]) -> VideoInfo:
    """Frame count (estimate), fps, size, audio presence and duration from the headers only."""
    p = _check_path(path)
    with _open(p) as container:
        stream = _video_stream(container, p)
        fps = _stream_fps(stream) or DEFAULT_FPS
        duration = _stream_duration(container, stream)
        n_frames = int(stream.frames) if stream.frames else int(round(duration * fps))
        return VideoInfo(
            n_frames=max(n_frames, 0),
            fps=fps,
            width=int(stream.codec_context.width),
            height=int(stream.codec_context.height),
            has_audio=len(container.streams.audio) > 0,
            duration=duration,
        )


def _codec_name(path: Path) -> str:
    with _open(path) as container:
        return str(_video_stream(container, path).codec_context.name)


# ----------------------------------------------------------------------------- output size
def _output_size(
    src_hw: tuple[int, int], max_side: int | None, size: tuple[int, int] | None
) -> tuple[int, int] | None:
    """Decode-time resize target (height, width), or None to keep the coded size."""
    if size is not None and max_side is not None:
        raise ConfigError("read_video: give either size=(h, w) or max_side, not both")
    if size is not None:
        h, w = (int(s) for s in size)
        if h < 1 or w < 1:
            raise ConfigError(f"read_video: size={size!r} must be two positive integers")
        return None if (h, w) == src_hw else (h, w)
    if max_side is not None:
        if int(max_side) < 1:
            raise ConfigError(f"read_video: max_side={max_side!r} must be a positive integer")
        longest = max(src_hw)
        if longest <= max_side:
            return None
        scale = max_side / longest
        return (max(1, int(round(src_hw[0] * scale))), max(1, int(round(src_hw[1] * scale))))
    return None


# ----------------------------------------------------------------------------- PyAV frames
@contextlib.contextmanager
def _ffmpeg_error_log() -> Iterator[list[tuple[int, str, str]]]:
    """Capture FFmpeg's error messages on this thread (some demuxers, e.g. Matroska, report a
    truncated file only as a log line and end the stream normally)."""
    previous, skip_repeated = av.logging.get_level(), av.logging.get_skip_repeated()
    if previous is None or previous < av.logging.ERROR:
        av.logging.set_level(av.logging.ERROR)
    av.logging.set_skip_repeated(False)  # the same damage in a second file must count again
    try:
        with av.logging.Capture(local=True) as logs:
            yield logs
    finally:
        av.logging.set_level(previous)
        av.logging.set_skip_repeated(skip_repeated)


@dataclass
class _DecodeStats:
    """What a frame generator learnt while decoding (shared with read_video)."""

    errors: int = 0
    first_time: float | None = None  # absolute time of the first frame (container clock)
    fps: float = DEFAULT_FPS
    source_size: tuple[int, int] = (0, 0)
    backend: str = "pyav"


def _pyav_frames(
    path: Path,
    max_frames: int | None,
    max_side: int | None,
    size: tuple[int, int] | None,
    stats: _DecodeStats,
) -> Iterator[tuple[np.ndarray, float]]:
    """Yield (RGB frame, absolute time) in presentation order, skipping undecodable packets."""
    with _open(path) as container, _ffmpeg_error_log() as logs:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"
        stats.fps = _stream_fps(stream) or DEFAULT_FPS
        src_hw = (int(stream.codec_context.height), int(stream.codec_context.width))
        stats.source_size = src_hw
        out = _output_size(src_hw, max_side, size)
        count = 0
        last_time: float | None = None

        def convert(frame: Any) -> tuple[np.ndarray, float]:
            nonlocal last_time
            if out is None:
                rgb = frame.to_ndarray(format="rgb24")
            else:
                rgb = frame.to_ndarray(format="rgb24", height=out[0], width=out[1], interpolation="AREA")
            t = frame.time
            if t is None:  # no pts (raw streams): continue the nominal clock
                t = 0.0 if last_time is None else last_time + 1.0 / stats.fps
            last_time = float(t)
            return np.ascontiguousarray(rgb), last_time

        def decoded() -> Iterator[Any]:
            try:
                for packet in container.demux(stream):
                    try:
                        yield from packet.decode()  # the final empty packet flushes the decoder
                    except av.FFmpegError:
                        stats.errors += 1
            except av.FFmpegError:  # demuxing failed (truncated container): flush what is buffered
                stats.errors += 1
                try:
                    yield from stream.codec_context.decode(None)
                except av.FFmpegError:
                    stats.errors += 1

        for frame in decoded():
            rgb, t = convert(frame)
            if stats.first_time is None:
                stats.first_time = t
            yield rgb, t
            count += 1
            if max_frames is not None and count >= max_frames:
                return
        stats.errors += sum(1 for level, _, _ in logs if level <= av.logging.ERROR)


# ----------------------------------------------------------------------------- DALI frames
def _packet_times(path: Path, stats: _DecodeStats) -> tuple[np.ndarray, float]:
    """Presentation times (sorted, absolute seconds) of the video packets, and the stream fps.

    Demuxing only (no decoding); a truncated container counts as an error in ``stats``.
    """
    with _open(path) as container, _ffmpeg_error_log() as logs:
        stream = _video_stream(container, path)
        fps = _stream_fps(stream) or DEFAULT_FPS
        times: list[float] = []
        try:
            for packet in container.demux(stream):
                if packet.size and packet.pts is not None:
                    times.append(float(packet.pts * packet.time_base))
        except av.FFmpegError:
            stats.errors += 1  # truncated container: keep the times demuxed so far
        stats.errors += sum(1 for level, _, _ in logs if level <= av.logging.ERROR)
        return np.sort(np.asarray(times, dtype=np.float64)), fps


def _dali_pipeline(device: str, out: tuple[int, int] | None) -> Any:
    """One-video streaming decode pipeline: encoded bytes in, sequences of RGB frames out."""
    require_dali()
    from nvidia.dali import fn, pipeline_def, types  # noqa: PLC0415

    @pipeline_def(**dali_pipeline_options(device))
    def pipeline() -> Any:
        video = fn.experimental.inputs.video(
            name="encoded",
            sequence_length=DALI_SEQUENCE_LENGTH,
            device="mixed" if device == "gpu" else "cpu",
            last_sequence_policy="partial",
            no_copy=True,  # reads the caller's memory map; the caller keeps it alive
        )
        if out is not None:
            video = fn.resize(video, size=list(out), interp_type=types.INTERP_LINEAR, antialias=True)
        return video

    pipe = pipeline()
    pipe.build()
    return pipe


def _dali_device(path: Path, codec: str, backend: str) -> str:
    """'cpu' or 'gpu' for DALI on this machine and codec, or BackendUnavailableError."""
    if backend == "dali-gpu" or codec not in DALI_CPU_VIDEO_CODECS:
        if not gpu_available():
            raise BackendUnavailableError(
                f"{path}: DALI's {codec} decoder needs an NVIDIA GPU (mixed backend) and none was found;"
                f" DALI decodes only {', '.join(sorted(DALI_CPU_VIDEO_CODECS))} on the CPU - use backend='pyav'"
            )
        return "gpu"
    return "gpu" if backend == "dali" and gpu_available() else "cpu"


def _dali_frames(
    path: Path,
    device: str,
    max_frames: int | None,
    max_side: int | None,
    size: tuple[int, int] | None,
    stats: _DecodeStats,
) -> Iterator[tuple[np.ndarray, float]]:
    """Yield (RGB frame, absolute time) decoded by DALI, DALI_SEQUENCE_LENGTH frames at a time."""
    times, fps = _packet_times(path, stats)
    with _open(path) as container:
        stream = _video_stream(container, path)
        src_hw = (int(stream.codec_context.height), int(stream.codec_context.width))
    stats.fps, stats.source_size = fps, src_hw
    stats.backend = "dali-gpu" if device == "gpu" else "dali"
    pipe = _dali_pipeline(device, _output_size(src_hw, max_side, size))
    encoded = np.memmap(path, dtype=np.uint8, mode="r")  # not read into RAM: DALI pages it in
    pipe.feed_input("encoded", [encoded])
    limit = len(times) if max_frames is None else min(len(times), max_frames)
    count = 0
    while count < limit:
        try:
            (batch,) = pipe.run()
        except RuntimeError:  # damaged stream: keep the frames decoded so far
            stats.errors += 1
            return
        if device == "gpu":
            batch = batch.as_cpu()
        sequence = np.array(batch[0], copy=True)  # DALI reuses its output buffer on the next run
        for rgb in sequence:
            t = float(times[count]) if count < len(times) else float(times[-1]) + 1.0 / fps
            if stats.first_time is None:
                stats.first_time = t
            yield rgb, t
            count += 1
            if count >= limit:
                return
        if sequence.shape[0] < DALI_SEQUENCE_LENGTH:
            return


# ----------------------------------------------------------------------------- backend choice
def _frame_source(
    path: Path,
    backend: str,
    max_frames: int | None,
    max_side: int | None,
    size: tuple[int, int] | None,
) -> tuple[Callable[[], Iterator[tuple[np.ndarray, float]]], _DecodeStats, bool]:
    """A frame generator factory for the chosen backend, its stats, and whether PyAV may retry."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown video backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    if max_frames is not None and max_frames < 1:
        raise ConfigError(f"read_video: max_frames={max_frames!r} must be >= 1")
    _output_size((1, 1), max_side, size)  # validate the resize arguments before opening anything
    stats = _DecodeStats()
    if backend == "pyav":
        return (lambda: _pyav_frames(path, max_frames, max_side, size, stats)), stats, False
    codec = _codec_name(path)
    if backend == "auto":
        if not dali_available() or (codec not in DALI_CPU_VIDEO_CODECS and not gpu_available()):
            return (lambda: _pyav_frames(path, max_frames, max_side, size, stats)), stats, False
        device = "gpu" if gpu_available() else "cpu"
        return (lambda: _dali_frames(path, device, max_frames, max_side, size, stats)), stats, True
    require_dali()
    device = _dali_device(path, codec, backend)
    return (lambda: _dali_frames(path, device, max_frames, max_side, size, stats)), stats, False


class FrameReader:
    """Decoded frames of a file, one at a time, and what the decoder learnt about it.

    Iterating yields ``(frame uint8 [H, W, 3], timestamp seconds)`` with timestamps relative to the
    first frame, as in :class:`VideoData`. :meth:`first` decodes the first frame ahead (iteration
    still starts with it) so that :attr:`first_time` (absolute, on the container clock: what the
    audio is aligned to), :attr:`fps` and :attr:`source_size` are known before the loop. See
    :func:`iter_frames` for the backends, damage and retry rules.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        backend: Backend = "auto",
        max_frames: int | None = None,
        max_side: int | None = None,
        size: tuple[int, int] | None = None,
    ) -> None:
        self.path = _check_path(path)
        self._args = (max_frames, max_side, size)
        make, self._stats, self._may_retry = _frame_source(self.path, backend, max_frames, max_side, size)
        self._gen = self._decode(make)
        self._head: tuple[np.ndarray, float] | None = None

    @property
    def first_time(self) -> float | None:
        return self._stats.first_time

    @property
    def fps(self) -> float:
        return self._stats.fps

    @property
    def source_size(self) -> tuple[int, int]:
        return self._stats.source_size

    def first(self) -> tuple[np.ndarray, float]:
        """The first frame (decoded once); :class:`MediaError` when the file has none."""
        if self._head is None:
            head = next(self._gen, None)
            if head is None:
                raise MediaError(f"{self.path}: no decodable video frame")
            self._head = head
        return self._head

    def __iter__(self) -> Iterator[tuple[np.ndarray, float]]:
        if self._head is not None:
            yield self._head
        yield from self._gen

    def close(self) -> None:
        self._gen.close()

    def _decode(
        self, make: Callable[[], Iterator[tuple[np.ndarray, float]]]
    ) -> Iterator[tuple[np.ndarray, float]]:
        n = 0
        try:
            for rgb, t in make():
                assert self._stats.first_time is not None
                yield rgb, t - self._stats.first_time
                n += 1
        except RuntimeError:  # DALI failed to build or run its pipeline
            if not self._may_retry or n:
                raise
        if self._may_retry and n == 0:
            make, self._stats, _ = _frame_source(self.path, "pyav", *self._args)
            for rgb, t in make():
                assert self._stats.first_time is not None
                yield rgb, t - self._stats.first_time
                n += 1
        _report_damage(self.path, n, self._stats)


def iter_frames(
    path: str | os.PathLike[str],
    backend: Backend = "auto",
    max_frames: int | None = None,
    max_side: int | None = None,
    size: tuple[int, int] | None = None,
) -> Iterator[tuple[np.ndarray, float]]:
    """Stream ``(frame uint8 [H, W, 3], timestamp seconds)`` pairs, decoding lazily.

    Timestamps are relative to the first frame, as in :class:`VideoData`. Memory stays at a few
    frames (PyAV) or :data:`DALI_SEQUENCE_LENGTH` frames (DALI) whatever the video's length.
    Damaged data ends the stream early with a :class:`MediaWarning`; a file with no decodable
    frame raises :class:`MediaError` without yielding. With ``auto``, a file DALI cannot start
    decoding is decoded by PyAV (frames already yielded cannot be taken back, so a DALI failure
    later on ends the stream with the warning). :class:`FrameReader` is the same stream with the
    decoder's findings (first frame time, fps, coded size).
    """
    yield from FrameReader(path, backend, max_frames, max_side, size)


def _report_damage(path: Path, n_frames: int, stats: _DecodeStats) -> None:
    if n_frames == 0:
        detail = "corrupt or truncated data" if stats.errors else "zero frames"
        raise MediaError(f"{path}: no decodable video frame ({detail})")
    if stats.errors:
        warnings.warn(
            f"{path}: corrupt or truncated video data; kept the {n_frames} decodable frames",
            MediaWarning,
            stacklevel=3,
        )


# ----------------------------------------------------------------------------- audio
class AudioReader:
    """The first audio stream of a file, decoded lazily into mono float32 chunks.

    ``start`` (absolute seconds on the container clock, e.g. the first video frame's time) aligns
    the chunks so that their first sample plays at ``start``: a track that begins later is preceded
    by zeros, one that begins earlier is cut. ``start=None`` keeps the track as decoded. Damaged
    packets are dropped (their neighbours still play). :attr:`rate` and :attr:`has_audio` are known
    as soon as the reader is made (the first audio frame is decoded then); iterate for the chunks.
    Channels are averaged; the sample rate is the track's own.
    """

    def __init__(self, path: str | os.PathLike[str], start: float | None = None) -> None:
        self.path = _check_path(path)
        self.start = start
        self._container = _open(self.path)
        self.rate = 0
        self._frames: Iterator[Any] = iter(())
        self._first: Any = None
        if self._container.streams.audio:
            stream = self._container.streams.audio[0]
            self.rate = int(stream.rate or stream.codec_context.sample_rate or 0)
            self._frames = self._decoded(stream)
            self._first = next(self._frames, None)
            if self._first is not None:
                self.rate = int(self._first.sample_rate)
        if self._first is None or self.rate <= 0:
            self.close()

    @property
    def has_audio(self) -> bool:
        return self._first is not None and self.rate > 0

    def _decoded(self, stream: Any) -> Iterator[Any]:
        try:
            for packet in self._container.demux(stream):
                try:
                    yield from packet.decode()
                except av.FFmpegError:
                    continue  # a damaged audio packet is dropped; its neighbours still play
        except av.FFmpegError:
            return

    def __iter__(self) -> Iterator[np.ndarray]:
        if not self.has_audio:
            return
        resampler = av.AudioResampler(format="fltp")  # float planar, same layout and rate
        first = self._first
        t0 = float(first.time) if first.time is not None else (self.start or 0.0)
        skip = 0
        if self.start is not None:
            offset = int(round((t0 - self.start) * self.rate))
            if offset > 0:
                yield np.zeros(offset, np.float32)
            skip = max(-offset, 0)
        try:
            for frame in itertools.chain([first], self._frames):
                for converted in resampler.resample(frame):
                    chunk = converted.to_ndarray().mean(axis=0, dtype=np.float32)
                    if skip:
                        cut = min(skip, chunk.shape[0])
                        chunk, skip = chunk[cut:], skip - cut
                    if chunk.shape[0]:
                        yield chunk
        finally:
            self.close()

    def close(self) -> None:
        self._container.close()

    def __enter__(self) -> AudioReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pyav_audio(path: Path, start: float | None, stop: float | None) -> tuple[np.ndarray, int] | None:
    """Mono float32 audio of the first audio stream, sample 0 at absolute time ``start`` (see
    :class:`AudioReader`), cut at absolute time ``stop``; None without a decodable audio stream."""
    reader = AudioReader(path, start)
    if not reader.has_audio:
        return None
    limit = None if stop is None or start is None else int(np.ceil((stop - start) * reader.rate))
    chunks, total = [], 0
    for chunk in reader:
        chunks.append(chunk)
        total += chunk.shape[0]
        if limit is not None and total >= limit:
            reader.close()
            break
    if not chunks:
        return None
    audio = np.concatenate(chunks).astype(np.float32, copy=False)
    return (audio[:limit] if limit is not None else audio), reader.rate


def _dali_audio(path: Path) -> tuple[np.ndarray, int]:
    """Decode a WAV/FLAC/OGG file with DALI's CPU audio decoder (channels averaged)."""
    require_dali()
    from nvidia.dali import fn, pipeline_def, types  # noqa: PLC0415

    @pipeline_def(
        batch_size=1,
        num_threads=1,
        device_id=None,
        prefetch_queue_depth=1,
        exec_async=False,
        exec_pipelined=False,
    )
    def pipeline() -> Any:
        encoded = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
        audio, rate = fn.decoders.audio(encoded, downmix=True, dtype=types.FLOAT)
        return audio, rate

    pipe = pipeline()
    pipe.build()
    pipe.feed_input("encoded", [np.fromfile(path, dtype=np.uint8)])
    try:
        audio, rate = pipe.run()
    except RuntimeError as exc:
        raise MediaError(f"{path}: DALI cannot decode this audio file ({str(exc).splitlines()[0]})") from exc
    samples = np.array(audio[0], dtype=np.float32, copy=True).reshape(-1)  # own the memory
    return samples, int(round(float(np.asarray(rate[0]))))


def read_audio(
    path: str | os.PathLike[str], rate: int | None = None, backend: Backend = "auto"
) -> tuple[np.ndarray, int]:
    """Mono float32 audio of a file and its sample rate (resampled to ``rate`` when given).

    ``auto`` uses DALI for WAV/FLAC/OGG files when it is installed, PyAV for everything else
    (including the audio tracks of videos). Raises :class:`MediaError` if there is no audio.
    """
    p = _check_path(path)
    if backend not in BACKENDS:
        raise ConfigError(f"unknown audio backend {backend!r}: choose one of {', '.join(BACKENDS)}")
    use_dali = backend in ("dali", "dali-gpu") or (
        backend == "auto" and p.suffix.lower() in DALI_AUDIO_SUFFIXES and dali_available()
    )
    decoded: tuple[np.ndarray, int] | None = None
    if use_dali:
        if p.suffix.lower() not in DALI_AUDIO_SUFFIXES:
            raise BackendUnavailableError(
                f"{p}: DALI decodes only {', '.join(sorted(DALI_AUDIO_SUFFIXES))} audio files - use backend='pyav'"
            )
        try:
            decoded = _dali_audio(p)
        except MediaError:
            if backend != "auto":
                raise  # with auto, FFmpeg gets a chance (e.g. an OGG stream DALI does not know)
    if decoded is not None:
        audio, native = decoded
    else:
        decoded = _pyav_audio(p, start=None, stop=None)
        if decoded is None:
            with _open(p):
                pass  # a file FFmpeg cannot parse raises its own MediaError here
            raise MediaError(f"{p}: no decodable audio stream")
        audio, native = decoded
    if rate is not None and rate != native:
        return resample(audio, native, rate), int(rate)
    return audio, native


# ----------------------------------------------------------------------------- read_video
def read_video(
    path: str | os.PathLike[str],
    backend: Backend = "auto",
    max_frames: int | None = None,
    audio_rate: int | None = None,
    *,
    max_side: int | None = None,
    size: tuple[int, int] | None = None,
) -> VideoData:
    """Decode a video file: RGB frames, per-frame timestamps and the aligned mono audio.

    Args:
        path: any container FFmpeg reads (mp4, mkv, mov, webm, avi, ...).
        backend: "auto", "pyav", "dali" or "dali-gpu" (see the module docstring).
        max_frames: decode at most this many frames (audio is cut to their span).
        audio_rate: resample the audio to this rate (default: the track's own rate).
        max_side: resize while decoding so the longest side is at most this (aspect kept).
        size: resize while decoding to exactly ``(height, width)``.

    Raises:
        MediaError: missing file, not a media file, no video stream, or no decodable frame.
        BackendUnavailableError: ``dali``/``dali-gpu`` asked for where DALI cannot decode.
    """
    p = _check_path(path)
    make, stats, may_retry = _frame_source(p, backend, max_frames, max_side, size)
    try:
        frames, times = _collect(make())
    except RuntimeError:  # DALI failed to build or run its pipeline for this file
        if not may_retry:
            raise
        frames, times = [], []
    if may_retry and (not frames or stats.errors):
        # DALI gave up on this file: FFmpeg via PyAV is more tolerant of damaged streams.
        make, stats, _ = _frame_source(p, "pyav", max_frames, max_side, size)
        frames, times = _collect(make())
    _report_damage(p, len(frames), stats)
    assert stats.first_time is not None
    timestamps = np.asarray(times, dtype=np.float64) - stats.first_time
    fps = stats.fps
    stop = stats.first_time + float(timestamps[-1]) + 1.0 / fps if max_frames is not None else None
    decoded = _pyav_audio(p, start=stats.first_time, stop=stop)
    if decoded is None:
        rate = int(audio_rate or SILENT_AUDIO_RATE)
        duration = float(timestamps[-1]) + 1.0 / fps
        warnings.warn(
            f"{p}: no audio track (or none decodable); using {duration:.2f} s of silence",
            MediaWarning,
            stacklevel=2,
        )
        audio = np.zeros(int(round(duration * rate)), np.float32)
        has_audio = False
    else:
        audio, rate = decoded
        if audio_rate is not None and audio_rate != rate:
            audio, rate = resample(audio, rate, audio_rate), int(audio_rate)
        has_audio = True
    return VideoData(
        frames=np.stack(frames),
        fps=fps,
        timestamps=timestamps,
        audio=audio,
        audio_rate=rate,
        has_audio=has_audio,
        path=str(p),
        source_size=stats.source_size,
        backend=stats.backend,
    )


def _collect(frames: Iterator[tuple[np.ndarray, float]]) -> tuple[list[np.ndarray], list[float]]:
    images: list[np.ndarray] = []
    times: list[float] = []
    for rgb, t in frames:
        images.append(rgb)
        times.append(t)
    return images, times
