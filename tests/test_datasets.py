"""Data-set readers: the STAViS layout (real-set conventions, validation errors) and DHF1K."""

from __future__ import annotations

import shutil
import warnings
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image
from scipy.io import wavfile

from avsal_deploy.data.datasets import DHF1KVideo, StavisVideo, open_dataset, read_wav
from avsal_deploy.data.synthetic import generate
from avsal_deploy.errors import DatasetError

N_FRAMES = 6


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("stavis"), 6, n_frames=N_FRAMES, seed=1)


@pytest.fixture
def root(pristine: Path, tmp_path: Path) -> Path:
    """A fresh copy each test may damage."""
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def _first(root: Path, split: str = "test") -> StavisVideo:
    return open_dataset(root, "synthetic", split).videos[0]  # type: ignore[return-value]


# --------------------------------------------------------------------------- STAViS layout
def test_reads_a_stavis_layout(root: Path) -> None:
    ds = open_dataset(root, "synthetic", "test", fold=1)
    assert ds.name == "synthetic" and ds.split == "test" and len(ds) == 3
    assert ds.list_file == root / "fold_lists" / "synthetic_list_test_1_fps.txt"
    v = ds.videos[0]
    assert ds[v.name] is v and ds[0] is v and list(ds) == ds.videos
    assert ds.total_frames() == 3 * N_FRAMES and v.duration() == pytest.approx(N_FRAMES / 25)
    assert v.frames().shape == (N_FRAMES, 64, 96, 3)
    assert v.frames([5, 0, 5]).shape == (3, 64, 96, 3)
    np.testing.assert_array_equal(v.frames([2])[0], v.frames()[2])
    with pytest.raises(IndexError):
        v.frames([N_FRAMES])
    with pytest.raises(IndexError):
        v.saliency_map(-1)
    with pytest.raises(KeyError):
        ds["nope"]


def test_real_set_names_aliases_and_single_split_lists(root: Path) -> None:
    """STAViS folder names (Coutrot_db1 ...) answer to the papers' short names; DIEM lists lack a fold."""
    for sub in ("video_frames", "video_audio", "annotations"):
        (root / sub / "synthetic").rename(root / sub / "Coutrot_db1")
    lists = root / "fold_lists"
    (lists / "synthetic_list_test_1_fps.txt").rename(lists / "Coutrot_db1_list_test_1_fps.txt")
    (lists / "synthetic_list_train_1_fps.txt").rename(lists / "Coutrot_db1_list_train_fps.txt")
    assert open_dataset(root, "coutrot1", "test").name == "Coutrot_db1"
    assert open_dataset(root, "COUTROT_DB1", "test").name == "Coutrot_db1"
    assert len(open_dataset(root, "Coutrot_db1", "train", fold=3)) == 3  # no fold in the name: fallback
    with pytest.raises(
        DatasetError, match=r"Coutrot_db1_list_test_2_fps\.txt: split list missing.*lists for"
    ):
        open_dataset(root, "Coutrot_db1", "test", fold=2)
    with pytest.raises(DatasetError, match=r"DIEM: no such set \(sets found: Coutrot_db1\)"):
        open_dataset(root, "DIEM")


def test_conditions_are_optional(root: Path) -> None:
    assert _first(root).condition in ("relevant", "music", "silent")
    (root / "conditions.json").unlink()
    assert _first(root).condition is None


def test_missing_frame_is_named(root: Path) -> None:
    v = _first(root)
    target = v.frames_dir / "img_00003.jpg"
    target.unlink()
    with pytest.raises(DatasetError, match="1 missing file") as err:
        open_dataset(root, "synthetic", "test")
    assert str(target) in str(err.value)


def test_missing_wav_fixmap_and_folder_are_named_with_a_count(root: Path) -> None:
    ds = open_dataset(root, "synthetic", "test")
    a, b, c = ds.videos
    assert a.wav is not None
    a.wav.unlink()
    (b.annotation_dir / f"fixMap_{N_FRAMES:05d}.mat").unlink()
    shutil.rmtree(c.annotation_dir / "maps")
    with pytest.raises(DatasetError) as err:
        open_dataset(root, "synthetic", "test")
    msg = str(err.value)
    assert "3 missing file(s)" in msg and "synthetic test fold 1" in msg
    for path in (a.wav, b.annotation_dir / f"fixMap_{N_FRAMES:05d}.mat", c.annotation_dir / "maps"):
        assert str(path) in msg


def test_many_missing_files_are_summarised(root: Path) -> None:
    v = _first(root)
    shutil.rmtree(v.frames_dir)
    v.frames_dir.mkdir()
    with pytest.raises(
        DatasetError, match=rf"{N_FRAMES} missing file\(s\): .*img_00001\.jpg.* \(\+1 more\)$"
    ):
        open_dataset(root, "synthetic", "test")


def test_list_longer_than_the_files(root: Path) -> None:
    lst = root / "fold_lists" / "synthetic_list_test_1_fps.txt"
    lines = lst.read_text().splitlines()
    name = lines[0].split()[0]
    lines[0] = f"{name} {N_FRAMES + 2} 25.0"
    lst.write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=rf"img_{N_FRAMES + 1:05d}\.jpg"):
        open_dataset(root, "synthetic", "test")
    with pytest.warns(UserWarning, match=rf"{name} \({N_FRAMES + 2} listed, {N_FRAMES} present\)"):
        ds = open_dataset(root, "synthetic", "test", strict=False)
    assert ds[name].n_frames == N_FRAMES


def test_list_shorter_than_the_files_warns(root: Path) -> None:
    lst = root / "fold_lists" / "synthetic_list_test_1_fps.txt"
    name = lst.read_text().split()[0]
    lst.write_text(lst.read_text().replace(f"{name} {N_FRAMES} ", f"{name} {N_FRAMES - 2} "))
    with pytest.warns(UserWarning, match="more files than listed"):
        ds = open_dataset(root, "synthetic", "test")
    assert ds[name].n_frames == N_FRAMES - 2


def test_malformed_or_empty_lists(root: Path) -> None:
    lst = root / "fold_lists" / "synthetic_list_test_1_fps.txt"
    lst.write_text(lst.read_text() + "\nbroken_line 12\n")
    with pytest.raises(DatasetError, match=r"synthetic_list_test_1_fps\.txt:5: expected 'name nframes fps'"):
        open_dataset(root, "synthetic", "test")
    lst.write_text("\n")
    with pytest.raises(DatasetError, match="no videos"):
        open_dataset(root, "synthetic", "test")


def test_not_a_data_root(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        open_dataset(tmp_path / "nowhere", "DIEM")
    with pytest.raises(DatasetError, match="not a STAViS-layout root"):
        open_dataset(tmp_path, "DIEM")


def test_visual_only_set_gives_silence_with_a_warning(root: Path) -> None:
    shutil.rmtree(root / "video_audio")
    with pytest.warns(UserWarning, match="visual-only"):
        v = _first(root)
    audio, rate = v.audio()
    assert rate == 22050 and audio.dtype == np.float32 and not audio.any()
    assert len(audio) == round(N_FRAMES / 25 * 22050)


def test_unreadable_files_raise_dataset_errors(root: Path) -> None:
    v = _first(root)
    (v.annotation_dir / "fixMap_00002.mat").write_bytes(b"not a mat file")
    (v.frames_dir / "img_00002.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=r"fixMap_00002\.mat: cannot read MAT file"):
        v.fixations(1)
    with pytest.raises(DatasetError, match=r"img_00002\.jpg: cannot read image"):
        v.frames([1])


def test_read_wav_normalises_to_mono_float(tmp_path: Path) -> None:
    stereo = np.stack([np.full(100, 16384, np.int16), np.zeros(100, np.int16)], axis=1)
    wavfile.write(tmp_path / "s16.wav", 16000, stereo)
    audio, rate = read_wav(tmp_path / "s16.wav")
    assert rate == 16000 and audio.shape == (100,) and audio.dtype == np.float32
    np.testing.assert_allclose(audio, 0.25)  # (0.5 + 0) / 2
    wavfile.write(tmp_path / "f32.wav", 8000, np.linspace(-1, 1, 50, dtype=np.float32))
    audio, _ = read_wav(tmp_path / "f32.wav")
    np.testing.assert_allclose(audio, np.linspace(-1, 1, 50), atol=1e-7)
    wavfile.write(tmp_path / "u8.wav", 8000, np.array([0, 128, 255], np.uint8))
    np.testing.assert_allclose(read_wav(tmp_path / "u8.wav")[0], [-1.0, 0.0, 127 / 128])
    (tmp_path / "bad.wav").write_bytes(b"RIFF....")
    with pytest.raises(DatasetError, match=r"bad\.wav: cannot read wav"):
        read_wav(tmp_path / "bad.wav")


# --------------------------------------------------------------------------- DHF1K
def _gray_png(path: Path, value: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(value.astype(np.uint8)).save(path)


def _dhf1k_annotations(vid_dir: Path, n: int, h: int = 36, w: int = 64) -> None:
    for k in range(1, n + 1):
        sal = np.zeros((h, w))
        sal[10:20, 5 * k : 5 * k + 10] = 200
        fix = np.zeros((h, w))
        fix[15, 5 * k + 5] = 255
        _gray_png(vid_dir / "maps" / f"{k:04d}.png", sal)
        _gray_png(vid_dir / "fixation" / f"{k:04d}.png", fix)


def _colour(k: int) -> np.ndarray:
    return np.array([40 * k, 255 - 40 * k, 128], np.uint8)


@pytest.fixture
def dhf1k(tmp_path: Path) -> Path:
    """Video 0001 (train) as extracted PNG frames; video 0601 (validation) as a raw AVI."""
    root = tmp_path / "DHF1K"
    _dhf1k_annotations(root / "annotation" / "0001", 5)
    for k in range(1, 6):
        frame = np.broadcast_to(_colour(k), (36, 64, 3))
        _gray_png(root / "annotation" / "0001" / "images" / f"{k:04d}.png", np.ascontiguousarray(frame))
    _dhf1k_annotations(root / "annotation" / "0601", 4)
    (root / "video").mkdir()
    with av.open(str(root / "video" / "601.AVI"), "w") as container:
        stream = container.add_stream("mjpeg", rate=Fraction(30))
        stream.width, stream.height, stream.pix_fmt = 64, 36, "yuvj420p"
        for k in range(1, 5):
            frame = np.ascontiguousarray(np.broadcast_to(_colour(k), (36, 64, 3)))
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return root


def test_dhf1k_frames_folders(dhf1k: Path) -> None:
    ds = open_dataset(dhf1k, "DHF1K", "train")
    assert [v.name for v in ds] == ["0001"] and ds.name == "DHF1K"
    v = ds.videos[0]
    assert isinstance(v, DHF1KVideo) and v.video_file is None
    assert v.n_frames == 5 and v.fps == 30.0 and v.condition is None
    frames = v.frames([0, 4])
    assert frames.shape == (2, 36, 64, 3) and frames.dtype == np.uint8
    np.testing.assert_array_equal(frames[1, 0, 0], _colour(5))
    sal = v.saliency_map(2)
    assert sal.dtype == np.float32 and sal.max() == pytest.approx(200 / 255)
    fix = v.fixations(2)
    assert fix.dtype == np.bool_ and np.argwhere(fix).tolist() == [[15, 20]]
    audio, rate = v.audio()
    assert rate == 22050 and not audio.any() and len(audio) == round(5 / 30 * 22050)


def test_dhf1k_raw_videos_and_the_validation_split(dhf1k: Path) -> None:
    for split in ("test", "val", "dhf1k-insensitive"):
        name = "dhf1k" if split == "dhf1k-insensitive" else "DHF1K"
        ds = open_dataset(dhf1k, name, "test" if split == "dhf1k-insensitive" else split)
        assert [v.name for v in ds] == ["0601"]
    v = ds.videos[0]
    assert isinstance(v, DHF1KVideo) and v.video_file == dhf1k / "video" / "601.AVI"
    assert v.n_frames == 4 and v.fps == pytest.approx(30.0)
    frames = v.frames([3, 1])
    assert frames.shape == (2, 36, 64, 3)
    np.testing.assert_allclose(frames[0, 18, 32], _colour(4), atol=12)  # lossy MJPEG
    np.testing.assert_allclose(frames[1, 18, 32], _colour(2), atol=12)


def test_dhf1k_vinet_layout(dhf1k: Path) -> None:
    """ViNet re-organises DHF1K as <root>/train/<vid>/ and <root>/val/<vid>/."""
    shutil.move(dhf1k / "annotation" / "0001", dhf1k / "val" / "0001")
    ds = open_dataset(dhf1k, "DHF1K", "test")
    assert [v.name for v in ds] == ["0001"] and ds.videos[0].frames([0]).shape == (1, 36, 64, 3)


def test_dhf1k_missing_files_are_named(dhf1k: Path) -> None:
    missing_fix = dhf1k / "annotation" / "0001" / "fixation" / "0003.png"
    missing_fix.unlink()
    with pytest.raises(DatasetError, match="1 missing file") as err:
        open_dataset(dhf1k, "DHF1K", "train")
    assert str(missing_fix) in str(err.value)
    (dhf1k / "video" / "601.AVI").unlink()
    with pytest.raises(DatasetError, match=r"0601/images.*601\.AVI"):
        open_dataset(dhf1k, "DHF1K", "test")
    with pytest.raises(DatasetError, match="choose train, val or test"):
        open_dataset(dhf1k, "DHF1K", "holdout")
    shutil.rmtree(dhf1k / "annotation")
    with pytest.raises(DatasetError, match="not a DHF1K root"):
        open_dataset(dhf1k, "DHF1K", "train")


def test_dhf1k_video_shorter_than_its_maps(dhf1k: Path) -> None:
    _dhf1k_annotations(dhf1k / "annotation" / "0601", 6)  # 6 maps, 4 video frames
    v = open_dataset(dhf1k, "DHF1K", "test").videos[0]
    assert v.n_frames == 6
    assert v.frames([3]).shape == (1, 36, 64, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DatasetError, match=r"601\.AVI: has fewer frames than frame index 5"):
            v.frames([5])
