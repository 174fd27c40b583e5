"""Native TensorRT: engine build (FP16 / INT8, optimisation profiles, timing cache) and runtime.

Written against the TensorRT 10 Python API. TensorRT installs only from NVIDIA's own package index
and needs an NVIDIA GPU, so on CPU machines every entry point raises
:class:`~avsal_deploy.errors.BackendUnavailableError`; ``tensorrt`` and CUDA are imported lazily,
inside the functions that need them. Device buffers are torch CUDA tensors (no pycuda needed).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy.config import Config
from avsal_deploy.engine.base import Arrays, Engine
from avsal_deploy.errors import BackendUnavailableError
from avsal_deploy.specs import ComponentSpec

GPU_HINT = "needs an NVIDIA GPU with TensorRT 10 (pip install 'avsal-deploy[gpu]' from NVIDIA's index)"


def import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"TensorRT is not installed: the tensorrt backend {GPU_HINT}") from exc
    return trt


def _require_cuda() -> Any:
    import torch

    if not torch.cuda.is_available():
        raise BackendUnavailableError(f"no CUDA device visible: the tensorrt backend {GPU_HINT}")
    return torch


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = True
    int8: bool = False
    workspace_bytes: int = 4 << 30
    timing_cache: Path | None = None  # read if present, written back after the build
    calibration_cache: Path | None = None


class EntropyCalibrator:
    """INT8 calibration from real clips: ``batches`` yields feeds for one component.

    Wrapped into ``trt.IInt8EntropyCalibrator2`` by :func:`make_calibrator`, since the base class
    only exists where TensorRT is installed.
    """

    def __init__(self, spec: ComponentSpec, batches: Iterable[Mapping[str, np.ndarray]], cache: Path | None):
        self.spec = spec
        self.batches = iter(batches)
        self.cache = cache
        self._device: dict[str, Any] = {}

    def get_batch_size(self) -> int:
        return self.spec.batch_profile[1]

    def get_batch(self, names: list[str]) -> list[int] | None:
        torch = _require_cuda()
        try:
            feeds = next(self.batches)
        except StopIteration:
            return None
        ptrs = []
        for n in names:
            self._device[n] = torch.from_numpy(np.ascontiguousarray(feeds[n], np.float32)).cuda()
            ptrs.append(int(self._device[n].data_ptr()))
        return ptrs

    def read_calibration_cache(self) -> bytes | None:
        return self.cache.read_bytes() if self.cache and self.cache.exists() else None

    def write_calibration_cache(self, data: bytes) -> None:
        if self.cache:
            self.cache.write_bytes(bytes(data))


def make_calibrator(
    spec: ComponentSpec, batches: Iterable[Mapping[str, np.ndarray]], cache: Path | None
) -> Any:
    trt = import_tensorrt()

    class _Calibrator(EntropyCalibrator, trt.IInt8EntropyCalibrator2):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IInt8EntropyCalibrator2.__init__(self)
            EntropyCalibrator.__init__(self, spec, batches, cache)

    return _Calibrator()


def calibration_batches(
    export_dir: Path, clips: Iterable[Path], max_windows: int = 64, seed: int = 0
) -> dict[str, list[dict[str, np.ndarray]]]:
    """INT8 calibration inputs for every component, computed from real clips on ONNX Runtime.

    Each window of each clip (at most ``max_windows`` in all, spread over the clips) gives one
    feed per component: the encoders see the preprocessed clip and audio, the fusion decoder the
    encoders' outputs, and the UNet step noisy maps ``x_t`` at the DDIM time steps of the
    profile's default schedule, made by forward-noising the model's own one-shot (or first-step)
    estimate, so activation ranges match what the sampler feeds it.
    """
    import torch

    from avsal_deploy import engine as engines
    from avsal_deploy.data.preprocess import audio_inputs, envelope_inputs, gather_clips, preprocess_frames
    from avsal_deploy.pipeline import Predictor
    from avsal_deploy.windows import plan

    ort = engines.open(export_dir, backend="onnxruntime")
    reader = Predictor(ort)
    clips = list(clips)
    per_clip = max(1, max_windows // max(1, len(clips)))
    rng = np.random.default_rng(seed)
    steps = max(1, ort.config.diffusion.sampling_steps)
    timesteps = ort.scheduler.timesteps_for(steps)
    feeds: dict[str, list[dict[str, np.ndarray]]] = {name: [] for name in ort.specs}
    for clip in clips:
        video = reader.read(clip)
        pre = preprocess_frames(video.frames, ort.config)
        windows = plan(video.n_frames, ort.config, ort.variant).windows
        picks = sorted(rng.choice(len(windows), size=min(per_clip, len(windows)), replace=False))
        for i in picks:
            frames = gather_clips(pre, [windows[i]])
            audio = audio_inputs(video, [windows[i]], ort.config, ort.variant)
            envelope = envelope_inputs(video, [windows[i]], ort.config, ort.variant)
            cond = ort.condition(frames, audio, envelope)
            values = {"frames": frames, "audio": audio, **cond}
            if "unet_step" in ort.specs:
                noise = ort.make_noise(1, int(rng.integers(1 << 31)))
                x0 = cond["one_shot"] if "one_shot" in cond else ort.sample(cond, 1, noise)
                t = torch.tensor([int(rng.choice(timesteps))])
                x_t = ort.scheduler.add_noise(torch.from_numpy(x0), torch.from_numpy(noise), t)
                values.update(x_t=x_t.numpy().astype(np.float32), t=t.numpy().astype(np.float32))
            for name, spec in ort.specs.items():
                if name != "ddim":  # the unrolled loop is calibrated through its unet_step twin
                    feeds[name].append({n: values[n] for n in spec.input_names})
    ort.close()
    return feeds


def build_engine(
    onnx_path: Path,
    spec: ComponentSpec,
    plan_path: Path,
    options: BuildOptions = BuildOptions(),
    calibration: Iterable[Mapping[str, np.ndarray]] | None = None,
) -> Path:
    """Parse ``onnx_path``, build a serialized engine with the spec's min/opt/max profile."""
    trt = import_tensorrt()
    _require_cuda()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailableError(f"{onnx_path}: TensorRT cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if options.fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    if options.int8:
        if calibration is None:
            raise BackendUnavailableError(f"{spec.name}: INT8 needs calibration clips")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = make_calibrator(spec, calibration, options.calibration_cache)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in spec.trt_profile().items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    cache_blob = (
        options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.exists() else b""
    )
    timing_cache = config.create_timing_cache(cache_blob)
    config.set_timing_cache(timing_cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailableError(f"{onnx_path}: TensorRT engine build failed (see the log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    if options.timing_cache:
        options.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return plan_path


def build_engines(
    export_dir: Path,
    out_dir: Path | None = None,
    options: BuildOptions = BuildOptions(),
    calibration: Mapping[str, Iterable[Mapping[str, np.ndarray]]] | None = None,
) -> dict[str, Path]:
    """Build a plan per component of an export directory (its manifest.json) into ``out_dir``."""
    manifest = json.loads((export_dir / "manifest.json").read_text())
    out_dir = out_dir or export_dir
    plans: dict[str, Path] = {}
    for name, entry in manifest["components"].items():
        spec = ComponentSpec.from_manifest(name, entry)
        plans[name] = build_engine(
            export_dir / spec.onnx_file,
            spec,
            out_dir / f"{name}.plan",
            options,
            (calibration or {}).get(name),
        )
    return plans


class TensorRTEngine(Engine):
    """Runs the serialized plans of an export directory on one CUDA stream."""

    backend = "tensorrt"

    def __init__(
        self, directory: Path, config: Config, variant: str, specs: Mapping[str, ComponentSpec]
    ) -> None:
        trt = import_tensorrt()
        torch = _require_cuda()
        super().__init__(config, variant, specs)
        self._torch = torch
        self._stream = torch.cuda.Stream()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engines = {}
        self._contexts = {}
        for name in self.specs:
            plan = Path(directory) / f"{name}.plan"
            if not plan.exists():
                raise BackendUnavailableError(f"{plan}: missing; run `avsal build-engines` on a GPU machine")
            engine = runtime.deserialize_cuda_engine(plan.read_bytes())
            self._engines[name] = engine
            self._contexts[name] = engine.create_execution_context()

    def run(self, component: str, feeds: Mapping[str, np.ndarray]) -> Arrays:
        torch = self._torch
        spec = self.specs[component]
        ctx = self._contexts[component]
        keep = []
        for n in spec.input_names:
            x = torch.from_numpy(np.ascontiguousarray(feeds[n], np.float32)).cuda(non_blocking=True)
            keep.append(x)
            ctx.set_input_shape(n, tuple(x.shape))
            ctx.set_tensor_address(n, x.data_ptr())
        outs = {}
        for n in spec.output_names:
            y = torch.empty(tuple(ctx.get_tensor_shape(n)), dtype=torch.float32, device="cuda")
            ctx.set_tensor_address(n, y.data_ptr())
            outs[n] = y
        if not ctx.execute_async_v3(self._stream.cuda_stream):
            raise RuntimeError(f"TensorRT execution of {component!r} failed")
        self._stream.synchronize()
        return {n: y.cpu().numpy() for n, y in outs.items()}

    def close(self) -> None:
        self._contexts.clear()
        self._engines.clear()
