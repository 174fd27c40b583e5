"""The official DiffSal audio input: nine log-mel examples per window, as the released loader makes
them (github.com/junwenxiong/diff_sal@c9b8070, ``datasets/saliency_db.py`` ``make_mel_dataset`` /
``get_mel_feature`` and ``datasets/torchvggish/{vggish_input,mel_features,vggish_params}.py``).

For a window of frames ``k0 .. k1`` (0-based) of a track at its NATIVE rate ``Fs``:

1. Excerpt: samples ``[start(k0), end(k1)]`` (both inclusive) with ``start(k) = int(max(0,
   k * (1 / fps) * Fs - n / 2))``, ``end(k) = int(k * (1 / fps) * Fs + n / 2)``, ``n = Fs / fps``
   (``make_mel_dataset``'s per-frame starts and ends, in its float arithmetic).
2. Buffer: the excerpt centred in ``int(22050 / 10 * 16)`` = 35,280 zeros (``max_audio_win``:
   ``max_audio_Fs / min_video_fps * sample_duration``), whatever ``Fs`` is, so the buffer spans
   2.2 s of a 16 kHz file but 0.8 s of a 44.1 kHz one.
3. ``waveform_to_examples(buffer, Fs)``: resampled to 16 kHz by ``resampy.resample`` (its
   ``kaiser_best`` filter; reimplemented here, :func:`resample_kaiser_best`) when ``Fs != 16000``;
   VGGish's log-mel (25 ms periodic-Hann frames every 10 ms, FFT 512, 64 HTK mel bands
   125-7500 Hz, ``log(mel + 0.01)``; :func:`avsal_deploy.data.audio.log_mel`'s arithmetic); cut
   into examples of 0.64 s (64 frames) every 0.11 s (11 frames; the released ``vggish_params.py``
   is edited from VGGish's 0.96 s / 0.96 s): 15 examples at 16 kHz, 2 at 44.1 kHz, 1 at 48 kHz.
4. Nine examples: fewer are repeated in place (``repeat_interleave`` by ``9 // n``), then the
   first ``9 % n`` appended; more are cut to the first nine.
5. Each 64x64 example resized (bilinear, half-pixel; torchvision's ``Resize`` of a tensor) to
   ``(audio.vggish_slice_height, audio.vggish_slice_width)`` = 112x192, stacked as
   ``[1, 9, 112, 192]``: the input the released model's forward takes.

Deviations, where the released loader fails or depends on data after the window: the excerpt keeps
its nominal end past the end of the track (the loader clips it to the track, which re-centres the
last windows' audio; we read silence instead, so a window never depends on audio after it, which
streaming needs); an excerpt longer than the buffer (a clip longer than 1.6 s at 22,050 Hz,
e.g. 16 frames below 10 fps) is cropped centrally (the loader raises); a buffer too short for one
example (rates above ~75 kHz) is padded with silence to one example (the loader raises).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from avsal_deploy.config import Config
from avsal_deploy.data.audio import _centred, _log_mel_native, _stft_geometry, _take
from avsal_deploy.data.resize import resize
from avsal_deploy.data.signal import AudioTrack, Timestamps
from avsal_deploy.errors import ConfigError
from avsal_deploy.windows import Window

#: ``max_audio_Fs`` and ``min_video_fps`` of the released loader: the buffer holds
#: ``int(22050 / 10 * clip_len)`` samples at the file's own rate.
BUFFER_RATE, BUFFER_FPS = 22050, 10
#: resampy's ``kaiser_best`` filter (resampy 0.4, ``data/kaiser_best.npz``): a Kaiser-windowed sinc
#: with 50 zero crossings at 2**13 table entries each; these parameters rebuild its table exactly.
KAISER_BEST_ZEROS = 50
KAISER_BEST_TABLE = 2**13
KAISER_BEST_BETA = 12.984585247040012
KAISER_BEST_ROLLOFF = 0.9173473712608761


@functools.lru_cache(maxsize=1)
def kaiser_best_window() -> np.ndarray:
    """The right half of resampy's ``kaiser_best`` interpolation filter (409,601 taps, float64)."""
    from scipy.signal.windows import kaiser

    n = KAISER_BEST_TABLE * KAISER_BEST_ZEROS
    sinc = KAISER_BEST_ROLLOFF * np.sinc(KAISER_BEST_ROLLOFF * np.linspace(0, KAISER_BEST_ZEROS, n + 1))
    window = kaiser(2 * n + 1, KAISER_BEST_BETA)[n:] * sinc
    window.setflags(write=False)
    return window


def resample_kaiser_best(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """``resampy.resample(x, rate_in, rate_out)`` (filter ``kaiser_best``) of a 1-D signal, float64.

    Band-limited interpolation: output sample ``j`` sits at input time ``j * rate_in / rate_out``;
    its two filter wings are read from the table at the fractional offset, linearly interpolated
    between table entries, and the filter is widened by the rate ratio when shrinking. Same
    arithmetic and summation order as resampy's loop (left wing, then right wing), vectorised over
    the output samples.
    """
    x = np.asarray(x, dtype=np.float64)
    if rate_in == rate_out:
        return x.copy()
    ratio = float(rate_out) / rate_in
    n_out = int(x.shape[0] * float(rate_out) / float(rate_in))
    if n_out < 1:
        raise ConfigError(f"{x.shape[0]} samples are too few to resample from {rate_in} to {rate_out} Hz")
    win = kaiser_best_window()
    if ratio < 1:
        win = ratio * win
    delta = np.diff(win, append=win[-1])
    scale = min(1.0, ratio)
    step = int(scale * KAISER_BEST_TABLE)
    nwin, n_in = win.shape[0], x.shape[0]
    t_out = np.arange(n_out) * (1.0 / ratio)
    n = t_out.astype(np.int64)
    y = np.zeros(n_out, np.float64)
    frac = scale * (t_out - n)
    for wing in (0, 1):
        if wing == 1:
            frac = scale - frac
        index_frac = frac * KAISER_BEST_TABLE
        offset = index_frac.astype(np.int64)
        eta = index_frac - offset
        limit = (nwin - offset) // step
        taps = np.minimum(n + 1, limit) if wing == 0 else np.minimum(n_in - n - 1, limit)
        for i in range(int(taps.max(initial=0))):
            live = i < taps
            idx = np.where(live, offset + i * step, 0)
            weight = win[idx] + eta * delta[idx]
            src = np.clip(n - i if wing == 0 else n + i + 1, 0, n_in - 1)
            y += np.where(live, weight * x[src], 0.0)
    return y


def official_buffer_samples(config: Config) -> int:
    """Length of the zero buffer the excerpt is centred in: ``int(22050 / 10 * clip_len)``."""
    return int(BUFFER_RATE / BUFFER_FPS * config.video.clip_len)


def excerpt_bounds(
    first: int, last: int, fps: float, rate: int, timestamps: Timestamps | None = None
) -> tuple[int, int]:
    """``[start, stop)`` of a window's excerpt at the track's rate, in the loader's arithmetic.

    ``start = int(max(0, pos(first) - n/2))``, ``stop = int(pos(last) + n/2) + 1`` with ``pos(k) =
    k * (1 / fps) * rate`` (or ``timestamps[k] * rate``) and ``n = rate / fps``; the end is not
    clipped to the track (module docstring).
    """
    if fps <= 0:
        raise ConfigError(f"fps={fps!r}: must be positive")
    half = rate / float(fps) / 2

    def pos(k: int) -> float:
        return float(timestamps[k]) * rate if timestamps is not None else k * (1.0 / float(fps)) * rate

    start = int(max(0.0, pos(first) - half))
    end = int(abs(pos(last) + half))
    return start, max(end + 1, start)


def log_mel_examples(buffer: np.ndarray, rate: int, config: Config) -> np.ndarray:
    """``waveform_to_examples``: ``[n, frames, bands]`` log-mel examples (float32) of a buffer at
    ``rate`` (resampled to ``audio.vggish_rate`` first); at least one example (silence-padded)."""
    a = config.audio
    x = (
        resample_kaiser_best(buffer, rate, a.vggish_rate)
        if rate != a.vggish_rate
        else np.asarray(buffer, np.float64)
    )
    win, hop, _ = _stft_geometry(config)
    need = win + (a.vggish_example_frames - 1) * hop
    if x.shape[0] < need:
        x = np.concatenate([x, np.zeros(need - x.shape[0])])
    mel = _log_mel_native(x, config)
    count = 1 + (mel.shape[0] - a.vggish_example_frames) // a.vggish_example_hop
    starts = np.arange(count) * a.vggish_example_hop
    return np.stack([mel[s : s + a.vggish_example_frames] for s in starts])


def fill_examples(examples: np.ndarray, count: int) -> np.ndarray:
    """Exactly ``count`` examples: too few repeated in place (``repeat_interleave`` by
    ``count // n``) with the first ``count % n`` appended; too many cut to the first ``count``."""
    n = examples.shape[0]
    if n != count:
        if count // n:
            examples = np.repeat(examples, count // n, axis=0)
        examples = np.concatenate([examples, examples[: count % n]])
    return examples[:count]


def diffsal_official_audio(track: AudioTrack, window: Window | Sequence[int], config: Config) -> np.ndarray:
    """The released DiffSal model's audio input for one window: float32
    ``[1, audio.vggish_slices, audio.vggish_slice_height, audio.vggish_slice_width]`` (module
    docstring). ``track.samples`` at ``track.rate`` (the file's own rate), mono."""
    frames = window.frames if isinstance(window, Window) else tuple(int(i) for i in window)
    if not frames:
        raise ConfigError("a window needs at least one frame index")
    a = config.audio
    start, stop = excerpt_bounds(min(frames), max(frames), track.fps, track.rate, timestamps=track.timestamps)
    excerpt = _take(np.asarray(track.samples, np.float32), start - track.offset, stop - start)
    buffer = _centred(excerpt, official_buffer_samples(config)).astype(np.float64)
    examples = fill_examples(log_mel_examples(buffer, track.rate, config), a.vggish_slices)
    size = (a.vggish_slice_height, a.vggish_slice_width)
    if examples.shape[1:] != size:
        examples = np.stack([resize(e, size) for e in examples])
    return examples[None].astype(np.float32)
