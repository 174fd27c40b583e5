"""Fault drill on real tritonservers at the product's size (loopback only; not in CI)::

    python benchmarks/drill.py --profile small --json out/drill-small.json

Three faults, each with what a client sees and how serving comes back without a manual step:

1. ``stub``: the ``avsal_stream`` stub is killed (SIGKILL) while ``--streams`` streams are in
   flight, once each has had 3 maps. The streams in flight get an error; the server's stub watch
   (``TritonServer.heal``, what ``avsal serve`` runs twice a second) reloads the model; a new
   stream then gets every map.
2. ``server``: ``tritonserver`` itself is killed (SIGKILL) under ``avsal serve``; ``avsal serve``
   starts a new one on the same ports; a stream then gets every map; SIGTERM stops ``avsal serve``
   with status 130.
3. ``score``: ``avsal score --url A --url B`` over ``--videos`` videos; server A is killed after
   its first video. Every video is scored once (none lost, none written twice), the ones A had in
   flight on B, and the maps equal in-process ONNX Runtime scoring within one 8-bit level.

The export is ``--export DIR`` or the benchmark export of ``--profile`` (randomly initialised:
the cost is the architecture's). Prints a JSON report (``--json`` writes it).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _wait(condition: Callable[[], bool], timeout: float, step: float = 0.2) -> float:
    """Seconds until ``condition()`` holds (raises after ``timeout``)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"not within {timeout:.0f} s")
        time.sleep(step)
    return time.monotonic() - start


def _stream_all(url: str, media: tuple, stride: int, seed: int, count: list[int] | None = None) -> int:
    """Maps one stream of the clip gets (every frame's, or an error raises); ``count[0]`` counts
    them as they arrive."""
    from avsal_deploy.serving.client import stream

    frames, chunks, rate = media
    got = 0
    for _ in stream(url, frames, chunks, fps=25.0, audio_rate=rate, stride=stride, seed=seed):
        got += 1
        if count is not None:
            count[0] += 1
    return got


def drill_stub(repo: Path, media: tuple, args: argparse.Namespace) -> dict:
    from avsal_deploy.errors import AvsalError
    from avsal_deploy.serving.server import TritonServer

    outcome: dict[str, object] = {}
    with TritonServer(repo, models=["avsal_stream"], startup_timeout=600) as server:
        errors: list[str] = []
        maps = [[0] for _ in range(args.streams)]

        def client(k: int) -> None:
            try:
                _stream_all(server.grpc_url, media, args.stride, k, maps[k])
            except AvsalError as exc:
                errors.append(str(exc).splitlines()[0][:200])

        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.streams)]
        for t in threads:
            t.start()
        # mid-stream: once every stream has had a few maps (or after --kill-after-s at the latest)
        started = time.monotonic()
        while min(m[0] for m in maps) < 3 and time.monotonic() - started < args.kill_after_s:
            time.sleep(0.05)
        outcome["killed_after_s"] = round(time.monotonic() - started, 1)
        victims = server.stubs()["avsal_stream"]
        for pid in victims:
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        for t in threads:
            t.join()
        reloaded: list[str] = []
        _wait(lambda: bool(reloaded.extend(server.heal()) or reloaded), timeout=600)
        outcome["reload_s"] = round(time.monotonic() - killed, 1)
        outcome["reloaded"] = reloaded
        outcome["streams_in_flight"] = args.streams
        outcome["streams_with_an_error"] = len(errors)
        outcome["error_sample"] = errors[:2]
        outcome["maps_per_stream_before_the_error"] = [m[0] for m in maps]
        start = time.monotonic()
        got = _stream_all(server.grpc_url, media, args.stride, 0)
        outcome["next_stream_maps"] = f"{got}/{len(media[0])}"
        outcome["next_stream_s"] = round(time.monotonic() - start, 1)
        outcome["ok"] = got == len(media[0]) and bool(reloaded)
    return outcome


def drill_server(repo: Path, media: tuple, args: argparse.Namespace) -> dict:
    import urllib.request

    from avsal_deploy.serving.server import child_processes, free_port

    http, grpc, metrics = (free_port() for _ in range(3))  # as TritonServer picks its own
    ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    cmd = [sys.executable, "-m", "avsal_deploy.cli", "serve", str(repo), *ports, "--model", "avsal_stream"]
    cmd += ["--startup-timeout", "600"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines: list[str] = []

    def read_until(prefix: str) -> None:
        while not (line := proc.stdout.readline()).startswith(prefix):  # type: ignore[union-attr]
            if not line:
                raise RuntimeError("avsal serve ended:\n" + "".join(lines[-20:]))
            lines.append(line)
        lines.append(line)

    def ready() -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{http}/v2/models/avsal_stream/ready", timeout=1
            ) as r:
                return r.status == 200
        except OSError:
            return False

    def server_pid() -> int | None:
        found = [pid for pid, cmd in child_processes(proc.pid).items() if b"tritonserver" in b" ".join(cmd)]
        return found[0] if found else None

    outcome: dict[str, object] = {}
    try:
        read_until("serving;")
        url = f"127.0.0.1:{grpc}"
        outcome["first_stream_maps"] = f"{_stream_all(url, media, args.stride, 0)}/{len(media[0])}"
        first = server_pid()
        assert first is not None
        os.kill(first, signal.SIGKILL)
        killed = time.monotonic()
        read_until("serving again")
        outcome["serving_again_s"] = round(time.monotonic() - killed, 1)
        outcome["new_server"] = server_pid() not in (None, first) and ready()
        got = _stream_all(url, media, args.stride, 1)
        outcome["stream_after_restart_maps"] = f"{got}/{len(media[0])}"
        proc.send_signal(signal.SIGTERM)
        outcome["exit_status"] = proc.wait(timeout=120)
        outcome["ok"] = bool(outcome["new_server"]) and got == len(media[0]) and outcome["exit_status"] == 130
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    outcome["restart_lines"] = [line.strip() for line in lines if "restart" in line][:3]
    return outcome


def drill_score(repo: Path, export: Path, tmp: Path, args: argparse.Namespace) -> dict:
    from media_utils import write_video

    from avsal_deploy.engine import EngineChoice
    from avsal_deploy.outputs import load_maps
    from avsal_deploy.pipeline import PredictOptions
    from avsal_deploy.scoring import score
    from avsal_deploy.serving.server import TritonServer

    videos = tmp / "videos"
    videos.mkdir()
    for i in range(args.videos):
        write_video(videos / f"v{i}.mp4", n=args.frames + 2 * i, fps=25, size=(180, 320), audio="aac")
    options = PredictOptions(stride=args.stride)
    results = []
    start = time.monotonic()
    with TritonServer(repo, startup_timeout=600) as first, TritonServer(repo, startup_timeout=600) as second:
        urls = [first.http_url, second.http_url]
        engine = EngineChoice("triton", export=str(export))
        for result in score([videos], tmp / "triton", engine=engine, urls=urls, options=options):
            results.append(result)
            if result.server == first.http_url and first.is_running():
                assert first.process is not None
                os.killpg(first.process.pid, signal.SIGKILL)
                first.stop()
    elapsed = time.monotonic() - start
    names = [r.rel for r in results]
    local = list(score([videos], tmp / "local", engine=EngineChoice(export=str(export)), options=options))
    diff = max(
        float(
            np.abs(
                load_maps(tmp / "triton" / r.rel / "maps.npz") - load_maps(tmp / "local" / r.rel / "maps.npz")
            ).max()
        )
        for r in results
    )
    moved = [r for r in results if r.attempts > 1]
    outcome = {
        "videos": args.videos,
        "done": sum(r.status == "done" for r in results),
        "scored_twice": len(names) - len(set(names)),
        "on_first_server": sum(r.server == urls[0] for r in results),
        "on_second_server": sum(r.server == urls[1] for r in results),
        "moved_to_the_other_server": len(moved),
        "max_abs_diff_to_in_process": round(diff, 5),
        "seconds": round(elapsed, 1),
        "in_process_done": sum(r.status == "done" for r in local),
    }
    outcome["ok"] = (
        outcome["done"] == args.videos
        and outcome["scored_twice"] == 0
        and bool(moved)
        and diff <= 1 / 255 + 1e-6
    )
    return outcome


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--profile", default="small", help="profile of the benchmark export (default: small)")
    p.add_argument("--export", default=None, help="export directory (default: --profile's benchmark export)")
    p.add_argument("--streams", type=int, default=4, help="streams in flight when the stub is killed")
    p.add_argument("--stride", type=int, default=4)
    p.add_argument("--frames", type=int, default=50, help="frames of each generated clip")
    p.add_argument("--videos", type=int, default=8, help="videos of the scoring drill")
    p.add_argument(
        "--kill-after-s",
        type=float,
        default=60.0,
        help="the stub dies once every stream has 3 maps, or after this",
    )
    p.add_argument("--only", choices=["stub", "server", "score"], action="append", default=None)
    p.add_argument("--json", default=None, help="write the report here")
    args = p.parse_args(argv)

    from media_utils import write_video

    from avsal_deploy.bench.exports import bench_export
    from avsal_deploy.data.source import MediaSource
    from avsal_deploy.serving.repository import build_repository

    tmp = Path(tempfile.mkdtemp(prefix="avsal-drill-"))
    export = Path(args.export) if args.export else bench_export(args.profile)
    clip = write_video(tmp / "clip.mp4", n=args.frames, fps=25, size=(180, 320), audio="aac")
    source = MediaSource(clip)
    items = list(source.media())
    source.close()
    media = ([(f, ts) for f, ts, _ in items], [c for _, _, c in items], source.audio_rate)
    repo = build_repository(export, tmp / "repo", stream_limits={"max_streams": max(8, args.streams)})
    report: dict[str, object] = {"profile": args.profile if args.export is None else args.export}
    drills = args.only or ["stub", "server", "score"]
    if "stub" in drills:
        report["stub"] = drill_stub(repo, media, args)
    if "server" in drills:
        report["server"] = drill_server(repo, media, args)
    if "score" in drills:
        report["score"] = drill_score(repo, export, tmp, args)
    text = json.dumps(report, indent=2)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(text)
    print(text)
    return 0 if all(report[d]["ok"] for d in drills) else 1  # type: ignore[index]


if __name__ == "__main__":
    sys.exit(main())
