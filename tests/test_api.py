"""The public Python API: lazy, torch-free names at the top level, the same choices as the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from media_utils import write_video

import avsal_deploy
from avsal_deploy.engine import EngineChoice, backends
from avsal_deploy.errors import AvsalError, BackendUnavailableError

ROOT = Path(__file__).resolve().parents[1]


def test_names_resolve_lazily_without_torch() -> None:
    code = (
        "import sys\n"
        "import avsal_deploy as a\n"
        "assert not any(m.startswith('avsal_deploy.') and m != 'avsal_deploy._lazy' "
        "and m != 'avsal_deploy._version' for m in sys.modules), sorted(sys.modules)\n"
        "for name in a.__all__: getattr(a, name)\n"
        "print('torch' in sys.modules, a.__version__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.split() == ["False", avsal_deploy.__version__]


def test_every_public_name_is_documented_and_typed() -> None:
    import inspect

    assert set(avsal_deploy.__all__) >= {
        "predict",
        "open_engine",
        "load_maps",
        "score",
        "stream",
        "predict_video",
        "convert",
        "model_zoo",
        "__version__",
    }
    for name in avsal_deploy.__all__:
        if name == "__version__":
            continue
        fn = getattr(avsal_deploy, name)
        assert fn.__doc__ and len(fn.__doc__) > 40, name
        signature = inspect.signature(fn)
        assert signature.return_annotation is not inspect.Signature.empty, name
        for parameter in signature.parameters.values():
            if parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                assert parameter.annotation is not inspect.Parameter.empty, (name, parameter.name)
    assert (ROOT / "avsal_deploy" / "py.typed").is_file()


def test_predict_with_the_shipped_model(tmp_path: Path) -> None:
    clip = write_video(tmp_path / "clip.mp4", n=6, fps=25, size=(48, 64), audio="aac")
    prediction = avsal_deploy.predict(clip, steps=0)
    maps = prediction.maps()
    assert maps.shape == (6, 48, 64) and 0.0 <= maps.min() and maps.max() <= 1.0
    summary = avsal_deploy.predict(clip, tmp_path / "out", steps=0)
    assert summary["files"] == ["maps.npz", "summary.json"]
    stored = avsal_deploy.load_maps(tmp_path / "out" / "maps.npz")
    assert stored.shape == maps.shape and np.abs(stored - maps).mean() < 0.02  # stored at the model size


def test_engine_choice_is_checked_once() -> None:
    assert EngineChoice.of().backend == "onnxruntime"
    assert EngineChoice.of(url="h:1").backend == "triton"
    with pytest.raises(AvsalError, match="not both"):
        EngineChoice(checkpoint="a", export="b")
    with pytest.raises(AvsalError, match="--url is for --engine triton"):
        EngineChoice("torch", url="h:1")
    with pytest.raises(AvsalError, match="--checkpoint does not apply"):
        EngineChoice("triton", checkpoint="a")
    assert EngineChoice("triton").server == "127.0.0.1:8000" and EngineChoice().server is None
    with avsal_deploy.open_engine() as engine:
        assert engine.backend == "onnxruntime"
    assert EngineChoice().identity().startswith("checkpoint:")


def test_triton_backend_is_a_plug_in() -> None:
    """The Triton client reaches the engine registry through the ``avsal_deploy.engines`` entry
    point (installed metadata), not by the engine package naming the serving package."""
    from avsal_deploy.engine import registry

    assert "triton" in backends()
    assert "triton" not in registry.BUILTIN_BACKENDS
    with pytest.raises(BackendUnavailableError, match="127.0.0.1:1"):
        avsal_deploy.open_engine("triton", url="127.0.0.1:1", timeout_s=2.0)
