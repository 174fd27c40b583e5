"""What a scoring run scores: video files, directories of them, list files, or data-set records.

:func:`collect_inputs` turns the command line's INPUTS into :class:`VideoItem` values, each with
the sub-directory of the output directory its results go to (``rel``: the path relative to the
directory it was found in, without its extension). :func:`dataset_items` gives the videos of a
data-set split instead (frames and soundtrack read through :mod:`avsal_deploy.data.datasets`,
exactly as ``avsal eval`` reads them).

:func:`input_stat` and :func:`input_hash` fingerprint an item (size + mtime, and a content hash)
so a re-run can tell whether its input changed.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from avsal_deploy.errors import AvsalError

#: File name endings taken as videos when a directory is searched (case-insensitive).
VIDEO_EXTENSIONS: tuple[str, ...] = (
    ".mp4",
    ".m4v",
    ".mov",
    ".mkv",
    ".webm",
    ".avi",
    ".mpg",
    ".mpeg",
    ".ts",
    ".mts",
    ".flv",
    ".wmv",
    ".3gp",
)
#: File name endings read as lists of paths (one a line; blank lines and ``#`` comments ignored).
LIST_EXTENSIONS: tuple[str, ...] = (".txt", ".lst", ".list")
_HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class RecordRef:
    """A video of a data set, by reference (picklable: reopened where it is scored)."""

    root: str
    dataset: str
    split: str
    fold: int
    name: str


@dataclass(frozen=True)
class VideoItem:
    """One video to score: its input and the output sub-directory ``rel`` (POSIX, no extension)."""

    path: str
    rel: str
    record: RecordRef | None = None


def _is_video(path: Path) -> bool:
    return path.suffix.lower() in VIDEO_EXTENSIONS


def _rel(path: Path, base: Path) -> str:
    try:
        relative = path.relative_to(base)
    except ValueError:
        relative = Path(path.name)
    return relative.with_suffix("").as_posix()


def _walk(directory: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        found += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return [p for p in found if _is_video(p)]


def _expand(entry: Path, base: Path, origin: str, seen_lists: set[Path]) -> list[VideoItem]:
    if entry.is_dir():
        videos = _walk(entry)
        if not videos:
            raise AvsalError(f"{origin}: no video files ({', '.join(VIDEO_EXTENSIONS)}) under {entry}")
        return [VideoItem(str(v), _rel(v, entry)) for v in videos]
    if entry.suffix.lower() in LIST_EXTENSIONS and entry.is_file():
        return _read_list(entry, seen_lists)
    # A file that does not exist, or is not a video, is still an item: it fails on its own.
    return [VideoItem(str(entry), _rel(entry, base))]


def _read_list(path: Path, seen_lists: set[Path]) -> list[VideoItem]:
    key = path.resolve()
    if key in seen_lists:
        raise AvsalError(f"{path}: list file includes itself")
    seen_lists = seen_lists | {key}
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise AvsalError(f"{path}: cannot read list file ({exc})") from exc
    items = []
    for number, line in enumerate(lines, start=1):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        entry = Path(text) if Path(text).is_absolute() else path.parent / text
        if entry.is_dir() and not _walk(entry):
            raise AvsalError(f"{path}:{number}: no video files under {entry}")
        items += _expand(entry, path.parent, f"{path}:{number}", seen_lists)
    return items


def collect_inputs(inputs: Sequence[str | os.PathLike[str]]) -> list[VideoItem]:
    """The videos named by ``inputs`` (files, directories searched recursively by extension, or
    ``.txt``/``.lst``/``.list`` files listing paths relative to themselves), in order, once each.

    A file named on the command line keeps its name (``clip.mp4`` -> ``clip``); a video found
    under a directory keeps its path below it (``DIR/a/b.mp4`` -> ``a/b``). Raises
    :class:`AvsalError` for an input that does not exist, a directory without videos, or two
    videos that would write to the same output sub-directory.
    """
    items: list[VideoItem] = []
    for raw in inputs:
        entry = Path(raw)
        if not entry.exists():
            raise AvsalError(f"{entry}: no such file or directory")
        items += _expand(entry, entry.parent, str(entry), set())
    return check_unique(items)


def check_unique(items: Iterable[VideoItem]) -> list[VideoItem]:
    """``items`` without repeats of the same input; an error when two inputs share an output."""
    by_rel: dict[str, VideoItem] = {}
    unique = []
    for item in items:
        other = by_rel.get(item.rel)
        if other is not None:
            if _same(other, item):
                continue
            raise AvsalError(
                f"{other.path} and {item.path} would both write to <out>/{item.rel}/: "
                "score them in separate runs or give their common parent directory"
            )
        by_rel[item.rel] = item
        unique.append(item)
    return unique


def _same(a: VideoItem, b: VideoItem) -> bool:
    if a.record is not None or b.record is not None:
        return a == b
    return os.path.realpath(a.path) == os.path.realpath(b.path)


def dataset_items(root: str | os.PathLike[str], dataset: str, split: str, fold: int = 1) -> list[VideoItem]:
    """The videos of one split of a data set (``rel`` is the video's name)."""
    from avsal_deploy.data.datasets import open_dataset

    opened = open_dataset(root, dataset, split, fold)
    return [
        VideoItem(f"{opened.name}/{r.name}", r.name, RecordRef(str(root), dataset, split, fold, r.name))
        for r in opened
    ]


# ----------------------------------------------------------------------------- fingerprints
def record_files(record: object) -> list[Path]:
    """The files a data-set record's frames and soundtrack are read from."""
    files: list[Path] = []
    frames_dir = getattr(record, "frames_dir", None)
    if frames_dir is not None:
        files += sorted(p for p in Path(frames_dir).iterdir() if p.is_file())
    wav = getattr(record, "wav", None)
    if wav is not None:
        files.append(Path(wav))
    video_file = getattr(record, "video_file", None)
    annotation_dir = getattr(record, "annotation_dir", None)
    if video_file is not None:
        files.append(Path(video_file))
    elif frames_dir is None and annotation_dir is not None:
        files += sorted(p for p in (Path(annotation_dir) / "images").iterdir() if p.is_file())
    return files


def _files(item: VideoItem) -> list[Path]:
    if item.record is None:
        return [Path(item.path)]
    from avsal_deploy.data.datasets import open_dataset

    ref = item.record
    return record_files(open_dataset(ref.root, ref.dataset, ref.split, ref.fold)[ref.name])


def input_stat(item: VideoItem) -> dict[str, int]:
    """``{"size", "mtime_ns"}`` of the input (summed size and latest mtime over a record's files).

    Raises ``OSError`` when the input is missing.
    """
    stats = [p.stat() for p in _files(item)]
    return {"size": sum(s.st_size for s in stats), "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}


def input_hash(item: VideoItem) -> str:
    """SHA-256 of the input's bytes (a record: of its files' names and bytes, in order)."""
    digest = hashlib.sha256()
    files = _files(item)
    for path in files:
        if len(files) > 1:
            digest.update(path.name.encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(_HASH_CHUNK):
                digest.update(chunk)
    return digest.hexdigest()
