"""Peak memory per engine and profile: one window (DDIM-4) in a fresh process, peak RSS after the
imports, after opening the engine, and after the window."""

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
