"""``avsal triton-repo``, ``serve`` and ``stream``: serving with Triton.

``avsal triton-repo --export DIR --out REPO`` writes a Triton model repository from an export;
``avsal serve REPO`` runs the ``tritonserver`` of the ``nvidia-pytriton`` wheel on it until Ctrl-C
(Triton's ports 8000/8001/8002 on 127.0.0.1 by default); ``avsal stream VIDEO`` plays a video
through a server's ``avsal_stream`` model.
"""

from __future__ import annotations

import argparse
import time

from avsal_deploy import interrupt
from avsal_deploy.cli.grammar import (
    add_out,
    add_output_options,
    add_predict_options,
    command,
    list_alias,
    predict_options,
)
from avsal_deploy.errors import AvsalError
from avsal_deploy.serving.contract import ROI_CODECS, WINDOW_ENGINES
from avsal_deploy.serving.repository import PLATFORMS
from avsal_deploy.serving.server import DEFAULT_PORTS, HOST, TritonServer, TritonServerError


def cmd_triton_repo(args: argparse.Namespace) -> int:
    from avsal_deploy.serving.repository import build_repository

    out = build_repository(
        args.export,
        args.out,
        instances=args.instances,
        max_batch=args.max_batch,
        platform=args.platform,
        overwrite=args.force,
        window_engine=args.window_engine,
        window_threads=args.window_threads,
    )
    models = sorted(p.name for p in out.iterdir() if (p / "config.pbtxt").exists())
    print(f"wrote {len(models)} models to {out} ({args.platform}): {', '.join(models)}")
    if args.platform != "python-onnxruntime":
        print(
            f"note: the {args.platform} platform runs in the NGC tritonserver container, not with `avsal serve`"
        )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from avsal_deploy.serving.server import Ports, TritonServer

    ports = Ports(args.http_port, args.grpc_port, args.metrics_port)
    server = TritonServer(
        args.repo, ports, args.log, host=args.host, models=args.model, startup_timeout=args.startup_timeout
    )
    print(f"starting tritonserver on {server.repo} ...", flush=True)
    with server:  # stopped (SIGTERM, then SIGKILL to its process group) however the block ends
        print(f"HTTP    {server.http_url}")
        print(f"gRPC    {server.grpc_url}")
        print(f"metrics {server.metrics_url}")
        print(f"log     {server.log_path}")
        print("serving; Ctrl-C (or SIGTERM) stops the server", flush=True)
        restarts: list[float] = []
        while not interrupt.wait(0.5):
            if server.returncode is not None:  # tritonserver itself died (killed, crashed, OOM)
                restarts = _restart(server, restarts)
                continue
            for model in server.heal():  # a stub died: reload its model
                print(f"reloaded {model} (its python stub process had died)", flush=True)
        print("stopping ...", flush=True)
    print(f"tritonserver stopped (exit code {server.returncode})")
    interrupt.check()  # exit status 130: stopped by a signal
    return 0


#: ``avsal serve`` restarts a tritonserver that died, at most this many times in RESTART_WINDOW_S.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 600.0


def _restart(server: TritonServer, restarts: list[float]) -> list[float]:
    """Start a dead server again on the same ports (its resources released first), retrying a
    start that fails; give up (the server's error, with its log's tail) after :data:`MAX_RESTARTS`
    in :data:`RESTART_WINDOW_S`."""
    while True:
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < RESTART_WINDOW_S]
        if len(restarts) >= MAX_RESTARTS:
            server.check_alive()  # raises TritonServerError with the exit code and the log's tail
            raise TritonServerError(f"{server.repo}: tritonserver died {len(restarts)} times in a row")
        restarts.append(now)
        print(
            f"tritonserver exited with code {server.returncode}; restarting it "
            f"({len(restarts)} of at most {MAX_RESTARTS} in {RESTART_WINDOW_S / 60:g} minutes) ...",
            flush=True,
        )
        server.stop()
        try:
            server.start()
        except TritonServerError as exc:
            print(f"the restart failed: {exc}", flush=True)
            continue
        print(f"serving again (log {server.log_path})", flush=True)
        return restarts


def _options(items: list[str] | None) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise AvsalError(f"--capture-option {item!r}: expected KEY=VALUE (e.g. video_size=640x480)")
        out[key] = value
    return out


def cmd_stream(args: argparse.Namespace) -> int:
    from avsal_deploy.serving.player import play

    report = play(
        args.url,
        args.video,
        args.out,
        realtime=not args.fast,
        overlay=args.overlay,
        options=predict_options(args),
        roi_out=args.roi_out,
        roi_codec=args.roi_codec,
        roi_crf=args.roi_crf,
        capture_options=_options(args.capture_option),
        max_seconds=args.seconds,
    )
    lat = report["latency_ms"]
    latency = (
        f"; latency p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms" if lat else ""
    )
    print(
        f"{report['frames']} frames streamed in {report['seconds']:.2f} s "
        f"({report['frames_per_second']:.1f} frames/s){latency}"
    )
    print(f"outputs in {args.out}: maps.npz, {'overlay.mp4, ' if args.overlay else ''}stream.json")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add ``triton-repo``, ``serve`` and ``stream`` to the ``avsal`` parser."""
    p = command(
        sub, "triton-repo", "write a Triton model repository from an export directory", cmd_triton_repo
    )
    p.add_argument(
        "--export", required=True, metavar="DIR", help="export directory (manifest.json from `avsal export`)"
    )
    add_out(p, "model repository to write", required=True)
    p.add_argument("--platform", default="python-onnxruntime", choices=PLATFORMS, help="model platform")
    p.add_argument("--instances", type=int, default=1, metavar="N", help="instances per model")
    p.add_argument(
        "--max-batch",
        type=int,
        default=None,
        metavar="N",
        help="cap on every model's batch (default: the export's)",
    )
    p.add_argument("--force", action="store_true", help="replace our models already in --out")
    p.add_argument(
        "--window-engine",
        default=None,
        choices=list(WINDOW_ENGINES),
        help="how avsal_pipeline / avsal_stream / avsal_video run the components: ONNX Runtime in their "
        "own process (default on CPU) or BLS calls to the component models (default on TensorRT)",
    )
    p.add_argument(
        "--window-threads",
        type=int,
        default=0,
        metavar="N",
        help="ONNX Runtime threads per window model instance (onnxruntime window engine; default 0 = "
        "every core). With --instances N, N x threads = the cores runs N streams' windows side by side",
    )

    p = command(
        sub,
        "serve",
        "serve a model repository with the tritonserver of nvidia-pytriton",
        cmd_serve,
        stops_cleanly=True,
    )
    p.add_argument("repo", help="model repository (from `avsal triton-repo`)")
    p.add_argument(
        "--host",
        default=HOST,
        help=f"address every endpoint binds to (default: {HOST}; 0.0.0.0 exposes the server, which has no authentication)",
    )
    p.add_argument("--http-port", type=int, default=DEFAULT_PORTS.http, metavar="PORT", help="HTTP port")
    p.add_argument("--grpc-port", type=int, default=DEFAULT_PORTS.grpc, metavar="PORT", help="gRPC port")
    p.add_argument(
        "--metrics-port", type=int, default=DEFAULT_PORTS.metrics, metavar="PORT", help="metrics port"
    )
    p.add_argument(
        "--model",
        action="append",
        default=None,
        metavar="NAME",
        help="a model to load (repeatable; default: all)",
    )
    list_alias(p, "--models", "model")
    p.add_argument("--log", default=None, metavar="FILE", help="server log file (default: a temporary file)")
    p.add_argument(
        "--startup-timeout",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="seconds to wait for readiness",
    )

    p = command(
        sub,
        "stream",
        "play a video through a server's avsal_stream model, in real time",
        cmd_stream,
        stops_cleanly=True,
    )
    p.add_argument(
        "video",
        help="video file (any container FFmpeg reads), or a live input: FORMAT:TARGET (v4l2:/dev/video0, "
        "lavfi:testsrc=rate=25, ...) or a streaming URL (rtsp://...); Ctrl-C ends a live input cleanly",
    )
    p.add_argument(
        "--url",
        default=f"{HOST}:{DEFAULT_PORTS.grpc}",
        metavar="URL",
        help="the Triton server's gRPC endpoint (host:port; default: `avsal serve`'s)",
    )
    p.add_argument(
        "--capture-option",
        action="append",
        metavar="KEY=VALUE",
        help="demuxer option of a live input (repeatable)",
    )
    p.add_argument(
        "--seconds",
        type=float,
        default=None,
        metavar="SECONDS",
        help="stop a live input after this many seconds",
    )
    add_out(p, "where maps.npz, overlay.mp4 and stream.json go", default="out/stream")
    p.add_argument(
        "--fast",
        action="store_true",
        help="send frames as fast as the server answers (default: in real time)",
    )
    add_output_options(p, png=False, sheet=False, old_negatives=True)
    add_predict_options(p, batch=False)
    p.add_argument(
        "--roi-out", default=None, metavar="FILE", help="also encode the stream with the server's QP offsets"
    )
    p.add_argument("--roi-codec", default="x264", choices=list(ROI_CODECS), help="encoder of --roi-out")
    p.add_argument("--roi-crf", type=float, default=28.0, metavar="CRF", help="CRF of --roi-out")
