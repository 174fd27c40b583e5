"""What a prediction is written as: maps (NPZ, PNG), a heat-map overlay video, a contact sheet.

Writers stream frame by frame, so a long or 4K video never needs all of its full-resolution maps
in memory at once: maps are produced by a callable ``map_at(frame_index) -> [H, W]``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

MapFn = Callable[[int], np.ndarray]


def _colormap_table() -> np.ndarray:
    """A 256-entry perceptual 'inferno'-like ramp (black -> purple -> orange -> yellow), uint8."""
    anchors = np.array(
        [
            [0.0, 0, 0, 4],
            [0.25, 87, 16, 110],
            [0.5, 188, 55, 84],
            [0.75, 249, 142, 9],
            [1.0, 252, 255, 164],
        ]
    )
    x = np.linspace(0.0, 1.0, 256)
    return np.stack([np.interp(x, anchors[:, 0], anchors[:, c]) for c in (1, 2, 3)], -1).astype(np.uint8)


COLORMAP = _colormap_table()


def colorize(saliency: np.ndarray) -> np.ndarray:
    """A [H, W] map in [0, 1] as an RGB uint8 heat map [H, W, 3]."""
    idx = np.clip(np.rint(np.asarray(saliency, np.float32) * 255.0), 0, 255).astype(np.uint8)
    return COLORMAP[idx]


def overlay(frame: np.ndarray, saliency: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend the heat map onto an RGB frame; weight grows with saliency so low values stay clear."""
    heat = colorize(saliency).astype(np.float32)
    w = (alpha * np.clip(saliency, 0.0, 1.0) ** 0.5)[..., None]
    return np.clip(frame.astype(np.float32) * (1.0 - w) + heat * w, 0, 255).astype(np.uint8)


def write_maps_npz(path: Path, n_frames: int, size: tuple[int, int], map_at: MapFn) -> None:
    """``maps.npz`` with one float32 array ``maps`` [N, H, W], written one frame at a time."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False}
    header["shape"] = (n_frames, *size)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("maps.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_2_0(f, header)
            for i in range(n_frames):
                m = np.ascontiguousarray(map_at(i), dtype=np.float32)
                if m.shape != size:
                    raise ValueError(f"map {i} has shape {m.shape}, expected {size}")
                f.write(m.tobytes())


def write_map_pngs(directory: Path, n_frames: int, map_at: MapFn) -> None:
    """8-bit greyscale PNGs ``000001.png`` ... (1-based, as the saliency data sets number frames)."""
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n_frames):
        img = np.clip(np.rint(map_at(i) * 255.0), 0, 255).astype(np.uint8)
        Image.fromarray(img, mode="L").save(directory / f"{i + 1:06d}.png", optimize=False)


def _even(n: int) -> int:
    return max(2, n - (n % 2))


def overlay_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(height, width) of the overlay video: aspect kept, longest side capped, even (yuv420p)."""
    h, w = size
    scale = min(1.0, max_side / max(h, w))
    return _even(int(round(h * scale))), _even(int(round(w * scale)))


def write_overlay(
    path: Path,
    frames: Iterable[tuple[np.ndarray, float]],
    map_at: MapFn,
    fps: float,
    size: tuple[int, int],
    audio: np.ndarray | None = None,
    audio_rate: int = 0,
    crf: int = 23,
) -> int:
    """H.264 overlay video of the source frames with their maps, and the source audio as AAC.

    ``frames`` yields (RGB frame, timestamp) at the source resolution; frames are resized to
    ``size`` (see :func:`overlay_size`) and written with their own timestamps, so variable
    frame rate survives. The audio (mono, as decoded) is re-encoded to AAC. Returns the number of
    frames written.
    """
    import av

    h, w = size
    rate = Fraction(fps).limit_denominator(1001)
    n = 0
    with av.open(str(path), "w") as out:
        vs = out.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        vs.options = {"crf": str(crf), "preset": "veryfast"}
        vs.time_base = Fraction(1, 90000)
        astream = None
        if audio is not None and audio.size and audio_rate > 0:
            astream = out.add_stream("aac", rate=audio_rate)
            astream.layout = "mono"
        last_pts = -1
        for i, (frame, t) in enumerate(frames):
            sal = map_at(i)
            img = overlay(frame, _resize_map(sal, frame.shape[:2]))
            if img.shape[:2] != (h, w):
                img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
            vf = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            pts = max(int(round(t * 90000)), last_pts + 1)
            vf.pts, vf.time_base, last_pts = pts, vs.time_base, pts
            for packet in vs.encode(vf):
                out.mux(packet)
            n += 1
        for packet in vs.encode():
            out.mux(packet)
        if astream is not None:
            assert audio is not None
            pcm = np.ascontiguousarray(np.clip(audio, -1.0, 1.0).astype(np.float32)[None, :])
            af = av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
            af.sample_rate = audio_rate
            af.pts = 0
            for packet in astream.encode(af):
                out.mux(packet)
            for packet in astream.encode():
                out.mux(packet)
    return n


def _resize_map(saliency: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    if saliency.shape == tuple(size):
        return saliency
    img = Image.fromarray(np.asarray(saliency, np.float32), mode="F")
    return np.asarray(img.resize((size[1], size[0]), Image.BILINEAR), dtype=np.float32)


def contact_sheet(
    path: Path,
    frames: list[np.ndarray],
    maps: list[np.ndarray],
    labels: list[str],
    tile_width: int = 320,
    columns: int = 4,
) -> None:
    """A PNG grid: each tile is a frame with its overlay, labelled with its frame number/time."""
    from PIL import ImageDraw

    tiles = []
    for frame, sal, label in zip(frames, maps, labels, strict=True):
        tile = Image.fromarray(overlay(frame, _resize_map(sal, frame.shape[:2])))
        th = max(2, int(round(tile.height * tile_width / tile.width)))
        tile = tile.resize((tile_width, th), Image.BILINEAR)
        draw = ImageDraw.Draw(tile)
        draw.rectangle([0, 0, 8 * len(label) + 6, 14], fill=(0, 0, 0))
        draw.text((3, 1), label, fill=(255, 255, 255))
        tiles.append(tile)
    if not tiles:
        raise ValueError("contact sheet needs at least one frame")
    cols = min(columns, len(tiles))
    rows = -(-len(tiles) // cols)
    th = max(t.height for t in tiles)
    sheet = Image.new("RGB", (cols * tile_width + (cols + 1) * 4, rows * th + (rows + 1) * 4), (24, 24, 24))
    for k, tile in enumerate(tiles):
        r, c = divmod(k, cols)
        sheet.paste(tile, (4 + c * (tile_width + 4), 4 + r * (th + 4)))
    sheet.save(path)
