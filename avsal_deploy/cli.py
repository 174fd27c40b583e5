"""``avsal``: the command line. It parses arguments, calls the library and reports; nothing more.

User errors (:class:`~avsal_deploy.errors.AvsalError`) become one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from avsal_deploy.config import PROFILES, VARIANTS, Config, load_config
from avsal_deploy.errors import AvsalError

Handler = Callable[[argparse.Namespace], int]


def _parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """``section.field=value`` pairs; values parsed as JSON where they parse, else kept as text."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise AvsalError(f"override {item!r}: expected section.field=value")
        try:
            out[key] = json.loads(raw)
        except json.JSONDecodeError:
            out[key] = raw
    return out


def _config(args: argparse.Namespace) -> Config:
    return load_config(args.profile, _parse_overrides(getattr(args, "set", None) or []))


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
    import torch

    from avsal_deploy.models import build_model, count_flops, count_parameters

    config = _config(args)
    variants = VARIANTS if args.variant == "all" else (args.variant,)
    report: dict[str, Any] = {"profile": config.profile, "config": config.to_dict(), "variants": {}}
    for variant in variants:
        with torch.device("meta"):
            model = build_model(config, variant)
        params = count_parameters(model)
        flops = count_flops(model, config, steps=args.steps)
        report["variants"][variant] = {
            "parameters": params,
            "flops": flops,
            "inputs": {
                "frames": [None, *config.frames_shape(variant)],
                "audio": [None, *config.audio_input_shape(variant)],
            },
            "architecture_fingerprint": config.architecture_fingerprint(),
        }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"profile {config.profile}: frames {config.video.height}x{config.video.width}")
    for variant, rep in report["variants"].items():
        f = rep["flops"]
        print(f"\n{variant}: frames {rep['inputs']['frames'][1:]}, audio {rep['inputs']['audio'][1:]}")
        print(f"  {'component':<15}{'params':>12}{'FLOPs':>14}")
        for comp in ("video_encoder", "audio_encoder", "fusion", "unet"):
            if comp in rep["parameters"]:
                key = "unet_step" if comp == "unet" else comp
                label = "unet (1 step)" if comp == "unet" else comp
                print(
                    f"  {label:<15}{_human(rep['parameters'][comp]):>12}{_human(f.get(key, 0), 'FLOP'):>14}"
                )
        print(f"  {'total':<15}{_human(rep['parameters']['total']):>12}")
        print(f"  per window with {f['steps']} DDIM step(s): {_human(f['per_window'], 'FLOP')}")
    return 0


# ------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="avsal", description="Audio-visual video saliency prediction (AVRSP + DiffSal)."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", help="parameters and FLOPs per component for a profile and variant")
    _add_config_args(p)
    p.add_argument("--variant", default="hybrid", choices=[*VARIANTS, "all"])
    p.add_argument("--steps", type=int, default=None, help="DDIM steps counted per window")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(handler=cmd_info)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except AvsalError as exc:
        print(f"avsal: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("avsal: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
