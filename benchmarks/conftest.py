"""Benchmark fixtures: models and exports per profile, made once per session (and cached on disk).

``AVSAL_BENCH_PROFILES`` (comma-separated, default ``small``) chooses the profiles the engine
suites run at; ``avsal bench --out`` sets it (``--quick``: tiny,small; else tiny,small,paper).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from avsal_deploy import engine as engines
from avsal_deploy.bench.exports import bench_export
from avsal_deploy.models.build import AVSaliencyModel

PROFILE = "small"


@pytest.fixture(scope="session")
def small_export() -> Path:
    return bench_export(PROFILE)


@pytest.fixture(scope="session")
def small_model(small_export) -> AVSaliencyModel:
    return engines.open(small_export, "torch").model


@pytest.fixture(scope="session")
def profile_engines():
    """profile -> {"torch": TorchEngine, "onnxruntime": OnnxRuntimeEngine} with the same weights."""
    cache: dict[str, dict[str, engines.Engine]] = {}

    def get(profile: str) -> dict[str, engines.Engine]:
        if profile not in cache:
            export = bench_export(profile)
            cache[profile] = {
                "torch": engines.open(export, "torch"),
                "onnxruntime": engines.open(export, "onnxruntime"),
            }
        return cache[profile]

    return get


@pytest.fixture(scope="session")
def triton_servers(tmp_path_factory):
    """(profile, layout) -> a running tritonserver over that profile's bench export (started on
    first use). ``layout`` is ``"INSTANCESxTHREADS"``: model instances and ONNX Runtime threads per
    window model instance (``1x0``, the repository default: one instance on every core)."""
    from avsal_deploy.serving.repository import build_repository
    from avsal_deploy.serving.server import TritonServer

    running: dict[tuple[str, str], TritonServer] = {}

    def get(profile: str, layout: str = "1x0") -> TritonServer:
        key = (profile, layout)
        if key not in running:
            instances, threads = (int(x) for x in layout.split("x"))
            repo = build_repository(
                bench_export(profile),
                tmp_path_factory.mktemp(f"repo-{profile}-{layout}") / "repo",
                instances=instances,
                window_threads=threads,
            )
            server = TritonServer(repo, startup_timeout=300)
            server.__enter__()
            running[key] = server
        return running[key]

    yield get
    for server in running.values():
        server.__exit__(None, None, None)
