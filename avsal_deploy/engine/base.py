"""The engine protocol: run one named component; the window logic on top is shared.

A backend implements :meth:`Engine.run` (component name + named numpy inputs -> named numpy
outputs). Everything else -- wiring the components, the DDIM loop (read from
:mod:`avsal_deploy.diffusion`), the one-shot shortcut -- is written once here, so PyTorch, ONNX
Runtime, TensorRT and Triton give the same maps for the same inputs and noise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping

import numpy as np

from avsal_deploy.config import Config, resolve_steps
from avsal_deploy.diffusion import DDIMScheduler, ddim_sample, normalize_maps
from avsal_deploy.errors import ConfigError
from avsal_deploy.specs import CONDS, ENVELOPE, SCALES, ComponentSpec

Arrays = dict[str, np.ndarray]


class Engine(ABC):
    """Runs the exported components of one variant; see :meth:`predict_window`."""

    backend: str = "abstract"

    def __init__(self, config: Config, variant: str, specs: Mapping[str, ComponentSpec]) -> None:
        self.config = config
        self.variant = variant
        self.specs = dict(specs)
        self.scheduler = DDIMScheduler.from_config(config.diffusion)

    @abstractmethod
    def run(self, component: str, feeds: Mapping[str, np.ndarray]) -> Arrays:
        """Outputs of ``component`` (names as in its spec) for the named float32 inputs."""

    def close(self) -> None:  # noqa: B027 - optional hook, most backends hold nothing to release
        """Release sessions, buffers or connections."""

    def __enter__(self) -> Engine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------ window logic
    def _call(self, component: str, values: Mapping[str, np.ndarray]) -> Arrays:
        spec = self.specs[component]
        return self.run(component, {n: np.ascontiguousarray(values[n], np.float32) for n in spec.input_names})

    @property
    def uses_envelope(self) -> bool:
        """Whether the components take the per-frame audio envelope (a fusion decoder with AV sync)."""
        return any(ENVELOPE in spec.input_names for spec in self.specs.values())

    def condition(self, frames: np.ndarray, audio: np.ndarray, envelope: np.ndarray | None = None) -> Arrays:
        """Encoders and fusion decoder, once per window: features, conditions, one-shot map.

        ``audio`` is ignored by a visual-only family (no audio encoder: pass ``np.zeros((B, 0))``).
        ``envelope`` [B, *config.envelope_shape(variant)] is required when :attr:`uses_envelope`.
        """
        feats = dict(self._call("video_encoder", {"frames": frames}))
        if "audio_encoder" in self.specs:
            feats.update(self._call("audio_encoder", {"audio": audio}))
        if "fusion" in self.specs:
            if self.uses_envelope:
                if envelope is None:
                    raise ConfigError(
                        f"{self.backend} engine ({self.variant}, fusion.av_sync): the fusion decoder needs "
                        "the per-frame audio envelope (avsal_deploy.data.audio.envelope_input)"
                    )
                feats[ENVELOPE] = envelope
            feats["frames"] = frames  # read only by a fusion decoder with the binding map
            feats.update(self._call("fusion", feats))
        elif CONDS[0] in self.specs["unet_step"].input_names:  # our diffsal: the video features
            feats.update({c: feats[v] for c, v in zip(CONDS, SCALES, strict=True)})
        return feats

    def make_noise(self, batch: int, seed: int = 0) -> np.ndarray:
        """x_T ~ N(0, I) for ``batch`` maps, reproducible from ``seed`` on every backend."""
        shape = (batch, *self.config.map_shape())
        return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)

    def sample(self, cond: Mapping[str, np.ndarray], steps: int, noise: np.ndarray) -> np.ndarray:
        """DDIM from ``noise`` to the map: the fused graph when exported for ``steps``, else the loop."""
        fused = self.specs.get("ddim")
        if fused is not None and int(fused.attributes.get("steps", -1)) == steps:
            return self._call("ddim", {**cond, "noise": noise})["x0"]

        def denoise(x_t: np.ndarray, t: np.ndarray) -> np.ndarray:
            return self._call("unet_step", {**cond, "x_t": x_t, "t": t})["x0"]

        noise = np.ascontiguousarray(noise, np.float32)
        x0 = ddim_sample(denoise, noise, self.scheduler, steps, clip_x0=self.config.diffusion.clip_x0)
        return normalize_maps(x0)

    def predict_window(
        self,
        frames: np.ndarray,
        audio: np.ndarray,
        steps: int | None = None,
        noise: np.ndarray | None = None,
        seed: int = 0,
        *,
        envelope: np.ndarray | None = None,
    ) -> np.ndarray:
        """Saliency maps [B,1,H,W] in [0,1] for a batch of windows (frames [B,3,T,H,W]).

        ``steps`` DDIM steps (default from the config; 0 = the one-shot map: always, for a family
        without a Saliency-UNet; a family whose UNet ignores x_T runs it once).
        ``noise`` is x_T; when omitted it is drawn from ``seed``. ``envelope``: the windows'
        per-frame audio envelopes, required when :attr:`uses_envelope`.
        """
        n = resolve_steps(self.config, self.variant, steps)
        cond = self.condition(frames, audio, envelope)
        if n == 0:
            return cond["one_shot"]
        if noise is None:
            noise = self.make_noise(frames.shape[0], seed)
        return self.sample(cond, n, noise)
