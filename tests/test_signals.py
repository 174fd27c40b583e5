"""SIGINT and SIGTERM stop `avsal predict`, `train`, `serve` and `stream` cleanly: exit 130, never an
abort, nothing half-written, the server and its resources released (``avsal score`` has its own
test at 20 random moments in tests/test_scoring.py). Each command runs in its own process, as a
scheduler or a person runs it, and gets its signal once its handlers are in place and it is busy."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import catches_sigterm
from media_utils import write_video

from avsal_deploy.outputs import load_maps, read_map_info
from avsal_deploy.serving.server import child_processes

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _start(args: list[str], **kw) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "avsal_deploy.cli", *args],
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )
    deadline = time.monotonic() + 60
    while not catches_sigterm(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return proc


def _wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def _stopped(proc: subprocess.Popen, sig: signal.Signals) -> tuple[str, str]:
    """Send ``sig``; the command's stdout and stderr once it exited with 130."""
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-3000:]
    assert "terminate called" not in err and "Traceback" not in err, err[-3000:]
    assert f"interrupted by {sig.name}" in err
    return out, err


def test_predict_stops_without_a_partial_output(tiny_export: Path, tmp_path: Path) -> None:
    video = write_video(tmp_path / "long.mp4", n=400, fps=25, size=(64, 96), audio="aac")
    out = tmp_path / "out"
    proc = _start(["predict", str(video), "--export", str(tiny_export), "--out", str(out), "--png"])
    _wait_for(lambda: any(out.glob(".avsal-*/maps/*.png")))  # busy writing
    _stopped(proc, signal.SIGTERM)
    assert sorted(p.name for p in out.iterdir()) == []  # no maps, no summary, no temporary directory


def test_train_stops_after_a_step_with_a_resumable_checkpoint(tmp_path: Path) -> None:
    from avsal_deploy.data.synthetic import generate

    data = generate(tmp_path / "data", 4, profile="tiny", seed=3, n_frames=16)
    recipe = ROOT / "training" / "hybrid_synthetic.toml"
    sets = ["data.root=" + str(data), "train.max_steps=40", "train.batch_size=2", "train.log_every=1"]
    sets += ["data.windows_per_video=2", "train.warmup_steps=0"]
    args = ["train", str(recipe), *[x for s in sets for x in ("--set", s)], "--threads", "1"]
    run = tmp_path / "run"
    proc = _start([*args, "--out", str(run)])
    log = run / "metrics.jsonl"
    _wait_for(lambda: log.exists() and '"kind": "train"' in log.read_text())
    _stopped(proc, signal.SIGINT)
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if '"train"' in line]
    state = run / "checkpoints" / "last.safetensors"
    assert state.exists() and 1 <= max(steps) < 40
    resumed = subprocess.run(
        [sys.executable, "-m", "avsal_deploy.cli", *args, "--out", str(run), "--resume"],
        env=ENV,
        capture_output=True,
        text=True,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if '"train"' in line]
    assert steps == list(range(1, 41))  # every step once: nothing lost, nothing repeated


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@pytest.mark.triton
def test_serve_stops_the_server_and_frees_its_memory(triton_repo: Path) -> None:
    http, grpc, metrics = _free_ports(3)
    ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    proc = _start(["serve", str(triton_repo), *ports, "--model", "avsal_fusion"])

    def ready() -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/health/ready", timeout=1) as r:
                return r.status == 200
        except OSError:
            return False

    _wait_for(ready)
    # the python backend's shared-memory pools of this server: named by the prefix it was given
    # (other servers on the machine, of other test runs too, have pools of their own)
    (cmd,) = [cmd for cmd in child_processes(proc.pid).values() if b"tritonserver" in b" ".join(cmd)]
    (option,) = [a.decode() for a in cmd if b"shm-region-prefix-name=" in a]
    prefix = option.split("shm-region-prefix-name=", 1)[1]
    pools = {n for n in os.listdir("/dev/shm") if n.startswith(prefix)}
    assert pools
    _stopped(proc, signal.SIGTERM)
    assert not ready()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", grpc), timeout=1).close()
    assert not pools & set(os.listdir("/dev/shm"))  # released with the server


@pytest.mark.triton
def test_stream_stops_after_the_current_frame_and_writes_what_it_received(
    triton_repo: Path, tmp_path: Path
) -> None:
    from avsal_deploy import interrupt
    from avsal_deploy.serving.player import play
    from avsal_deploy.serving.server import TritonServer

    video = write_video(tmp_path / "long.mp4", n=300, fps=25, size=(64, 96), audio="aac")
    out = tmp_path / "out"
    with TritonServer(triton_repo, models=["avsal_stream", *_components(triton_repo)]) as server:

        def answered() -> int:
            with urllib.request.urlopen(f"{server.http_url}/v2/models/avsal_stream/stats", timeout=5) as r:
                return int(json.load(r)["model_stats"][0]["inference_count"])

        proc = _start(["stream", str(video), "--url", server.grpc_url, "--out", str(out)])
        # mid-stream: the server has answered some of its frames (or the command ended: _stopped says why)
        _wait_for(lambda: proc.poll() is not None or answered() >= 5)
        _stopped(proc, signal.SIGINT)
        maps = load_maps(out / "maps.npz")
        report = json.loads((out / "stream.json").read_text())
        assert 0 < maps.shape[0] == report["frames"] < 300  # the frames sent, each with its map
        assert not [p for p in out.iterdir() if p.name.startswith(".avsal-")]

        # stopped before its first frame: the (empty) outputs are written all the same
        empty = tmp_path / "empty"
        interrupt.request()
        try:
            with pytest.raises(interrupt.Interrupted):
                play(server.grpc_url, video, empty)
        finally:
            interrupt.reset()
        report = json.loads((empty / "stream.json").read_text())
        assert report["frames"] == 0 and report["latency_ms"] == {}
        assert read_map_info(empty / "maps.npz")["n_frames"] == 0


def _components(repo: Path) -> list[str]:
    return [
        p.name
        for p in repo.iterdir()
        if p.name.startswith("avsal_") and p.name not in ("avsal_stream", "avsal_video", "avsal_pipeline")
    ]


def _read_until(proc: subprocess.Popen, prefix: str) -> str:
    """The command's output up to and including the line that starts with ``prefix``."""
    lines = []
    while not (line := proc.stdout.readline()).startswith(prefix):
        assert line, ("".join(lines), proc.communicate())
        lines.append(line)
    return "".join([*lines, line])


@pytest.mark.triton
def test_serve_restarts_a_tritonserver_that_dies(triton_repo: Path) -> None:
    """The fault drill's server kill: `kill -9` of tritonserver under `avsal serve` is followed by a
    new server on the same ports, without a manual step; the command still stops with 130."""
    http, grpc, metrics = _free_ports(3)
    ports = ["--http-port", str(http), "--grpc-port", str(grpc), "--metrics-port", str(metrics)]
    proc = _start(["serve", str(triton_repo), *ports, "--model", "avsal_fusion"])

    def server_pid() -> int | None:
        found = [pid for pid, cmd in child_processes(proc.pid).items() if b"tritonserver" in b" ".join(cmd)]
        return found[0] if found else None

    def ready() -> bool:
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{http}/v2/models/avsal_fusion/ready", timeout=1
            ) as r:
                return r.status == 200
        except OSError:
            return False

    _wait_for(ready)
    first = server_pid()
    assert first is not None
    _read_until(proc, "serving;")  # start-up is over
    os.kill(first, signal.SIGKILL)
    assert "restarting it" in _read_until(proc, "serving again")
    assert server_pid() not in (None, first) and ready()
    _stopped(proc, signal.SIGTERM)
