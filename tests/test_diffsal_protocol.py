"""DiffSal as the official code trains and scores it: VGGish's own 0.96 s examples in the nine-slice
arrangement, the VGGish trunk frozen by the recipe, and the centre-frame target."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from avsal_deploy.config import load_config
from avsal_deploy.data.audio import excerpt, frame_span, log_mel, vggish_slices
from avsal_deploy.data.datasets import open_dataset
from avsal_deploy.data.synthetic import generate
from avsal_deploy.errors import ConfigError
from avsal_deploy.models.build import build_model
from avsal_deploy.models.weights import save_checkpoint
from avsal_deploy.training.checkpoints import load_trained_model
from avsal_deploy.training.evaluate import dataset_inputs, evaluate_predictor
from avsal_deploy.training.recipe import from_dict, load_recipe
from avsal_deploy.training.trainer import Trainer
from avsal_deploy.windows import plan

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ----------------------------------------------------------------------------- VGGish input
def test_paper_slices_are_vggish_examples_of_exactly_0_96_s_at_the_official_offsets() -> None:
    config = load_config("paper")
    a = config.audio
    assert config.audio_input_shape("diffsal") == (9, 1, 96, 64)
    rate, fps = 44100, 25.0
    rng = np.random.default_rng(0)
    track = (0.1 * rng.standard_normal(rate * 3)).astype(np.float32)
    frames = list(range(20, 36))  # a 16-frame window
    got = vggish_slices(track, rate, frames, fps, config)
    assert got.shape == (9, 1, 96, 64)

    # Independently: the window's own excerpt at 16 kHz, centred in a zero buffer holding exactly
    # 96 + 8 * 11 log-mel frames (25 ms window, 10 ms hop: 400 + 183 * 160 samples) ...
    start, stop = frame_span(frames, fps, 16000)
    x = excerpt(track, rate, start, stop, 16000)
    buffer = np.zeros(400 + (96 + 8 * 11 - 1) * 160, np.float32)
    first = buffer.shape[0] // 2 - x.shape[0] // 2
    buffer[first : first + x.shape[0]] = x
    for k in range(9):
        # ... slice k is the log-mel of 0.96 s of it (96 hops of 10 ms + one 25 ms window) starting
        # k * 0.11 s in: VGGish's own example, no resize
        lo = k * 11 * 160
        segment = buffer[lo : lo + 400 + 95 * 160]
        assert segment.shape[0] / 16000 == pytest.approx(0.96 + 0.025 - 0.01)
        np.testing.assert_allclose(got[k, 0], log_mel(segment, 16000, config), atol=1e-5)
    # the arrangement is symmetric about the window's centre: slice 4 is centred on it, and the
    # outer slices see mostly the silence around the window's 0.64 s of audio
    assert a.vggish_slices // 2 * 11 + 48 == pytest.approx(buffer.shape[0] / 2 / 160, abs=1)
    loud = (got[:, 0].max(axis=2) > np.log(a.log_offset) + 0.1).sum(axis=1)  # loud frames
    assert list(loud) == list(loud[::-1]) and loud[4] > loud[0]


def test_the_official_resize_is_a_setting_and_old_configs_keep_the_window_slicing() -> None:
    resized = load_config("paper", {"audio.vggish_slice_height": 112, "audio.vggish_slice_width": 192})
    track = np.random.default_rng(1).standard_normal(48000).astype(np.float32)
    out = vggish_slices(track, 16000, list(range(10, 26)), 25.0, resized)
    assert out.shape == (9, 1, 112, 192) == (1, *resized.audio_input_shape("diffsal"))[1:]
    assert load_config("tiny").audio.vggish_framing == "window"  # small/tiny: unchanged
    stored = load_config("paper").to_dict()
    del stored["audio"]["vggish_framing"]
    from avsal_deploy.config import Config

    assert Config.from_dict(stored).audio.vggish_framing == "window"


# ----------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth"), 4, profile="tiny", seed=5, n_frames=12)


def _diffsal_recipe(root: Path, **train: Any) -> Any:
    return from_dict(
        {
            "model": {"profile": "tiny", "variant": "diffsal", "overrides": {"window.mode": "centre"}},
            "data": {"root": str(root), "windows_per_video": 2, "val_split": "", "flip": False},
            "train": {
                "epochs": 1,
                "batch_size": 2,
                "lr": 1e-2,
                "weight_decay": 0.1,
                "scheduler": "constant",
                "max_steps": 1,
                **train,
            },
        }
    )


def test_frozen_vggish_gets_no_gradient_and_keeps_its_weights(data: Path, tmp_path: Path) -> None:
    config = load_config("tiny", {"window.mode": "centre"})
    torch.manual_seed(0)
    start = build_model(config, "diffsal")
    init = tmp_path / "init.safetensors"
    save_checkpoint(start, init, config, "diffsal")  # stands in for the public VGGish weights
    before = {k: v.clone() for k, v in start.state_dict().items()}

    with pytest.raises(ConfigError, match="freeze_audio"):
        Trainer(_diffsal_recipe(data, freeze_audio=True), tmp_path / "untrained").fit()

    recipe = _diffsal_recipe(data, freeze_audio=True, init_checkpoint=str(init))
    assert recipe.resolved_stages()[0].freeze == ("audio_encoder.trunk",)
    trainer = Trainer(recipe, tmp_path / "run")
    result = trainer.fit()
    assert result.steps == 1
    trunk = trainer.model.audio_encoder.trunk
    assert all(not p.requires_grad and p.grad is None for p in trunk.parameters())
    after = load_trained_model(result.last_checkpoint)[0].state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert not any(k.startswith("audio_encoder.trunk.") for k in changed)
    assert any(k.startswith("audio_encoder.layers.") for k in changed)  # the temporal transformer trains
    assert any(k.startswith("unet.") for k in changed)


def test_the_diffsal_recipe_freezes_vggish_and_targets_the_centre() -> None:
    recipe = load_recipe(REPO / "training" / "diffsal.toml")
    assert recipe.train.freeze_audio and recipe.resolved_stages()[0].freeze == ("audio_encoder.trunk",)
    config = recipe.model_config()
    assert config.window.mode == "centre" and config.video_backbone("diffsal") == "mvit_v2_s"
    p = plan(40, config, "diffsal")
    assert all(w.frames[len(w) // 2] == w.target for w in p.windows)
    assert p.windows[20].frames == tuple(range(12, 28))  # 8 frames before the target, 7 after


# ----------------------------------------------------------------------------- evaluation
@pytest.mark.parametrize("mode", ["centre", "causal"])
def test_a_centre_mode_evaluation_scores_the_window_centre(data: Path, mode: str) -> None:
    config = load_config("tiny", {"window.mode": mode})
    videos = dataset_inputs(open_dataset(data, "synthetic", "test"), config, "diffsal")
    position = config.clip_len("diffsal") // 2  # where the centre target sits in its window

    def predict_centre_frame(video: Any, windows: Any) -> np.ndarray:
        maps, _ = video.native_annotations()
        return np.stack([maps[w.frames[position]] for w in windows])  # ground truth of the centre

    result = evaluate_predictor(predict_centre_frame, videos, metrics=("cc",))
    cc = np.concatenate([result.per_frame[v.name]["cc"] for v in videos])
    for v in videos:
        assert result.frames[v.name] == list(range(v.n_frames))  # every frame scored once
    if mode == "centre":
        np.testing.assert_allclose(cc, 1.0, atol=1e-5)  # each frame was scored by its centred window
    else:
        assert cc.min() < 0.99  # causal windows target their last frame, not the centre
