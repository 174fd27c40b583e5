"""Audio features aligned to clip windows: the SoundNet waveform buffer and VGGish log-mel slices.

Frame-to-audio alignment (ViNet / AViNet / DiffSal loaders, ref: samyak0210/ViNet
``generate_result_audio_visual.py``, junwenxiong/diff_sal ``datasets/saliency_db.py``): frame ``k``
at time ``t_k`` owns the samples ``[t_k * Fs - n/2, t_k * Fs + n/2]`` with ``n = Fs / fps``; a
window's excerpt runs from its earliest frame's start to its latest frame's end (both ends
inclusive, start clipped at 0). ``t_k = k / fps`` for constant frame rate; pass the decoder's
``timestamps`` to follow variable frame rate. Deviation: the reference clips the end at the track's
length, which makes the Hanning window shorter in the last frames; we keep the nominal span and
read missing audio as silence, so an excerpt never depends on how much audio exists after it (the
streaming windower relies on this).

SoundNet (AVRSP, hybrid): resample to ``audio.soundnet_rate``, cut the excerpt, multiply by a
symmetric Hanning window of its length (``np.hanning``), centre it in a zero buffer of
``config.soundnet_samples()`` samples (cropped centrally when longer) and scale to the legacy
SoundNet range (``audio.soundnet_scale`` = 256: the reference reads int32 PCM and multiplies by
2**-23). Time-reversed windows (AVRSP's first frames) get the time-reversed excerpt; the reference
flips the whole buffer, which differs from ours by at most one sample of centring.
``audio.soundnet_framing = "vinet"`` (the AViNet input mode) reproduces the reference exactly
instead: its sample arithmetic (:func:`vinet_span`) and the flip of the whole buffer. The reference
reads the wav at the file's own rate and sizes the buffer for at most ``max_audio_Fs = 22050``;
we resample to ``audio.soundnet_rate`` (22,050 Hz), so the two agree on 22,050 Hz tracks.

VGGish (DiffSal): the log-mel of VGGish's ``mel_features.py`` (16 kHz, 25 ms periodic Hann window,
10 ms hop, FFT of the next power of two, STFT magnitude, 64 HTK-mel bands 125-7500 Hz with
triangles linear in mel and the DC bin dropped, ``log(mel + 0.01)``), cut into
``audio.vggish_slices`` slices in one of two framings (``audio.vggish_framing``):

``examples`` (paper profile): VGGish fed as it was trained. Each slice is one VGGish example of
``vggish_example_frames`` = 96 log-mel frames (0.96 s) x 64 bands; consecutive slices start
``vggish_example_hop`` = 11 frames (0.11 s) apart, so the 9 slices cover 96 + 8 x 11 = 184 frames
(``vggish_buffer_samples``: 29,680 samples, 1.855 s). The window's excerpt (its own frames' span,
as for SoundNet) is centred in a zero buffer of that length (cropped centrally when longer) and the
log-mel of the buffer gives the slices. This is the official loader's arrangement
(junwenxiong/diff_sal ``datasets/saliency_db.py`` ``get_mel_feature`` with its
``vggish_params.py``): the 16-frame excerpt centred in a zero buffer of ``int(22050 / 10 * 16)``
samples, ``waveform_to_examples`` with examples of ``EXAMPLE_WINDOW_SECONDS`` and a hop of
``EXAMPLE_HOP_SECONDS = 0.11`` s, 9 of them (repeated when fewer). So the slices sit symmetrically
around the window's centre, i.e. around the target frame in centre mode (slice 4 is centred on it),
and see only the window's own audio, the rest silence. Deviations: the official
``vggish_params.py`` is edited to 0.64 s examples (64 frames; VGGish's own is 0.96 s) and every
slice is then resized to 112x192 (``transforms.Resize`` to half the frame size, the paper's
"1x9x112x192"); we keep VGGish's 0.96 s / 96x64 examples, sized by the buffer so that exactly
9 exist (the official buffer is 1.6 s only for 22,050 Hz files). Setting
``audio.vggish_slice_height/width`` = 112/192 reproduces the official resize.

``window`` (small/tiny profiles, checkpoints written before this setting): the window's excerpt
itself cut into equal slices along time, each resized (bilinear) to ``(vggish_slice_height,
vggish_slice_width)``, so each slice holds about 0.06 s of audio stretched in time.

Either way a slice of another size than the model input is resized (bilinear) to it.

Resampling is polyphase (``scipy.signal.resample_poly``). :func:`excerpt` resamples only the
samples a window needs, aligned to the polyphase grid so it equals slicing the resampled track.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy.signal import resample_poly

from avsal_deploy.config import Config, family
from avsal_deploy.data.dali import dali_pipeline_options, gpu_available, require_dali
from avsal_deploy.data.resize import resize
from avsal_deploy.data.signal import AudioTrack, Timestamps, rate_ratio, resample
from avsal_deploy.errors import BackendUnavailableError, ConfigError
from avsal_deploy.windows import Window


# ----------------------------------------------------------------------------- excerpts
def excerpt(
    audio: np.ndarray, audio_rate: int, start: int, stop: int, rate: int, audio_offset: int = 0
) -> np.ndarray:
    """Samples ``[start, stop)`` of the track resampled to ``rate``, float32; silence outside it.

    ``audio[0]`` is sample ``audio_offset`` of the track at ``audio_rate`` (a streaming buffer passes
    how much it dropped). Only the needed input is resampled: the cut starts on the polyphase grid
    (a multiple of the decimation factor) with a margin of the filter's half length, so the result
    equals ``resample(track, audio_rate, rate)[start:stop]`` to float rounding inside the track
    (within a filter length past its end it holds the filter's decaying tail, then zeros).
    """
    n = max(int(stop) - int(start), 0)
    x = np.asarray(audio, dtype=np.float32)
    if audio_rate == rate:
        return _take(x, int(start) - audio_offset, n)
    up, down = rate_ratio(audio_rate, rate)
    half = 10 * max(up, down)  # resample_poly's filter half length, in the up-sampled domain
    margin_out = half // down + 2
    margin_in = half // up + 2
    m = (int(start) - margin_out) // up  # floor: the grid point at or before the margin
    first_in = m * down
    last_in = -(-((int(stop) - 1) * down) // up) + margin_in + 1
    segment = _take(x, first_in - audio_offset, last_in - first_in).astype(np.float64)
    y = resample_poly(segment, up, down)
    lo = int(start) - m * up
    return y[lo : lo + n].astype(np.float32)


def _take(x: np.ndarray, first: int, n: int) -> np.ndarray:
    """``x[first:first+n]`` with zeros where that range leaves ``x`` (either side)."""
    out = np.zeros(n, np.float32)
    lo, hi = max(first, 0), min(first + n, x.shape[0])
    if hi > lo:
        out[lo - first : hi - first] = x[lo:hi]
    return out


# ----------------------------------------------------------------------------- frame alignment
def frame_time(index: int, fps: float, timestamps: Timestamps | None = None) -> float:
    """Presentation time (seconds) of frame ``index``: its timestamp if given, else index / fps."""
    return float(timestamps[index]) if timestamps is not None else index / float(fps)


def frame_span(
    frame_indices: Sequence[int], fps: float, rate: int, timestamps: Timestamps | None = None
) -> tuple[int, int]:
    """Sample range ``[start, stop)`` at ``rate`` covering a window's frames (ViNet convention)."""
    if len(frame_indices) == 0:
        raise ConfigError("a window needs at least one frame index")
    if fps <= 0:
        raise ConfigError(f"fps={fps!r}: must be positive")
    half = rate / float(fps) / 2.0
    t_lo = frame_time(min(frame_indices), fps, timestamps)
    t_hi = frame_time(max(frame_indices), fps, timestamps)
    start = int(max(0.0, t_lo * rate - half))
    end = int(t_hi * rate + half)  # inclusive, as excerptend + 1 in the reference
    return start, max(end + 1, start + 1)


def _is_reversed(frame_indices: Sequence[int], reverse: bool | None) -> bool:
    return bool(frame_indices[0] > frame_indices[-1]) if reverse is None else bool(reverse)


# ----------------------------------------------------------------------------- SoundNet
def soundnet_excerpt(
    audio: np.ndarray,
    audio_rate: int,
    frame_indices: Sequence[int],
    fps: float,
    config: Config,
    *,
    timestamps: Timestamps | None = None,
    reverse: bool | None = None,
    audio_offset: int = 0,
) -> np.ndarray:
    """SoundNet input for one window: float32 ``[1, config.soundnet_samples(), 1]``.

    ``reverse`` (default: frame indices descending) time-reverses the excerpt. With
    ``audio.soundnet_framing = "vinet"`` the span and the reversal follow AViNet's loader exactly
    (:func:`vinet_span`; the whole centred buffer is flipped, as its ``torch.flip(audio, [2])``).
    """
    a = config.audio
    vinet = a.soundnet_framing == "vinet"
    reversed_ = _is_reversed(frame_indices, reverse)
    if vinet:  # the reference knows a frame rate, not timestamps
        start, stop = vinet_span(frame_indices, fps, a.soundnet_rate)
    else:
        start, stop = frame_span(frame_indices, fps, a.soundnet_rate, timestamps)
    x = excerpt(audio, audio_rate, start, stop, a.soundnet_rate, audio_offset)
    if reversed_ and not vinet:
        x = x[::-1]
    x = x * np.hanning(x.shape[0]).astype(np.float32)
    size = config.soundnet_samples()
    buffer = _centred(x, size)
    if reversed_ and vinet:
        buffer = buffer[::-1]
    return (buffer * np.float32(a.soundnet_scale)).reshape(1, size, 1)


def vinet_span(frame_indices: Sequence[int], fps: float, rate: int) -> tuple[int, int]:
    """:func:`frame_span` in AViNet's own arithmetic (samyak0210/ViNet ``dataloader.py``
    ``make_dataset``: frame ``k`` starts at ``int(max(0, k * (1.0 / fps) * Fs - n / 2))`` and ends
    at ``int(k * (1.0 / fps) * Fs + n / 2)``, ``n = Fs / fps``, both ends inclusive); ``k / fps``
    rounds differently from ``k * (1.0 / fps)``, which moves a boundary by one sample where the
    exact value is an integer. Deviation kept from :func:`frame_span`: the end is not clipped at
    the track's length (the reference's ``min(len, ...)``), so a window's excerpt never depends
    on audio after it. Frame times come from the index and ``fps`` alone, timestamps unused (the
    reference's frame rate comes from its list files)."""
    if len(frame_indices) == 0:
        raise ConfigError("a window needs at least one frame index")
    if fps <= 0:
        raise ConfigError(f"fps={fps!r}: must be positive")
    step = 1.0 / float(fps)
    half = rate / float(fps) / 2
    start = int(max(0, min(frame_indices) * step * rate - half))
    end = int(abs(max(frame_indices) * step * rate + half))
    return start, max(end + 1, start + 1)


# ----------------------------------------------------------------------------- VGGish log-mel
def _stft_geometry(config: Config) -> tuple[int, int, int]:
    """(window, hop, fft) lengths in samples at ``audio.vggish_rate`` (VGGish: 400, 160, 512)."""
    a = config.audio
    win = int(round(a.vggish_rate * a.win_ms / 1000.0))
    hop = int(round(a.vggish_rate * a.hop_ms / 1000.0))
    return win, hop, 1 << (win - 1).bit_length()


def periodic_hann(length: int) -> np.ndarray:
    """Hann window of period ``length`` (VGGish's, not numpy's symmetric ``np.hanning``)."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi / length * np.arange(length))


def hertz_to_mel(hertz: np.ndarray | float) -> np.ndarray:
    """HTK mel scale, ``1127 ln(1 + f / 700)``."""
    return 1127.0 * np.log1p(np.asarray(hertz, dtype=np.float64) / 700.0)


@functools.lru_cache(maxsize=8)
def _mel_matrix_cached(n_mels: int, n_bins: int, rate: int, fmin: float, fmax: float) -> np.ndarray:
    if not 0.0 <= fmin < fmax <= rate / 2.0:
        raise ConfigError(
            f"audio.fmin={fmin}, audio.fmax={fmax}: need 0 <= fmin < fmax <= rate/2 = {rate / 2}"
        )
    bins_mel = hertz_to_mel(np.linspace(0.0, rate / 2.0, n_bins))
    edges = np.linspace(hertz_to_mel(fmin), hertz_to_mel(fmax), n_mels + 2)
    lower, centre, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel[:, None] - lower) / (centre - lower)
    falling = (upper - bins_mel[:, None]) / (upper - centre)
    weights = np.maximum(0.0, np.minimum(rising, falling))
    weights[0, :] = 0.0  # VGGish ignores the DC bin
    weights.setflags(write=False)
    return weights


def mel_matrix(config: Config) -> np.ndarray:
    """VGGish's ``[fft/2 + 1, n_mels]`` mel weights (post-multiply a magnitude spectrogram)."""
    a = config.audio
    _, _, nfft = _stft_geometry(config)
    return _mel_matrix_cached(a.n_mels, nfft // 2 + 1, a.vggish_rate, float(a.fmin), float(a.fmax))


def _log_mel_native(x: np.ndarray, config: Config) -> np.ndarray:
    """Log-mel of a waveform already at ``audio.vggish_rate``: ``[frames, n_mels]`` float32."""
    win, hop, nfft = _stft_geometry(config)
    x = np.asarray(x, dtype=np.float64)
    if x.shape[0] < win:
        return np.zeros((0, config.audio.n_mels), np.float32)
    frames = np.lib.stride_tricks.sliding_window_view(x, win)[::hop]
    magnitude = np.abs(np.fft.rfft(frames * periodic_hann(win), nfft))
    mel = magnitude @ mel_matrix(config)
    return np.log(mel + config.audio.log_offset).astype(np.float32)


def log_mel(audio: np.ndarray, rate: int, config: Config) -> np.ndarray:
    """VGGish log-mel spectrogram ``[frames, n_mels]`` (no frame until 25 ms of audio)."""
    return _log_mel_native(resample(audio, rate, config.audio.vggish_rate), config)


def slice_bounds(n_frames: int, n_slices: int) -> list[tuple[int, int]]:
    """Equal time slices ``[lo, hi)`` of ``n_frames`` log-mel frames; each has at least one frame."""
    edges = (np.arange(n_slices + 1) * n_frames) // n_slices
    return [(int(lo), int(max(hi, lo + 1))) for lo, hi in zip(edges[:-1], edges[1:], strict=True)]


def vggish_buffer_samples(config: Config) -> int:
    """Samples at ``audio.vggish_rate`` of the zero buffer of the ``examples`` framing: exactly
    ``vggish_example_frames + (vggish_slices - 1) * vggish_example_hop`` log-mel frames."""
    a = config.audio
    win, hop, _ = _stft_geometry(config)
    frames = a.vggish_example_frames + (a.vggish_slices - 1) * a.vggish_example_hop
    return win + (frames - 1) * hop


def _centred(x: np.ndarray, size: int) -> np.ndarray:
    """``x`` centred in a zero buffer of ``size`` samples (cropped centrally when longer)."""
    buffer = np.zeros(size, np.float32)
    if x.shape[0] <= size:
        first = size // 2 - x.shape[0] // 2
        buffer[first : first + x.shape[0]] = x
    else:
        first = (x.shape[0] - size) // 2
        buffer[:] = x[first : first + size]
    return buffer


def vggish_examples(x: np.ndarray, config: Config) -> np.ndarray:
    """The ``examples`` framing of a window's excerpt ``x`` (at ``audio.vggish_rate``):
    ``[vggish_slices, vggish_example_frames, n_mels]`` log-mel, before any resize."""
    a = config.audio
    mel = _log_mel_native(_centred(x, vggish_buffer_samples(config)), config)
    starts = np.arange(a.vggish_slices) * a.vggish_example_hop
    return np.stack([mel[s : s + a.vggish_example_frames] for s in starts])


def vggish_slices(
    audio: np.ndarray,
    audio_rate: int,
    frame_indices: Sequence[int],
    fps: float,
    config: Config,
    *,
    timestamps: Timestamps | None = None,
    reverse: bool | None = None,
    audio_offset: int = 0,
) -> np.ndarray:
    """VGGish input for one window: float32 ``[slices, 1, slice_height, slice_width]`` in the
    config's framing (module docstring). ``window`` framing: the excerpt is zero-padded to one STFT
    window (25 ms) when shorter, so every slice has data."""
    a = config.audio
    start, stop = frame_span(frame_indices, fps, a.vggish_rate, timestamps)
    x = excerpt(audio, audio_rate, start, stop, a.vggish_rate, audio_offset)
    if _is_reversed(frame_indices, reverse):
        x = x[::-1]
    size = (a.vggish_slice_height, a.vggish_slice_width)
    if a.vggish_framing == "examples":
        examples = vggish_examples(x, config)
        if examples.shape[1:] != size:
            examples = np.stack([resize(e, size) for e in examples])
        return examples[:, None].astype(np.float32)
    win, _, _ = _stft_geometry(config)
    if x.shape[0] < win:
        x = np.concatenate([x, np.zeros(win - x.shape[0], np.float32)])
    mel = _log_mel_native(x, config)
    out = [resize(mel[lo:hi], size) for lo, hi in slice_bounds(mel.shape[0], a.vggish_slices)]
    return np.stack(out)[:, None].astype(np.float32)


# ----------------------------------------------------------------------------- frame envelope
#: Energy floor of the envelope's log scale: ``log(1 + power / ENVELOPE_FLOOR) / log(1 / ENVELOPE_FLOOR)``
#: maps silence to 0, the -40 dBFS noise floor to about 0.33 and a full-scale sine to about 0.95.
ENVELOPE_FLOOR = 1e-6


@functools.lru_cache(maxsize=16)
def _envelope_bank(n_bands: int, span: int, rate: int, fmin: float, fmax: float) -> tuple[np.ndarray, int]:
    """(mel weights ``[nfft/2 + 1, n_bands]`` with peak-1 triangles, nfft) for frame spans of ``span`` samples."""
    nfft = 1 << max(span - 1, 1).bit_length()
    return _mel_matrix_cached(n_bands, nfft // 2 + 1, rate, fmin, fmax), nfft


def envelope_frames(
    audio: np.ndarray,
    audio_rate: int,
    frame_indices: Sequence[int],
    fps: float,
    config: Config,
    *,
    timestamps: Timestamps | None = None,
    audio_offset: int = 0,
) -> np.ndarray:
    """Per-frame audio envelope of ``frame_indices`` (in that order): float32 ``[bands + 1, len]``.

    Frame ``k`` owns the samples ``[t_k * Fs - n/2, t_k * Fs + n/2]`` (``n = Fs / fps``, the same
    span as the SoundNet / VGGish excerpts) at ``audio.vggish_rate``. Its column holds the power in
    ``audio.envelope_bands`` mel bands (``fmin``..``fmax``; Hann-windowed periodogram scaled so the
    bands of a broadband signal sum to about its mean square) and its loudness (mean square of the
    span), each on the log scale ``log(1 + p / 1e-6) / log(1e6)`` (0 for digital silence, about 1
    for a full-scale tone). A frame's energies do not depend on the direction of time, so a
    time-reversed window's envelope is its frames' columns in window order. Audio the track does
    not have (before its start, past its end) is silence.
    """
    a = config.audio
    rate = a.vggish_rate
    frames = [int(i) for i in frame_indices]
    if not frames:
        raise ConfigError("an envelope needs at least one frame index")
    spans = [frame_span([i], fps, rate, timestamps) for i in frames]
    lo = min(s for s, _ in spans)
    hi = max(e for _, e in spans)
    x = excerpt(audio, audio_rate, lo, hi, rate, audio_offset).astype(np.float64)
    n = max(e - s for s, e in spans)
    weights, nfft = _envelope_bank(a.envelope_bands, n, rate, float(a.fmin), float(a.fmax))
    out = np.zeros((a.envelope_bands + 1, len(frames)), np.float64)
    scale = 1.0 / math.log(1.0 / ENVELOPE_FLOOR)
    for col, (s, e) in enumerate(spans):
        seg = x[s - lo : e - lo]
        win = periodic_hann(seg.shape[0])
        power = np.abs(np.fft.rfft(seg * win, nfft)) ** 2 * (2.0 / (seg.shape[0] * np.sum(win**2) + 1e-12))
        out[:-1, col] = power @ weights
        out[-1, col] = np.mean(seg**2)
    return (np.log1p(np.maximum(out, 0.0) / ENVELOPE_FLOOR) * scale).astype(np.float32)


# ----------------------------------------------------------------------------- the one entry
def _frames_of(window: Window | Sequence[int]) -> tuple[tuple[int, ...], bool | None]:
    if isinstance(window, Window):
        return window.frames, window.reversed
    return tuple(int(i) for i in window), None


def audio_input(
    track: AudioTrack, window: Window | Sequence[int], config: Config, variant: str = "hybrid"
) -> np.ndarray:
    """The audio encoder's input for one window, shaped ``config.audio_input_shape(variant)``.

    The one entry that offline prediction, the streaming windower and training all use: the
    SoundNet waveform buffer (:func:`soundnet_excerpt`) for ``avrsp``/``hybrid`` (and official
    families with SoundNet audio), the VGGish log-mel slices (:func:`vggish_slices`) for
    ``diffsal``, the official DiffSal examples
    (:func:`avsal_deploy.data.diffsal_audio.diffsal_official_audio`) for ``diffsal-official``, a
    zero-size array for visual-only families. A :class:`Window` passes its
    ``reversed`` flag; plain indices count as reversed when descending.
    """
    kind = family(variant).audio
    if kind == "diffsal":  # the official DiffSal examples (data.diffsal_audio)
        from avsal_deploy.data.diffsal_audio import diffsal_official_audio

        return diffsal_official_audio(track, window, config)
    if kind == "none":
        return np.zeros(config.audio_input_shape(variant), np.float32)
    frames, reverse = _frames_of(window)
    feature = vggish_slices if kind == "vggish" else soundnet_excerpt
    return feature(
        track.samples,
        track.rate,
        frames,
        track.fps,
        config,
        timestamps=track.timestamps,
        reverse=reverse,
        audio_offset=track.offset,
    )


def envelope_input(track: AudioTrack, window: Window | Sequence[int], config: Config) -> np.ndarray:
    """The per-frame audio envelope of one window, ``config.envelope_shape()`` (frames in window
    order, so a reversed window's envelope is reversed too); see :func:`envelope_frames`."""
    frames, _ = _frames_of(window)
    return envelope_frames(
        track.samples,
        track.rate,
        frames,
        track.fps,
        config,
        timestamps=track.timestamps,
        audio_offset=track.offset,
    )


# ----------------------------------------------------------------------------- DALI log-mel
def log_mel_dali(audio: np.ndarray, rate: int, config: Config, device: str = "cpu") -> np.ndarray:
    """The VGGish log-mel computed by DALI (``fn.spectrogram`` + ``fn.mel_filter_bank`` + log).

    Same STFT (periodic Hann passed as ``window_fn``, no centring, magnitude) and an HTK mel bank
    with peak-1 triangles (``normalize=False``); DALI draws its triangles linearly in hertz between
    mel-spaced edges where VGGish draws them linearly in mel, which moves the log-mel by about 1e-2
    at most (tests/test_audio.py bounds it). ``device="gpu"`` runs the STFT and filter bank on an
    NVIDIA GPU. Resampling to 16 kHz uses :func:`resample` for both paths.
    """
    require_dali()
    if device not in ("cpu", "gpu"):
        raise ConfigError(f"log_mel_dali: device={device!r} must be 'cpu' or 'gpu'")
    if device == "gpu" and not gpu_available():
        raise BackendUnavailableError("DALI log-mel on device='gpu' needs an NVIDIA GPU and none was found")
    a = config.audio
    win, hop, nfft = _stft_geometry(config)
    x = resample(audio, rate, a.vggish_rate)
    if x.shape[0] < win:
        return np.zeros((0, a.n_mels), np.float32)
    pipe = _dali_log_mel_pipeline(config, win, hop, nfft, device)
    pipe.feed_input("waveform", [x])
    (out,) = pipe.run()
    if device == "gpu":
        out = out.as_cpu()
    return np.array(out[0], dtype=np.float32, copy=True)  # DALI owns and reuses its buffer


def _dali_log_mel_pipeline(config: Config, win: int, hop: int, nfft: int, device: str) -> Any:
    from nvidia.dali import fn, math, pipeline_def, types  # noqa: PLC0415

    a = config.audio

    @pipeline_def(**dali_pipeline_options(device))
    def pipeline() -> Any:
        wave = fn.external_source(name="waveform", dtype=types.FLOAT, ndim=1)
        if device == "gpu":
            wave = wave.gpu()
        spec = fn.spectrogram(
            wave,
            nfft=nfft,
            window_length=win,
            window_step=hop,
            window_fn=periodic_hann(win).astype(np.float32).tolist(),
            center_windows=False,
            power=1,
            layout="tf",
        )
        mel = fn.mel_filter_bank(
            spec,
            sample_rate=float(a.vggish_rate),
            nfilter=a.n_mels,
            freq_low=float(a.fmin),
            freq_high=float(a.fmax),
            mel_formula="htk",
            normalize=False,
        )
        return math.log(mel + a.log_offset)

    pipe = pipeline()
    pipe.build()
    return pipe
