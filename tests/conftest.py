"""Shared fixtures: tiny checkpoints and their ONNX exports, made once per test session.

Exports are the slow part of the suite (the dynamo exporter takes ~10 s a component on 2 cores),
so every test that needs one shares these session-scoped directories.
"""

from __future__ import annotations

import os
import signal
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from avsal_deploy import interrupt
from avsal_deploy.config import LEGACY_DEFAULTS, load_config
from avsal_deploy.models.build import AVSaliencyModel, build_model
from avsal_deploy.models.weights import save_checkpoint


def _tiny_model(variant: str, seed: int = 0) -> AVSaliencyModel:
    torch.manual_seed(seed)
    model = build_model(load_config("tiny"), variant).eval()
    # Default init leaves S3D's deep activations ~1e-12 (no pretrained weights here); scale the
    # convolutions so every component's output carries signal and parity tests can fail.
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv3d | torch.nn.Conv2d) and module.groups == 1:
                fan_in = module.weight[0].numel()
                module.weight.normal_(0.0, (2.0 / fan_in) ** 0.5)
    return model


#: Environment variables libraries set for themselves on first use (whichever test comes first):
#: not state a test leaves behind, and putting them back would only make the library set them again.
LIBRARY_ENVIRONMENT = ("PYTEST_CURRENT_TEST", "TORCHINDUCTOR_CACHE_DIR")


def _process_state() -> dict[str, object]:
    """What one test could leave behind for the next: torch's global settings, the environment,
    the working directory, signal handlers and a pending stop request."""
    return {
        "torch default dtype": torch.get_default_dtype(),
        "torch threads": torch.get_num_threads(),
        "torch grad mode": torch.is_grad_enabled(),
        "torch deterministic": torch.are_deterministic_algorithms_enabled(),
        "environment": {k: v for k, v in os.environ.items() if k not in LIBRARY_ENVIRONMENT},
        "working directory": os.getcwd(),
        "signal handlers": {s: signal.getsignal(s) for s in interrupt.SIGNALS},
        "stop request": interrupt.requested(),
    }


@pytest.fixture(autouse=True)
def isolated_process_state(request: pytest.FixtureRequest) -> Iterator[None]:
    """Each test starts from the state the session started with and must leave it so: a test that
    changes a global setting fails here (and the setting is put back for the next test), so no test
    depends on which ran before it. The suite runs in random order (pytest-randomly, which reseeds
    Python's and NumPy's global generators before every test from the run's seed and the test's
    id); torch's global generator is reseeded here the same way, so a model built without a seed
    of its own does not depend on which tests drew from the generator before."""
    run_seed = int(request.config.getoption("randomly_seed", 0) or 0)
    torch.manual_seed((run_seed + zlib.crc32(request.node.nodeid.encode())) % 2**63)
    before = _process_state()
    yield
    after = _process_state()
    leaked = [key for key in before if after[key] != before[key]]
    torch.set_default_dtype(before["torch default dtype"])  # type: ignore[arg-type]
    torch.set_num_threads(before["torch threads"])  # type: ignore[arg-type]
    torch.set_grad_enabled(before["torch grad mode"])  # type: ignore[arg-type]
    torch.use_deterministic_algorithms(before["torch deterministic"])  # type: ignore[arg-type]
    env = before["environment"]
    assert isinstance(env, dict)
    if after["environment"] != env:
        kept = {k: os.environ[k] for k in LIBRARY_ENVIRONMENT if k in os.environ}
        os.environ.clear()
        os.environ.update({**env, **kept})
    os.chdir(before["working directory"])  # type: ignore[arg-type]
    for s, handler in before["signal handlers"].items():  # type: ignore[attr-defined]
        signal.signal(s, handler)
    interrupt.reset()
    if leaked:
        details = {k: (before[k], after[k]) for k in leaked if k != "environment"}
        if "environment" in leaked:
            new = set(after["environment"]) ^ set(env)  # type: ignore[arg-type]
            changed = {k for k in set(env) & set(after["environment"]) if env[k] != after["environment"][k]}  # type: ignore[index]
            details["environment"] = sorted(new | changed)
        pytest.fail(f"the test changed process state it must restore: {details}")


@pytest.fixture
def one_torch_thread() -> Iterator[None]:
    """Tiny models: one torch thread is as fast, and far faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session", autouse=True)
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private AVSAL_CACHE for the whole session (the predictor's export cache), in place before
    the first test, whatever the order: no test reads or writes the user's own cache."""
    path = tmp_path_factory.mktemp("avsal-cache")
    previous = os.environ.get("AVSAL_CACHE")
    os.environ["AVSAL_CACHE"] = str(path)
    yield path
    if previous is None:
        os.environ.pop("AVSAL_CACHE", None)
    else:
        os.environ["AVSAL_CACHE"] = previous


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, AVSaliencyModel]:
    return {v: _tiny_model(v) for v in ("avrsp", "diffsal", "hybrid")}


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, tiny_models) -> Path:
    path = tmp_path_factory.mktemp("ckpt") / "tiny-hybrid.safetensors"
    model = tiny_models["hybrid"]
    save_checkpoint(model, path, model.config, "hybrid")
    return path


@pytest.fixture(scope="session")
def tiny_export(cache_dir: Path, tiny_checkpoint: Path) -> Path:
    """The tiny hybrid checkpoint exported through the predictor's own cache (ONNX + manifest)."""
    from avsal_deploy.export.cache import cached_export

    return cached_export(tiny_checkpoint)


#: The idle timeout of ``triton_repo``'s ``avsal_stream`` (seconds).
STREAM_IDLE_S = 8.0


@pytest.fixture(scope="session")
def triton_repo(tiny_export: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Triton model repository of the tiny export (python-onnxruntime platform), its stream
    models' idle timeout and media limits small enough to test."""
    from avsal_deploy.serving.repository import build_repository

    limits = {"stream_idle_timeout_s": STREAM_IDLE_S, "max_pixels": 640 * 480}
    return build_repository(
        tiny_export,
        tmp_path_factory.mktemp("triton") / "repo",
        stream_limits=limits,
        video_limits={"max_pixels": 640 * 480, "max_video_bytes": 4 << 20},
    )


@pytest.fixture(scope="session")
def legacy_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint as the first shipped one was written (before ``LEGACY_DEFAULTS``' fields and
    the ``unet.attention`` rename): weights of the legacy tiny hybrid, a stored config that lacks
    every one of those fields and says ``unet.efficient_attention = true``."""
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    path = tmp_path_factory.mktemp("legacy") / "legacy.safetensors"
    legacy = load_config("tiny", dict(LEGACY_DEFAULTS))
    torch.manual_seed(0)
    save_checkpoint(build_model(legacy, "hybrid"), path, legacy, "hybrid")
    with safe_open(str(path), framework="pt") as f:
        header = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no iterator
    stored = json.loads(header["avsal.config"])
    for dotted in LEGACY_DEFAULTS:
        section, name = dotted.split(".")
        stored[section].pop(name)
    stored["unet"]["efficient_attention"] = True
    header["avsal.config"] = json.dumps(stored)
    save_file(tensors, str(path), metadata=header)
    return path


@pytest.fixture(scope="session")
def vinet_s_official(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ViNet-S checkpoint file as the official training script writes it
    (``torch.save(model.state_dict())``): random weights in the official layout, rebuilt from
    ``tests/golden/vinet_s.npz``'s layout and seed (the weights its golden maps were made with)."""
    from tests.golden.parity import load_golden, official_state, save_official

    d = tmp_path_factory.mktemp("vinet-s")
    return save_official(official_state(load_golden("vinet_s")), d / "ViNet_S_weights.pt")


@pytest.fixture(scope="session")
def vinet_s_checkpoint(vinet_s_official: Path) -> Path:
    """:func:`vinet_s_official` through ``avsal convert --from vinet-s``: the inference build
    (trilinear upsampling), 224 x 384 (the only size the official module runs)."""
    from tests.golden.parity import convert_cli

    return convert_cli(vinet_s_official, vinet_s_official.with_name("vinet-s.safetensors"), "vinet-s")


@pytest.fixture(scope="session")
def vinet_s_export(vinet_s_checkpoint: Path) -> Path:
    """``avsal export`` of :func:`vinet_s_checkpoint` (~20 s on 2 cores: shared by the ViNet-S
    parity tests and the model-zoo end-to-end tests)."""
    from tests.golden.parity import export_cli

    return export_cli(vinet_s_checkpoint, vinet_s_checkpoint.parent / "export")


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, config: pytest.Config) -> None:
    """Name the random order a run used (pytest-randomly), so that a failure can be rerun in it."""
    seed = getattr(config.option, "randomly_seed", None)
    if seed is not None and config.pluginmanager.has_plugin("randomly"):
        terminalreporter.write_line(f"test order: random, rerun it with --randomly-seed={seed}")


def catches_sigterm(pid: int) -> bool:
    """Whether process ``pid`` has a SIGTERM handler (Linux: the SigCgt mask of /proc/PID/status;
    Python catches SIGINT from its start, SIGTERM only once an avsal command installs its handlers)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    caught = int(next(line.split()[1] for line in status.splitlines() if line.startswith("SigCgt:")), 16)
    return bool(caught >> (signal.SIGTERM - 1) & 1)
