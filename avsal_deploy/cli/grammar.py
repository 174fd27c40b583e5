"""The grammar every ``avsal`` command shares: one option name per meaning, shared defaults, one way
to give a list, old spellings as hidden aliases.

- **One name per meaning.** :data:`VOCABULARY` declares every option any command takes and what
  it means; a test checks that each command's options are in it (so ``--url`` is a Triton server
  everywhere, ``--export`` an ``avsal export`` directory, ``--out`` where outputs go, ``--json`` a
  flag printing JSON on stdout, ``--steps`` the DDIM steps, ``--batch-size`` the windows per engine
  call, while ``--max-batch`` stays the export's batch profile maximum, another meaning).
- **Shared options are added by one function each** (:func:`add_engine_options`,
  :func:`add_predict_options`, :func:`add_config_options`), so their names, defaults and help are
  the same in every command that has them; :func:`engine_choice` and :func:`predict_options` read
  them back as the library's objects.
- **Lists** are repeated flags (``--url A --url B``, ``--metric cc --metric nss``); no option takes
  a variable number of values or a comma-separated list.
- **Old spellings** (:data:`DEPRECATED`) still work for one release: hidden from ``--help`` and the
  reference, each prints one deprecation line on stderr (:func:`alias`).
- **Help and default** on every option: :class:`HelpFormatter` appends the default to a help text
  that does not state it.

Exit statuses (every command): :data:`EXIT_DONE` 0, :data:`EXIT_SOME_FAILED` 1 (some inputs failed,
the others are done), :data:`EXIT_USAGE` 2 (bad usage or input), 130 (interrupted by SIGINT or
SIGTERM, :data:`avsal_deploy.interrupt.EXIT_INTERRUPTED`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import Any

from avsal_deploy.engine.choice import BACKENDS, DEFAULT_BACKEND, EngineChoice
from avsal_deploy.interrupt import EXIT_INTERRUPTED

EXIT_DONE = 0
EXIT_SOME_FAILED = 1
EXIT_USAGE = 2
EXIT_CODES: dict[int, str] = {
    EXIT_DONE: "done",
    EXIT_SOME_FAILED: "some inputs failed (the others are done)",
    EXIT_USAGE: "bad usage or input (one line on stderr says what and where)",
    EXIT_INTERRUPTED: "interrupted by SIGINT or SIGTERM (finished outputs are kept)",
}

#: Every option of every command and what it means (one name per meaning across commands).
VOCABULARY: dict[str, str] = {
    # global
    "--help": "show the help and exit",
    "--version": "print the version and exit",
    "--quiet": "no progress bars or progress messages",
    "--verbose": "tracebacks with errors, debug messages",
    # the model and where it runs
    "--engine": "inference backend",
    "--checkpoint": "an avsal checkpoint file",
    "--export": "an `avsal export` directory",
    "--url": "a Triton server's endpoint",
    "--profile": "a config profile or config file",
    "--set": "a config or recipe override SECTION.FIELD=VALUE",
    "--variant": "the model family",
    "--from": "the official model a checkpoint comes from",
    # prediction
    "--steps": "DDIM steps",
    "--stride": "run the networks for every K-th frame",
    "--seed": "random seed",
    "--batch-size": "windows per engine call",
    "--max-batch": "the largest batch an export or repository accepts",
    "--overlay": "also write overlay.mp4 and contact_sheet.png",
    "--png": "also write the per-frame PNG maps",
    "--map-size": "the size maps.npz stores",
    "--sample": "the generated sample clip",
    # outputs
    "--out": "where the outputs go",
    "--json": "print JSON on stdout",
    "--force": "replace existing outputs",
    "--log": "a log file",
    # data sets and metrics
    "--gt": "ground truth to score against",
    "--dataset": "a data set's name",
    "--split": "a data set's split",
    "--fold": "a data set's fold",
    "--metric": "a saliency metric",
    "--audio": "the audio a model hears",
    "--noise": "the sampling-noise policy",
    # compute
    "--device": "a torch device",
    "--threads": "CPU threads",
    "--jobs": "items in flight",
    "--ray": "a Ray cluster's address",
    # export and engines
    "--component": "an exported component",
    "--no-fold-conv3d": "keep factorised 3-D convolutions 3-D",
    "--timing-cache": "a TensorRT timing cache file",
    "--precision": "numeric precision",
    "--calib-clip": "a calibration video",
    "--max-windows": "calibration windows in all",
    # serving
    "--platform": "the model platform of a Triton repository",
    "--instances": "instances per model",
    "--window-engine": "how the window models run the components",
    "--window-threads": "ONNX Runtime threads per window model instance",
    "--host": "the address a server binds to",
    "--http-port": "the HTTP port",
    "--grpc-port": "the gRPC port",
    "--metrics-port": "the metrics port",
    "--model": "a model to load",
    "--startup-timeout": "seconds to wait for a server",
    "--capture-option": "a demuxer option of a live input",
    "--seconds": "a time limit",
    "--fast": "as fast as the server answers",
    "--roi-out": "a ROI-encoded copy of the stream",
    "--roi-codec": "the encoder of the ROI copy",
    "--roi-crf": "the CRF of the ROI copy",
    # ROI coding
    "--maps": "saliency maps to use",
    "--bitrate": "a target bitrate",
    "--crf": "a constant rate factor",
    "--codec": "the video encoder",
    "--rate-points": "points of the rate-distortion curves",
    "--preset": "the encoder preset",
    "--strength": "QP per halving of importance",
    "--gamma": "exponent on block saliency",
    "--floor": "uniform share of the importance",
    "--max-delta": "clamp on the QP offset",
    "--release": "temporal release coefficient",
    "--qp-step": "QP quantisation of the offsets",
    "--not-neutral": "offsets relative to the mean importance",
    "--roi-route": "how ROI side data reaches the encoder",
    # training and research
    "--resume": "continue an interrupted run",
    "--data": "a data root",
    "--grid": "a grid of task variants",
    "--cell": "a cell of a grid",
    "--summary-only": "only the summary from existing results",
    "--no-control": "skip the mismatched-soundtrack control",
    "--seeds": "number of seeds",
    "--quick": "a short run",
    "--recipe": "a training recipe",
    "--videos": "number of videos",
    "--train-per-condition": "train videos per condition",
    "--test-per-condition": "test videos per condition",
    "--frames": "frames per video",
    "--audio-rate": "audio sample rate",
    "--objects": "objects per video",
    "--audio-lag-ms": "lag of the sound behind the picture",
    "--rate": "a pulse rate",
    "--rate-jitter": "pulse-rate jitter",
    "--shape": "a shape to draw",
    "--hues": "how hues are chosen",
    # benchmarks
    "--suite": "a benchmark suite file",
    "--suites": "the benchmarks directory",
    "--from-json": "a pytest-benchmark JSON file",
    "--no-node-profile": "skip the per-node profile",
}

#: Old spellings still accepted (hidden, with a deprecation line): old -> new.
DEPRECATED: dict[str, str] = {
    "--export-dir": "--export",
    "--triton-url": "--url",
    "--ddim-steps": "--steps",
    "--report": "--out",
    "--name": "--dataset",
    "--metrics": "--metric",
    "--components": "--component",
    "--calib-clips": "--calib-clip",
    "--models": "--model",
    "--cells": "--cell",
    "--rates": "--rate",
    "--shapes": "--shape",
    "--step": "--qp-step",
    "--no-overlay": "--overlay",
    "--no-png": "--png",
}


class HelpFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to a help text that does not state its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "default" in text
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or not action.option_strings
            or action.nargs == 0
        ):
            return text
        default = action.default
        if isinstance(default, list | tuple):
            default = " ".join(str(d) for d in default) or "none"
        return f"{text} (default: {default})"


def deprecation(old: str, new: str) -> None:
    """The one line an old spelling prints."""
    print(f"avsal: warning: {old} is deprecated and goes in the next release; use {new}", file=sys.stderr)


def alias(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    old: str,
    dest: str,
    *,
    convert: Callable[[Any, argparse.Namespace], Any] | None = None,
    nargs: Any = None,
    const: Any = None,
) -> None:
    """A hidden old spelling ``old`` of the option stored in ``dest`` (:data:`DEPRECATED` names the
    new one). ``convert(value, namespace)`` turns the old value into the new option's (e.g. a
    comma list into a list); ``nargs=0`` with ``const`` for an old flag."""
    new = DEPRECATED[old]

    class Deprecated(argparse.Action):
        def __call__(
            self,
            p: argparse.ArgumentParser,
            namespace: argparse.Namespace,
            values: Any,
            option_string: str | None = None,
        ) -> None:
            deprecation(old, new)
            value = const if nargs == 0 else values
            setattr(namespace, dest, convert(value, namespace) if convert is not None else value)

    parser.add_argument(
        old, dest=dest, nargs=nargs, action=Deprecated, default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )


def extend_commas(value: str, namespace: argparse.Namespace, dest: str, kind: type = str) -> list[Any]:
    """An old comma-separated list, added to what the repeated flag already collected."""
    return [*(getattr(namespace, dest, None) or []), *(kind(v) for v in value.split(",") if v)]


def list_alias(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    old: str,
    dest: str,
    *,
    kind: type = str,
    spaces: bool = False,
) -> None:
    """The hidden old spelling of a list option: comma-separated (``--metrics cc,nss``), or with
    ``spaces`` several values after one flag (``--components a b``)."""
    if spaces:
        alias(
            parser,
            old,
            dest,
            nargs="+",
            convert=lambda v, ns: [*(getattr(ns, dest, None) or []), *map(kind, v)],
        )
    else:
        alias(parser, old, dest, convert=lambda v, ns: extend_commas(v, ns, dest, kind))


# ----------------------------------------------------------------------------- shared options
def add_config_options(
    p: argparse.ArgumentParser, default_profile: str | None = "paper", what: str = ""
) -> None:
    """``--profile`` and ``--set``."""
    from avsal_deploy.config import PROFILES

    shown = f"default: {default_profile}" if default_profile is not None else f"default: {what}"
    p.add_argument(
        "--profile",
        default=default_profile,
        metavar="PROFILE",
        help=f"profile name ({', '.join(PROFILES)}) or a TOML/JSON config file ({shown})",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="SECTION.FIELD=VALUE",
        help="override one config field, e.g. --set video.height=128 (repeatable)",
    )


def add_engine_options(
    p: argparse.ArgumentParser,
    *,
    checkpoint: bool = True,
    export: bool = True,
    urls: bool = False,
    old_export: bool = True,
    old_url: bool = True,
) -> None:
    """``--engine``, ``--checkpoint``, ``--export`` and ``--url``: the model and where it runs
    (:class:`~avsal_deploy.engine.choice.EngineChoice`). ``urls``: ``--url`` is repeatable
    (several servers share the work)."""
    p.add_argument(
        "--engine",
        default=None,
        choices=BACKENDS,
        help=f"inference backend (default: {DEFAULT_BACKEND}; triton when --url is given)",
    )
    if checkpoint:
        p.add_argument(
            "--checkpoint",
            default=None,
            metavar="FILE",
            help="avsal checkpoint, exported once into the cache for onnxruntime (default: the shipped one)",
        )
    if export:
        p.add_argument(
            "--export",
            default=None,
            metavar="DIR",
            help="an `avsal export` directory (instead of --checkpoint; with triton: the served export)",
        )
        if old_export:
            alias(p, "--export-dir", "export")
    p.add_argument(
        "--url",
        action="append" if urls else "store",
        default=None,
        metavar="URL",
        help="a Triton server's HTTP endpoint (host:port) for --engine triton"
        + ("; repeat it to spread the work over servers" if urls else "")
        + " (default: 127.0.0.1:8000, `avsal serve`'s)",
    )
    if old_url:
        alias(p, "--triton-url", "url")


def engine_choice(args: argparse.Namespace) -> EngineChoice:
    """The :class:`~avsal_deploy.engine.choice.EngineChoice` of :func:`add_engine_options`'s options."""
    urls = args.url if isinstance(args.url, list) else ([args.url] if args.url else [])
    return EngineChoice.of(
        args.engine or ("triton" if urls else None),
        getattr(args, "checkpoint", None),
        getattr(args, "export", None),
        urls[0] if len(urls) == 1 else None,  # several: one per worker (avsal score)
    )


def add_predict_options(
    p: argparse.ArgumentParser, *, batch: bool = True, stride_help: str | None = None
) -> None:
    """``--steps``, ``--stride``, ``--seed`` (and ``--batch-size``): how maps are computed
    (:class:`~avsal_deploy.pipeline.PredictOptions`)."""
    p.add_argument(
        "--steps",
        type=int,
        default=None,
        metavar="N",
        help="DDIM steps per window (default: the model's config; 0 = the one-shot map of hybrid)",
    )
    p.add_argument(
        "--stride",
        type=int,
        default=None,
        metavar="K",
        help=stride_help
        or "run the networks for every K-th frame, the others show the nearest map "
        "(default: the config's window stride, 1)",
    )
    p.add_argument(
        "--seed", type=int, default=0, metavar="N", help="seed of the sampling noise x_T (one per video)"
    )
    if batch:
        p.add_argument("--batch-size", type=int, default=1, metavar="N", help="windows per engine call")


def predict_options(args: argparse.Namespace) -> Any:
    """The :class:`~avsal_deploy.pipeline.PredictOptions` of :func:`add_predict_options`'s options."""
    from avsal_deploy.pipeline import PredictOptions

    return PredictOptions(
        steps=args.steps, stride=args.stride, seed=args.seed, batch_size=getattr(args, "batch_size", 1)
    )


def add_output_options(
    p: argparse.ArgumentParser, *, png: bool = True, sheet: bool = True, old_negatives: bool = False
) -> None:
    """``--overlay`` and ``--png``: the optional outputs of a prediction (off by default in every
    command; ``maps.npz`` is always written). ``sheet``: the command also writes the contact sheet
    with the overlay."""
    with_sheet = " and contact_sheet.png" if sheet else ""
    p.add_argument("--overlay", action="store_true", help=f"also write overlay.mp4{with_sheet}")
    if png:
        p.add_argument("--png", action="store_true", help="also write the per-frame PNG maps (maps/)")
    if old_negatives:  # the old default was on; the old flags keep meaning "not this output"
        alias(p, "--no-overlay", "overlay", nargs=0, const=False)
        if png:
            alias(p, "--no-png", "png", nargs=0, const=False)


def add_out(
    p: argparse.ArgumentParser, help: str, *, required: bool = False, default: str | None = None
) -> None:
    """``--out``: where a command's outputs go."""
    p.add_argument("--out", required=required, default=default, metavar="PATH", help=help)


def add_json(p: argparse.ArgumentParser, what: str = "the result") -> None:
    """``--json``: a flag printing ``what`` as JSON on stdout instead of the tables."""
    p.add_argument("--json", action="store_true", help=f"print {what} as JSON on stdout")


def add_quiet_alias(p: argparse.ArgumentParser) -> None:
    """The old per-command ``--quiet`` (now ``avsal -q COMMAND``)."""

    class OldQuiet(argparse.Action):
        def __call__(
            self, parser: Any, namespace: argparse.Namespace, values: Any, option: Any = None
        ) -> None:
            print("avsal: warning: COMMAND --quiet is deprecated; use avsal -q COMMAND", file=sys.stderr)
            namespace.quiet = True

    p.add_argument("--quiet", nargs=0, action=OldQuiet, default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def command(
    sub: argparse._SubParsersAction,  # type: ignore[type-arg]
    name: str,
    help: str,
    handler: Callable[[argparse.Namespace], int],
    *,
    description: str | None = None,
    stops_cleanly: bool = False,
) -> argparse.ArgumentParser:
    """A sub-command with the shared formatter; ``stops_cleanly``: it has check points for
    SIGINT / SIGTERM (:mod:`avsal_deploy.interrupt`)."""
    p: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description or help[:1].upper() + help[1:] + ".",
        formatter_class=HelpFormatter,
    )
    p.set_defaults(handler=handler, stops_cleanly=stops_cleanly)
    return p


def visible_options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The options of ``parser`` shown in its help (hidden aliases and positionals excluded)."""
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]


def subcommands(
    parser: argparse.ArgumentParser, prefix: Sequence[str] = ()
) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (sub-)command of ``parser`` as ``("predict", parser)``, ``("experiment audio-relevance", ...)``."""
    out: list[tuple[str, argparse.ArgumentParser]] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                path = [*prefix, name]
                nested = subcommands(child, path)
                out += nested if nested else [(" ".join(path), child)]
    return out
