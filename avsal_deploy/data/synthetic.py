"""A synthetic audio-visual saliency benchmark that tests the science, not just the shapes.

No eye-tracking data can be fetched here, so this module writes a data set in the STAViS layout
(set name ``synthetic``, see :mod:`avsal_deploy.data.datasets`) whose ground truth comes from a
documented attention model in which **only the audio tells which object people look at**.

Scenes
------
Each video shows a textured, noisy background (low-pass coloured noise, static grain and fresh
per-frame sensor noise) and K = 2 or 3 objects of distinct shapes (disc, square, diamond, triangle,
hexagon: all of equal area) and distinct hues (all of equal luma, so equal contrast against the
background). The frame is split into K vertical cells, one object per cell in a random order; each
object drifts at the same speed in a random direction, bouncing inside its cell, and *pulses*: its
radius and its contrast follow a rhythm ``s_k(t) = ((1 + cos(2 pi f_k t + phi_k)) / 2) ** 2`` with
its own rate ``f_k`` (distinct rates drawn around 2, 3, 4, 5, 6 Hz) and phase. Size range, contrast
range, speed and pulse depth are the same for every object, and which object gets which rate,
shape, hue and cell is random, so across the set no visual cue marks the object people look at.

Audio, by condition (videos cycle through the three conditions)
---------------------------------------------------------------
* ``relevant``: one random object is the sound source. The soundtrack is a burst train: a tone (its
  own pitch, 2nd harmonic) mixed with noise, whose amplitude envelope is that object's ``s_k(t)``,
  sample-accurate with the frames (frame ``i`` shows time ``i / fps``).
* ``music``: unrelated background music: a chord progression (chords held 1.1-1.7 s) and a legato
  melody, all with equal-power cross-fades so its loudness is nearly flat and follows no object.
* ``silent``: digital silence (all-zero samples; the wav file still exists).
A noise floor of -40 dBFS is added to the non-silent conditions.

Attention model (the ground truth)
----------------------------------
For every frame, ``n_observers`` (20) fixations are drawn independently:

1. with probability ``centre_bias`` (0.1) from the centre bias, a Gaussian at the frame centre with
   standard deviations ``centre_sigma`` (0.15) times the frame's height and width;
2. otherwise on an object: in ``relevant`` videos the sound source with probability
   ``source_prob`` (0.8) and one of the other objects uniformly otherwise; in ``music`` and
   ``silent`` videos every object is equally likely (pure visual saliency: equally salient objects);
3. a fixation on object k lands at its centre plus Gaussian jitter of ``jitter`` (0.35) times its
   current radius.

Positions are rounded to pixels and clipped to the frame. The binary fixation map marks fixated
pixels (``fixMap_%05d.mat``, variable ``eyeMap``, as the real sets). The density map is the
fixation-count map blurred by a Gaussian of ``blur_sigma`` (0.03) times the frame width, i.e. about
1 degree of visual angle for a display spanning 33 degrees horizontally (a typical eye-tracking
set-up), then divided by its maximum and stored as an 8-bit JPEG (``maps/eyeMap_%05d.jpg``).

Files beyond the STAViS layout: ``<root>/conditions.json`` (video -> condition),
``annotations/synthetic/<video>/objects.json`` (per-frame centres and radii of every object, its
rhythm and which one is the source) for analysis, and ``annotations/synthetic/generator.json``
(the parameters). Everything is a deterministic function of the seed: the same seed writes
byte-identical files (MAT headers carry a fixed text instead of a time stamp).

Sizes follow the profile: frames at the config's ``video.height x video.width`` and
``6 * video.clip_len`` frames per video (tiny: 64x96, 48 frames), 25 fps, 22050 Hz mono 16-bit
audio; each can be overridden.
"""

from __future__ import annotations

import io
import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
import scipy.io
from PIL import Image
from scipy.io import wavfile
from scipy.ndimage import gaussian_filter, uniform_filter1d

from avsal_deploy.config import load_config
from avsal_deploy.errors import ConfigError

SET_NAME = "synthetic"
CONDITIONS: tuple[str, str, str] = ("relevant", "music", "silent")
SHAPES: tuple[str, ...] = ("disc", "square", "diamond", "triangle", "hexagon")
OBJECTS_PER_VIDEO: tuple[int, int] = (2, 3)  # K drawn uniformly in this closed range
RHYTHM_GRID_HZ: tuple[float, ...] = (2.0, 3.0, 4.0, 5.0, 6.0)
RHYTHM_JITTER_HZ = 0.15
FRAMES_PER_CLIP = 6  # default video length in clip lengths of the profile

# Appearance (fractions of the frame or of the [0, 1] intensity range).
_RADIUS = 0.08  # base radius / min(H, W); every shape has the area of a disc of this radius
_EXTENT = 1.56  # farthest vertex / radius over the shapes (the triangle's circumradius is 1.555 r)
_PULSE_SIZE = 0.35  # radius = base * (1 + _PULSE_SIZE * s(t))
_PULSE_CONTRAST = 0.3  # contrast = (1 - _PULSE_CONTRAST) + _PULSE_CONTRAST * s(t)
_SPEED = 0.12  # drift speed, frame widths per second
_BG_MEAN = 0.40
_OBJECT_LUMA = 0.72
_NOISE_FLOOR = 0.01
_JPEG_QUALITY = 92
_MAT_HEADER = b"MATLAB 5.0 MAT-file, written by avsal_deploy.data.synthetic".ljust(116, b" ")


@dataclass(frozen=True)
class AttentionModel:
    """Parameters of the observers' fixation model (see the module docstring)."""

    n_observers: int = 20
    centre_bias: float = 0.1
    centre_sigma: float = 0.15  # fraction of the frame's height / width
    source_prob: float = 0.8  # P(sound source | not centre-bias, relevant sound)
    jitter: float = 0.35  # fraction of the fixated object's radius
    blur_sigma: float = 0.03  # density-map blur, fraction of the frame width (~1 degree)

    def __post_init__(self) -> None:
        if self.n_observers < 1:
            raise ConfigError(f"attention n_observers={self.n_observers}: must be >= 1")
        for name in ("centre_bias", "source_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"attention {name}={getattr(self, name)}: must be a probability in [0, 1]")
        for name in ("centre_sigma", "jitter", "blur_sigma"):
            if getattr(self, name) <= 0.0:
                raise ConfigError(f"attention {name}={getattr(self, name)}: must be > 0")


@dataclass(frozen=True)
class SceneOptions:
    """What can vary in the task; the defaults are the benchmark as first written, and
    with them :func:`generate` writes byte for byte what it wrote before these options existed.

    - ``objects``: (min, max) objects per video, drawn uniformly (2 to 4; with more than 3 the
      frame is split into a 2-row grid of cells instead of vertical strips);
    - ``audio_lag_ms``: (min, max) delay of the relevant soundtrack behind the picture, drawn
      uniformly per relevant video (0 to 60 ms: up to 1.5 frames at 25 fps);
    - ``rhythm_grid_hz`` / ``rhythm_jitter_hz``: the pulse rates objects draw from (distinct grid
      values plus a uniform jitter);
    - ``shapes``: the shapes objects draw from (distinct per video, at least ``objects[1]``);
    - ``hues``: ``"spread"`` (evenly around the hue wheel from a random start) or ``"random"``
      (independent uniform hues); every colour keeps the equal luma.
    """

    objects: tuple[int, int] = OBJECTS_PER_VIDEO
    audio_lag_ms: tuple[float, float] = (0.0, 0.0)
    rhythm_grid_hz: tuple[float, ...] = RHYTHM_GRID_HZ
    rhythm_jitter_hz: float = RHYTHM_JITTER_HZ
    shapes: tuple[str, ...] = SHAPES
    hues: str = "spread"

    def __post_init__(self) -> None:
        lo, hi = (int(v) for v in self.objects)
        if not 2 <= lo <= hi <= 4:
            raise ConfigError(f"synthetic objects={self.objects}: need 2 <= min <= max <= 4")
        a, b = (float(v) for v in self.audio_lag_ms)
        if not 0.0 <= a <= b <= 200.0:
            raise ConfigError(f"synthetic audio_lag_ms={self.audio_lag_ms}: need 0 <= min <= max <= 200")
        if len(set(self.rhythm_grid_hz)) < hi or min(self.rhythm_grid_hz) <= 0:
            raise ConfigError(
                f"synthetic rhythm_grid_hz={self.rhythm_grid_hz}: need at least {hi} distinct positive rates"
            )
        gaps = np.diff(np.sort(np.asarray(self.rhythm_grid_hz, np.float64)))
        if not 0.0 <= self.rhythm_jitter_hz < max(float(gaps.min()) / 2.0, 1e-9):
            raise ConfigError(
                f"synthetic rhythm_jitter_hz={self.rhythm_jitter_hz}: must be >= 0 and below half the "
                "smallest gap between grid rates (rates must stay distinct)"
            )
        unknown = sorted(set(self.shapes) - set(SHAPES))
        if unknown or len(set(self.shapes)) < hi:
            raise ConfigError(
                f"synthetic shapes={self.shapes}: need at least {hi} distinct shapes of {', '.join(SHAPES)}"
            )
        if self.hues not in ("spread", "random"):
            raise ConfigError(f"synthetic hues={self.hues!r}: choose 'spread' or 'random'")

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SceneOptions:
        """From :meth:`to_json` (or a TOML table); unknown keys are rejected, lists become tuples."""
        names = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"synthetic options: unknown key(s) {', '.join(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


DEFAULT_OPTIONS = SceneOptions()


@dataclass(frozen=True)
class SceneObject:
    """One pulsing object: its look, its rhythm and its per-frame geometry (pixels)."""

    shape: str
    colour: tuple[float, float, float]
    rhythm_hz: float
    phase: float
    cell: int
    centres: np.ndarray  # [T, 2] (x, y)
    radii: np.ndarray  # [T]

    def to_json(self) -> dict[str, object]:
        return {
            "shape": self.shape,
            "colour": [round(c, 4) for c in self.colour],
            "rhythm_hz": round(self.rhythm_hz, 6),
            "phase": round(self.phase, 6),
            "cell": self.cell,
            "centres": np.round(self.centres, 3).tolist(),
            "radii": np.round(self.radii, 3).tolist(),
        }


@dataclass(frozen=True)
class Scene:
    """A rendered video with its soundtrack and ground truth."""

    condition: str
    fps: float
    frames: np.ndarray  # uint8 [T, H, W, 3]
    audio: np.ndarray  # float32 [n] in [-1, 1]
    audio_rate: int
    objects: tuple[SceneObject, ...]
    source: int | None  # index of the sound-source object (relevant videos only)
    fixations: np.ndarray  # bool [T, H, W]
    maps: np.ndarray  # float32 [T, H, W] in [0, 1], max 1 per frame
    audio_lag: float = 0.0  # seconds the relevant soundtrack trails the picture

    def objects_json(self) -> dict[str, object]:
        t, h, w = self.maps.shape
        out: dict[str, object] = {
            "condition": self.condition,
            "fps": self.fps,
            "n_frames": t,
            "size": [h, w],
            "source": self.source,
            "objects": [o.to_json() for o in self.objects],
        }
        if self.audio_lag:
            out["audio_lag_s"] = round(self.audio_lag, 6)
        return out


# --------------------------------------------------------------------------- rhythm and audio
def rhythm(t: np.ndarray, hz: float, phase: float) -> np.ndarray:
    """The pulse train ``((1 + cos(2 pi hz t + phase)) / 2) ** 2`` in [0, 1]."""
    return (0.5 * (1.0 + np.cos(2.0 * np.pi * hz * t + phase))) ** 2


def _midi_hz(note: float) -> float:
    return 440.0 * 2.0 ** ((note - 69.0) / 12.0)


def _glide_voice(
    t: np.ndarray, rate: int, notes_hz: np.ndarray, bounds: np.ndarray, glide: float, phase: float
) -> np.ndarray:
    """A phase-continuous tone playing ``notes_hz[k]`` in [bounds[k], bounds[k+1]), gliding between notes.

    The frequency changes linearly over ``glide`` seconds and the amplitude never changes, so the
    voice is legato with a flat loudness envelope (no note onsets that could mimic a rhythm).
    """
    seg = np.clip(np.searchsorted(bounds, t, side="right") - 1, 0, len(notes_hz) - 1)
    freq = uniform_filter1d(notes_hz[seg], size=max(1, int(glide * rate)), mode="nearest")
    ph = phase + 2.0 * np.pi * np.cumsum(freq) / rate
    return np.sin(ph) + 0.25 * np.sin(2.0 * ph)


def _music(rng: np.random.Generator, t: np.ndarray, rate: int) -> np.ndarray:
    """A chord progression under a legato melody: tonal, but synchronised to nothing on screen."""
    duration = float(t[-1]) + 1e-3
    key = int(rng.integers(45, 57))
    minor = bool(rng.integers(0, 2))
    scale = np.array([0, 2, 3, 5, 7, 8, 10] if minor else [0, 2, 4, 5, 7, 9, 11])
    chord_len = float(rng.uniform(1.1, 1.7))
    chord_bounds = np.arange(0.0, duration + chord_len, chord_len)
    degrees = rng.choice([0, 3, 4, 5], size=len(chord_bounds))
    out = np.zeros_like(t)
    for voice in (0, 2, 4):  # root, third, fifth of each chord
        steps = degrees + voice
        notes = np.array([_midi_hz(key + scale[d % 7] + 12 * (d // 7)) for d in steps])
        out += 0.22 * _glide_voice(t, rate, notes, chord_bounds, 0.15, float(rng.uniform(0, 2 * np.pi)))
    lengths = rng.choice([0.35, 0.5, 0.7], size=int(duration / 0.35) + 2)
    melody_bounds = np.concatenate([[0.0], np.cumsum(lengths)])
    melody = np.array([_midi_hz(key + 24 + scale[j]) for j in rng.integers(0, 7, size=len(melody_bounds))])
    out += 0.3 * _glide_voice(t, rate, melody, melody_bounds, 0.06, float(rng.uniform(0, 2 * np.pi)))
    return out


def _tone(t: np.ndarray, hz: float, phase: float) -> np.ndarray:
    return np.sin(2 * np.pi * hz * t + phase) + 0.25 * np.sin(4 * np.pi * hz * t + 2 * phase)


def _burst_train(rng: np.random.Generator, t: np.ndarray, obj: SceneObject, lag: float = 0.0) -> np.ndarray:
    """A tone-plus-noise carrier whose amplitude envelope is the source object's rhythm, trailing
    the picture by ``lag`` seconds."""
    pitch = float(rng.uniform(300.0, 700.0))
    carrier = 0.75 * _tone(t, pitch, 0.0) + 0.35 * rng.standard_normal(t.shape)
    return rhythm(t - lag if lag else t, obj.rhythm_hz, obj.phase) * carrier


def _soundtrack(
    rng: np.random.Generator,
    condition: str,
    n_samples: int,
    rate: int,
    source: SceneObject | None,
    lag: float = 0.0,
) -> np.ndarray:
    """Silence, the source's burst train (``relevant``, ``source`` given; ``lag`` seconds behind
    the picture) or music, peak 0.4-0.8."""
    if condition == "silent":
        return np.zeros(n_samples, np.float32)
    t = np.arange(n_samples) / rate
    sound = _music(rng, t, rate) if source is None else _burst_train(rng, t, source, lag)
    peak = float(np.max(np.abs(sound))) or 1.0
    gain = float(rng.uniform(0.4, 0.8))
    sound = gain * sound / peak + _NOISE_FLOOR * rng.standard_normal(n_samples)
    return np.clip(sound, -1.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- visuals
def _equal_luma_colour(hue: float) -> tuple[float, float, float]:
    """A saturated hue blended toward white until its Rec.601 luma equals ``_OBJECT_LUMA``."""
    k = np.array([5.0, 3.0, 1.0])
    rgb = 1.0 - np.clip(np.minimum(np.mod(k + hue * 6.0, 6.0), 4.0 - np.mod(k + hue * 6.0, 6.0)), 0.0, 1.0)
    luma = float(rgb @ np.array([0.299, 0.587, 0.114]))
    mix = (_OBJECT_LUMA - luma) / (1.0 - luma)
    out = rgb + mix * (1.0 - rgb) if mix > 0 else rgb * (_OBJECT_LUMA / luma)
    return (float(out[0]), float(out[1]), float(out[2]))


def _sdf(shape: str, dx: np.ndarray, dy: np.ndarray, r: float) -> np.ndarray:
    """Signed distance (pixels, negative inside) to a shape of area pi r^2 centred at the origin."""
    if shape == "disc":
        return np.hypot(dx, dy) - r
    sides, turn = {
        "square": (4, np.pi / 4),
        "diamond": (4, 0.0),
        "triangle": (3, np.pi / 2),
        "hexagon": (6, 0.0),
    }[shape]
    inradius = r * math.sqrt(math.pi / (sides * math.tan(math.pi / sides)))
    # a regular polygon is the intersection of half-planes; `turn` orients a vertex
    angles = turn + np.pi / sides + 2 * np.pi * np.arange(sides) / sides
    return np.max([np.cos(a) * dx - np.sin(a) * dy for a in angles], axis=0) - inradius


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    texture = gaussian_filter(rng.standard_normal((h, w, 3)), sigma=(0.04 * w, 0.04 * w, 0))
    texture /= texture.std() or 1.0
    grain = rng.standard_normal((h, w, 1))
    return (_BG_MEAN + 0.06 * texture + 0.02 * grain).astype(np.float32)


def _bounce(start: float, velocity: float, t: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Position of a point moving at ``velocity`` from ``start`` and reflecting inside [lo, hi]."""
    span = max(hi - lo, 1e-6)
    x = np.mod(start - lo + velocity * t, 2 * span)
    return lo + span - np.abs(x - span)


def _cell_grid(k: int) -> tuple[int, int]:
    """(rows, columns) of the cells of ``k`` objects: vertical strips up to 3, two rows beyond."""
    return (1, k) if k <= 3 else (2, math.ceil(k / 2))


def _make_objects(
    rng: np.random.Generator, h: int, w: int, t: np.ndarray, options: SceneOptions = DEFAULT_OPTIONS
) -> tuple[SceneObject, ...]:
    base = _RADIUS * min(h, w)
    margin = _EXTENT * base * (1 + _PULSE_SIZE) + 1.0
    k_lo, k_max = (int(v) for v in options.objects)
    for k_try in range(k_lo, k_max + 1):
        rows_, cols_ = _cell_grid(k_try)
        if w < cols_ * (2 * margin + 1) or h < rows_ * (2 * margin + 1):
            raise ConfigError(
                f"synthetic frame {h}x{w}: too small for {k_try} objects in their own cells "
                f"({rows_}x{cols_} cells need at least {math.ceil(rows_ * (2 * margin + 1))}x"
                f"{math.ceil(cols_ * (2 * margin + 1))} pixels)"
            )
    k = int(rng.integers(k_lo, k_max + 1))
    rows, cols = _cell_grid(k)
    cell_w, cell_h = w / cols, h / rows
    shape_set = options.shapes
    shapes = rng.choice(len(shape_set), size=k, replace=False)
    hue0 = float(rng.uniform(0, 1))
    if options.hues == "spread":
        hues = [(hue0 + j / k) % 1.0 for j in rng.permutation(k)]
    else:
        hues = [float(u) for u in rng.uniform(0, 1, size=k)]
    rates = rng.choice(np.array(options.rhythm_grid_hz), size=k, replace=False) + rng.uniform(
        -options.rhythm_jitter_hz, options.rhythm_jitter_hz, size=k
    )
    cells = rng.permutation(rows * cols)[:k] if rows > 1 else rng.permutation(k)
    speed = _SPEED * w
    objects = []
    for j in range(k):
        phase = float(rng.uniform(0, 2 * np.pi))
        col, row = int(cells[j]) % cols, int(cells[j]) // cols
        x_lo, x_hi = col * cell_w + margin, (col + 1) * cell_w - margin
        y_lo, y_hi = row * cell_h + margin, (row + 1) * cell_h - margin
        heading = float(rng.uniform(0, 2 * np.pi))
        x = _bounce(float(rng.uniform(x_lo, x_hi)), speed * math.cos(heading), t, x_lo, x_hi)
        y = _bounce(float(rng.uniform(y_lo, y_hi)), speed * math.sin(heading), t, y_lo, y_hi)
        radii = base * (1.0 + _PULSE_SIZE * rhythm(t, float(rates[j]), phase))
        objects.append(
            SceneObject(
                shape=shape_set[int(shapes[j])],
                colour=_equal_luma_colour(hues[j]),
                rhythm_hz=float(rates[j]),
                phase=phase,
                cell=int(cells[j]),
                centres=np.stack([x, y], axis=1),
                radii=radii,
            )
        )
    return tuple(objects)


def _render(
    rng: np.random.Generator, objects: tuple[SceneObject, ...], h: int, w: int, t: np.ndarray
) -> np.ndarray:
    background = _background(rng, h, w)
    frames = np.empty((len(t), h, w, 3), np.uint8)
    grey = np.float32(_BG_MEAN)
    for i in range(len(t)):
        frame = background + 0.015 * rng.standard_normal((h, w, 3), dtype=np.float32)
        for obj in objects:
            cx, cy = obj.centres[i]
            r = float(obj.radii[i])
            reach = _EXTENT * r
            x0, x1 = max(int(cx - reach) - 2, 0), min(int(cx + reach) + 3, w)
            y0, y1 = max(int(cy - reach) - 2, 0), min(int(cy + reach) + 3, h)
            dy, dx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            alpha = np.clip(0.5 - _sdf(obj.shape, dx - cx, dy - cy, r), 0.0, 1.0)[..., None]
            pulse = float(rhythm(t[i], obj.rhythm_hz, obj.phase))
            contrast = (1.0 - _PULSE_CONTRAST) + _PULSE_CONTRAST * pulse
            colour = grey + contrast * (np.asarray(obj.colour, np.float32) - grey)
            patch = frame[y0:y1, x0:x1]
            frame[y0:y1, x0:x1] = patch * (1.0 - alpha) + alpha * colour
        frames[i] = np.clip(np.round(frame * 255.0), 0, 255).astype(np.uint8)
    return frames


# --------------------------------------------------------------------------- attention model
def _fixations(
    rng: np.random.Generator,
    objects: tuple[SceneObject, ...],
    source: int | None,
    h: int,
    w: int,
    model: AttentionModel,
) -> tuple[np.ndarray, np.ndarray]:
    """(bool fixation maps [T, H, W], float32 density maps [T, H, W] with max 1) from the model."""
    n_t = objects[0].radii.shape[0]
    k = len(objects)
    n = model.n_observers
    centres = np.stack([o.centres for o in objects])  # [K, T, 2]
    radii = np.stack([o.radii for o in objects])  # [K, T]
    if source is None:
        probs = np.full(k, 1.0 / k)
    else:
        probs = np.full(k, (1.0 - model.source_prob) / (k - 1))
        probs[source] = model.source_prob
    target = rng.choice(k, size=(n_t, n), p=probs)
    on_centre = rng.random((n_t, n)) < model.centre_bias
    frame_idx = np.arange(n_t)[:, None]
    obj_xy = centres[target, frame_idx]  # [T, n, 2]
    obj_r = radii[target, frame_idx][..., None]
    xy = obj_xy + model.jitter * obj_r * rng.standard_normal((n_t, n, 2))
    centre_xy = np.array([(w - 1) / 2, (h - 1) / 2]) + model.centre_sigma * np.array(
        [w, h]
    ) * rng.standard_normal((n_t, n, 2))
    xy = np.where(on_centre[..., None], centre_xy, xy)
    cols = np.clip(np.round(xy[..., 0]), 0, w - 1).astype(np.intp)
    rows = np.clip(np.round(xy[..., 1]), 0, h - 1).astype(np.intp)
    counts = np.zeros((n_t, h, w), np.float32)
    np.add.at(counts, (np.broadcast_to(frame_idx, rows.shape), rows, cols), 1.0)
    sigma = model.blur_sigma * w
    maps = gaussian_filter(counts, sigma=(0, sigma, sigma), mode="constant")
    maps /= maps.max(axis=(1, 2), keepdims=True)
    return counts > 0, maps.astype(np.float32)


def expected_density(
    objects: dict[str, Any],
    attention: AttentionModel,
    frames: Sequence[int],
    size: tuple[int, int] | None = None,
    know_source: bool = True,
) -> np.ndarray:
    """The attention model's expected density maps: what infinitely many observers would give.

    ``objects`` is a video's ``objects.json`` content; ``frames`` the frames to render, at ``size``
    (default: the stored size; positions and widths are scaled). Each frame is the mixture of the
    centre-bias Gaussian and one Gaussian per object at its centre with the fixation jitter, all
    convolved with the density-map blur (the sum of the variances), weighted as the observers
    choose: ``source_prob`` on the sound source of a relevant video when ``know_source``, else all
    objects alike. Pixel rounding and clipping of the sampled fixations are ignored. Max 1 per frame.

    With ``know_source=False`` this is the best any predictor that ignores the sound can do in
    expectation (the visual ceiling); with ``know_source=True`` the ideal observer's map (oracle).
    """
    h0, w0 = (int(v) for v in objects["size"])
    h, w = size or (h0, w0)
    sy, sx = h / h0, w / w0
    blur = attention.blur_sigma * w0
    objs = objects["objects"]
    source = objects.get("source")
    k = len(objs)
    if know_source and source is not None and k > 1:
        weights = np.full(k, (1.0 - attention.source_prob) / (k - 1))
        weights[int(source)] = attention.source_prob
    else:
        weights = np.full(k, 1.0 / k)
    ys = (np.arange(h) + 0.5) / sy - 0.5  # pixel centres in stored coordinates
    xs = (np.arange(w) + 0.5) / sx - 0.5

    def gaussian(cx: float, cy: float, sig_x: float, sig_y: float) -> np.ndarray:
        gy = np.exp(-0.5 * ((ys - cy) / sig_y) ** 2)
        gx = np.exp(-0.5 * ((xs - cx) / sig_x) ** 2)
        return np.outer(gy, gx) / (2.0 * np.pi * sig_x * sig_y)

    centre = gaussian(
        (w0 - 1) / 2,
        (h0 - 1) / 2,
        math.hypot(attention.centre_sigma * w0, blur),
        math.hypot(attention.centre_sigma * h0, blur),
    )
    out = np.empty((len(frames), h, w), np.float32)
    for i, f in enumerate(frames):
        m = attention.centre_bias * centre
        for weight, obj in zip(weights, objs, strict=True):
            cx, cy = obj["centres"][f]
            sig = math.hypot(attention.jitter * float(obj["radii"][f]), blur)
            m = m + (1.0 - attention.centre_bias) * weight * gaussian(cx, cy, sig, sig)
        out[i] = m / m.max()
    return out


def read_annotations(root: str | Path, video: str) -> tuple[dict[str, Any], AttentionModel] | None:
    """A generated video's ``objects.json`` and the data set's attention model, or None when ``root``
    was not written by :func:`generate` (no such annotations)."""
    base = Path(root) / "annotations" / SET_NAME
    objects, generator = base / video / "objects.json", base / "generator.json"
    if not (objects.is_file() and generator.is_file()):
        return None
    attention = AttentionModel(**json.loads(generator.read_text())["attention"])
    return json.loads(objects.read_text()), attention


# --------------------------------------------------------------------------- scenes
def render_scene(
    rng: np.random.Generator,
    condition: str,
    size: tuple[int, int],
    n_frames: int,
    fps: float = 25.0,
    audio_rate: int = 22050,
    attention: AttentionModel | None = None,
    options: SceneOptions = DEFAULT_OPTIONS,
) -> Scene:
    """One video of the benchmark: frames, soundtrack, per-object geometry and ground truth.

    ``options``: what varies in the task (:class:`SceneOptions`); a relevant video's audio lag is
    drawn after everything else, so a zero lag range draws nothing and leaves the scene as before.
    """
    if condition not in CONDITIONS:
        raise ConfigError(f"synthetic condition {condition!r}: choose one of {', '.join(CONDITIONS)}")
    if n_frames < 1 or fps <= 0 or audio_rate < 8000:
        raise ConfigError(
            f"synthetic video: n_frames={n_frames}, fps={fps}, audio_rate={audio_rate} out of range"
        )
    h, w = size
    model = attention or AttentionModel()
    t = np.arange(n_frames) / fps
    objects = _make_objects(rng, h, w, t, options)
    source = int(rng.integers(0, len(objects))) if condition == "relevant" else None
    frames = _render(rng, objects, h, w, t)
    n_samples = int(round(n_frames / fps * audio_rate))
    lo_ms, hi_ms = (float(v) for v in options.audio_lag_ms)
    lag = 0.0
    if source is not None and hi_ms > 0.0:
        lag = float(rng.uniform(lo_ms, hi_ms)) / 1000.0
    audio = _soundtrack(
        rng, condition, n_samples, audio_rate, None if source is None else objects[source], lag
    )
    fixations, maps = _fixations(rng, objects, source, h, w, model)
    return Scene(condition, float(fps), frames, audio, audio_rate, objects, source, fixations, maps, lag)


def _write_mat(path: Path, fixations: np.ndarray) -> None:
    """A v5 MAT file with variable ``eyeMap`` and a fixed header text (no time stamp)."""
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"eyeMap": fixations.astype(np.uint8)}, do_compression=True)
    data = bytearray(buf.getvalue())
    data[:116] = _MAT_HEADER
    path.write_bytes(bytes(data))


def _write_wav(path: Path, audio: np.ndarray, rate: int) -> None:
    wavfile.write(str(path), rate, np.round(audio * 32767.0).astype(np.int16))


def _write_scene(root: Path, name: str, scene: Scene) -> None:
    frames_dir = root / "video_frames" / SET_NAME / name
    audio_dir = root / "video_audio" / SET_NAME / name
    ann_dir = root / "annotations" / SET_NAME / name
    for d in (frames_dir, audio_dir, ann_dir / "maps"):
        d.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(scene.frames):
        Image.fromarray(frame).save(frames_dir / f"img_{i + 1:05d}.jpg", quality=_JPEG_QUALITY)
        density = np.round(scene.maps[i] * 255.0).astype(np.uint8)
        Image.fromarray(density).save(ann_dir / "maps" / f"eyeMap_{i + 1:05d}.jpg", quality=_JPEG_QUALITY)
        _write_mat(ann_dir / f"fixMap_{i + 1:05d}.mat", scene.fixations[i])
    _write_wav(audio_dir / f"{name}.wav", scene.audio, scene.audio_rate)
    (ann_dir / "objects.json").write_text(json.dumps(scene.objects_json()))


def _splits(rng: np.random.Generator, conditions: list[str]) -> dict[str, list[int]]:
    """About 2/3 train and 1/3 test per condition; both splits get every condition with >= 2 videos."""
    train: list[int] = []
    test: list[int] = []
    for cond in CONDITIONS:
        idx = [i for i, c in enumerate(conditions) if c == cond]
        if not idx:
            continue
        idx = [idx[j] for j in rng.permutation(len(idx))]
        n_test = max(1, round(len(idx) / 3)) if len(idx) >= 2 else 0
        test += idx[:n_test]
        train += idx[n_test:]
    return {"train": sorted(train), "test": sorted(test)}


def _exact_splits(rng: np.random.Generator, conditions: list[str], n_test: int) -> dict[str, list[int]]:
    """``n_test`` random videos of each condition to test, the rest to train."""
    train: list[int] = []
    test: list[int] = []
    for cond in CONDITIONS:
        idx = [i for i, c in enumerate(conditions) if c == cond]
        idx = [idx[j] for j in rng.permutation(len(idx))]
        test += idx[:n_test]
        train += idx[n_test:]
    return {"train": sorted(train), "test": sorted(test)}


def _resolve_size(
    profile: str, size: tuple[int, int] | None, n_frames: int | None
) -> tuple[tuple[int, int], int]:
    config = load_config(profile)
    hw = (config.video.height, config.video.width) if size is None else (int(size[0]), int(size[1]))
    return hw, FRAMES_PER_CLIP * config.video.clip_len if n_frames is None else int(n_frames)


def generate(
    out_dir: str | Path,
    n_videos: int,
    profile: str = "tiny",
    seed: int = 0,
    *,
    size: tuple[int, int] | None = None,
    n_frames: int | None = None,
    fps: float = 25.0,
    audio_rate: int = 22050,
    attention: AttentionModel | None = None,
    options: SceneOptions = DEFAULT_OPTIONS,
    train_per_condition: int | None = None,
    test_per_condition: int | None = None,
) -> Path:
    """Write the benchmark in the STAViS layout under ``out_dir`` and return ``out_dir``.

    Videos ``synth_000 ...`` cycle through ``relevant``, ``music``, ``silent``; split lists
    ``fold_lists/synthetic_list_{train,test}_1_fps.txt`` hold about 2/3 and 1/3 of each condition
    (a condition with a single video goes to train only, so use ``n_videos >= 6`` to have every
    condition in both splits). With ``train_per_condition`` and ``test_per_condition`` the split
    sizes are exact instead (``n_videos`` must then be ``3 * (train + test)``, or 0 to derive it).
    ``options`` (:class:`SceneOptions`) sets what varies in the task; with the defaults the files
    are byte for byte those written before the options existed. Files of an earlier ``synthetic``
    set under ``out_dir`` are replaced; nothing else there is touched except ``conditions.json``.
    """
    exact = train_per_condition is not None or test_per_condition is not None
    if exact:
        if train_per_condition is None or test_per_condition is None:
            raise ConfigError("synthetic: give both train_per_condition and test_per_condition, or neither")
        if train_per_condition < 1 or test_per_condition < 1:
            raise ConfigError(
                f"synthetic train/test per condition {train_per_condition}/{test_per_condition}: must be >= 1"
            )
        total = len(CONDITIONS) * (train_per_condition + test_per_condition)
        if n_videos not in (0, total):
            raise ConfigError(
                f"synthetic n_videos={n_videos}: {train_per_condition} train + {test_per_condition} test "
                f"per condition make {total} videos"
            )
        n_videos = total
    if n_videos < 1:
        raise ConfigError(f"synthetic n_videos={n_videos}: must be >= 1")
    hw, n_t = _resolve_size(profile, size, n_frames)
    model = attention or AttentionModel()
    root = Path(out_dir)
    for sub in ("video_frames", "video_audio", "annotations"):
        shutil.rmtree(root / sub / SET_NAME, ignore_errors=True)
    lists = root / "fold_lists"
    lists.mkdir(parents=True, exist_ok=True)
    for old in lists.glob(f"{SET_NAME}_list_*"):
        old.unlink()

    seeds = np.random.SeedSequence(seed).spawn(n_videos + 1)
    names = [f"synth_{i:03d}" for i in range(n_videos)]
    conditions = [CONDITIONS[i % len(CONDITIONS)] for i in range(n_videos)]
    for i, name in enumerate(names):
        rng = np.random.default_rng(seeds[i + 1])
        scene = render_scene(rng, conditions[i], hw, n_t, fps, audio_rate, model, options)
        _write_scene(root, name, scene)

    split_rng = np.random.default_rng(seeds[0])
    if exact:
        assert test_per_condition is not None
        splits = _exact_splits(split_rng, conditions, test_per_condition)
    else:
        splits = _splits(split_rng, conditions)
    for split, idx in splits.items():
        lines = "".join(f"{names[i]} {n_t} {fps:.6f}\n" for i in idx)
        (lists / f"{SET_NAME}_list_{split}_1_fps.txt").write_text(lines)
    (root / "conditions.json").write_text(json.dumps(dict(zip(names, conditions, strict=True)), indent=1))
    info = {
        "profile": profile,
        "seed": seed,
        "n_videos": n_videos,
        "size": list(hw),
        "n_frames": n_t,
        "fps": fps,
        "audio_rate": audio_rate,
        "attention": asdict(model),
    }
    if options != DEFAULT_OPTIONS:  # the defaults leave generator.json as it was
        info["scene"] = options.to_json()
    if exact:
        info["per_condition"] = {"train": train_per_condition, "test": test_per_condition}
    (root / "annotations" / SET_NAME / "generator.json").write_text(json.dumps(info, indent=1))
    return root


def make_sample_clip(
    path: str | Path,
    seconds: float = 3.0,
    size: tuple[int, int] = (192, 320),
    fps: int = 25,
    seed: int = 0,
) -> Path:
    """One ``relevant`` scene encoded as H.264 + AAC in an mp4, with its ground truth beside it.

    ``size`` is (height, width) and must be even (yuv420p). The ground truth goes to
    ``<stem>_gt.npz``: ``maps`` float32 [T, H, W], ``fixations`` bool [T, H, W], ``centres``
    [K, T, 2] (x, y), ``radii`` [K, T], ``source`` (object index) and ``fps``, so a demo can score
    its own predictions.
    """
    import av

    h, w = int(size[0]), int(size[1])
    if h % 2 or w % 2:
        raise ConfigError(f"sample clip size {h}x{w}: height and width must be even for H.264 yuv420p")
    n_frames = max(1, int(round(seconds * fps)))
    scene = render_scene(np.random.default_rng(seed), "relevant", (h, w), n_frames, float(fps))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w") as container:
        video = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        video.width, video.height, video.pix_fmt = w, h, "yuv420p"
        video.options = {"crf": "18", "preset": "veryfast"}
        audio = container.add_stream("aac", rate=scene.audio_rate, layout="mono")
        for frame in scene.frames:
            container.mux(video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(video.encode())
        chunk = 1024
        for start in range(0, len(scene.audio), chunk):
            samples = scene.audio[start : start + chunk][None, :]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(samples), format="fltp", layout="mono")
            frame.sample_rate = scene.audio_rate
            frame.pts = start
            container.mux(audio.encode(frame))
        container.mux(audio.encode())
    np.savez_compressed(
        out.with_name(f"{out.stem}_gt.npz"),
        maps=scene.maps,
        fixations=scene.fixations,
        centres=np.stack([o.centres for o in scene.objects]).astype(np.float32),
        radii=np.stack([o.radii for o in scene.objects]).astype(np.float32),
        source=np.int64(scene.source),
        fps=np.float64(fps),
    )
    return out
