"""Batch scoring (`avsal score`): inputs, failure isolation, resume after SIGKILL, settings changes,
`--gt` against `avsal eval`, two Triton servers with one stopped mid-run, and the Ray path.

Tiny videos (64x96, 8-12 frames) and the tiny checkpoint on the torch engine keep it fast; the
Triton test shares the session's export and repository with tests/test_triton.py.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import catches_sigterm
from media_utils import write_video

from avsal_deploy.cli import main
from avsal_deploy.data.synthetic import generate
from avsal_deploy.engine import EngineChoice
from avsal_deploy.errors import AvsalError
from avsal_deploy.outputs import load_maps
from avsal_deploy.pipeline import PredictOptions
from avsal_deploy.scoring import GroundTruth, collect_inputs, score
from avsal_deploy.scoring.core import PARTIAL, RECORD

REPO_ROOT = Path(__file__).resolve().parents[1]  # the checkout under test (subprocesses import it)
SIZE = (64, 96)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _good(directory: Path, names: list[str], n: int = 8) -> list[Path]:
    paths = []
    for i, name in enumerate(names):
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        paths.append(write_video(path, n=n + (i % 3), fps=25, size=SIZE, audio="aac" if i % 2 else None))
    return paths


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four good videos (two in a sub-directory) and three bad ones: text, empty, truncated."""
    root = tmp_path_factory.mktemp("collection")
    good = _good(root, ["a.mp4", "b.mkv", "sub/c.mp4", "sub/deeper/d.mov"])
    (root / "notes.mp4").write_text("this is not a video\n")
    (root / "sub" / "empty.avi").write_bytes(b"")
    (root / "cut.mp4").write_bytes(good[0].read_bytes()[:300])
    (root / "readme.md").write_text("ignored: not a video extension\n")
    return root


def _summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _status(out: Path) -> dict[str, str]:
    return {Path(v["path"]).name: v["status"] for v in _summary(out)["videos"]}


def _torch(ckpt: Path) -> list[str]:
    return ["--engine", "torch", "--checkpoint", str(ckpt), "--steps", "1"]


# ----------------------------------------------------------------------------- inputs
def test_inputs_files_directories_and_list_files(collection: Path, tmp_path: Path) -> None:
    items = collect_inputs([collection])
    rels = sorted(i.rel for i in items)
    assert rels == ["a", "b", "cut", "notes", "sub/c", "sub/deeper/d", "sub/empty"]  # readme.md ignored

    listing = tmp_path / "videos.txt"
    listing.write_text(
        f"# a comment\n\n{collection / 'a.mp4'}\n{os.path.relpath(collection / 'sub', tmp_path)}\n"
    )
    listed = collect_inputs([listing])
    assert [i.rel for i in listed] == [
        "a",
        "c",
        "empty",
        "deeper/d",
    ]  # a folder's files, then its sub-folders
    assert Path(listed[0].path) == collection / "a.mp4"

    single = collect_inputs([collection / "sub" / "c.mp4", collection / "sub" / "c.mp4"])
    assert [i.rel for i in single] == ["c"]  # the same file twice is scored once
    (tmp_path / "a.mp4").write_bytes((collection / "a.mp4").read_bytes())
    with pytest.raises(AvsalError, match="would both write"):
        collect_inputs([collection / "a.mp4", collection / "sub" / "deeper" / "d.mov", tmp_path / "a.mp4"])
    with pytest.raises(AvsalError, match="no such file"):
        collect_inputs([tmp_path / "missing.mp4"])
    (tmp_path / "nothing").mkdir()
    with pytest.raises(AvsalError, match="no video files"):
        collect_inputs([tmp_path / "nothing"])


def test_bad_usage_exits_2(tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]) -> None:
    video = write_video(tmp_path / "v.mp4", n=8, size=SIZE)
    out = str(tmp_path / "out")
    cases = [
        (
            ["score", str(tmp_path / "missing"), "--out", out, *_torch(tiny_checkpoint)],
            "missing: no such file",
        ),
        (["score", "--out", out, *_torch(tiny_checkpoint)], "nothing to score"),
        (["score", str(video), "--out", out, "--jobs", "0"], "--jobs 0"),
        (
            ["score", str(video), "--out", out, "--engine", "onnxruntime", "--url", "127.0.0.1:1"],
            "--url is for --engine triton",
        ),
        (
            ["score", str(video), "--out", out, "--engine", "torch", "--checkpoint", str(tmp_path / "x")],
            "x: no such checkpoint",
        ),
        (
            ["score", str(video), "--out", str(video / "out"), *_torch(tiny_checkpoint)],
            "cannot create the output directory",
        ),
        (["score", str(video), "--out", out, "--dataset", "synthetic"], "--dataset is used with --gt"),
    ]
    for args, message in cases:
        assert main(args) == 2, args
        assert message in capsys.readouterr().err, args
    assert not (tmp_path / "out").exists()


def test_cli_repeats_url_without_swallowing_inputs() -> None:
    from avsal_deploy.cli import build_parser

    args = build_parser().parse_args(["score", "--url", "a:1", "videos", "--url", "b:2", "--out", "o"])
    assert args.url == ["a:1", "b:2"] and args.inputs == ["videos"]


# ----------------------------------------------------------------------------- a run
def test_collection_scores_with_bad_videos_recorded(
    collection: Path, tmp_path: Path, tiny_checkpoint: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    code = main(["score", str(collection), "--out", str(out), "--jobs", "2", *_torch(tiny_checkpoint)])
    printed = capsys.readouterr().out
    assert code == 1
    summary = _summary(out)
    assert (summary["done"], summary["failed"], summary["skipped"]) == (4, 3, 0)
    status = _status(out)
    assert {n for n, s in status.items() if s == "failed"} == {"notes.mp4", "empty.avi", "cut.mp4"}
    for video in summary["videos"]:
        assert set(video) >= {"path", "status", "frames", "error", "seconds", "frames_per_second", "server"}
        if video["status"] == "failed":
            assert video["error"] and Path(video["path"]).name in video["error"]
            assert "\n" not in video["error"]
            assert video["error"] in printed  # listed at the end
            assert not (out / video["rel"]).exists()
        else:
            assert video["error"] is None
            maps = load_maps(out / video["rel"] / "maps.npz")
            assert maps.shape[1:] == SIZE and maps.shape[0] == video["frames"] >= 8
            record = json.loads((out / video["rel"] / RECORD).read_text())
            assert record["status"] == "done" and record["frames"] == video["frames"]
            assert not (out / video["rel"] / "overlay.mp4").exists()  # only with --overlay
    assert summary["servers"]["local"]["videos"] == 4
    assert summary["frames"] == sum(v["frames"] for v in summary["videos"])
    assert not (out / PARTIAL).exists()
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["status"] for r in rows) == ["done"] * 4 + ["failed"] * 3
    assert {Path(r["path"]).name for r in rows if r["error"]} == {"notes.mp4", "empty.avi", "cut.mp4"}


def test_resume_rules(tmp_path: Path, tiny_checkpoint: Path) -> None:
    """Unchanged -> skipped; touched but same bytes -> skipped; new bytes or new settings -> redone;
    a partial directory (no record) -> redone."""
    videos = tmp_path / "videos"
    a, b, c = _good(videos, ["a.mp4", "b.mp4", "c.mp4"])
    out = tmp_path / "out"
    torch_engine = EngineChoice("torch", checkpoint=str(tiny_checkpoint))

    def run(steps: int = 1, seed: int = 0) -> dict[str, str]:
        options = PredictOptions(steps=steps, seed=seed)
        return {
            Path(r.path).name: r.status for r in score([videos], out, engine=torch_engine, options=options)
        }

    assert run() == {"a.mp4": "done", "b.mp4": "done", "c.mp4": "done"}
    first = {p.name: (out / p.stem / "maps.npz").read_bytes() for p in (a, b, c)}
    assert run() == {"a.mp4": "skipped", "b.mp4": "skipped", "c.mp4": "skipped"}
    assert _summary(out)["skipped"] == 3 and _summary(out)["frames"] == 0

    later = time.time() + 5
    os.utime(a, (later, later))  # same bytes, new mtime: hashed again, still skipped
    write_video(b, n=10, fps=25, size=SIZE)  # new content
    (out / "c" / RECORD).unlink()  # as if killed before the record was written
    assert run() == {"a.mp4": "skipped", "b.mp4": "done", "c.mp4": "done"}
    assert json.loads((out / "a" / RECORD).read_text())["input"]["mtime_ns"] == os.stat(a).st_mtime_ns
    assert load_maps(out / "b" / "maps.npz").shape[0] == 10
    assert (out / "c" / "maps.npz").read_bytes() == first["c.mp4"]  # same settings, same maps

    assert set(run(steps=2).values()) == {"done"}  # settings changed: everything redone
    assert set(run(steps=2, seed=1).values()) == {"done"}
    assert (out / "a" / "maps.npz").read_bytes() != first["a.mp4"]
    assert set(run(steps=2, seed=1).values()) == {"skipped"}


#: Signals sent to scoring runs at random moments, and how often each: SIGTERM and SIGINT must stop
#: cleanly (exit 130), SIGKILL (which nothing can catch) must lose nothing that was finished.
SIGNAL_PLAN = (signal.SIGTERM,) * 9 + (signal.SIGINT,) * 8 + (signal.SIGKILL,) * 3


def _visible(out: Path) -> dict[str, bytes]:
    """The video directories a reader can see (not the private ``.partial`` area): name -> maps."""
    found = {}
    for d in out.iterdir():
        if d.name.startswith(".") or not d.is_dir():
            continue
        assert sorted(p.name for p in d.iterdir()) == ["maps.npz", RECORD, "summary.json"], d
        assert json.loads((d / RECORD).read_text())["status"] == "done"
        found[d.name] = (d / "maps.npz").read_bytes()
    return found


def _finished(out: Path) -> int:
    """Videos whose output directory is visible (each appears whole, by one rename)."""
    if not out.is_dir():
        return 0
    return sum(1 for d in out.iterdir() if d.is_dir() and not d.name.startswith("."))


def test_signals_at_random_moments_stop_cleanly_and_resume_identically(
    tmp_path: Path, tiny_export: Path
) -> None:
    """SIGTERM / SIGINT / SIGKILL at 20 random moments of scoring runs into one output directory:
    every caught signal exits 130 (never an abort), no half-written video directory is ever
    visible, every visible one equals the uninterrupted run's, and a last run finishes the rest
    with the same maps."""
    import random

    videos = tmp_path / "videos"
    names = [f"v{i}.mp4" for i in range(5)]
    _good(videos, names, n=8)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "avsal_deploy.cli",
        "-q",
        "score",
        str(videos),
        "--export",
        str(tiny_export),
    ]
    command += ["--steps", "1"]

    reference = tmp_path / "reference"
    t0 = time.monotonic()
    subprocess.run([*command, "--out", str(reference)], env=env, check=True, capture_output=True)
    per_video = (time.monotonic() - t0) / len(names)
    want = _visible(reference)
    assert sorted(want) == sorted(Path(n).stem for n in names)

    out = tmp_path / "out"
    rng = random.Random(0)
    plan = list(SIGNAL_PLAN)
    rng.shuffle(plan)
    codes = []
    for sig in plan:
        proc = subprocess.Popen(
            [*command, "--out", str(out)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
        deadline = time.monotonic() + 60
        while not catches_sigterm(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)  # until the command's signal handlers are in place
        # A random moment of the work this run has left, however fast the machine is: after a
        # random number of the remaining videos (never all) and part of the next one.
        done = _finished(out)
        wait_for = done + rng.randrange(len(names) - done)
        while _finished(out) < wait_for and proc.poll() is None:
            time.sleep(0.005)
        delay = rng.uniform(0.0, 0.5 * per_video)
        time.sleep(delay)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        codes.append(proc.returncode)
        stopped = {signal.SIGKILL: (-signal.SIGKILL,)}.get(sig, (130,))
        assert proc.returncode in (*stopped, 0), (sig.name, delay, proc.returncode, err.decode()[-2000:])
        assert b"terminate called" not in err and b"Traceback" not in err, err.decode()[-2000:]
        seen = _visible(out)
        assert all(seen[name] == want[name] for name in seen)  # finished = identical, none half-written
        if len(seen) == len(names):  # finished before the signal: start over to interrupt again
            shutil.rmtree(out)
    assert codes.count(130) >= 10, codes  # most signals landed mid-run, as intended

    rerun = subprocess.run([*command, "--out", str(out)], env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stderr
    assert _visible(out) == want
    assert not (out / PARTIAL).exists()
    status = {Path(v["path"]).stem: v["status"] for v in _summary(out)["videos"]}
    assert set(status) == set(want) and set(status.values()) <= {"done", "skipped"}


# ----------------------------------------------------------------------------- ground truth
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate(tmp_path_factory.mktemp("synth"), 6, profile="tiny", seed=5, n_frames=12)


@pytest.mark.parametrize("stride", [1, 3])
def test_gt_metrics_equal_avsal_eval(
    synthetic: Path, tmp_path: Path, tiny_checkpoint: Path, stride: int
) -> None:
    metrics = "cc,nss,kld,sim,auc_j"
    common = ["--steps", "1", "--stride", str(stride), "--seed", "3"]
    report = tmp_path / "eval.json"
    chosen = [arg for m in metrics.split(",") for arg in ("--metric", m)]
    assert (
        main(
            [
                "-q",
                "eval",
                str(tiny_checkpoint),
                str(synthetic),
                *chosen,
                "--engine",
                "torch",
                "--batch-size",
                "1",
                "--out",
                str(report),
                *common,
            ]
        )
        == 0
    )
    out = tmp_path / "score"
    assert (
        main(
            [
                "score",
                "--gt",
                str(synthetic),
                "--dataset",
                "synthetic",
                "--split",
                "test",
                "--out",
                str(out),
                "--engine",
                "torch",
                "--checkpoint",
                str(tiny_checkpoint),
                "--jobs",
                "2",
                *common,
            ]
        )
        == 0
    )
    evaluated = json.loads(report.read_text())
    assert evaluated["engine"] == "torch" and evaluated["noise"] == "per-video"
    summary = _summary(out)
    videos = {v["rel"]: v for v in summary["videos"]}
    assert sorted(videos) == sorted(evaluated["videos"])
    for name, video in videos.items():
        for m in metrics.split(","):
            assert video["metrics"][m] == pytest.approx(evaluated["videos"][name][m], rel=1e-9, abs=1e-12)
    for m in metrics.split(","):
        assert summary["gt"]["mean"][m] == pytest.approx(evaluated["dataset"][m], rel=1e-9, abs=1e-12)
    assert np.isfinite(summary["gt"]["mean"]["cc"])
    with open(out / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows[-1]["status"] == "aggregate" and float(rows[-1]["cc"]) == pytest.approx(
        summary["gt"]["mean"]["cc"], rel=1e-5
    )
    # A skipped video keeps its metrics: the re-run's aggregate is the same.
    again = list(
        score(
            [],
            out,
            engine=EngineChoice("torch", checkpoint=str(tiny_checkpoint)),
            options=PredictOptions(steps=1, stride=stride, seed=3),
            gt=GroundTruth(str(synthetic), "synthetic", "test"),
        )
    )
    assert {r.status for r in again} == {"skipped"}
    assert _summary(out)["gt"]["mean"] == summary["gt"]["mean"]


def test_gt_with_video_files_matches_by_name(synthetic: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    """Video files are matched to ground truth by name; one without ground truth fails, named."""
    videos = tmp_path / "videos"
    _good(videos, ["synth_000.mp4", "stranger.mp4"], n=12)
    gt = GroundTruth(str(synthetic), "synthetic", "test")
    results = {
        Path(r.path).name: r
        for r in score(
            [videos],
            tmp_path / "out",
            engine=EngineChoice("torch", checkpoint=str(tiny_checkpoint)),
            options=PredictOptions(steps=1),
            gt=gt,
        )
    }
    assert results["synth_000.mp4"].status == "done" and results["synth_000.mp4"].metrics is not None
    assert set(results["synth_000.mp4"].metrics) == set(gt.metrics)
    assert results["stranger.mp4"].status == "failed"
    assert (
        "stranger.mp4" in results["stranger.mp4"].error and "no ground truth" in results["stranger.mp4"].error
    )


# ----------------------------------------------------------------------------- Triton
@pytest.mark.triton
def test_two_triton_servers_share_the_work_and_survive_one_stopping(
    triton_repo: Path, tiny_export: Path, tmp_path: Path
) -> None:
    from avsal_deploy.serving.server import TritonServer

    videos = tmp_path / "videos"
    _good(videos, [f"v{i}.mp4" for i in range(8)], n=8)
    with TritonServer(triton_repo) as first, TritonServer(triton_repo) as second:
        urls = [first.http_url, second.http_url]
        results = []
        for result in score(
            [videos],
            tmp_path / "out",
            engine=EngineChoice("triton", export=str(tiny_export)),
            urls=urls,
            options=PredictOptions(steps=1),
        ):
            results.append(result)
            if result.server == first.http_url and first.is_running():
                # The server goes away (a crash: a graceful stop would drain the queue first): the
                # video its worker is on fails mid-run and must finish on the other server.
                assert first.process is not None
                os.killpg(first.process.pid, signal.SIGKILL)
                first.stop()
    assert [r.status for r in results] == ["done"] * 8
    by_server = {url: [r for r in results if r.server == url] for url in urls}
    assert len(by_server[first.http_url]) >= 1 and len(by_server[second.http_url]) >= 1
    moved = [r for r in results if r.attempts == 2]
    assert moved and all(r.servers_tried == [first.http_url, second.http_url] for r in moved)
    servers = _summary(tmp_path / "out")["servers"]
    assert set(servers) == set(urls)
    assert sum(s["videos"] for s in servers.values()) == 8 and all(
        s["frames_per_second"] > 0 for s in servers.values()
    )

    ort = tmp_path / "ort"
    assert {
        r.status
        for r in score(
            [videos], ort, engine=EngineChoice(export=str(tiny_export)), options=PredictOptions(steps=1)
        )
    } == {"done"}
    for r in results:
        a, b = load_maps(tmp_path / "out" / r.rel / "maps.npz"), load_maps(ort / r.rel / "maps.npz")
        assert np.abs(a - b).max() <= 1 / 255 + 1e-6


# ----------------------------------------------------------------------------- Ray
#: Runs in its own process: a Ray driver changes process state for good (environment variables,
#: a SIGTERM handler, background threads) that would leak into the tests after it.
_RAY_DRIVER = """
import json, sys
import ray
from avsal_deploy.cli import main
ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": json.loads(sys.argv[1])})
try:
    address = ray.get_runtime_context().gcs_address
    codes = [main([*json.loads(sys.argv[2]), "--ray", address]) for _ in range(2)]
finally:
    ray.shutdown()
print(json.dumps(codes))
"""


@pytest.mark.slow
def test_ray_scores_a_directory(collection: Path, tmp_path: Path, tiny_checkpoint: Path) -> None:
    if importlib.util.find_spec("ray") is None:  # not imported here: see _RAY_DRIVER
        pytest.skip("the 'cluster' extra (ray) is not installed")
    out = tmp_path / "out"
    args = ["score", str(collection), "--out", str(out), "--jobs", "2", *_torch(tiny_checkpoint)]
    env_vars = {"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    driver = subprocess.run(
        [sys.executable, "-c", _RAY_DRIVER, json.dumps(env_vars), json.dumps(args)],
        env={**os.environ, **env_vars},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert driver.returncode == 0, driver.stderr[-3000:]
    assert json.loads(driver.stdout.strip().splitlines()[-1]) == [1, 1]  # three bad videos, twice
    summary = _summary(out)  # of the second run: the first run's videos are complete
    assert set(_status(out).values()) == {"skipped", "failed"}
    local = tmp_path / "local"
    assert main(["score", str(collection), "--out", str(local), *_torch(tiny_checkpoint)]) == 1
    first = json.loads((out / "summary.json").read_text())
    done = [v for v in first["videos"] if v["status"] == "skipped"]
    assert len(done) == 4 and first["failed"] == 3
    for video in done:
        record = json.loads((out / video["rel"] / RECORD).read_text())
        assert record["server"].startswith("ray:")  # scored by a Ray actor
        assert (out / video["rel"] / "maps.npz").read_bytes() == (
            local / video["rel"] / "maps.npz"
        ).read_bytes()
    assert summary["skipped"] == 4
