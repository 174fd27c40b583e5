"""Triton serving against a REAL tritonserver (the nvidia-pytriton wheel's binary), tiny profile.

One server serves the module; the export is made once per session (~60 s on 2 cores).
"""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import STREAM_IDLE_S as IDLE_S
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from avsal_deploy.cli import main
from avsal_deploy.engine import open as open_engine
from avsal_deploy.errors import AvsalError, BackendUnavailableError, ConfigError
from avsal_deploy.outputs import load_maps
from avsal_deploy.serving.client import TritonEngine, TritonRequestError, open_triton
from avsal_deploy.serving.contract import PIPELINE_MODEL, model_name, pipeline_manifest
from avsal_deploy.serving.repository import build_repository
from avsal_deploy.serving.server import TritonServer, TritonServerError, find_tritonserver
from avsal_deploy.specs import read_manifest, sample_window

pytestmark = pytest.mark.triton
TOL = 1e-4


@pytest.fixture(scope="module")
def server(triton_repo: Path):
    with TritonServer(triton_repo) as srv:
        yield srv


@pytest.fixture(scope="module")
def ort(tiny_export: Path):
    with open_engine(tiny_export, "onnxruntime") as engine:
        yield engine


@pytest.fixture(scope="module")
def triton(server: TritonServer, tiny_export: Path):
    with open_triton(server.http_url, tiny_export) as engine:
        yield engine


@pytest.fixture(scope="module")
def window(ort) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two random windows (frames, audio, envelope) of the export's shapes."""
    w = sample_window(ort.specs, batch=2, seed=11)
    return w["frames"], w["audio"], w["envelope"]


def parse_config(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


# ----------------------------------------------------------------------------- repository
def test_repository_configs_follow_manifest(triton_repo: Path, tiny_export: Path) -> None:
    manifest, config, specs = read_manifest(tiny_export)
    for name, spec in specs.items():
        model = triton_repo / model_name(name)
        cfg = parse_config(model / "config.pbtxt")
        assert cfg.name == model_name(name) and cfg.backend == "python"
        assert cfg.max_batch_size == spec.batch_profile[2]
        assert cfg.HasField("dynamic_batching")
        assert [i.name for i in cfg.input] == spec.input_names
        assert [o.name for o in cfg.output] == spec.output_names
        for entry, t in [
            *zip(cfg.input, spec.inputs, strict=True),
            *zip(cfg.output, spec.outputs, strict=True),
        ]:
            assert entry.data_type == model_config_pb2.TYPE_FP32
            assert list(entry.dims) == (list(t.shape) or [1])
            assert entry.HasField("reshape") == (t.shape == ())
        assert (model / "1" / "model.onnx").read_bytes() == (tiny_export / spec.onnx_file).read_bytes()
        assert "ComponentModel" in (model / "1" / "model.py").read_text()
    pipe = parse_config(triton_repo / PIPELINE_MODEL / "config.pbtxt")
    assert pipe.max_batch_size == 0
    dims = {i.name: (list(i.dims), i.optional) for i in pipe.input}
    assert dims == {
        "frames": ([-1, *config.frames_shape("hybrid")], False),
        "audio": ([-1, *config.audio_input_shape("hybrid")], False),
        "envelope": ([-1, *config.envelope_shape("hybrid")], False),
        "steps": ([1], True),
        "seed": ([1], True),
        "noise": ([-1, *config.map_shape()], True),
    }
    assert [(o.name, list(o.dims)) for o in pipe.output] == [("saliency", [-1, *config.map_shape()])]
    params = {k: {"string_value": v.string_value} for k, v in pipe.parameters.items()}
    carried, carried_config, carried_specs = pipeline_manifest({"parameters": params})
    assert carried == manifest and carried_config == config and carried_specs == specs
    assert int(params["max_batch"]["string_value"]) == min(s.batch_profile[2] for s in specs.values())


def test_repository_platforms_and_options(tiny_export: Path, tmp_path: Path) -> None:
    onnx_repo = build_repository(
        tiny_export, tmp_path / "ort", platform="onnxruntime", max_batch=2, instances=2
    )
    cfg = parse_config(onnx_repo / "avsal_unet_step" / "config.pbtxt")
    assert cfg.platform == "onnxruntime_onnx" and cfg.backend == "" and cfg.max_batch_size == 2
    assert cfg.instance_group[0].count == 2
    assert not (onnx_repo / "avsal_unet_step" / "1" / "model.py").exists()

    with pytest.raises(BackendUnavailableError, match="build-engines"):
        build_repository(tiny_export, tmp_path / "trt", platform="tensorrt")
    with_plans = tmp_path / "export_with_plans"
    with_plans.mkdir()
    for item in tiny_export.iterdir():
        (with_plans / item.name).symlink_to(item)
    for name in read_manifest(tiny_export)[2]:
        (with_plans / f"{name}.plan").write_bytes(b"plan " + name.encode())
    trt_repo = build_repository(with_plans, tmp_path / "trt", platform="tensorrt")
    video = parse_config(trt_repo / "avsal_video" / "config.pbtxt")
    assert video.parameters["decoder"].string_value == "dali"  # the GPU repository decodes on NVDEC
    cfg = parse_config(trt_repo / "avsal_fusion" / "config.pbtxt")
    assert cfg.platform == "tensorrt_plan"
    assert cfg.instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_GPU
    assert (trt_repo / "avsal_fusion" / "1" / "model.plan").read_bytes() == b"plan fusion"

    with pytest.raises(AvsalError, match="already has model"):
        build_repository(tiny_export, tmp_path / "ort")
    build_repository(tiny_export, tmp_path / "ort", overwrite=True)
    assert parse_config(tmp_path / "ort" / "avsal_unet_step" / "config.pbtxt").max_batch_size == 8
    with pytest.raises(ConfigError, match="max_batch=99"):
        build_repository(tiny_export, tmp_path / "x", max_batch=99)
    with pytest.raises(ConfigError, match="platform"):
        build_repository(tiny_export, tmp_path / "x", platform="tensorflow")


def test_every_generated_config_is_a_valid_model_config(tiny_export: Path, tmp_path: Path) -> None:
    """Every config.pbtxt of every platform parses strictly as Triton's own ``ModelConfig`` protobuf
    (tritonclient's copy: unknown fields, wrong types or enum values are refused) and survives a
    round trip through the protobuf text format unchanged."""
    with_plans = tmp_path / "export_with_plans"
    with_plans.mkdir()
    for item in tiny_export.iterdir():
        (with_plans / item.name).symlink_to(item)
    for name in read_manifest(tiny_export)[2]:
        (with_plans / f"{name}.plan").write_bytes(b"plan")
    repos = {
        platform: build_repository(with_plans, tmp_path / platform, platform=platform)
        for platform in ("python-onnxruntime", "onnxruntime", "tensorrt")
    }
    for platform, repo in repos.items():
        configs = sorted(repo.glob("*/config.pbtxt"))
        assert {c.parent.name for c in configs} >= {PIPELINE_MODEL, "avsal_stream", "avsal_video"}
        for path in configs:
            parsed = parse_config(path)
            assert parsed.name == path.parent.name, (platform, path)
            again = text_format.Parse(text_format.MessageToString(parsed), model_config_pb2.ModelConfig())
            assert again == parsed, (platform, path)
            assert all(i.data_type != model_config_pb2.TYPE_INVALID for i in [*parsed.input, *parsed.output])


def test_cli_triton_repo(tiny_export: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["triton-repo", "--export", str(tiny_export), "--out", str(tmp_path / "r"), "--instances", "2"])
        == 0
    )
    out = capsys.readouterr().out
    assert "wrote 7 models" in out and "avsal_stream, " in out and "avsal_video," in out
    assert parse_config(tmp_path / "r" / PIPELINE_MODEL / "config.pbtxt").instance_group[0].count == 2
    assert main(["triton-repo", "--export", str(tmp_path / "none"), "--out", str(tmp_path / "r2")]) == 2
    assert "no manifest" in capsys.readouterr().err


# ----------------------------------------------------------------------------- server
def test_server_ready_on_loopback(server: TritonServer) -> None:
    assert server.is_running()
    assert server.http_url.startswith("http://127.0.0.1:") and server.grpc_url.startswith("127.0.0.1:")
    with urllib.request.urlopen(f"{server.http_url}/v2/health/ready", timeout=5) as r:
        assert r.status == 200
    with urllib.request.urlopen(server.metrics_url, timeout=5) as r:
        assert b"nv_inference_count" in r.read()
    with urllib.request.urlopen(f"{server.http_url}/v2/models/{PIPELINE_MODEL}/ready", timeout=5) as r:
        assert r.status == 200


@pytest.mark.parametrize("batch", [1, 2])
def test_components_match_onnxruntime(triton: TritonEngine, ort, batch: int) -> None:
    for name, spec in ort.specs.items():
        feeds = spec.sample_inputs(batch, seed=batch)
        got, want = triton.run(name, feeds), ort.run(name, feeds)
        for out in spec.output_names:
            assert (
                got[out].shape
                == want[out].shape
                == (batch, *spec.outputs[spec.output_names.index(out)].shape)
            )
            np.testing.assert_allclose(got[out], want[out], atol=TOL, err_msg=f"{name}.{out}")


def test_concurrent_requests_are_batched_and_split_back(
    server: TritonServer, triton: TritonEngine, ort
) -> None:
    spec = ort.specs["unet_step"]
    model = model_name("unet_step")

    def counts() -> tuple[int, int]:
        with urllib.request.urlopen(f"{server.http_url}/v2/models/{model}/stats", timeout=5) as r:
            stats = json.loads(r.read())["model_stats"][0]
        return int(stats["inference_count"]), int(stats["execution_count"])

    feeds = [spec.sample_inputs(1 + i % 2, seed=100 + i) for i in range(16)]

    def call(i: int) -> np.ndarray:
        with TritonEngine(server.http_url, triton.config, triton.variant, triton.specs) as client:
            return client.run("unet_step", feeds[i])["x0"]

    before = counts()
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(call, range(len(feeds))))
    for got, f in zip(results, feeds, strict=True):
        np.testing.assert_allclose(got, ort.run("unet_step", f)["x0"], atol=TOL)
    inferences, executions = (a - b for a, b in zip(counts(), before, strict=True))
    assert inferences == sum(f["x_t"].shape[0] for f in feeds)
    assert executions < len(feeds)  # the dynamic batcher merged queued requests into one run


@pytest.mark.parametrize("steps", [0, 1, 2])
def test_pipeline_matches_onnxruntime(triton: TritonEngine, ort, window, steps: int) -> None:
    frames, audio, env = window
    got = triton.predict_window(frames, audio, envelope=env, steps=steps, seed=5)
    want = ort.predict_window(frames, audio, envelope=env, steps=steps, seed=5)
    assert got.shape == (2, *ort.config.map_shape())
    np.testing.assert_allclose(got, want, atol=TOL)


def test_client_loop_equals_server_loop(server: TritonServer, triton: TritonEngine, ort, window) -> None:
    frames, audio, env = window
    noise = ort.make_noise(2, seed=123)
    with open_triton(server.grpc_url, protocol="grpc", server_loop=False) as client_loop:
        assert client_loop.specs == triton.specs and client_loop.config == triton.config
        for steps in (None, 2):
            local = client_loop.predict_window(frames, audio, envelope=env, steps=steps, seed=9)
            remote = triton.predict_window(frames, audio, envelope=env, steps=steps, seed=9)
            np.testing.assert_allclose(local, remote, atol=TOL)
        np.testing.assert_allclose(
            triton.predict_window(frames, audio, envelope=env, steps=1, noise=noise),
            client_loop.predict_window(frames, audio, envelope=env, steps=1, noise=noise),
            atol=TOL,
        )
    assert not np.allclose(
        triton.predict_window(frames, audio, envelope=env, seed=1),
        triton.predict_window(frames, audio, envelope=env, seed=2),
    )


def test_bad_requests_give_clear_errors(triton: TritonEngine, window) -> None:
    frames, audio, env = window
    with pytest.raises(TritonRequestError, match="steps=-1: must be >= 0"):
        triton.predict_window(frames, audio, envelope=env, steps=-1)
    with pytest.raises(TritonRequestError, match="unexpected shape for input 'frames'"):
        triton.predict_window(frames[:, :, :2], audio, envelope=env)
    with pytest.raises(TritonRequestError, match="frames has 2 windows but audio has 1"):
        triton.predict_window(frames, audio[:1], envelope=env)
    with pytest.raises(TritonRequestError, match="envelope has 1 windows for 2"):
        triton.predict_window(frames, audio, envelope=env[:1])
    with pytest.raises(AvsalError, match="needs the per-frame audio envelope"):
        triton.predict_window(frames, audio)
    with pytest.raises(TritonRequestError, match="seed=-3 must be >= 0"):
        triton.predict_window(frames, audio, envelope=env, seed=-3)
    with pytest.raises(TritonRequestError, match=r"batch of 9 windows outside \[1, 8\]"):
        triton.predict_window(
            np.repeat(frames[:1], 9, 0),
            np.repeat(audio[:1], 9, 0),
            steps=0,
            envelope=np.repeat(env[:1], 9, 0),
        )
    feeds = {"audio": np.zeros((9, *triton.specs["audio_encoder"].inputs[0].shape), np.float32)}
    with pytest.raises(TritonRequestError, match="batch-size must be <= 8"):
        triton.run("audio_encoder", feeds)
    dead = TritonEngine(f"127.0.0.1:{_closed_port()}", triton.config, triton.variant, triton.specs)
    with pytest.raises(BackendUnavailableError, match="no Triton server"), dead:
        dead.run("audio_encoder", {"audio": feeds["audio"][:1]})


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_server_stops_cleanly(triton_repo: Path, tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    with TritonServer(triton_repo, log_path=log, models=[model_name("audio_encoder")]) as srv:
        port = srv.ports.http
        with urllib.request.urlopen(f"{srv.http_url}/v2/models/{model_name('audio_encoder')}/ready") as r:
            assert r.status == 200
    assert not srv.is_running() and srv.returncode == 0
    assert "successfully unloaded 'avsal_audio_encoder'" in log.read_text()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def test_server_reports_broken_repository(triton_repo: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(triton_repo / model_name("audio_encoder"), broken / "avsal_broken")
    config = broken / "avsal_broken" / "config.pbtxt"
    config.write_text(
        config.read_text().replace('name: "avsal_audio_encoder"', 'name: "avsal_broken"\nbogus: 1')
    )
    with pytest.raises(TritonServerError, match=r"exited with code \d+ during start-up(.|\n)*avsal_broken"):
        TritonServer(broken, startup_timeout=30).start()
    with pytest.raises(AvsalError, match="model repository not found"):
        TritonServer(tmp_path / "missing")


def test_missing_wheel_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    assert find_tritonserver().binary.exists()
    monkeypatch.setitem(sys.modules, "pytriton", None)
    with pytest.raises(
        BackendUnavailableError, match=r"nvidia-pytriton is not installed.*avsal-deploy\[serve\]"
    ):
        find_tritonserver()


def test_manifest_served_by_pipeline(triton: TritonEngine, server: TritonServer) -> None:
    with urllib.request.urlopen(f"{server.http_url}/v2/models/{PIPELINE_MODEL}/config", timeout=5) as r:
        config = json.loads(r.read())
    manifest, cfg, specs = pipeline_manifest(config)
    assert cfg == triton.config and specs == triton.specs and manifest["variant"] == triton.variant


def test_predict_cli_on_triton_matches_embedded_engine(
    server: TritonServer, tiny_export: Path, tmp_path: Path
) -> None:
    """`avsal predict --engine triton` gives the maps the embedded ONNX Runtime engine gives."""
    from media_utils import write_video

    clip = write_video(tmp_path / "clip.mp4", n=6, fps=25, size=(64, 96), audio="aac")
    common = ["-q", "predict", str(clip), "--export", str(tiny_export)]
    assert main([*common, "--out", str(tmp_path / "ort")]) == 0
    assert main([*common, "--out", str(tmp_path / "tri"), "--url", server.http_url]) == 0  # --url: triton
    a, b = load_maps(tmp_path / "ort" / "maps.npz"), load_maps(tmp_path / "tri" / "maps.npz")
    assert a.shape == b.shape == (6, 64, 96)
    # Stored as uint8: engines within 1e-4 round to the same level or a neighbour.
    assert np.abs(a - b).max() <= 1 / 255 + 1e-6 and np.abs(a - b).mean() < 1e-3
    summary = json.loads((tmp_path / "tri" / "summary.json").read_text())
    assert summary["engine"] == "triton"


# ----------------------------------------------------------------------------- raw media models
def test_stream_and_video_configs(triton_repo: Path) -> None:
    repo = triton_repo
    stream = parse_config(repo / "avsal_stream" / "config.pbtxt")
    assert stream.backend == "python" and stream.max_batch_size == 8  # one slot per live stream
    assert [c.name for c in stream.sequence_batching.control_input] == ["START", "END", "CORRID"]
    assert stream.sequence_batching.max_sequence_idle_microseconds == int(IDLE_S * 1e6)
    assert [(i.name, list(i.dims)) for i in stream.input][:2] == [("frame", [-1, -1, 3]), ("audio", [-1])]
    assert [o.name for o in stream.output] == ["maps", "frame_index", "qp_offsets", "streams"]
    assert stream.parameters["max_pixels"].string_value == str(640 * 480)
    video = parse_config(repo / "avsal_video" / "config.pbtxt")
    assert video.max_batch_size == 0 and video.input[0].name == "video"
    assert video.parameters["decoder"].string_value == "pyav"
    assert video.parameters["max_video_bytes"].string_value == str(4 << 20)
    with pytest.raises(ConfigError, match="unknown limit"):
        build_repository(repo, repo.parent / "x", stream_limits={"max_pigs": 1})


def _media(path: Path) -> tuple[list, list, float, int]:
    """Frames with timestamps and the audio chunks of a file, as the offline flow reads them."""
    from avsal_deploy.data.source import MediaSource

    source = MediaSource(path)
    try:
        items = list(source.media())
    finally:
        source.close()
    return [(f, ts) for f, ts, _ in items], [c for _, _, c in items], source.fps, source.audio_rate


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    from media_utils import write_video

    d = tmp_path_factory.mktemp("stream-clips")
    return [
        write_video(d / "a.mp4", n=14, fps=25, size=(64, 96), audio="aac"),
        # long enough (3 x the 8-frame window) that strided frames settle on maps computed earlier
        write_video(d / "b.mp4", n=26, fps=20, size=(72, 80), audio="aac", audio_rate=22050),
    ]


def _offline(ort, clip: Path, **kw) -> np.ndarray:
    from avsal_deploy.pipeline import PredictOptions, Predictor

    return Predictor(ort, PredictOptions(**kw)).predict(clip).frame_maps


def test_two_interleaved_streams_equal_offline_prediction(server: TritonServer, ort, clips) -> None:
    from itertools import zip_longest

    from avsal_deploy.serving.client import stream

    gens, want = [], []
    for k, clip in enumerate(clips):
        frames, chunks, fps, rate = _media(clip)
        stride = 1 if k == 0 else 3
        gens.append(
            stream(  # the second stream sends its frames through system shared memory
                server.grpc_url,
                frames,
                chunks,
                fps=fps,
                audio_rate=rate,
                stride=stride,
                seed=k,
                shared_memory=k == 1,
            )
        )
        want.append(_offline(ort, clip, stride=stride, seed=k))
    got: list[dict[int, np.ndarray]] = [{}, {}]
    for pair in zip_longest(*gens):  # one request of each stream in turn
        for k, item in enumerate(pair):
            if item is not None:
                index, m = item
                assert index not in got[k]
                got[k][index] = m
    for k in range(2):
        assert sorted(got[k]) == list(range(want[k].shape[0]))
        assert max(np.abs(got[k][i] - want[k][i]).max() for i in got[k]) <= TOL


def test_eight_concurrent_streams_are_batched_and_complete(server: TritonServer, clips) -> None:
    from avsal_deploy.serving.client import stream

    frames, chunks, fps, rate = _media(clips[0])

    def run(k: int) -> list[int]:
        return [i for i, _ in stream(server.grpc_url, frames, chunks, fps=fps, audio_rate=rate, seed=k)]

    def counts() -> tuple[int, int]:
        with urllib.request.urlopen(f"{server.http_url}/v2/models/avsal_stream/stats", timeout=5) as r:
            stats = json.loads(r.read())["model_stats"][0]
        return int(stats["inference_count"]), int(stats["execution_count"])

    def settled() -> tuple[int, int]:
        """The counters once they stop moving. Triton's backends send an execution's responses
        before they record its statistics, so a client can hold its last map while the counters
        still lag it (by 3 inferences of 112 in one run): read them after they have caught up."""
        last, since = counts(), time.monotonic()
        deadline = since + 30
        while time.monotonic() - since < 0.5 and time.monotonic() < deadline:
            time.sleep(0.05)
            now = counts()
            if now != last:
                last, since = now, time.monotonic()
        return last

    before = settled()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(run, range(8)))
    assert all(r == list(range(len(frames))) for r in results)
    inferences, executions = (a - b for a, b in zip(settled(), before, strict=True))
    assert inferences == 8 * len(frames) and executions < inferences  # streams shared executions


def _raw(server: TritonServer):
    import tritonclient.grpc as grpc

    return grpc, grpc.InferenceServerClient(server.grpc_url.removeprefix("grpc://"))


def _frame_input(grpc, array: np.ndarray):
    from tritonclient.utils import np_to_triton_dtype

    item = grpc.InferInput("frame", list(array.shape), np_to_triton_dtype(array.dtype))
    item.set_data_from_numpy(array)
    return item


def test_bad_stream_requests_are_refused_and_the_server_keeps_serving(server: TritonServer) -> None:
    from tritonclient.utils import InferenceServerException

    grpc, client = _raw(server)
    good = np.zeros((1, 48, 64, 3), np.uint8)

    def send(frame, cid, start=False, end=False, extra=()):
        inputs = [_frame_input(grpc, frame), *extra]
        return client.infer("avsal_stream", inputs, sequence_id=cid, sequence_start=start, sequence_end=end)

    def refused(match, *args, **kw):
        with pytest.raises(InferenceServerException, match=match):
            send(*args, **kw)

    def scalar(name, value, dtype):
        from tritonclient.utils import np_to_triton_dtype

        item = grpc.InferInput(name, [1, 1], np_to_triton_dtype(np.dtype(dtype)))
        item.set_data_from_numpy(np.array([[value]], dtype))
        return item

    refused("data-type|FP32|UINT8", good.astype(np.float32), 501, start=True)  # wrong dtype
    refused("shape|dims", good[:, :, :, :2], 502, start=True)  # wrong rank / last dim
    refused("exceeds max_pixels", np.zeros((1, 600, 800, 3), np.uint8), 503, start=True)
    refused(r"steps=99 outside \[0, 50\]", good, 504, start=True, extra=[scalar("steps", 99, np.int32)])
    refused(r"stride=0 outside", good, 505, start=True, extra=[scalar("stride", 0, np.int32)])
    refused("START", good, 506)  # a stream that was never started
    nan = grpc.InferInput("audio", [1, 4], "FP32")
    nan.set_data_from_numpy(np.array([[0.0, np.nan, 0.0, 0.0]], np.float32))
    send(good, 507, start=True)
    refused("non-finite", good, 507, extra=[nan])
    refused("size changed from 64x48 to 96x48", np.zeros((1, 48, 96, 3), np.uint8), 507)
    out = send(good, 507, end=True)  # the stream survived its bad requests
    assert out.as_numpy("frame_index")[0].tolist() == [0, 1]
    client.close()


def test_expired_stream_is_freed(server: TritonServer) -> None:
    import time

    from tritonclient.utils import InferenceServerException

    grpc, client = _raw(server)
    frame = np.zeros((1, 48, 64, 3), np.uint8)
    first = client.infer("avsal_stream", [_frame_input(grpc, frame)], sequence_id=901, sequence_start=True)
    assert int(first.as_numpy("streams")[0, 0]) >= 1
    time.sleep(IDLE_S + 1.5)
    with pytest.raises(InferenceServerException, match="START|no live stream"):
        client.infer("avsal_stream", [_frame_input(grpc, frame)], sequence_id=901)
    other = client.infer(
        "avsal_stream", [_frame_input(grpc, frame)], sequence_id=902, sequence_start=True, sequence_end=True
    )
    assert int(other.as_numpy("streams")[0, 0]) == 0  # 901 was dropped, 902 ended with this request
    client.close()


def test_video_model_equals_offline_and_refuses_bad_files(server: TritonServer, ort, clips, tmp_path) -> None:
    from avsal_deploy.serving.client import predict_video

    maps, fps = predict_video(server.grpc_url, clips[1], stride=2, seed=4)
    want = _offline(ort, clips[1], stride=2, seed=4)
    assert fps == pytest.approx(20.0) and maps.shape == want.shape
    assert np.abs(maps - want).max() <= TOL
    (tmp_path / "junk.mp4").write_bytes(b"\x00" * 1000)
    with pytest.raises(TritonRequestError, match="avsal_video"):
        predict_video(server.grpc_url, tmp_path / "junk.mp4")
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(TritonRequestError, match="empty video"):
        predict_video(server.grpc_url, tmp_path / "empty.mp4")
    from media_utils import write_video

    big = write_video(tmp_path / "big.mp4", n=2, size=(600, 800))
    with pytest.raises(TritonRequestError, match="exceeds max_pixels"):
        predict_video(server.grpc_url, big)
    assert predict_video(server.grpc_url, clips[0])[0].shape[0] == 14  # still serving


def test_stream_cli_writes_maps_and_overlay(server: TritonServer, ort, clips, tmp_path) -> None:
    import av

    out = tmp_path / "s"
    roi = tmp_path / "roi.mp4"
    args = [
        "stream",
        str(clips[0]),
        "--url",
        server.grpc_url,
        "--fast",
        "--out",
        str(out),
        "--roi-out",
        str(roi),
        "--overlay",
    ]
    assert main(args) == 0
    got = load_maps(out / "maps.npz")
    from avsal_deploy.pipeline import Predictor

    want = Predictor(ort).predict(clips[0]).maps()
    assert got.shape == want.shape and np.abs(got - want).max() <= 1 / 255 + 1e-4
    report = json.loads((out / "stream.json").read_text())
    assert report["frames"] == 14 and report["latency_ms"]["p50"] > 0
    with av.open(str(out / "overlay.mp4")) as c:
        assert len(c.streams.audio) == 1 and sum(1 for _ in c.decode(video=0)) == 14
    with av.open(str(roi)) as c:  # encoded with the QP offsets the server sent per frame
        assert sum(1 for _ in c.decode(video=0)) == 14


def test_stream_returns_qp_offsets_for_roi_coding(server: TritonServer, ort, clips) -> None:
    from avsal_deploy.roi.mapping import OffsetSmoother
    from avsal_deploy.serving.client import stream

    frames, chunks, fps, rate = _media(clips[0])
    got = list(stream(server.grpc_url, frames, chunks, fps=fps, audio_rate=rate, roi_codec="x264"))
    smoother = OffsetSmoother((64, 96), "x264")
    for _, saliency, qp in got:
        assert qp.shape == (4, 6)  # ceil(64 / 16) x ceil(96 / 16) blocks of the stream's frames
        np.testing.assert_allclose(qp, smoother(saliency), atol=1e-5)
        assert abs(float(qp.mean())) < 1e-4  # budget-neutral offsets
    assert [i for i, _, _ in got] == list(range(14))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_pipeline_through_shared_memory_matches(
    server: TritonServer, ort, tiny_export, window, protocol
) -> None:
    frames, audio, env = window
    url = server.http_url if protocol == "http" else server.grpc_url
    with open_triton(url, tiny_export, protocol=protocol, shared_memory=True) as shm_engine:
        for _ in range(2):  # the registered regions are reused
            got = shm_engine.predict_window(frames, audio, envelope=env, seed=3)
            np.testing.assert_allclose(got, ort.predict_window(frames, audio, envelope=env, seed=3), atol=TOL)
        small = shm_engine.predict_window(frames[:1], audio[:1], envelope=env[:1], seed=3)
        assert small.shape[0] == 1


def test_a_killed_stub_gives_clear_errors_and_is_reloaded(server: TritonServer, clips) -> None:
    """The fault drill: the stream model's stub dies mid-stream; its clients get a clear error,
    `heal` (what `avsal serve` runs twice a second) reloads the model, and new streams work."""
    import os
    import signal

    from avsal_deploy.serving.client import stream

    frames, chunks, fps, rate = _media(clips[0])
    live = stream(server.grpc_url, frames, chunks, fps=fps, audio_rate=rate)
    next(live)  # mid-stream (the first map arrives once the start-up windows can run)
    for pid in server.stubs()["avsal_stream"]:
        os.kill(pid, signal.SIGKILL)
    with pytest.raises(TritonRequestError, match="avsal_stream"):
        list(live)
    assert server.heal() == ["avsal_stream"]
    got = [i for i, _ in stream(server.grpc_url, frames, chunks, fps=fps, audio_rate=rate)]
    assert got == list(range(len(frames)))
    assert server.heal() == []


LIVE = "lavfi:testsrc=size=160x120:rate=25[out0];sine=frequency=440:sample_rate=16000[out1]"


def test_stream_cli_plays_a_live_input_until_its_time_limit(server: TritonServer, ort, tmp_path) -> None:
    """A live input (an endless FFmpeg source opened as a device) streamed for 0.8 s: every frame
    gets the map the in-process flow gives for the same frames and audio chunks."""
    from avsal_deploy.data.preprocess import postprocess_map
    from avsal_deploy.data.source import CaptureSource
    from avsal_deploy.pipeline import Predictor

    out = tmp_path / "live"
    args = ["stream", LIVE, "--url", server.grpc_url, "--fast", "--seconds", "0.8", "--out", str(out)]
    assert main(args) == 0
    got = load_maps(out / "maps.npz")
    report = json.loads((out / "stream.json").read_text())
    assert report["live_input"] is True and report["frames"] == 20 == got.shape[0]

    source = CaptureSource(LIVE, max_seconds=0.8)
    flow = Predictor(ort).flow(source.fps, source.audio_rate)
    maps = [m for frame, ts, chunk in source.media() for m in flow.push(frame, chunk, ts)] + flow.flush()
    source.close()
    want = np.stack([postprocess_map(m.saliency, (120, 160)) for m in maps])
    assert np.abs(got - want).max() <= 1 / 255 + 1e-4


def test_stop_removes_the_shared_memory_pools_a_killed_stub_leaves(tmp_path) -> None:
    """The python backend's pools live in /dev/shm (RAM) and outlive killed processes: the
    server's own prefix lets stop() remove them."""
    import os
    import signal

    repo = build_repository(open_engine().directory, tmp_path / "repo")
    with TritonServer(repo, models=["avsal_video_encoder"]) as one:
        pools = one.shm_pools()
        assert pools and all(p.name.startswith(one.shm_prefix) for p in pools)
        for pid in one.stubs()["avsal_video_encoder"]:
            os.kill(pid, signal.SIGKILL)
    assert one.shm_pools() == [] and not any(p.exists() for p in pools)


def test_bls_window_engine_gives_the_in_process_maps(tiny_export: Path, ort, clips, tmp_path) -> None:
    """The GPU repository's way (window models calling the component models over BLS) on CPU:
    the same maps as the default in-stub ONNX Runtime sessions and as offline prediction."""
    from avsal_deploy.serving.client import stream

    repo = build_repository(tiny_export, tmp_path / "repo", window_engine="bls")
    config = (repo / "avsal_stream" / "config.pbtxt").read_text()
    assert 'key: "window_engine"' in config and 'string_value: "bls"' in config
    frames, chunks, fps, rate = _media(clips[0])
    components = [p.name for p in repo.iterdir() if (p / "1" / "model.onnx").exists()]
    with TritonServer(repo, models=[*components, "avsal_stream"]) as bls:
        got = np.stack([m for _, m in stream(bls.grpc_url, frames, chunks, fps=fps, audio_rate=rate)])
    assert np.abs(got - _offline(ort, clips[0])).max() <= 1e-4
    with pytest.raises(ConfigError, match="window_engine"):
        build_repository(tiny_export, tmp_path / "r2", window_engine="tensorrt")


def test_per_core_layout_serves_concurrent_streams_as_offline(
    tiny_export: Path, ort, clips, tmp_path
) -> None:
    """``instances=2, window_threads=1`` (one single-threaded window model per core, the layout
    the streams benchmark measures): two concurrent streams, each equal to offline prediction."""
    from concurrent.futures import ThreadPoolExecutor

    from avsal_deploy.serving.client import stream
    from avsal_deploy.serving.contract import window_threads

    repo = build_repository(tiny_export, tmp_path / "repo", instances=2, window_threads=1)
    config = (repo / "avsal_stream" / "config.pbtxt").read_text()
    assert 'key: "window_threads"' in config and 'string_value: "1"' in config and "count: 2" in config
    assert window_threads({"parameters": {"window_threads": {"string_value": "1"}}}) == 1
    assert window_threads({"parameters": {"window_threads": {"string_value": "0"}}}) is None
    with pytest.raises(ValueError, match="window_threads"):
        window_threads({"parameters": {"window_threads": {"string_value": "-1"}}})
    with pytest.raises(ConfigError, match="window_threads"):
        build_repository(tiny_export, tmp_path / "r2", window_threads=-1)
    with pytest.raises(ConfigError, match="window_threads applies"):
        build_repository(tiny_export, tmp_path / "r3", window_engine="bls", window_threads=1)
    media = [_media(c) for c in clips]
    components = [p.name for p in repo.iterdir() if (p / "1" / "model.onnx").exists()]
    with TritonServer(repo, models=[*components, "avsal_stream"]) as server:

        def run(k: int) -> np.ndarray:
            frames, chunks, fps, rate = media[k]
            got = stream(server.grpc_url, frames, chunks, fps=fps, audio_rate=rate, stride=2, seed=k)
            return np.stack([m for _, m in got])

        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(run, range(2)))
    for k, clip in enumerate(clips):
        assert np.abs(results[k] - _offline(ort, clip, stride=2, seed=k)).max() <= 1e-4


# ----------------------------------------------------------------------------- who brings the sound
def _clip_with_offset_sound(path: Path, video_start_s: float = 0.12) -> Path:
    """A 48 kHz clip whose video starts ``video_start_s`` after its sound (as in many camera and
    editor files): a square pulsing with noise bursts and a 12 kHz tone, a 500 Hz tone beneath."""
    from fractions import Fraction

    import av

    fps, n, rate = 25, 30, 48000
    t = np.arange(int((n / fps + video_start_s) * rate)) / rate
    pulse = (np.sin(2 * np.pi * 3.0 * t) > 0.3).astype(np.float64)
    noise = np.random.default_rng(0).standard_normal(t.shape)
    sound = (
        0.25 * pulse * noise + 0.1 * pulse * np.sin(2 * np.pi * 12000 * t) + 0.1 * np.sin(2 * np.pi * 500 * t)
    )
    sound = (sound / np.abs(sound).max() * 0.8).astype(np.float32)
    offset = round(video_start_s * fps)
    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = 320, 180, "yuv420p"
        audio = out.add_stream("aac", rate=rate)
        audio.layout = "mono"
        for i in range(n):
            img = np.full((180, 320, 3), 40, np.uint8)
            side = 60 if np.sin(2 * np.pi * 3.0 * (offset + i) / fps) > 0.3 else 40
            img[40 : 40 + side, 60 : 60 + side] = (250, 240, 40)
            img[60:120, 220:280] = (40, 200, 250)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = offset + i, Fraction(1, fps)
            for packet in video.encode(frame):
                out.mux(packet)
        for packet in video.encode():
            out.mux(packet)
        for k in range(0, sound.shape[0], 1024):
            chunk = av.AudioFrame.from_ndarray(sound[None, k : k + 1024], format="flt", layout="mono")
            chunk.sample_rate, chunk.pts = rate, k
            for packet in audio.encode(chunk):
                out.mux(packet)
        for packet in audio.encode():
            out.mux(packet)
    return path


def _client_side(path: Path, rate: int) -> tuple[list, list, float]:
    """What a plain tritonclient user sends: PyAV's frames with their times, and the soundtrack
    resampled by PyAV (FFmpeg's swr) to ``rate`` mono, in the chunks the demuxer hands out; and
    the time the soundtrack starts."""
    import av

    frames, chunks, pending, start = [], [], [], None
    with av.open(str(path)) as container:
        v, a = container.streams.video[0], container.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=rate)
        for packet in container.demux(v, a):
            for decoded in packet.decode():
                if packet.stream.type == "video":
                    frames.append((decoded.to_ndarray(format="rgb24"), float(decoded.time)))
                    chunks.append(np.concatenate(pending) if pending else np.zeros(0, np.float32))
                    pending = []
                else:
                    start = float(decoded.time) if start is None else start
                    pending += [o.to_ndarray().reshape(-1) for o in resampler.resample(decoded)]
        pending += [o.to_ndarray().reshape(-1) for o in resampler.resample(None)]
    chunks[-1] = np.concatenate([chunks[-1], *pending])
    assert start is not None
    return frames, chunks, start


def _cc(a: np.ndarray, b: np.ndarray) -> float:
    a, b = (a - a.mean()) / (a.std() + 1e-12), (b - b.mean()) / (b.std() + 1e-12)
    return float((a * b).mean())


def test_the_same_maps_whoever_brings_the_sound(server: TritonServer, ort, tmp_path: Path) -> None:
    """A client that decodes a clip with sound itself and resamples the soundtrack with PyAV at
    16, 44.1 or 48 kHz gets, through avsal_stream, maps within CC 0.99 of offline prediction on
    every frame, when it says when its soundtrack starts (audio_start); a soundtrack 120 ms early
    without it moves maps far (the control)."""
    from avsal_deploy.serving.client import stream

    clip = _clip_with_offset_sound(tmp_path / "clip.mp4")
    offline = _offline(ort, clip)
    for rate in (16000, 44100, 48000):
        frames, chunks, start = _client_side(clip, rate)
        got = dict(stream(server.grpc_url, frames, chunks, fps=25.0, audio_rate=rate, audio_start=start))
        ccs = [_cc(offline[i], got[i]) for i in range(len(frames))]
        assert min(ccs) >= 0.99, (rate, round(min(ccs), 4), int(np.argmin(ccs)))
    misaligned = dict(stream(server.grpc_url, frames, chunks, fps=25.0, audio_rate=rate))
    assert min(_cc(offline[i], misaligned[i]) for i in range(len(frames))) < 0.99
