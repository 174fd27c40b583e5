"""The benchmark report's machinery: FLOP counts, the machine's limit, per-node
profiles, ratios and targets derived from pytest-benchmark JSON, the report files, the CLI, the
perf_analyzer glue and the accuracy of reduced precision. Nothing here times anything."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from avsal_deploy import engine as engines
from avsal_deploy.bench.flops import count_flops
from avsal_deploy.bench.machine import gemm_peak
from avsal_deploy.bench.ortprof import family, profile_component
from avsal_deploy.bench.perf import _parse_csv, write_input_data
from avsal_deploy.bench.precision import map_agreement
from avsal_deploy.bench.report import HEADLINE, derive, merge_raw
from avsal_deploy.cli import main


def _graph_file(tmp_path: Path) -> Path:
    """x [B, 4, 6, 8] -> grouped Conv (8 out, groups 2, 3x3, pad 1) -> reshape [B, 8, 48]
    -> MatMul with [48, 10] -> Gemm-free tail; plus a ConvTranspose branch."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 2, 3, 3)).astype(np.float32), "w")
    m = numpy_helper.from_array(rng.standard_normal((48, 10)).astype(np.float32), "m")
    shape = numpy_helper.from_array(np.array([0, 8, 48], np.int64), "shape")
    wt = numpy_helper.from_array(rng.standard_normal((4, 3, 2, 2)).astype(np.float32), "wt")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], group=2, pads=[1, 1, 1, 1], name="conv"),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("Reshape", ["r", "shape"], ["f"], name="reshape"),
        helper.make_node("MatMul", ["f", "m"], ["y"], name="matmul"),
        helper.make_node("ConvTranspose", ["x", "wt"], ["u"], strides=[2, 2], name="convt"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6, 8])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8, 10]),
            helper.make_tensor_value_info("u", TensorProto.FLOAT, ["batch", 3, 12, 16]),
        ],
        [w, m, shape, wt],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    path = tmp_path / "g.onnx"
    onnx.save(model, path)
    return path


def test_count_flops_matches_hand_counts_and_scales_with_batch(tmp_path: Path) -> None:
    path = _graph_file(tmp_path)
    conv = 2 * (8 * 6 * 8) * (2 * 3 * 3)  # outputs x (Cin/groups x k x k) multiply-adds
    matmul = 2 * (8 * 10) * 48
    convt = 2 * (4 * 6 * 8) * (3 * 2 * 2)  # inputs x (Cout/groups x k x k)
    one = count_flops(path, batch=1)
    assert one.by_node == {"conv": conv, "matmul": matmul, "convt": convt}
    assert one.total == conv + matmul + convt and not one.uncounted
    assert count_flops(path, batch=3).total == 3 * one.total


def test_gemm_peak_measures_both_backends() -> None:
    peak = gemm_peak(size=256, repeats=2)
    assert {"onnxruntime", "numpy"} <= set(peak.per_backend)
    assert peak.gflops == max(peak.per_backend.values()) > 0
    assert peak.backend in peak.per_backend


def test_node_profile_attributes_time_and_flops_per_family(tmp_path: Path) -> None:
    path = _graph_file(tmp_path)
    x = np.random.default_rng(0).standard_normal((2, 4, 6, 8)).astype(np.float32)
    prof = profile_component(path, {"x": x}, "g", runs=2, threads=1)
    ops = {o.op: o for o in prof.ops}
    assert family("FusedConv") == "conv" and family("FusedMatMul") == "matmul" and family("Relu") == "Relu"
    assert "conv" in ops and "matmul" in ops
    total = count_flops(path, batch=2)
    assert ops["matmul"].gflop == pytest.approx(total.by_op["MatMul"] / 1e9, abs=1e-3)
    assert sum(o.share for o in prof.ops) == pytest.approx(1.0, abs=1e-3)
    assert prof.kernel_ms > 0 and prof.top_nodes


def _case(metric: str, median: float, **info) -> dict:
    name = f"{metric}[{'-'.join(str(v) for v in info.values())}]"  # unique, as pytest's are
    return {
        "name": name,
        "fullname": name,
        "stats": {"median": median},
        "extra_info": {"metric": metric, **info},
    }


def _raw() -> dict:
    b = [
        _case("gemm", 1.0, gflops=100.0),
        _case(
            "component",
            0.2,
            profile="small",
            component="unet_step",
            backend="onnxruntime",
            gflop=10.0,
            batch=1,
        ),
    ]
    for comp, t in (("video_encoder", 0.5), ("audio_encoder", 0.1), ("fusion", 0.2)):
        b.append(
            _case("component", t, profile="small", component=comp, backend="onnxruntime", gflop=1.0, batch=1)
        )
    for backend, scale in (("onnxruntime", 1.0), ("torch", 2.5)):
        for steps, t in ((0, 0.8), (1, 1.0), (4, 1.6)):
            b.append(
                _case(
                    "window",
                    t * scale,
                    profile="small",
                    backend=backend,
                    steps=steps,
                    gflop=40.0 + 10 * steps,
                )
            )
    b += [
        _case("window", 0.01, profile="tiny", backend="onnxruntime", steps=4, gflop=0.1),
        _case("triton_window", 0.10, profile="small", engine="onnxruntime"),
        _case("triton_window", 0.12, profile="small", engine="triton-shm"),
        _case("streams", 1.0, profile="small", stride=1, streams=1, aggregate_fps=9.0, latency_ms={"p50": 1}),
        _case(
            "streams", 1.0, profile="small", stride=4, streams=8, aggregate_fps=30.0, latency_ms={"p50": 2}
        ),
        _case(
            "streams", 1.0, profile="small", stride=8, streams=8, aggregate_fps=90.0, latency_ms={"p50": 2}
        ),
        _case("precision", 1.2, profile="small", precision="fp32", steps=4),
        _case(
            "precision",
            0.8,
            profile="small",
            precision="int8",
            steps=4,
            cc_mean=0.995,
            cc_min=0.98,
            frames=50,
        ),
        _case("attention_memory", 1.0, profile="paper", variant="diffsal", eca_memory_ratio=0.25),
        _case("attention_memory", 1.0, profile="small", variant="diffsal", eca_memory_ratio=0.5),
    ]
    return {"benchmarks": b}


def test_derive_computes_each_ratio_from_side_by_side_cases() -> None:
    report = derive(_raw())
    assert report["profile"] == "small"  # the largest profile with windows
    assert report["gemm_gflops"] == 100.0
    assert report["ort_speedup"] == pytest.approx(2.5)
    assert report["gemm_fraction"] == pytest.approx(80.0 / 1.6 / 100.0)
    assert report["unet_step_gemm_fraction"] == pytest.approx(10.0 / 0.2 / 100.0)
    assert report["ddim_step_ratio"] == pytest.approx((1.6 - 1.0) / 0.2)
    assert report["triton_overhead"] == pytest.approx(1.2)
    assert report["stream_fps_small"] == 30.0  # stride 8 is beyond the target's stride <= 4
    assert report["int8_speedup"] == pytest.approx(1.5) and report["int8_cc"] == 0.995
    assert report["eca_memory_ratio"] == 0.25
    judged = {t["key"]: t for t in report["targets"]}
    assert judged["ort_speedup"]["met"] is True and judged["gemm_fraction"]["met"] is False
    assert judged["triton_overhead"]["met"] is False and judged["stream_fps_small"]["met"] is True
    assert report["tables"]["breakdown"]["unet_step x4"] == pytest.approx(0.8)


def test_a_later_json_replaces_the_cases_it_measured_again(tmp_path: Path) -> None:
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    first.write_text(json.dumps(_raw()))
    again = [_case("window", 0.8, profile="small", backend="onnxruntime", steps=4, gflop=80.0)]
    second.write_text(json.dumps({"benchmarks": again}))
    merged = merge_raw([first, second])
    assert len(merged["benchmarks"]) == len(_raw()["benchmarks"])
    report = derive(merged)
    assert report["ort_speedup"] == pytest.approx(
        1.6 * 2.5 / 0.8
    )  # torch from a.json, onnxruntime from b.json


def test_missing_suites_give_null_with_a_reason() -> None:
    report = derive({"benchmarks": [_case("gemm", 1.0, gflops=50.0)]})
    for key in HEADLINE:
        assert key in report
        if key != "gemm_gflops":
            assert report[key] is None and report["notes"][key]
    assert all(t["met"] is None for t in report["targets"])


def test_report_files_and_cli_from_json(tmp_path: Path, capsys) -> None:
    raw = tmp_path / "raw.json"
    raw.write_text(json.dumps(_raw()))
    out = tmp_path / "report"
    assert main(["bench", "--out", str(out), "--from-json", str(raw), "--no-node-profile"]) == 0
    data = json.loads((out / "report.json").read_text())
    assert set(HEADLINE) <= set(data) and isinstance(data["notes"], dict)
    assert data["ort_speedup"] == pytest.approx(2.5)
    md = (out / "report.md").read_text()
    assert "| ort_speedup | 2.5 | >= 2 | yes |" in md
    assert {"fps_vs_streams.png", "breakdown.png"} <= set(data["plots"])
    assert all((out / p).stat().st_size > 1000 for p in data["plots"])
    assert "ort_speedup" in capsys.readouterr().out
    assert main(["bench", "--out", str(out), "--from-json", str(tmp_path / "nope.json")]) == 2


def test_perf_analyzer_csv_and_input_data(tmp_path: Path) -> None:
    csv = tmp_path / "pa.csv"
    header = "Concurrency,Inferences/Second,Client Send,p50 latency,p90 latency,p95 latency,p99 latency,Avg latency"
    csv.write_text(header + "\n2,41.5,10,46852,59501,63425,67390,48000\n")
    (point,) = _parse_csv(csv)
    assert point.concurrency == 2 and point.throughput == 41.5
    assert (point.p50_ms, point.p99_ms) == (46.852, 67.39)
    frame = np.arange(12, dtype=np.uint8).reshape(2, 2, 3)
    path = write_input_data(tmp_path / "in.json", [[{"frame": frame}, {"frame": frame}], [{"frame": frame}]])
    data = json.loads(path.read_text())["data"]
    assert len(data) == 2 and len(data[0]) == 2 and data[0][0]["frame"]["shape"] == [2, 2, 3]
    import base64

    assert base64.b64decode(data[1][0]["frame"]["b64"]) == frame.tobytes()


def test_map_agreement_of_an_engine_with_itself_is_one(tmp_path: Path) -> None:
    from avsal_deploy.data.synthetic import make_sample_clip

    clip = make_sample_clip(tmp_path / "c.mp4", seconds=0.6, size=(64, 96))
    eng = engines.open()
    agreement = map_agreement(eng, eng, [clip])
    assert agreement["frames"] == 15
    assert agreement["cc_mean"] == pytest.approx(1.0, abs=1e-6)


GPU_CHECK = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.sh"


def test_gpu_check_says_it_needs_a_gpu_and_runs_its_cases_on_the_cpu(tmp_path: Path) -> None:
    """The GPU script exits 3 with one clear line where torch sees no CUDA device, and its own code
    (families built, CPU reference maps, timed windows, CC per case) runs with ``--device cpu``."""
    import subprocess
    import sys

    import torch

    env = {"PATH": "/usr/bin:/bin", "PYTHON": sys.executable, "HOME": str(tmp_path)}
    if not torch.cuda.is_available():
        done = subprocess.run(["bash", str(GPU_CHECK)], capture_output=True, text=True, env=env)
        assert done.returncode == 3 and "needs a GPU" in done.stderr and "nothing was run" in done.stderr
    out = tmp_path / "gpu-check.json"
    args = ["--device", "cpu", "--profile", "tiny", "--families", "hybrid,avrsp", "--batches", "1,2"]
    done = subprocess.run(
        ["bash", str(GPU_CHECK), *args, "--reps", "1", "--json", str(out)],
        capture_output=True,
        text=True,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["family"], r["batch"]) for r in rows] == [
        ("hybrid", 1),
        ("hybrid", 2),
        ("avrsp", 1),
        ("avrsp", 2),
    ]
    assert all(r["precision"] == "fp32" and not r["cuda_graphs"] for r in rows)
    assert all(r["cc_to_cpu"] >= 0.999 and r["parity"] and r["frames_per_second"] > 0 for r in rows)
