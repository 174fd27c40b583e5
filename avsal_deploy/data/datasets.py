"""Readers for the field's saliency data-set layouts: the STAViS audio-visual layout and DHF1K.

**STAViS layout** (Tsiami et al., CVPR 2020; used unchanged by ViNet/AViNet, CASP-Net, DiffSal and
AVRSP for DIEM, AVAD, ETMD, SumMe, Coutrot1 and Coutrot2; our synthetic benchmark writes it too)::

    <root>/video_frames/<set>/<video>/img_00001.jpg ...          frames, 1-based
    <root>/video_audio/<set>/<video>/<video>.wav                  the soundtrack
    <root>/annotations/<set>/<video>/maps/eyeMap_00001.jpg ...    continuous density maps
    <root>/annotations/<set>/<video>/fixMap_00001.mat ...         binary fixations, variable ``eyeMap``
    <root>/fold_lists/<set>_list_<split>_<fold>_fps.txt           lines ``name nframes fps``

The public release names its sets ``DIEM``, ``AVAD``, ``ETMD_av``, ``SumMe``, ``Coutrot_db1`` and
``Coutrot_db2``; the short names (``ETMD``, ``Coutrot1`` ...) and any capitalisation are accepted.
ViNet ships a single DIEM split as ``DIEM_list_<split>_fps.txt`` (no fold), which is read when the
fold-numbered list is absent. A set with no ``video_audio/<set>`` folder at all is treated as
visual-only (silence and one warning); a set that has the folder but lacks one video's wav is an
error naming the file.

**DHF1K** (Wang et al., CVPR 2018; visual-only, 30 fps)::

    <root>/annotation/0001/maps/0001.png ...        continuous density maps
    <root>/annotation/0001/fixation/0001.png ...    binary fixations
    <root>/annotation/0001/images/0001.png ...      frames extracted by the user (ViNet/TASED layout)
    <root>/video/001.AVI                            or the released raw videos, decoded with PyAV

Frames are read from ``images/`` when present, else from the raw video. Annotations of the 300
test videos (701-1000) are withheld by the authors, so the field trains on 1-600 and evaluates on
the validation videos 601-700: ``split="train"`` selects 1-600, ``"val"``/``"test"`` select
601-700. The re-organised ViNet layout (``<root>/train/<vid>/...``, ``<root>/val/<vid>/...``) is
read as well: a folder named after the split (``test`` falls back to ``val``) takes precedence.

Indices are 0-based everywhere in this API (frame ``i`` is file number ``i + 1``). Frames and maps
are returned at their stored size: resizing to the model's input is the preprocessing step's job.
Maps are returned as stored (8-bit value / 255), not re-normalised; some real maps are all zero on
frames nobody fixated (e.g. the first DIEM frames), and that is passed through unchanged.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.io
import scipy.io.matlab
from PIL import Image
from scipy.io import wavfile

from avsal_deploy.errors import DatasetError

DHF1K = "DHF1K"
DHF1K_FPS = 30.0  # every DHF1K video is 30 fps
DHF1K_TRAIN_LAST = 600  # videos 1-600 train, 601-700 validation (the field's test set)
DHF1K_VAL_LAST = 700
SILENCE_RATE = 22050  # sample rate of the silence returned for sets without audio
_SHOW_MISSING = 5  # missing paths spelled out in an error message before "(+N more)"

# Short names used by papers -> folder names of the public STAViS release.
_STAVIS_ALIASES: dict[str, str] = {
    "coutrot1": "Coutrot_db1",
    "coutrot2": "Coutrot_db2",
    "etmd": "ETMD_av",
}

_FRAME_RE = re.compile(r"^img_(\d{5})\.jpg$")
_MAP_RE = re.compile(r"^eyeMap_(\d{5})\.jpg$")
_FIX_RE = re.compile(r"^fixMap_(\d{5})\.mat$")
_DHF1K_RE = re.compile(r"^(\d{4})\.png$")
_VIDEO_SUFFIXES = (".AVI", ".avi", ".mp4", ".MP4", ".mkv", ".mov")


# --------------------------------------------------------------------------- file readers
def _read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from exc


def _read_gray(path: Path) -> np.ndarray:
    """A grey-level map as float32 in [0, 1] (8-bit / 255, 16-bit / 65535)."""
    try:
        with Image.open(path) as img:
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float32) / 65535.0
            else:
                arr = np.asarray(img.convert("L"), dtype=np.float32) / 255.0
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read image ({exc})") from exc
    return np.clip(arr, 0.0, 1.0)


def _read_fixmap_mat(path: Path) -> np.ndarray:
    try:
        mat = scipy.io.loadmat(str(path), variable_names=["eyeMap"])
    except (OSError, ValueError, NotImplementedError, scipy.io.matlab.MatReadError) as exc:
        raise DatasetError(f"{path}: cannot read MAT file ({exc})") from exc
    if "eyeMap" not in mat:
        raise DatasetError(f"{path}: no variable 'eyeMap' (STAViS fixation maps store it)")
    return np.asarray(mat["eyeMap"]) > 0


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """A wav file as float32 mono in [-1, 1] and its sample rate (channels are averaged).

    Integer PCM is scaled by its full range (scipy returns 24-bit audio left-justified in int32, so
    dividing by 2**31 is right for it too); float wavs are passed through.
    """
    try:
        rate, data = wavfile.read(str(path))
    except (OSError, ValueError) as exc:
        raise DatasetError(f"{path}: cannot read wav ({exc})") from exc
    if data.dtype == np.uint8:
        audio = (data.astype(np.float32) - 128.0) / 128.0
    elif np.issubdtype(data.dtype, np.integer):
        audio = data.astype(np.float32) / float(-np.iinfo(data.dtype).min)
    else:
        audio = data.astype(np.float32)
    if audio.ndim == 2:
        audio = audio.mean(axis=1)
    return np.ascontiguousarray(audio, dtype=np.float32), int(rate)


def _numbered_files(folder: Path, pattern: re.Pattern[str]) -> set[int]:
    """The numbers of the files in ``folder`` whose names match ``pattern`` (group 1)."""
    with os.scandir(folder) as it:
        return {int(m.group(1)) for e in it if (m := pattern.match(e.name))}


# --------------------------------------------------------------------------- records
class VideoRecord(ABC):
    """One annotated video: metadata plus lazy loaders (nothing is decoded until asked)."""

    def __init__(self, name: str, n_frames: int, fps: float, condition: str | None = None) -> None:
        self.name = name
        self.n_frames = n_frames
        self.fps = fps
        self.condition = condition

    def __repr__(self) -> str:
        cond = f", condition={self.condition!r}" if self.condition else ""
        return f"{type(self).__name__}({self.name!r}, n_frames={self.n_frames}, fps={self.fps:g}{cond})"

    def _index(self, i: int) -> int:
        i = int(i)
        if not 0 <= i < self.n_frames:
            raise IndexError(f"{self.name}: frame index {i} out of range [0, {self.n_frames})")
        return i

    def frames(self, indices: Sequence[int] | None = None) -> np.ndarray:
        """Frames ``indices`` (0-based; all when None) as uint8 [k, H, W, 3] RGB."""
        idx = list(range(self.n_frames)) if indices is None else [self._index(i) for i in indices]
        if not idx:
            raise IndexError(f"{self.name}: no frame indices given")
        return self._load_frames(idx)

    def saliency_map(self, i: int) -> np.ndarray:
        """The continuous ground-truth map of frame ``i`` as float32 [H, W] in [0, 1]."""
        return _read_gray(self._map_path(self._index(i)))

    def fixations(self, i: int) -> np.ndarray:
        """The binary fixation map of frame ``i`` as bool [H, W]."""
        return self._load_fixations(self._index(i))

    def annotations(self) -> tuple[np.ndarray, np.ndarray]:
        """Every frame's ground-truth map float32 ``[N, H, W]`` and fixations bool ``[N, H, W]`` at
        their stored size (what the metrics score against); DatasetError when their sizes differ."""
        maps = np.stack([self.saliency_map(i) for i in range(self.n_frames)])
        fixations = np.stack([self.fixations(i) for i in range(self.n_frames)])
        if maps.shape != fixations.shape:
            raise DatasetError(
                f"{self.name}: saliency maps {maps.shape[1:]} and fixation maps "
                f"{fixations.shape[1:]} differ in size"
            )
        return maps, fixations

    def duration(self) -> float:
        """Length in seconds (n_frames / fps)."""
        return self.n_frames / self.fps

    def _silence(self) -> tuple[np.ndarray, int]:
        return np.zeros(int(round(self.duration() * SILENCE_RATE)), np.float32), SILENCE_RATE

    @abstractmethod
    def audio(self) -> tuple[np.ndarray, int]:
        """The soundtrack as float32 mono in [-1, 1] and its sample rate."""

    @abstractmethod
    def _load_frames(self, idx: list[int]) -> np.ndarray: ...

    @abstractmethod
    def _map_path(self, i: int) -> Path: ...

    @abstractmethod
    def _load_fixations(self, i: int) -> np.ndarray: ...


def _stack(frames: list[np.ndarray], where: Path) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise DatasetError(f"{where}: frames of different sizes {sorted(shapes)}")
    return np.stack(frames)


class StavisVideo(VideoRecord):
    """A video of a STAViS-layout set (see the module docstring for the paths)."""

    def __init__(
        self,
        name: str,
        n_frames: int,
        fps: float,
        frames_dir: Path,
        annotation_dir: Path,
        wav: Path | None,
        condition: str | None = None,
    ) -> None:
        super().__init__(name, n_frames, fps, condition)
        self.frames_dir = frames_dir
        self.annotation_dir = annotation_dir
        self.wav = wav

    def _load_frames(self, idx: list[int]) -> np.ndarray:
        return _stack([_read_rgb(self.frames_dir / f"img_{i + 1:05d}.jpg") for i in idx], self.frames_dir)

    def _map_path(self, i: int) -> Path:
        return self.annotation_dir / "maps" / f"eyeMap_{i + 1:05d}.jpg"

    def _load_fixations(self, i: int) -> np.ndarray:
        return _read_fixmap_mat(self.annotation_dir / f"fixMap_{i + 1:05d}.mat")

    def audio(self) -> tuple[np.ndarray, int]:
        """The video's wav; silence at 22050 Hz when the whole set has no ``video_audio`` folder."""
        return self._silence() if self.wav is None else read_wav(self.wav)


class DHF1KVideo(VideoRecord):
    """A DHF1K video: frames from ``images/`` or the raw video, PNG maps and fixations, no audio."""

    def __init__(
        self,
        name: str,
        n_frames: int,
        fps: float,
        annotation_dir: Path,
        video_file: Path | None,
    ) -> None:
        super().__init__(name, n_frames, fps)
        self.annotation_dir = annotation_dir
        self.video_file = video_file

    def _load_frames(self, idx: list[int]) -> np.ndarray:
        if self.video_file is None:
            images = self.annotation_dir / "images"
            return _stack([_read_rgb(images / f"{i + 1:04d}.png") for i in idx], images)
        return _decode_frames(self.video_file, idx)

    def _map_path(self, i: int) -> Path:
        return self.annotation_dir / "maps" / f"{i + 1:04d}.png"

    def _load_fixations(self, i: int) -> np.ndarray:
        return _read_gray(self.annotation_dir / "fixation" / f"{i + 1:04d}.png") > 0

    def audio(self) -> tuple[np.ndarray, int]:
        """DHF1K is visual-only: silence of the video's length at 22050 Hz."""
        return self._silence()


def _decode_frames(path: Path, idx: list[int]) -> np.ndarray:
    """Frames ``idx`` of a video file, decoded sequentially with PyAV up to the largest index.

    Decoding restarts from the first frame on every call, so ask for all the frames a sweep needs
    at once (or extract them to ``images/`` for training).
    """
    import av

    wanted = set(idx)
    last = max(idx)
    got: dict[int, np.ndarray] = {}
    try:
        with av.open(str(path)) as container:
            for n, frame in enumerate(container.decode(video=0)):
                if n in wanted:
                    got[n] = frame.to_ndarray(format="rgb24")
                if n >= last:
                    break
    except (av.error.FFmpegError, OSError) as exc:
        raise DatasetError(f"{path}: cannot decode video ({exc})") from exc
    if len(got) < len(wanted):
        raise DatasetError(
            f"{path}: has fewer frames than frame index {last} (decoded {len(got)} of those asked)"
        )
    return np.stack([got[i] for i in idx])


# --------------------------------------------------------------------------- data set
@dataclass
class SaliencyDataset:
    """The videos of one split of one data set."""

    root: Path
    name: str
    split: str
    fold: int
    videos: list[VideoRecord] = field(default_factory=list)
    list_file: Path | None = None

    def __len__(self) -> int:
        return len(self.videos)

    def __iter__(self) -> Iterator[VideoRecord]:
        return iter(self.videos)

    def __getitem__(self, key: int | str) -> VideoRecord:
        """A video by position or by name."""
        if isinstance(key, str):
            for v in self.videos:
                if v.name == key:
                    return v
            raise KeyError(f"{self.name}/{self.split}: no video named {key!r}")
        return self.videos[key]

    def total_frames(self) -> int:
        return sum(v.n_frames for v in self.videos)


class _Missing:
    """Collects missing paths over a whole data set so one error names them all."""

    def __init__(self) -> None:
        self.paths: list[Path] = []

    def add(self, paths: Sequence[Path]) -> None:
        self.paths.extend(paths)

    def raise_if_any(self, what: str) -> None:
        if not self.paths:
            return
        shown = ", ".join(str(p) for p in self.paths[:_SHOW_MISSING])
        more = len(self.paths) - _SHOW_MISSING
        tail = f" (+{more} more)" if more > 0 else ""
        raise DatasetError(f"{what}: {len(self.paths)} missing file(s): {shown}{tail}")


def open_dataset(
    root: str | os.PathLike[str],
    name: str,
    split: str = "test",
    fold: int = 1,
    *,
    strict: bool = True,
) -> SaliencyDataset:
    """Open one split of a data set and check that every file it needs is there.

    ``name`` is a STAViS-layout set (any folder under ``video_frames/``: ``DIEM``, ``AVAD``,
    ``synthetic`` ...) or ``"DHF1K"``. Missing folders or per-frame files raise
    :class:`~avsal_deploy.errors.DatasetError` naming them (the first few and a count). A split list
    whose ``nframes`` exceeds the files present is such an error too, unless ``strict=False``:
    then the video is cut to the frames present in all three sequences, with a warning. More files
    than listed only warns (the listed count is used). ``fold`` selects the STAViS cross-validation
    list (1-3); DHF1K has one official split and ignores it.
    """
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise DatasetError(f"{root_path}: data set root is not a directory")
    if name.upper() == DHF1K:
        return _open_dhf1k(root_path, split, fold)
    return _open_stavis(root_path, name, split, fold, strict)


# --------------------------------------------------------------------------- STAViS layout
def _resolve_set(root: Path, name: str) -> str:
    frames_root = root / "video_frames"
    if not frames_root.is_dir():
        raise DatasetError(f"{frames_root}: missing (not a STAViS-layout root: expected video_frames/<set>/)")
    if (frames_root / name).is_dir():
        return name
    sets = sorted(p.name for p in frames_root.iterdir() if p.is_dir())
    wanted = {name.lower(), _STAVIS_ALIASES.get(name.lower(), name).lower()}
    for s in sets:
        if s.lower() in wanted:
            return s
    found = ", ".join(sets) if sets else "none"
    raise DatasetError(f"{frames_root / name}: no such set (sets found: {found})")


def _list_file(root: Path, set_name: str, split: str, fold: int) -> Path:
    lists = root / "fold_lists"
    candidates = [
        lists / f"{set_name}_list_{split}_{fold}_fps.txt",
        lists / f"{set_name}_list_{split}_fps.txt",
    ]
    for c in candidates:
        if c.is_file():
            return c
    available = sorted(p.name for p in lists.glob(f"{set_name}_list_*")) if lists.is_dir() else []
    hint = f" (lists for {set_name}: {', '.join(available)})" if available else ""
    raise DatasetError(f"{candidates[0]}: split list missing{hint}")


def _read_list(path: Path) -> list[tuple[str, int, float]]:
    entries: list[tuple[str, int, float]] = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        words = line.split()
        if not words:
            continue
        try:
            if len(words) != 3:
                raise ValueError("expected 3 fields")
            name, nframes, fps = words[0], int(words[1]), float(words[2])
            if nframes < 1 or fps <= 0:
                raise ValueError("nframes and fps must be positive")
        except ValueError as exc:
            raise DatasetError(
                f"{path}:{lineno}: expected 'name nframes fps', got {line.strip()!r} ({exc})"
            ) from exc
        entries.append((name, nframes, fps))
    if not entries:
        raise DatasetError(f"{path}: split list has no videos")
    return entries


def _conditions(root: Path, set_name: str) -> dict[str, str]:
    """``{video: condition}`` from ``annotations/<set>/conditions.json`` or ``<root>/conditions.json``."""
    for path in (root / "annotations" / set_name / "conditions.json", root / "conditions.json"):
        if path.is_file():
            try:
                data = json.loads(path.read_text())
            except ValueError as exc:
                raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
            if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
                raise DatasetError(f"{path}: expected an object mapping video names to condition strings")
            return data
    return {}


def _sequence_check(
    folder: Path, pattern: re.Pattern[str], template: str, n: int
) -> tuple[list[Path], int, int]:
    """(missing paths among 1..n, length of the run 1..m present, count of files numbered > n)."""
    if not folder.is_dir():
        return [folder], 0, 0
    present = _numbered_files(folder, pattern)
    missing = [folder / template.format(k) for k in range(1, n + 1) if k not in present]
    run = 0
    while run + 1 in present:
        run += 1
    return missing, run, sum(1 for k in present if k > n)


def _open_stavis(root: Path, name: str, split: str, fold: int, strict: bool) -> SaliencyDataset:
    set_name = _resolve_set(root, name)
    list_path = _list_file(root, set_name, split, fold)
    entries = _read_list(list_path)
    conditions = _conditions(root, set_name)
    audio_root = root / "video_audio" / set_name
    has_audio = audio_root.is_dir()
    if not has_audio:
        warnings.warn(
            f"{audio_root}: missing, set {set_name!r} is read as visual-only (silent audio)",
            stacklevel=3,
        )

    missing = _Missing()
    cut: list[str] = []
    extra: list[str] = []
    videos: list[VideoRecord] = []
    for vid, nframes, fps in entries:
        frames_dir = root / "video_frames" / set_name / vid
        ann_dir = root / "annotations" / set_name / vid
        wav = audio_root / vid / f"{vid}.wav" if has_audio else None
        if wav is not None and not wav.is_file():
            missing.add([wav])
        checks = [
            _sequence_check(frames_dir, _FRAME_RE, "img_{:05d}.jpg", nframes),
            _sequence_check(ann_dir / "maps", _MAP_RE, "eyeMap_{:05d}.jpg", nframes),
            _sequence_check(ann_dir, _FIX_RE, "fixMap_{:05d}.mat", nframes),
        ]
        n_use = nframes
        gaps = [p for m, _, _ in checks for p in m]
        if gaps:
            run = min(r for _, r, _ in checks)
            if strict or run == 0:
                missing.add(gaps)
            else:
                n_use = run
                cut.append(f"{vid} ({nframes} listed, {run} present)")
        if any(x for _, _, x in checks):
            extra.append(vid)
        videos.append(StavisVideo(vid, n_use, fps, frames_dir, ann_dir, wav, conditions.get(vid)))
    missing.raise_if_any(f"{set_name} {split} fold {fold} ({list_path})")
    if cut:
        warnings.warn(f"{list_path}: videos cut to the frames present: {', '.join(cut)}", stacklevel=3)
    if extra:
        warnings.warn(
            f"{list_path}: more files than listed for {', '.join(extra)}; the listed nframes are used",
            stacklevel=3,
        )
    return SaliencyDataset(root, set_name, split, fold, videos, list_path)


# --------------------------------------------------------------------------- DHF1K
def _dhf1k_video_file(root: Path, number: int) -> Path | None:
    for stem in (f"{number:03d}", f"{number:04d}", str(number)):
        for suffix in _VIDEO_SUFFIXES:
            p = root / "video" / f"{stem}{suffix}"
            if p.is_file():
                return p
    return None


def _video_fps(path: Path) -> float:
    import av

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise DatasetError(f"{path}: not a video (no video stream)")
            rate = container.streams.video[0].average_rate
    except (av.error.FFmpegError, OSError) as exc:
        raise DatasetError(f"{path}: cannot open video ({exc})") from exc
    return float(rate) if rate else DHF1K_FPS


def _dhf1k_dirs(root: Path, split: str) -> tuple[list[Path], str]:
    """The annotation folders of a split and a description of where they came from."""
    for folder in (split, "val") if split == "test" else (split,):
        if (root / folder).is_dir():
            dirs = sorted(p for p in (root / folder).iterdir() if p.is_dir() and p.name.isdigit())
            return dirs, str(root / folder)
    ann = root / "annotation"
    if not ann.is_dir():
        raise DatasetError(f"{ann}: missing (not a DHF1K root: expected annotation/<vid>/maps/)")
    if split == "train":
        lo, hi = 1, DHF1K_TRAIN_LAST
    elif split in ("val", "test"):
        lo, hi = DHF1K_TRAIN_LAST + 1, DHF1K_VAL_LAST
    else:
        raise DatasetError(f"DHF1K split {split!r}: choose train, val or test (test = the validation videos)")
    dirs = sorted(p for p in ann.iterdir() if p.is_dir() and p.name.isdigit() and lo <= int(p.name) <= hi)
    return dirs, f"{ann} videos {lo}-{hi}"


def _open_dhf1k(root: Path, split: str, fold: int) -> SaliencyDataset:
    dirs, where = _dhf1k_dirs(root, split)
    if not dirs:
        raise DatasetError(f"{where}: no annotated DHF1K videos for split {split!r}")
    missing = _Missing()
    videos: list[VideoRecord] = []
    for d in dirs:
        maps = d / "maps"
        if not maps.is_dir():
            missing.add([maps])
            continue
        numbers = _numbered_files(maps, _DHF1K_RE)
        n = max(numbers, default=0)
        if n == 0:
            missing.add([maps / "0001.png"])
            continue
        missing.add([maps / f"{k:04d}.png" for k in range(1, n + 1) if k not in numbers])
        missing.add(_sequence_check(d / "fixation", _DHF1K_RE, "{:04d}.png", n)[0])
        video_file = None
        fps = DHF1K_FPS
        if (d / "images").is_dir():
            missing.add(_sequence_check(d / "images", _DHF1K_RE, "{:04d}.png", n)[0])
        else:
            video_file = _dhf1k_video_file(root, int(d.name))
            if video_file is None:
                missing.add([d / "images", root / "video" / f"{int(d.name):03d}.AVI"])
                continue
            fps = _video_fps(video_file)
        videos.append(DHF1KVideo(d.name, n, fps, d, video_file))
    missing.raise_if_any(f"DHF1K {split} ({where})")
    return SaliencyDataset(root, DHF1K, split, fold, videos, None)
