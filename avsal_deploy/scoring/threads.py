"""Scoring on worker threads of this process: one engine per worker, at least one per Triton server.

:func:`run_threads` is what :func:`avsal_deploy.scoring.core.score` runs without ``--ray``. The
workers pull videos from one queue; a video whose Triton server stops answering goes back in the
queue for another server (and fails only when no server is left); a stop request
(:mod:`avsal_deploy.interrupt`) discards the videos in flight and joins every worker.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from avsal_deploy import interrupt
from avsal_deploy.errors import AvsalError
from avsal_deploy.scoring.inputs import VideoItem
from avsal_deploy.scoring.scorer import Scorer, ScoreSettings, ServerGone, VideoResult, server_ready


@dataclass
class _Task:
    item: VideoItem
    index: int
    tried: list[str] = field(default_factory=list)


def _failed(task: _Task, message: str) -> VideoResult:
    return VideoResult(
        path=task.item.path,
        rel=task.item.rel,
        status="failed",
        error=message if task.item.path in message else f"{task.item.path}: {message}",
        attempts=max(1, len(task.tried)),
        servers_tried=list(task.tried),
    )


class _Pool:
    """The worker threads of one run and the queues between them and the consumer.

    Workers put ``(index, result)`` on ``results`` per video, and ``None`` when they stop (the
    consumer then checks whether an opening failed or every worker is gone)."""

    def __init__(
        self,
        items: Sequence[VideoItem],
        out_dir: Path,
        settings: ScoreSettings,
        run: dict[str, Any],
        jobs: int,
    ) -> None:
        self.out_dir, self.settings, self.run = out_dir, settings, run
        self.servers = settings.servers()
        self.tasks: queue.Queue[_Task] = queue.Queue()
        for i, item in enumerate(items):
            self.tasks.put(_Task(item, i))
        self.results: queue.Queue[tuple[int, VideoResult] | None] = queue.Queue()
        self.remaining = len(items)  # results the consumer still waits for
        self.pending = len(items)  # videos no worker has finished
        self.workers = max(jobs, len(self.servers))
        self.error: BaseException | None = None
        self.dead: set[str] = set()
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.threads = [
            threading.Thread(
                target=self._worker,
                args=(self.servers[i % len(self.servers)],),
                daemon=True,
                name=f"avsal-score-{i}",
            )
            for i in range(self.workers)
        ]

    # ------------------------------------------------------------------ workers
    def _worker(self, server: str | None) -> None:
        scorer = None
        try:
            scorer = self._open(server)
            if scorer is not None:
                self._work(scorer)
        finally:
            if scorer is not None:
                scorer.close()
            with self.lock:
                self.workers -= 1
            self.results.put(None)  # wake the consumer: it checks whether any worker is left

    def _open(self, server: str | None) -> Scorer | None:
        """The worker's scorer; None when its engine cannot be opened (a dead server is noted,
        any other error is kept for the consumer to raise)."""
        try:
            return Scorer(self.out_dir, self.settings, self.run, server)
        except Exception as exc:  # noqa: BLE001 - reported by the consumer
            with self.lock:
                if server is None or server_ready(server):
                    self.error = exc
                else:
                    self.dead.add(server)
            return None

    def _work(self, scorer: Scorer) -> None:
        """Score videos from the queue until none is pending, a stop is requested or the server goes."""
        while not self.stopping.is_set() and not interrupt.requested():
            with self.lock:
                if self.pending == 0:
                    return
            try:
                task = self.tasks.get(timeout=0.1)
            except queue.Empty:
                continue
            try:
                result = scorer.score_item(task.item)
            except interrupt.Interrupted:
                return  # the video in flight was discarded (its private directory removed)
            except ServerGone as gone:
                self._requeue(task, gone)
                return
            if result.status != "skipped":
                result.attempts = len(task.tried) + 1
                result.servers_tried = [*task.tried, scorer.label]
            self._finish(task.index, result)

    def _requeue(self, task: _Task, gone: ServerGone) -> None:
        """A video whose server stopped answering: to another server, or failed if none is left."""
        task.tried.append(gone.url)
        with self.lock:
            self.dead.add(gone.url)
            others = [s for s in self.servers if s is not None and s not in self.dead]
        if others:
            self.tasks.put(task)
        else:
            self._finish(task.index, _failed(task, f"{gone} (no Triton server left)"))

    def _finish(self, index: int, result: VideoResult) -> None:
        with self.lock:
            self.pending -= 1
        self.results.put((index, result))

    # ------------------------------------------------------------------ the consumer
    def start(self) -> None:
        for t in self.threads:
            t.start()

    def stop(self) -> None:
        """Stop the workers and wait for them (an interrupted run waits for the videos in flight
        to be discarded)."""
        self.stopping.set()
        for t in self.threads:
            t.join()

    def collect(self) -> Iterator[tuple[int, VideoResult]]:
        """``(index, result)`` per video as workers finish them."""
        while self.remaining:
            try:
                got = self.results.get(timeout=0.2)
            except queue.Empty:
                interrupt.check()
                continue
            if got is not None:
                self.remaining -= 1
                yield got
                continue
            interrupt.check()  # a worker that stopped for a stop request is no failure
            yield from self._after_a_worker_stopped()

    def _after_a_worker_stopped(self) -> Iterator[tuple[int, VideoResult]]:
        """Raise the error that kept a worker from opening its engine; when every worker is gone,
        fail what is still queued."""
        with self.lock:
            workers_left, error = self.workers, self.error
        if error is not None:
            if isinstance(error, AvsalError):
                raise error
            backend = self.settings.engine.backend
            raise AvsalError(f"cannot open the {backend} engine: {' '.join(str(error).split())}")
        if workers_left == 0:  # every server gone: what is still queued fails
            yield from self._fail_queued()
            yield from self._drain_results()
            if self.remaining:
                raise AvsalError(f"all workers stopped with {self.remaining} video(s) unscored")

    def _fail_queued(self) -> Iterator[tuple[int, VideoResult]]:
        while True:
            try:
                task = self.tasks.get_nowait()
            except queue.Empty:
                return
            self.remaining -= 1
            tried = ", ".join(task.tried) or ", ".join(s for s in self.servers if s)
            yield task.index, _failed(task, f"{task.item.path}: no Triton server left (tried {tried})")

    def _drain_results(self) -> Iterator[tuple[int, VideoResult]]:
        while not self.results.empty():
            got = self.results.get()
            if got is not None:
                self.remaining -= 1
                yield got


def run_threads(
    items: Sequence[VideoItem], out_dir: Path, settings: ScoreSettings, run: dict[str, Any], jobs: int
) -> Iterator[tuple[int, VideoResult]]:
    """Score ``items`` on ``jobs`` threads (at least one per Triton URL); yields ``(index, result)``
    as videos finish."""
    pool = _Pool(items, out_dir, settings, run, jobs)
    pool.start()
    try:
        yield from pool.collect()
    finally:
        pool.stop()
    interrupt.check()
