"""Windows from a live source: frames (and audio chunks) pushed one at a time.

:class:`StreamWindower` applies exactly the rule of :func:`avsal_deploy.windows.plan`: when the
stream ends after ``n`` frames, the windows it has emitted are the windows of ``plan(n, ...)``,
with the same clips and audio inputs as the offline preprocessing of the same frames and audio.

A window is emitted as soon as it can no longer change, i.e. when every frame it needs has
arrived and no reflection depends on the (unknown) length of the stream:

* causal mode, frame ``t >= L-1``: immediately when frame ``t`` arrives (zero latency);
* causal mode, frame ``t < L-1``: its reversed window needs frames up to ``t+L-1``, so it comes
  out ``L-1`` frames late (the ViNet/AVRSP start-up rule cannot be computed earlier); a stream
  that ends sooner gets its padded windows from :meth:`StreamWindower.flush`;
* centre mode: ``L - 1 - L//2`` frames late (the future half of the window).

Memory is bounded: the last ``L`` preprocessed frames (a ring), their timestamps, and the audio
from about one frame before the oldest of them.

Time: ``timestamp`` (seconds, any origin) defaults to ``index / fps``; times are taken relative
to the first frame. Audio chunks are consecutive samples at ``audio_rate`` whose first sample
plays at the first frame's time; pushing no audio is silence. An emitted window reads the audio
that has arrived; push each frame with the audio up to the next frame (or later) and the audio
matches the offline excerpt (resampling filters reach a few samples further: with
``audio_rate`` different from the encoder's rate the last samples of a window can differ
slightly from the offline ones unless the audio runs a little ahead).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from avsal_deploy.config import Config, check_variant
from avsal_deploy.data.audio import audio_input, envelope_input
from avsal_deploy.data.preprocess import preprocess_frames
from avsal_deploy.data.signal import AudioTrack
from avsal_deploy.errors import ConfigError
from avsal_deploy.windows import Window, computed_targets, nearest_assignment, window_for, window_settings

#: Extra audio kept before the oldest buffered frame's span (seconds): covers resampling filters.
_AUDIO_MARGIN_S = 0.05


@dataclass(frozen=True)
class StreamWindow:
    """A window ready for the model: its plan entry, clip and aligned audio input."""

    window: Window
    clip: np.ndarray  # float32 [3, T, h, w], normalised (preprocess_frames)
    audio: np.ndarray  # config.audio_input_shape(variant)
    timestamp: float  # the target frame's time, seconds from the first frame
    envelope: np.ndarray | None = None  # config.envelope_shape(variant), when the variant takes it


class StreamWindower:
    """Turns a live frame/audio stream into model-ready windows (see the module docstring).

    Args:
        config: the profile; ``variant`` picks the window length and the audio feature.
        fps: the stream's nominal frame rate (frame times when no timestamp is pushed, and each
            frame's audio span ``1/fps``).
        audio_rate: sample rate of the pushed audio chunks (default ``audio.soundnet_rate``).
        audio_start: when the first pushed audio sample plays, in seconds on the clock of the
            frames' timestamps (default: with the first frame). Audio before the first frame is
            dropped and a later start is preceded by silence, exactly as a file's soundtrack is
            aligned to its first frame (:class:`~avsal_deploy.data.decode.AudioReader`): a client
            that demuxes a file itself sends its audio track's start time here, or its audio plays
            early or late by the difference (120 ms of it moved maps to CC 0.13 on some frames).
        stride, mode: as :func:`avsal_deploy.windows.plan` (default ``config.window``). With a
            stride, only targets 0, k, 2k, ... are emitted while streaming and the last frame at
            :meth:`flush`; :meth:`source_of` tells which computed map each frame shows.
        letterbox: preprocess frames as :func:`avsal_deploy.data.preprocess.preprocess_frames`.
    """

    def __init__(
        self,
        config: Config,
        variant: str = "hybrid",
        *,
        fps: float,
        audio_rate: int | None = None,
        stride: int | None = None,
        mode: str | None = None,
        letterbox: bool = False,
        audio_start: float | None = None,
    ) -> None:
        check_variant(variant)
        if fps <= 0:
            raise ConfigError(f"StreamWindower: fps={fps!r} must be positive")
        self.config = config
        self.variant = variant
        self.fps = float(fps)
        self.clip_len, self.stride, self.mode = window_settings(config, variant, stride, mode)
        self.audio_rate = int(audio_rate or config.audio.soundnet_rate)
        if self.audio_rate <= 0:
            raise ConfigError(f"StreamWindower: audio_rate={audio_rate!r} must be positive")
        self.letterbox = letterbox
        self._frames: dict[int, np.ndarray] = {}
        self._times: dict[int, float] = {}
        self._t0: float | None = None
        self._audio_chunks: deque[np.ndarray] = deque()
        self._audio = np.zeros(0, np.float32)
        self._audio_offset = 0  # track index of self._audio[0]
        self.audio_start = None if audio_start is None else float(audio_start)
        if self.audio_start is not None and not np.isfinite(self.audio_start):
            raise ConfigError(
                f"StreamWindower: audio_start={audio_start!r} must be a finite number of seconds"
            )
        self._skip: int | None = (
            None  # samples still to drop (audio before the first frame); None: not yet known
        )
        self._pending: list[int] = []
        self._count = 0
        self._closed = False

    @property
    def n_frames(self) -> int:
        """Frames pushed so far."""
        return self._count

    @property
    def closed(self) -> bool:
        return self._closed

    def frame_time(self, index: int) -> float:
        """Seconds from the first frame to frame ``index`` (one of the last ``L`` pushed)."""
        return self._times[index]

    # ------------------------------------------------------------------ input
    def push(
        self, frame: np.ndarray, audio_chunk: np.ndarray | None = None, timestamp: float | None = None
    ) -> list[StreamWindow]:
        """Add the next frame (uint8 [H, W, 3]) and its audio; return the windows now ready."""
        if self._closed:
            raise ConfigError("StreamWindower: push() after flush(); start a new windower")
        index = self._count
        pre = preprocess_frames(np.asarray(frame)[None], self.config, self.letterbox)[0]
        if timestamp is None:
            timestamp = index / self.fps
        if self._t0 is None:
            self._t0 = float(timestamp)
        self._frames[index] = pre
        self._times[index] = float(timestamp) - self._t0
        if audio_chunk is not None:
            self._take_audio(np.asarray(audio_chunk, dtype=np.float32).reshape(-1))
        self._count += 1
        if index % self.stride == 0:
            self._pending.append(index)
        ready = [t for t in self._pending if self._settled(t, index)]
        out = self._emit(ready, n_frames=index + 1)
        self._forget()
        return out

    def flush(self) -> list[StreamWindow]:
        """End of stream: the remaining windows (padded as :func:`plan` pads them)."""
        if self._closed:
            return []
        self._closed = True
        if self._count == 0:
            return []
        last = self._count - 1
        if last % self.stride != 0:
            self._pending.append(last)
        return self._emit(list(self._pending), n_frames=self._count)

    # ------------------------------------------------------------------ assignment
    def source_of(self, frame: int) -> int | None:
        """The target frame whose map ``frame`` shows, once that can no longer change, else None."""
        if not 0 <= frame < self._count:
            return None
        if self._closed:
            targets = computed_targets(self._count, self.stride)
            return targets[int(nearest_assignment(self._count, targets)[frame])]
        newest = self._count - 1
        left = frame - frame % self.stride
        right = left + self.stride
        if right <= newest:
            return left if frame - left <= right - frame else right
        # Any target still to come is at least newest - frame away; ties go to the earlier one.
        return left if newest - frame >= frame - left else None

    # ------------------------------------------------------------------ internals
    def _ideal_range(self, target: int) -> tuple[int, int]:
        """First and last frame index of ``target``'s window before any reflection."""
        n = self.clip_len
        if self.mode == "causal":
            return (target, target + n - 1) if target < n - 1 else (target - n + 1, target)
        first = target - n // 2
        return first, first + n - 1

    def _settled(self, target: int, newest: int) -> bool:
        lo, hi = self._ideal_range(target)
        # Indices up to `newest` are known; a negative index reflects to -index, which is fixed
        # once that frame exists, whatever the final length.
        return hi <= newest and -lo <= newest

    def _emit(self, targets: list[int], n_frames: int) -> list[StreamWindow]:
        if not targets:
            return []
        audio = self._audio_track()
        out = []
        for target in sorted(targets):
            window = window_for(target, n_frames, self.config, self.variant, self.mode)
            missing = [i for i in window.frames if i not in self._frames]
            if missing:  # the ring is sized so this cannot happen; fail loudly if it ever does
                raise RuntimeError(f"stream buffer lost frames {missing} needed by the window of {target}")
            clip = np.stack([self._frames[i] for i in window.frames], axis=1)
            track = AudioTrack(audio, self.audio_rate, self.fps, self._times, self._audio_offset)
            audio_in = audio_input(track, window, self.config, self.variant)
            envelope = (
                envelope_input(track, window, self.config)
                if self.config.uses_envelope(self.variant)
                else None
            )
            out.append(
                StreamWindow(
                    window=window, clip=clip, audio=audio_in, timestamp=self._times[target], envelope=envelope
                )
            )
            self._pending.remove(target)
        return out

    def _take_audio(self, chunk: np.ndarray) -> None:
        """Buffer a pushed chunk, aligned to the first frame (see ``audio_start``)."""
        if self._skip is None:  # the first chunk: where the audio starts relative to frame 0
            assert self._t0 is not None
            start = self._t0 if self.audio_start is None else self.audio_start
            shift = int(round((start - self._t0) * self.audio_rate))
            self._audio_offset = max(shift, 0)  # a late start: silence before it
            self._skip = max(-shift, 0)  # an early start: what plays before the first frame
        if self._skip:
            dropped = min(self._skip, chunk.shape[0])
            chunk = chunk[dropped:]
            self._skip -= dropped
        if chunk.shape[0]:
            self._audio_chunks.append(chunk)

    def _audio_track(self) -> np.ndarray:
        """The buffered audio as one array (chunks are merged lazily, once per emission)."""
        if self._audio_chunks:
            self._audio = np.concatenate([self._audio, *self._audio_chunks])
            self._audio_chunks.clear()
        return self._audio

    def _forget(self) -> None:
        """Drop frames older than the ring and audio older than the oldest kept frame's span."""
        oldest = self._count - self.clip_len
        for i in [i for i in self._frames if i < oldest]:
            del self._frames[i]
            del self._times[i]
        if oldest <= 0:
            return
        keep_from_t = self._times[oldest] - 1.0 / self.fps - _AUDIO_MARGIN_S
        keep_from = int(np.floor(keep_from_t * self.audio_rate))
        audio = self._audio_track()
        drop = min(keep_from - self._audio_offset, audio.shape[0])
        if drop > 0:
            self._audio = audio[drop:].copy()
            self._audio_offset += drop
