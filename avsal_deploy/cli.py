"""``avsal``: the command line. It parses arguments, calls the library and reports; nothing more.

User errors (:class:`~avsal_deploy.errors.AvsalError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from avsal_deploy import interrupt
from avsal_deploy.config import (
    CONVERT_SOURCES,
    FAMILIES,
    PROFILES,
    VARIANTS,
    Config,
    family_config,
    load_config,
    parse_overrides,
)
from avsal_deploy.engine import BUILTIN_BACKENDS
from avsal_deploy.errors import AvsalError

Handler = Callable[[argparse.Namespace], int]
AREA_COMMANDS = (
    "avsal_deploy.training.cli",
    "avsal_deploy.serving.cli",
    "avsal_deploy.roi.cli",
    "avsal_deploy.scoring.cli",
    "avsal_deploy.bench.cli",
)
#: Modules of the export / training stack (the ``export`` and ``train`` extras).
TORCH_STACK = ("torch", "onnx", "onnxscript", "matplotlib")
#: ``--engine`` choices: the built-in backends of :func:`avsal_deploy.engine.open`.
ENGINES = tuple(BUILTIN_BACKENDS)


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.profile, parse_overrides(getattr(args, "set", None) or []))


def _add_config_args(p: argparse.ArgumentParser, default_profile: str = "paper") -> None:
    p.add_argument(
        "--profile",
        default=default_profile,
        help=f"profile name ({', '.join(PROFILES)}) or a TOML/JSON config file (default: {default_profile})",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override one config field, e.g. --set video.height=128 (repeatable)",
    )


# ------------------------------------------------------------------------- info
def _human(n: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.2f} {suffix}{unit}"
    return f"{n:.0f} {unit}".rstrip()


def cmd_info(args: argparse.Namespace) -> int:
    """Parameters, multiply-adds and FLOPs (2 per multiply-add) per component, beside the papers'."""
    import torch

    from avsal_deploy.models import build_model, count_flops, count_parameters
    from avsal_deploy.models.build import PAPER_SIZES

    config = _config(args)
    variants = VARIANTS if args.variant == "all" else (args.variant,)
    report: dict[str, Any] = {
        "profile": config.profile,
        "config": config.to_dict(),
        "convention": "flops = 2 x macs (torch.utils.flop_counter.FlopCounterMode: matmul, conv, attention)",
        "variants": {},
    }
    for variant in variants:
        with torch.device("meta"):
            model = build_model(config, variant)
        params = count_parameters(model)
        flops = count_flops(model, config, steps=args.steps)
        report["variants"][variant] = {
            "video_backbone": config.video_backbone(variant),
            "parameters": params,
            "flops": flops,
            "macs": {k: v // 2 for k, v in flops.items() if k != "steps"},
            "inputs": {
                "frames": [None, *config.frames_shape(variant)],
                "audio": [None, *config.audio_input_shape(variant)],
                **(
                    {"envelope": [None, *config.envelope_shape(variant)]}
                    if config.uses_envelope(variant)
                    else {}
                ),
            },
            "architecture_fingerprint": config.architecture_fingerprint(),
            **({"paper": PAPER_SIZES[variant]} if variant in PAPER_SIZES else {}),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"profile {config.profile}: frames {config.video.height}x{config.video.width}")
    print("FLOPs = 2 x multiply-adds (MACs), counted by torch FlopCounterMode")
    for variant, rep in report["variants"].items():
        f, m = rep["flops"], rep["macs"]
        ins = ", ".join(f"{k} {v[1:]}" for k, v in rep["inputs"].items())
        print(f"\n{variant} ({rep['video_backbone']} video encoder): {ins}")
        print(f"  {'component':<15}{'params':>12}{'MACs':>13}{'FLOPs':>14}")
        rows = [(c, c) for c in ("video_encoder", "audio_encoder", "fusion") if c in rep["parameters"]]
        rows += [("unet (1 step)", "unet")] if "unet" in rep["parameters"] else []
        for label, comp in rows:
            key = "unet_step" if comp == "unet" else comp
            print(
                f"  {label:<15}{_human(rep['parameters'][comp]):>12}"
                f"{_human(m.get(key, 0), 'MAC'):>13}{_human(f.get(key, 0), 'FLOP'):>14}"
            )
        total = rep["parameters"]["total"]
        print(
            f"  {'total (1 pass)':<15}{_human(total):>12}{_human(m['forward'], 'MAC'):>13}{_human(f['forward'], 'FLOP'):>14}"
        )
        print(
            f"  per window with {f['steps']} DDIM step(s): {_human(m['per_window'], 'MAC')}, "
            f"{_human(f['per_window'], 'FLOP')}"
        )
        if "paper" in rep:
            ref = rep["paper"]
            print(
                f"  paper ({ref['source']}, {ref['input']}): {_human(ref['parameters'])} parameters, "
                f'{_human(ref["flops_as_printed"])} "FLOPs" = {ref["convention"]}'
            )
            same_video = tuple(rep["inputs"]["frames"][1:]) == tuple(ref["frames_shape"])
            same_audio = tuple(rep["inputs"]["audio"][1:]) == tuple(ref["audio_shape"])
            if same_video:
                note = "" if same_audio else f" (audio input {rep['inputs']['audio'][1:]}, not the paper's)"
                print(
                    f"  ours / paper: {total / ref['parameters']:.2f}x the parameters, "
                    f"{m['forward'] / ref['flops_as_printed']:.2f}x the multiply-adds (1 pass: encoders + 1 UNet step){note}"
                )
    return 0


# ------------------------------------------------------------------------- export
def cmd_convert(args: argparse.Namespace) -> int:
    """An official checkpoint file -> an avsal checkpoint (every command takes it)."""
    from avsal_deploy.models.official import convert_checkpoint

    done = convert_checkpoint(args.source, args.out, args.from_name, parse_overrides(args.set or []))
    fam = FAMILIES[done.variant]
    print(f"{done.path}: {done.variant} ({fam.summary}), {done.parameters / 1e6:.2f} M parameters")
    if done.dropped:
        print(
            f"  {len(done.dropped)} key(s) the official forward never uses were dropped (recorded in the checkpoint)"
        )
    print(f"  official code: {fam.source}; licence of the released weights: {fam.weights_licence}")
    return 0


def model_zoo() -> list[dict[str, Any]]:
    """Every model family (ours at each profile, the official ones at their input mode): parameters,
    GFLOPs per window (2 FLOPs per multiply-add, the default DDIM steps), audio, input mode,
    where it comes from and the licence of its released weights."""
    import torch

    from avsal_deploy.models import build_model, count_flops, count_parameters

    rows = []
    for name, fam in FAMILIES.items():
        configs = [load_config(p) for p in PROFILES] if fam.origin == "avsal" else [family_config(name)]
        for config in configs:
            with torch.device("meta"):
                model = build_model(config, name)
            flops = count_flops(model, config)
            v = config.video
            audio = {
                "soundnet": f"SoundNet waveform, {config.soundnet_samples()} samples at {config.audio.soundnet_rate} Hz",
                "vggish": f"{config.audio.vggish_slices} log-mel slices at {config.audio.vggish_rate} Hz",
                "diffsal": f"{config.audio.vggish_slices} log-mel examples at the file's rate",
                "none": "none",
            }[fam.audio]
            target = "centre frame" if config.window.mode == "centre" else "last frame"
            rows.append(
                {
                    "family": name,
                    "origin": fam.origin,
                    "profile": config.profile if fam.origin == "avsal" else None,
                    "params": count_parameters(model)["total"],
                    "gflops_per_window": round(flops["per_window"] / 1e9, 2),
                    "steps": flops["steps"],
                    "audio": fam.has_audio,
                    "input_mode": f"{config.clip_len(name)}x{v.height}x{v.width} ({v.resize} resize), "
                    f"map of the {target}; audio: {audio}",
                    "summary": fam.summary,
                    "source": fam.source,
                    "weights_licence": fam.weights_licence,
                }
            )
    return rows


def cmd_models(args: argparse.Namespace) -> int:
    rows = model_zoo()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'family':<24}{'profile':<8}{'params':>9}{'GFLOP/window':>14}  {'audio':<6} input")
    for r in rows:
        print(
            f"{r['family']:<24}{r['profile'] or '-':<8}{r['params'] / 1e6:>8.1f}M{r['gflops_per_window']:>14.1f}  "
            f"{'yes' if r['audio'] else 'no':<6} {r['input_mode']}"
        )
    official = [r for r in rows if r["origin"] == "official"]
    print(
        "\nofficial families: `avsal convert CHECKPOINT --from NAME --out FILE.safetensors`; licences of the released weights:"
    )
    for r in official:
        print(f"  {r['family']:<24}{r['weights_licence']} ({r['source']})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    import torch

    from avsal_deploy.export.onnx import export_model
    from avsal_deploy.models import build_model
    from avsal_deploy.models.build import load_pretrained

    if args.checkpoint:
        model = load_pretrained(args.checkpoint, variant=args.variant)
        wanted = load_config(args.profile, parse_overrides(args.set or [])) if args.profile else None
        if (
            wanted is not None
            and wanted.architecture_fingerprint() != model.config.architecture_fingerprint()
        ):
            raise AvsalError(
                f"{args.checkpoint}: checkpoint is profile {model.config.profile}, not {wanted.profile} "
                "(drop --profile to export it as trained)"
            )
    else:
        config = load_config(args.profile or "paper", parse_overrides(args.set or []))
        torch.manual_seed(args.seed)
        model = build_model(config, args.variant or "hybrid")
        print("avsal: no --checkpoint: exporting randomly initialised weights", file=sys.stderr)
    print(f"exporting {model.variant} ({model.config.profile}) to {args.out} ...", file=sys.stderr)
    manifest = export_model(
        model,
        args.out,
        checkpoint=args.checkpoint,
        max_batch=args.max_batch,
        ddim_steps=args.ddim_steps,
        components=args.components,
        fold_conv3d=not args.no_fold_conv3d,
    )
    for entry in manifest["components"].values():
        ins = ", ".join(f"{t['name']}{t['shape']}" for t in entry["inputs"])
        print(f"  {entry['file']:<20} {ins}")
    print(f"manifest: {Path(args.out) / 'manifest.json'}")
    return 0


def cmd_build_engines(args: argparse.Namespace) -> int:
    from avsal_deploy.engine.trt import BuildOptions, build_engines

    opts = BuildOptions(timing_cache=Path(args.timing_cache) if args.timing_cache else None)
    plans = build_engines(Path(args.export), Path(args.out) if args.out else None, opts)
    for name, plan in plans.items():
        print(f"  {name:<15} {plan}")
    return 0


def cmd_quantize(args: argparse.Namespace) -> int:
    from avsal_deploy.export.quantize import calibration_feeds, quantize_export

    calibration = None
    if args.precision == "int8":
        if not args.calib_clips:
            raise AvsalError("--precision int8 needs --calib-clips VIDEO [VIDEO ...] to calibrate on")
        calibration = calibration_feeds(
            Path(args.export), [Path(c) for c in args.calib_clips], args.max_windows
        )
    out = quantize_export(args.export, args.out, args.precision, calibration)
    print(f"{args.precision} export: {out} (open it like any export; `avsal build-engines` for TensorRT)")
    return 0


# ------------------------------------------------------------------------- predict
def cmd_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from avsal_deploy.pipeline import Predictor, check_writable, predict_to_directory

    out = Path(args.out)
    check_writable(out)
    if args.sample:
        from avsal_deploy.data.synthetic import make_sample_clip

        video = make_sample_clip(out / "sample.mp4")
        print(f"sample clip: {video} (synthetic; ground truth in {video.with_name(video.stem + '_gt.npz')})")
    elif args.video:
        video = Path(args.video)
    else:
        raise AvsalError("give a VIDEO to predict, or --sample for the generated sample clip")

    def exporting(directory: Path) -> None:
        print(f"exporting ONNX components once into {directory} ...", file=sys.stderr)

    engine = open_cli_engine(args, exporting)
    with engine:
        predictor = Predictor(engine, args.steps, args.stride, args.batch_size, args.seed)
        bar = tqdm(total=None, unit="frame", desc="predict", disable=args.quiet, file=sys.stderr)

        def progress(done: int, total: int) -> None:  # frames written, frames expected
            bar.total = total
            bar.update(done - bar.n)

        try:
            summary = predict_to_directory(
                video,
                out,
                predictor,
                overlay=not args.no_overlay,
                pngs=not args.no_png,
                map_size=args.map_size,
                progress=progress,
            )
        finally:
            bar.close()
    t = summary["timings"]
    print(
        f"{summary['frames']} frames ({summary['engine']}, {summary['steps']} DDIM steps, stride "
        f"{summary['stride']}) in {summary['seconds']:.2f} s: decode {t['decode']:.2f} s, preprocess "
        f"{t['preprocess']:.2f} s, inference {t['inference']:.2f} s, write {t['write']:.2f} s (own thread) "
        f"({summary['frames_per_second']:.1f} frames/s, peak RSS {summary['peak_rss_mb']:.0f} MB)"
    )
    print(f"outputs in {out}: maps.npz, maps/, overlay.mp4, contact_sheet.png, summary.json")
    return 0


def open_cli_engine(args: argparse.Namespace, on_export: Callable[[Path], None] | None = None) -> Any:
    """The engine that ``--engine``, ``--checkpoint``, ``--export-dir`` and ``--triton-url`` name."""
    from avsal_deploy import engine as engines

    if args.engine == "triton":
        return engines.open(args.triton_url, "triton", export_dir=args.export_dir)
    if args.export_dir and args.checkpoint:
        raise AvsalError("give --checkpoint or --export-dir, not both")
    source = args.export_dir or args.checkpoint
    options = {"on_export": on_export} if args.engine == "onnxruntime" else {}
    return engines.open(source, args.engine, **options)


# ------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avsal", description="Audio-visual video saliency prediction (AVRSP + DiffSal)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "info", help="parameters, multiply-adds and FLOPs per component for a profile and variant"
    )
    _add_config_args(p)
    p.add_argument("--variant", default="hybrid", choices=[*VARIANTS, "all"])
    p.add_argument("--steps", type=int, default=None, help="DDIM steps counted per window")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_info)

    p = sub.add_parser(
        "convert",
        help="convert an official checkpoint (DiffSal, ViNet, AViNet, ViNet-S, TASED-Net) to an avsal one",
        description="Read SOURCE as the official training script saved it (torch.load with "
        "weights_only=True), map every key onto our modules strictly (unknown, missing or misshapen "
        "keys are refused) and write an avsal safetensors checkpoint with the family's input mode.",
    )
    p.add_argument("source", help="the official checkpoint file (.pth / .pt / .tar)")
    p.add_argument(
        "--from",
        dest="from_name",
        default=None,
        choices=list(CONVERT_SOURCES),
        help="the official model (default: detected from the keys); diffsal covers both of its networks",
    )
    p.add_argument("--out", required=True, help="the avsal checkpoint to write (.safetensors)")
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="config override on the family's input mode, e.g. fusion.upsampling=bilinear (ViNet-S's training build)",
    )
    p.set_defaults(handler=cmd_convert)

    p = sub.add_parser("models", help="the model zoo: every family with its size, cost, inputs and licence")
    p.add_argument("--json", action="store_true", help="machine-readable output (a JSON list)")
    p.set_defaults(handler=cmd_models)

    p = sub.add_parser("export", help="export the ONNX components, manifest and weights")
    p.add_argument("--profile", default=None, help="profile or config file (default: the checkpoint's)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="config override")
    p.add_argument(
        "--variant",
        default=None,
        choices=list(FAMILIES),
        help="model family (default: the checkpoint's, else hybrid)",
    )
    p.add_argument("--checkpoint", default=None, help="avsal safetensors checkpoint (default: random init)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--max-batch", type=int, default=8, help="largest batch in the min/opt/max profiles")
    p.add_argument("--ddim-steps", type=int, default=None, help="also export the fused N-step DDIM graph")
    p.add_argument("--seed", type=int, default=0, help="seed of the random init without --checkpoint")
    p.add_argument("--components", nargs="+", default=None, help="export only these components")
    p.add_argument(
        "--no-fold-conv3d",
        action="store_true",
        help="keep (1,k,k) / (k,1,1) 3-D convolutions 3-D (default: exact 2-D rewrites, faster on ONNX Runtime CPU)",
    )
    p.set_defaults(handler=cmd_export)

    p = sub.add_parser(
        "build-engines", help="build strongly typed TensorRT plans from an export (needs an NVIDIA GPU)"
    )
    p.add_argument("--export", required=True, help="`avsal export` or `avsal quantize` directory")
    p.add_argument("--out", default=None, help="where the .plan files go (default: the export directory)")
    p.add_argument("--timing-cache", default=None, help="TensorRT timing cache file, read and updated")
    p.set_defaults(handler=cmd_build_engines)

    p = sub.add_parser("quantize", help="an INT8 (Q/DQ, calibrated on clips) or FP16 copy of an export")
    p.add_argument("--export", required=True, help="directory written by `avsal export`")
    p.add_argument("--out", required=True, help="output export directory")
    p.add_argument("--precision", default="int8", choices=["int8", "fp16"])
    p.add_argument("--calib-clips", nargs="+", default=None, metavar="VIDEO", help="clips to calibrate on")
    p.add_argument("--max-windows", type=int, default=64, help="calibration windows in all")
    p.set_defaults(handler=cmd_quantize)

    p = sub.add_parser("predict", help="saliency maps, overlay video and contact sheet for a video")
    p.add_argument("video", nargs="?", help="video file (any container/codec FFmpeg reads)")
    p.add_argument("--sample", action="store_true", help="generate and predict the synthetic sample clip")
    p.add_argument("--out", default="out/predict", help="output directory (default: out/predict)")
    p.add_argument("--engine", default="onnxruntime", choices=ENGINES, help="inference backend")
    p.add_argument("--checkpoint", default=None, help="avsal checkpoint (default: the shipped synthetic one)")
    p.add_argument("--export-dir", default=None, help="use this `avsal export` directory instead")
    p.add_argument("--triton-url", default=None, help="Triton server for --engine triton (host:port)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps (0 = one-shot map on hybrid)")
    p.add_argument("--stride", type=int, default=None, help="predict every K-th frame, reuse in between")
    p.add_argument("--batch-size", type=int, default=1, help="windows per engine call")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling noise x_T")
    p.add_argument("--no-overlay", action="store_true", help="skip overlay.mp4 and contact_sheet.png")
    p.add_argument("--no-png", action="store_true", help="skip the per-frame PNG maps")
    p.add_argument(
        "--map-size",
        default="model",
        choices=["model", "source"],
        help="store maps.npz at the model's size (default: what the network computed, ~100x smaller "
        "at 720p; load_maps returns the video's size) or upsampled to the video's",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=cmd_predict, stops_cleanly=True)

    # Areas with several commands register their own sub-parsers (training, serving).
    for module in AREA_COMMANDS:
        importlib.import_module(module).register(sub)
    return parser


def main(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """Run the ``avsal`` command ``argv`` (default: the command line); its exit status.

    ``exiting``: the process exits right after (the console script), so the signal handlers of a
    command that stops cleanly stay in place after it (see :func:`entry`)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    interrupt.reset()
    # Commands with check points stop cleanly on SIGINT and SIGTERM (avsal_deploy.interrupt); the
    # others keep Python's Ctrl-C (KeyboardInterrupt) and the default SIGTERM.
    stopping = (
        interrupt.handle_signals(restore=not exiting)
        if getattr(args, "stops_cleanly", False)
        else contextlib.nullcontext()
    )
    try:
        with stopping:
            return handler(args)
    except AvsalError as exc:
        print(f"avsal: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        if exc.name not in TORCH_STACK:
            raise
        print(
            f"avsal: error: `avsal {args.command}` needs {exc.name}, which the base (runtime) install does "
            "not carry: pip install 'avsal-deploy[export]' (export, info) or 'avsal-deploy[train]'",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print(f"avsal: {interrupt.describe()}", file=sys.stderr)
        return interrupt.EXIT_INTERRUPTED


def entry() -> None:
    """The ``avsal`` console script. Once the command is done, SIGINT and SIGTERM are ignored while
    the interpreter exits: its finalisation puts the default action back in place of Python-level
    handlers, so a signal that came then would kill the finished process (through any of its
    threads) and replace its exit status."""
    code = main(exiting=True)
    for s in interrupt.SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    sys.exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
