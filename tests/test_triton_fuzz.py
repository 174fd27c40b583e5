"""Hostile requests to every model of the generated Triton repository, from a property-based fuzzer.

Hypothesis draws requests around each model's declared inputs (read from the repository's own
``config.pbtxt``): inputs left out, unknown inputs added, wrong data types, wrong ranks, empty and
oversized shapes, NaN and infinity, empty and large BYTES, random bytes where a video is expected,
sequence flags out of order and correlation ids reused across streams. Every request must be
answered (a result or an error, never a hang or a dropped connection), and after the run the server
must be alive, serve a good window and a good stream exactly as before, have restarted no python
stub, and hold no more memory than a bounded allowance above its level before the run.

``test_hostile_requests`` (a bounded number of requests) runs with the suite; the long run
(2,000 requests) is marked ``long`` and runs with ``make test-long``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from google.protobuf import text_format
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from media_utils import write_video
from tritonclient.grpc import model_config_pb2

from avsal_deploy.engine import open as open_engine
from avsal_deploy.serving.client import open_triton, predict_video, stream
from avsal_deploy.serving.server import TritonServer
from avsal_deploy.specs import sample_window

pytestmark = pytest.mark.triton

#: Requests the suite sends; the long run sends LONG_REQUESTS.
SUITE_REQUESTS = 120
LONG_REQUESTS = 2000
#: Elements of one fuzzed tensor at most (32 MB of float64): large, but no test of the machine's memory.
MAX_ELEMENTS = 4 << 20
#: A request that takes longer than this counts as a hang.
TIMEOUT_S = 60.0
#: Memory the server and its stubs may keep after the run above their level before it (MB, per
#: process): allocator pools and Python's caches grow once and then stay.
MEMORY_ALLOWANCE_MB = 40.0

_DTYPES = {
    "TYPE_BOOL": np.bool_,
    "TYPE_UINT8": np.uint8,
    "TYPE_INT32": np.int32,
    "TYPE_INT64": np.int64,
    "TYPE_UINT64": np.uint64,
    "TYPE_FP16": np.float16,
    "TYPE_FP32": np.float32,
    "TYPE_FP64": np.float64,
    "TYPE_STRING": np.object_,
}


@pytest.fixture(scope="module")
def configs(triton_repo: Path) -> dict[str, model_config_pb2.ModelConfig]:
    out = {}
    for path in sorted(triton_repo.glob("*/config.pbtxt")):
        config = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
        out[config.name] = config
    return out


@pytest.fixture(scope="module")
def server(triton_repo: Path):
    """A server of its own (the fuzzer must not disturb other modules' servers, nor they it)."""
    with TritonServer(triton_repo) as srv:
        yield srv


@pytest.fixture(scope="module")
def videos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("fuzz-videos")
    good = write_video(d / "good.mp4", n=9, fps=25, size=(48, 64), audio="aac").read_bytes()
    return {"good": good, "truncated": good[: len(good) // 2], "empty": b""}


def _client(server: TritonServer):
    import tritonclient.grpc as grpc

    return grpc, grpc.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))


# ----------------------------------------------------------------------------- requests
def _shape(draw: st.DrawFn, dims: list[int], batched: bool) -> tuple[int, ...]:
    """A shape near ``dims`` (``-1``: any size), or a random one; never over MAX_ELEMENTS."""
    kind = draw(st.sampled_from(["declared", "declared", "rank", "empty", "random"]))
    sizes = st.integers(1, 96)
    if kind == "declared":
        shape = [draw(sizes) if d < 0 else d for d in dims]
    elif kind == "rank":  # one axis more or less than declared
        shape = [draw(sizes) if d < 0 else d for d in dims]
        shape = shape[:-1] if shape and draw(st.booleans()) else [*shape, draw(st.integers(1, 4))]
    elif kind == "empty":
        shape = [0 if i == 0 else (draw(sizes) if d < 0 else d) for i, d in enumerate(dims or [0])]
    else:
        shape = draw(st.lists(st.integers(0, 64), max_size=5))
    if batched:
        shape = [draw(st.integers(0 if kind == "empty" else 1, 12)), *shape]
    while shape and int(np.prod(shape)) > MAX_ELEMENTS:
        shape[int(np.argmax(shape))] //= 2
    return tuple(int(s) for s in shape)


def _values(draw: st.DrawFn, shape: tuple[int, ...], dtype: type, videos: dict[str, bytes]) -> np.ndarray:
    if dtype is np.object_:  # a few elements: each one is a whole blob on the wire
        shape = tuple(min(int(d), 2) for d in shape)
        n = int(np.prod(shape)) if shape else 1
        choice = draw(st.sampled_from(["good", "truncated", "empty", "random", "huge"]))
        if choice == "random":
            blob = draw(st.binary(max_size=4096))
        elif choice == "huge":  # over the repository's max_video_bytes (4 MB in the test repository)
            blob = np.random.default_rng(draw(st.integers(0, 2**31))).bytes(5 << 20)
        else:
            blob = videos[choice]
        return np.array([blob] * n, dtype=np.object_).reshape(shape)
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    fill = draw(st.sampled_from(["normal", "normal", "zeros", "nan", "inf", "huge"]))
    if np.issubdtype(dtype, np.integer) or dtype is np.bool_:
        info = np.iinfo(np.int64)
        low, high = (0, 255) if fill != "huge" else (info.min // 2, info.max // 2)
        return rng.integers(low, high, size=shape, endpoint=True).astype(dtype)
    x = {"zeros": np.zeros(shape), "huge": np.full(shape, 1e30)}.get(fill, rng.standard_normal(shape))
    if fill in ("nan", "inf") and x.size:
        x = x.copy()
        x.flat[rng.integers(0, x.size, size=max(1, x.size // 7))] = np.nan if fill == "nan" else np.inf
    with np.errstate(over="ignore"):  # 1e30 as float16 is inf: one more hostile value
        return np.asarray(x, dtype)


@st.composite
def requests(draw: st.DrawFn, configs: dict, videos: dict[str, bytes]) -> dict:
    """One request: the model, its named input arrays, and sequence settings."""
    name = draw(st.sampled_from(sorted(configs)))
    config = configs[name]
    batched = config.max_batch_size > 0
    control = {c.name for c in config.sequence_batching.control_input}
    inputs: dict[str, np.ndarray] = {}
    for spec in config.input:
        if spec.name in control or draw(st.integers(0, 9)) == 0:  # control inputs come as flags
            continue
        declared = model_config_pb2.DataType.Name(spec.data_type)
        if draw(st.integers(0, 4)) == 0:
            declared = draw(st.sampled_from(sorted(_DTYPES)))
        dtype = _DTYPES.get(declared, np.float32)
        shape = _shape(draw, list(spec.dims), batched)
        inputs[spec.name] = _values(draw, shape, dtype, videos)
    if draw(st.integers(0, 9)) == 0:  # an input the model does not declare
        inputs["unknown_input"] = np.zeros((1, 3), np.float32)
    sequence = config.HasField("sequence_batching")
    return {
        "model": name,
        "inputs": inputs,
        "sequence_id": draw(st.integers(1, 4)) if sequence else 0,  # few ids: reused across streams
        "start": sequence and draw(st.booleans()),
        "end": sequence and draw(st.integers(0, 3)) == 0,
    }


def _send(grpc, client, request: dict) -> str:
    """Send one request; "ok" or "error" (its answer). Anything else fails the test."""
    from tritonclient.utils import InferenceServerException, np_to_triton_dtype

    items = []
    for name, array in request["inputs"].items():
        dtype = "BYTES" if array.dtype == np.object_ else np_to_triton_dtype(array.dtype)
        item = grpc.InferInput(name, list(array.shape), dtype)
        item.set_data_from_numpy(array)
        items.append(item)
    try:
        client.infer(
            request["model"],
            items,
            sequence_id=request["sequence_id"],
            sequence_start=request["start"],
            sequence_end=request["end"],
            client_timeout=TIMEOUT_S,
        )
    except InferenceServerException as exc:
        status = str(exc.status() or "")
        assert "DEADLINE" not in status and "UNAVAILABLE" not in status, f"no answer: {exc}"
        return "error"
    return "ok"


# ----------------------------------------------------------------------------- health after
def _memory_mb(pid: int) -> float:
    """Anonymous resident memory of a process (MB): what a leak grows; shared memory pools are
    mapped files the server sizes itself."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def _footprint(server: TritonServer) -> dict[str, float]:
    assert server.process is not None
    out = {"tritonserver": _memory_mb(server.process.pid)}
    for model, pids in server.stubs().items():
        for i, pid in enumerate(sorted(pids)):
            out[f"{model}[{i}]"] = _memory_mb(pid)
    return out


def _serves_correctly(server: TritonServer, export: Path, videos: dict[str, bytes], tmp: Path) -> None:
    """A good window through avsal_pipeline and a good stream through avsal_stream give the maps of
    the in-process engine."""
    with open_engine(export, "onnxruntime") as ort, open_triton(server.http_url, export) as triton:
        w = sample_window(ort.specs, batch=2, seed=5)
        want = ort.predict_window(w["frames"], w["audio"], 2, envelope=w["envelope"])
        got = triton.predict_window(w["frames"], w["audio"], 2, envelope=w["envelope"])
        assert np.abs(got - want).max() <= 1e-4
    from avsal_deploy.data.source import MediaSource

    path = tmp / "good.mp4"
    path.write_bytes(videos["good"])
    source = MediaSource(path)
    frames, chunks = [], []
    for frame, _, chunk in source.media():
        frames.append(frame)
        chunks.append(chunk)
    fps, rate = source.fps, source.audio_rate
    source.close()
    maps = dict(stream(server.grpc_url, frames, chunks, fps=fps, audio_rate=rate, seed=0))
    assert sorted(maps) == list(range(len(frames)))
    assert all(np.isfinite(m).all() for m in maps.values())
    whole, _ = predict_video(server.grpc_url, path, seed=0)  # the file decoded by avsal_video
    assert whole.shape[0] == len(frames) and np.isfinite(whole).all()


def _fuzz(server, configs, videos, export: Path, tmp: Path, n: int) -> None:
    grpc, client = _client(server)
    stubs = server.stubs()
    _serves_correctly(server, export, videos, tmp)  # also warms every path: caches grow before the baseline
    before = _footprint(server)
    answers: list[str] = []

    @settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(requests(configs, videos))
    def run(request: dict) -> None:
        answers.append(_send(grpc, client, request))

    run()
    client.close()
    assert len(answers) >= n * 0.9 and answers.count("error") > 0  # the fuzzer reached the models' checks
    assert server.returncode is None and server.stubs() == stubs  # alive; no stub restarted
    _serves_correctly(server, export, videos, tmp)
    after = _footprint(server)
    grown = {k: round(after[k] - before.get(k, 0.0), 1) for k in after}
    print(f"\nanonymous memory kept after {n} requests (MB): {grown}")
    assert all(g <= MEMORY_ALLOWANCE_MB for g in grown.values()), grown


def test_hostile_requests(server, configs, videos, tiny_export: Path, tmp_path: Path) -> None:
    _fuzz(server, configs, videos, tiny_export, tmp_path, SUITE_REQUESTS)


@pytest.mark.long
def test_hostile_requests_long_run(server, configs, videos, tiny_export: Path, tmp_path: Path) -> None:
    _fuzz(server, configs, videos, tiny_export, tmp_path, LONG_REQUESTS)
