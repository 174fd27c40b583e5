"""Batch-scoring throughput: videos/hour and frames/s for ``--jobs 1`` vs ``2`` locally (ONNX
Runtime) and for one vs two Triton servers, on the shipped checkpoint and generated clips.

Run with ``pytest benchmarks/test_scoring.py --benchmark-enable``. Each case scores the same
collection into a fresh directory, once to warm up and then ``ROUNDS`` times (a round is a whole
run, engines opened included); ``extra_info`` carries the median run's ``videos_per_hour`` and
``frames_per_second`` from its ``summary.json``. The ratios between cases,
measured in one session on one machine, are the figure; absolute numbers depend on the machine
(and on what else runs on it).
"""

from __future__ import annotations

import json
import os
from itertools import count
from pathlib import Path

import pytest

from avsal_deploy.data.synthetic import make_sample_clip
from avsal_deploy.engine import DEFAULT_EXPORT, EngineChoice
from avsal_deploy.scoring import score

N_VIDEOS = 6
ROUNDS = 3
SECONDS = 2.0  # 50 frames a clip at 25 fps
SIZE = (192, 320)


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bench-clips")
    for i in range(N_VIDEOS):
        make_sample_clip(root / f"clip_{i}.mp4", seconds=SECONDS, size=SIZE, seed=i)
    return root


@pytest.fixture(scope="module")
def shipped_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    os.environ.setdefault("AVSAL_CACHE", str(tmp_path_factory.mktemp("bench-cache")))
    return DEFAULT_EXPORT


def _run(benchmark, clips: Path, base: Path, **kwargs: object) -> dict:
    """One warm-up run (engine sessions, caches), then ROUNDS measured runs; ``extra_info`` holds
    the median run's figures."""
    runs = count()
    summaries: list[dict] = []

    def once() -> None:
        out = base / f"run{next(runs)}"
        results = list(score([clips], out, **kwargs))  # type: ignore[arg-type]
        assert [r.status for r in results] == ["done"] * N_VIDEOS
        summaries.append(json.loads((out / "summary.json").read_text()))

    benchmark.pedantic(once, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    measured = sorted(summaries[1:], key=lambda s: s["seconds"])
    summary = measured[len(measured) // 2]
    benchmark.extra_info["videos_per_hour"] = summary["videos_per_hour"]
    benchmark.extra_info["frames_per_second"] = summary["frames_per_second"]
    benchmark.extra_info["frames"] = summary["frames"]
    benchmark.extra_info["per_server"] = summary["servers"]
    return summary


@pytest.mark.parametrize("jobs", [1, 2])
def test_local_jobs(benchmark, clips: Path, shipped_export: Path, tmp_path: Path, jobs: int) -> None:
    benchmark.group = f"avsal score, {N_VIDEOS} clips x {int(SECONDS * 25)} frames, onnxruntime"
    benchmark.extra_info["jobs"] = jobs
    _run(benchmark, clips, tmp_path, engine=EngineChoice(export=str(shipped_export)), jobs=jobs)


@pytest.fixture(scope="module")
def servers(shipped_export: Path, tmp_path_factory: pytest.TempPathFactory):
    pytest.importorskip("pytriton", reason="the 'serve' extra (nvidia-pytriton) is not installed")
    from avsal_deploy.serving.repository import build_repository
    from avsal_deploy.serving.server import TritonServer

    repo = build_repository(shipped_export, tmp_path_factory.mktemp("bench-triton") / "repo")
    with TritonServer(repo) as first, TritonServer(repo) as second:
        yield [first.http_url, second.http_url]


@pytest.mark.triton
@pytest.mark.parametrize("n_servers", [1, 2])
def test_triton_servers(
    benchmark, clips: Path, shipped_export: Path, servers: list[str], tmp_path: Path, n_servers: int
) -> None:
    """Two videos in flight in both cases: on one server, or one on each of two."""
    benchmark.group = f"avsal score, {N_VIDEOS} clips x {int(SECONDS * 25)} frames, triton (2 in flight)"
    benchmark.extra_info["n_servers"] = n_servers
    urls = servers[:n_servers]
    choice = EngineChoice("triton", export=str(shipped_export))
    summary = _run(benchmark, clips, tmp_path, engine=choice, urls=urls, jobs=2)
    assert set(summary["servers"]) == set(urls)
