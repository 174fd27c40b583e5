"""Triton's own load tool, ``perf_analyzer``: p50/p95/p99 latency and throughput vs concurrency.

The PyPI package ``perf-analyzer`` is an empty placeholder, and current ``tritonclient`` wheels no
longer carry the binary; the ``tritonclient`` 2.50 manylinux wheel is the last that does. So
:func:`install_perf_analyzer` takes the binary from that wheel (``pip download``, no install: it
would downgrade the client library), with the two shared libraries it links against: ``libb64``
(bundled by ``nvidia-pytriton``) and ``libcudart.so.12`` (the ``nvidia-cuda-runtime-cu12`` wheel,
in the ``bench`` extra; it loads without a GPU, and only CUDA shared memory would use it). The
binary lives in ``$AVSAL_CACHE/tools/perf_analyzer-<version>``.

:func:`run_perf_analyzer` drives a model with recorded inputs (``--input-data`` JSON, base64
tensors), sequence-aware for ``avsal_stream`` (each stream a sequence of frames, START/END and
correlation ids set by the tool), and parses its CSV.
"""

from __future__ import annotations

import base64
import csv
import glob
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from avsal_deploy.errors import BackendUnavailableError
from avsal_deploy.export.cache import cache_root

TRITONCLIENT_WITH_PA = "2.50.0"


def tool_dir() -> Path:
    return cache_root() / "tools" / f"perf_analyzer-{TRITONCLIENT_WITH_PA}"


def _site_packages() -> list[Path]:
    return [Path(p) for p in {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}]


def _pip_download(requirement: str, dest: Path) -> Path:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        requirement,
        "--no-deps",
        "--only-binary=:all:",
        "-q",
        "-d",
        str(dest),
    ]
    cmd += ["--platform", "manylinux1_x86_64", "--platform", "manylinux2014_x86_64"]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise BackendUnavailableError(
            f"perf_analyzer: `pip download {requirement}` failed: {done.stderr.strip()[-400:]}"
        )
    return wheels[-1]


def _find_lib(pattern: str) -> Path | None:
    for root in _site_packages():
        hits = sorted(glob.glob(str(root / pattern)))
        if hits:
            return Path(hits[-1])
    return None


def install_perf_analyzer() -> Path:
    """The ``perf_analyzer`` binary (fetched once; see the module docstring)."""
    directory = tool_dir()
    binary = directory / "perf_analyzer"
    if binary.exists():
        return binary
    lib = directory / "lib"
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        wheel = _pip_download(f"tritonclient=={TRITONCLIENT_WITH_PA}", tmp_dir / "tc")
        lib.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheel) as zf:
            member = next((n for n in zf.namelist() if n.endswith("/bin/perf_analyzer")), None)
            if member is None:
                raise BackendUnavailableError(f"{wheel.name}: has no perf_analyzer binary")
            with zf.open(member) as src, open(directory / "perf_analyzer.tmp", "wb") as dst:
                shutil.copyfileobj(src, dst)
        b64 = _find_lib("nvidia_pytriton.libs/libb64-*.so.0d")
        if b64 is None:
            raise BackendUnavailableError(
                "perf_analyzer needs libb64 (bundled by nvidia-pytriton: the serve extra)"
            )
        shutil.copy2(b64, lib / "libb64.so.0d")
        cudart = _find_lib("nvidia/cuda_runtime/lib/libcudart.so.12")
        if cudart is None:
            wheel = _pip_download("nvidia-cuda-runtime-cu12", tmp_dir / "cudart")
            with zipfile.ZipFile(wheel) as zf:
                member = next(n for n in zf.namelist() if n.endswith("lib/libcudart.so.12"))
                with zf.open(member) as src, open(lib / "libcudart.so.12", "wb") as dst:
                    shutil.copyfileobj(src, dst)
        else:
            shutil.copy2(cudart, lib / "libcudart.so.12")
    tmp_binary = directory / "perf_analyzer.tmp"
    tmp_binary.chmod(0o755)
    tmp_binary.rename(binary)
    return binary


def perf_analyzer_env() -> dict[str, str]:
    env = dict(os.environ)
    lib = str(tool_dir() / "lib")
    env["LD_LIBRARY_PATH"] = lib + (":" + env["LD_LIBRARY_PATH"] if env.get("LD_LIBRARY_PATH") else "")
    return env


def _b64(array: np.ndarray) -> dict:
    return {
        "b64": base64.b64encode(np.ascontiguousarray(array).tobytes()).decode(),
        "shape": list(array.shape),
    }


def write_input_data(path: Path, steps: Sequence[Sequence[Mapping[str, np.ndarray]]]) -> Path:
    """``--input-data`` JSON: a list of streams (sequences), each a list of per-request tensors."""
    data = [[{name: _b64(arr) for name, arr in req.items()} for req in stream] for stream in steps]
    path.write_text(json.dumps({"data": data if len(data) > 1 or len(data[0]) > 1 else data[0]}))
    return path


@dataclass(frozen=True)
class PerfPoint:
    concurrency: int
    throughput: float  # inferences / s
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float


def run_perf_analyzer(
    model: str,
    grpc_url: str,
    input_data: Path,
    concurrency: Sequence[int] = (1, 2, 4),
    sequence_length: int | None = None,
    requests: int = 48,
    timeout: float = 600.0,
) -> list[PerfPoint]:
    """Run ``perf_analyzer`` on ``model`` over gRPC, one point per concurrency level.

    Each measurement window counts ``requests`` x concurrency requests; the stability criterion is
    loose (100 %) because a stream's requests differ by nature (a frame that completes a window
    costs a network run, the others a copy), and the tool gives up otherwise."""
    binary = install_perf_analyzer()
    points = []
    for level in concurrency:
        with tempfile.TemporaryDirectory() as tmp:
            report = Path(tmp) / "pa.csv"
            cmd = [
                str(binary), "-m", model, "-u", grpc_url, "-i", "grpc", "--input-data", str(input_data),
                "--concurrency-range", f"{level}:{level}", "--measurement-mode", "count_windows",
                "--measurement-request-count", str(requests * level), "--percentile", "95", "-f", str(report),
                "--stability-percentage", "100", "--max-trials", "6",
            ]  # fmt: skip
            if sequence_length is not None:
                cmd += ["--sequence-length", str(sequence_length), "--sequence-length-variation", "0"]
            done = subprocess.run(
                cmd, capture_output=True, text=True, env=perf_analyzer_env(), timeout=timeout
            )
            if done.returncode != 0 or not report.exists():
                tail = (done.stdout + done.stderr).strip().splitlines()[-8:]
                raise RuntimeError(
                    f"perf_analyzer on {model} (concurrency {level}) failed:\n" + "\n".join(tail)
                )
            points.extend(_parse_csv(report))
    return points


def _parse_csv(report: Path) -> list[PerfPoint]:
    with report.open() as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        ms = {k: float(row[f"p{k} latency"]) / 1e3 for k in ("50", "90", "95", "99")}
        out.append(
            PerfPoint(
                int(row["Concurrency"]),
                float(row["Inferences/Second"]),
                ms["50"],
                ms["90"],
                ms["95"],
                ms["99"],
            )
        )
    return out
