"""QP offset maps in the formats other encoders read, each with a parser for round trips.

Input everywhere: offsets float32 ``[N, rows, cols]`` on the 16x16 grid (QP units, negative = more
bits, raster order; see :mod:`avsal_deploy.roi.mapping`). Coarser encoder grids (SVT-AV1's 64x64
superblocks, HEVC CTBs) are made by :func:`aggregate`: the mean of the 16x16 offsets a coarse block
covers (partial blocks at the right / bottom edge average the blocks they have).

Formats:

- **NVENC** (``NV_ENC_PIC_PARAMS::qpDeltaMap``): one signed byte per block per picture, raster order,
  per macroblock (16x16) for H.264 (per CTB for HEVC: pass ``block=32`` or 64). QP-delta mode
  (``NV_ENC_QP_MAP_DELTA``): the byte is added to the rate control's QP. Emphasis mode
  (``NV_ENC_QP_MAP_EMPHASIS``, H.264): levels 0 (none) .. 5 (most emphasis), see
  :func:`nvenc_emphasis_levels`. The file holds the pictures' maps back to back (N * rows * cols
  bytes), what an application hands NVENC picture by picture.
- **SVT-AV1** ``--roi-map-file``: text, one ROI event per line ``<picture number> <offset> ...``,
  one offset per 64x64 block in raster order, in qindex units (-255..255; the event holds until the
  next one). QP -> qindex uses ``qindex_per_qp`` (default 4: SVT-AV1's --qp 0..63 spans qindex
  0..255); the encoder clusters each map into at most 8 AV1 segments.
- **Kvazaar** ``--roi``: text, per frame ``<cols> <rows>`` then ``cols * rows`` integer delta QPs in
  raster order; Kvazaar scales the map to its 64x64 LCUs and loops the file at its end.
- **FFmpeg** ``AVRegionOfInterest`` (side data ``AV_FRAME_DATA_REGIONS_OF_INTEREST``, read by
  libx264, libx265, libvpx, VAAPI): rectangles ``top, bottom, left, right`` in pixels and ``qoffset``
  a rational in [-1, 1] (negative = better; libx264/libx265 scale it by 51 QP for 8-bit video); the
  first region in the list wins where regions overlap. :func:`rois_from_offsets` merges blocks of
  equal (quantised) offset into few rectangles; :func:`offsets_from_rois` rasterises a list back
  onto the block grid exactly as FFmpeg's libx264 / libx265 wrappers do. Written as JSON.
"""

from __future__ import annotations

import json
import os
import struct
from collections import Counter
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from avsal_deploy.errors import AvsalError, MediaError
from avsal_deploy.roi.mapping import QP_RANGE_8BIT, block_grid

PathLike = str | os.PathLike[str]


def _as_stack(offsets: np.ndarray) -> np.ndarray:
    o = np.asarray(offsets, np.float32)
    if o.ndim == 2:
        o = o[None]
    if o.ndim != 3:
        raise AvsalError(f"QP offsets of shape {o.shape}: expected [N, rows, cols] or [rows, cols]")
    return o


def aggregate(offsets: np.ndarray, factor: int) -> np.ndarray:
    """Offsets [N, rows, cols] on a grid ``factor`` times coarser: the mean over the covered blocks,
    float32 [N, ceil(rows / factor), ceil(cols / factor)]."""
    o = _as_stack(offsets).astype(np.float64)
    if factor == 1:
        return o.astype(np.float32)
    n, r, c = o.shape
    rr, cc = -(-r // factor), -(-c // factor)
    pad = np.zeros((n, rr * factor, cc * factor))
    cnt = np.zeros_like(pad)
    pad[:, :r, :c] = o
    cnt[:, :r, :c] = 1.0
    s = pad.reshape(n, rr, factor, cc, factor).sum(axis=(2, 4))
    k = cnt.reshape(n, rr, factor, cc, factor).sum(axis=(2, 4))
    return (s / k).astype(np.float32)


def _coarse(offsets: np.ndarray, block: int) -> np.ndarray:
    if block % 16:
        raise AvsalError(f"block size {block}: must be a multiple of 16")
    return aggregate(offsets, block // 16)


def _write_atomic(path: PathLike, data: bytes) -> Path:
    out = Path(path)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)
    return out


def _read(path: PathLike) -> bytes:
    p = Path(path)
    if not p.is_file():
        raise MediaError(f"{p}: no such file")
    return p.read_bytes()


# ----------------------------------------------------------------------------- NVENC
def nvenc_qp_delta(offsets: np.ndarray, block: int = 16) -> np.ndarray:
    """int8 [N, rows, cols] QP deltas for NVENC's QP-delta map (rounded, clipped to [-51, 51])."""
    return np.clip(np.rint(_coarse(offsets, block)), -51, 51).astype(np.int8)


def nvenc_emphasis_levels(offsets: np.ndarray, max_delta: float = 10.0, block: int = 16) -> np.ndarray:
    """int8 [N, rows, cols] NVENC emphasis levels 0..5: level ``round(5 * -offset / max_delta)`` for
    blocks with a negative offset (0 for the rest; NVENC only raises quality in this mode)."""
    if not max_delta > 0:
        raise AvsalError(f"max_delta={max_delta}: must be > 0")
    o = _coarse(offsets, block)
    return np.clip(np.rint(5.0 * -o / max_delta), 0, 5).astype(np.int8)


def write_nvenc_map(path: PathLike, qp_map: np.ndarray) -> Path:
    """Write an int8 map [N, rows, cols] (from :func:`nvenc_qp_delta` or :func:`nvenc_emphasis_levels`)
    as raw bytes, picture after picture, raster order."""
    m = np.asarray(qp_map)
    if m.dtype != np.int8 or m.ndim != 3:
        raise AvsalError(f"NVENC map must be int8 [N, rows, cols], got {m.dtype} {m.shape}")
    return _write_atomic(path, np.ascontiguousarray(m).tobytes())


def read_nvenc_map(path: PathLike, grid: tuple[int, int]) -> np.ndarray:
    """The int8 [N, rows, cols] maps of a raw NVENC map file of ``grid = (rows, cols)``."""
    data = _read(path)
    per = int(grid[0]) * int(grid[1])
    if per < 1 or len(data) % per:
        raise MediaError(f"{path}: {len(data)} bytes is not a whole number of {grid[0]}x{grid[1]} maps")
    return np.frombuffer(data, np.int8).reshape(-1, int(grid[0]), int(grid[1])).copy()


# ----------------------------------------------------------------------------- SVT-AV1
def svtav1_qindex_offsets(offsets: np.ndarray, qindex_per_qp: float = 4.0, block: int = 64) -> np.ndarray:
    """int16 [N, rows, cols] qindex offsets on SVT-AV1's ``block`` grid (64, or 16 where the build
    supports ``roi_map_block_size``), clipped to [-255, 255]."""
    return np.clip(np.rint(_coarse(offsets, block) * qindex_per_qp), -255, 255).astype(np.int16)


def write_svtav1_roi_map(path: PathLike, qindex: np.ndarray) -> Path:
    """Write ``--roi-map-file`` events: a line for frame 0 and for every frame whose map changes."""
    q = np.asarray(qindex)
    if q.ndim != 3:
        raise AvsalError(f"SVT-AV1 map must be [N, rows, cols], got {q.shape}")
    lines = []
    for i, m in enumerate(q):
        if i == 0 or not np.array_equal(m, q[i - 1]):
            lines.append(" ".join([str(i), *(str(int(v)) for v in m.ravel())]))
    return _write_atomic(path, ("\n".join(lines) + "\n").encode())


def read_svtav1_roi_map(path: PathLike, grid: tuple[int, int], n_frames: int) -> np.ndarray:
    """Expand an ``--roi-map-file`` to int16 [n_frames, rows, cols] (each event holds until the next;
    frames before the first event get zeros)."""
    rows, cols = int(grid[0]), int(grid[1])
    out = np.zeros((n_frames, rows, cols), np.int16)
    events: list[tuple[int, np.ndarray]] = []
    for k, line in enumerate(_read(path).decode().splitlines()):
        if not line.strip():
            continue
        vals = [int(v) for v in line.split()]
        if len(vals) != rows * cols + 1:
            raise MediaError(f"{path}: line {k + 1} has {len(vals) - 1} offsets, expected {rows * cols}")
        events.append((vals[0], np.array(vals[1:], np.int16).reshape(rows, cols)))
    events.sort(key=lambda e: e[0])
    for j, (start, m) in enumerate(events):
        stop = events[j + 1][0] if j + 1 < len(events) else n_frames
        out[max(start, 0) : max(stop, 0)] = m
    return out


# ----------------------------------------------------------------------------- Kvazaar
def kvazaar_delta_qp(offsets: np.ndarray) -> np.ndarray:
    """int [N, rows, cols] delta QPs for Kvazaar (rounded, clipped to [-51, 51]) on the 16x16 grid."""
    return np.clip(np.rint(_as_stack(offsets)), -51, 51).astype(np.int16)


def write_kvazaar_roi(path: PathLike, delta_qp: np.ndarray) -> Path:
    """Write a Kvazaar ``--roi`` text file: per frame a ``cols rows`` line and a line of deltas."""
    d = np.asarray(delta_qp)
    if d.ndim != 3:
        raise AvsalError(f"Kvazaar map must be [N, rows, cols], got {d.shape}")
    parts = []
    for m in d:
        parts.append(f"{m.shape[1]} {m.shape[0]}\n" + " ".join(str(int(v)) for v in m.ravel()) + "\n")
    return _write_atomic(path, "".join(parts).encode())


def read_kvazaar_roi(path: PathLike) -> np.ndarray:
    """The int16 [N, rows, cols] maps of a Kvazaar ``--roi`` text file (all frames the same size)."""
    tokens = _read(path).decode().split()
    maps: list[np.ndarray] = []
    i = 0
    try:
        while i < len(tokens):
            cols, rows = int(tokens[i]), int(tokens[i + 1])
            vals = tokens[i + 2 : i + 2 + rows * cols]
            if len(vals) != rows * cols:
                raise MediaError(f"{path}: frame {len(maps)} is truncated")
            maps.append(np.array([int(v) for v in vals], np.int16).reshape(rows, cols))
            i += 2 + rows * cols
    except (ValueError, IndexError) as exc:
        raise MediaError(f"{path}: not a Kvazaar ROI file ({exc})") from exc
    if not maps or len({m.shape for m in maps}) != 1:
        raise MediaError(f"{path}: no maps, or maps of different sizes")
    return np.stack(maps)


# ----------------------------------------------------------------------------- FFmpeg
@dataclass(frozen=True)
class Region:
    """One ``AVRegionOfInterest``: pixel edges (bottom / right exclusive) and qoffset in [-1, 1]."""

    top: int
    bottom: int
    left: int
    right: int
    qoffset: Fraction

    def to_dict(self) -> dict[str, int | str]:
        return {
            "top": self.top,
            "bottom": self.bottom,
            "left": self.left,
            "right": self.right,
            "qoffset": f"{self.qoffset.numerator}/{self.qoffset.denominator}",
        }


def quantize_offsets(offsets: np.ndarray, step: float = 1.0) -> np.ndarray:
    """Offsets rounded to multiples of ``step`` QP (fewer distinct values -> fewer regions)."""
    if not step > 0:
        raise AvsalError(f"offset step={step}: must be > 0")
    return (np.rint(np.asarray(offsets, np.float64) / step) * step).astype(np.float32)


def qoffset_fraction(level: float, qp_range: int = QP_RANGE_8BIT) -> Fraction:
    """A QP offset as FFmpeg's ``qoffset`` rational (``level / qp_range``, clipped to [-1, 1])."""
    q = Fraction(float(level)).limit_denominator(1000) / qp_range
    return max(Fraction(-1), min(Fraction(1), q))


def rois_from_offsets(
    offsets: np.ndarray,
    source_size: tuple[int, int],
    block: int = 16,
    step: float = 1.0,
    qp_range: int = QP_RANGE_8BIT,
) -> list[Region]:
    """Few rectangles reproducing one frame's offsets [rows, cols] after :func:`quantize_offsets`.

    Uses the overlap rule (the first region in the list wins): the most common level becomes one
    whole-picture region placed LAST (omitted when it is 0: blocks without a region get 0). The
    other levels are listed from the farthest from that background level to the nearest, and a
    level's rectangles may also cover blocks of the levels listed before it (already decided), so
    the nested level sets of a saliency bump become a few nested rectangles. Each rectangle grows
    greedily from its first uncovered block: rightwards, then downwards while the whole span is allowed.
    """
    o = quantize_offsets(offsets, step)
    if o.ndim != 2:
        raise AvsalError(f"offsets of shape {o.shape}: expected [rows, cols]")
    h, w = int(source_size[0]), int(source_size[1])
    if o.shape != block_grid((h, w), block):
        raise AvsalError(f"offsets grid {o.shape} does not match {h}x{w} with {block}x{block} blocks")
    background = Counter(o.ravel().tolist()).most_common(1)[0][0]
    levels = sorted({float(v) for v in np.unique(o)} - {background}, key=lambda v: (-abs(v - background), v))
    rows, cols = o.shape
    decided = np.zeros(o.shape, bool)
    rects: list[tuple[int, int, int, int, float]] = []  # r0, r1, c0, c1 (exclusive), level
    for level in levels:
        mine = o == level
        allowed = mine | decided
        todo = mine.copy()
        for r, c in zip(*np.nonzero(mine), strict=True):
            if not todo[r, c]:
                continue
            c1 = c + 1
            while c1 < cols and allowed[r, c1]:
                c1 += 1
            r1 = r + 1
            while r1 < rows and allowed[r1, c:c1].all():
                r1 += 1
            todo[r:r1, c:c1] = False
            rects.append((int(r), int(r1), int(c), int(c1), level))
        decided |= mine
    regions = [
        Region(
            r0 * block, min(r1 * block, h), c0 * block, min(c1 * block, w), qoffset_fraction(level, qp_range)
        )
        for r0, r1, c0, c1, level in rects
    ]
    if background != 0:
        regions.append(Region(0, h, 0, w, qoffset_fraction(background, qp_range)))
    return regions


def offsets_from_rois(
    regions: list[Region], source_size: tuple[int, int], block: int = 16, qp_range: int = QP_RANGE_8BIT
) -> np.ndarray:
    """The per-block QP offsets FFmpeg's libx264 / libx265 wrappers derive from ``regions``: float32
    [rows, cols]; regions applied last to first (so the first wins), block ranges
    ``top // block .. ceil(bottom / block)``, ``qoffset * qp_range`` clipped to +-qp_range."""
    rows, cols = block_grid(source_size, block)
    out = np.zeros((rows, cols), np.float32)
    for reg in reversed(regions):
        if reg.qoffset.denominator == 0:
            raise AvsalError("region qoffset has a zero denominator")
        r0, r1 = min(rows, reg.top // block), min(rows, -(-reg.bottom // block))
        c0, c1 = min(cols, reg.left // block), min(cols, -(-reg.right // block))
        q = float(
            np.clip(
                np.float32(reg.qoffset.numerator) / reg.qoffset.denominator * qp_range, -qp_range, qp_range
            )
        )
        out[r0:r1, c0:c1] = q
    return out


_ROI_STRUCT = struct.Struct("<I4i2i")  # self_size, top, bottom, left, right, qoffset {num, den}


def pack_side_data(regions: list[Region]) -> bytes:
    """``regions`` as the bytes of an ``AV_FRAME_DATA_REGIONS_OF_INTEREST`` side data array."""
    return b"".join(
        _ROI_STRUCT.pack(
            _ROI_STRUCT.size, r.top, r.bottom, r.left, r.right, r.qoffset.numerator, r.qoffset.denominator
        )
        for r in regions
    )


def unpack_side_data(data: bytes) -> list[Region]:
    """The regions of ``AV_FRAME_DATA_REGIONS_OF_INTEREST`` side data bytes (e.g. ``bytes(sd)`` of a
    PyAV frame's side data)."""
    if not data:
        return []
    size = struct.unpack_from("<I", data)[0]
    if size < _ROI_STRUCT.size or len(data) % size:
        raise MediaError(f"ROI side data of {len(data)} bytes with self_size {size}: malformed")
    out = []
    for i in range(0, len(data), size):
        _, top, bottom, left, right, num, den = _ROI_STRUCT.unpack_from(data, i)
        out.append(Region(top, bottom, left, right, Fraction(num, den)))
    return out


def write_ffmpeg_rois(
    path: PathLike, offsets: np.ndarray, source_size: tuple[int, int], step: float = 1.0
) -> Path:
    """Write each frame's ``AVRegionOfInterest`` list as JSON: ``{"source_size": [H, W], "block": 16,
    "frames": [[{"top", "bottom", "left", "right", "qoffset": "num/den"}, ...], ...]}``."""
    o = _as_stack(offsets)
    doc = {
        "source_size": [int(source_size[0]), int(source_size[1])],
        "block": 16,
        "qp_range": QP_RANGE_8BIT,
        "frames": [[r.to_dict() for r in rois_from_offsets(m, source_size, 16, step)] for m in o],
    }
    return _write_atomic(path, json.dumps(doc).encode())


def read_ffmpeg_rois(path: PathLike) -> tuple[list[list[Region]], tuple[int, int]]:
    """The per-frame region lists and the source size of a file from :func:`write_ffmpeg_rois`."""
    try:
        doc = json.loads(_read(path))
        frames = [
            [
                Region(
                    int(r["top"]), int(r["bottom"]), int(r["left"]), int(r["right"]), Fraction(r["qoffset"])
                )
                for r in regs
            ]
            for regs in doc["frames"]
        ]
        size = (int(doc["source_size"][0]), int(doc["source_size"][1]))
    except (ValueError, KeyError, TypeError, ZeroDivisionError) as exc:
        raise MediaError(f"{path}: not an ROI list file ({exc})") from exc
    return frames, size
