"""Triton under load, measured with Triton's own tool, ``perf_analyzer``: p50/p95/p99 latency and
throughput vs concurrency for ``avsal_pipeline`` (one preprocessed window per request) and for
the sequence model ``avsal_stream`` (each concurrent stream a 16-frame sequence of raw frames).
The binary comes from the last tritonclient wheel that ships it (see avsal_deploy.bench.perf).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from avsal_deploy import engine as engines
from avsal_deploy.bench.exports import bench_export, bench_profiles, quick
from avsal_deploy.bench.perf import run_perf_analyzer, write_input_data
from avsal_deploy.config import resolve_steps
from avsal_deploy.errors import BackendUnavailableError
from avsal_deploy.specs import sample_window

PROFILES = ["small"] if quick() else [p for p in ("tiny", "small") if p in bench_profiles("tiny,small")]
CONCURRENCY = (1, 2, 4)
SEQUENCE = 16


def _pipeline_data(profile: str, path):
    eng = engines.open(bench_export(profile), "onnxruntime")
    w = sample_window(eng.specs, batch=1, seed=0)
    steps = np.array([resolve_steps(eng.config, eng.variant, None)], np.int32)
    return write_input_data(path, [[{**w, "steps": steps}]])


def _stream_data(path, streams: int = max(CONCURRENCY)):
    rng = np.random.default_rng(0)
    sequences = []
    for _ in range(streams):
        frames = rng.integers(0, 256, (SEQUENCE, 180, 320, 3), dtype=np.uint8)
        audio = (0.1 * rng.standard_normal((SEQUENCE, 640))).astype(np.float32)  # 40 ms at 16 kHz
        sequences.append([{"frame": f, "audio": a} for f, a in zip(frames, audio, strict=True)])
    return write_input_data(path, sequences)


@pytest.mark.parametrize("model", ["avsal_pipeline", "avsal_stream"])
@pytest.mark.parametrize("profile", PROFILES)
def test_perf_analyzer(benchmark, triton_servers, tmp_path, profile, model) -> None:
    server = triton_servers(profile)
    if model == "avsal_pipeline":
        data, sequence = _pipeline_data(profile, tmp_path / "input.json"), None
    else:
        data, sequence = _stream_data(tmp_path / "input.json"), SEQUENCE
    try:
        points = benchmark.pedantic(
            run_perf_analyzer,
            args=(model, server.grpc_url, data, CONCURRENCY, sequence),
            rounds=1,
            iterations=1,
        )
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    benchmark.group = f"perf_analyzer ({profile})"
    benchmark.extra_info.update(
        metric="perf_analyzer", profile=profile, model=model, points=[dataclasses.asdict(p) for p in points]
    )
    assert [p.concurrency for p in points] == list(CONCURRENCY)
    assert all(p.throughput > 0 and p.p50_ms <= p.p99_ms for p in points)
