"""`avsal` sub-commands of the serving area (registered by avsal_deploy.cli).

``avsal triton-repo --export DIR --out REPO`` writes a Triton model repository from an export;
``avsal serve REPO`` runs the ``tritonserver`` of the ``nvidia-pytriton`` wheel on it until Ctrl-C.
"""

from __future__ import annotations

import argparse

from avsal_deploy import interrupt
from avsal_deploy.errors import AvsalError
from avsal_deploy.serving.repository import PLATFORMS


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
    models = args.models.split(",") if args.models else None
    server = TritonServer(args.repo, ports, args.log, models=models, startup_timeout=args.startup_timeout)
    print(f"starting tritonserver on {server.repo} ...", flush=True)
    with server:  # stopped (SIGTERM, then SIGKILL to its process group) however the block ends
        print(f"HTTP    {server.http_url}")
        print(f"gRPC    {server.grpc_url}")
        print(f"metrics {server.metrics_url}")
        print(f"log     {server.log_path}")
        print("serving; Ctrl-C (or SIGTERM) stops the server", flush=True)
        while not interrupt.wait(0.5):
            server.check_alive()
            for model in server.heal():  # a stub died: reload its model
                print(f"reloaded {model} (its python stub process had died)", flush=True)
        print("stopping ...", flush=True)
    print(f"tritonserver stopped (exit code {server.returncode})")
    interrupt.check()  # exit status 130: stopped by a signal
    return 0


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
        overlay=not args.no_overlay,
        steps=args.steps,
        stride=args.stride,
        seed=args.seed,
        roi_out=args.roi_out,
        roi_codec=args.roi_codec,
        roi_crf=args.roi_crf,
        capture_options=_options(args.capture_option),
        max_seconds=args.seconds,
    )
    lat = report["latency_ms"]
    print(
        f"{report['frames']} frames streamed in {report['seconds']:.2f} s ({report['frames_per_second']:.1f} "
        f"frames/s); latency p50 {lat['p50']:.1f} ms, p95 {lat['p95']:.1f} ms, p99 {lat['p99']:.1f} ms"
    )
    print(f"outputs in {args.out}: maps.npz, {'overlay.mp4, ' if not args.no_overlay else ''}stream.json")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this area's sub-commands to the `avsal` parser."""
    p = sub.add_parser("triton-repo", help="write a Triton model repository from an export directory")
    p.add_argument("--export", required=True, help="export directory (manifest.json from `avsal export`)")
    p.add_argument("--out", required=True, help="model repository to write")
    p.add_argument("--platform", default="python-onnxruntime", choices=PLATFORMS, help="model platform")
    p.add_argument("--instances", type=int, default=1, help="instances per model (default 1)")
    p.add_argument("--max-batch", type=int, default=None, help="cap on the batch (default: the export's)")
    p.add_argument("--force", action="store_true", help="replace our models already in --out")
    p.add_argument(
        "--window-engine",
        default=None,
        choices=["onnxruntime", "bls"],
        help="how avsal_pipeline / avsal_stream / avsal_video run the components: ONNX Runtime in their "
        "own process (CPU default) or BLS calls to the component models (TensorRT default)",
    )
    p.add_argument(
        "--window-threads",
        type=int,
        default=0,
        help="ONNX Runtime threads per window model instance (onnxruntime window engine; default 0 = "
        "every core). With --instances N, N x threads = the cores runs N streams' windows side by side",
    )
    p.set_defaults(handler=cmd_triton_repo)

    p = sub.add_parser("serve", help="serve a model repository with the tritonserver of nvidia-pytriton")
    p.add_argument("repo", help="model repository (from `avsal triton-repo`)")
    p.add_argument("--http-port", type=int, default=None, help="HTTP port (default: a free one)")
    p.add_argument("--grpc-port", type=int, default=None, help="gRPC port (default: a free one)")
    p.add_argument("--metrics-port", type=int, default=None, help="metrics port (default: a free one)")
    p.add_argument("--models", default=None, help="comma-separated models to load (default: all)")
    p.add_argument("--log", default=None, help="server log file (default: a temporary file)")
    p.add_argument("--startup-timeout", type=float, default=120.0, help="seconds to wait for readiness")
    p.set_defaults(handler=cmd_serve, stops_cleanly=True)

    p = sub.add_parser("stream", help="play a video through a server's avsal_stream model, in real time")
    p.add_argument(
        "video",
        help="video file (any container FFmpeg reads), or a live input: FORMAT:TARGET (v4l2:/dev/video0, "
        "lavfi:testsrc=rate=25, ...) or a streaming URL (rtsp://...); Ctrl-C ends a live input cleanly",
    )
    p.add_argument("--url", required=True, help="the server's gRPC endpoint (host:port)")
    p.add_argument(
        "--capture-option",
        action="append",
        metavar="KEY=VALUE",
        help="demuxer option of a live input (repeatable)",
    )
    p.add_argument("--seconds", type=float, default=None, help="stop a live input after this many seconds")
    p.add_argument("--out", default="out/stream", help="where maps.npz, overlay.mp4, stream.json go")
    p.add_argument("--fast", action="store_true", help="send frames as fast as the server answers")
    p.add_argument("--no-overlay", action="store_true", help="skip overlay.mp4")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the profile's)")
    p.add_argument("--stride", type=int, default=None, help="run the networks every K-th frame")
    p.add_argument("--seed", type=int, default=0, help="seed of the stream's x_T")
    p.add_argument("--roi-out", default=None, help="also encode the stream with the server's QP offsets")
    p.add_argument("--roi-codec", default="x264", choices=["x264", "x265"], help="encoder of --roi-out")
    p.add_argument("--roi-crf", type=float, default=28.0, help="CRF of --roi-out (default 28)")
    p.set_defaults(handler=cmd_stream, stops_cleanly=True)
