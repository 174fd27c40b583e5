"""Cosine schedule, DDIM scheduler and the engine-agnostic sampling loop (avsal_deploy.diffusion)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from avsal_deploy.config import load_config
from avsal_deploy.diffusion import DDIMScheduler, cosine_alphas_cumprod, ddim_sample
from avsal_deploy.errors import ConfigError

T = 1000


@pytest.fixture(scope="module")
def sched() -> DDIMScheduler:
    return DDIMScheduler.from_config(load_config("tiny").diffusion)


def _reference_alphas_cumprod(timesteps: int, s: float, max_beta: float) -> list[float]:
    """Independent scalar implementation: betas from the closed form, clipped, running product."""

    def f(u: float) -> float:
        return math.cos((u / timesteps + s) / (1 + s) * math.pi / 2) ** 2

    out, prod = [], 1.0
    for t in range(timesteps):
        beta = min(max(1.0 - f(t + 1) / f(t), 0.0), max_beta)
        prod *= 1.0 - beta
        out.append(prod)
    return out


def test_alphas_cumprod_matches_independent_formula() -> None:
    ac = cosine_alphas_cumprod(T, 0.008, 0.999)
    assert ac.dtype == np.float64 and ac.shape == (T,)
    np.testing.assert_allclose(ac, _reference_alphas_cumprod(T, 0.008, 0.999), rtol=1e-12, atol=0)
    # Where no beta is clipped, the product telescopes to the closed form f(t+1)/f(0).
    f = lambda u: math.cos((u / T + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    for t in (0, 1, 10, 250, 500, 750, 900):
        assert ac[t] == pytest.approx(f(t + 1) / f(0), rel=1e-10)


def test_alphas_cumprod_monotone_and_end_points() -> None:
    ac = cosine_alphas_cumprod(T)
    assert np.all(np.diff(ac) < 0)
    assert 0.9999 < ac[0] < 1.0
    # The last beta would be 1 (f(T) = 0): it is clipped at 0.999, so abar stays positive.
    assert ac[-1] == pytest.approx(ac[-2] * (1 - 0.999), rel=1e-12)
    assert ac[-1] > 0
    betas = 1 - ac / np.concatenate([[1.0], ac[:-1]])
    assert betas.max() == pytest.approx(0.999)


def test_schedule_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="timesteps"):
        cosine_alphas_cumprod(0)
    with pytest.raises(ConfigError, match="max_beta"):
        cosine_alphas_cumprod(10, max_beta=1.0)


def test_from_config_accepts_config_or_section() -> None:
    cfg = load_config("tiny", diffusion__timesteps=200, diffusion__dequant_sigma=0.05)
    for src in (cfg, cfg.diffusion):
        s = DDIMScheduler.from_config(src)
        assert s.num_train_timesteps == 200 and s.dequant_sigma == 0.05
        np.testing.assert_array_equal(s.alphas_cumprod, cosine_alphas_cumprod(200))


@pytest.mark.parametrize("steps", range(1, 9))
def test_set_timesteps_follows_official_rule(sched: DDIMScheduler, steps: int) -> None:
    # Official diffusion_trainer.sample_ddim: skip = T // steps; seq = range(0, T, skip), reversed.
    skip = T // steps
    expected = [t for t in range(T - 1, -1, -1) if t % skip == 0]
    assert sched.set_timesteps(steps) == expected
    assert sched.timesteps == expected
    assert expected[-1] == 0 and len(expected) == math.ceil(T / skip)


def test_set_timesteps_known_values(sched: DDIMScheduler) -> None:
    assert sched.timesteps_for(4) == [750, 500, 250, 0]
    assert sched.timesteps_for(1) == [0]
    assert sched.timesteps_for(2) == [500, 0]
    assert sched.timesteps_for(3) == [999, 666, 333, 0]  # the official rule's extra step
    for bad in (0, T + 1):
        with pytest.raises(ConfigError, match="sampling_steps"):
            sched.timesteps_for(bad)


def test_add_noise_statistics(sched: DDIMScheduler) -> None:
    g = torch.Generator().manual_seed(0)
    x0 = torch.full((4, 1, 128, 128), 0.7, dtype=torch.float64)
    t = torch.tensor([0, 250, 750, 999])
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = sched.add_noise(x0, noise, t)
    for i, ti in enumerate(t.tolist()):
        a = sched.alphas_cumprod[ti]
        assert x_t[i].mean().item() == pytest.approx(math.sqrt(a) * 0.7, abs=0.02)
        assert x_t[i].std().item() == pytest.approx(math.sqrt(1 - a), rel=0.03, abs=2e-3)
        torch.testing.assert_close(x_t[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i])
    x32 = sched.add_noise(x0.float(), noise.float(), t)
    assert x32.dtype == torch.float32
    with pytest.raises(ValueError):
        sched.add_noise(x0, noise, t.float())
    with pytest.raises(ValueError):
        sched.add_noise(x0, noise, t[:2])


def test_step_matches_closed_form(sched: DDIMScheduler) -> None:
    g = torch.Generator().manual_seed(1)
    x_t = torch.randn(2, 1, 8, 8, generator=g, dtype=torch.float64)
    x0 = torch.rand(2, 1, 8, 8, generator=g, dtype=torch.float64)
    for t, t_next in ((750, 500), (500, 250), (999, 0), (10, 3)):
        a, a_n = sched.alphas_cumprod[t], sched.alphas_cumprod[t_next]
        eps = (math.sqrt(1 / a) * x_t - x0) / math.sqrt(1 / a - 1)  # official predict_noise_from_start
        expected = math.sqrt(a_n) * x0 + math.sqrt(1 - a_n) * eps
        torch.testing.assert_close(sched.step(x0, t, x_t, t_next), expected, rtol=1e-12, atol=1e-12)
        c_x0, c_xt = sched.step_coefficients(t, t_next)
        torch.testing.assert_close(c_x0 * x0 + c_xt * x_t, expected, rtol=1e-12, atol=1e-12)
    assert sched.step_coefficients(250, None) == (1.0, 0.0)
    assert sched.step_coefficients(250, -1) == (1.0, 0.0)
    assert sched.step(x0, 0, x_t, None) is x0
    assert sched.step(x0.float(), 750, x_t.float(), 500).dtype == torch.float32
    with pytest.raises(ValueError):
        sched.step_coefficients(T, 0)
    with pytest.raises(ValueError):
        sched.step_coefficients(-1, None)


@pytest.mark.parametrize("steps", range(1, 9))
def test_perfect_predictor_recovers_x0_along_the_ddim_trajectory(sched: DDIMScheduler, steps: int) -> None:
    g = torch.Generator().manual_seed(steps)
    x0 = torch.rand(3, 1, 16, 24, generator=g, dtype=torch.float64)
    x_T = 5.0 * torch.randn(3, 1, 16, 24, generator=g, dtype=torch.float64)  # any x_T, not only N(0, 1)
    ts = sched.timesteps_for(steps)
    a0 = sched.alphas_cumprod[ts[0]]
    eps = (x_T - math.sqrt(a0) * x0) / math.sqrt(1 - a0)
    x = x_T
    for i, t in enumerate(ts):
        t_next = ts[i + 1] if i + 1 < len(ts) else None
        x = sched.step(x0, t, x, t_next)
        if t_next is not None:  # deterministic DDIM keeps the implied noise fixed
            a = sched.alphas_cumprod[t_next]
            torch.testing.assert_close(x, math.sqrt(a) * x0 + math.sqrt(1 - a) * eps, rtol=1e-9, atol=1e-9)
    assert torch.equal(x, x0)
    assert torch.equal(ddim_sample(lambda x_t, t: x0, x_T, sched, steps, clip_x0=False), x0)


@pytest.mark.parametrize("steps", range(1, 9))
def test_ddim_sample_with_fixed_map_returns_it(sched: DDIMScheduler, steps: int) -> None:
    g = torch.Generator().manual_seed(10 + steps)
    target = torch.rand(2, 1, 8, 12, generator=g)
    calls: list[torch.Tensor] = []

    def denoise(x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        assert x_t.shape == target.shape and x_t.dtype == torch.float32
        calls.append(t)
        return target

    out = ddim_sample(denoise, torch.randn(2, 1, 8, 12, generator=g), sched, steps)
    torch.testing.assert_close(out, target)
    expected_ts = sched.timesteps_for(steps)
    assert [c.tolist() for c in calls] == [[float(t)] * 2 for t in expected_ts]
    assert all(c.dtype == torch.float32 and c.shape == (2,) for c in calls)


def test_ddim_sample_accepts_numpy_denoiser_and_clips(sched: DDIMScheduler) -> None:
    noise = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(3))
    wild = np.full((1, 1, 4, 4), 1.7, dtype=np.float32)  # an ONNX-Runtime-like output, out of range
    clipped = ddim_sample(lambda x_t, t: wild, noise, sched, 4, clip_x0=True)
    assert torch.equal(clipped, torch.ones_like(noise))
    raw = ddim_sample(lambda x_t, t: wild, noise, sched, 4, clip_x0=False)
    torch.testing.assert_close(raw, torch.full_like(noise, 1.7))


def test_q_sample_training(sched: DDIMScheduler) -> None:
    x0 = torch.rand(64, 1, 16, 16, generator=torch.Generator().manual_seed(4))
    x_t, t, noise = sched.q_sample_training(x0, torch.Generator().manual_seed(5))
    assert x_t.shape == x0.shape and noise.shape == x0.shape and x_t.dtype == x0.dtype
    assert t.dtype == torch.int64 and t.shape == (64,)
    assert int(t.min()) >= 0 and int(t.max()) < T and len(set(t.tolist())) > 32  # per-sample draws
    # x_t - q(x_t | x0, noise) is the de-quantisation noise scaled by sqrt(abar_t): std ~ sigma.
    residual = (x_t - sched.add_noise(x0, noise, t)).double()
    scale = torch.from_numpy(sched.alphas_cumprod)[t].sqrt().view(-1, 1, 1, 1)
    assert (residual / scale).std().item() == pytest.approx(sched.dequant_sigma, rel=0.05)
    again = sched.q_sample_training(x0, torch.Generator().manual_seed(5))
    for a, b in zip((x_t, t, noise), again, strict=True):
        assert torch.equal(a, b)
