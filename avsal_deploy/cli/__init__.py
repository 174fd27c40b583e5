"""``avsal``: the command line. It parses arguments, calls the library and reports; nothing more.

Every command shares one grammar (:mod:`avsal_deploy.cli.grammar`: option names, defaults, lists,
old spellings) and one set of exit statuses: 0 done, 1 some inputs failed, 2 bad usage or input
(any :class:`~avsal_deploy.errors.AvsalError` becomes one line on stderr), 130 interrupted.
``avsal -q`` / ``avsal -v`` go before the command. :mod:`avsal_deploy.cli.reference` renders every
option of every command as the Markdown table of ``docs/cli.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
import traceback
from collections.abc import Callable, Sequence

from avsal_deploy import interrupt
from avsal_deploy._version import __version__
from avsal_deploy.cli import bench, models, predict, research, roi, scoring, serving, training
from avsal_deploy.cli.grammar import EXIT_CODES, EXIT_USAGE, HelpFormatter, deprecation
from avsal_deploy.cli.research import RESEARCH_HINT
from avsal_deploy.errors import AvsalError

Handler = Callable[[argparse.Namespace], int]
#: The command modules, in the order ``avsal --help`` lists their commands.
COMMAND_MODULES = (models, predict, serving, scoring, roi, bench, training, research)
#: Modules of the export / training stack (the ``export`` and ``train`` extras).
TORCH_STACK = ("torch", "onnx", "onnxscript", "matplotlib")

__all__ = ["EXIT_CODES", "RESEARCH_HINT", "build_parser", "entry", "main"]


def _epilog() -> str:
    codes = "\n".join(f"  {code:<4} {meaning}" for code, meaning in EXIT_CODES.items())
    return f"exit status:\n{codes}"


class _TopFormatter(HelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The top-level help: the exit statuses as written."""


def build_parser() -> argparse.ArgumentParser:
    """The ``avsal`` parser: global options, then one sub-command per command."""
    parser = argparse.ArgumentParser(
        prog="avsal",
        description="Audio-visual video saliency: predict, export, serve, score and train.",
        epilog=_epilog(),
        formatter_class=_TopFormatter,
    )
    parser.add_argument(
        "--version", action="version", version=f"avsal {__version__}", help="print the version and exit"
    )
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress bars or progress messages (results and errors still print)",
    )
    loudness.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="an error also prints its traceback; debug messages on stderr",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(sub)
    return parser


def _legacy_argv(argv: list[str]) -> list[str]:
    """Old spellings the parser cannot take as hidden aliases: ``avsal eval ... --json FILE`` (the
    report file; ``--json`` is now a flag and ``--out FILE`` names the file)."""
    if "eval" not in argv:
        return argv
    out: list[str] = []
    items = iter(argv)
    for arg in items:
        if arg.startswith("--json="):
            deprecation("eval --json FILE", "--out FILE")
            out += ["--out", arg.split("=", 1)[1]]
            continue
        if arg == "--json":
            following = next(items, None)
            if following is not None and following.lower().endswith(".json"):
                deprecation("eval --json FILE", "--out FILE")
                out += ["--out", following]
                continue
            out.append(arg)
            if following is not None:
                out.append(following)
            continue
        out.append(arg)
    return out


def _report(exc: BaseException, verbose: bool) -> None:
    if verbose:
        traceback.print_exception(exc, file=sys.stderr)


def main(argv: Sequence[str] | None = None, *, exiting: bool = False) -> int:
    """Run the ``avsal`` command ``argv`` (default: the command line); its exit status.

    ``exiting``: the process exits right after (the console script), so the signal handlers of a
    command that stops cleanly stay in place after it (see :func:`entry`)."""
    parser = build_parser()
    args = parser.parse_args(_legacy_argv(list(sys.argv[1:] if argv is None else argv)))
    if args.verbose:
        logging.basicConfig(level=logging.DEBUG)
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
        _report(exc, args.verbose)
        print(f"avsal: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except ModuleNotFoundError as exc:
        if exc.name not in TORCH_STACK:
            raise
        _report(exc, args.verbose)
        print(
            f"avsal: error: `avsal {args.command}` needs {exc.name}, which the base (runtime) install does "
            "not carry: pip install 'avsal-deploy[export]' (export, info, models) or 'avsal-deploy[train]'",
            file=sys.stderr,
        )
        return EXIT_USAGE
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
