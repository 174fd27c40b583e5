"""Stopping on SIGINT and SIGTERM, one way for every long-running command.

A scheduler (Slurm, Kubernetes, Ray, systemd, ``docker stop``) stops a job with SIGTERM, a person
with Ctrl-C (SIGINT); ``avsal score``, ``predict``, ``stream``, ``serve`` and ``train`` treat both
alike. The signal handler (:func:`handle_signals`, installed by the CLI) only *requests* the stop;
the work notices it at its next check point (:func:`check`, between frames, videos, training steps)
and winds down in order:

- it stops taking work and discards the item in flight atomically (a video's private temporary
  directory is removed, a training run writes its resumable checkpoint after the current step);
- worker threads are joined and servers, shared memory and temporary files released;
- the command exits with status 130 (for SIGTERM too).

Stopping at a check point, never by raising inside whatever C++ code a thread happens to run, is
what keeps the exit clean: a process that exits while another thread is still inside torch or
ONNX Runtime aborts in their static destructors (``terminate called without an active exception``,
SIGABRT). A second signal while the first is being handled exits at once (``os._exit(130)``): the
finished outputs are untouched (they are only ever replaced by a rename), but the temporary files of
the item in flight may stay behind (the next run of ``avsal score`` removes them).

The stop request is process-wide state (signals are), read by library code through
:func:`requested` / :func:`check`; a library user can also call :func:`request` from another
thread. :func:`reset` clears it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from types import FrameType

#: The exit status of a command stopped by SIGINT or SIGTERM.
EXIT_INTERRUPTED = 130
SIGNALS: tuple[signal.Signals, ...] = (signal.SIGINT, signal.SIGTERM)

_stop = threading.Event()
_received: list[int] = []


class Interrupted(KeyboardInterrupt):
    """Raised at a check point once a stop was requested (a ``KeyboardInterrupt``, so that code
    which isolates failures with ``except Exception`` lets it through)."""


def request(signum: int = signal.SIGINT) -> None:
    """Ask the running work to stop at its next check point."""
    _received.append(int(signum))
    _stop.set()


def requested() -> bool:
    """Whether a stop was requested."""
    return _stop.is_set()


def check() -> None:
    """Raise :class:`Interrupted` if a stop was requested (a check point)."""
    if _stop.is_set():
        raise Interrupted(describe())


def wait(timeout: float) -> bool:
    """Sleep up to ``timeout`` seconds or until a stop is requested; whether one was."""
    return _stop.wait(timeout)


def describe() -> str:
    """The signal that requested the stop, by name (``interrupted`` without one)."""
    if not _received:
        return "interrupted"
    try:
        return f"interrupted by {signal.Signals(_received[0]).name}"
    except ValueError:
        return "interrupted"


def reset() -> None:
    """Forget a stop request (for the next piece of work in the same process)."""
    _received.clear()
    _stop.clear()


def _handler(signum: int, frame: FrameType | None) -> None:
    if _stop.is_set():  # a second signal: the user does not want to wait
        try:
            os.write(2, b"avsal: second signal, exiting now\n")
        finally:
            os._exit(EXIT_INTERRUPTED)
    request(signum)
    os.write(2, f"avsal: {signal.Signals(signum).name} received, stopping ...\n".encode())


@contextlib.contextmanager
def handle_signals(restore: bool = True) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM request a stop instead of raising or killing (main
    thread only; elsewhere the block changes nothing). The previous handlers come back after it,
    unless ``restore`` is false (a process that exits after the block: a signal that comes while it
    exits then changes nothing, where Python's own handlers would kill it mid-exit)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _handler) for s in SIGNALS}
    try:
        yield
    finally:
        if restore:
            for s, handler in previous.items():
                signal.signal(s, handler)
        sys.stderr.flush()


__all__ = [
    "EXIT_INTERRUPTED",
    "Interrupted",
    "check",
    "describe",
    "handle_signals",
    "request",
    "requested",
    "reset",
    "wait",
]
