"""Native TensorRT: engine build (strongly typed, TensorRT 10 and 11) and a device-resident runtime.

Written against the real TensorRT and CUDA Python APIs (``tensorrt`` >= 10, ``cuda-python``
>= 12.4; the ``gpu`` extra) and **not run** on the machines this was built on: they have no GPU.
Every entry point checks for TensorRT and a CUDA device first and raises
:class:`~avsal_deploy.errors.BackendUnavailableError` ("needs an NVIDIA GPU") otherwise; both are
imported lazily, inside the functions that need them. No torch: device memory, streams, copies
and CUDA graphs come from ``cuda-python``, the DDIM update kernel from NVRTC.

Precision. TensorRT 11 removed weak typing (``BuilderFlag.FP16/INT8``, the implicit INT8
calibrators); every network is built strongly typed here (the ``STRONGLY_TYPED`` creation flag on
10.x, the only mode on 11.x), so the precision is the ONNX graph's own: fp32 as exported, fp16 from
ModelOpt AutoCast, INT8 from explicit Q/DQ nodes (:mod:`avsal_deploy.export.quantize` makes both,
on any machine). One build path serves TensorRT 10 and 11.

Runtime (:class:`TensorRTEngine`):

- one CUDA stream per engine: host-to-device copies, every ``execute_async_v3`` and the
  device-to-host copies are ordered on it;
- device (and pinned host) buffers are allocated once per component and batch size, then reused;
- the encoders' and the fusion decoder's outputs stay on the device and are bound directly as the
  UNet step's inputs; the DDIM loop runs on the device (an NVRTC kernel applies the update between
  steps), so only the noise goes in and the final map comes out: no host round trip per step;
- tensor dtypes are read from the engine (an fp16 I/O graph gets fp16 buffers);
- ``cuda_graph=True`` captures the UNet step's enqueue once per batch size and replays it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from avsal_deploy.config import Config
from avsal_deploy.diffusion import normalize_maps
from avsal_deploy.engine.base import Arrays, Engine
from avsal_deploy.engine.sources import resolve_export
from avsal_deploy.errors import BackendUnavailableError
from avsal_deploy.specs import CONDS, ENVELOPE, SCALES, ComponentSpec, read_manifest

GPU_HINT = (
    "needs an NVIDIA GPU with TensorRT 10 or 11 and cuda-python (pip install 'avsal-deploy[gpu]'; "
    "TensorRT comes from NVIDIA's package index)"
)
#: TensorRT majors this module is written for.
SUPPORTED_MAJORS = (10, 11)

_DDIM_KERNEL = r"""
extern "C" __global__ void ddim_update(float* x, const float* x0, float c_x0, float c_xt, int n, int clip) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) {
        float e = clip ? fminf(fmaxf(x0[i], 0.0f), 1.0f) : x0[i];  // clip_x0, as diffusion.ddim_sample
        x[i] = c_x0 * e + c_xt * x[i];
    }
}
"""


def import_tensorrt() -> Any:
    """The ``tensorrt`` module (10.x or 11.x), or BackendUnavailableError."""
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailableError(f"TensorRT is not installed: the tensorrt backend {GPU_HINT}") from exc
    major = int(str(trt.__version__).split(".")[0])
    if major not in SUPPORTED_MAJORS:
        raise BackendUnavailableError(
            f"TensorRT {trt.__version__}: the tensorrt backend supports {SUPPORTED_MAJORS} majors only"
        )
    return trt


def _cudart() -> Any:
    """``cuda-python``'s runtime bindings with a visible device, or BackendUnavailableError."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart  # cuda-python 12.x layout
        except ImportError as exc:
            raise BackendUnavailableError(
                f"cuda-python is not installed: the tensorrt backend {GPU_HINT}"
            ) from exc
    err, count = cudart.cudaGetDeviceCount()
    if int(err) != 0 or not count:
        raise BackendUnavailableError(f"no CUDA device visible ({err}): the tensorrt backend {GPU_HINT}")
    return cudart


def require_gpu() -> None:
    """Raise BackendUnavailableError unless TensorRT and a CUDA device are both here."""
    import_tensorrt()
    _cudart()


def _check(result: Any) -> Any:
    """Unwrap a cuda-python ``(error, value...)`` tuple, raising on a CUDA error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(err) != 0:
        raise RuntimeError(f"CUDA call failed: {err}")
    return values[0] if len(values) == 1 else (tuple(values) if values else None)


# ----------------------------------------------------------------------------- build
@dataclass(frozen=True)
class BuildOptions:
    workspace_bytes: int = 4 << 30
    timing_cache: Path | None = None  # read if present, written back after the build
    builder_optimization_level: int = 3


def _network_flags(trt: Any) -> int:
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 0 if flag is None else 1 << int(flag)  # 11.x: every network is strongly typed


def build_engine(
    onnx_path: Path, spec: ComponentSpec, plan_path: Path, options: BuildOptions = BuildOptions()
) -> Path:
    """Parse ``onnx_path`` (fp32, fp16 or Q/DQ INT8 graph) into a strongly typed network and build
    a serialized engine with the spec's min/opt/max batch profile."""
    trt = import_tensorrt()
    _cudart()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(_network_flags(trt))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise BackendUnavailableError(f"{onnx_path}: TensorRT cannot parse the graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    config.builder_optimization_level = options.builder_optimization_level
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in spec.trt_profile().items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    blob = (
        options.timing_cache.read_bytes() if options.timing_cache and options.timing_cache.exists() else b""
    )
    config.set_timing_cache(config.create_timing_cache(blob), ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BackendUnavailableError(f"{onnx_path}: TensorRT engine build failed (see the log above)")
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    plan_path.write_bytes(bytes(serialized))
    if options.timing_cache:
        options.timing_cache.write_bytes(bytes(config.get_timing_cache().serialize()))
    return plan_path


def build_engines(
    export_dir: Path, out_dir: Path | None = None, options: BuildOptions = BuildOptions()
) -> dict[str, Path]:
    """A plan per component of an export directory (its manifest) into ``out_dir`` (default: beside it).

    The export's precision is its graphs' (``avsal quantize`` writes fp16 / INT8 exports)."""
    import_tensorrt()
    _cudart()
    manifest = json.loads((export_dir / "manifest.json").read_text())
    out_dir = out_dir or export_dir
    plans: dict[str, Path] = {}
    for name, entry in manifest["components"].items():
        spec = ComponentSpec.from_manifest(name, entry)
        plans[name] = build_engine(export_dir / spec.onnx_file, spec, out_dir / f"{name}.plan", options)
    return plans


# ----------------------------------------------------------------------------- runtime
class _Buffers:
    """Device and pinned host buffers of one component at one batch size (allocated once)."""

    def __init__(self, cudart: Any, engine: Any, ctx: Any, spec: ComponentSpec, batch: int, trt: Any) -> None:
        self.cudart = cudart
        self.device: dict[str, int] = {}
        self.host: dict[str, np.ndarray] = {}
        self._host_ptrs: list[int] = []
        for t in (*spec.inputs, *spec.outputs):
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(t.name)))
            shape = t.full_shape(batch)
            nbytes = int(np.prod(shape)) * dtype.itemsize
            self.device[t.name] = int(_check(cudart.cudaMalloc(nbytes)))
            ptr = int(_check(cudart.cudaMallocHost(nbytes)))
            self._host_ptrs.append(ptr)
            self.host[t.name] = (
                np.ctypeslib.as_array((np.ctypeslib.ctypes.c_byte * nbytes).from_address(ptr))
                .view(dtype)
                .reshape(shape)
            )
            if t in spec.inputs:
                ctx.set_input_shape(t.name, shape)
            ctx.set_tensor_address(t.name, self.device[t.name])

    def free(self) -> None:
        for ptr in self.device.values():
            self.cudart.cudaFree(ptr)
        for ptr in self._host_ptrs:
            self.cudart.cudaFreeHost(ptr)


class TensorRTEngine(Engine):
    """Runs the serialized plans of an export directory on one CUDA stream (see the module docstring)."""

    backend = "tensorrt"

    def __init__(
        self,
        directory: Path,
        config: Config,
        variant: str,
        specs: Mapping[str, ComponentSpec],
        cuda_graph: bool = False,
    ) -> None:
        trt = import_tensorrt()
        cudart = _cudart()
        super().__init__(config, variant, specs)
        self._trt, self._cudart = trt, cudart
        _check(cudart.cudaFree(0))  # initialise the primary context
        self._stream = _check(cudart.cudaStreamCreateWithFlags(cudart.cudaStreamNonBlocking))
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self._engines: dict[str, Any] = {}
        self._contexts: dict[str, Any] = {}
        for name in self.specs:
            plan = Path(directory) / f"{name}.plan"
            if not plan.exists():
                raise BackendUnavailableError(f"{plan}: missing; run `avsal build-engines` on a GPU machine")
            engine = runtime.deserialize_cuda_engine(plan.read_bytes())
            self._engines[name] = engine
            self._contexts[name] = engine.create_execution_context()
        self._buffers: dict[tuple[str, int], _Buffers] = {}
        self._graphs: dict[int, Any] = {}
        self._cuda_graph = cuda_graph
        self._kernel = self._compile_ddim_kernel() if "unet_step" in self.specs else None

    # ------------------------------------------------------------------ plumbing
    def _bufs(self, component: str, batch: int) -> _Buffers:
        key = (component, batch)
        if key not in self._buffers:
            spec = self.specs[component]
            self._buffers[key] = _Buffers(
                self._cudart, self._engines[component], self._contexts[component], spec, batch, self._trt
            )
        buf = self._buffers[key]
        ctx = self._contexts[component]
        for t in self.specs[component].inputs:  # rebind: another batch size may have been used last
            ctx.set_input_shape(t.name, t.full_shape(batch))
        for name, ptr in buf.device.items():
            ctx.set_tensor_address(name, ptr)
        return buf

    def _upload(self, buf: _Buffers, name: str, array: np.ndarray) -> None:
        host = buf.host[name]
        np.copyto(host, np.asarray(array, host.dtype).reshape(host.shape))
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        _check(
            self._cudart.cudaMemcpyAsync(buf.device[name], host.ctypes.data, host.nbytes, kind, self._stream)
        )

    def _device_copy(self, dst: int, src: int, nbytes: int) -> None:
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        _check(self._cudart.cudaMemcpyAsync(dst, src, nbytes, kind, self._stream))

    def _download(self, buf: _Buffers, name: str) -> np.ndarray:
        host = buf.host[name]
        kind = self._cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        _check(
            self._cudart.cudaMemcpyAsync(host.ctypes.data, buf.device[name], host.nbytes, kind, self._stream)
        )
        return host

    def _sync(self) -> None:
        _check(self._cudart.cudaStreamSynchronize(self._stream))

    def _execute(self, component: str) -> None:
        if not self._contexts[component].execute_async_v3(int(self._stream)):
            raise RuntimeError(f"TensorRT execution of {component!r} failed")

    def _bind(self, component: str, batch: int, sources: Mapping[str, int]) -> _Buffers:
        """Buffers of ``component`` with the inputs named in ``sources`` read from other
        components' device buffers (no copy: the addresses are bound directly)."""
        buf = self._bufs(component, batch)
        ctx = self._contexts[component]
        for name, ptr in sources.items():
            ctx.set_tensor_address(name, ptr)
        return buf

    # ------------------------------------------------------------------ protocol
    def run(self, component: str, feeds: Mapping[str, np.ndarray]) -> Arrays:
        spec = self.specs[component]
        batch = int(np.asarray(feeds[spec.input_names[0]]).shape[0])
        buf = self._bufs(component, batch)
        for name in spec.input_names:
            self._upload(buf, name, feeds[name])
        self._execute(component)
        outs = {n: self._download(buf, n) for n in spec.output_names}
        self._sync()
        return {n: np.array(o, np.float32) for n, o in outs.items()}

    def _condition_device(
        self, frames: np.ndarray, audio: np.ndarray, envelope: np.ndarray | None
    ) -> tuple[dict[str, int], _Buffers | None]:
        """Encoders and fusion on the device: the device address of every UNet input by name, and
        the fusion buffers (for the one-shot map)."""
        batch = int(frames.shape[0])
        video = self._bufs("video_encoder", batch)
        self._upload(video, "frames", frames)
        self._execute("video_encoder")
        addresses = {n: video.device[n] for n in self.specs["video_encoder"].output_names}
        if "audio_encoder" in self.specs:  # not for a visual-only family
            aud = self._bufs("audio_encoder", batch)
            self._upload(aud, "audio", audio)
            self._execute("audio_encoder")
            addresses["audio_feat"] = aud.device["audio_feat"]
        fusion = None
        if "fusion" in self.specs:
            extra = {"frames": video.device["frames"]} if "frames" in self.specs["fusion"].input_names else {}
            wanted = self.specs["fusion"].input_names
            fusion = self._bind(
                "fusion", batch, {k: v for k, v in {**addresses, **extra}.items() if k in wanted}
            )
            if ENVELOPE in self.specs["fusion"].input_names:
                if envelope is None:
                    raise BackendUnavailableError("the fusion decoder needs the per-frame audio envelope")
                self._upload(fusion, ENVELOPE, envelope)
            self._execute("fusion")
            addresses.update({c: fusion.device[c] for c in self.specs["fusion"].output_names})
        elif CONDS[0] in self.specs["unet_step"].input_names:  # our diffsal: the video features
            addresses.update({c: video.device[v] for c, v in zip(CONDS, SCALES, strict=True)})
        return addresses, fusion

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
        """Maps [B,1,H,W]: the whole window on the device, the DDIM loop included."""
        from avsal_deploy.config import resolve_steps

        n = resolve_steps(self.config, self.variant, steps)
        batch = int(frames.shape[0])
        addresses, fusion = self._condition_device(frames, audio, envelope)
        if n == 0:
            assert fusion is not None
            out = np.array(self._download(fusion, "one_shot"), np.float32)
            self._sync()
            return out
        if noise is None:
            noise = self.make_noise(batch, seed)
        bound = [n for n in self.specs["unet_step"].input_names if n not in ("x_t", "t")]
        unet = self._bind("unet_step", batch, {k: addresses[k] for k in bound})
        self._upload(unet, "x_t", noise)
        timesteps = self.scheduler.timesteps_for(n)
        size = int(np.prod(self.specs["unet_step"].outputs[0].full_shape(batch)))
        for i, t in enumerate(timesteps):
            t_next = timesteps[i + 1] if i + 1 < len(timesteps) else None
            self._upload(unet, "t", np.full((batch,), float(t), np.float32))
            self._unet_step(batch)
            if t_next is None:  # the last step returns the x0 estimate
                break
            c_x0, c_xt = self.scheduler.step_coefficients(t, t_next)
            self._ddim_update(unet.device["x_t"], unet.device["x0"], c_x0, c_xt, size)
        x0 = np.array(self._download(unet, "x0"), np.float32)
        self._sync()
        return normalize_maps(x0)

    # ------------------------------------------------------------------ DDIM on the device
    def _unet_step(self, batch: int) -> None:
        if not self._cuda_graph:
            self._execute("unet_step")
            return
        cudart = self._cudart
        graph = self._graphs.get(batch)
        if graph is None:
            self._execute("unet_step")  # warm-up outside capture (TensorRT allocates lazily)
            mode = cudart.cudaStreamCaptureMode.cudaStreamCaptureModeGlobal
            _check(cudart.cudaStreamBeginCapture(self._stream, mode))
            self._execute("unet_step")
            captured = _check(cudart.cudaStreamEndCapture(self._stream))
            graph = _check(cudart.cudaGraphInstantiate(captured, 0))
            self._graphs[batch] = graph
        _check(cudart.cudaGraphLaunch(graph, self._stream))

    def _compile_ddim_kernel(self) -> Any:
        from cuda.bindings import driver, nvrtc

        prog = _check(nvrtc.nvrtcCreateProgram(_DDIM_KERNEL.encode(), b"ddim_update.cu", 0, [], []))
        _check(nvrtc.nvrtcCompileProgram(prog, 1, [b"--std=c++17"]))
        size = _check(nvrtc.nvrtcGetPTXSize(prog))
        ptx = b" " * size
        _check(nvrtc.nvrtcGetPTX(prog, ptx))
        module = _check(driver.cuModuleLoadData(ptx))
        return _check(driver.cuModuleGetFunction(module, b"ddim_update"))

    def _ddim_update(self, x: int, x0: int, c_x0: float, c_xt: float, n: int) -> None:
        """``x = c_x0 * clip(x0, 0, 1) + c_xt * x`` on the stream (diffusion.DDIMScheduler.step;
        ``x0`` unclipped when the config's ``diffusion.clip_x0`` is off)."""
        import ctypes

        from cuda.bindings import driver

        args = [
            ctypes.c_void_p(x),
            ctypes.c_void_p(x0),
            ctypes.c_float(c_x0),
            ctypes.c_float(c_xt),
            ctypes.c_int(n),
            ctypes.c_int(1 if self.config.diffusion.clip_x0 else 0),
        ]
        pointers = (ctypes.c_void_p * len(args))(*[ctypes.addressof(a) for a in args])
        threads = 256
        _check(
            driver.cuLaunchKernel(
                self._kernel,
                (n + threads - 1) // threads,
                1,
                1,
                threads,
                1,
                1,
                0,
                int(self._stream),
                ctypes.addressof(pointers),
                0,
            )
        )

    def close(self) -> None:
        for graph in self._graphs.values():
            self._cudart.cudaGraphExecDestroy(graph)
        for buf in self._buffers.values():
            buf.free()
        self._graphs.clear()
        self._buffers.clear()
        self._contexts.clear()
        self._engines.clear()


def open_engine(source: str | os.PathLike[str] | None = None, **options: Any) -> TensorRTEngine:
    """The TensorRT engine of an export directory holding ``<component>.plan`` files
    (``avsal build-engines``); ``options``: ``cuda_graph``."""
    require_gpu()
    directory = resolve_export(source)
    manifest, config, specs = read_manifest(directory)
    return TensorRTEngine(directory, config, manifest["variant"], specs, **options)
