"""Soak test of ``avsal_stream`` on a real tritonserver (loopback only, bounded in time; not in CI).

    python benchmarks/soak.py --streams 8 --minutes 10 [--export DIR] [--stride 1] [--drill]
        [--json out/soak.json]

Starts a server on 127.0.0.1 with a repository made from the export (default: the shipped tiny
model), then runs ``--streams`` concurrent streams of a generated clip (looped, each stream restarted
when its clip ends) for ``--minutes``, and reports: requests and errors, per-frame latency p50 / p95 /
p99 (from sending a frame to receiving its map), aggregate frames/s, and the RSS of the server and
of every python-backend stub sampled every 10 s.

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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--streams", type=int, default=8)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--export", default=None, help="export directory (default: the shipped tiny model)")
    p.add_argument("--stride", type=int, default=1)
    p.add_argument("--frames", type=int, default=50, help="frames of the looped clip")
    p.add_argument("--drill", action="store_true", help="kill the avsal_stream stub once, halfway")
    p.add_argument("--json", default=None, help="write the report here")
    args = p.parse_args(argv)

    from media_utils import write_video

    from avsal_deploy.data.source import MediaSource
    from avsal_deploy.engine import DEFAULT_EXPORT
    from avsal_deploy.errors import AvsalError
    from avsal_deploy.serving.client import stream
    from avsal_deploy.serving.repository import build_repository
    from avsal_deploy.serving.server import TritonServer

    tmp = Path(tempfile.mkdtemp(prefix="avsal-soak-"))
    clip = write_video(tmp / "clip.mp4", n=args.frames, fps=25, size=(180, 320), audio="aac")
    source = MediaSource(clip)
    media = list(source.media())
    source.close()
    frames = [(f, ts) for f, ts, _ in media]
    chunks = [c for _, _, c in media]
    repo = build_repository(
        args.export or DEFAULT_EXPORT, tmp / "repo", stream_limits={"max_streams": max(8, args.streams)}
    )
    deadline = time.monotonic() + args.minutes * 60.0
    latencies: list[float] = []
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

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(args.streams)]
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
        "streams": args.streams,
        "minutes": args.minutes,
        "stride": args.stride,
        "frames": done_frames[0],
        "errors": len(errors),
        "error_samples": errors[:10],
        "frames_per_second": round(done_frames[0] / elapsed, 2),
        "latency_ms": {
            q: round(float(np.percentile(lat, v)), 1) for q, v in (("p50", 50), ("p95", 95), ("p99", 99))
        }
        if lat.size
        else {},
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
