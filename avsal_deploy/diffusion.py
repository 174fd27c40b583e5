"""Diffusion arithmetic of DiffSal: cosine schedule, forward noising, DDIM (eta = 0) on x0.

Kept apart from every network, in the spirit of ``diffusers`` schedulers: the scheduler only knows
the noise schedule, and :func:`ddim_sample` only needs a callable ``denoise(x_t, t) -> x0``, so the
same loop drives a torch module, an ONNX Runtime session, a TensorRT engine or a Triton client.

Conventions (DiffSal §3 and Algorithms 1-2; official code ``junwenxiong/diff_sal``):

- ``T = config.diffusion.timesteps`` discrete steps indexed ``0 .. T-1``; ``alphas_cumprod[t]`` is
  ``prod_{j <= t} (1 - beta_j)`` (the official ``compute_alpha(b, t)`` with its prepended zero beta),
  and the virtual step ``-1`` has ``alpha_cumprod = 1`` (the clean map).
- The network predicts the clean map x0 (the ``x0`` training target of the released config), never
  the noise; the DDIM update first recovers the implied noise from the x0 estimate.
- Saliency maps stay in their natural range [0, 1] (the released config has ``rescaled: false``):
  they are NOT mapped to [-1, 1] as in image diffusion.

The module imports no torch: the sampler (:func:`ddim_sample`, :func:`normalize_maps`) runs on
NumPy arrays for the runtime engines and on torch tensors for training and export (the same
code, dispatching on the array type); only the training-time forward process
(:meth:`DDIMScheduler.add_noise`, :meth:`DDIMScheduler.q_sample_training`) needs torch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from avsal_deploy.config import Config, DiffusionConfig
from avsal_deploy.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import Tensor

#: A batch of maps: a NumPy array (runtime) or a torch tensor (training, export).
MapArray = TypeVar("MapArray")
Denoiser = Callable[[Any, Any], Any]


def cosine_alphas_cumprod(timesteps: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
    """``alphas_cumprod`` of the cosine schedule (Nichol & Dhariwal 2021, eq. 17), float64 [timesteps].

    ``f(u) = cos^2((u / T + s) / (1 + s) * pi / 2)`` for ``u = 0 .. T``; ``abar(u) = f(u) / f(0)``;
    ``beta_t = 1 - abar(t + 1) / abar(t)`` clipped to ``[0, max_beta]`` (the last betas approach 1 and
    would make the final step singular); the returned ``alphas_cumprod`` is recomputed from the
    clipped betas, so ``alphas_cumprod[-1] > 0``. This is what the official ``get_beta_schedule
    ('cosine')`` computes (its ``linspace(0, T + 1, T + 1) / (T + 1)`` equals ``u / T``).
    """
    if timesteps < 1:
        raise ConfigError(f"diffusion.timesteps={timesteps}: must be >= 1")
    if not 0.0 < max_beta < 1.0:
        raise ConfigError(f"diffusion.max_beta={max_beta}: must be in (0, 1)")
    u = np.arange(timesteps + 1, dtype=np.float64) / timesteps
    f = np.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2
    abar = f / f[0]
    betas = np.clip(1.0 - abar[1:] / abar[:-1], 0.0, max_beta)
    return np.cumprod(1.0 - betas)


class DDIMScheduler:
    """Deterministic DDIM (eta = 0) on the x0 parameterisation, over a cosine schedule.

    ``set_timesteps(n)`` picks the sampling time steps as the official code does; ``step`` maps
    ``(x0_pred, t, x_t, t_next)`` to ``x_{t_next}``; ``add_noise`` is the forward process
    ``q(x_t | x0)`` (DiffSal eq. 1). Coefficients are computed in float64 and cast to the tensor's
    dtype at the last moment.
    """

    def __init__(
        self,
        timesteps: int = 1000,
        cosine_s: float = 0.008,
        max_beta: float = 0.999,
        dequant_sigma: float = 0.01,
    ) -> None:
        self.num_train_timesteps = int(timesteps)
        self.dequant_sigma = float(dequant_sigma)
        self.alphas_cumprod: np.ndarray = cosine_alphas_cumprod(self.num_train_timesteps, cosine_s, max_beta)
        self.timesteps: list[int] = []

    @classmethod
    def from_config(cls, config: DiffusionConfig | Config) -> DDIMScheduler:
        """The scheduler of ``config.diffusion`` (a whole :class:`Config` is accepted too)."""
        d = config.diffusion if isinstance(config, Config) else config
        return cls(d.timesteps, d.cosine_s, d.max_beta, d.dequant_sigma)

    # ------------------------------------------------------------------ time steps
    def timesteps_for(self, steps: int) -> list[int]:
        """Sampling time steps, noisiest first, by the official rule.

        ``skip = T // steps``; ``list(range(0, T, skip))`` reversed: 4 steps of T = 1000 give
        ``[750, 500, 250, 0]`` and 1 step gives ``[0]``. When ``T % steps != 0`` the rule yields MORE
        than ``steps`` entries (3 steps: ``[999, 666, 333, 0]``); we keep it so that released
        checkpoints are sampled exactly as their authors did. Paper Algorithm 2 writes a linspace
        instead; the code is what produced the published numbers.
        """
        steps = int(steps)
        if not 1 <= steps <= self.num_train_timesteps:
            raise ConfigError(
                f"diffusion.sampling_steps={steps}: must be between 1 and diffusion.timesteps="
                f"{self.num_train_timesteps}"
            )
        skip = self.num_train_timesteps // steps
        return list(range(0, self.num_train_timesteps, skip))[::-1]

    def set_timesteps(self, steps: int) -> list[int]:
        """Set (and return) :attr:`timesteps` for ``steps`` sampling steps (see :meth:`timesteps_for`)."""
        self.timesteps = self.timesteps_for(steps)
        return list(self.timesteps)

    def alpha_cumprod(self, t: int | None) -> float:
        """``alpha_bar_t`` in float64; ``t = None`` or ``-1`` is the clean end point (1.0)."""
        if t is None or t == -1:
            return 1.0
        t = int(t)
        if not 0 <= t < self.num_train_timesteps:
            raise ValueError(f"time step {t} outside [0, {self.num_train_timesteps}) (or -1 for the end)")
        return float(self.alphas_cumprod[t])

    # ------------------------------------------------------------------ DDIM update
    def step_coefficients(self, t: int, t_next: int | None) -> tuple[float, float]:
        """``(c_x0, c_xt)`` such that the DDIM (eta = 0) update is ``x_next = c_x0 * x0 + c_xt * x_t``.

        With ``a = alpha_bar_t`` and ``a' = alpha_bar_{t_next}`` the official update reads

            eps    = (sqrt(1/a) x_t - x0) / sqrt(1/a - 1) = (x_t - sqrt(a) x0) / sqrt(1 - a)
            x_next = sqrt(a') x0 + sqrt(1 - a') eps

        Substituting eps:

            x_next = [sqrt(a') - sqrt(a) sqrt((1-a')/(1-a))] x0 + sqrt((1-a')/(1-a)) x_t

        so ``c_xt = sqrt((1 - a') / (1 - a))`` and ``c_x0 = sqrt(a') - sqrt(a) * c_xt``. At the last
        step (``t_next`` None or -1) ``a' = 1``: ``c_x0 = 1, c_xt = 0`` and the update returns x0.
        Both are float64 Python floats; engines and the Triton loop reuse them verbatim.
        """
        if t is None or t == -1:
            raise ValueError("step_coefficients: t must be a real time step in [0, T), not the end point")
        a = self.alpha_cumprod(t)
        a_next = self.alpha_cumprod(t_next)
        c_xt = math.sqrt((1.0 - a_next) / (1.0 - a))
        c_x0 = math.sqrt(a_next) - math.sqrt(a) * c_xt
        return c_x0, c_xt

    def step(self, x0_pred: MapArray, t: int, x_t: MapArray, t_next: int | None) -> MapArray:
        """``x_{t_next}`` from the x0 estimate at ``t`` (DDIM, eta = 0); the last step returns ``x0_pred``."""
        c_x0, c_xt = self.step_coefficients(t, t_next)
        if t_next is None or t_next == -1:
            return x0_pred  # c_x0 = 1, c_xt = 0: exactly x0 (no 1.0 * x0 + 0.0 * x_t rounding, no NaN leak)
        return x0_pred * c_x0 + x_t * c_xt

    # ------------------------------------------------------------------ forward process
    def _gather(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``sqrt(abar_t)`` and ``sqrt(1 - abar_t)`` per sample, shaped to broadcast against ``like``."""
        if t.dim() != 1 or t.shape[0] != like.shape[0]:
            raise ValueError(
                f"t must be a [B] tensor of time steps (B={like.shape[0]}), got {tuple(t.shape)}"
            )
        if t.is_floating_point():
            raise ValueError("t must hold integer time steps")
        import torch

        table = torch.from_numpy(self.alphas_cumprod).to(like.device)
        abar = table[t.to(device=like.device, dtype=torch.long)]
        shape = (-1,) + (1,) * (like.dim() - 1)
        return abar.sqrt().to(like.dtype).view(shape), (1.0 - abar).sqrt().to(like.dtype).view(shape)

    def add_noise(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """Forward process ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise`` (DiffSal eq. 1), t int [B]."""
        s_a, s_1ma = self._gather(t, x0)
        return x0 * s_a + noise * s_1ma

    def q_sample_training(
        self, x0: Tensor, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor, Tensor]:
        """A training sample ``(x_t, t, noise)`` from ground-truth maps ``x0`` in [0, 1].

        - ``t`` is drawn uniformly in ``[0, T)`` independently PER SAMPLE (int64 [B]); the official
          trainer draws one ``t`` for the whole batch, which gives the same expected loss with a
          noisier gradient.
        - Gaussian de-quantisation noise of std ``diffusion.dequant_sigma`` is added to x0 before
          noising (official ``gaussian_dequantization``). The regression target stays the CLEAN x0:
          the official code regresses onto the de-quantised map, which under MSE only adds the
          constant ``sigma^2`` to the expected loss (same gradient in expectation).
        - ``noise`` is the forward-process epsilon (not the de-quantisation noise).
        """
        import torch

        b = x0.shape[0]
        t = torch.randint(0, self.num_train_timesteps, (b,), generator=generator, device=x0.device)
        dequant = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        noise = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        x_t = self.add_noise(x0 + self.dequant_sigma * dequant, noise, t)
        return x_t, t, noise


def _is_numpy(x: Any) -> bool:
    return isinstance(x, np.ndarray)


def _clip01(x: MapArray) -> MapArray:
    return np.clip(x, 0.0, 1.0) if _is_numpy(x) else x.clamp(0.0, 1.0)  # type: ignore[attr-defined]


def ddim_sample(
    denoise: Denoiser,
    noise: MapArray,
    scheduler: DDIMScheduler,
    steps: int,
    clip_x0: bool = True,
) -> MapArray:
    """Engine-agnostic DDIM sampling (DiffSal Algorithm 2): x_T = ``noise`` -> x0.

    ``noise`` is a NumPy array (the runtime engines) or a torch tensor (training, export); the
    loop runs in that type. ``denoise(x_t, t)`` gets the current map ``x_t`` [B,1,H,W] and ``t``
    as a float array [B] of that type (all entries equal, the dtype of ``noise``) and returns the
    x0 estimate (for torch, anything :func:`torch.as_tensor` accepts, e.g. an ONNX Runtime output
    array). The encoders are not involved: the caller closes ``denoise`` over features computed
    once per clip.

    ``clip_x0=True`` clamps every x0 estimate to the map range [0, 1] before it enters the update
    (diffusers' ``clip_sample``); the result then lies in [0, 1]. The official ``sample_ddim`` does
    NOT clamp inside the loop and clamps only the final map (``inverse_data_transform``);
    ``clip_x0=False`` reproduces that loop exactly (the caller clamps the output). Clamping inside
    keeps out-of-range x0 estimates from being amplified by ``sqrt(1/a_t)`` in the implied noise.
    """
    x = noise
    numpy = _is_numpy(noise)
    timesteps = scheduler.timesteps_for(steps)
    for i, t in enumerate(timesteps):
        t_next = timesteps[i + 1] if i + 1 < len(timesteps) else None
        if numpy:
            t_in = np.full((x.shape[0],), float(t), dtype=x.dtype)
            x0 = np.asarray(denoise(x, t_in), dtype=x.dtype)
        else:
            import torch

            t_in = torch.full((x.shape[0],), float(t), dtype=x.dtype, device=x.device)
            x0 = torch.as_tensor(denoise(x, t_in), dtype=x.dtype, device=x.device)
        if clip_x0:
            x0 = _clip01(x0)
        x = scheduler.step(x0, t, x, t_next)
    return x


def normalize_maps(x: MapArray, eps: float = 1e-8) -> MapArray:
    """Clamp to [0, 1], then min-max normalise each map (DiffSal's output convention); NumPy
    arrays or torch tensors [B, ...]. A constant map becomes all zeros instead of dividing by zero.
    """
    x = _clip01(x)
    if _is_numpy(x):
        flat = x.reshape(x.shape[0], -1)
        shape = (-1,) + (1,) * (x.ndim - 1)
        lo, hi = flat.min(axis=1).reshape(shape), flat.max(axis=1).reshape(shape)
        return ((x - lo) / (hi - lo + np.asarray(eps, x.dtype))).astype(x.dtype, copy=False)
    flat = x.flatten(1)
    lo = flat.min(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    hi = flat.max(dim=1).values.view(-1, *([1] * (x.dim() - 1)))
    return (x - lo) / (hi - lo + eps)
