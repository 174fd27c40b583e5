"""Peak memory per engine and profile: one window (DDIM-4) in a fresh process, peak RSS after the
imports, after opening the engine, and after the window; and ONNX Runtime's memory after a stream
server's mix of window batches, with and without its memory pattern."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from avsal_deploy.bench.exports import bench_export, bench_profiles

# Peak = VmHWM, which a forked child inherits from its parent (ru_maxrss too, across exec): it is
# reset through /proc/self/clear_refs ("5") first, so the figure is this process's own.
CHILD = r"""
import json, sys
def rss():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
open("/proc/self/clear_refs", "w").write("5")
from avsal_deploy import engine as engines
from avsal_deploy.specs import sample_window
if sys.argv[2] == "torch":
    import torch  # imported before the baseline, as the engine needs it
base = rss()
eng = engines.open(sys.argv[1], sys.argv[2])
opened = rss()
w = sample_window(eng.specs, batch=1, seed=0)
eng.predict_window(w["frames"], w["audio"], 4, eng.make_noise(1, 0), envelope=w.get("envelope"))
print(json.dumps({"imports_mb": round(base, 1), "engine_mb": round(opened, 1), "peak_rss_mb": round(rss(), 1)}))
"""


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
@pytest.mark.parametrize("profile", bench_profiles())
def test_peak_memory(benchmark, profile, backend) -> None:
    export = bench_export(profile)

    def run() -> dict:
        out = subprocess.run(
            [sys.executable, "-c", CHILD, str(export), backend], capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.group = f"peak memory, one DDIM-4 window ({profile})"
    benchmark.extra_info.update(metric="memory", profile=profile, backend=backend, **result)
    assert result["peak_rss_mb"] >= result["engine_mb"] >= result["imports_mb"] > 0


#: Window batches as a stream server meets them (1 to 8 streams ready at once), twice over.
MIXED_BATCHES = (8, 1, 5, 3, 7, 2, 6, 4) * 2

MIXED_CHILD = r"""
import json, sys, time
import numpy as np
from avsal_deploy import engine as engines
from avsal_deploy.specs import sample_window
def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
eng = engines.open(sys.argv[1], "onnxruntime", memory_pattern=sys.argv[2] == "on")
batches = json.loads(sys.argv[3])
w = sample_window(eng.specs, batch=max(batches), seed=0)
noise = eng.make_noise(max(batches), 0)
envelope = w.get("envelope")
opened = anon()
seconds = []
for b in batches:
    start = time.perf_counter()
    eng.predict_window(w["frames"][:b], w["audio"][:b], 4, noise[:b], envelope=None if envelope is None else envelope[:b])
    seconds.append((time.perf_counter() - start) / b)
half = len(batches) // 2  # the first pass grows the arena; the second is timed
print(json.dumps({"engine_anon_mb": round(opened, 1), "anon_mb": round(anon(), 1),
                  "s_per_frame": round(float(np.median(seconds[half:])), 4)}))
"""


@pytest.mark.parametrize("memory_pattern", ["off", "on"])
def test_mixed_batches_memory_pattern(benchmark, memory_pattern) -> None:
    """ONNX Runtime with and without its memory pattern (off is the package's default: see
    ``engine.ort.session_options``) over the window batches of a stream server (1-8 windows,
    DDIM-4, small profile), in a fresh process each: anonymous memory after the batches and the
    median seconds per frame of the second pass."""
    export = bench_export("small")

    def run() -> dict:
        argv = [sys.executable, "-c", MIXED_CHILD, str(export), memory_pattern, json.dumps(MIXED_BATCHES)]
        out = subprocess.run(argv, capture_output=True, text=True, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    result = benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.group = "window batches 1-8, ONNX Runtime memory pattern (small)"
    benchmark.extra_info.update(
        metric="memory_pattern", profile="small", memory_pattern=memory_pattern, **result
    )
    assert result["anon_mb"] >= result["engine_anon_mb"] > 0 and result["s_per_frame"] > 0
