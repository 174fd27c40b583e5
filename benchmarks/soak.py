"""Soak test of ``avsal_stream`` and ``avsal_video`` on a real tritonserver (loopback only,
bounded in time; not in CI). At the product's size::

    python benchmarks/soak.py --profile small --layout 2x1 --streams 8 --stride 4 \
        --video-streams 4 --minutes 10 --json out/soak-small.json

Starts a server on 127.0.0.1 with a repository made from the export (``--export DIR``, else the
benchmark export of ``--profile``, randomly initialised: the cost is the architecture's; the tiny
profile is the shipped model) in the server layout ``--layout INSTANCESxTHREADS`` (as the stream
benchmark's), then runs ``--streams`` concurrent streams of a generated clip with sound (looped,
each stream restarted when its clip ends) and ``--video-streams`` clients sending the clip's file
to ``avsal_video`` back to back, for ``--minutes``, and reports: frames and errors, per-frame
latency p50 / p95 / p99 (from sending a frame to receiving its map), aggregate frames/s, the
``avsal_video`` request latency, and the RSS of the server and of every python-backend stub
(anonymous and shared memory apart) sampled every 10 s, with each one's growth after the warm-up
(``--warmup-minutes``, default 2) as a percentage.

``--drill`` kills the ``avsal_stream`` stub once, halfway: the streams in flight get errors, the
python backend restarts the stub, and the clients start new streams; the report counts the errors
and how long serving took to come back.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _rss_mb(pid: int) -> dict[str, float]:
    """VmRSS and its parts (MB): anonymous memory (heap: a leak shows here) and shared memory
    (the python backend's shm pool, mapped by the server and every stub: counted in both)."""
    out = {"rss": 0.0, "anon": 0.0, "shmem": 0.0}
    keys = {"VmRSS:": "rss", "RssAnon:": "anon", "RssShmem:": "shmem"}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            key = keys.get(line.split(":")[0] + ":")
            if key:
                out[key] = round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    return out


def _shm_pools_mb(prefix: str) -> dict[str, float]:
    """Memory the server's python-backend pools hold (tmpfs pages allocated, MB): the physical
    size of what RssShmem counts, once (a grown pool is mapped again, so RssShmem counts it more
    than once per process)."""
    shm = Path("/dev/shm")
    files = sorted(shm.glob(prefix + "*")) if shm.is_dir() else []
    return {
        "files": len(files),
        "allocated_mb": round(sum(f.stat().st_blocks * 512 for f in files) / 2**20, 1),
    }


def _growth(samples: list[dict], warmup_s: float) -> dict[str, dict[str, float]]:
    """Each process's RSS (total, anonymous, shared) at the end over its first sample after the
    warm-up, in percent. A stub restarted in between is a new process: it is compared with itself."""
    after = [s for s in samples if s["t"] >= warmup_s]
    if len(after) < 2:
        return {}
    first, last = after[0], after[-1]
    out: dict[str, dict[str, float]] = {}
    for name, end in last.items():
        start = first.get(name)
        if name in ("t", "shm_pools") or not isinstance(start, dict):
            continue
        out[name] = {
            k: round(100.0 * (end[k] - start[k]) / start[k], 1) if start[k] else 0.0
            for k in ("rss", "anon", "shmem")
        }
        out[name]["anon_mb"] = round(end["anon"] - start["anon"], 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--export", default=None, help="export directory (default: --profile's benchmark export)")
    p.add_argument("--profile", default="tiny", help="profile of the benchmark export (default: tiny)")
    p.add_argument("--layout", default="1x0", help="INSTANCESxTHREADS of the window models (default: 1x0)")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--video-streams", type=int, default=0, help="clients sending the clip to avsal_video")
    p.add_argument("--warmup-minutes", type=float, default=2.0, help="RSS growth is counted after this")
    p.add_argument("--frames", type=int, default=50, help="frames of the looped clip")
    p.add_argument("--drill", action="store_true", help="kill the avsal_stream stub once, halfway")
    p.add_argument("--json", default=None, help="write the report here")
    args = p.parse_args(argv)

    from media_utils import write_video

    from avsal_deploy.bench.exports import bench_export
    from avsal_deploy.data.source import MediaSource
    from avsal_deploy.errors import AvsalError
    from avsal_deploy.serving.client import predict_video, stream
    from avsal_deploy.serving.repository import build_repository
    from avsal_deploy.serving.server import TritonServer

    tmp = Path(tempfile.mkdtemp(prefix="avsal-soak-"))
    clip = write_video(tmp / "clip.mp4", n=args.frames, fps=25, size=(180, 320), audio="aac")
    source = MediaSource(clip)
    media = list(source.media())
    source.close()
    frames = [(f, ts) for f, ts, _ in media]
    chunks = [c for _, _, c in media]
    instances, threads = (int(x) for x in args.layout.split("x"))
    repo = build_repository(
        args.export or bench_export(args.profile),
        tmp / "repo",
        instances=instances,
        window_threads=threads,
        stream_limits={"max_streams": max(8, args.streams)},
    )
    deadline = time.monotonic() + args.minutes * 60.0
    latencies: list[float] = []
    video_latencies: list[float] = []
    errors: list[str] = []
    done_frames = [0]
    lock = threading.Lock()
    rss: list[dict[str, float]] = []
    drill: dict[str, float] = {}

    with TritonServer(repo, startup_timeout=300) as server:
        assert server.process is not None
        pid = server.process.pid

        def client(k: int) -> None:
            while time.monotonic() < deadline:
                sent: dict[int, float] = {}

                def paced(sent: dict[int, float] = sent):
                    for i, item in enumerate(frames):
                        sent[i] = time.perf_counter()
                        yield item

                try:
                    for index, _ in stream(
                        server.grpc_url,
                        paced(),
                        chunks,
                        fps=25.0,
                        audio_rate=source.audio_rate,
                        stride=args.stride,
                        seed=k,
                        retries=20,
                        backoff_s=0.5,
                    ):
                        with lock:
                            latencies.append(time.perf_counter() - sent[index])
                            done_frames[0] += 1
                except AvsalError as exc:
                    with lock:
                        errors.append(f"{time.monotonic():.1f} stream {k}: {str(exc).splitlines()[0][:200]}")
                    time.sleep(0.5)

        def video_client(k: int) -> None:
            while time.monotonic() < deadline:
                t = time.perf_counter()
                try:
                    maps, _ = predict_video(server.grpc_url, clip, stride=args.stride, seed=k, retries=20)
                except AvsalError as exc:
                    with lock:
                        errors.append(f"{time.monotonic():.1f} video {k}: {str(exc).splitlines()[0][:200]}")
                    time.sleep(0.5)
                    continue
                with lock:
                    video_latencies.append(time.perf_counter() - t)
                    done_video_frames[0] += len(maps)

        done_video_frames = [0]
        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(args.streams)]
        threads += [
            threading.Thread(target=video_client, args=(k,), daemon=True) for k in range(args.video_streams)
        ]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        killed = False
        while any(t.is_alive() for t in threads):
            procs = {"tritonserver": pid}
            procs.update({f"{m}:{q}": q for m, pids in server.stubs().items() for q in pids})
            rss.append(
                {"t": round(time.monotonic() - t0, 1), **{n: _rss_mb(q) for n, q in procs.items()}}
                | {"shm_pools": _shm_pools_mb(server.shm_prefix)}
            )
            if args.drill and not killed and time.monotonic() - t0 > args.minutes * 30.0:
                victim = next((q for n, q in procs.items() if n.startswith("avsal_stream:")), None)
                if victim is not None:
                    os.kill(victim, signal.SIGKILL)
                    drill["killed_at_s"] = round(time.monotonic() - t0, 1)
                    drill["frames_before"] = done_frames[0]
                    killed = True
            healed = server.heal()  # what `avsal serve` does twice a second
            if healed:
                drill["reloaded"] = healed
                drill["reloaded_at_s"] = round(time.monotonic() - t0, 1)
            if (
                killed
                and "recovered_at_s" not in drill
                and done_frames[0] > drill["frames_before"] + args.streams
            ):
                drill["recovered_at_s"] = round(time.monotonic() - t0, 1)
            time.sleep(1.0 if killed and "recovered_at_s" not in drill else 10.0)
        elapsed = time.monotonic() - t0

    lat = np.asarray(latencies) * 1000.0
    report = {
        "profile": args.profile if args.export is None else args.export,
        "layout": args.layout,
        "streams": args.streams,
        "video_streams": args.video_streams,
        "minutes": args.minutes,
        "stride": args.stride,
        "frames": done_frames[0],
        "video_requests": len(video_latencies),
        "video_frames": done_video_frames[0],
        "video_latency_s": {
            q: round(float(np.percentile(video_latencies, v)), 2) for q, v in (("p50", 50), ("p95", 95))
        }
        if video_latencies
        else {},
        "errors": len(errors),
        "error_samples": errors[:10],
        "frames_per_second": round(done_frames[0] / elapsed, 2),
        "latency_ms": {
            q: round(float(np.percentile(lat, v)), 1) for q, v in (("p50", 50), ("p95", 95), ("p99", 99))
        }
        if lat.size
        else {},
        "rss_growth_after_warmup_pct": _growth(rss, args.warmup_minutes * 60.0),
        "rss_mb": rss,
        "drill": drill,
    }
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    print(json.dumps({k: v for k, v in report.items() if k != "rss_mb"}, indent=2))
    print("RSS first / last sample (MB):", json.dumps(rss[0]), json.dumps(rss[-1]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
