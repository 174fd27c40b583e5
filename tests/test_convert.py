"""``avsal convert`` on the command line: official checkpoint files of the S3D families (ViNet,
AViNet, ViNet-S, TASED-Net), detected, and refused when they are not what ``--from`` names.

The files hold zeros in the official layouts (``official_layout`` for ViNet / AViNet, the golden
files' stored layouts for ViNet-S and TASED-Net), saved as the official scripts save them
(``torch.save(model.state_dict())``; TASED-Net's ``run_train.py`` saves the DataParallel model:
``module.`` prefixes). The converted maps are compared with the official ones in the families'
own test files; here: what the command prints, and that every bad file is one line on stderr
naming the file, exit status 2 and nothing written at ``--out``.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import pytest
import torch

from avsal_deploy.cli import main
from avsal_deploy.models.official import detect_family
from avsal_deploy.models.official import vinet as official_vinet
from tests.golden.parity import load_golden, save_official
from tests.golden.weights import read_layout

FAMILIES = ("vinet", "avinet", "vinet-s", "tased")
#: A file of another model for each family: ``--from FAMILY`` on it must be refused.
OTHER = {"vinet": "vinet-s", "avinet": "vinet", "vinet-s": "tased", "tased": "vinet"}
#: A key of each family's official layout (dropped for "missing") and a wrong shape for another.
MISSING = {
    "vinet": "decoder.convtsp3.0.weight",
    "avinet": "bilinear.weight",
    "vinet-s": "decoder.convtsp1.0.weight",
    "tased": "convtsp2.1.running_var",
}
MISSHAPEN = {
    "vinet": ("decoder.convtsp4.8.bias", (2,)),
    "avinet": ("audionet.conv1.weight", (16, 1, 32, 1)),
    "vinet-s": ("decoder.convtsp2.0.weight", (480, 832, 3, 3, 3)),
    "tased": ("base1.0.conv_s.weight", (64, 3, 1, 5, 5)),
}


@cache
def _layout(family: str) -> tuple[tuple[str, tuple[int, ...], str], ...]:
    if family in ("vinet", "avinet"):
        return tuple(official_vinet.official_layout(family))
    return tuple(read_layout(str(load_golden(family.replace("-", "_"))["layout"])))


def official_file(family: str, path: Path, drop: str | None = None, reshape=None) -> Path:  # type: ignore[no-untyped-def]
    """Zeros in ``family``'s official layout, saved as its official script saves them."""
    state = {}
    for key, shape, dtype in _layout(family):
        if key == drop:
            continue
        if reshape is not None and key == reshape[0]:
            shape = reshape[1]
        state[key] = torch.zeros(shape, dtype=getattr(torch, dtype))
    return save_official(state, path, data_parallel=family == "tased")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("official-files")
    return {f: official_file(f, d / f"{f}.pth") for f in FAMILIES}


def _refused(argv: list[str], out: Path, named: Path, capsys: pytest.CaptureFixture[str]) -> str:
    """``avsal convert`` exits 2 with one line naming ``named`` on stderr and writes nothing."""
    capsys.readouterr()
    assert main(["convert", *argv, "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert err.startswith("avsal: error: ") and "\n" not in err, err
    assert str(named) in err, err
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*")), list(out.parent.iterdir())
    return err


@pytest.mark.parametrize("family", FAMILIES)
def test_every_layout_is_detected(family: str, files: dict[str, Path]) -> None:
    from avsal_deploy.models.official.checkpoint import read_official_state

    assert detect_family(read_official_state(files[family])) == family


def test_convert_without_from_detects_the_family_and_names_the_licence(
    files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from avsal_deploy.models.build import checkpoint_config

    out = tmp_path / "avsal" / "vinet-s.safetensors"
    assert main(["convert", str(files["vinet-s"]), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "vinet-s" in printed and "CC BY-NC-SA 4.0" in printed
    config, variant, meta = checkpoint_config(out)
    assert variant == "vinet-s" and config.fusion.upsampling == "trilinear"
    assert meta["converted_from"]["file"] == files["vinet-s"].name
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no temporary file left


@pytest.mark.parametrize("family", FAMILIES)
def test_a_file_of_another_model_is_refused(
    family: str, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = files[OTHER[family]]
    err = _refused([str(other), "--from", family], tmp_path / "out.safetensors", other, capsys)
    assert f"a {OTHER[family]} checkpoint, not {family}" in err
    assert f"--from {OTHER[family]}" in err


@pytest.mark.parametrize("family", FAMILIES)
def test_a_truncated_file_is_refused(
    family: str, files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cut = tmp_path / f"{family}.pth"
    with files[family].open("rb") as f:
        cut.write_bytes(f.read(files[family].stat().st_size // 2))
    err = _refused([str(cut), "--from", family], tmp_path / "out.safetensors", cut, capsys)
    assert "truncated or corrupt" in err


@pytest.mark.parametrize("family", FAMILIES)
def test_a_file_missing_a_key_is_refused(
    family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = official_file(family, tmp_path / f"{family}.pth", drop=MISSING[family])
    err = _refused([str(source), "--from", family], tmp_path / "out.safetensors", source, capsys)
    assert "1 missing key(s)" in err and MISSING[family] in err


@pytest.mark.parametrize("family", FAMILIES)
def test_a_file_with_a_wrong_shape_is_refused(
    family: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key, shape = MISSHAPEN[family]
    source = official_file(family, tmp_path / f"{family}.pth", reshape=(key, shape))
    err = _refused([str(source), "--from", family], tmp_path / "out.safetensors", source, capsys)
    assert "misshapen" in err and f"{key} {list(shape)}" in err
