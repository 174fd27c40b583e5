"""What a prediction is written as: maps (NPZ, PNG), a heat-map overlay video, a contact sheet.

Writers stream frame by frame, so a long or 4K video never needs all of its full-resolution maps
in memory at once. :class:`PredictionWriter` is the one writer of a prediction's directory
(``avsal predict``, ``avsal score``, ``avsal stream``): every file on a thread of its own, then
moved into place together.
"""

from __future__ import annotations

import functools
import io
import os
import queue
import shutil
import struct
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterable, Iterator
from fractions import Fraction
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

import numpy as np
from PIL import Image

from avsal_deploy.data.preprocess import postprocess_map
from avsal_deploy.errors import AvsalError, MediaError

if TYPE_CHECKING:  # data.source imports PyAV; reading maps does not need it
    from avsal_deploy.data.source import Timings

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


@functools.lru_cache(maxsize=8)
def _blend_table(alpha: float) -> np.ndarray:
    """Per saliency level (0..255): the heat map's weight ``alpha * sqrt(s)`` in 1/128 units
    (``255 * 128 * alpha`` stays inside int16 for ``alpha <= 1``)."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"overlay alpha={alpha}: must be in [0, 1]")
    return np.rint(128.0 * alpha * np.sqrt(np.arange(256) / 255.0)).astype(np.int16)


def overlay(frame: np.ndarray, saliency: np.ndarray, alpha: float = 0.55) -> np.ndarray:
    """Blend the heat map onto an RGB frame; weight ``alpha * sqrt(saliency)`` grows with saliency so
    low values stay clear. Integer arithmetic on the map's 256 levels (one table look-up per pixel):
    ``frame + (heat - frame) * w / 128``."""
    idx = quantize_map(saliency)
    heat = COLORMAP[idx].astype(np.int16)
    w = _blend_table(float(alpha))[idx][..., None]
    base = frame.astype(np.int16)
    return (base + (((heat - base) * w) >> 7)).astype(np.uint8)


# ----------------------------------------------------------------------------- maps.npz
#: Version of the compact map format (``format_version`` in the file).
MAP_FORMAT_VERSION = 2
#: deflate level of the map data: 1 is about as small as 9 on smooth maps, and several times faster.
MAP_DEFLATE_LEVEL = 1


def quantize_map(saliency: np.ndarray) -> np.ndarray:
    """A map in [0, 1] as uint8 ``round(255 * m)`` (the format's storage; error <= 1/510)."""
    return np.clip(np.rint(np.asarray(saliency, np.float32) * 255.0), 0, 255).astype(np.uint8)


def _crc32_combine(crc1: int, crc2: int, len2: int) -> int:
    """CRC-32 of ``A + B`` from ``crc(A)``, ``crc(B)`` and ``len(B)`` (zlib's ``crc32_combine``).

    CRC-32 is linear over GF(2): appending ``len2`` zero bytes to ``A`` is a 32x32 bit-matrix power
    applied to ``crc1``, computed by repeated squaring of the one-zero-bit operator.
    """

    def times(mat: list[int], vec: int) -> int:
        out, i = 0, 0
        while vec:
            if vec & 1:
                out ^= mat[i]
            vec >>= 1
            i += 1
        return out

    def square(mat: list[int]) -> list[int]:
        return [times(mat, mat[n]) for n in range(32)]

    if len2 <= 0:
        return crc1
    odd = [0xEDB88320] + [1 << n for n in range(31)]  # operator for one zero bit
    even = square(odd)  # two zero bits
    odd = square(even)  # four zero bits
    while True:
        even = square(odd)  # first pass: one zero byte
        if len2 & 1:
            crc1 = times(even, crc1)
        len2 >>= 1
        if not len2:
            break
        odd = square(even)
        if len2 & 1:
            crc1 = times(odd, crc1)
        len2 >>= 1
        if not len2:
            break
    return crc1 ^ crc2


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, np.asarray(array), allow_pickle=False)
    return buf.getvalue()


def _npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    buf = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_2_0(buf, header)
    return buf.getvalue()


class _ZipEntry(NamedTuple):
    name: str
    offset: int
    crc: int
    size: int  # uncompressed
    csize: int  # compressed


class _ZipWriter:
    """A minimal ZIP64 writer for deflated entries whose compressed bytes we produce ourselves.

    Python's :mod:`zipfile` compresses what it is given; the map stream is compressed while
    frames arrive (before the array header, which needs the final frame count, exists), so its
    entry is assembled here from a header segment and the already-compressed data.
    """

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.entries: list[_ZipEntry] = []

    def add(self, name: str, chunks: Iterable[bytes], crc: int, size: int, csize: int) -> None:
        raw = name.encode()
        offset = self.f.tell()
        extra = struct.pack("<HHQQ", 0x0001, 16, size, csize)
        self.f.write(
            struct.pack(
                "<IHHHHHIIIHH",
                0x04034B50,
                45,
                0,
                8,
                0,
                0x21,
                crc,
                0xFFFFFFFF,
                0xFFFFFFFF,
                len(raw),
                len(extra),
            )
        )
        self.f.write(raw + extra)
        for chunk in chunks:
            self.f.write(chunk)
        self.entries.append(_ZipEntry(name, offset, crc, size, csize))

    def add_bytes(self, name: str, data: bytes) -> None:
        comp = zlib.compressobj(MAP_DEFLATE_LEVEL, zlib.DEFLATED, -15)
        body = comp.compress(data) + comp.flush()
        self.add(name, [body], zlib.crc32(data), len(data), len(body))

    def close(self) -> None:
        start = self.f.tell()
        for e in self.entries:
            raw = e.name.encode()
            extra = struct.pack("<HHQQQ", 0x0001, 24, e.size, e.csize, e.offset)
            self.f.write(
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    0x02014B50,
                    45,
                    45,
                    0,
                    8,
                    0,
                    0x21,
                    e.crc,
                    0xFFFFFFFF,
                    0xFFFFFFFF,
                    len(raw),
                    len(extra),
                    0,
                    0,
                    0,
                    0,
                    0xFFFFFFFF,
                )
            )
            self.f.write(raw + extra)
        end = self.f.tell()
        n = len(self.entries)
        self.f.write(struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, end - start, start))
        self.f.write(struct.pack("<IIQI", 0x07064B50, 0, end, 1))
        self.f.write(struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0))


class MapWriter:
    """Writes ``maps.npz`` frame by frame, in constant memory, whatever the video's length.

    The format (version 2, a plain NumPy ``.npz``; :func:`load_maps` reads it):

    - ``maps``: uint8 ``[N, h, w]``, ``round(255 * map)`` (maps are in [0, 1]; the quantisation
      error is at most 1/510), deflate-compressed. ``(h, w)`` is the model's size (``avsal
      predict``'s default, what the network computed) or the video's (``--map-size source``);
    - ``source_size``: int64 ``[2]``, the video's (H, W); ``load_maps`` resizes to it;
    - ``timestamps``: float64 ``[N]``, seconds from the first frame; ``fps``: float64 ``[1]``;
    - ``format_version``: int64 ``[1]`` (2).

    ``np.load(path)["maps"] / 255`` gives the stored maps. The frame count is not known while the
    maps stream in, so the compressed map data is spooled to a temporary file beside ``path`` and
    the archive is assembled on :meth:`close` (a copy of the compressed bytes, not a re-encode).
    """

    def __init__(
        self,
        path: str | Path,
        source_size: tuple[int, int],
        fps: float,
        map_size: tuple[int, int] | None = None,
    ) -> None:
        self.path = Path(path)
        self.source_size = (int(source_size[0]), int(source_size[1]))
        self.map_size = tuple(int(s) for s in map_size) if map_size is not None else self.source_size
        self.fps = float(fps)
        self._spool = tempfile.TemporaryFile(dir=self.path.parent, prefix=".maps-")
        self._comp = zlib.compressobj(MAP_DEFLATE_LEVEL, zlib.DEFLATED, -15)
        self._crc = 0
        self._size = 0
        self._timestamps: list[float] = []
        self._closed = False

    @property
    def n_frames(self) -> int:
        return len(self._timestamps)

    def write(self, saliency: np.ndarray, timestamp: float | None = None) -> None:
        """Append the next frame's map (float [h, w] in [0, 1] at :attr:`map_size`)."""
        m = np.asarray(saliency)
        if m.shape != self.map_size:
            raise ValueError(f"map {self.n_frames} has shape {m.shape}, expected {self.map_size}")
        data = quantize_map(m).tobytes()
        self._crc = zlib.crc32(data, self._crc)
        self._size += len(data)
        self._spool.write(self._comp.compress(data))
        self._timestamps.append(self.n_frames / self.fps if timestamp is None else float(timestamp))

    def close(self) -> None:
        """Write the archive to :attr:`path`."""
        if self._closed:
            return
        self._closed = True
        self._spool.write(self._comp.flush())
        csize = self._spool.tell()
        self._spool.seek(0)
        header = _npy_header(np.dtype(np.uint8), (self.n_frames, *self.map_size))
        comp = zlib.compressobj(MAP_DEFLATE_LEVEL, zlib.DEFLATED, -15)
        head = comp.compress(header) + comp.flush(zlib.Z_SYNC_FLUSH)  # byte-aligned, not final
        crc = _crc32_combine(zlib.crc32(header), self._crc, self._size)
        spool = self._spool

        def chunks() -> Iterator[bytes]:
            yield head
            while block := spool.read(1 << 20):
                yield block

        try:
            with open(self.path, "wb") as f:
                z = _ZipWriter(f)
                z.add("maps.npy", chunks(), crc, len(header) + self._size, len(head) + csize)
                z.add_bytes("source_size.npy", _npy_bytes(np.asarray(self.source_size, np.int64)))
                z.add_bytes("timestamps.npy", _npy_bytes(np.asarray(self._timestamps, np.float64)))
                z.add_bytes("fps.npy", _npy_bytes(np.asarray([self.fps], np.float64)))
                z.add_bytes("format_version.npy", _npy_bytes(np.asarray([MAP_FORMAT_VERSION], np.int64)))
                z.close()
        finally:
            self._spool.close()

    def abort(self) -> None:
        self._closed = True
        self._spool.close()

    def __enter__(self) -> MapWriter:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def iter_maps(path: str | Path, size: tuple[int, int] | None = None) -> Iterator[np.ndarray]:
    """The maps of a ``maps.npz`` one at a time, float32 ``[H, W]`` in [0, 1] (constant memory).

    ``size`` (default: the recorded ``source_size``, else the stored size) is the size returned;
    stored maps of another size are resized (antialiased bilinear) and clamped to [0, 1]. Reads
    the compact format (uint8, :class:`MapWriter`) and plain float arrays ``maps`` [N, H, W]
    (the earlier float32 format, ground truth saved with ``np.savez``).
    """
    from avsal_deploy.data.resize import resize

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
            if "maps.npy" not in names:
                raise MediaError(f"{path}: no 'maps' array (not a maps.npz written by avsal)")
            target = size
            if target is None and "source_size.npy" in names:
                with zf.open("source_size.npy") as f:
                    target = tuple(int(s) for s in np.lib.format.read_array(f))
            with zf.open("maps.npy") as f:
                version = np.lib.format.read_magic(f)
                shape, fortran, dtype = np.lib.format._read_array_header(f, version)  # noqa: SLF001
                if len(shape) != 3 or fortran:
                    raise MediaError(f"{path}: 'maps' must be a C-ordered [N, H, W] array, got {shape}")
                per_frame = int(np.prod(shape[1:])) * dtype.itemsize
                target = tuple(target) if target is not None else tuple(shape[1:])
                for i in range(shape[0]):
                    raw = f.read(per_frame)
                    if len(raw) != per_frame:
                        raise MediaError(f"{path}: truncated map data at frame {i}")
                    m = np.frombuffer(raw, dtype).reshape(shape[1:])
                    m = m.astype(np.float32) / 255.0 if dtype == np.uint8 else m.astype(np.float32)
                    if m.shape != target:
                        m = np.clip(resize(m, target), 0.0, 1.0)
                    yield m
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise MediaError(f"{path}: unreadable maps file ({exc})") from exc


def load_maps(path: str | Path, size: tuple[int, int] | None = None) -> np.ndarray:
    """All maps of a ``maps.npz`` as float32 ``[N, H, W]`` in [0, 1] at the video's size
    (or ``size``); see :func:`iter_maps` for the formats read and a constant-memory reader."""
    maps = list(iter_maps(path, size))
    if not maps:
        raise MediaError(f"{path}: no maps in the file")
    return np.stack(maps)


def read_map_info(path: str | Path) -> dict[str, Any]:
    """What a ``maps.npz`` holds, without reading its maps: ``n_frames`` (int), ``stored_size``
    (``(h, w)`` ints), ``dtype`` (str) and, where the file has them, ``source_size`` (``(H, W)``
    ints), ``fps`` (float), ``format_version`` (int) and ``timestamps`` (float64 array ``[N]``)."""
    path = Path(path)
    info: dict[str, Any] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in ("source_size", "timestamps", "fps", "format_version"):
                if f"{name}.npy" in zf.namelist():
                    with zf.open(f"{name}.npy") as f:
                        info[name] = np.lib.format.read_array(f)
            with zf.open("maps.npy") as f:
                version = np.lib.format.read_magic(f)
                shape, _, dtype = np.lib.format._read_array_header(f, version)  # noqa: SLF001
    except (KeyError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise MediaError(f"{path}: unreadable maps file ({exc})") from exc
    for name, kind in (("fps", float), ("format_version", int)):
        if name in info:
            info[name] = kind(np.asarray(info[name]).reshape(-1)[0])
    if "source_size" in info:
        info["source_size"] = tuple(int(s) for s in np.asarray(info["source_size"]).reshape(-1))
    info.update(n_frames=int(shape[0]), stored_size=tuple(int(s) for s in shape[1:]), dtype=str(dtype))
    return info


def write_map_png(directory: Path, index: int, saliency: np.ndarray) -> None:
    """Frame ``index``'s map as an 8-bit greyscale PNG ``{index + 1:06d}.png`` (1-based, as the
    saliency data sets number frames); fast zlib level, the maps are smooth."""
    img = Image.fromarray(quantize_map(saliency), mode="L")
    img.save(directory / f"{index + 1:06d}.png", optimize=False, compress_level=1)


def _even(n: int) -> int:
    return max(2, n - (n % 2))


def overlay_size(size: tuple[int, int], max_side: int) -> tuple[int, int]:
    """(height, width) of the overlay video: aspect kept, longest side capped, even (yuv420p)."""
    h, w = size
    scale = min(1.0, max_side / max(h, w))
    return _even(int(round(h * scale))), _even(int(round(w * scale)))


class OverlayWriter:
    """H.264 overlay video (heat map over the source frames) with the source audio as AAC,
    written frame by frame as maps arrive (constant memory).

    Frames are resized to ``size`` (see :func:`overlay_size`) and written with their own
    timestamps, so variable frame rate survives. Audio chunks (mono float32 at ``audio_rate``,
    sample 0 at the first frame's time) are encoded as they are added, interleaved with the video
    by the muxer. ``audio_rate=0`` writes no audio track.
    """

    def __init__(
        self, path: Path, fps: float, size: tuple[int, int], audio_rate: int = 0, crf: int = 23
    ) -> None:
        import av

        self._av = av
        self.size = (int(size[0]), int(size[1]))
        self.n_frames = 0
        self._out = av.open(str(path), "w")
        self._video = self._out.add_stream("libx264", rate=Fraction(fps).limit_denominator(1001))
        self._video.width, self._video.height, self._video.pix_fmt = self.size[1], self.size[0], "yuv420p"
        self._video.options = {"crf": str(crf), "preset": "veryfast"}
        self._video.time_base = Fraction(1, 90000)
        self._audio = None
        self._audio_rate = int(audio_rate)
        self._audio_pts = 0
        if self._audio_rate > 0:
            self._audio = self._out.add_stream("aac", rate=self._audio_rate)
            self._audio.layout = "mono"
        self._last_pts = -1

    def add_frame(self, frame: np.ndarray, saliency: np.ndarray, timestamp: float) -> None:
        """One RGB source frame (any size) and its map (any size, [0, 1])."""
        img = overlay(frame, _resize_map(saliency, frame.shape[:2]))
        h, w = self.size
        if img.shape[:2] != (h, w):
            img = np.asarray(Image.fromarray(img).resize((w, h), Image.BILINEAR))
        vf = self._av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
        pts = max(int(round(timestamp * 90000)), self._last_pts + 1)
        vf.pts, vf.time_base, self._last_pts = pts, self._video.time_base, pts
        for packet in self._video.encode(vf):
            self._out.mux(packet)
        self.n_frames += 1

    def add_audio(self, chunk: np.ndarray) -> None:
        """The next mono float32 samples of the soundtrack (ignored without an audio track)."""
        if self._audio is None or not chunk.size:
            return
        pcm = np.ascontiguousarray(np.clip(chunk, -1.0, 1.0).astype(np.float32)[None, :])
        af = self._av.AudioFrame.from_ndarray(pcm, format="flt", layout="mono")
        af.sample_rate, af.pts = self._audio_rate, self._audio_pts
        self._audio_pts += pcm.shape[1]
        for packet in self._audio.encode(af):
            self._out.mux(packet)

    def abort(self) -> None:
        """Close the file without flushing the encoders (a failed prediction; the file is discarded)."""
        self._out.close()

    def close(self) -> None:
        for stream in (self._video, self._audio):
            if stream is not None:
                for packet in stream.encode():
                    self._out.mux(packet)
        self._out.close()


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


# ----------------------------------------------------------------------------- one prediction's files
def check_writable(out_dir: Path) -> None:
    """Fail before any work when ``out_dir`` cannot be created or written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".avsal-probe-"):
            pass
    except OSError as exc:
        raise AvsalError(f"{out_dir}: output directory is not writable ({exc.strerror or exc})") from exc


def fit_frame(frame: np.ndarray, max_side: int) -> np.ndarray:
    """``frame`` scaled down (bilinear) so its longest side is at most ``max_side``."""
    h, w = frame.shape[:2]
    scale = max_side / max(h, w)
    if scale >= 1.0:
        return frame
    size = (max(2, int(round(w * scale))), max(2, int(round(h * scale))))
    return np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))


def _thumbnail(frame: np.ndarray, width: int = 320) -> np.ndarray:
    return fit_frame(frame, width) if frame.shape[1] > width else frame


#: ``progress(frames written, frames expected)``.
Progress = Callable[[int, int], None]
MAP_FILE = "maps.npz"
PNG_DIR = "maps"
OVERLAY_FILE = "overlay.mp4"
CONTACT_SHEET_FILE = "contact_sheet.png"


class PredictionWriter:
    """The files of one prediction, written frame by frame on a thread of their own and moved into
    ``out_dir`` together: ``maps.npz`` always, ``maps/*.png`` with ``pngs``, ``overlay.mp4`` with
    ``overlay`` (the soundtrack as AAC when ``audio_rate`` > 0) and ``contact_sheet.png`` with
    ``contact_sheet`` (8 frames spread over the video; needs ``overlay``'s frames).

    Everything goes into a private temporary directory inside ``out_dir`` first; :meth:`publish`
    moves it into place only when every file is complete, so a failed or interrupted run leaves no
    partial file and replaces nothing (use it as a context manager: an exception discards the
    temporary directory). Map post-processing to the video's size, deflate, PNG and H.264 encoding
    release the GIL, so writing overlaps with decoding and inference on the caller's thread;
    errors surface there at the next call or at :meth:`finish`.

    ``map_size``: the size ``maps.npz`` stores (default: the video's, ``source_size``);
    ``estimated_frames`` spreads the contact sheet's frames; ``timings.write`` accumulates the
    writing time; ``progress(written, expected)`` is called per map written.
    """

    _END = object()

    def __init__(
        self,
        out_dir: str | os.PathLike[str],
        *,
        source_size: tuple[int, int],
        fps: float,
        audio_rate: int = 0,
        map_size: tuple[int, int] | None = None,
        pngs: bool = False,
        overlay: bool = False,
        contact_sheet: bool | None = None,
        overlay_max_side: int = 1280,
        estimated_frames: int = 0,
        timings: Timings | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.out = Path(out_dir)
        check_writable(self.out)
        self.source_size = (int(source_size[0]), int(source_size[1]))
        self.map_size = tuple(int(s) for s in map_size) if map_size is not None else self.source_size
        if timings is None:
            from avsal_deploy.data.source import Timings

            timings = Timings()
        self.timings = timings
        self.progress = progress
        self.estimated_frames = int(estimated_frames)
        self.tmp = Path(tempfile.mkdtemp(prefix=".avsal-", dir=self.out))
        self.files = [MAP_FILE, *([PNG_DIR] if pngs else [])]
        self.maps = MapWriter(self.tmp / MAP_FILE, self.source_size, fps, self.map_size)
        self.png_dir = self.tmp / PNG_DIR if pngs else None
        if self.png_dir is not None:
            self.png_dir.mkdir()
        self.overlay: OverlayWriter | None = None
        self.sheet = overlay if contact_sheet is None else (contact_sheet and overlay)
        self.thumbs: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
        self.last: tuple[int, np.ndarray, np.ndarray, float] | None = None
        if overlay:
            size = overlay_size(self.source_size, overlay_max_side)
            self.overlay = OverlayWriter(self.tmp / OVERLAY_FILE, fps, size, audio_rate)
            self.files.append(OVERLAY_FILE)
        if self.sheet:
            n = max(self.estimated_frames, 1)
            self.picks = set(np.linspace(0, n - 1, min(8, n)).round().astype(int).tolist())
            self.files.append(CONTACT_SHEET_FILE)
        self.written = 0
        self._extra: list[str] = []
        self._finished = False
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=64)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._work, name="avsal-writers", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ the caller's side
    def add_map(
        self, index: int, timestamp: float, saliency: np.ndarray, frame: np.ndarray | None = None
    ) -> None:
        """Frame ``index``'s map (model size, [0, 1]) and, for the overlay, its RGB frame (any size)."""
        self._put((index, timestamp, saliency, frame))

    def add_audio(self, chunk: np.ndarray) -> None:
        """The next mono float32 samples of the soundtrack (for the overlay; ignored without one)."""
        self._put(chunk)

    def _put(self, item: Any) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(item)

    def finish(self) -> None:
        """Complete every file (in the temporary directory); raises the writers' error, if any."""
        if not self._finished:
            self._finished = True
            self._queue.put(self._END)
            self._thread.join()
        if self._error is not None:
            raise self._error

    def publish(self, extra: dict[str, str] | None = None) -> list[str]:
        """:meth:`finish`, add the ``extra`` text files (name -> content, e.g. ``summary.json``) and
        move everything into ``out_dir`` (a directory already there is replaced); the names moved."""
        self.finish()
        try:
            for name, text in (extra or {}).items():
                (self.tmp / name).write_text(text)
                self._extra.append(name)
        except OSError as exc:
            raise self._storage_error(exc) from exc
        names = [*self.files, *self._extra]
        for name in names:
            dest = self.out / name
            if dest.is_dir():
                shutil.rmtree(dest)
            os.replace(self.tmp / name, dest)
        return names

    def abort(self) -> None:
        """Stop the thread and close the files unfinished (they are discarded with the directory)."""
        if self._thread.is_alive():
            self._finished = True
            self._queue.put(self._END)
            self._thread.join()
        self.maps.abort()
        if self.overlay is not None:
            self.overlay.abort()

    def close(self) -> None:
        """Remove the temporary directory (what :meth:`publish` did not move)."""
        shutil.rmtree(self.tmp, ignore_errors=True)

    def __enter__(self) -> PredictionWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None:
            self.abort()
        self.close()

    # ------------------------------------------------------------------ the writer thread
    def _work(self) -> None:
        try:
            while (item := self._queue.get()) is not self._END:
                if self._error is not None:
                    continue  # drain after a failure so the producer never blocks
                t0 = time.perf_counter()
                if isinstance(item, tuple):
                    self._frame(*item)
                elif self.overlay is not None:
                    self.overlay.add_audio(item)
                self.timings.write += time.perf_counter() - t0
            if self._error is None:
                t0 = time.perf_counter()
                self._complete()
                self.timings.write += time.perf_counter() - t0
        except OSError as exc:  # a full disk, a directory gone read-only, a quota
            self._error = self._storage_error(exc)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            self._error = exc

    def _storage_error(self, exc: OSError) -> AvsalError:
        """One line for a failed write: the output directory and the system's reason."""
        error = AvsalError(f"{self.out}: cannot write the outputs ({exc.strerror or exc})")
        error.__cause__ = exc
        return error

    def _frame(self, index: int, timestamp: float, saliency: np.ndarray, frame: np.ndarray | None) -> None:
        full = postprocess_map(saliency, self.source_size)
        stored = full if self.map_size == self.source_size else postprocess_map(saliency, self.map_size)
        self.maps.write(stored, timestamp)
        if self.png_dir is not None:
            write_map_png(self.png_dir, index, full)
        if self.overlay is not None:
            if frame is None:
                raise ValueError(f"frame {index}: the overlay needs the frame with its map")
            self.overlay.add_frame(frame, full, timestamp)
            if self.sheet:
                thumb = _thumbnail(frame)
                self.last = (index, thumb, saliency, timestamp)
                if index in self.picks:
                    self.thumbs[index] = (thumb, saliency, timestamp)
        self.written += 1
        if self.progress is not None:
            self.progress(self.written, max(self.written, self.estimated_frames))

    def _complete(self) -> None:
        self.maps.close()
        if self.overlay is not None:
            self.overlay.close()
        if self.sheet:
            if self.last is not None and self.last[0] not in self.thumbs:  # fewer frames than estimated
                self.thumbs[self.last[0]] = self.last[1:]
            shown = sorted(self.thumbs)[-8:] if len(self.thumbs) > 8 else sorted(self.thumbs)
            contact_sheet(
                self.tmp / CONTACT_SHEET_FILE,
                [self.thumbs[i][0] for i in shown],
                [postprocess_map(self.thumbs[i][1], self.thumbs[i][0].shape[:2]) for i in shown],
                [f"#{i + 1} {self.thumbs[i][2]:.2f}s" for i in shown],
            )
