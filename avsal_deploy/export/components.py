"""The exported components of a model: their specs derived from the config, and their modules.

:func:`component_specs` derives each component's :class:`~avsal_deploy.specs.ComponentSpec` (the
torch-free leaf that ONNX export, the TensorRT build, every runtime engine, the Triton repository
and the benchmarks read) from the :class:`~avsal_deploy.config.Config` by running the real modules
on the "meta" device, so nothing re-types a shape; :func:`component_module` gives the
``nn.Module`` whose forward is the component's graph.

The components and their inputs and outputs are listed in :mod:`avsal_deploy.specs`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from avsal_deploy.config import Config, check_variant, family
from avsal_deploy.diffusion import DDIMScheduler, normalize_maps
from avsal_deploy.models.build import AVSaliencyModel, OfficialModel, SaliencyModel, build_model
from avsal_deploy.specs import CONDS, ENVELOPE, SCALES, ComponentSpec, TensorSpec


# ----------------------------------------------------------------------------- wrappers
class VideoEncoderComponent(nn.Module):
    def __init__(self, model: AVSaliencyModel) -> None:
        super().__init__()
        self.encoder = model.video_encoder

    def forward(self, frames: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        v0, v1, v2, v3 = self.encoder(frames)
        return v0, v1, v2, v3


class AudioEncoderComponent(nn.Module):
    def __init__(self, model: AVSaliencyModel) -> None:
        super().__init__()
        self.encoder = model.audio_encoder

    def forward(self, audio: Tensor) -> Tensor:
        return self.encoder(audio)


class FusionComponent(nn.Module):
    def __init__(self, model: AVSaliencyModel) -> None:
        super().__init__()
        assert model.fusion is not None
        self.fusion = model.fusion

    def forward(self, v0: Tensor, v1: Tensor, v2: Tensor, v3: Tensor, audio_feat: Tensor):
        one_shot, c0, c1, c2, c3 = self.fusion(v0, v1, v2, v3, audio_feat)
        return one_shot, c0, c1, c2, c3


class SyncFusionComponent(FusionComponent):
    """The fusion decoder with AV sync: one more input, the per-frame audio envelope."""

    def forward(self, v0: Tensor, v1: Tensor, v2: Tensor, v3: Tensor, audio_feat: Tensor, envelope: Tensor):  # type: ignore[override]
        one_shot, c0, c1, c2, c3 = self.fusion(v0, v1, v2, v3, audio_feat, envelope)
        return one_shot, c0, c1, c2, c3


class BindingFusionComponent(FusionComponent):
    """The fusion decoder with the binding map (``fusion.binding``): the envelope and the frames."""

    def forward(
        self,
        v0: Tensor,
        v1: Tensor,
        v2: Tensor,
        v3: Tensor,
        audio_feat: Tensor,
        envelope: Tensor,
        frames: Tensor,
    ):  # type: ignore[override]
        one_shot, c0, c1, c2, c3 = self.fusion(v0, v1, v2, v3, audio_feat, envelope, frames)
        return one_shot, c0, c1, c2, c3


class UNetStepComponent(nn.Module):
    def __init__(self, model: AVSaliencyModel) -> None:
        super().__init__()
        assert model.unet is not None
        self.unet = model.unet

    def forward(self, x_t, t, c0, c1, c2, c3, audio_feat) -> Tensor:
        return self.unet(x_t, t, c0, c1, c2, c3, audio_feat)


class OneShotUNetStepComponent(UNetStepComponent):
    """The UNet step of a hybrid with ``unet.oneshot_condition``: also takes the one-shot map."""

    def forward(self, x_t, t, c0, c1, c2, c3, audio_feat, one_shot) -> Tensor:  # type: ignore[override]
        return self.unet(x_t, t, c0, c1, c2, c3, audio_feat, one_shot)


class DDIMComponent(nn.Module):
    """All ``steps`` DDIM updates unrolled into one graph (coefficients baked in as constants).

    The alternative to looping outside the graph: one engine call per window instead of
    ``steps``. Same arithmetic as :func:`avsal_deploy.diffusion.ddim_sample`, read from the
    scheduler's :meth:`step_coefficients`; each x0 estimate is clamped to [0, 1] inside the loop
    when ``diffusion.clip_x0`` (ours), only at the end otherwise (the released DiffSal sampler).
    Its inputs: ``noise`` and then the UNet step's conditions, in the step's order.
    """

    def __init__(self, model: SaliencyModel, steps: int) -> None:
        super().__init__()
        assert model.unet is not None and steps >= 1
        self.unet = model.unet
        self.clip_x0 = bool(model.config.diffusion.clip_x0)
        sched: DDIMScheduler = model.scheduler
        ts = [int(t) for t in sched.set_timesteps(steps)]
        nxt: list[int | None] = [*ts[1:], None]
        self.plan = [(float(t), sched.step_coefficients(t, n)) for t, n in zip(ts, nxt, strict=True)]

    def forward(self, noise: Tensor, *conds: Tensor) -> Tensor:
        x = noise
        ones = torch.ones_like(noise[:, 0, 0, 0])
        x0 = noise
        for t, (c_x0, c_xt) in self.plan:
            x0 = self.unet(x, ones * t, *conds)
            if self.clip_x0:
                x0 = x0.clamp(0.0, 1.0)
            x = c_x0 * x0 + c_xt * x
        return normalize_maps(x0)


# ----------------------------------------------------------------------------- specs
def _infer_shapes(config: Config, variant: str) -> dict[str, tuple[int, ...]]:
    """Per-tensor shapes (batch excluded) by one forward of the real modules on "meta"."""
    with torch.device("meta"):
        model = build_model(config, variant)
        frames = torch.empty(1, *config.frames_shape(variant))
        audio = torch.empty(1, *config.audio_input_shape(variant))
        envelope = torch.empty(1, *config.envelope_shape(variant)) if config.uses_envelope(variant) else None
        with torch.no_grad():
            v = model.video_encoder(frames)
            a = model.audio_encoder(audio)
            shapes = {n: tuple(x.shape[1:]) for n, x in zip(SCALES, v, strict=True)}
            shapes["audio_feat"] = tuple(a.shape[1:])
            if model.fusion is not None:
                one_shot, *conds = model.fusion(
                    *v, a, envelope, frames if config.uses_binding(variant) else None
                )
                shapes["one_shot"] = tuple(one_shot.shape[1:])
                shapes.update({n: tuple(c.shape[1:]) for n, c in zip(CONDS, conds, strict=True)})
            else:
                shapes.update({c: shapes[s] for c, s in zip(CONDS, SCALES, strict=True)})
    return shapes


def _official_specs(
    config: Config, variant: str, max_batch: int, ddim_steps: int | None
) -> dict[str, ComponentSpec]:
    """An official family's components: its video encoder's named outputs, the audio features
    (when it has audio), then its decoder (``fusion``: the one-shot map) or its UNet step, which
    take those by name. The UNet step of a family whose UNet reads neither x_t nor t says so
    (attribute ``noise_free``)."""
    fam = family(variant)
    with torch.device("meta"), torch.no_grad():
        model = build_model(config, variant)
        assert isinstance(model, OfficialModel)
        frames = torch.empty(1, *config.frames_shape(variant))
        audio = torch.empty(1, *config.audio_input_shape(variant))
        video, audio_feat = model.encode(frames, audio)
        shapes = {n: tuple(x.shape[1:]) for n, x in zip(model.video_outputs, video, strict=True)}
        if audio_feat is not None:
            shapes["audio_feat"] = tuple(audio_feat.shape[1:])
    prof = (1, 1, max_batch)
    T = TensorSpec
    map_shape = config.map_shape()
    feats = tuple(T(n, shapes[n]) for n in (*model.video_outputs, *(["audio_feat"] if fam.has_audio else [])))
    specs = {
        "video_encoder": ComponentSpec(
            "video_encoder",
            (T("frames", config.frames_shape(variant)),),
            tuple(T(n, shapes[n]) for n in model.video_outputs),
            prof,
        )
    }
    if model.audio_encoder is not None:
        specs["audio_encoder"] = ComponentSpec(
            "audio_encoder",
            (T("audio", config.audio_input_shape(variant)),),
            (T("audio_feat", shapes["audio_feat"]),),
            prof,
        )
    if model.fusion is not None:
        specs["fusion"] = ComponentSpec("fusion", feats, (T("one_shot", map_shape),), prof)
    if model.unet is not None:
        attrs = {"timesteps": config.diffusion.timesteps, "noise_free": fam.noise_free}
        specs["unet_step"] = ComponentSpec(
            "unet_step", (T("x_t", map_shape), T("t", ()), *feats), (T("x0", map_shape),), prof, attrs
        )
        if ddim_steps and not fam.noise_free:
            specs["ddim"] = ComponentSpec(
                "ddim",
                (T("noise", map_shape), *feats),
                (T("x0", map_shape),),
                prof,
                {**attrs, "steps": ddim_steps},
            )
    return specs


def component_specs(
    config: Config, variant: str, max_batch: int = 8, ddim_steps: int | None = None
) -> dict[str, ComponentSpec]:
    """The components of ``variant`` in execution order. ``ddim_steps`` adds the fused loop."""
    check_variant(variant)
    if family(variant).origin == "official":
        return _official_specs(config, variant, max_batch, ddim_steps)
    s = _infer_shapes(config, variant)
    prof = (1, 1, max_batch)
    T = TensorSpec
    map_shape = config.map_shape()
    specs: dict[str, ComponentSpec] = {
        "video_encoder": ComponentSpec(
            "video_encoder",
            (T("frames", config.frames_shape(variant)),),
            tuple(T(n, s[n]) for n in SCALES),
            prof,
        ),
        "audio_encoder": ComponentSpec(
            "audio_encoder",
            (T("audio", config.audio_input_shape(variant)),),
            (T("audio_feat", s["audio_feat"]),),
            prof,
        ),
    }
    if variant in ("avrsp", "hybrid"):
        envelope = (T(ENVELOPE, config.envelope_shape(variant)),) if config.uses_envelope(variant) else ()
        if config.uses_binding(variant):  # the binding map reads the window's frames too
            envelope += (T("frames", config.frames_shape(variant)),)
        specs["fusion"] = ComponentSpec(
            "fusion",
            (*(T(n, s[n]) for n in SCALES), T("audio_feat", s["audio_feat"]), *envelope),
            (T("one_shot", s["one_shot"]), *(T(c, s[c]) for c in CONDS)),
            prof,
        )
    if variant in ("diffsal", "hybrid"):
        cond_inputs = (*(T(c, s[c]) for c in CONDS), T("audio_feat", s["audio_feat"]))
        if config.uses_oneshot_condition(variant):  # the UNet refines the fusion decoder's map
            cond_inputs += (T("one_shot", s["one_shot"]),)
        attrs = {"timesteps": config.diffusion.timesteps}
        specs["unet_step"] = ComponentSpec(
            "unet_step", (T("x_t", map_shape), T("t", ()), *cond_inputs), (T("x0", map_shape),), prof, attrs
        )
        if ddim_steps:
            specs["ddim"] = ComponentSpec(
                "ddim",
                (T("noise", map_shape), *cond_inputs),
                (T("x0", map_shape),),
                prof,
                {**attrs, "steps": int(ddim_steps)},
            )
    return specs


class StageComponent(nn.Module):
    """An official family's stage as a component: its inputs in the spec's order, its outputs as a
    tuple (the stages' forwards already take and return them so)."""

    def __init__(self, stage: nn.Module) -> None:
        super().__init__()
        self.stage = stage

    def forward(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        out = self.stage(*inputs)
        return tuple(out) if isinstance(out, tuple | list) else (out,)


def component_module(model: SaliencyModel, spec: ComponentSpec) -> nn.Module:
    """The nn.Module whose forward takes ``spec.inputs`` and returns ``spec.outputs`` in order."""
    if spec.name == "ddim":
        return DDIMComponent(model, int(spec.attributes["steps"]))
    if isinstance(model, OfficialModel):
        stages = {
            "video_encoder": model.video_encoder,
            "audio_encoder": model.audio_encoder,
            "fusion": model.fusion,
            "unet_step": model.unet,
        }
        stage = stages.get(spec.name)
        if stage is None:
            raise KeyError(f"unknown component {spec.name!r} of {model.variant}")
        return StageComponent(stage)
    assert isinstance(model, AVSaliencyModel)
    if spec.name == "video_encoder":
        return VideoEncoderComponent(model)
    if spec.name == "audio_encoder":
        return AudioEncoderComponent(model)
    if spec.name == "fusion":
        if "frames" in spec.input_names:
            return BindingFusionComponent(model)
        return SyncFusionComponent(model) if ENVELOPE in spec.input_names else FusionComponent(model)
    if spec.name == "unet_step":
        if "one_shot" in spec.input_names:
            return OneShotUNetStepComponent(model)
        return UNetStepComponent(model)
    raise KeyError(f"unknown component {spec.name!r}")
