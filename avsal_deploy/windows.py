"""The clip-window planner: which frames form the window that predicts each frame.

One rule serves offline prediction (:func:`plan`), training (:func:`sample_windows`) and live
streams (:class:`avsal_deploy.data.stream.StreamWindower`); all three call :func:`window_for`.
Every frame of every video, from a single frame upward, gets exactly one window. ``L`` below is
``config.clip_len(variant)``; frames are 0-based.

Causal mode (AVRSP, ViNet; the default)
    The target is the LAST frame of its window. A frame ``t >= L-1`` is predicted from frames
    ``t-L+1, ..., t``. A frame ``t < L-1`` has too little past, so it is predicted from its
    future, time-reversed: frames ``t+L-1, t+L-2, ..., t`` (descending; the target is still last).
    This is the reference rule (ViNet ``generate_result_audio_visual.py``: while sliding, the clip
    of frames ``i-L+1..i`` flipped in time predicts frame ``i-L+1`` as long as that frame is below
    ``L-1``): frame 0 gets ``[L-1, ..., 0]`` ("frames 32..1 predict frame 1" in 1-based terms),
    frame 1 gets ``[L, ..., 1]``, frame ``L-2`` gets ``[2L-3, ..., L-2]``.

Centre mode (DiffSal)
    The target sits at position ``L // 2`` of its window: frames ``t - L//2, ..., t + L - 1 - L//2``
    (DiffSal takes the median of 16 consecutive frames rounded half up, i.e. 8 frames before the
    target and 7 after). The reference skips the first 8 frames; we pad instead (below).

Padding (videos shorter than the reference needs)
    Peers skip videos under ``2L-1`` frames; we never do. An index ``j`` that falls outside
    ``[0, n-1]`` is reflected at the ends without repeating the edge frame ("reflect-101":
    ``... 2 1 [0 1 2 ... n-1] n-2 n-3 ...``), folding again as often as needed; a one-frame video
    repeats its frame. Reflection keeps the clip moving instead of freezing it. In causal mode the
    reflection is applied to the forward clip ``t, t+1, ..., t+L-1`` before it is reversed, so the
    target stays last; e.g. ``n=5, L=8``: frame 0 gets ``[1, 2, 3, 4, 3, 2, 1, 0]`` and frame 3
    gets ``[2, 1, 0, 1, 2, 3, 4, 3]``. Such windows are flagged ``padded``.

Stride ``k``
    Only every ``k``-th frame (0, k, 2k, ...) and always the last frame are computed; every other
    frame takes the map of the nearest computed frame (the earlier one on a tie, which is
    available sooner in a stream). :class:`WindowPlan` returns the windows to compute and the
    assignment of each frame to one of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np

from avsal_deploy.config import Config, check_variant
from avsal_deploy.errors import ConfigError

Mode = Literal["causal", "centre"]
MODES: tuple[str, ...] = ("causal", "centre")


@dataclass(frozen=True)
class Window:
    """One clip: the frame indices (model order) whose map is the prediction for ``target``."""

    target: int
    frames: tuple[int, ...]
    reversed: bool  # a causal window read backwards in time (the first L-1 frames)
    padded: bool  # some indices were reflected at the video's ends

    def __len__(self) -> int:
        return len(self.frames)


@dataclass(frozen=True, eq=False)
class WindowPlan:
    """The windows to compute for a video and which window provides each frame's map.

    ``windows`` are sorted by target. ``assignment[f]`` is the index in ``windows`` of the window
    whose map frame ``f`` shows; ``plan[f]`` gives that window's frame indices directly.
    """

    n_frames: int
    clip_len: int
    mode: str
    stride: int
    windows: tuple[Window, ...]
    assignment: np.ndarray  # int64 [n_frames]

    def __len__(self) -> int:
        return self.n_frames

    def __getitem__(self, frame: int) -> tuple[int, ...]:
        return self.window_of(frame).frames

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        return (self.windows[i].frames for i in self.assignment)

    def window_of(self, frame: int) -> Window:
        """The window whose map is frame ``frame``'s prediction."""
        if not -self.n_frames <= frame < self.n_frames:
            raise IndexError(f"frame {frame} outside a {self.n_frames}-frame video")
        return self.windows[int(self.assignment[frame])]

    @property
    def targets(self) -> np.ndarray:
        """Frames whose maps are computed, ascending."""
        return np.array([w.target for w in self.windows], dtype=np.int64)


def reflect_index(j: int, n_frames: int) -> int:
    """Map any integer onto ``[0, n_frames)`` by reflect-101 folding (period ``2(n-1)``)."""
    if n_frames == 1:
        return 0
    period = 2 * (n_frames - 1)
    j = j % period
    return j if j < n_frames else period - j


def window_settings(
    config: Config, variant: str, stride: int | None, mode: str | None
) -> tuple[int, int, str]:
    """(clip length, stride, mode) for a variant, ``None`` meaning the ``config.window`` value."""
    check_variant(variant)
    stride = config.window.stride if stride is None else int(stride)
    mode = config.window.mode if mode is None else mode
    if stride < 1:
        raise ConfigError(f"window stride={stride}: must be >= 1")
    if mode not in MODES:
        raise ConfigError(f"window mode={mode!r}: must be 'causal' or 'centre'")
    return config.clip_len(variant), stride, mode


def window_for(
    target: int, n_frames: int, config: Config, variant: str = "hybrid", mode: str | None = None
) -> Window:
    """The window predicting frame ``target`` of an ``n_frames``-frame video (see module doc)."""
    clip_len, _, mode = window_settings(config, variant, None, mode)
    return _window(target, n_frames, clip_len, mode)


def _window(target: int, n_frames: int, clip_len: int, mode: str) -> Window:
    if n_frames < 1:
        raise ConfigError(f"a video needs at least one frame, got n_frames={n_frames}")
    if not 0 <= target < n_frames:
        raise ConfigError(f"target frame {target} outside a {n_frames}-frame video")
    if mode == "causal":
        reverse = target < clip_len - 1
        ideal = (
            list(range(target, target + clip_len))
            if reverse
            else list(range(target - clip_len + 1, target + 1))
        )
    else:
        reverse = False
        first = target - clip_len // 2
        ideal = list(range(first, first + clip_len))
    padded = ideal[0] < 0 or ideal[-1] >= n_frames
    frames = [reflect_index(j, n_frames) for j in ideal] if padded else ideal
    if reverse:
        frames.reverse()
    return Window(target=target, frames=tuple(frames), reversed=reverse, padded=padded)


def computed_targets(n_frames: int, stride: int) -> list[int]:
    """Frames whose maps are computed at ``stride``: 0, k, 2k, ... and always the last frame."""
    targets = list(range(0, n_frames, stride))
    if targets[-1] != n_frames - 1:
        targets.append(n_frames - 1)
    return targets


def nearest_assignment(n_frames: int, targets: list[int]) -> np.ndarray:
    """For each frame, the index of the nearest target (the earlier one on a tie)."""
    t = np.asarray(targets, dtype=np.int64)
    frames = np.arange(n_frames, dtype=np.int64)
    right = np.clip(np.searchsorted(t, frames, side="left"), 0, len(t) - 1)
    left = np.clip(right - 1, 0, len(t) - 1)
    take_left = np.abs(frames - t[left]) <= np.abs(t[right] - frames)
    return np.where(take_left, left, right).astype(np.int64)


def plan(
    n_frames: int,
    config: Config,
    variant: str = "hybrid",
    stride: int | None = None,
    mode: str | None = None,
) -> WindowPlan:
    """Windows for every frame of an ``n_frames``-frame video (``stride``/``mode`` default to
    ``config.window``). Deterministic and pure."""
    clip_len, stride, mode = window_settings(config, variant, stride, mode)
    if n_frames < 1:
        raise ConfigError(f"a video needs at least one frame, got n_frames={n_frames}")
    targets = computed_targets(n_frames, stride)
    windows = tuple(_window(t, n_frames, clip_len, mode) for t in targets)
    return WindowPlan(
        n_frames=n_frames,
        clip_len=clip_len,
        mode=mode,
        stride=stride,
        windows=windows,
        assignment=nearest_assignment(n_frames, targets),
    )


def sample_windows(
    n_frames: int,
    config: Config,
    rng: np.random.Generator,
    variant: str = "hybrid",
    count: int = 1,
    mode: str | None = None,
    include_padded: bool = True,
) -> list[Window]:
    """Random training windows built by the same rule as :func:`plan`.

    Targets are drawn uniformly over the frames (without replacement while ``count`` allows), so
    training sees the reversed and padded windows inference will use. ``include_padded=False``
    restricts the draw to unpadded windows when the video has any.
    """
    clip_len, _, mode = window_settings(config, variant, None, mode)
    if n_frames < 1:
        raise ConfigError(f"a video needs at least one frame, got n_frames={n_frames}")
    if count < 1:
        raise ConfigError(f"sample_windows: count={count} must be >= 1")
    candidates = np.arange(n_frames)
    if not include_padded:
        unpadded = [t for t in range(n_frames) if not _window(t, n_frames, clip_len, mode).padded]
        if unpadded:
            candidates = np.asarray(unpadded)
    chosen = rng.choice(candidates, size=count, replace=count > len(candidates))
    return [_window(int(t), n_frames, clip_len, mode) for t in chosen]
