"""``avsal score --ray ADDRESS``: the same scoring as Ray actors on an existing cluster.

Each actor holds one engine (:class:`~avsal_deploy.scoring.scorer.Scorer`) and scores one video per
call with exactly the code a local worker runs, so outputs, ``score.json`` records, the resume
rules and the summary are the same; the output directory must be shared by every node (NFS, a
mounted bucket). Ray's own :class:`ray.util.ActorPool` hands the videos to idle actors; an actor
that dies is restarted by Ray and its call retried (``max_restarts`` / ``max_task_retries``).
Every node needs ``avsal-deploy`` installed (``pip install 'avsal-deploy[cluster]'``), or a
``runtime_env`` that provides it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from avsal_deploy import interrupt
from avsal_deploy.errors import AvsalError, BackendUnavailableError
from avsal_deploy.scoring.inputs import VideoItem

CLUSTER_HINT = "install the 'cluster' extra: pip install 'avsal-deploy[cluster]'"


def import_ray() -> Any:
    """The ``ray`` module, or a clear error where it is not installed."""
    try:
        import ray
    except ImportError as exc:
        raise BackendUnavailableError(f"--ray needs Ray; {CLUSTER_HINT}") from exc
    return ray


class _ScorerActor:
    """A Ray actor around one :class:`~avsal_deploy.scoring.scorer.Scorer` (one engine)."""

    def __init__(self, out_dir: str, settings: Any, run: dict[str, Any], server: str | None) -> None:
        import ray

        from avsal_deploy.scoring.scorer import Scorer

        self.scorer = Scorer(out_dir, settings, run, server)
        where = server or f"ray:{ray.util.get_node_ip_address()}"
        self.scorer.label = f"{where}/pid{os.getpid()}"

    def score(self, index: int, item: VideoItem) -> tuple[int, Any]:
        from avsal_deploy.scoring.scorer import ServerGone, VideoResult

        try:
            return index, self.scorer.score_item(item)
        except ServerGone as gone:
            return index, VideoResult(
                path=item.path, rel=item.rel, status="failed", error=str(gone), server=self.scorer.label
            )


def run_on_ray(
    address: str,
    items: Sequence[VideoItem],
    out_dir: Path,
    settings: Any,
    run: dict[str, Any],
    jobs: int,
) -> Iterator[tuple[int, Any]]:
    """Score ``items`` on ``jobs`` Ray actors of the cluster at ``address`` (``auto``, ``ray://...``,
    ``host:port``); an already initialised Ray (e.g. a local instance) is used as it is.
    Yields ``(index, VideoResult)`` as videos finish."""
    ray = import_ray()
    from ray.util import ActorPool

    started = False
    if not ray.is_initialized():
        try:
            ray.init(address=address)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise AvsalError(f"--ray {address}: cannot connect to a Ray cluster ({exc})") from exc
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_restarts=1, max_task_retries=1)(_ScorerActor)
        servers = settings.servers()
        actors = [
            remote.remote(str(out_dir), settings, run, servers[i % len(servers)])
            for i in range(max(jobs, len(servers)))
        ]
        pool = ActorPool(actors)
        for i, item in enumerate(items):
            pool.submit(lambda actor, job: actor.score.remote(*job), (i, item))
        try:
            while pool.has_next():
                try:
                    yield pool.get_next_unordered(timeout=0.5)
                except TimeoutError:
                    interrupt.check()  # stopping kills the actors: their videos in flight are discarded
                except ray.exceptions.RayError as exc:
                    raise AvsalError(
                        f"Ray: an actor failed for good ({' '.join(str(exc).split())[:300]})"
                    ) from exc
        finally:
            for actor in actors:
                ray.kill(actor)
    finally:
        if started:
            ray.shutdown()
