"""Latency of each component and of whole windows, PyTorch eager vs ONNX Runtime, side by side.

Run with ``make bench`` (or ``pytest benchmarks --benchmark-enable``). Compare the groups'
rows: the ratio between engines is measured in one run on one machine, which is what matters;
absolute numbers depend on the machine.
"""

from __future__ import annotations

import numpy as np
import pytest

from avsal_deploy import engine as engines
from avsal_deploy.engine.eager import TorchEngine
from avsal_deploy.specs import sample_window

COMPONENTS = ("video_encoder", "audio_encoder", "fusion", "unet_step")


@pytest.fixture(scope="module")
def pair(small_model, small_export):
    ort = engines.open(small_export, "onnxruntime")
    return {"torch": TorchEngine(small_model, ort.specs), "onnxruntime": ort}


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("component", COMPONENTS)
def test_component_latency(benchmark, pair, component, backend) -> None:
    eng = pair[backend]
    spec = eng.specs[component]
    feeds = spec.sample_inputs(1)
    benchmark.group = f"component {component} (small, batch 1)"
    benchmark.extra_info["backend"] = backend
    out = benchmark(eng.run, component, feeds)
    assert set(out) == set(spec.output_names)


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
@pytest.mark.parametrize("steps", [0, 1, 4])
def test_window_latency(benchmark, pair, steps, backend) -> None:
    """One window end to end (encoders + fusion once, ``steps`` UNet calls): the per-frame cost
    at stride 1."""
    eng = pair[backend]
    c = eng.config
    w = sample_window(eng.specs, batch=1, seed=0)
    noise = eng.make_noise(1, 0)
    benchmark.group = f"window (small, {steps} DDIM steps)"
    benchmark.extra_info["backend"] = backend
    out = benchmark(eng.predict_window, w["frames"], w["audio"], steps, noise, envelope=w.get("envelope"))
    assert out.shape == (1, 1, c.video.height, c.video.width)


@pytest.mark.parametrize("form", ["fused", "loop"])
def test_fused_ddim_graph_vs_loop(benchmark, small_export, form) -> None:
    """4 DDIM steps as one unrolled graph (one engine call) vs the loop over the UNet step."""
    eng = engines.open(small_export, "onnxruntime")
    if form == "loop":
        eng.specs.pop("ddim")
    w = sample_window(eng.specs, batch=1, seed=0)
    cond = eng.condition(w["frames"], w["audio"], w.get("envelope"))
    noise = eng.make_noise(1, 0)
    benchmark.group = "sampler only (small, 4 steps, onnxruntime)"
    benchmark.extra_info["form"] = form
    out = benchmark(eng.sample, cond, 4, noise)
    reference = engines.open(small_export, "onnxruntime")
    reference.specs.pop("ddim")
    assert np.abs(out - reference.sample(cond, 4, noise)).max() < 1e-4
