"""The typed config: profiles, derived shapes, files, overrides and fingerprints."""

from __future__ import annotations

import pytest

from avsal_deploy.config import (
    LEGACY_DEFAULTS,
    MVIT_STAGE_CHANNELS,
    PROFILES,
    VARIANTS,
    Config,
    ScaleShape,
    load_config,
)
from avsal_deploy.errors import ConfigError


@pytest.mark.parametrize("profile", PROFILES)
def test_profiles_load_and_derive_consistent_shapes(profile: str) -> None:
    c = load_config(profile)
    assert c.profile == profile
    for variant in VARIANTS:
        t = c.clip_len(variant)
        assert c.frames_shape(variant) == (3, t, c.video.height, c.video.width)
        scales = c.video_scales(variant)
        assert len(scales) == 4 and all(isinstance(s, ScaleShape) for s in scales)
        # resolution never increases going down the encoder; channels follow the encoder's widths
        for hi, lo in zip(scales, scales[1:], strict=False):
            assert lo.height <= hi.height and lo.width <= hi.width and lo.frames <= hi.frames
        mvit = c.video_backbone(variant) == "mvit_v2_s"
        assert tuple(s.channels for s in scales) == (MVIT_STAGE_CHANNELS if mvit else c.s3d_channels())
        assert tuple(s.channels for s in c.fusion_scales(variant)) == c.fusion.channels


def test_paper_profile_matches_the_papers() -> None:
    c = load_config("paper")
    assert (c.video.height, c.video.width) == (224, 384)
    assert c.clip_len("avrsp") == 32 and c.clip_len("hybrid") == 32 and c.clip_len("diffsal") == 16
    assert c.s3d_channels() == (192, 480, 832, 1024)
    assert [s.as_tuple() for s in c.video_scales("avrsp")] == [
        (192, 16, 56, 96),
        (480, 16, 28, 48),
        (832, 8, 14, 24),
        (1024, 4, 7, 12),
    ]
    # ViNet: int(22050 / 10 * 32) = 70,560 samples around a 32-frame clip
    assert c.soundnet_samples() == 70560
    assert c.audio_input_shape("avrsp") == (1, 70560, 1)
    # DiffSal: 9 VGGish examples of 96 x 64 log-mel per 16-frame clip (the official code resizes
    # them to 112 x 192, the paper's FLOP input: audio.vggish_slice_height/width)
    assert c.audio_input_shape("diffsal") == (9, 1, 96, 64)
    assert c.diffusion.timesteps == 1000 and c.diffusion.cosine_s == 0.008


def test_small_profile_rounds_odd_grids_up() -> None:
    c = load_config("small")
    assert (c.video.height, c.video.width, c.clip_len()) == (112, 192, 16)
    assert [(s.height, s.width) for s in c.video_scales()] == [(28, 48), (14, 24), (7, 12), (4, 6)]


def test_overrides_in_three_spellings_agree() -> None:
    a = load_config("tiny", {"video.height": 128, "unet.heads": 4})
    b = load_config("tiny", video__height=128, unet__heads=4)
    c = load_config("tiny", video={"height": 128}, unet={"heads": 4})
    assert a == b == c
    assert a.video.height == 128 and a.video.width == load_config("tiny").video.width


def test_config_files_toml_and_json(tmp_path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text('profile = "small"\n[window]\nstride = 2\n[fusion]\nchannels = [16, 32, 48, 64]\n')
    c = load_config(toml)
    assert c.profile == "small" and c.window.stride == 2 and c.fusion.channels == (16, 32, 48, 64)
    js = tmp_path / "c.json"
    js.write_text(load_config("tiny").to_json())
    # a round trip through the JSON form is lossless
    assert load_config(js) == load_config("tiny")


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("nope",), "no such config file"),
        (("tiny", {"video.heigth": 64}), r"video\.heigth"),
        (("tiny", {"colour": 1}), "unknown config field 'colour'"),
        (("tiny", {"video.height": 70}), r"video\.height=70"),
        (("tiny", {"video.clip_len": 12}), r"video\.clip_len=12"),
        (("tiny", {"window.stride": 0}), r"window\.stride=0"),
    ],
)
def test_bad_configs_name_the_problem(args, match) -> None:
    with pytest.raises(ConfigError, match=match):
        load_config(*args)


def test_bad_config_file_names_the_file(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("profile = [unclosed\n")
    with pytest.raises(ConfigError, match="bad.toml"):
        load_config(bad)


def test_fingerprint_tracks_architecture_only() -> None:
    tiny = load_config("tiny")
    assert (
        tiny.architecture_fingerprint()
        == tiny.replace({"diffusion.sampling_steps": 7}).architecture_fingerprint()
    )
    assert tiny.architecture_fingerprint() == tiny.replace({"window.stride": 3}).architecture_fingerprint()
    assert tiny.architecture_fingerprint() != tiny.replace({"unet.heads": 4}).architecture_fingerprint()
    assert tiny.architecture_fingerprint() != load_config("small").architecture_fingerprint()


def test_legacy_defaults_keep_old_configs_and_fingerprints() -> None:
    """A stored config that lacks a field added later means the old behaviour (LEGACY_DEFAULTS)
    and reproduces the fingerprint it was saved with; new profiles get the new default."""
    tiny = load_config("tiny")
    assert tiny.fusion.temporal_reduction == "conv"
    assert all(load_config(p).fusion.temporal_reduction == "conv" for p in ("paper", "small"))
    old = tiny.to_dict()
    del old["fusion"]["temporal_reduction"]
    restored = Config.from_dict(old)
    assert restored.fusion.temporal_reduction == "mean"
    mean = tiny.replace({"fusion.temporal_reduction": "mean"})
    assert restored == mean
    assert tiny.architecture_fingerprint() != mean.architecture_fingerprint()
    # Every field at its legacy value gives the fingerprint from before those fields existed: the
    # first shipped checkpoint's (tests/test_binding.py rebuilds such a checkpoint and loads it).
    assert tiny.replace(dict(LEGACY_DEFAULTS)).architecture_fingerprint() == "4e7758a3b08eaa8c"
    assert Config.from_dict(tiny.to_dict()) == tiny  # a stored field is never overridden
    with pytest.raises(ConfigError, match="temporal_reduction"):
        load_config("tiny", {"fusion.temporal_reduction": "max"})


def test_config_is_frozen() -> None:
    c = Config()
    with pytest.raises(AttributeError):
        c.profile = "x"  # type: ignore[misc]


def test_cli_overrides_parse_json_values() -> None:
    from avsal_deploy.config import parse_overrides

    got = parse_overrides(["video.height=128", "window.mode=centre", "fusion.channels=[8,16,24,32]"])
    assert got == {"video.height": 128, "window.mode": "centre", "fusion.channels": [8, 16, 24, 32]}
    assert load_config("tiny", got).fusion.channels == (8, 16, 24, 32)
    with pytest.raises(ConfigError, match="expected section.field=value"):
        parse_overrides(["video.height"])
