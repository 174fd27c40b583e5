"""Storage faults during `avsal score` and `avsal predict`: a full disk, a read-only output
directory, a damaged resume record or output.

The disk is a small tmpfs mounted in a private mount namespace (``unshare -rm``: no root needed,
nothing visible outside the test); a filler file leaves room for a set number of videos, and
removing it brings the space back. Each run must end with one clear line, record the videos that
failed as failed, leave no partial or corrupt output, lose nothing written before, and resume once
the space is back to the outputs of an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from media_utils import write_video

from avsal_deploy.cli import main
from avsal_deploy.scoring.scorer import PARTIAL, RECORD

ROOT = Path(__file__).resolve().parents[1]
SIZE = (64, 96)


def _namespace_shell() -> list[str]:
    """``unshare -rm sh -c`` where mounting a tmpfs works, else skip (the feature the test needs)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("util-linux's unshare is not installed")
    probe = subprocess.run(
        [unshare, "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d && umount $d"],
        capture_output=True,
        text=True,
    )
    if probe.returncode != 0:
        pytest.skip(f"no tmpfs in a private mount namespace here: {probe.stderr.strip()}")
    return [unshare, "-rm", "sh", "-c"]


def _avsal(*args: str) -> str:
    """A shell command line running ``avsal`` from this checkout."""
    quoted = " ".join(f"'{a}'" for a in ["-m", "avsal_deploy.cli", "-q", *args])
    return f"PYTHONPATH='{ROOT}' '{sys.executable}' {quoted}"


def _dir_bytes(path: Path) -> int:
    """Bytes a directory takes on a tmpfs (whole 4 KiB pages per file)."""
    return sum(-(-p.stat().st_size // 4096) * 4096 for p in path.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("storage-videos")
    for i in range(5):
        write_video(d / f"v{i}.mp4", n=24, fps=25, size=SIZE, audio="aac" if i % 2 else None)
    return d


@pytest.fixture(scope="module")
def reference(videos: Path, tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("storage-reference") / "out"
    assert main(["score", str(videos), "--export", str(tiny_export), "--out", str(out)]) == 0
    return out


def test_full_disk_during_score_fails_cleanly_and_resumes(
    videos: Path, tiny_export: Path, reference: Path, tmp_path: Path
) -> None:
    shell = _namespace_shell()
    per_video = max(_dir_bytes(reference / f"v{i}") for i in range(5))
    room = 2 * per_video + 6 * 4096  # two videos, the lock file, the summary, slack
    out, snap = tmp_path / "disk", tmp_path / "snap"
    out.mkdir()
    snap.mkdir()
    score = _avsal("score", str(videos), "--export", str(tiny_export), "--out", str(out))
    script = f"""
set -u
mount -t tmpfs -o size={8 << 20} tmpfs '{out}'
head -c {(8 << 20) - room} /dev/zero > '{out}/filler'
{score} > '{snap}/out1' 2> '{snap}/err1'; echo $? > '{snap}/rc1'
cp -a '{out}' '{snap}/first'
rm '{out}/filler'
{score} > '{snap}/out2' 2> '{snap}/err2'; echo $? > '{snap}/rc2'
cp -a '{out}' '{snap}/second'
"""
    ran = subprocess.run([*shell, script], capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    first, second = snap / "first", snap / "second"
    assert (snap / "rc1").read_text().strip() == "1", (snap / "err1").read_text()[-2000:]
    summary = json.loads((first / "summary.json").read_text())
    failed = [v for v in summary["videos"] if v["status"] == "failed"]
    assert summary["done"] >= 1 and failed, summary
    for video in failed:
        assert "No space left on device" in video["error"] and "\n" not in video["error"]
        assert Path(video["path"]).name in video["error"]
        assert not (first / video["rel"]).exists()  # a failed video leaves no directory
    for video in (v for v in summary["videos"] if v["status"] == "done"):
        maps = (first / video["rel"] / "maps.npz").read_bytes()
        assert maps == (reference / video["rel"] / "maps.npz").read_bytes()  # no corrupt output
    assert not any((first / PARTIAL).iterdir()) if (first / PARTIAL).exists() else True
    printed = (snap / "out1").read_text()
    assert all(v["error"] in printed for v in failed)  # listed at the end, one line each

    assert (snap / "rc2").read_text().strip() == "0", (snap / "err2").read_text()[-2000:]
    resumed = json.loads((second / "summary.json").read_text())
    status = {v["rel"]: v["status"] for v in resumed["videos"]}
    assert {r for r, s in status.items() if s == "done"} == {v["rel"] for v in failed}
    for i in range(5):
        assert (second / f"v{i}" / "maps.npz").read_bytes() == (reference / f"v{i}" / "maps.npz").read_bytes()


def test_full_disk_and_read_only_output_during_predict(
    videos: Path, tiny_export: Path, tmp_path: Path
) -> None:
    """A full disk fails the second prediction with one line and leaves the first one's outputs as
    they were; a read-only output directory is refused before any work, by predict and score."""
    shell = _namespace_shell()
    out, snap = tmp_path / "disk", tmp_path / "snap"
    out.mkdir()
    snap.mkdir()
    predict = _avsal("predict", str(videos / "v1.mp4"), "--export", str(tiny_export), "--out", str(out))
    big = _avsal(
        "predict",
        str(videos / "v3.mp4"),
        "--export",
        str(tiny_export),
        "--out",
        str(out),
        "--png",
        "--overlay",
    )
    score = _avsal("score", str(videos), "--export", str(tiny_export), "--out", str(out / "scored"))
    script = f"""
set -u
mount -t tmpfs -o size={4 << 20} tmpfs '{out}'
{predict} 2> '{snap}/err0'; echo $? > '{snap}/rc0'
cp -a '{out}' '{snap}/before'
avail=$(df -B1 --output=avail '{out}' | tail -1)
head -c $((avail - 40960)) /dev/zero > '{out}/filler'
{big} 2> '{snap}/err1'; echo $? > '{snap}/rc1'
rm '{out}/filler'
cp -a '{out}' '{snap}/after'
mount -o remount,ro '{out}'
{predict} 2> '{snap}/err2'; echo $? > '{snap}/rc2'
{score} 2> '{snap}/err3'; echo $? > '{snap}/rc3'
"""
    ran = subprocess.run([*shell, script], capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr
    assert (snap / "rc0").read_text().strip() == "0", (snap / "err0").read_text()
    err = (snap / "err1").read_text().strip()
    assert (snap / "rc1").read_text().strip() == "2", err
    assert len(err.splitlines()) == 1 and "No space left on device" in err and str(out) in err
    before, after = snap / "before", snap / "after"
    assert sorted(os.listdir(after)) == sorted(os.listdir(before))  # no temporary directory left
    for name in os.listdir(before):
        if (before / name).is_file():
            assert (after / name).read_bytes() == (before / name).read_bytes()  # nothing lost
    for code, err_file in (("rc2", "err2"), ("rc3", "err3")):
        err = (snap / err_file).read_text().strip()
        assert (snap / code).read_text().strip() == "2", err
        assert len(err.splitlines()) == 1 and "Read-only file system" in err and str(out) in err


def test_damaged_record_or_output_is_redone(
    videos: Path, tiny_export: Path, reference: Path, tmp_path: Path
) -> None:
    """A truncated resume record, a record that is not JSON and a truncated output are each found
    on resume: those videos are redone (to the reference's bytes), the others skipped."""
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    record = out / "v0" / RECORD
    record.write_bytes(record.read_bytes()[: record.stat().st_size // 2])
    (out / "v1" / RECORD).write_text("not json {")
    maps = out / "v2" / "maps.npz"
    maps.write_bytes(maps.read_bytes()[:-100])
    assert main(["score", str(videos), "--export", str(tiny_export), "--out", str(out)]) == 0
    status = {v["rel"]: v["status"] for v in json.loads((out / "summary.json").read_text())["videos"]}
    assert status == {"v0": "done", "v1": "done", "v2": "done", "v3": "skipped", "v4": "skipped"}
    for i in range(5):
        assert (out / f"v{i}" / "maps.npz").read_bytes() == (reference / f"v{i}" / "maps.npz").read_bytes()
