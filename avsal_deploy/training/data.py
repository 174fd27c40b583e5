"""Training and evaluation inputs from a :class:`~avsal_deploy.data.datasets.SaliencyDataset`.

:class:`VideoInputs` turns one annotated video into model inputs by the same rules inference uses:
frames are preprocessed once (:func:`~avsal_deploy.data.preprocess.preprocess_frames`), clips are
gathered per window (:mod:`avsal_deploy.windows`), and the audio input of a window is the
SoundNet buffer (``avrsp``/``hybrid``) or the VGGish log-mel slices (``diffsal``) cut from the
record's own soundtrack (:mod:`avsal_deploy.data.audio`), reversed with reversed windows.

:class:`WindowDataset` is the ``torch.utils.data.Dataset`` of training windows. An epoch holds
``windows_per_video`` items per video; item ``i`` belongs to video ``i % n_videos`` and its target
frame, flip and channel permutation are drawn from a generator seeded by ``(seed, epoch, i)``. An
item is therefore a pure function of its index and the epoch: any sampler order, any number of
loader workers and any DDP rank see the same item for the same index, which is what makes resumed
runs identical to uninterrupted ones.

Augmentation (with a dozen videos per condition a small model memorises each
video's observers; flips and colour-channel shuffles lifted held-out CC markedly):

- horizontal flip of the clip AND of the target map and fixations (the soundtrack is unchanged:
  the synthetic scenes, like real ones, have no left/right audio cue in a mono track);
- colour-channel shuffle: a uniformly drawn permutation of R, G, B applied to the clip before
  normalisation (computed as un-normalise, permute, re-normalise on the cached clip).

Audio modes: ``"real"`` uses the soundtrack; ``"silent"`` replaces it by digital silence of the
same length before the audio features are computed (SoundNet sees zeros, VGGish sees the log-mel
of silence), which is how the visual-only twin of the audio-relevance experiment is trained and
tested.

Targets are brought to the model's map size: the continuous map by antialiased bilinear resizing
(values stay in [0, 1]); each fixated pixel is moved to the model pixel whose area contains its
centre, so the binary map keeps one mark per fixated location.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from avsal_deploy.config import Config, check_variant
from avsal_deploy.data.audio import audio_input, envelope_frames
from avsal_deploy.data.datasets import SaliencyDataset, VideoRecord
from avsal_deploy.data.preprocess import gather_clip, preprocess_frames
from avsal_deploy.data.signal import AudioTrack
from avsal_deploy.errors import ConfigError, DatasetError
from avsal_deploy.windows import Window, sample_windows

AudioMode = Literal["real", "silent"]
AUDIO_MODES: tuple[str, ...] = ("real", "silent")


def check_audio_mode(mode: str) -> str:
    if mode not in AUDIO_MODES:
        raise ConfigError(f"audio mode {mode!r}: choose one of {', '.join(AUDIO_MODES)}")
    return mode


def resize_maps(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Continuous maps ``[N, H, W]`` -> float32 ``[N, h, w]`` (antialiased bilinear, clamped to [0, 1])."""
    m = np.ascontiguousarray(maps, dtype=np.float32)
    if m.shape[1:] == tuple(size):
        return m
    t = F.interpolate(torch.from_numpy(m)[:, None], size=size, mode="bilinear", antialias=True)
    return t[:, 0].clamp_(0.0, 1.0).numpy()


def resize_fixations(fixations: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Binary fixation maps ``[N, H, W]`` -> bool ``[N, h, w]``: each fixated pixel marks the model
    pixel that contains its centre."""
    f = np.asarray(fixations, dtype=bool)
    n, h_in, w_in = f.shape
    if (h_in, w_in) == tuple(size):
        return f.copy()
    out = np.zeros((n, *size), dtype=bool)
    k, r, c = np.nonzero(f)
    rows = np.minimum(((r + 0.5) * size[0] / h_in).astype(np.intp), size[0] - 1)
    cols = np.minimum(((c + 0.5) * size[1] / w_in).astype(np.intp), size[1] - 1)
    out[k, rows, cols] = True
    return out


class VideoInputs:
    """Model inputs of one annotated video, built by the inference rules (see the module docs).

    With ``cache=True`` every decoded and preprocessed array is kept in memory after its first
    use (about ``n_frames * 3 * h * w * 4`` bytes for the frames: 7 MB for 96 frames at 64 x 96);
    with ``cache=False`` frames and annotations are read from disk for each window.
    ``audio_record`` takes the soundtrack from another video (a control: the audio-relevance
    experiment scores the audio-visual model with a mismatched soundtrack); past its end the
    excerpts are silence.
    """

    def __init__(
        self,
        record: VideoRecord,
        config: Config,
        variant: str,
        audio: AudioMode = "real",
        cache: bool = True,
        audio_record: VideoRecord | None = None,
    ) -> None:
        self.record = record
        self.audio_record = audio_record or record
        self.config = config
        self.variant = check_variant(variant)
        self.audio_mode = check_audio_mode(audio)
        self.cache = cache
        self.size = (config.video.height, config.video.width)
        self._frames: np.ndarray | None = None
        self._maps: np.ndarray | None = None
        self._fixations: np.ndarray | None = None
        self._native_maps: np.ndarray | None = None
        self._native_fixations: np.ndarray | None = None
        self._audio: tuple[np.ndarray, int] | None = None
        self._envelope: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def n_frames(self) -> int:
        return self.record.n_frames

    @property
    def condition(self) -> str | None:
        return self.record.condition

    # ------------------------------------------------------------------ frames
    def preprocessed(self) -> np.ndarray:
        """All frames preprocessed to the model size, float32 ``[N, 3, h, w]`` (cached)."""
        if self._frames is not None:
            return self._frames
        pre = preprocess_frames(self.record.frames(), self.config)
        if self.cache:
            self._frames = pre
        return pre

    def clip(self, window: Window) -> np.ndarray:
        """The normalised clip ``[3, T, h, w]`` of ``window`` (frames in window order)."""
        if self.cache:
            return gather_clip(self.preprocessed(), window)
        unique = sorted(set(window.frames))
        pre = preprocess_frames(self.record.frames(unique), self.config)
        position = {f: i for i, f in enumerate(unique)}
        return gather_clip(pre, [position[f] for f in window.frames])

    # ------------------------------------------------------------------ audio
    def track(self) -> tuple[np.ndarray, int]:
        """The soundtrack (float32 mono, rate); digital silence of its length in ``"silent"`` mode."""
        if self._audio is not None:
            return self._audio
        audio, rate = self.audio_record.audio()
        if self.audio_mode == "silent":
            audio = np.zeros_like(audio)
        if self.cache:
            self._audio = (audio, rate)
        return audio, rate

    def audio_input(self, window: Window) -> np.ndarray:
        """The audio encoder's input for ``window``, shaped ``config.audio_input_shape(variant)``."""
        audio, rate = self.track()
        return audio_input(AudioTrack(audio, rate, self.record.fps), window, self.config, self.variant)

    @property
    def uses_envelope(self) -> bool:
        return self.config.uses_envelope(self.variant)

    def envelope(self, window: Window) -> np.ndarray | None:
        """The per-frame audio envelope of ``window`` ``config.envelope_shape(variant)`` (frames in
        window order), or None when the variant takes none. Every frame's column is computed once
        per video (a frame's envelope does not depend on the window it is in)."""
        if not self.uses_envelope:
            return None
        if self._envelope is not None:
            return np.ascontiguousarray(self._envelope[:, list(window.frames)])
        audio, rate = self.track()
        if not self.cache:
            return envelope_frames(audio, rate, window.frames, self.record.fps, self.config)
        self._envelope = envelope_frames(audio, rate, range(self.n_frames), self.record.fps, self.config)
        return np.ascontiguousarray(self._envelope[:, list(window.frames)])

    # ------------------------------------------------------------------ annotations
    def native_annotations(self) -> tuple[np.ndarray, np.ndarray]:
        """All ground-truth maps float32 ``[N, H, W]`` and fixations bool ``[N, H, W]`` at their
        stored size (what the metrics score against)."""
        if self._native_maps is not None and self._native_fixations is not None:
            return self._native_maps, self._native_fixations
        maps, fixations = self.record.annotations()
        if self.cache:
            self._native_maps, self._native_fixations = maps, fixations
        return maps, fixations

    def target(self, frame: int) -> tuple[np.ndarray, np.ndarray]:
        """Map float32 ``[h, w]`` and fixations bool ``[h, w]`` of ``frame`` at the model's map size."""
        if self._maps is None or self._fixations is None:
            if not self.cache:
                m = self.record.saliency_map(frame)[None]
                f = self.record.fixations(frame)[None]
                return resize_maps(m, self.size)[0], resize_fixations(f, self.size)[0]
            maps, fixations = self.native_annotations()
            self._maps = resize_maps(maps, self.size)
            self._fixations = resize_fixations(fixations, self.size)
        return self._maps[frame], self._fixations[frame]


def channel_shuffle(clip: np.ndarray, perm: Sequence[int], config: Config) -> np.ndarray:
    """Permute the colour channels of a normalised clip ``[3, T, h, w]`` as if done on the raw
    frames: un-normalise with ``video.mean``/``video.std``, permute, re-normalise."""
    mean = np.asarray(config.video.mean, np.float32).reshape(3, 1, 1, 1)
    std = np.asarray(config.video.std, np.float32).reshape(3, 1, 1, 1)
    raw = clip * std + mean
    return np.ascontiguousarray((raw[list(perm)] - mean) / std, dtype=np.float32)


class WindowDataset(Dataset):
    """Random training windows over the videos of a data set (see the module docstring).

    Items are dicts of tensors: ``frames`` ``[3, T, h, w]``, ``audio``
    ``config.audio_input_shape(variant)``, ``envelope`` ``config.envelope_shape(variant)`` (only
    when the variant takes it), ``map`` ``[1, h, w]`` (continuous, [0, 1]),
    ``fixations`` ``[1, h, w]`` (0/1 float), ``video`` and ``target`` (int64 scalars).
    Call :meth:`set_epoch` before each epoch (the trainer does).
    """

    def __init__(
        self,
        dataset: SaliencyDataset | Sequence[VideoRecord],
        config: Config,
        variant: str,
        *,
        windows_per_video: int = 8,
        audio: AudioMode = "real",
        flip: bool = True,
        channel_shuffle: bool = True,
        seed: int = 0,
        cache: bool = True,
    ) -> None:
        records = list(dataset)
        if not records:
            raise DatasetError("training data set has no videos")
        if windows_per_video < 1:
            raise ConfigError(f"data.windows_per_video={windows_per_video}: must be >= 1")
        self.config = config
        self.variant = check_variant(variant)
        self.videos = [VideoInputs(r, config, variant, audio, cache) for r in records]
        self.windows_per_video = int(windows_per_video)
        self.flip = bool(flip)
        self.shuffle_channels = bool(channel_shuffle)
        self.seed = int(seed)
        self.epoch = 0

    def __len__(self) -> int:
        return self.windows_per_video * len(self.videos)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose windows and augmentations the items draw."""
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"window index {index} outside [0, {len(self)})")
        video_index = index % len(self.videos)
        video = self.videos[video_index]
        rng = np.random.default_rng((self.seed, self.epoch, int(index)))
        window = sample_windows(video.n_frames, self.config, rng, self.variant, count=1)[0]
        flip = self.flip and bool(rng.integers(0, 2))
        perm = rng.permutation(3) if self.shuffle_channels else None

        clip = video.clip(window)
        if perm is not None:
            clip = channel_shuffle(clip, perm, self.config)
        target_map, fixations = video.target(window.target)
        if flip:
            clip = clip[..., ::-1]
            target_map = target_map[:, ::-1]
            fixations = fixations[:, ::-1]
        item = {
            "frames": torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32)),
            "audio": torch.from_numpy(np.ascontiguousarray(video.audio_input(window), dtype=np.float32)),
            "map": torch.from_numpy(np.ascontiguousarray(target_map, dtype=np.float32))[None],
            "fixations": torch.from_numpy(np.ascontiguousarray(fixations, dtype=np.float32))[None],
            "video": torch.tensor(video_index, dtype=torch.int64),
            "target": torch.tensor(window.target, dtype=torch.int64),
        }
        envelope = video.envelope(window)
        if envelope is not None:
            item["envelope"] = torch.from_numpy(envelope.astype(np.float32))
        return item
