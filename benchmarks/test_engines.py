"""Latency of each component and of whole windows, PyTorch eager vs ONNX Runtime, side by side,
per profile (``AVSAL_BENCH_PROFILES``), with each case's GEMM-class GFLOP in ``extra_info`` so
the report can state the achieved FLOP/s as a share of the machine's GEMM rate (test_machine.py).

Run with ``make bench`` or ``avsal bench --out DIR``. Ratios between engines are measured in
one run on one machine; absolute numbers depend on the machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from avsal_deploy import engine as engines
from avsal_deploy.bench.exports import bench_export, bench_profiles
from avsal_deploy.bench.flops import count_flops
from avsal_deploy.specs import sample_window

COMPONENTS = ("video_encoder", "audio_encoder", "fusion", "unet_step")
PROFILES = bench_profiles()
# torch eager and ONNX Runtime in process; Triton = the python-onnxruntime repository over gRPC
# (components called from the client, the DDIM loop client-side); TensorRT skips without a GPU.
BACKENDS = ["torch", "onnxruntime", "triton", "tensorrt"]
_FLOPS: dict[tuple[str, str, int], float] = {}


def component_gflop(profile: str, component: str, batch: int = 1) -> float:
    key = (profile, component, batch)
    if key not in _FLOPS:
        eng = engines.open(bench_export(profile), "onnxruntime")
        path = eng.directory / eng.specs[component].onnx_file
        _FLOPS[key] = count_flops(path, batch).gflop
    return _FLOPS[key]


_FEEDS: dict[str, dict[str, dict[str, np.ndarray]]] = {}


def component_feeds(profile: str) -> dict[str, dict[str, np.ndarray]]:
    """Each component's inputs as a real window produces them (the sample window's frames and
    audio through the ONNX Runtime encoders and fusion; x_t forward-noised at t = 750). Standard
    normal inputs are no substitute: in torch eager they drive some activations into denormal
    floats, which the CPU handles 20-30x slower (measured: the tiny video encoder 1.1 s vs 0.04 s)."""
    if profile not in _FEEDS:
        eng = engines.open(bench_export(profile), "onnxruntime")
        w = sample_window(eng.specs, batch=1, seed=0)
        values = {**w, **eng.condition(w["frames"], w["audio"], w.get("envelope"))}
        t = 750
        a = eng.scheduler.alpha_cumprod(t)
        x0 = values.get("one_shot", np.zeros((1, *eng.config.map_shape()), np.float32))
        noise = eng.make_noise(1, 0)
        values["x_t"] = (np.sqrt(a) * x0 + np.sqrt(1.0 - a) * noise).astype(np.float32)
        values["t"] = np.array([t], np.float32)
        values["noise"] = noise
        _FEEDS[profile] = {n: {k: values[k] for k in spec.input_names} for n, spec in eng.specs.items()}
    return _FEEDS[profile]


def window_gflop(profile: str, steps: int, batch: int = 1) -> float:
    """Encoders and fusion once, then ``steps`` UNet steps (the loop the engines run)."""
    once = sum(component_gflop(profile, c, batch) for c in COMPONENTS[:3])
    return once + steps * component_gflop(profile, "unet_step", batch)


@pytest.fixture(scope="module")
def engine_for(profile_engines, triton_servers):
    """(profile, backend) -> engine, skipping with the reason where a backend cannot run."""
    from avsal_deploy.errors import BackendUnavailableError
    from avsal_deploy.serving.client import open_triton

    cache: dict[tuple[str, str], engines.Engine] = {}

    def get(profile: str, backend: str) -> engines.Engine:
        key = (profile, backend)
        if key in cache:
            return cache[key]
        if backend in ("torch", "onnxruntime"):
            cache[key] = profile_engines(profile)[backend]
        elif backend == "triton":
            if profile == "paper":
                pytest.skip("Triton at the paper profile: seconds per window, outside the report's budget")
            server = triton_servers(profile)
            cache[key] = open_triton(
                server.grpc_url, bench_export(profile), protocol="grpc", server_loop=False
            )
        else:
            try:
                from avsal_deploy.engine.trt import build_engines, require_gpu

                require_gpu()
            except BackendUnavailableError as exc:
                pytest.skip(f"tensorrt: {exc}")
            build_engines(bench_export(profile))
            cache[key] = engines.open(bench_export(profile), "tensorrt")
        return cache[key]

    return get


def _measure(benchmark, profile: str, fn, *args, **kwargs):
    """The paper profile's windows take seconds: a few rounds, else pytest-benchmark's calibration."""
    if profile == "paper":
        return benchmark.pedantic(fn, args=args, kwargs=kwargs, rounds=3, warmup_rounds=1, iterations=1)
    return benchmark(fn, *args, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("component", COMPONENTS)
@pytest.mark.parametrize("profile", PROFILES)
def test_component_latency(benchmark, engine_for, profile, component, backend) -> None:
    eng = engine_for(profile, backend)
    spec = eng.specs[component]
    feeds = component_feeds(profile)[component]
    benchmark.group = f"component {component} ({profile}, batch 1)"
    benchmark.extra_info.update(
        metric="component",
        profile=profile,
        component=component,
        backend=backend,
        batch=1,
        gflop=component_gflop(profile, component),
    )
    out = _measure(benchmark, profile, eng.run, component, feeds)
    assert set(out) == set(spec.output_names)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("steps", [0, 1, 4])
@pytest.mark.parametrize("profile", PROFILES)
def test_window_latency(benchmark, engine_for, profile, steps, backend) -> None:
    """One window end to end (encoders + fusion once, ``steps`` UNet calls): the per-frame cost
    at stride 1."""
    eng = engine_for(profile, backend)
    c = eng.config
    w = sample_window(eng.specs, batch=1, seed=0)
    noise = eng.make_noise(1, 0)
    benchmark.group = f"window ({profile}, {steps} DDIM steps)"
    benchmark.extra_info.update(
        metric="window",
        profile=profile,
        backend=backend,
        steps=steps,
        batch=1,
        gflop=window_gflop(profile, steps),
    )
    out = _measure(
        benchmark,
        profile,
        eng.predict_window,
        w["frames"],
        w["audio"],
        steps,
        noise,
        envelope=w.get("envelope"),
    )
    assert out.shape == (1, 1, c.video.height, c.video.width)


@pytest.mark.parametrize("batch", [1, 2, 4, 8])
@pytest.mark.parametrize("profile", PROFILES)
def test_window_latency_vs_batch(benchmark, profile_engines, profile, batch) -> None:
    """Windows of ``batch`` streams at once through ONNX Runtime (DDIM-4): latency and per-frame cost."""
    if profile == "paper" and batch > 2:
        pytest.skip("paper profile: batches above 2 take minutes per round on 2 cores")
    eng = profile_engines(profile)["onnxruntime"]
    w = sample_window(eng.specs, batch=batch, seed=0)
    noise = eng.make_noise(batch, 0)
    benchmark.group = f"window vs batch ({profile}, onnxruntime, 4 DDIM steps)"
    benchmark.extra_info.update(
        metric="window_batch",
        profile=profile,
        backend="onnxruntime",
        steps=4,
        batch=batch,
        gflop=window_gflop(profile, 4, batch),
    )
    out = _measure(
        benchmark, profile, eng.predict_window, w["frames"], w["audio"], 4, noise, envelope=w.get("envelope")
    )
    assert out.shape[0] == batch


@pytest.mark.parametrize("form", ["fused", "loop"])
def test_fused_ddim_graph_vs_loop(benchmark, small_export, form) -> None:
    """4 DDIM steps as one unrolled graph (one engine call) vs the loop over the UNet step."""
    loop = engines.open(small_export, "onnxruntime")
    loop.specs.pop("ddim")
    eng = loop if form == "loop" else engines.open(small_export, "onnxruntime")
    w = sample_window(eng.specs, batch=1, seed=0)
    cond = eng.condition(w["frames"], w["audio"], w.get("envelope"))
    noise = eng.make_noise(1, 0)
    benchmark.group = "sampler only (small, 4 steps, onnxruntime)"
    benchmark.extra_info.update(metric="sampler", form=form, profile="small")
    out = benchmark(eng.sample, cond, 4, noise)
    assert np.abs(out - loop.sample(cond, 4, noise)).max() < 1e-4
