"""Model inputs from decoded media, and model outputs back to the video's size.

Frames (ViNet / AViNet ``torch_transform``: ``Resize((224, 384))``, ``ToTensor``, ImageNet
``Normalize``): every frame is resized to the profile's ``(video.height, video.width)`` with
antialiased bilinear interpolation (what torchvision's PIL resize does), scaled to [0, 1] and
normalised with ``video.mean`` / ``video.std``. ``video.resize = "pil"`` (the ViNet and AViNet
input modes) resizes the uint8 frame with PIL's BILINEAR filter itself, rounded to uint8 as PIL
does, and divides by 255 as ``ToTensor`` does: the official input exactly (the default differs
from it by about half a grey level at most). The aspect ratio is NOT preserved by default,
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
from PIL import Image

from avsal_deploy.config import Config, VideoConfig
from avsal_deploy.data.resize import cv2_linear_resize, resize
from avsal_deploy.errors import ConfigError
from avsal_deploy.windows import Window

#: Value range below which a map counts as constant (maps are in [0, 1] after clamping).
_FLAT = 1e-6


def letterbox_box(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[int, int, int, int]:
    """Where a ``src_hw`` image lands when scaled to fit ``dst_hw``: (top, left, height, width)."""
    scale = min(dst_hw[0] / src_hw[0], dst_hw[1] / src_hw[1])
    h = min(dst_hw[0], max(1, int(round(src_hw[0] * scale))))
    w = min(dst_hw[1], max(1, int(round(src_hw[1] * scale))))
    return (dst_hw[0] - h) // 2, (dst_hw[1] - w) // 2, h, w


def _check_frames(frames: np.ndarray) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ConfigError(f"frames must be uint8 [N, H, W, 3], got {frames.dtype} {tuple(frames.shape)}")
    return frames


def pil_resize(frame: np.ndarray, size: tuple[int, int], pre_resize: Sequence[int] = ()) -> np.ndarray:
    """One uint8 ``[H, W, 3]`` frame resized by Pillow to ``size = (height, width)``, uint8.

    Pillow resamples 8-bit images in fixed point and rounds to 8 bits after each pass, as the
    official loaders' ``PIL.Image.resize`` does. ``pre_resize = (height, width)`` first resizes with
    Pillow's default filter (bicubic), the official DiffSal ``pil_loader``; the resize to ``size``
    is bilinear (its ``Scale`` and torchvision's ``Resize`` of a PIL image). Each resize runs its
    width pass, then its height pass, as separate calls: the order Pillow up to 9.x (the official
    environment: 9.4) always used; newer Pillow picks the order itself, which changes the 8-bit
    rounding of the intermediate image (one level in about a quarter of the pixels).
    """
    from PIL import Image

    def two_pass(img: Image.Image, h: int, w: int, method: Image.Resampling) -> Image.Image:
        if img.width != w:
            img = img.resize((w, img.height), method)
        return img.resize((w, h), method) if img.height != h else img

    img = Image.fromarray(np.ascontiguousarray(frame))
    if pre_resize:
        img = two_pass(img, int(pre_resize[0]), int(pre_resize[1]), Image.Resampling.BICUBIC)
    return np.asarray(two_pass(img, int(size[0]), int(size[1]), Image.Resampling.BILINEAR))


def preprocess_frames(frames: np.ndarray, config: Config, letterbox: bool = False) -> np.ndarray:
    """uint8 ``[N, H, W, 3]`` -> normalised float32 ``[N, 3, h, w]`` at the profile's size.

    ``video.resize = "pil"`` resizes with Pillow on the 8-bit frame (after ``video.pre_resize``
    when set; :func:`pil_resize`), ``"cv2"`` with OpenCV's INTER_LINEAR arithmetic
    (:func:`~avsal_deploy.data.resize.cv2_linear_resize`), as the official loaders do, and then
    divides by 255 as torchvision's ``ToTensor`` does; the default is our float resize.
    """
    frames = _check_frames(frames)
    v = config.video
    out_hw = (v.height, v.width)
    mean = np.asarray(v.mean, np.float32).reshape(1, 3, 1, 1)
    std = np.asarray(v.std, np.float32).reshape(1, 3, 1, 1)
    out = np.zeros((frames.shape[0], 3, *out_hw), np.float32)  # letterbox bars: the mean colour -> 0
    top, left, h, w = letterbox_box(frames.shape[1:3], out_hw) if letterbox else (0, 0, *out_hw)
    scale = np.float32(1.0 / 255.0)
    for i, frame in enumerate(frames):  # [H, W, 3]: resized in the decoder's layout, then CHW
        if v.resize in ("pil", "cv2"):
            eight_bit = (
                pil_resize(frame, (h, w), v.pre_resize)
                if v.resize == "pil"
                else cv2_linear_resize(frame, (h, w))
            )
            out[i, :, top : top + h, left : left + w] = normalise_levels(eight_bit.transpose(2, 0, 1), v)
            continue
        small = resize(frame, (h, w), axes=(0, 1)).transpose(2, 0, 1) * scale
        out[i, :, top : top + h, left : left + w] = (small - mean[0]) / std[0]
    return out


def normalise_levels(levels: np.ndarray, video: VideoConfig) -> np.ndarray:
    """8-bit levels ``[3, h, w]`` -> float32, normalised in the official loaders' arithmetic.

    ``ToTensor`` (``p / 255``) then ``Normalize`` (``(x - mean) / std``), in float32, as ViNet,
    AViNet, ViNet-S and DiffSal do; with ``mean = std = 0.5`` (TASED-Net's ``run_example.py``)
    as ``(2p - 255) / 255``, the same number rounded once, as that loader rounds it: the two-step
    form is one unit in the last place off in about a third of the pixels, enough to flip a near
    tie of TASED's unpooling argmax (a map then moves by up to ~0.01).
    """
    x = levels.astype(np.float32)
    if tuple(video.mean) == tuple(video.std) == (0.5, 0.5, 0.5):
        return (np.float32(2.0) * x - np.float32(255.0)) / np.float32(255.0)
    mean = np.asarray(video.mean, np.float32).reshape(3, 1, 1)
    std = np.asarray(video.std, np.float32).reshape(3, 1, 1)
    return (x / np.float32(255.0) - mean) / std


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
    t = np.clip(resize(m, (int(out_size[0]), int(out_size[1]))), 0.0, 1.0)
    lo = t.min(axis=(1, 2), keepdims=True)
    span = t.max(axis=(1, 2), keepdims=True) - lo
    flat = span <= _FLAT  # resampling leaves float noise on a constant map: do not amplify it
    out = np.where(flat, np.float32(0.0), (t - lo) / np.where(flat, np.float32(1.0), span))
    return out.astype(np.float32, copy=False)


def postprocess_map(
    saliency: np.ndarray, out_size: tuple[int, int], letterbox_from: tuple[int, int] | None = None
) -> np.ndarray:
    """One map ``[h, w]`` -> float32 ``[H, W]`` in [0, 1] (see :func:`postprocess_maps`)."""
    return postprocess_maps(np.asarray(saliency)[None], out_size, letterbox_from)[0]
