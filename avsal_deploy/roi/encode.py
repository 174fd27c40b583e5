"""In-process H.264 / HEVC encoding with PyAV's bundled libx264 / libx265 and per-frame ROI side data.

PyAV cannot write frame side data through its public API, so each frame goes through a small
filter graph ``buffer -> addroi x K -> buffersink``, rebuilt for that frame, whose ``addroi``
filters attach the frame's ``AVRegionOfInterest`` list (FFmpeg's libx264 / libx265 wrappers turn
it into per-16x16-block QP offsets). K stays small: blocks are merged into rectangles of equal
quantised offset (:func:`~avsal_deploy.roi.exporters.rois_from_offsets`). Adaptive quantisation must
be on (aq-mode >= 1, the encoders' default except in the ``ultrafast`` presets), or the encoders
silently skip ROI: an ``aq-mode=0`` option is refused here and ``ultrafast`` gets ``aq-mode=1`` (for
the ROI and the uniform encodes alike, so comparisons stay fair).

A faster route, opt-in (``route="ctypes"``): :class:`SideDataWriter` attaches the side data with
libavutil's ``av_frame_new_side_data`` through ctypes, guarded by version pins and self-checks; the
tests check that both routes give bit-identical bitstreams.

Frames are yuv420p arrays ``[H * 3 / 2, W]`` uint8 (PyAV's planar layout: Y rows, then U, then V);
:func:`to_yuv420p` converts RGB frames once, so every encode of a comparison gets identical input
and the metrics compare planes without colour-conversion error.
"""

from __future__ import annotations

import ctypes
import io
import struct
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy.errors import AvsalError, BackendUnavailableError, MediaError
from avsal_deploy.roi.exporters import Region, qoffset_fraction, quantize_offsets, rois_from_offsets
from avsal_deploy.roi.mapping import QP_RANGE_8BIT, block_grid, codec_block

ENCODERS = {"x264": "libx264", "x265": "libx265"}


@dataclass
class Clip:
    """A video held as yuv420p frames ``[H * 3 / 2, W]`` uint8, with its frame rate."""

    frames: list[np.ndarray]
    fps: float

    @property
    def size(self) -> tuple[int, int]:
        """(H, W) of the pictures."""
        f = self.frames[0]
        return f.shape[0] * 2 // 3, f.shape[1]

    @property
    def n_frames(self) -> int:
        return len(self.frames)

    @property
    def seconds(self) -> float:
        return self.n_frames / self.fps


def to_yuv420p(rgb: np.ndarray) -> np.ndarray:
    """An RGB uint8 frame [H, W, 3] (even H and W) as PyAV yuv420p planes [H * 3 / 2, W]."""
    import av

    h, w = rgb.shape[:2]
    if h % 2 or w % 2:
        raise MediaError(f"frame size {h}x{w}: height and width must be even for yuv420p encoding")
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    return frame.reformat(format="yuv420p").to_ndarray()


def clip_from_frames(frames: Iterable[np.ndarray], fps: float) -> Clip:
    """A :class:`Clip` from RGB frames [H, W, 3]."""
    out = [to_yuv420p(f) for f in frames]
    if not out:
        raise MediaError("no frames to encode")
    return Clip(out, float(fps))


def read_clip(path: str, max_frames: int | None = None) -> Clip:
    """Decode a video file into a :class:`Clip` (raises MediaError naming the file)."""
    from avsal_deploy.data.decode import iter_frames, probe

    info = probe(path)
    frames = []
    for i, (frame, _t) in enumerate(iter_frames(path)):
        if max_frames is not None and i >= max_frames:
            break
        try:
            frames.append(to_yuv420p(frame))
        except MediaError as exc:
            raise MediaError(f"{path}: {exc}") from None
    if not frames:
        raise MediaError(f"{path}: no video frames")
    return Clip(frames, float(info.fps or 25.0))


@dataclass
class EncodeResult:
    """One encode: the mp4 bytes, its video bitrate (packet payload bits / duration) and timings."""

    data: bytes
    codec: str
    crf: float
    n_frames: int
    seconds: float  # duration of the clip
    payload_bytes: int
    encode_seconds: float  # wall time of the whole encode loop, ROI handling included
    roi_seconds: float  # of which: offsets -> regions -> filter graph
    regions_per_frame: float
    roi: bool
    route: str
    options: dict[str, str] = field(default_factory=dict)

    @property
    def bitrate_kbps(self) -> float:
        return self.payload_bytes * 8.0 / self.seconds / 1000.0


def _check_options(codec: str, options: dict[str, str]) -> None:
    aq = options.get("aq-mode")
    params = options.get(f"{codec}-params", "")
    if (aq is not None and str(aq).strip() == "0") or any(
        p.strip() in ("aq-mode=0",) for p in params.replace(",", ":").split(":")
    ):
        raise AvsalError(f"{codec}: aq-mode=0 disables ROI in the encoder; use aq-mode >= 1")


def _attach_rois(frame: Any, regions: Sequence[Region], width: int, height: int, time_base: Fraction) -> Any:
    """``frame`` with ``regions`` as ROI side data, through a fresh ``buffer -> addroi x K -> buffersink``."""
    import av

    graph = av.filter.Graph()
    last = graph.add_buffer(width=width, height=height, format="yuv420p", time_base=time_base)
    for r in regions:
        node = graph.add(
            "addroi",
            f"x={r.left}:y={r.top}:w={r.right - r.left}:h={r.bottom - r.top}"
            f":qoffset={r.qoffset.numerator}/{r.qoffset.denominator}",
        )
        last.link_to(node)
        last = node
    sink = graph.add("buffersink")
    last.link_to(sink)
    graph.configure()
    graph.push(frame)
    return graph.pull()


#: PyAV major versions and libavutil major versions whose layouts the ctypes route was checked on
#: (PyAV's ``Frame`` object: the ``AVFrame *`` after the object header and vtable; libavutil's
#: ``AVFrame`` width/height/format offsets, ``AVFrameSideData`` and ``AVRegionOfInterest``).
CTYPES_PYAV_MAJORS = (18,)
CTYPES_AVUTIL_MAJORS = (60,)
_AVFRAME_WIDTH = 104  # offsetof(AVFrame, width) in libavutil 60: data[8], linesize[8], extended_data
_ROI_SIDE_DATA = 18  # AV_FRAME_DATA_REGIONS_OF_INTEREST


class _SideDataSD(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("data", ctypes.c_void_p), ("size", ctypes.c_size_t)]


class SideDataWriter:
    """The fast route: ROI side data attached with libavutil's ``av_frame_new_side_data`` via ctypes.

    It reaches into PyAV's frame object for its ``AVFrame *``, so it is guarded: PyAV and libavutil
    majors must be in :data:`CTYPES_PYAV_MAJORS` / :data:`CTYPES_AVUTIL_MAJORS`, the pointer is
    located and checked on probe frames of two odd sizes (width, height and pixel format read
    through it must match), and a probe attachment must read back through PyAV's own side-data API
    byte for byte. :func:`side_data_writer` returns None (and :data:`ctypes_unavailable` the
    reason) when any check fails; the filter-graph route is then the only one.
    """

    def __init__(self) -> None:
        import av
        from av.sidedata.sidedata import Type

        major = int(av.__version__.split(".")[0])
        avutil = av.library_versions["libavutil"][0]
        if major not in CTYPES_PYAV_MAJORS or avutil not in CTYPES_AVUTIL_MAJORS:
            raise RuntimeError(f"PyAV {av.__version__} / libavutil {avutil} not checked for the ctypes route")
        if int(Type.REGIONS_OF_INTEREST.value) != _ROI_SIDE_DATA:
            raise RuntimeError("AV_FRAME_DATA_REGIONS_OF_INTEREST has another value")
        lib = self._libavutil(Path(av.__file__).parent)
        fn = lib.av_frame_new_side_data
        fn.restype = ctypes.POINTER(_SideDataSD)
        fn.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
        self._new = fn
        self._offset = self._find_offset(av)
        probe = av.VideoFrame(94, 46, "yuv420p")
        payload = b"".join(struct.pack("<I4i2i", 28, 0, 16, 16, 48, -7, 51) for _ in range(2))  # two regions
        self.attach(probe, payload)
        if regions_of_interest(probe) != [payload]:
            raise RuntimeError("side data attached through ctypes does not read back through PyAV")

    @staticmethod
    def _libavutil(package: Path) -> ctypes.CDLL:
        candidates = sorted((package.parent / "av.libs").glob("libavutil*.so*"))
        if not candidates:
            maps = Path("/proc/self/maps")
            if maps.exists():
                paths = {line.split()[-1] for line in maps.read_text().splitlines() if "libavutil" in line}
                candidates = sorted(Path(p) for p in paths)
        if not candidates:
            raise RuntimeError("libavutil of PyAV not found")
        return ctypes.CDLL(str(candidates[0]))

    @staticmethod
    def _find_offset(av: Any) -> int:
        probes = [av.VideoFrame(1234, 778, "yuv420p"), av.VideoFrame(366, 202, "yuv420p")]
        size = type(probes[0]).__basicsize__
        for off in range(16, size - 7, 8):
            ok = True
            for f in probes:
                ptr = ctypes.c_uint64.from_address(id(f) + off).value
                if ptr < 0x10000 or ptr % 8:
                    ok = False
                    break
                w, h, _, fmt = (ctypes.c_int * 4).from_address(ptr + _AVFRAME_WIDTH)
                if (w, h, fmt) != (f.width, f.height, 0):  # AV_PIX_FMT_YUV420P = 0
                    ok = False
                    break
            if ok:
                return off
        raise RuntimeError("AVFrame pointer not found in PyAV's frame object")

    def attach(self, frame: Any, payload: bytes) -> Any:
        """Add ``payload`` (packed ``AVRegionOfInterest`` array) to ``frame`` as ROI side data."""
        if not payload:
            return frame
        ptr = ctypes.c_uint64.from_address(id(frame) + self._offset).value
        w, h = (ctypes.c_int * 2).from_address(ptr + _AVFRAME_WIDTH)
        if (w, h) != (frame.width, frame.height):
            raise RuntimeError("PyAV frame layout changed under the ctypes route")
        sd = self._new(ptr, _ROI_SIDE_DATA, len(payload))
        if not sd:
            raise MemoryError("av_frame_new_side_data failed")
        ctypes.memmove(sd.contents.data, payload, len(payload))
        return frame


ctypes_unavailable: str | None = None
_writer: list[SideDataWriter | None] = []


def regions_of_interest(frame: Any) -> list[bytes]:
    """The ROI side data a frame carries, as raw ``AVRegionOfInterest`` arrays.

    PyAV up to 18.1.0 iterates ``frame.side_data`` as a sequence of side data; 18.1.1 made it a
    mapping from type to side data. Both are read here.
    """
    container = frame.side_data
    items = container.values() if hasattr(container, "values") else container
    return [bytes(sd) for sd in items if int(sd.type.value) == _ROI_SIDE_DATA]


def side_data_writer() -> SideDataWriter | None:
    """The guarded ctypes route, or None when this PyAV / FFmpeg build fails its checks."""
    global ctypes_unavailable
    if not _writer:
        try:
            _writer.append(SideDataWriter())
        except (RuntimeError, OSError, AttributeError, ValueError) as exc:
            ctypes_unavailable = str(exc)
            _writer.append(None)
    return _writer[0]


ROUTES = ("graph", "ctypes")


def encode(
    clip: Clip,
    crf: float,
    codec: str = "x264",
    offsets: Iterable[np.ndarray] | None = None,
    *,
    preset: str = "medium",
    step: float = 1.0,
    threads: int = 0,
    options: dict[str, str] | None = None,
    route: str = "graph",
) -> EncodeResult:
    """Encode ``clip`` at ``crf`` (float) with ``codec``; with ``offsets`` (one float32 [rows, cols]
    QP map per frame, 16x16 grid, negative = more bits) each frame carries its ROI side data.

    ``step``: offsets are quantised to multiples of ``step`` QP before they become rectangles.
    ``threads``: encoder threads (0 = the encoder's choice). ``route``: ``graph`` (default, public
    API: addroi filter graphs) or ``ctypes`` (:class:`SideDataWriter`; AvsalError if this build
    fails its guard). Both give the encoder the same per-block offsets, so the same bitstream.
    Returns the mp4 bytes and timings.
    """
    import av

    if route not in ROUTES:
        raise AvsalError(f"unknown ROI route {route!r}: choose one of {', '.join(ROUTES)}")
    writer = side_data_writer() if route == "ctypes" and offsets is not None else None
    if route == "ctypes" and offsets is not None and writer is None:
        raise BackendUnavailableError(f"the ctypes ROI route is not available here: {ctypes_unavailable}")

    if codec not in ENCODERS:
        raise AvsalError(f"unknown codec {codec!r}: choose one of {', '.join(ENCODERS)}")
    if not 0.0 <= crf <= 51.0:
        raise AvsalError(f"crf={crf}: must be in [0, 51]")
    opts = {"crf": f"{crf:.4f}", "preset": preset, **(options or {})}
    x265_params = [p for p in opts.get("x265-params", "").split(":") if p]
    if preset == "ultrafast":  # the ultrafast presets turn adaptive quantisation (and so ROI) off
        if codec == "x264":
            opts.setdefault("aq-mode", "1")
        elif not any(p.startswith("aq-mode=") for p in x265_params):
            x265_params.append("aq-mode=1")
    if codec == "x265":
        opts["x265-params"] = ":".join(["log-level=error", *x265_params])
    _check_options(codec, opts)
    h, w = clip.size
    grid = block_grid((h, w), codec_block(codec))
    rate = Fraction(clip.fps).limit_denominator(1001)
    time_base = 1 / rate
    it: Iterator[np.ndarray] | None = iter(offsets) if offsets is not None else None
    buf = io.BytesIO()
    payload = 0
    roi_s = 0.0
    n_regions = 0
    t0 = time.perf_counter()
    with av.open(buf, "w", format="mp4") as container:
        stream = container.add_stream(ENCODERS[codec], rate=rate)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = opts
        stream.codec_context.thread_count = threads
        for i, planes in enumerate(clip.frames):
            frame = av.VideoFrame.from_ndarray(planes, format="yuv420p")
            frame.pts = i
            frame.time_base = time_base
            if it is not None:
                t1 = time.perf_counter()
                try:
                    o = next(it)
                except StopIteration:
                    raise AvsalError(f"QP offsets for {i} frames, the clip has {clip.n_frames}") from None
                if o.shape != grid:
                    raise AvsalError(f"QP offsets of shape {o.shape} for a {h}x{w} {codec} grid {grid}")
                if writer is not None:
                    side_data = block_side_data(o, (h, w), codec_block(codec), step)
                    n_regions += len(side_data) // 28
                    writer.attach(frame, side_data)
                else:
                    regions = rois_from_offsets(o, (h, w), codec_block(codec), step)
                    n_regions += len(regions)
                    if regions:
                        frame = _attach_rois(frame, regions, w, h, time_base)
                roi_s += time.perf_counter() - t1
            for packet in stream.encode(frame):
                payload += packet.size
                container.mux(packet)
        for packet in stream.encode():
            payload += packet.size
            container.mux(packet)
    t_enc = time.perf_counter() - t0
    return EncodeResult(
        data=buf.getvalue(),
        codec=codec,
        crf=float(crf),
        n_frames=clip.n_frames,
        seconds=clip.seconds,
        payload_bytes=payload,
        encode_seconds=t_enc,
        roi_seconds=roi_s,
        regions_per_frame=n_regions / clip.n_frames if it is not None else 0.0,
        roi=it is not None,
        route=route if it is not None else "none",
        options=opts,
    )


def block_side_data(
    offsets: np.ndarray, source_size: tuple[int, int], block: int = 16, step: float = 1.0
) -> bytes:
    """The ctypes route's side data for one frame, vectorised: one ``AVRegionOfInterest`` per block
    whose quantised offset is not 0 (no merging: the region count does not cost here), with the
    qoffset fractions of :func:`~avsal_deploy.roi.exporters.rois_from_offsets` (same floats in the encoder)."""
    q = quantize_offsets(offsets, step)
    h, w = int(source_size[0]), int(source_size[1])
    r, c = np.nonzero(q)
    if not len(r):
        return b""
    levels, inverse = np.unique(q[r, c], return_inverse=True)
    fracs = [qoffset_fraction(float(v), QP_RANGE_8BIT) for v in levels]
    num = np.array([f.numerator for f in fracs], np.int32)[inverse]
    den = np.array([f.denominator for f in fracs], np.int32)[inverse]
    rec = np.empty((len(r), 7), np.int32)
    rec[:, 0] = 28
    rec[:, 1] = r * block
    rec[:, 2] = np.minimum((r + 1) * block, h)
    rec[:, 3] = c * block
    rec[:, 4] = np.minimum((c + 1) * block, w)
    rec[:, 5] = num
    rec[:, 6] = den
    return rec.astype("<i4").tobytes()


def decode_planes(data: bytes) -> Iterator[np.ndarray]:
    """The yuv420p frames ``[H * 3 / 2, W]`` of encoded mp4 bytes, in presentation order."""
    import av

    with av.open(io.BytesIO(data)) as container:
        for frame in container.decode(video=0):
            yield frame.to_ndarray(format="yuv420p")


def match_bitrate(
    encode_at: Any,
    target_kbps: float,
    tol: float = 0.01,
    accept: float = 0.02,
    start_crf: float = 23.0,
    max_evals: int = 14,
) -> EncodeResult:
    """The encode ``encode_at(crf) -> EncodeResult`` whose bitrate is within ``tol`` of
    ``target_kbps`` (searching CRF in [0, 51]): secant steps on log-rate (rate halves about every
    6 CRF) inside a bracket, bisection when a step leaves it. The closest encode is returned if it
    is within ``accept``; otherwise AvsalError says which bitrate could not be reached."""
    if not target_kbps > 0:
        raise AvsalError(f"target bitrate {target_kbps} kbps: must be > 0")
    cache: dict[float, EncodeResult] = {}

    def ev(crf: float) -> EncodeResult:
        crf = round(min(51.0, max(0.0, crf)), 4)
        if crf not in cache:
            cache[crf] = encode_at(crf)
        return cache[crf]

    def err(r: EncodeResult) -> float:
        return float(np.log(r.bitrate_kbps / target_kbps))

    lo: tuple[float, float] | None = None  # (crf, err > 0): rate above target
    hi: tuple[float, float] | None = None  # (crf, err < 0): rate below target
    crf = start_crf
    for _ in range(max_evals):
        r = ev(crf)
        e = err(r)
        if abs(r.bitrate_kbps / target_kbps - 1.0) <= tol:
            return r
        if e > 0:
            lo = (crf, e) if lo is None or crf > lo[0] else lo
        else:
            hi = (crf, e) if hi is None or crf < hi[0] else hi
        if lo is not None and hi is not None:
            nxt = lo[0] + (hi[0] - lo[0]) * lo[1] / (lo[1] - hi[1])  # secant on log-rate
            if not (min(lo[0], hi[0]) < nxt < max(lo[0], hi[0])) or abs(hi[0] - lo[0]) < 1e-3:
                nxt = 0.5 * (lo[0] + hi[0])
        else:
            nxt = crf + 6.0 * e / np.log(2.0)  # rate halves about every 6 CRF
            if (e > 0 and crf >= 51.0) or (e < 0 and crf <= 0.0):
                break
        crf = float(min(51.0, max(0.0, nxt)))
        if round(crf, 4) in cache and lo is not None and hi is not None:
            crf = 0.5 * (lo[0] + hi[0])
    best = min(cache.values(), key=lambda r: abs(err(r)))
    if abs(best.bitrate_kbps / target_kbps - 1.0) <= accept:
        return best
    raise AvsalError(
        f"cannot reach {target_kbps:.1f} kbps within {accept:.0%}: closest {best.bitrate_kbps:.1f} kbps "
        f"at CRF {best.crf:.2f} ({len(cache)} encodes)"
    )
