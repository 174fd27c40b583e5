"""``avsal info``, ``convert``, ``models``, ``export``, ``build-engines`` and ``quantize``: the models."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from avsal_deploy.cli.grammar import add_config_options, add_json, add_out, alias, command, list_alias
from avsal_deploy.config import CONVERT_SOURCES, FAMILIES, VARIANTS, load_config, parse_overrides
from avsal_deploy.errors import AvsalError


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

    config = load_config(args.profile, parse_overrides(args.set or []))
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


def cmd_models(args: argparse.Namespace) -> int:
    from avsal_deploy.models.zoo import model_zoo

    rows = model_zoo()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    speed = "s/frame (ONNX Runtime, batch 1)"
    print(f"{'family':<24}{'profile':<8}{'params':>9}{'GFLOP/window':>14}  {speed}  {'audio':<6} input")
    for r in rows:
        cost = "-" if r["s_per_frame_ort_b1"] is None else f"{r['s_per_frame_ort_b1']:.3g}"
        print(
            f"{r['family']:<24}{r['profile'] or '-':<8}{r['params'] / 1e6:>8.1f}M{r['gflops_per_window']:>14.1f}  "
            f"{cost:>{len(speed)}}  {'yes' if r['audio'] else 'no':<6} {r['input_mode']}"
        )
    measured = sorted({r["cost_measured"] for r in rows if r["cost_measured"]})
    if measured:
        print(
            "\ns/frame: one window per output frame (stride 1) at the default DDIM steps, measured "
            + "; ".join(measured)
            + " (`-`: not measured at this size)"
        )
    else:
        print("\ns/frame: not measured yet (the model-zoo benchmark, docs/benchmarks.md)")
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
    if not args.quiet:
        print(f"exporting {model.variant} ({model.config.profile}) to {args.out} ...", file=sys.stderr)
    manifest = export_model(
        model,
        args.out,
        checkpoint=args.checkpoint,
        max_batch=args.max_batch,
        ddim_steps=args.steps,
        components=args.component,
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
    from avsal_deploy import engine as engines
    from avsal_deploy.export.quantize import calibration_feeds, quantize_export

    calibration = None
    if args.precision == "int8":
        if not args.calib_clip:
            raise AvsalError("--precision int8 needs --calib-clip VIDEO (repeatable) to calibrate on")
        with engines.open(args.export, "onnxruntime") as ort:
            calibration = calibration_feeds(ort, [Path(c) for c in args.calib_clip], args.max_windows)
    out = quantize_export(args.export, args.out, args.precision, calibration)
    print(f"{args.precision} export: {out} (open it like any export; `avsal build-engines` for TensorRT)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add the model commands to the ``avsal`` parser."""
    p = command(
        sub, "info", "parameters, multiply-adds and FLOPs per component for a profile and variant", cmd_info
    )
    add_config_options(p)
    p.add_argument("--variant", default="hybrid", choices=[*VARIANTS, "all"], help="model variant, or all")
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="DDIM steps counted per window (default: the config's)",
    )
    add_json(p, "the report")

    p = command(
        sub,
        "convert",
        "convert an official checkpoint (DiffSal, ViNet, AViNet, ViNet-S, TASED-Net) to an avsal one",
        cmd_convert,
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
    add_out(p, "the avsal checkpoint to write (.safetensors)", required=True)
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="config override on the family's input mode, e.g. fusion.upsampling=bilinear (ViNet-S's training build)",
    )

    p = command(
        sub, "models", "the model zoo: every family with its size, cost, inputs and licence", cmd_models
    )
    add_json(p, "the zoo (a list)")

    p = command(sub, "export", "export the ONNX components, manifest and weights", cmd_export)
    add_config_options(p, None, "the checkpoint's, else paper")
    p.add_argument(
        "--variant",
        default=None,
        choices=list(FAMILIES),
        help="model family (default: the checkpoint's, else hybrid)",
    )
    p.add_argument(
        "--checkpoint", default=None, metavar="FILE", help="avsal checkpoint (default: random init)"
    )
    add_out(p, "output directory", required=True)
    p.add_argument(
        "--max-batch", type=int, default=8, metavar="N", help="largest batch in the min/opt/max profiles"
    )
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="also export the fused N-step DDIM graph (default: none)",
    )
    alias(p, "--ddim-steps", "steps")
    p.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the random init without --checkpoint"
    )
    p.add_argument(
        "--component",
        action="append",
        default=None,
        metavar="NAME",
        help="export only this component (repeatable; default: every component)",
    )
    list_alias(p, "--components", "component", spaces=True)
    p.add_argument(
        "--no-fold-conv3d",
        action="store_true",
        help="keep (1,k,k) / (k,1,1) 3-D convolutions 3-D (default: exact 2-D rewrites, faster on ONNX Runtime CPU)",
    )

    p = command(
        sub,
        "build-engines",
        "build strongly typed TensorRT plans from an export (needs an NVIDIA GPU)",
        cmd_build_engines,
    )
    p.add_argument(
        "--export", required=True, metavar="DIR", help="`avsal export` or `avsal quantize` directory"
    )
    add_out(p, "where the .plan files go (default: the export directory)")
    p.add_argument(
        "--timing-cache",
        default=None,
        metavar="FILE",
        help="TensorRT timing cache file, read and updated (default: none)",
    )

    p = command(
        sub, "quantize", "an INT8 (Q/DQ, calibrated on clips) or FP16 copy of an export", cmd_quantize
    )
    p.add_argument("--export", required=True, metavar="DIR", help="directory written by `avsal export`")
    add_out(p, "output export directory", required=True)
    p.add_argument(
        "--precision", default="int8", choices=["int8", "fp16"], help="numeric precision of the copy"
    )
    p.add_argument(
        "--calib-clip",
        action="append",
        default=None,
        metavar="VIDEO",
        help="a clip to calibrate on (repeatable; int8)",
    )
    list_alias(p, "--calib-clips", "calib_clip", spaces=True)
    p.add_argument("--max-windows", type=int, default=64, metavar="N", help="calibration windows in all")
