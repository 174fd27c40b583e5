"""Sample-rate conversion shared by decoding and the audio features (no other dependency)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.signal import resample_poly

from avsal_deploy.errors import ConfigError

#: Per-frame times: an array indexed by frame, or a mapping {frame index: seconds} (streaming).
Timestamps = Sequence[float] | np.ndarray | Mapping[int, float]


@dataclass(frozen=True)
class AudioTrack:
    """Mono audio and the clock that ties it to the video's frames.

    ``samples[0]`` is sample ``offset`` of the track (a streaming buffer passes how much it has
    dropped); sample 0 of the track plays at the first frame's time. Frame ``k`` is at
    ``timestamps[k]`` seconds when given (variable frame rate), else ``k / fps``.
    """

    samples: np.ndarray  # float32 [L] mono
    rate: int
    fps: float
    timestamps: Timestamps | None = None
    offset: int = 0


def rate_ratio(from_rate: int, to_rate: int) -> tuple[int, int]:
    if from_rate <= 0 or to_rate <= 0:
        raise ConfigError(f"audio sample rates must be positive, got {from_rate} -> {to_rate}")
    g = math.gcd(int(from_rate), int(to_rate))
    return int(to_rate) // g, int(from_rate) // g


def resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """Polyphase resampling (Kaiser-windowed FIR, scipy defaults) to float32."""
    x = np.asarray(audio, dtype=np.float64)
    if from_rate == to_rate:
        return x.astype(np.float32)
    up, down = rate_ratio(from_rate, to_rate)
    return resample_poly(x, up, down).astype(np.float32)
