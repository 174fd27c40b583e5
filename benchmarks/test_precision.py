"""Static INT8 (Q/DQ, calibrated on clips) against fp32 through ONNX Runtime on this CPU: window
latency side by side, and the accuracy cost as the per-frame CC of the INT8 maps to the fp32 maps
over the sample clip and a few synthetic clips (calibration clips are never scored). FP16 and
INT8 through TensorRT need an NVIDIA GPU (skipped here, with the reason).
"""

from __future__ import annotations

import pytest

from avsal_deploy import engine as engines
from avsal_deploy.bench.exports import bench_export, bench_profiles, quick
from avsal_deploy.bench.precision import int8_export, map_agreement, synthetic_clips
from avsal_deploy.config import resolve_steps
from avsal_deploy.errors import BackendUnavailableError
from avsal_deploy.specs import sample_window

PROFILES = [p for p in bench_profiles() if p != "tiny"] or bench_profiles()


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("precision-clips")
    return {
        "calibration": synthetic_clips(root, [100, 101]),
        "score": synthetic_clips(root, [0] if quick() else [0, 1, 2, 3]),
    }


@pytest.fixture(scope="session")
def precision_engines(clips, tmp_path_factory):
    cache: dict[str, dict[str, engines.Engine]] = {}

    def get(profile: str) -> dict[str, engines.Engine]:
        if profile not in cache:
            export = bench_export(profile)
            windows = 8 if profile == "paper" else 16
            int8 = int8_export(
                export, tmp_path_factory.mktemp(f"int8-{profile}"), clips["calibration"], windows
            )
            cache[profile] = {
                "fp32": engines.open(export, "onnxruntime"),
                "int8": engines.open(int8, "onnxruntime"),
            }
        return cache[profile]

    return get


@pytest.mark.parametrize("precision", ["fp32", "int8"])
@pytest.mark.parametrize("profile", PROFILES)
def test_window_latency_int8_vs_fp32(benchmark, precision_engines, clips, profile, precision) -> None:
    pair = precision_engines(profile)
    eng = pair[precision]
    steps = resolve_steps(eng.config, eng.variant, None)
    w = sample_window(eng.specs, batch=1, seed=0)
    noise = eng.make_noise(1, 0)
    benchmark.group = f"window ({profile}, onnxruntime, {steps} DDIM steps): int8 vs fp32"
    benchmark.extra_info.update(metric="precision", profile=profile, precision=precision, steps=steps)
    if precision == "int8":
        # The paper profile's windows take seconds on 2 cores: one clip, every 4th frame's window.
        score = clips["score"][:1] if profile == "paper" else clips["score"]
        stride = 4 if profile == "paper" else None
        benchmark.extra_info.update(map_agreement(pair["fp32"], eng, score, stride=stride))
    if profile == "paper":
        out = benchmark.pedantic(
            eng.predict_window,
            args=(w["frames"], w["audio"], steps, noise),
            kwargs={"envelope": w.get("envelope")},
            rounds=3,
            warmup_rounds=1,
        )
    else:
        out = benchmark(eng.predict_window, w["frames"], w["audio"], steps, noise, envelope=w.get("envelope"))
    assert out.shape[0] == 1


@pytest.mark.parametrize("precision", ["fp16", "int8"])
@pytest.mark.parametrize("profile", PROFILES)
def test_tensorrt_precision(
    benchmark, precision_engines, clips, tmp_path_factory, profile, precision
) -> None:
    """TensorRT engines of the FP16 (ModelOpt AutoCast) or INT8 (Q/DQ) export, strongly typed, at
    batch 8 (batched streams): frames/s and the CC of their maps to fp32 ONNX Runtime. Needs an
    NVIDIA GPU; skipped here with the reason."""
    from avsal_deploy.engine.trt import build_engines, require_gpu
    from avsal_deploy.export.quantize import quantize_export

    try:
        require_gpu()
    except BackendUnavailableError as exc:
        pytest.skip(f"TensorRT {precision}: {exc}")
    export = bench_export(profile)
    if precision == "fp16":
        directory = quantize_export(export, tmp_path_factory.mktemp(f"fp16-{profile}"), "fp16")
    else:
        directory = int8_export(export, tmp_path_factory.mktemp(f"trt-int8-{profile}"), clips["calibration"])
    build_engines(directory)
    eng = engines.open(directory, "tensorrt")
    batch = 8
    w = sample_window(eng.specs, batch=batch, seed=0)
    noise = eng.make_noise(batch, 0)
    benchmark.group = f"TensorRT window ({profile}, batch {batch}, 4 DDIM steps)"
    benchmark.extra_info.update(metric="tensorrt", profile=profile, precision=precision, batch=batch, steps=4)
    benchmark.extra_info.update(
        map_agreement(precision_engines(profile)["fp32"], eng, clips["score"], steps=4)
    )
    out = benchmark(eng.predict_window, w["frames"], w["audio"], 4, noise, envelope=w.get("envelope"))
    assert out.shape[0] == batch
