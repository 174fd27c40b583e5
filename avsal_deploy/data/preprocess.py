"""Model inputs from decoded media, and model outputs back to the video's size.

Frames (ViNet / AViNet ``torch_transform``: ``Resize((224, 384))``, ``ToTensor``, ImageNet
``Normalize``): every frame is resized to the profile's ``(video.height, video.width)`` with
antialiased bilinear interpolation (what torchvision's PIL resize does), scaled to [0, 1] and
normalised with ``video.mean`` / ``video.std``. The aspect ratio is NOT preserved by default,
exactly like the references (a 4:3 video is stretched to the 224 x 384 model grid and its map is
stretched back). ``letterbox=True`` instead scales to fit and pads the rest with the
normalised mean colour (zeros after normalisation); :func:`postprocess_map` then crops the same
box before resizing back.

Frames are preprocessed ONCE each (:func:`preprocess_frames`) and windows are gathered from that
array (:func:`gather_clips`): with stride 1 every frame sits in ``L`` windows, and resizing it
``L`` times would dominate the CPU budget. :func:`clip_tensor` is the one-window convenience.

Maps: :func:`postprocess_map` resizes a model-size map to the video's size (bilinear), clamps
to [0, 1] and min-max normalises (DiffSal's output step); a constant map, which carries no
saliency, becomes all zeros instead of dividing by zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from avsal_deploy.config import Config, check_variant
from avsal_deploy.data.audio import envelope_frames, soundnet_excerpt, vggish_slices
from avsal_deploy.data.video import VideoData
from avsal_deploy.errors import ConfigError
from avsal_deploy.windows import Window

#: Value range below which a map counts as constant (maps are in [0, 1] after clamping).
_FLAT = 1e-6
#: Frames resized per torch call in :func:`preprocess_frames` (bounds the float32 temporary).
_CHUNK = 64


def letterbox_box(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where a ``src_hw`` image lands when scaled to fit ``dst_hw``: (top, left, height, width)."""
    scale = min(dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1])
    h = min(dst_hw[0], max(1, int(round(src_hw[0] * scale))))
    w = min(dst_hw[1], max(1, int(round(src_hw[1] * scale))))
    return (dst_hw[0] - h) // 2, (dst_hw[1] - w) // 2, h, w


def _resize(t: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear resize of ``[B, C, H, W]`` (half-pixel centres, antialiased when shrinking)."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=True)


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ConfigError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    return frames


def preprocess_frames(frames: np.ndarray, config: Config, letterbox: bool = False) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> normalised float32 ``[N, 3, h, w]`` at the profile's size."""
    frames = _check_frames(frames)
    v = config.video
    out_hw = (v.height, v.width)
    mean = torch.tensor(v.mean, dtype=torch.float32).view(1, 3, 1, 1)
    std = torch.tensor(v.std, dtype=torch.float32).view(1, 3, 1, 1)
    out = np.zeros((frames.shape[0], 3, *out_hw), np.float32)  # letterbox bars: the mean colour -> 0
    top, left, h, w = letterbox_box(frames.shape[1:3], out_hw) if letterbox else (0, 0, *out_hw)
    for first in range(0, frames.shape[0], _CHUNK):
        batch = np.ascontiguousarray(frames[first : first + _CHUNK])
        chunk = torch.from_numpy(batch).permute(0, 3, 1, 2).float().div_(255.0)
        chunk = (_resize(chunk, (h, w)) - mean) / std
        out[first : first + chunk.shape[0], :, top : top + h, left : left + w] = chunk.numpy()
    return out


def gather_clip(pre: np.ndarray, frame_indices: Sequence[int] | Window) -> np.ndarray:
    """One model clip ``[3, T, h, w]`` from :func:`preprocess_frames` output, in window order."""
    idx = list(frame_indices.frames if isinstance(frame_indices, Window) else frame_indices)
    return np.ascontiguousarray(pre[idx].transpose(1, 0, 2, 3))


def gather_clips(pre: np.ndarray, windows: Sequence[Window] | Sequence[Sequence[int]]) -> np.ndarray:
    """A batch of clips ``[B, 3, T, h, w]`` (all windows must have the same length)."""
    idx = np.asarray([w.frames if isinstance(w, Window) else tuple(w) for w in windows], dtype=np.int64)
    return np.ascontiguousarray(pre[idx].transpose(0, 2, 1, 3, 4))


def clip_tensor(frames: np.ndarray, config: Config, letterbox: bool = False) -> np.ndarray:
    """uint8 ``[T, H, W, 3]`` window frames -> normalised float32 ``[3, T, h, w]``."""
    return np.ascontiguousarray(preprocess_frames(frames, config, letterbox).transpose(1, 0, 2, 3))


def postprocess_maps(
    maps: np.ndarray, out_size: tuple[int, int], letterbox_from: tuple[int, int] | None = None
) -> np.ndarray:
    """Model-size maps ``[B, h, w]`` (or ``[B, 1, h, w]``) -> float32 ``[B, H, W]`` in [0, 1].

    ``letterbox_from`` is the source frame size when the frames were letterboxed; the map's
    content box is cropped before resizing to ``out_size``.
    """
    m = np.asarray(maps, dtype=np.float32)
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim != 3:
        raise ConfigError(f"saliency maps must be [B, h, w] or [B, 1, h, w], got {tuple(np.shape(maps))}")
    if letterbox_from is not None:
        top, left, h, w = letterbox_box(letterbox_from, m.shape[1:])
        m = m[:, top : top + h, left : left + w]
    t = _resize(torch.from_numpy(np.ascontiguousarray(m))[:, None], tuple(int(s) for s in out_size))[:, 0]
    t = t.clamp_(0.0, 1.0)
    lo = t.amin(dim=(1, 2), keepdim=True)
    span = t.amax(dim=(1, 2), keepdim=True) - lo
    flat = span <= _FLAT  # resampling leaves float noise on a constant map: do not amplify it
    out = torch.where(flat, torch.zeros_like(t), (t - lo) / torch.where(flat, torch.ones_like(span), span))
    return out.numpy().astype(np.float32, copy=False)


def postprocess_map(
    saliency: np.ndarray, out_size: tuple[int, int], letterbox_from: tuple[int, int] | None = None
) -> np.ndarray:
    """One map ``[h, w]`` -> float32 ``[H, W]`` in [0, 1] (see :func:`postprocess_maps`)."""
    return postprocess_maps(np.asarray(saliency)[None], out_size, letterbox_from)[0]


def audio_input(
    video: VideoData, frame_indices: Sequence[int] | Window, config: Config, variant: str = "hybrid"
) -> np.ndarray:
    """The audio encoder's input for one window, shaped ``config.audio_input_shape(variant)``.

    SoundNet waveform buffer for ``avrsp``/``hybrid``, VGGish log-mel slices for ``diffsal``. A
    :class:`Window` passes its ``reversed`` flag; plain indices are reversed when descending.
    Frame times come from ``video.timestamps`` (variable frame rate aware).
    """
    check_variant(variant)
    if isinstance(frame_indices, Window):
        indices, reverse = frame_indices.frames, frame_indices.reversed
    else:
        indices, reverse = tuple(int(i) for i in frame_indices), None
    feature = vggish_slices if variant == "diffsal" else soundnet_excerpt
    return feature(
        video.audio,
        video.audio_rate,
        indices,
        video.fps,
        config,
        timestamps=video.timestamps,
        reverse=reverse,
    )


def audio_inputs(
    video: VideoData,
    windows: Sequence[Window] | Sequence[Sequence[int]],
    config: Config,
    variant: str = "hybrid",
) -> np.ndarray:
    """A batch of audio inputs ``[B, *config.audio_input_shape(variant)]``."""
    return np.stack([audio_input(video, w, config, variant) for w in windows])


def envelope_input(video: VideoData, frame_indices: Sequence[int] | Window, config: Config) -> np.ndarray:
    """The per-frame audio envelope of one window, ``config.envelope_shape()`` (frames in window
    order, so a reversed window's envelope is reversed too); frame times from ``video.timestamps``."""
    indices = (
        frame_indices.frames if isinstance(frame_indices, Window) else tuple(int(i) for i in frame_indices)
    )
    return envelope_frames(
        video.audio, video.audio_rate, indices, video.fps, config, timestamps=video.timestamps
    )


def envelope_inputs(
    video: VideoData,
    windows: Sequence[Window] | Sequence[Sequence[int]],
    config: Config,
    variant: str = "hybrid",
) -> np.ndarray | None:
    """A batch of envelopes ``[B, *config.envelope_shape(variant)]``, or None when ``variant``
    takes none (``config.uses_envelope(variant)``)."""
    if not config.uses_envelope(variant):
        return None
    return np.stack([envelope_input(video, w, config) for w in windows])
