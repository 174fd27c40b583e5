"""The runtime's frame flow on a 720p clip at the tiny profile: write time against
inference time, output size per frame, and peak RSS for 1, 3 and 10 minutes of video.

Run with ``make bench`` (or ``pytest benchmarks/test_runtime.py --benchmark-enable -s``). The
figures are in each benchmark's ``extra_info`` and printed; ratios come from one run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from avsal_deploy import engine as engines
from avsal_deploy.pipeline import Predictor, predict_to_directory

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from media_utils import write_video  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
X264 = {"preset": "ultrafast"}


@pytest.fixture(scope="module")
def clip_720p(tmp_path_factory) -> Path:
    """10 s of 1280x720 at 25 fps with an AAC soundtrack."""
    path = tmp_path_factory.mktemp("rt") / "720p.mp4"
    return write_video(path, n=250, fps=25, size=(720, 1280), audio="aac", options=X264)


@pytest.mark.parametrize("outputs", ["maps", "maps+png+overlay"])
def test_write_vs_inference_720p(benchmark, clip_720p, tmp_path, outputs) -> None:
    engine = engines.open()
    full = outputs != "maps"
    out = tmp_path / "out"

    def run() -> dict:
        return predict_to_directory(clip_720p, out, Predictor(engine), overlay=full, pngs=full)

    summary = benchmark.pedantic(run, rounds=2, iterations=1)
    t = summary["timings"]
    size = (out / "maps.npz").stat().st_size
    benchmark.group = "frame flow, 720p, tiny profile"
    benchmark.extra_info.update(
        outputs=outputs,
        frames=summary["frames"],
        frames_per_second=summary["frames_per_second"],
        timings=t,
        write_over_inference=round(t["write"] / t["inference"], 3),
        maps_npz_bytes_per_frame=round(size / summary["frames"]),
        peak_rss_mb=summary["peak_rss_mb"],
    )
    print(f"\n{outputs}: {json.dumps(benchmark.extra_info)}")


RSS_CHILD = r"""
import json, sys
from avsal_deploy.engine import open
from avsal_deploy.pipeline import Predictor, predict_to_directory
s = predict_to_directory(sys.argv[1], sys.argv[2], Predictor(open()), overlay=True)
print(json.dumps({"frames": s["frames"], "rss": s["peak_rss_mb"], "seconds": s["seconds"]}))
"""


def test_peak_rss_vs_length(benchmark, tmp_path) -> None:
    """Peak RSS of `avsal predict` (maps + overlay) on 1, 3 and 10 minutes of 720p at 10 fps."""
    rss = {}

    def run() -> None:
        for minutes in (1, 3, 10):
            video = tmp_path / f"{minutes}.mp4"
            if not video.exists():
                write_video(video, n=600 * minutes, fps=10, size=(720, 1280), audio="aac", options=X264)
            out = subprocess.run(
                [sys.executable, "-c", RSS_CHILD, str(video), str(tmp_path / f"o{minutes}")],
                capture_output=True,
                text=True,
                cwd=ROOT,
                check=True,
            )
            rss[minutes] = json.loads(out.stdout.strip().splitlines()[-1])

    benchmark.pedantic(run, rounds=1, iterations=1)
    benchmark.group = "peak RSS vs video length, 720p, tiny profile"
    benchmark.extra_info.update({f"{m}_min": r for m, r in rss.items()})
    print(f"\npeak RSS: {json.dumps(benchmark.extra_info)}")
