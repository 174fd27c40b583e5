"""The window planner: every frame of any video gets exactly one window, by the papers' rules."""

from __future__ import annotations

import numpy as np
import pytest

from avsal_deploy.config import load_config
from avsal_deploy.errors import ConfigError
from avsal_deploy.windows import WindowPlan, plan, reflect_index, sample_windows, window_for

TINY = load_config("tiny")  # L = 8
PAPER = load_config("paper")  # L = 32 (hybrid/avrsp), 16 (diffsal)


def _lengths(L: int) -> list[int]:
    return [1, 2, 3, L - 1, L, L + 1, 2 * L - 2, 2 * L - 1, 100]


def _check_plan(p: WindowPlan, n: int, L: int, stride: int, mode: str) -> None:
    assert len(p) == n and p.assignment.shape == (n,)
    assert 0 <= p.assignment.min() and p.assignment.max() < len(p.windows)
    targets = p.targets
    assert list(targets) == sorted(set(range(0, n, stride)) | {n - 1})
    for w in p.windows:
        assert len(w) == L and all(0 <= i < n for i in w.frames)
        position = L - 1 if mode == "causal" else L // 2
        assert w.frames[position] == w.target
        if not w.padded:  # a real run of consecutive frames, forwards or backwards
            step = -1 if w.reversed else 1
            assert np.all(np.diff(w.frames) == step)
    # each frame takes the nearest computed frame (the earlier on ties)
    for f in range(n):
        chosen = p.windows[p.assignment[f]].target
        best = np.min(np.abs(targets - f))
        assert abs(chosen - f) == best and (chosen <= f or f - best not in targets)
        assert p[f] == p.windows[p.assignment[f]].frames
    if stride == 1:
        assert [w.target for w in p.windows] == list(range(n)) and list(p.assignment) == list(range(n))


@pytest.mark.parametrize("config", [TINY, PAPER], ids=["tiny", "paper"])
@pytest.mark.parametrize("variant", ["hybrid", "diffsal"])
@pytest.mark.parametrize("mode", ["causal", "centre"])
@pytest.mark.parametrize("stride", [1, 3])
def test_every_frame_gets_exactly_one_window(config, variant: str, mode: str, stride: int) -> None:  # noqa: ANN001
    L = config.clip_len(variant)
    for n in _lengths(L):
        _check_plan(plan(n, config, variant, stride=stride, mode=mode), n, L, stride, mode)


def test_causal_rule_matches_the_vinet_sliding_loop() -> None:
    """Replays ViNet's generate_result_audio_visual.py loop (clip of frames i-L+1..i predicts
    frame i; the same clip flipped predicts frame i-L+1 while i < 2L-2) and compares."""
    for config, L in ((TINY, 8), (PAPER, 32)):
        n = 2 * L + 5
        reference: dict[int, tuple[int, ...]] = {}
        for i in range(L - 1, n):
            clip = tuple(range(i - L + 1, i + 1))
            reference[i] = clip
            if i < 2 * L - 2:
                reference[i - L + 1] = clip[::-1]
        p = plan(n, config, "hybrid", stride=1, mode="causal")
        assert {f: p[f] for f in range(n)} == reference
        assert not any(w.padded for w in p.windows)
        assert [w.reversed for w in p.windows] == [t < L - 1 for t in range(n)]
    # "frames 32..1 predict frame 1" (1-based) at the paper profile
    assert plan(100, PAPER)[0] == tuple(range(31, -1, -1))


def test_short_videos_are_padded_by_reflection() -> None:
    p = plan(5, TINY, mode="causal")  # L = 8 > 5 frames: every window is padded
    assert p[0] == (1, 2, 3, 4, 3, 2, 1, 0)
    assert p[3] == (2, 1, 0, 1, 2, 3, 4, 3)
    assert p[4] == (3, 2, 1, 0, 1, 2, 3, 4)
    assert all(w.padded and w.reversed for w in p.windows)
    assert plan(1, TINY)[0] == (0,) * 8
    assert plan(2, TINY)[1] == (0, 1, 0, 1, 0, 1, 0, 1)  # forward clip 1,0,1,0,... reversed
    assert [reflect_index(j, 4) for j in range(-4, 9)] == [2, 3, 2, 1, 0, 1, 2, 3, 2, 1, 0, 1, 2]


def test_centre_mode_matches_diffsal_median_target() -> None:
    L = PAPER.clip_len("diffsal")  # 16
    n = 60
    p = plan(n, PAPER, "diffsal", stride=1, mode="centre")
    for t in range(L // 2, n - L // 2 + 1):
        frames = p[t]
        assert frames == tuple(range(t - 8, t + 8))
        # DiffSal: median of the 16 indices rounded half up
        assert int(np.floor(np.median(frames) + 0.5)) == t
    assert p[0] == (8, 7, 6, 5, 4, 3, 2, 1, 0, 1, 2, 3, 4, 5, 6, 7)  # the reference skips frames 0-7
    assert p[n - 1][-1] == n - 8 and p.window_of(n - 1).padded
    assert not any(w.reversed for w in p.windows)


def test_stride_assignment_example() -> None:
    p = plan(11, TINY, stride=3)
    assert list(p.targets) == [0, 3, 6, 9, 10]
    assert [int(p.targets[i]) for i in p.assignment] == [0, 0, 3, 3, 3, 6, 6, 6, 9, 9, 10]
    assert list(iter(p))[4] == p[4] == p.window_of(4).frames


def test_plan_is_deterministic_and_uses_config_defaults() -> None:
    config = TINY.replace({"window.stride": 2, "window.mode": "centre"})
    a, b = plan(23, config), plan(23, config)
    assert a.windows == b.windows and np.array_equal(a.assignment, b.assignment)
    assert a.stride == 2 and a.mode == "centre"
    assert a.windows == plan(23, TINY, stride=2, mode="centre").windows


def test_sample_windows_follow_the_plan() -> None:
    rng = np.random.default_rng(0)
    n = 40
    full = plan(n, TINY)
    drawn = sample_windows(n, TINY, rng, count=25)
    assert len(drawn) == 25 and len({w.target for w in drawn}) == 25  # no repeats while possible
    assert all(w == full.window_of(w.target) for w in drawn)
    assert not any(
        w.padded for w in sample_windows(n, TINY, rng, count=50, mode="centre", include_padded=False)
    )
    assert len(sample_windows(3, TINY, rng, count=10)) == 10  # more draws than frames: with replacement
    assert sample_windows(1, TINY, rng)[0].frames == (0,) * 8


def test_invalid_requests() -> None:
    with pytest.raises(ConfigError):
        plan(0, TINY)
    with pytest.raises(ConfigError):
        plan(10, TINY, stride=0)
    with pytest.raises(ConfigError):
        plan(10, TINY, mode="middle")
    with pytest.raises(ConfigError):
        plan(10, TINY, variant="no-such-family")
    with pytest.raises(ConfigError):
        window_for(10, 10, TINY)
    with pytest.raises(IndexError):
        plan(10, TINY).window_of(10)
